"""The models an app serves: one :class:`Inpainter` each, run one request at a time, with progress.

Each model is opened as ``pconv infer`` opens it (``load_backend``, or the Triton client for
``--server``) and wrapped in an Inpainter with the same strategy, margin, batch size and memory
budget, so a result from the page is the result ``pconv infer`` writes for the same photo and mask.
Requests run one at a time (a lock): the memory budget of each Inpainter assumes it has the process
to itself, and a CPU backend uses every core on one request already.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pconv_deploy.contract import DEFAULT_MODEL_NAME
from pconv_deploy.errors import PConvError
from pconv_deploy.infer import default_inflight
from pconv_deploy.runtime import Inpainter, InpaintOptions, load_backend
from pconv_deploy.runtime.images import DEFAULT_MAX_PIXELS, Picture
from pconv_deploy.runtime.outputs import DEFAULT_PNG_LEVEL, encode_png

DEFAULT_MAX_UPLOAD = 128 * 2**20  # bytes of one request body (photo + mask)


@dataclass(frozen=True)
class AppOptions:
    """Everything ``pconv app`` is told: the models, where to listen, and ``pconv infer``'s inference settings."""

    models: tuple[Path, ...] = ()
    servers: tuple[str, ...] = ()
    server_model: str = DEFAULT_MODEL_NAME
    host: str = "127.0.0.1"
    port: int = 8765
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None
    inpaint: InpaintOptions = InpaintOptions()  # as `pconv infer`'s; inflight is set per model
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload: int = DEFAULT_MAX_UPLOAD
    png_level: int = DEFAULT_PNG_LEVEL

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_upload < 1:
            raise PConvError("--max-pixels and --max-upload must be >= 1")


@dataclass
class Progress:
    """What the running request has done: tiles through the backend out of the tiles planned."""

    model: str = ""
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)

    def start(self, model: str, total: int) -> None:
        self.model, self.done, self.total, self.started = model, 0, total, time.monotonic()

    def stop(self) -> None:
        self.model, self.done, self.total = "", 0, 0

    def as_json(self) -> dict:
        busy = bool(self.model)
        seconds = round(time.monotonic() - self.started, 2) if busy else 0.0
        return {"busy": busy, "model": self.model, "done": self.done, "total": self.total, "seconds": seconds}


class CountingBackend:
    """A backend that counts the tiles it has run (for the page's progress) and otherwise is the one it wraps."""

    def __init__(self, inner: object, progress: Progress) -> None:
        self.inner, self.progress = inner, progress

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.inner.run(image, mask)
        self.progress.done += int(image.shape[0])
        return out


@dataclass
class Result:
    png: bytes
    seconds: float  # inference alone (planning, backend calls, compositing), not decoding or encoding
    tiles: int


class ModelSet:
    """The served models by name, in the order given (the first is the one the others are compared with)."""

    def __init__(self, options: AppOptions, announce: Callable[[str], None] = print) -> None:
        # ONNX Runtime's POSIX builds start a telemetry client on import that writes $TMPDIR/.ses; the app
        # promises to write nothing but what the user downloads. Effective only before onnxruntime is imported.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        self.options = options
        self.progress = Progress()
        self.lock = threading.Lock()
        self.inpainters: dict[str, Inpainter] = {}
        self.sources: dict[str, str] = {}
        for path in options.models:
            name = unique_name(Path(path).name, self.inpainters)
            backend = load_backend(path, options.backend, options.device, on_fallback=announce, threads=options.threads)
            self.add(name, str(path), backend, inflight=default_inflight(()))
        if options.servers:
            from pconv_deploy.serving.client import TritonBackend

            name = unique_name(f"{options.server_model}@triton", self.inpainters)
            backend = TritonBackend(list(options.servers), options.server_model)
            self.add(name, " ".join(options.servers), backend, inflight=default_inflight(options.servers))
        if not self.inpainters:
            raise PConvError("no model to serve: give --model FILE or --server URL")

    def add(self, name: str, source: str, backend: object, *, inflight: int) -> None:
        wrapped = CountingBackend(backend, self.progress)
        inpainter = Inpainter(wrapped, replace(self.options.inpaint, inflight=inflight))
        self.inpainters[name] = inpainter
        self.sources[name] = source

    @property
    def names(self) -> list[str]:
        return list(self.inpainters)

    def describe(self) -> list[dict]:
        return [
            {"name": n, "backend": i.backend.name, "source": self.sources[n], "multiple": i.multiple}
            for n, i in self.inpainters.items()
        ]

    def inpaint(self, name: str, picture: Picture, hole: np.ndarray) -> Result:
        """Inpaint with model ``name`` and encode the lossless PNG ``pconv infer`` would write."""
        inpainter = self.inpainters[name]
        with self.lock:
            started = time.monotonic()
            job = inpainter.plan(picture.pixels, hole)
            self.progress.start(name, len(job.tiles))
            try:
                pixels = picture.merged(job.finish(inpainter.run_tiles(job.tiles)))
                seconds = time.monotonic() - started
            finally:
                self.progress.stop()
        return Result(encode_png(pixels, self.options.png_level, picture.icc_profile), seconds, len(job.tiles))


def unique_name(name: str, taken: dict) -> str:
    """``name``, or ``name (2)``, ``name (3)``... when two models have the same file name."""
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} ({n})", n + 1
    return candidate
