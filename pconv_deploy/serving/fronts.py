"""The HTTP and gRPC fronts of ``pconv serve``: the public ports, in front of a tritonserver on loopback.

Tritonserver trusts what a request declares (see :mod:`pconv_deploy.serving.checks`), so it listens on
private loopback ports and the public ones belong to these fronts. Each front passes on a short list
of KServe v2 calls (health, metadata, config, statistics, readiness, inference) and refuses the rest
(model load/unload, shared memory, trace and log settings); it checks every inference request against
the contract before tritonserver gets it, and answers a violation with one line (HTTP 400
``{"error": "..."}``, gRPC ``INVALID_ARGUMENT``). ``/v2/health/ready`` and ``ServerReady`` answer from
:class:`Readiness`: ready only while the model answers on the private port.

At most ``inflight`` inference requests per front are read and held at once, each at most
``Limits.max_body_bytes`` (twice that while the checked copy is made): that bounds what a burst of
requests can make the server hold. A body must arrive within ``BODY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from pconv_deploy.errors import PConvError
from pconv_deploy.serving.checks import BadRequest, Limits, check_grpc_infer, check_http_infer, short

REQUEST_SECONDS = 600.0  # an inference on a CPU server may take minutes; connecting is bounded separately
POLL_SECONDS = 0.5
DEAD_STUB = re.compile(r"Stub process .* is not healthy")  # tritonserver does not restart a stub that died
BODY_SECONDS = 120.0  # to receive one request body (256 MiB at the default --max-pixels: ~2 MB/s at least)
GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_PASSED = ("ServerLive", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelStatistics", "ModelReady")
HTTP_GET = re.compile(r"/v2(/health/live|/models/(?P<model>[^/]+)(/versions/[0-9]+)?(/ready|/config|/stats)?)?")
HTTP_INFER = re.compile(r"/v2/models/(?P<model>[^/]+)(/versions/(?P<version>[0-9]+))?/infer")
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor extension: JSON header bytes, then tensors
PASSED_HEADERS = ("Content-Type", HEADER_LENGTH, "Content-Encoding", "Accept-Encoding")


def log(line: str) -> None:
    print(f"pconv serve: {line}", file=sys.stderr, flush=True)


def one_line(message: str) -> str:
    """The line of a tritonserver error worth showing: the model's own ``XError: ...`` line, else the first."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"[\w.]+(Error|Exception): ", line):
            return line
    return lines[0] if lines else "error"


class Readiness:
    """Whether the model answers on the private port: polled, so a health check costs no upstream call."""

    def __init__(self, upstream_http: str, model: str) -> None:
        self.upstream, self.model = upstream_http, model
        self.ready = False
        self.failed = ""  # why the model can no longer answer (its Python stub died): never ready again
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.poll, name="pconv-readiness", daemon=True)

    def check(self) -> bool:
        """Server ready and model ready, asked now (a fresh connection; 2 s at most)."""
        for path in ("/v2/health/ready", f"/v2/models/{self.model}/ready"):
            connection = http.client.HTTPConnection(self.upstream, timeout=2)
            try:
                connection.request("GET", path)
                if connection.getresponse().status != 200:
                    return False
            except OSError:
                return False
            finally:
                connection.close()
        return True

    def poll(self) -> None:
        while not self.stopped.wait(POLL_SECONDS):
            self.ready = self.check() and not self.failed

    def saw_error(self, message: str) -> None:
        """Tritonserver's model ready stays true when the Python stub died; its error says so: not ready, ever."""
        if DEAD_STUB.search(message):
            self.failed, self.ready = message, False

    def start(self) -> None:
        self.ready = self.check()
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()


def error_response(status: int, message: str) -> object:
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


class HttpFront:
    """The public HTTP port: an aiohttp server on its own thread and event loop."""

    def __init__(self, *, upstream: str, model: str, limits: Limits, readiness: Readiness, inflight: int) -> None:
        self.upstream, self.model, self.limits, self.readiness = upstream, model, limits, readiness
        self.inflight = inflight
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None

    async def handle(self, request: object) -> object:
        from aiohttp import web

        path = request.path  # decoded; what is passed on is rebuilt from the checked parts
        if request.method in ("GET", "HEAD"):
            if path == "/v2/health/ready":
                return web.Response(status=200) if self.readiness.ready else error_response(503, "not ready")
            match = HTTP_GET.fullmatch(path)
            if match and match["model"] not in (None, self.model):
                return error_response(400, f"unknown model {short(match['model'])}: this server serves {self.model!r}")
            if match:
                return await self.forward(request, path, b"")
        if request.method == "POST" and (match := HTTP_INFER.fullmatch(path)):
            if match["model"] != self.model or match["version"] not in (None, "1"):
                return error_response(400, f"unknown model {short(match['model'])}: this server serves {self.model!r}")
            return await self.infer(request)
        return error_response(404, f"{request.method} {short(path)}: not served by pconv serve")

    async def infer(self, request: object) -> object:
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            return error_response(415, "compressed requests are not accepted: send the body uncompressed")
        length = request.content_length
        if length is None:
            return error_response(411, "Content-Length is required")
        if length > self.limits.max_body_bytes:
            return error_response(
                413, f"request body of {length} bytes: more than this server's {self.limits.max_body_bytes}"
            )
        header = request.headers.get(HEADER_LENGTH)
        async with self.gate:
            try:  # a client trickling its body holds a slot: for this long at most
                body = await asyncio.wait_for(request.read(), BODY_SECONDS)
            except asyncio.TimeoutError:
                return error_response(408, f"the request body did not arrive within {BODY_SECONDS:.0f} s")
            try:
                header_length = None if header is None else int(header)
                checked = await self.loop.run_in_executor(None, check_http_infer, body, header_length, self.limits)
            except ValueError:
                return error_response(400, f"Inference-Header-Content-Length {short(header)}: not an integer")
            except BadRequest as e:
                return error_response(400, str(e))
            del body  # only the checked copy is held while the model runs
            checked_body, checked_header_length = checked
            return await self.forward(
                request, f"/v2/models/{self.model}/infer", checked_body, header_length=checked_header_length
            )

    async def forward(self, request: object, path: str, body: bytes, *, header_length: int | None = None) -> object:
        """``body`` to tritonserver's ``path`` with the client's content headers (one value each), and back."""
        from aiohttp import ClientError, web

        headers = {k: request.headers[k] for k in PASSED_HEADERS if k in request.headers and k != HEADER_LENGTH}
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        try:
            async with self.session.request(request.method, path, data=body or None, headers=headers) as r:
                data = await r.read()
                status, passed = r.status, {k: r.headers[k] for k in PASSED_HEADERS if k in r.headers}
        except (ClientError, asyncio.TimeoutError) as e:
            log(f"tritonserver did not answer {request.method} {path}: {e!r}")
            return error_response(503, "the model server did not answer; try again")
        if status >= 400:
            try:
                message = one_line(str(json.loads(data).get("error", "")))
            except (ValueError, AttributeError):
                message = "error"
            if status >= 500:
                self.readiness.saw_error(message)
                log(f"tritonserver {status} on {path}: {message}")
                message = "internal error in the model (details in the server log)"
            return error_response(status, message)
        return web.Response(status=status, body=data, headers=passed)

    async def open(self, host: str, port: int) -> None:
        from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

        self.gate = asyncio.Semaphore(self.inflight)
        self.session = ClientSession(
            f"http://{self.upstream}",
            auto_decompress=False,
            connector=TCPConnector(limit=self.inflight + 8),
            timeout=ClientTimeout(total=REQUEST_SECONDS, sock_connect=10),
        )
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, reuse_address=True).start()

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.session.close()

    def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (a one-line PConvError if that fails) and serve on a thread."""
        started: list[BaseException | None] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.open(host, port))
                started.append(None)
            except OSError as e:
                started.append(e)
            ready.set()
            if started[0] is None:
                self.loop.run_forever()
                self.loop.run_until_complete(self.close())

        self.thread = threading.Thread(target=run, name="pconv-http-front", daemon=True)
        self.thread.start()
        ready.wait(60)
        if not started or started[0] is not None:
            why = started[0].strerror if started and started[0] else "timed out"
            raise PConvError(f"--http-port {port}: cannot listen on {host}:{port} ({why})")

    def stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(15)


class GrpcFront:
    """The public gRPC port: a grpcio server that passes raw messages on after checking ``ModelInfer``."""

    def __init__(self, *, upstream: str, model: str, limits: Limits, readiness: Readiness, inflight: int) -> None:
        import grpc

        self.model, self.limits, self.readiness, self.inflight = model, limits, readiness, inflight
        size = [("grpc.max_receive_message_length", limits.max_body_bytes)]
        size.append(("grpc.max_send_message_length", limits.max_body_bytes))
        self.channel = grpc.insecure_channel(upstream, options=size)
        self.options = size
        self.server = None

    def start(self, host: str, port: int) -> None:
        import grpc

        front = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: object) -> object:
                method = details.method
                name = method[len(GRPC_SERVICE) :] if method.startswith(GRPC_SERVICE) else ""
                if name in (*GRPC_PASSED, "ServerReady", "ModelInfer"):
                    return grpc.unary_unary_rpc_method_handler(
                        lambda request, context: front.call(name, request, context)
                    )
                return None  # UNIMPLEMENTED: streaming, repository, shared memory, trace and log settings

        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=self.inflight, thread_name_prefix="pconv-grpc-front"),
            handlers=[Handler()],
            maximum_concurrent_rpcs=self.inflight,
            options=[*self.options, ("grpc.so_reuseport", 0)],
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise PConvError(f"--grpc-port {port}: cannot listen on {address}")
        self.server.start()

    def call(self, name: str, request: bytes, context: object) -> bytes:
        import grpc
        from tritonclient.grpc import service_pb2

        if name == "ServerReady":
            return service_pb2.ServerReadyResponse(ready=self.readiness.ready).SerializeToString()
        if name in ("ModelInfer", "ModelReady", "ModelConfig", "ModelMetadata", "ModelStatistics"):
            message = getattr(service_pb2, f"{name}Request")()
            try:
                message.ParseFromString(request)
            except Exception:  # protobuf's DecodeError and friends: a malformed message
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {name}Request")
            asked = message.model_name if name == "ModelInfer" else message.name
            version = message.model_version if name == "ModelInfer" else message.version
            if (asked != self.model or version not in ("", "1")) and not (name == "ModelStatistics" and not asked):
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"unknown model {short(asked)}: this server serves {self.model!r}"
                )
            if name == "ModelInfer":
                try:
                    check_grpc_infer(message, self.limits)
                except BadRequest as e:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            return self.channel.unary_unary(GRPC_SERVICE + name)(request, timeout=REQUEST_SECONDS)
        except grpc.RpcError as e:
            message = one_line(e.details() or "")
            if e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                self.readiness.saw_error(message)
                log(f"tritonserver {e.code().name} on {name}: {message}")
                message = "internal error in the model (details in the server log)"
            context.abort(e.code(), message)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=2).wait(5)
        self.channel.close()
