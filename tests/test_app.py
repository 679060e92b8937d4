"""`pconv app`'s HTTP API against the real server (the CLI in a subprocess on loopback) and the small model.

Every result is checked against independent references: the known pixels against the input as Pillow
decodes it, the hole against what `pconv infer` writes for the same photo and mask file.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers.app_helpers import AppProcess, decode, get_json, multipart, pconv_infer, png_bytes, post

pytest.importorskip("fastapi", reason="the app extra is not installed (pip install 'pconv-deploy[app]')")

MAX_PIXELS = 500_000
MAX_UPLOAD = 2 * 2**20
PACKAGE_EXAMPLE = Path(__file__).resolve().parent.parent / "pconv_deploy" / "app" / "examples" / "chelsea.jpg"
EXAMPLE_MASK = Path(__file__).resolve().parent.parent / "examples" / "masks" / "chelsea.png"


def smooth_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: gradients, a few discs and a little noise (fixed seed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / w, y * 255 / h, 128 + 100 * np.sin(x / 13.0) * np.cos(y / 17.0)], axis=-1)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(10, 40)
        rgb[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


def hole_mask(h: int, w: int) -> np.ndarray:
    """White = hole: a rectangle and a diagonal stroke; uint8 0/255."""
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 5 : w // 2] = 255
    for i in range(min(h, w) - 20):
        mask[10 + i, max(0, 10 + i - 3) : 10 + i + 3] = 255
    return mask


def bomb_png(side: int) -> bytes:
    """A valid grey PNG of side x side zeros: tens of KB that decode to side**2 bytes."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def server(small_onnx, tmp_path_factory):
    """The app as a user starts it, in an empty folder with its own empty TMPDIR (to see what it writes)."""
    cwd, tmpdir = tmp_path_factory.mktemp("app-cwd"), tmp_path_factory.mktemp("app-tmp")
    args = ["--model", str(small_onnx), "--max-pixels", str(MAX_PIXELS), "--max-upload", "2MiB"]
    running = AppProcess(args, cwd, tmpdir)
    running.cwd, running.tmpdir = cwd, tmpdir
    yield running
    err = running.stop()
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """A photo and its mask as files (for `pconv infer`) and as bytes (for the API)."""
    folder = tmp_path_factory.mktemp("photo")
    image, mask = smooth_photo(150, 200), hole_mask(150, 200)
    (folder / "photo.png").write_bytes(png_bytes(image))
    (folder / "mask.png").write_bytes(png_bytes(mask))
    return folder / "photo.png", folder / "mask.png", image, mask


def inpaint(server, image: bytes, mask: bytes, **fields) -> tuple[int, dict, bytes]:
    return post(f"{server.url}/api/inpaint", {"image": ("photo.png", image), "mask": ("mask.png", mask), **fields})


def test_models_lists_the_served_model_and_the_limits(server, small_onnx):
    info = get_json(f"{server.url}/api/models")
    assert [m["name"] for m in info["models"]] == [small_onnx.name]
    assert info["models"][0]["backend"] == "onnxruntime-cpu"
    assert info["max_pixels"] == MAX_PIXELS and info["max_upload_bytes"] == MAX_UPLOAD
    assert "chelsea.jpg" in info["examples"]
    with urllib.request.urlopen(f"{server.url}/api/examples/chelsea.jpg", timeout=30) as r:
        assert r.read() == PACKAGE_EXAMPLE.read_bytes()
    with urllib.request.urlopen(f"{server.url}/", timeout=30) as r:
        assert b'id="inpaint"' in r.read()


def test_inpaint_keeps_known_pixels_and_fills_holes_as_pconv_infer(server, small_onnx, photo_files, tmp_path):
    photo, mask_file, image, mask = photo_files
    status, headers, body = inpaint(server, photo.read_bytes(), mask_file.read_bytes(), model=small_onnx.name)
    assert status == 200, body
    assert headers["content-type"] == "image/png" and headers["x-pconv-model"] == small_onnx.name
    out = decode(body)
    hole = mask == 255
    assert out.shape == image.shape
    assert np.array_equal(out[~hole], image[~hole])  # known pixels: byte-identical to the input
    assert not np.array_equal(out[hole], image[hole])  # the hole was really filled
    reference = pconv_infer(photo, mask_file, small_onnx, tmp_path / "out")
    assert np.array_equal(out[hole], reference[hole])
    assert float(headers["x-pconv-seconds"]) > 0


def test_a_jpeg_photo_matches_pconv_infer_too(server, small_onnx, tmp_path):
    from PIL import Image

    status, _, body = inpaint(server, PACKAGE_EXAMPLE.read_bytes(), EXAMPLE_MASK.read_bytes())
    assert status == 200, body
    out, image = decode(body), np.asarray(Image.open(PACKAGE_EXAMPLE))
    hole = np.asarray(Image.open(EXAMPLE_MASK).convert("L")) >= 128
    assert np.array_equal(out[~hole], image[~hole])
    assert np.array_equal(out, pconv_infer(PACKAGE_EXAMPLE, EXAMPLE_MASK, small_onnx, tmp_path / "out"))


def form(photo: bytes, mask: bytes | None, photo_name: str = "p.png", **fields) -> dict:
    parts = {"image": (photo_name, photo), **fields}
    if mask is not None:
        parts["mask"] = ("m.png", mask)
    return parts


def bad_requests(photo: bytes, mask: bytes) -> dict[str, tuple[dict, int, str]]:
    """Each bad input: (form fields, expected status, words the message must contain)."""
    h, w = 150, 200
    big_photo = png_bytes(smooth_photo(800, 700))  # 560,000 pixels: a real photo over --max-pixels
    too_long = np.random.default_rng(0).bytes(3 * 2**20)
    return {
        "not an image": (form(b"just some text\n" * 50, mask, "notes.txt"), 415, "photo 'notes.txt' is not an image"),
        "decompression bomb": (form(bomb_png(5000), mask), 413, "25,000,000 pixels, over the limit of 500,000"),
        "over the pixel limit": (form(big_photo, mask), 413, "700x800 = 560,000 pixels, over the limit of 500,000"),
        "empty mask": (form(photo, png_bytes(np.zeros((h, w), np.uint8))), 422, "marks no hole"),
        "all-hole mask": (form(photo, png_bytes(np.full((h, w), 255, np.uint8))), 422, "every pixel"),
        "mask of another size": (
            form(photo, png_bytes(np.full((h, w + 1), 255, np.uint8))),
            422,
            "is 201x150 but the photo is 200x150",
        ),
        "mask not an image": (form(photo, b"GIF89a nonsense"), 415, "mask 'm.png' is not an image"),
        "truncated photo": (form(photo[: len(photo) // 2], mask), 422, "corrupt or truncated"),
        "body over the upload limit": (form(too_long, mask), 413, "over the upload limit of 2 MiB"),
        "missing mask": (form(photo, None), 400, "missing the file field 'mask'"),
        "empty photo file": (form(b"", mask), 400, "empty (0 bytes)"),
        "unknown model": (form(photo, mask, model="nope.onnx"), 400, "unknown model 'nope.onnx'"),
        "no fields": ({}, 400, "missing the file field 'image'"),
    }


def test_bad_inputs_get_their_status_and_message_and_the_server_keeps_serving(server, photo_files):
    photo, mask_file, image, mask = photo_files
    first = inpaint(server, photo.read_bytes(), mask_file.read_bytes())
    assert first[0] == 200
    for case, (fields, status, words) in bad_requests(photo.read_bytes(), mask_file.read_bytes()).items():
        got, headers, body = post(f"{server.url}/api/inpaint", fields)
        assert got == status, f"{case}: {got} {body[:300]!r}"
        message = json.loads(body)["error"]
        assert words in message, f"{case}: {message}"
        assert "\n" not in message and "Traceback" not in message
    again = inpaint(server, photo.read_bytes(), mask_file.read_bytes())
    assert again[0] == 200 and again[2] == first[2]  # the same answer as before the bad ones
    assert get_json(f"{server.url}/api/progress")["busy"] is False


def test_progress_answers_while_a_request_runs(server):
    """The page polls /api/progress during inference: it answers, and counts the request's crop tiles."""
    h, w = 600, 800  # 480,000 pixels, under --max-pixels
    image, mask = smooth_photo(h, w, seed=3), np.zeros((h, w), np.uint8)
    for y, x in ((60, 60), (60, 600), (400, 100), (420, 650), (250, 380)):  # far apart: one window each
        mask[y : y + 40, x : x + 70] = 255
    samples, done = [], threading.Event()

    def poll() -> None:
        while not done.is_set():
            samples.append(get_json(f"{server.url}/api/progress"))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        status, headers, body = inpaint(server, png_bytes(image), png_bytes(mask))
    finally:
        done.set()
        poller.join()
    assert status == 200, body
    tiles = int(headers["x-pconv-tiles"])
    busy = [s for s in samples if s["busy"]]
    assert tiles > 1 and busy, samples[:5]
    assert all(s["total"] == tiles and 0 <= s["done"] <= tiles for s in busy)
    assert get_json(f"{server.url}/api/progress")["busy"] is False


def test_the_memory_budget_applies(small_onnx, photo_files, tmp_path):
    """--memory-limit as for `pconv infer`: a window over the budget is refused with the reason, not run."""
    running = AppProcess(["--model", str(small_onnx), "--memory-limit", "1MiB"], tmp_path, tmp_path)
    try:
        photo, mask_file = photo_files[:2]
        status, _, body = inpaint(running, photo.read_bytes(), mask_file.read_bytes())
    finally:
        running.stop()
    assert status == 422 and "over the" in json.loads(body)["error"] and "--memory-limit" in json.loads(body)["error"]


def test_check_answers_the_size_or_the_same_refusal(server, photo_files):
    photo = photo_files[0]
    status, _, body = post(f"{server.url}/api/check", {"image": ("photo.png", photo.read_bytes())})
    assert status == 200 and json.loads(body) == {"width": 200, "height": 150, "alpha": False}
    status, _, body = post(f"{server.url}/api/check", {"image": ("notes.txt", b"hello")})
    assert status == 415 and b"not an image" in body


def test_nothing_is_written_to_disk(server, photo_files):
    """A 1.1 MB upload (Starlette's own form parser would spool it to TMPDIR) leaves the folders empty."""
    image = np.random.default_rng(1).integers(0, 256, (600, 620, 3), np.uint8)
    body = png_bytes(image)
    assert len(body) > 2**20
    mask = hole_mask(600, 620)
    status, _, out = inpaint(server, body, png_bytes(mask))
    assert status == 200
    assert np.array_equal(decode(out)[mask == 0], image[mask == 0])
    assert list(server.cwd.iterdir()) == [] and list(server.tmpdir.iterdir()) == []


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pconv_deploy.cli", "app", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_refuses_bad_models_and_a_taken_port_in_one_line(tmp_path, small_onnx):
    missing = run_cli("--model", "missing.onnx", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == "error: --model missing.onnx: no such file"
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    bad = run_cli("--model", "bad.onnx", "--port", "0", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "bad.onnx" in bad.stderr, bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run_cli("--model", str(small_onnx), "--port", str(port), cwd=tmp_path)
    assert busy.returncode == 1 and busy.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} ("), busy.stderr
    assert busy.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == [tmp_path / "bad.onnx"]


def test_a_pip_install_has_the_page_and_examples(monkeypatch, tmp_path):
    """Without a checkout around the package, the examples are the packaged ones; package-data ships them."""
    import fnmatch

    from pconv_deploy.app import server as app_server

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

    root = Path(app_server.__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pconv_deploy"]
    shipped = [p for p in (root / "pconv_deploy" / "app").rglob("*") if p.is_file() and p.suffix != ".py"]
    assert {p.name for p in shipped} >= {"index.html", "app.js", "app.css", "chelsea.jpg", "rocket.jpg"}
    for path in shipped:
        if "__pycache__" not in path.parts:
            name = path.relative_to(root / "pconv_deploy").as_posix()
            assert any(fnmatch.fnmatch(name, g) for g in globs), f"{name} is not package data"
    monkeypatch.setattr(app_server, "HERE", tmp_path / "site-packages" / "pconv_deploy" / "app")
    assert sorted(app_server.example_photos()) == ["chelsea.jpg", "rocket.jpg"]


def test_a_foreign_host_name_is_refused_on_loopback(server):
    """DNS rebinding: a web page that points its own name at 127.0.0.1 must not reach the API."""
    request = urllib.request.Request(f"{server.url}/api/models", headers={"Host": "rebound.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    port = server.url.rsplit(":", 1)[1]
    assert get_json(f"http://localhost:{port}/api/models")["models"]  # the names of loopback still work


def test_another_sites_page_cannot_post(server, photo_files):
    """A form on another site can POST to loopback (no CORS preflight for multipart): its Origin is refused."""
    photo, mask_file = photo_files[:2]
    body, content_type = multipart({"image": ("p.png", photo.read_bytes()), "mask": ("m.png", mask_file.read_bytes())})
    headers = {"Content-Type": content_type, "Origin": "https://elsewhere.example"}
    request = urllib.request.Request(f"{server.url}/api/inpaint", data=body, headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403 and b"cross-origin" in refused.value.read()
    headers["Origin"] = server.url  # the app's own page
    request = urllib.request.Request(f"{server.url}/api/inpaint", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.status == 200


@pytest.mark.usefixtures("serve_env")  # skips, saying why, without the PyTriton environment
def test_a_triton_server_is_one_more_model(small_onnx, photo_files, tmp_path):
    """`--server URL` next to `--model`: the served copy answers on the page's API like the local one."""
    from helpers.serving import serving

    photo, mask_file, image, mask = photo_files
    hole = mask == 255
    with serving(small_onnx, tmp_path) as [served]:
        running = AppProcess(["--model", str(small_onnx), "--server", served.http_url], tmp_path, tmp_path)
        try:
            names = [m["name"] for m in get_json(f"{running.url}/api/models")["models"]]
            assert names == [small_onnx.name, "pconv@triton"]
            answers = [inpaint(running, photo.read_bytes(), mask_file.read_bytes(), model=name) for name in names]
        finally:
            running.stop()
    (local_status, _, local), (remote_status, _, remote) = answers
    assert local_status == 200 and remote_status == 200, remote
    local, remote = decode(local).astype(int), decode(remote).astype(int)
    assert np.array_equal(remote[~hole], image[~hole])
    assert np.abs(remote - local)[hole].max() <= 1  # the server's ONNX Runtime may round differently
