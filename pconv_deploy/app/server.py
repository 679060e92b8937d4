"""The web app behind ``pconv app``: the page, its HTTP API, and the uvicorn server on loopback.

Routes (the API is documented in docs/app.md):

- ``GET /``: the page (static HTML, JS and CSS shipped in the package);
- ``GET /api/models``: the served models and the limits the page checks before uploading;
- ``GET /api/examples/NAME``: a bundled example photo;
- ``POST /api/check``: decode a photo (field ``image``) as ``/api/inpaint`` would, answer its size;
- ``POST /api/inpaint``: fields ``image``, ``mask`` (white = hole) and optional ``model`` -> ``image/png``;
- ``GET /api/progress``: the running request's model and tiles done, for the page's progress bar.

Every refusal is JSON ``{"error": "one line"}`` with a 4xx status, and the server goes on serving.
Inference runs in a worker thread, so the page and the progress stay responsive on a big photo.
"""

import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pconv_deploy.app.models import AppOptions, ModelSet
from pconv_deploy.app.uploads import UploadError, decode_mask, decode_photo, parse_form, read_body
from pconv_deploy.contract import IMAGE_SUFFIXES
from pconv_deploy.errors import JobStopped, PConvError, first_line

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PACKAGED_EXAMPLES = HERE / "examples"  # two small photos, so a wheel install has examples too


def example_photos() -> dict[str, Path]:
    """The example photos by file name: the checkout's examples/images when there is one, else the packaged ones."""
    root = HERE.parents[1]
    checkout = root / "examples" / "images"
    folder = checkout if (root / "pyproject.toml").is_file() and checkout.is_dir() else PACKAGED_EXAMPLES
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def create_app(models: ModelSet):
    """The ASGI application serving ``models`` (FastAPI)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    options = models.options
    examples = example_photos()
    app = FastAPI(title="pconv app", docs_url=None, redoc_url=None, openapi_url=None)
    if is_loopback(options.host):  # a web page's DNS rebinding reaches loopback under a name of its own: refused
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    add_error_handlers(app)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/models")
    async def list_models() -> dict:
        return {
            "models": models.describe(),
            "examples": list(examples),
            "max_upload_bytes": options.max_upload,
            "max_pixels": options.max_pixels,
            "strategy": options.inpaint.strategy,
        }

    @app.get("/api/examples/{name}")
    async def example(name: str) -> FileResponse:
        if name not in examples:  # only the listed files: a name is never a path
            raise UploadError(f"no example photo named {name!r}", 404)
        return FileResponse(examples[name])

    @app.get("/api/progress")
    async def progress() -> dict:
        return models.progress.as_json()

    @app.post("/api/check")
    async def check(request: Request) -> dict:
        form = await read_form(request, options.max_upload)
        filename, data = form.file("image")
        picture = await run_in_threadpool(decode_photo, data, options.max_pixels, upload_name("photo", filename))
        h, w = picture.pixels.shape[:2]
        return {"width": w, "height": h, "alpha": picture.alpha is not None}

    @app.post("/api/inpaint")
    async def inpaint(request: Request) -> Response:
        form = await read_form(request, options.max_upload)
        name = form.fields.get("model") or models.names[0]
        if name not in models.names:
            raise UploadError(f"unknown model {name!r}: this app serves {', '.join(models.names)}", 400)
        result = await run_in_threadpool(run_request, models, name, form)
        headers = {
            "X-Pconv-Model": name,
            "X-Pconv-Seconds": f"{result.seconds:.4f}",
            "X-Pconv-Tiles": str(result.tiles),
            "Cache-Control": "no-store",
        }
        return Response(result.png, media_type="image/png", headers=headers)

    return app


def add_error_handlers(app) -> None:
    """Every refusal and failure as ``{"error": "one line"}`` with its status; the server goes on serving."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.exception_handler(UploadError)
    async def refused(request: Request, e: UploadError) -> JSONResponse:
        return JSONResponse({"error": first_line(e)}, status_code=e.status)

    @app.exception_handler(PConvError)
    async def failed(request: Request, e: PConvError) -> JSONResponse:  # over the memory budget; servers down
        status = 503 if isinstance(e, JobStopped) else 422  # every Triton server failed the request
        return JSONResponse({"error": first_line(e)}, status_code=status)

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": f"inference failed: {type(e).__name__}: {first_line(e)}"}, status_code=500)


async def read_form(request, max_upload: int):
    """The request's form; refused (403) when a browser says another site's page sent it (cross-site POST)."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise UploadError(f"cross-origin request from {origin} refused: use the page this app serves", 403)
    body = await read_body(request.stream(), request.headers.get("content-length"), max_upload)
    return parse_form(body, request.headers.get("content-type"))


def run_request(models: ModelSet, name: str, form) -> object:
    """In a worker thread: decode the photo and the mask, inpaint, encode."""
    options = models.options
    photo_name, photo = form.file("image")
    mask_name, mask = form.file("mask")
    picture = decode_photo(photo, options.max_pixels, upload_name("photo", photo_name))
    hole = decode_mask(mask, picture.pixels.shape[:2], options.max_pixels, name=upload_name("mask", mask_name))
    return models.inpaint(name, picture, hole)


def upload_name(what: str, filename: str) -> str:
    """How messages name an upload: ``photo 'cat.jpg'``, or just ``photo`` when the client sent no file name."""
    return f"{what} {filename!r}" if filename else what


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free port), or one line saying why it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PConvError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


@dataclass
class RunningApp:
    """A started app: ``url`` to open, ``stop()`` to end it (waits for the server thread)."""

    url: str
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def make_server(options: AppOptions, announce: Callable[[str], None]) -> tuple[object, socket.socket, str]:
    """Load the models, bind the socket, build the uvicorn server (not started yet)."""
    import uvicorn

    if not is_loopback(options.host):
        announce(f"warning: listening on {options.host}: anyone who can reach this address can use the app")
    sock = bind(options.host, options.port)
    try:
        models = ModelSet(options, announce)
    except BaseException:
        sock.close()
        raise
    for entry in models.describe():
        announce(f"model {entry['name']}: {entry['backend']} ({entry['source']})")
    config = uvicorn.Config(
        create_app(models), log_level="warning", access_log=False, limit_concurrency=64, timeout_keep_alive=5
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return uvicorn.Server(config), sock, f"http://{shown}:{port}/"


def start_app(options: AppOptions, announce: Callable[[str], None] = print) -> RunningApp:
    """Serve in a background thread (tests, notebooks); returns once the server accepts connections."""
    server, sock, url = make_server(options, announce)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="pconv-app", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.05)
    return RunningApp(url, server, thread)


def run_app(options: AppOptions, announce: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C or SIGTERM (``pconv app``)."""
    server, sock, url = make_server(options, announce)
    announce(f"pconv app: open {url} (Ctrl-C stops)")
    server.run(sockets=[sock])
