"""The private tritonserver behind ``pconv serve``'s fronts: its loopback ports, its log, and proof it answers.

``pconv serve`` announces ready only after :func:`wait_until_answers`: the model is ready on the
private port and one warm-up request came back with the right shape and its known pixels unchanged.
"""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Collection

import numpy as np

from pconv_deploy.contract import CHANNELS, IMAGE, MASK, OUTPUT
from pconv_deploy.errors import PConvError
from pconv_deploy.serving.fronts import one_line

LOOPBACK = "127.0.0.1"
PORT_ATTEMPTS = 100  # draws of free ports before giving up (a draw hits a public port about once in 10^4)
LOG_TAIL_CHARS = 64 * 1024  # what PyTriton keeps of tritonserver's log (it kept all of it, forever)
# Lines a healthy tritonserver prints on a machine without a CUDA driver; hidden, and said once in plain words.
NO_CUDA = re.compile(r"Unable to allocate pinned system memory|CudaDriverHelper has not been initialized")
# PyTriton loads its model from config text, not a file: Triton cannot stat a config file it never had.
HARMLESS = re.compile(r"Failed to set config modification time: model_config_content_name_ is empty")
NO_CUDA_LINE = "pconv serve: no CUDA driver: tritonserver runs on the CPU (its CUDA / pinned-memory warnings hidden)"


def private_ports(count: int, *, public: Collection[int]) -> list[int]:
    """Free loopback ports for tritonserver itself, none of them one of the ``public`` ports.

    The public fronts bind their ports only once the model answers, so until then the system may hand one
    of them out as a free port: tritonserver would take it and the front could not listen.
    """
    for _attempt in range(PORT_ATTEMPTS):
        sockets = [socket.socket() for _ in range(count)]
        try:
            for s in sockets:
                s.bind((LOOPBACK, 0))
            ports = [s.getsockname()[1] for s in sockets]
        finally:
            for s in sockets:
                s.close()
        if not set(ports) & set(public):
            return ports
    raise PConvError(f"no free loopback ports for tritonserver outside {sorted(set(public))[:8]}")


def filter_tritonserver_log() -> None:
    """Pass tritonserver's log on without its known harmless error lines, keeping a bounded tail in memory.

    PyTriton 0.7.0 prints each line and appends it to a string that grows for the server's life; its
    ``_record_logs`` is replaced here (the version is pinned in the ``serve`` extra).
    """
    from pytriton.server.triton_server import TritonServer

    said: list[bool] = []
    pending = [""]  # PyTriton reads the log unbuffered: pieces of lines, joined here

    def record(self: object, piece: bytes | str) -> None:
        if isinstance(piece, bytes):
            piece = piece.decode("utf-8", errors="replace")
        self._tritonserver_logs = (self._tritonserver_logs + piece)[-LOG_TAIL_CHARS:]
        *lines, pending[0] = (pending[0] + piece).split("\n")
        pending[0] = pending[0][-LOG_TAIL_CHARS:]
        for line in lines:
            if NO_CUDA.search(line):
                if not said:
                    said.append(True)
                    print(NO_CUDA_LINE, file=sys.stderr, flush=True)
            elif not HARMLESS.search(line):
                print(line, file=sys.stderr, flush=True)

    TritonServer._record_logs = record  # noqa: SLF001


def warm_up(upstream: str, name: str, multiple: int) -> None:
    """One request on the private port: the output has the input's shape and keeps the known pixels."""
    import tritonclient.http as http

    size = multiple
    image = np.full((1, CHANNELS[IMAGE], size, size), 0.5, np.float32)
    mask = np.ones((1, CHANNELS[MASK], size, size), np.float32)
    mask[..., size // 2 :, :] = 0
    image *= mask
    client = http.InferenceServerClient(upstream, connection_timeout=10, network_timeout=600)
    try:
        inputs = []
        for tensor_name, array in ((IMAGE, image), (MASK, mask)):
            tensor = http.InferInput(tensor_name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        out = client.infer(name, inputs, outputs=[http.InferRequestedOutput(OUTPUT, binary_data=True)])
        result = out.as_numpy(OUTPUT)
    except Exception as e:  # tritonclient's exceptions: the model cannot answer
        raise PConvError(f"the warm-up request failed: {one_line(str(e))[:300]}") from None
    finally:
        client.close()
    known = mask[:, 0] == 1
    if result is None or result.shape != image.shape or not np.allclose(result[:, :, known[0]], 0.5, atol=1e-3):
        raise PConvError(f"the warm-up request returned a wrong result ({None if result is None else result.shape})")


def wait_until_answers(readiness: object, *, name: str, multiple: int, seconds: float) -> None:
    """Poll (bounded) until the model is ready on the private port, then run :func:`warm_up`."""
    deadline = time.monotonic() + seconds
    while not readiness.check():
        if time.monotonic() > deadline:
            raise PConvError(f"model {name!r} was not ready {seconds:.0f} s after tritonserver started")
        time.sleep(0.2)
    warm_up(readiness.upstream, name, multiple)
