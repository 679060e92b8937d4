"""A backend that runs batches on Triton Inference Servers (``pconv serve``, or Triton on a ``pconv triton-repo``).

``TritonBackend(["http://a:8000", "grpc://b:8001"]).run(image, mask)`` sends the padded contract
batch to one server and returns its ``inpainted`` tensor, so the Inpainter and the folder pipeline
run unchanged on top of it. Several threads may call ``run`` at once: each request goes to the
server with the fewest requests in flight; a request that fails is retried on the next server,
and a failing server rests for a while (doubling, up to a limit) before it gets traffic again.
A server that answers busy (full: every admission taken, by this job or by other clients) is healthy:
it neither rests nor counts as failed, and while every server that did not fail answered busy the
batch waits (backing off) and tries them all again, for ``BUSY_SECONDS`` at most.
When a request has failed on every server (or found them busy for that long), :class:`ServersUnavailable`
(one line naming each server and its error) stops the job: nothing more is sent, nothing half-written is left.

The model contract comes from the server: input/output names, dtypes and dims are checked against
the model config, and ``pconv.multiple`` and the other ``pconv.*`` metadata are read from its
``parameters`` (``pconv serve`` and ``pconv triton-repo`` both put them there). Every server must
serve the same model (same ``pconv.*`` metadata).

Needs ``tritonclient[http,grpc]`` (the ``client`` extra); imported when a backend is made.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from pconv_deploy.contract import CHANNELS, DEFAULT_MODEL_NAME, IMAGE, INPUT_NAMES, MASK, METADATA_KEYS, OUTPUT
from pconv_deploy.errors import JobStopped, PConvError, first_line
from pconv_deploy.serving.options import DEFAULT_PORTS

SCHEMES = ("http", "grpc")
# One request may take this long (a big batch on a CPU server takes minutes); a dead or unreachable server
# is noticed at connect time (at most 10 s), not after this.
REQUEST_SECONDS = 300.0
REST_SECONDS = (1.0, 30.0)  # a failed server rests this long first, doubling per failure up to the second value
WAIT_POLL_SECONDS = 0.5
# A busy server frees an admission when one of its requests ends (soon, for small batches; minutes for big ones
# on a CPU): the batch tries again after BUSY_PAUSE_SECONDS[0], doubling up to [1] (few retries while it stays
# full, none that waits long once it is not), and gives up after BUSY_SECONDS, as long as one request may take.
BUSY_PAUSE_SECONDS = (0.25, 4.0)
BUSY_SECONDS = REQUEST_SECONDS
# How a full server refuses: pconv serve's HTTP 503 "busy: ...", its gRPC RESOURCE_EXHAUSTED "busy: ...", and
# grpc's own "Concurrent RPC limit exceeded" (tritonserver, or a front past its queue). Not every 503 or
# RESOURCE_EXHAUSTED is busy: "not ready", a model server that did not answer, a message over the size limit.
BUSY_GRPC_STATUS = "StatusCode.RESOURCE_EXHAUSTED"
BUSY_MESSAGES = re.compile(r"busy\b|.*Concurrent RPC limit exceeded", re.IGNORECASE)


class ServersUnavailable(JobStopped):
    """Every server failed one request: the job cannot go on (the pipeline stops instead of failing each file)."""


def parse_server(url: str) -> tuple[str, str]:
    """``http://host:port`` / ``grpc://host:port`` -> (scheme, ``host:port``); the scheme picks the protocol."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    scheme = parts.scheme or "http"
    if scheme not in SCHEMES:
        raise PConvError(f"--server {url}: unknown scheme {scheme!r}: use http://HOST:PORT or grpc://HOST:PORT")
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise PConvError(f"--server {url}: expected {scheme}://HOST:PORT")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise PConvError(f"--server {url}: invalid port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return scheme, f"{host}:{port}"


def error_line(e: BaseException) -> str:
    """One line for a failed request: the served function's own error when Triton wraps a traceback around it."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in reversed(lines[1:]):
        if re.match(r"[\w.]+(Error|Exception): ", line) and "Traceback" not in line:
            return line
    return f"{type(e).__name__}: {first_line(e)}"


def is_busy(e: BaseException) -> bool:
    """Whether a request was refused only because the server is full (it is up, and will take it later)."""
    from tritonclient.utils import InferenceServerException

    if not isinstance(e, InferenceServerException) or e.status() not in ("503", BUSY_GRPC_STATUS):
        return False
    return BUSY_MESSAGES.match(e.message() or "") is not None


@dataclass(frozen=True)
class ServedModel:
    """What a server's model config promises: checked against the contract by :func:`check_config`."""

    multiple: int
    max_batch: int  # 0: no batching by Triton (the batch dim is in dims), any N accepted
    metadata: dict[str, str]


def config_dims(tensor: dict) -> list[int]:
    return [int(d) for d in tensor.get("dims", [])]  # gRPC's JSON spells int64 as strings


def check_config(config: dict, where: str) -> ServedModel:
    """Check a model config (Triton's JSON form) against the contract; one-line PConvError naming ``where``."""
    max_batch = int(config.get("max_batch_size", 0))
    lead = [] if max_batch > 0 else [-1]
    expected = {name: (lead + [CHANNELS[name], -1, -1]) for name in (*INPUT_NAMES, OUTPUT)}
    found = {t.get("name"): t for t in [*config.get("input", []), *config.get("output", [])]}
    for name, dims in expected.items():
        tensor = found.get(name)
        if tensor is None:
            raise PConvError(f"{where}: the model has no tensor {name!r} (has {sorted(found)}): not a pconv model")
        if tensor.get("data_type") != "TYPE_FP32" or config_dims(tensor) != dims:
            raise PConvError(
                f"{where}: tensor {name!r} is {tensor.get('data_type')} {config_dims(tensor)}, "
                f"the contract needs TYPE_FP32 {dims}"
            )
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items() if k.startswith("pconv.")}
    try:
        multiple = int(params.get("pconv.multiple", ""))
    except ValueError:
        multiple = 0
    if multiple < 1:
        raise PConvError(f"{where}: no valid pconv.multiple in the model config parameters (serve a pconv model)")
    return ServedModel(multiple, max_batch, params)


@dataclass
class Server:
    url: str
    scheme: str
    address: str
    inflight: int = 0
    failures: int = 0
    resting_until: float = 0.0
    model: ServedModel | None = None  # set once its config was read and checked
    excluded: str = ""  # why it is never used (it serves another model)
    last_error: str = ""
    clients: threading.local = field(default_factory=threading.local)  # one client per thread and server

    def rest(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.resting_until = time.monotonic() + min(REST_SECONDS[0] * 2 ** (self.failures - 1), REST_SECONDS[1])


class TritonBackend:
    """The runtime backend interface (name, multiple, metadata, max_batch, run) over one or more Triton servers."""

    def __init__(
        self,
        urls: Sequence[str],
        model_name: str = DEFAULT_MODEL_NAME,
        *,
        timeout: float = REQUEST_SECONDS,
        wait: float = 0.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        """Connect to ``urls``; when no server has the model ready, poll for up to ``wait`` seconds (a server
        still starting), telling ``on_wait`` once, then give up with :class:`ServersUnavailable` (one line)."""
        try:  # fail here, naming the extra, not in a worker thread
            import tritonclient.grpc  # noqa: F401
            import tritonclient.http  # noqa: F401
        except ModuleNotFoundError as e:
            raise PConvError(f"--server needs the client extra ({e}): pip install 'pconv-deploy[client]'") from None

        if not urls:
            raise PConvError("no --server given")
        self.model_name = model_name
        self.timeout = timeout
        self.servers = [Server(url, *parse_server(url)) for url in dict.fromkeys(urls)]
        self.lock = threading.Lock()
        self.opened: list[object] = []  # every client made, closed by close()
        found = self.wait_for_model(wait, on_wait)
        reachable = [(s, m) for s, m in zip(self.servers, found) if m is not None]
        if not reachable:
            waited = f" within {wait:g} s" if wait > 0 else ""
            raise ServersUnavailable(self.all_failed_message(f"no server had model {model_name!r} ready{waited}"))
        first, model = reachable[0]
        for server, other in reachable[1:]:
            self.check_same(server, other, reference_server=first, reference=model)
        self.reference, self.served = first, model
        self.multiple = model.multiple
        self.metadata = dict(model.metadata)
        self.max_batch = model.max_batch or None
        # Memory here per padded pixel: float32 image, mask and output plus their serialised copies (the
        # activations live on the server), so the Inpainter's memory budget does not shrink batches for them.
        self.bytes_per_pixel = 64
        self.name = f"triton ({len(reachable)}/{len(self.servers)} servers)"

    def wait_for_model(self, wait: float, on_wait: Callable[[str], None] | None) -> list[ServedModel | None]:
        """Describe every server, again every WAIT_POLL_SECONDS until one has the model ready or ``wait`` ran out."""
        deadline = time.monotonic() + wait
        for attempt in range(int(wait / WAIT_POLL_SECONDS) + 2):  # bounded; the deadline normally ends it
            with ThreadPoolExecutor(len(self.servers)) as pool:
                found = list(pool.map(self.describe, self.servers))
            if any(m is not None for m in found) or time.monotonic() >= deadline:
                return found
            if attempt == 0 and on_wait is not None:
                on_wait(f"waiting up to {wait:g} s for model {self.model_name!r} on {len(self.servers)} server(s)")
            time.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        return found

    # -- talking to one server ---------------------------------------------------------------------------------
    def client(self, server: Server) -> object:
        client = getattr(server.clients, "client", None)
        if client is None:
            if server.scheme == "http":
                import tritonclient.http as http

                client = http.InferenceServerClient(
                    server.address, connection_timeout=min(10.0, self.timeout), network_timeout=self.timeout
                )
            else:
                import tritonclient.grpc as grpc

                client = grpc.InferenceServerClient(server.address)
            server.clients.client = client
            with self.lock:
                self.opened.append(client)
        return client

    def describe(self, server: Server) -> ServedModel | None:
        """Read and check ``server``'s model config; None (and the server rests) when it does not answer."""
        try:
            client = self.client(server)
            if server.scheme == "http":
                ready = client.is_model_ready(self.model_name)
                config = client.get_model_config(self.model_name) if ready else None
            else:
                ready = client.is_model_ready(self.model_name, client_timeout=self.timeout)
                config = (
                    client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout)["config"]
                    if ready
                    else None
                )
        except Exception as e:  # connection refused, timeouts, unknown model: all mean "not usable now"
            with self.lock:
                server.rest(error_line(e))
            return None
        if not ready:
            with self.lock:
                server.rest(f"model {self.model_name!r} not ready")
            return None
        server.model = check_config(config, f"{server.url} model {self.model_name!r}")
        with self.lock:
            server.failures, server.resting_until = 0, 0.0
        return server.model

    def check_same(
        self, server: Server, model: ServedModel, *, reference_server: Server, reference: ServedModel
    ) -> None:
        """Refuse ``server`` (one line) when its model differs from the one ``reference_server`` serves."""
        keys = [k for k in METADATA_KEYS if k != "pconv.producer"]
        differs = [k for k in keys if model.metadata.get(k) != reference.metadata.get(k)]
        if differs or model.max_batch != reference.max_batch:
            what = ", ".join(differs) or "max_batch_size"
            raise PConvError(f"{server.url} serves a different model than {reference_server.url} (different {what})")

    def validate(self, server: Server) -> None:
        """A server that was down at the start: check what it serves before its first batch (once)."""
        try:
            model = self.describe(server)
            if model is None:
                raise ConnectionError(server.last_error)
            self.check_same(server, model, reference_server=self.reference, reference=self.served)
        except PConvError as e:
            server.model, server.excluded = None, str(e)  # never again: it serves something else
            raise

    def request(self, server: Server, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One inference on one server (raises whatever tritonclient raises)."""
        if server.model is None:
            self.validate(server)
        client = self.client(server)
        inputs, outputs = self.request_tensors(server.scheme, image, mask)
        if server.scheme == "http":
            result = client.infer(self.model_name, inputs, outputs=outputs)  # network_timeout bounds it
        else:
            result = client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout)
        out = result.as_numpy(OUTPUT)
        if out is None or out.shape != image.shape or out.dtype != np.float32:
            got = None if out is None else f"{out.dtype} {list(out.shape)}"
            raise PConvError(f"{server.url}: returned {got} for input {list(image.shape)}")
        return out

    @staticmethod
    def request_tensors(scheme: str, image: np.ndarray, mask: np.ndarray) -> tuple[list, list]:
        """The request's InferInput/InferRequestedOutput objects (binary tensors): contract names, FP32, NCHW."""
        if scheme == "http":
            import tritonclient.http as lib
        else:
            import tritonclient.grpc as lib
        binary = {"binary_data": True} if scheme == "http" else {}  # HTTP sends JSON unless asked; gRPC is binary

        def add(name: str, array: np.ndarray) -> object:
            tensor = lib.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, **binary)
            return tensor

        return [add(IMAGE, image), add(MASK, mask)], [lib.InferRequestedOutput(OUTPUT, **binary)]

    # -- the backend interface ---------------------------------------------------------------------------------
    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Run one padded batch on the least busy server, retrying on the others; thread-safe. While every server
        that did not fail answered busy, wait (backing off) and try again, for ``BUSY_SECONDS`` at most."""
        image = np.ascontiguousarray(image, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.float32)
        if image.shape[2] % self.multiple or image.shape[3] % self.multiple:
            raise PConvError(f"batch {list(image.shape)}: H and W must be multiples of {self.multiple}")
        deadline, pause = time.monotonic() + BUSY_SECONDS, BUSY_PAUSE_SECONDS[0]
        for _ in range(int(BUSY_SECONDS / BUSY_PAUSE_SECONDS[0]) + 2):  # bounded; the deadline normally ends it
            out, busy = self.attempt(image, mask)
            if out is not None:
                return out
            left = deadline - time.monotonic()
            if not busy or left <= 0:
                break
            time.sleep(min(pause, left))
            pause = min(2 * pause, BUSY_PAUSE_SECONDS[1])
        what = f"found the servers busy for {BUSY_SECONDS:g} s" if busy else "failed on every server"
        raise ServersUnavailable(self.all_failed_message(f"a batch {list(image.shape)} {what}"))

    def attempt(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray | None, bool]:
        """The batch on each server in turn until one answers: (its output, or None and whether one was busy)."""
        tried: set[int] = set()
        busy = False
        while (server := self.pick(tried)) is not None:
            try:
                out = self.request(server, image, mask)
            except Exception as e:  # down, broken, a different model, or busy: the next server gets the batch
                refused = is_busy(e)
                busy = busy or refused
                self.release(server, error_line(e), busy=refused)
                continue
            self.release(server, None)
            return out, False
        return None, busy

    def pick(self, tried: set[int]) -> Server | None:
        """The server for the next attempt: not tried yet for this batch, awake before resting, fewest in flight."""
        now = time.monotonic()
        with self.lock:
            options = [
                (s.resting_until > now, s.inflight, i)
                for i, s in enumerate(self.servers)
                if i not in tried and not s.excluded
            ]
            if not options:
                return None
            _, _, index = min(options)
            tried.add(index)
            server = self.servers[index]
            server.inflight += 1
            return server

    def release(self, server: Server, error: str | None, *, busy: bool = False) -> None:
        """A request ended: ``error`` rests the server, unless it was only ``busy`` (up and answering, just full)."""
        with self.lock:
            server.inflight -= 1
            if error is None or busy:
                server.failures, server.resting_until = 0, 0.0
                server.last_error = error or server.last_error
            else:
                server.rest(error)

    def all_failed_message(self, what: str) -> str:
        details = "; ".join(f"{s.url}: {s.last_error or 'not tried'}" for s in self.servers)
        return f"Triton servers unavailable ({what}): {details}"

    def close(self) -> None:
        with self.lock:
            clients, self.opened = self.opened, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing a client of a dead server may fail: nothing to do about it
                pass
