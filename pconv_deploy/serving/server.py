"""The process behind `pconv serve`: a real Triton Inference Server (PyTriton) in front of the runtime.

Runs in the serve environment (``.venv-serve``: numpy<2, onnxruntime, nvidia-pytriton, this package
without torch), started by :mod:`pconv_deploy.serving.launcher`. It serves the model contract exactly
as an exported ONNX file does in a ``pconv triton-repo`` repository: inputs ``image`` [N,3,H,W] and
``mask`` [N,1,H,W] float32, output ``inpainted`` [N,3,H,W] float32, H and W multiples of
``pconv.multiple`` (the caller pads; see docs/contract.md), the ``pconv.*`` metadata as model config
``parameters``, dynamic batching up to ``max_batch_size``. Tritonserver listens on private loopback
ports; the public ones belong to the checking fronts (:mod:`pconv_deploy.serving.fronts`).

    python -m pconv_deploy.serving.server '{"model": "/abs/model.onnx", "http_port": 8000, ...}'

The one argument is :meth:`ServeOptions.to_json`: the launcher's options, read back as they were.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pconv_deploy.contract import CHANNELS, IMAGE, MASK, OUTPUT
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.files import pid_alive
from pconv_deploy.serving.checks import Limits
from pconv_deploy.serving.fronts import GrpcFront, HttpFront, Readiness
from pconv_deploy.serving.options import ServeOptions, preferred_batch_sizes
from pconv_deploy.serving.upstream import LOOPBACK, filter_tritonserver_log, private_ports, wait_until_answers

log = logging.getLogger("pconv_deploy.serving")

READY_MARK = "pconv serve: ready"  # the launcher and the tests wait for this line


def check_batch(image: np.ndarray, mask: np.ndarray, multiple: int) -> str | None:
    """Why a batch breaks the contract (one line), or None: the server refuses it before the model sees it."""
    for name, array, channels in ((IMAGE, image, CHANNELS[IMAGE]), (MASK, mask, CHANNELS[MASK])):
        if array.dtype != np.float32 or array.ndim != 4 or array.shape[1] != channels:
            return f"{name} must be float32 [N,{channels},H,W], got {array.dtype} {list(array.shape)}"
    if image.shape[0] != mask.shape[0] or image.shape[2:] != mask.shape[2:]:
        return f"{IMAGE} {list(image.shape)} and {MASK} {list(mask.shape)} differ in N, H or W"
    h, w = image.shape[2:]
    if h % multiple or w % multiple:
        return f"H and W must be multiples of {multiple} (pconv.multiple), got {h}x{w}: pad first (docs/contract.md)"
    return None


def make_infer(run: Callable[[np.ndarray, np.ndarray], np.ndarray], multiple: int) -> Callable:
    """The served function: one dynamic batch (requests of equal H, W stacked by Triton) through the backend."""
    from pytriton.decorators import batch
    from pytriton.exceptions import PyTritonBadParameterError

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        image, mask = inputs[IMAGE], inputs[MASK]
        problem = check_batch(image, mask, multiple)
        if problem:
            raise PyTritonBadParameterError(problem)
        return {OUTPUT: np.ascontiguousarray(run(image, mask), dtype=np.float32)}

    return infer


def add_parameters(triton: object, name: str, parameters: dict[str, str]) -> None:
    """Put the ``pconv.*`` metadata into the served model's config ``parameters`` (as triton-repo does).

    PyTriton 0.7.0 has no public hook for config parameters: its model config (generated once and
    cached) carries ``backend_parameters`` into ``parameters``, so ours are added there before load.
    tests/test_serving_server.py reads them back from the running server.
    """
    models = [m for m in triton._model_manager.models if m.model_name == name]  # noqa: SLF001
    if len(models) != 1:
        raise PConvError(f"internal: PyTriton has {len(models)} models named {name!r}")
    models[0]._get_triton_model_config().backend_parameters.update(parameters)  # noqa: SLF001


def python_backend_env() -> None:
    """Let Triton's Python backend stub load this interpreter's libpython, not the system's (docs/design.md section 10).

    The stub links ``libpython3.X.so.1.0``; with a non-system interpreter the system copy loads and
    model load fails (``'_thread.RLock' object has no attribute '_recursion_count'``). The
    environment is inherited by tritonserver and the stub it starts.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir, sysconfig.get_config_var("INSTSONAME") or "").is_file():
        current = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in current.split(":"):
            os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def die_with_parent() -> None:
    """Linux: SIGTERM this process when the launcher dies (even by SIGKILL), so no server outlives it."""
    libc_name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent is already gone
            os.kill(os.getpid(), signal.SIGTERM)


def check_ports(options: ServeOptions) -> None:
    """Refuse ports already in use, in one line: tritonserver would fail, and PyTriton then talks to whatever
    listens there (another server's 403 instead of "in use"). That they differ, ServeOptions checked."""
    ports = {"--http-port": options.http_port, "--grpc-port": options.grpc_port, "--metrics-port": options.metrics_port}
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.host, port))
            except OSError as e:
                raise PConvError(f"{flag} {port}: cannot listen on {options.host}:{port} ({e.strerror})") from None


def fresh_workspace() -> Path:
    """PyTriton's workspace (model store, sockets, a copy of tritonserver) for this process, under one root.

    PyTriton removes it on a clean stop; the ones of killed servers (their pid is gone) are removed here.
    """
    root = Path(tempfile.gettempdir()) / "pconv-serve"
    root.mkdir(exist_ok=True)
    for entry in root.iterdir():
        match = re.fullmatch(r"pid(\d+)-[0-9a-f]+", entry.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    return root / f"pid{os.getpid()}-{secrets.token_hex(4)}"


def serve(options: ServeOptions, announce: Callable[[str], None] = print) -> None:
    """Load the model, start Triton behind the checking fronts on ``options``' ports, serve until SIGINT/SIGTERM.

    Tritonserver listens on private loopback ports; the public HTTP and gRPC ports open only once the
    model answered a warm-up request, so "ready" is never printed (nor answered) before it can answer.
    """
    from pconv_deploy.runtime.backends import load_backend

    check_ports(options)
    backend = load_backend(options.model, "auto", on_fallback=announce)
    metadata = dict(backend.metadata)
    metadata.setdefault("pconv.multiple", str(backend.multiple))
    if options.max_pixels < backend.multiple**2:
        m = backend.multiple
        raise PConvError(f"--max-pixels {options.max_pixels}: below the smallest request ({m}x{m}, pconv.multiple)")
    python_backend_env()
    filter_tritonserver_log()
    from pytriton.triton import Triton

    http_port, grpc_port = private_ports(2, public=(options.http_port, options.grpc_port, options.metrics_port))
    triton = Triton(config=triton_config(options, http_port, grpc_port), workspace=fresh_workspace())
    limits = Limits(multiple=backend.multiple, max_batch=options.max_batch_size, max_pixels=options.max_pixels)
    readiness = Readiness(f"{LOOPBACK}:{http_port}", options.name)
    fronts: list = []
    try:
        bind_model(triton, options, backend=backend, metadata=metadata)
        triton.run()  # starts tritonserver and loads the model
        wait_until_answers(readiness, name=options.name, multiple=backend.multiple, seconds=options.start_seconds)
        readiness.start()
        inflight = max(4, options.max_batch_size * options.instances)  # requests held at once per front
        for front, port, upstream in (
            (HttpFront, options.http_port, http_port),
            (GrpcFront, options.grpc_port, grpc_port),
        ):
            fronts.append(
                front(
                    upstream=f"{LOOPBACK}:{upstream}",
                    model=options.name,
                    limits=limits,
                    readiness=readiness,
                    inflight=inflight,
                )
            )
            fronts[-1].start(options.host, port)
        where = f"http://{options.host}:{options.http_port} grpc://{options.host}:{options.grpc_port}"
        announce(
            f"{READY_MARK}: model {options.name!r} ({options.model.name}, {backend.name}) at {where}, "
            f"metrics http://{options.host}:{options.metrics_port}/metrics; Ctrl-C or SIGTERM stops it"
        )
        while triton.is_alive() and not readiness.failed:  # KeyboardInterrupt (SIGINT, or SIGTERM) ends the wait
            time.sleep(0.5)
        if readiness.failed:
            raise PConvError(f"the model stopped answering ({readiness.failed}); exiting so that it can be restarted")
        raise PConvError("tritonserver exited unexpectedly")
    except KeyboardInterrupt:
        announce("pconv serve: stopping")
    finally:
        readiness.stop()
        for front in reversed(fronts):
            front.stop()
        triton.stop()
    announce("pconv serve: stopped")


def triton_config(options: ServeOptions, http_port: int, grpc_port: int) -> object:
    """Tritonserver on private loopback ports (the fronts own the public ones); metrics on the public host."""
    from pytriton.triton import TritonConfig

    return TritonConfig(
        http_address=LOOPBACK,
        http_port=http_port,
        grpc_address=LOOPBACK,
        grpc_port=grpc_port,
        metrics_address=options.host,
        metrics_port=options.metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=5,
        log_verbose=0,
    )


def bind_model(triton: object, options: ServeOptions, *, backend: object, metadata: dict[str, str]) -> None:
    """The served function with the contract's tensors, dynamic batching and the ``pconv.*`` parameters."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    model_config = ModelConfig(
        max_batch_size=options.max_batch_size,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=options.queue_delay_us,
            preferred_batch_size=preferred_batch_sizes(options.max_batch_size),
        ),
    )
    tensors = {n: Tensor(name=n, dtype=np.float32, shape=(CHANNELS[n], -1, -1)) for n in (IMAGE, MASK, OUTPUT)}
    triton.bind(
        model_name=options.name,
        infer_func=[make_infer(backend.run, backend.multiple)] * options.instances,
        inputs=[tensors[IMAGE], tensors[MASK]],
        outputs=[tensors[OUTPUT]],
        config=model_config,
        strict=True,
    )
    add_parameters(triton, options.name, metadata)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the serve process: one line on stderr and exit 1 on a user error, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    die_with_parent()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # both stop cleanly, even if SIGINT came in ignored
        signal.signal(stop_signal, signal.default_int_handler)
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) != 1:
            raise PConvError(f"usage: python -m {__spec__.name if __spec__ else __name__} OPTIONS_JSON")
        options = ServeOptions.from_json(args[0])
        serve(options, announce=lambda text: print(text, file=sys.stderr, flush=True))
    except PConvError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("pconv serve: stopped before it was ready", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # PyTriton's own startup failures (port in use, model load) as one line
        print(f"error: Triton did not start: {type(e).__name__}: {first_line(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
