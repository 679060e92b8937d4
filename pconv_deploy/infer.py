"""`pconv infer` as one Python call: ``infer(InferOptions(...))`` returns the folder job's report.

The options say what runs the batches (a local model file, or Triton servers that hold the model),
how photos are cut and batched (``InpaintOptions``) and which folders are read and written
(``FolderOptions``). The CLI parses its flags into these three objects and calls :func:`infer`;
a service or a script builds them itself and gets the same job.

>>> from pconv_deploy.infer import FolderOptions, InferOptions, infer
>>> report = infer(InferOptions(model="model.onnx", folder=FolderOptions(images="in", masks="m", output="out")))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pconv_deploy.contract import DEFAULT_MODEL_NAME, DEFAULT_SERVER_WAIT
from pconv_deploy.errors import UsageError
from pconv_deploy.runtime.backends import Backend, load_backend
from pconv_deploy.runtime.inpainter import Inpainter, InpaintOptions
from pconv_deploy.runtime.pipeline import FolderOptions, Report, run_folder

# Every options object a run takes, and the functions that run it.
__all__ = ["FolderOptions", "InferOptions", "InpaintOptions", "default_inflight", "infer", "open_backend"]

INFLIGHT_PER_SERVER = 2  # batches in flight per Triton server: one computing while the next one travels


def default_inflight(servers: Sequence[str]) -> int:
    """Backend calls at once: 1 for a local model (it uses every core on one batch), INFLIGHT_PER_SERVER per server."""
    return INFLIGHT_PER_SERVER * len(servers) if servers else 1


@dataclass(frozen=True, kw_only=True)
class InferOptions:
    """Everything one `pconv infer` run needs; checked once, here (bad values: UsageError, exit 2).

    Exactly one of ``model`` (an .onnx, engine or .safetensors file, opened with ``backend`` on
    ``device``) and ``servers`` (Triton URLs holding ``server_model``, waited for up to
    ``server_wait`` seconds). ``inpaint=None`` means the defaults, with ``inflight`` 1 for a local
    model and ``INFLIGHT_PER_SERVER`` per server (:func:`default_inflight`).
    """

    folder: FolderOptions
    model: Path | None = None
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"  # what OpenVINO computes in (INFERENCE_PRECISIONS)
    servers: tuple[str, ...] = ()
    server_model: str = DEFAULT_MODEL_NAME
    server_wait: float = DEFAULT_SERVER_WAIT
    inpaint: InpaintOptions | None = None  # None: the defaults, inflight as above (set in __post_init__)

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", tuple(self.servers))
        if self.model is not None:
            object.__setattr__(self, "model", Path(self.model))
        if (self.model is None) == (not self.servers):
            raise UsageError("give exactly one of a model file or --server URLs (the servers hold the model)")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if self.server_wait < 0:
            raise UsageError(f"server_wait must be >= 0 seconds, got {self.server_wait}")
        if self.inpaint is None:
            object.__setattr__(self, "inpaint", InpaintOptions(inflight=default_inflight(self.servers)))

    @property
    def source(self) -> str:
        """What ran the batches, for the report: the model file or the server URLs."""
        return str(self.model) if self.model is not None else " ".join(self.servers)


def open_backend(options: InferOptions, *, announce: Callable[[str], None] | None = None) -> Backend:
    """The backend ``options`` name: the local model file, or a thread-safe client of the Triton servers.

    ``announce`` gets one line for each fallback (an engine run through its ONNX file) and each wait.
    """
    if options.servers:
        from pconv_deploy.serving.client import TritonBackend

        return TritonBackend(list(options.servers), options.server_model, wait=options.server_wait, on_wait=announce)
    assert options.model is not None  # __post_init__: a model or servers
    return load_backend(
        options.model,
        options.backend,
        options.device,
        on_fallback=announce,
        threads=options.threads,
        precision=options.precision,
    )


def infer(
    options: InferOptions,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> Report:
    """Run the folder job; failures of single files are in the report, never raised.

    ``echo`` gets one line per failed file (default: above the progress bar); ``announce`` the
    backend's lines (see :func:`open_backend`).
    """
    inpainter = Inpainter(open_backend(options, announce=announce), options.inpaint)
    report = run_folder(inpainter, options.folder, progress=progress, echo=echo)
    report.model = options.source
    return report
