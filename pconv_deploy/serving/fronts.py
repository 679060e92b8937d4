"""The HTTP and gRPC fronts of ``pconv serve``: the public ports, in front of a tritonserver on loopback.

Tritonserver trusts what a request declares (see :mod:`pconv_deploy.serving.checks`), so it listens on
private loopback ports and the public ones belong to these fronts. Each front passes on a short list
of KServe v2 calls (health, metadata, config, statistics, readiness, inference) and refuses the rest
(model load/unload, shared memory, trace and log settings); it checks every inference request against
the contract before tritonserver gets it, and answers a violation with one line (HTTP 400
``{"error": "..."}``, gRPC ``INVALID_ARGUMENT``). ``/v2/health/ready`` and ``ServerReady`` answer from
:class:`Readiness`: ready only while the model answers on the private port.

Slow clients (a slowloris trickling its body) must not starve the others. At most ``inflight`` requests
per front are at the model at once; ``ADMITTED_PER_SLOT`` times that are admitted (their body received,
waiting for a slot, or at the model), each at most ``Limits.max_body_bytes``: that bounds what a burst
can make the server hold. HTTP: a request waits at most ``ADMIT_SECONDS`` to be admitted (then 503), and
its body is read before it takes an inference slot, at ``MIN_BODY_RATE`` at least after a lag of
``BODY_FLOOR_SECONDS`` and within ``BODY_SECONDS`` (else 408, connection closed). gRPC: an inference call
is admitted at once or refused (RESOURCE_EXHAUSTED), cancelled if its message is not in by the HTTP
deadline of the largest one allowed, and health, readiness and metadata calls have threads of their
own, so a busy server still answers its health checks.
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
BODY_SECONDS = 120.0  # to receive one request body (256 MiB at the default --max-pixels: ~2.1 MB/s at least)
# A body may lag MIN_BODY_RATE by BODY_FLOOR_SECONDS (connection setup, TCP slow start, a client's pause): a
# trickler is cut after ~5 s whatever the length it declares, and 1 MB/s is far below any LAN or loopback client.
BODY_FLOOR_SECONDS = 5.0
MIN_BODY_RATE = 1_000_000  # bytes/s
# Requests admitted per inference slot: as many again as the model runs can be received meanwhile, so a slot
# freed finds the next body ready; memory holds at most 2 x inflight bodies (plus inflight checked copies).
ADMITTED_PER_SLOT = 2
ADMIT_SECONDS = 10.0  # a request waits this long to be admitted, then 503: longer than a trickler keeps its place
GRPC_CONTROL_THREADS = 8  # gRPC threads beyond the admitted inference calls: health and metadata never wait
GRPC_QUEUED_RPCS = 256  # gRPC calls queued beyond its threads before grpc itself refuses more
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


class TooSlow(Exception):
    """A request body that came slower than ``MIN_BODY_RATE``: the message is the client's one line (HTTP 408)."""


def error_response(status: int, message: str, *, close: bool = False) -> object:
    """``{"error": message}``; ``close``: with ``Connection: close`` (a body left unread, a client cut off)."""
    from aiohttp import web

    response = web.json_response({"error": message}, status=status)
    if close:
        response.force_close()
    return response


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
        try:
            header_length = None if header is None else int(header)
        except ValueError:
            return error_response(400, f"Inference-Header-Content-Length {short(header)}: not an integer")
        try:  # the body is read before an inference slot is taken: a trickler holds only its admission
            await asyncio.wait_for(self.admitted.acquire(), ADMIT_SECONDS)
        except asyncio.TimeoutError:
            busy = f"busy: {self.inflight * ADMITTED_PER_SLOT} requests are already being received or run; try again"
            return error_response(503, busy, close=True)
        try:
            body = await self.receive(request, length)
            async with self.gate:
                checked = await self.loop.run_in_executor(None, check_http_infer, body, header_length, self.limits)
                del body  # only the checked copy is held while the model runs
                checked_body, checked_header_length = checked
                return await self.forward(
                    request, f"/v2/models/{self.model}/infer", checked_body, header_length=checked_header_length
                )
        except TooSlow as e:
            return error_response(408, str(e), close=True)
        except BadRequest as e:
            return error_response(400, str(e))
        finally:
            self.admitted.release()

    async def receive(self, request: object, length: int) -> bytearray:
        """The body as it arrives; :class:`TooSlow` once it lags ``MIN_BODY_RATE`` by ``BODY_FLOOR_SECONDS``."""
        start, body = self.loop.time(), bytearray()
        while len(body) < length:  # the parser stops at Content-Length: at most max_body_bytes
            due = start + min(BODY_FLOOR_SECONDS + len(body) / MIN_BODY_RATE, BODY_SECONDS)
            try:
                chunk = await asyncio.wait_for(request.content.readany(), max(due - self.loop.time(), 0.0))
            except ConnectionError:  # the client went away: nobody reads the answer, the server log stays quiet
                raise BadRequest("the client closed the connection while sending the body") from None
            except asyncio.TimeoutError:
                raise TooSlow(
                    f"request body too slow: {len(body)} of {length} bytes in {self.loop.time() - start:.1f} s "
                    f"(at least {MIN_BODY_RATE / 1e6:g} MB/s after {BODY_FLOOR_SECONDS:g} s, "
                    f"{BODY_SECONDS:g} s at most)"
                ) from None
            if not chunk:
                raise BadRequest(f"the request body ended after {len(body)} of its {length} bytes")
            body += chunk
        return body

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
        self.admitted = asyncio.Semaphore(self.inflight * ADMITTED_PER_SLOT)
        self.session = ClientSession(
            f"http://{self.upstream}",
            auto_decompress=False,
            connector=TCPConnector(limit=self.inflight + 8),
            timeout=ClientTimeout(total=REQUEST_SECONDS, sock_connect=10),
        )
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        # Compressed bodies are refused (415) unread: aiohttp must not try to decode them while it drains them.
        self.runner = web.AppRunner(app, access_log=None, auto_decompress=False)
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
        self.admitted = threading.BoundedSemaphore(inflight * ADMITTED_PER_SLOT)  # ModelInfer calls in this front
        self.gate = threading.BoundedSemaphore(inflight)  # ModelInfer calls at the model
        # gRPC does not say how long a message is before it has come: the HTTP rule for the largest one allowed
        self.message_seconds = min(BODY_FLOOR_SECONDS + limits.max_body_bytes / MIN_BODY_RATE, BODY_SECONDS)

    def start(self, host: str, port: int) -> None:
        import grpc

        front = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: object) -> object:
                method = details.method
                name = method[len(GRPC_SERVICE) :] if method.startswith(GRPC_SERVICE) else ""
                if name == "ModelInfer":  # stream_unary: the message is read once admitted (a unary client)
                    return grpc.stream_unary_rpc_method_handler(front.infer)
                if name in (*GRPC_PASSED, "ServerReady"):
                    return grpc.unary_unary_rpc_method_handler(
                        lambda request, context: front.call(name, request, context)
                    )
                return None  # UNIMPLEMENTED: streaming, repository, shared memory, trace and log settings

        threads = self.inflight * ADMITTED_PER_SLOT + GRPC_CONTROL_THREADS  # admitted inferences hold the first ones
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pconv-grpc-front"),
            handlers=[Handler()],
            maximum_concurrent_rpcs=threads + GRPC_QUEUED_RPCS,
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

    def infer(self, requests: object, context: object) -> bytes:
        """One ``ModelInfer``: admitted at once or refused, its message read, then checked and run in a slot."""
        import grpc

        if not self.admitted.acquire(blocking=False):  # waiting would hold a thread; the client retries instead
            busy = f"busy: {self.inflight * ADMITTED_PER_SLOT} inference calls are already in this server; try again"
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
        try:
            cut = threading.Timer(self.message_seconds, context.cancel)  # a message trickling in holds its admission
            cut.start()
            try:
                request = next(requests)
            except (StopIteration, grpc.RpcError):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no ModelInferRequest message arrived")
            finally:
                cut.cancel()
            with self.gate:
                return self.call("ModelInfer", request, context)
        finally:
            self.admitted.release()

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
