"""Backends: one small interface over ONNX Runtime, TensorRT, the PyTorch reference and remote servers.

A backend runs one padded batch of the model contract (docs/design.md section 2):
``run(image [N,3,H,W] float32 RGB in [0,1], mask [N,1,H,W] float32 1 = known) -> [N,3,H,W]``,
composited and clamped, with H and W already multiples of ``multiple``. Padding, batching,
strategies and the memory budget live in :mod:`pconv_deploy.runtime.inpainter`, so a backend stays
a thin wrapper that a new accelerator (or a client of a server) can implement in an afternoon:

- ``name`` (str), ``multiple`` (int), ``metadata`` (the model's ``pconv.*`` metadata) and ``run``;
- optional ``max_batch`` (int): the runtime never sends a larger batch;
- optional ``bytes_per_pixel`` (int): this process's memory per input pixel of one call (a remote
  backend holds only the I/O, ~50); without it the runtime estimates it from ``metadata``;
- ``run`` may be called from several threads at once when the Inpainter's ``inflight`` > 1: only
  offer that for a backend that is thread-safe (a server client). Local backends run one call at
  a time (``inflight`` 1), which already uses every core or the whole GPU.

Devices: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` for every backend. A CUDA request never runs
on the CPU silently: it is checked after the session or engine exists, and refused with a message.

Only the torch backend imports torch, and only when a ``.safetensors`` checkpoint is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pconv_deploy.contract import (
    BACKENDS,
    CHECKPOINT_SUFFIX,
    ENGINE_SUFFIXES,
    IMAGE,
    INFERENCE_PRECISIONS,
    MASK,
    ONNX_SUFFIX,
    OUTPUT,
    contract_metadata,
)
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.runtime.backend_checks import check_io_names, model_multiple, parse_device
from pconv_deploy.runtime.memory import CALL_OVERHEAD, activation_bytes_per_pixel

log = logging.getLogger("pconv_deploy.runtime")

# On the CPU, `auto` runs these files on OpenVINO when it is installed (same precision, measured faster: the
# runtime-speed docs page); other files stay on ONNX Runtime, the reference every parity check uses.
OPENVINO_AUTO_PRECISIONS = ("int8",)


@runtime_checkable
class Backend(Protocol):
    """What every backend provides (see the module docstring for the optional attributes)."""

    name: str  # "onnxruntime-cuda", "onnxruntime-cpu", "tensorrt", "torch", "triton", ...
    multiple: int  # H and W of every batch are multiples of this
    metadata: dict[str, str]  # the model's pconv.* metadata (may be empty for old exports)

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeBackend:
    """ONNX Runtime with CUDA when it really runs (checked with ``get_providers()``), else CPU.

    ``threads``: intra-op threads on the CPU (None: ONNX Runtime's default, one per core).

    Memory between calls: the CPU arena is on, grows by what is requested (not by powers of two, which
    doubled a 12 MP call's memory) and keeps a call's buffers for the next call only when both have the
    same shape and the call needs at most ``keep_bytes`` (set by the Inpainter out of its budget; None:
    no limit). Any other call gives its buffers back at its end. Without it every call maps and zeroes
    its ~100-400 MB of activations again: 45-95 thousand page faults per full-width 512x512 image, about
    a fifth of the folder job's time (docs/runtime-speed.md).
    """

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, *, spinning: bool = False
    ) -> None:
        """``spinning``: idle intra-op threads spin (off: they sleep, and decoding threads get the cores)."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PConvError(f"{path}: no such ONNX model file")
        kind, index = parse_device(device)
        wanted: list = ["CPUExecutionProvider"]
        cuda_available = "CUDAExecutionProvider" in ort.get_available_providers()
        if kind == "cuda" and not cuda_available:
            raise PConvError(f"{path}: {device} was requested but this ONNX Runtime has no CUDA (onnxruntime-gpu)")
        if kind == "cuda" or (kind == "auto" and cuda_available):
            wanted.insert(0, ("CUDAExecutionProvider", {"device_id": index or 0}))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.enable_cpu_mem_arena = True
        if kind != "cuda":
            use_growing_arena(ort, options)
        # Idle intra-op threads sleep instead of spinning: decoding and encoding threads share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.enable_mem_pattern = False
        options.log_severity_level = 3  # warnings about unused CUDA libraries are not the user's problem
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as e:  # ORT raises its own exception types for corrupt or unsupported files
            where = f" on {device}" if kind == "cuda" else ""
            raise PConvError(f"{path}: ONNX Runtime cannot load this model{where} ({first_line(e)})") from None
        # onnxruntime-gpu silently falls back to CPU when CUDA libraries are missing: ask what runs.
        self.provider = self.session.get_providers()[0]
        self.name = "onnxruntime-cuda" if self.provider == "CUDAExecutionProvider" else "onnxruntime-cpu"
        if kind == "cuda":
            self.check_cuda(path, device, index or 0)
        self.check_io(path)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        image_input = next(i for i in self.session.get_inputs() if i.name == IMAGE)
        self.multiple = model_multiple(self.metadata, image_input.shape, path)
        self.keep_bytes: int | None = None
        self.call_bytes_per_pixel = activation_bytes_per_pixel(self.metadata)
        self.last_shape: tuple[int, ...] | None = None
        self.give_back = ort.RunOptions()
        self.give_back.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def check_cuda(self, path: Path, device: str, index: int) -> None:
        """A CUDA request runs on that GPU or not at all (never silently on the CPU)."""
        if self.name != "onnxruntime-cuda":
            raise PConvError(f"{path}: {device} was requested but ONNX Runtime runs on {self.provider}")
        options = self.session.get_provider_options().get("CUDAExecutionProvider", {})
        if str(options.get("device_id", index)) != str(index):
            raise PConvError(f"{path}: {device} was requested but ONNX Runtime uses GPU {options.get('device_id')}")

    def check_io(self, path: Path) -> None:
        check_io_names(path, [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    @property
    def provider_label(self) -> str:
        return "CUDA" if self.name == "onnxruntime-cuda" else "CPU"

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        keep = image.shape == self.last_shape and self.provider == "CPUExecutionProvider"
        if keep and self.keep_bytes is not None:
            n, _, h, w = image.shape
            keep = CALL_OVERHEAD + n * h * w * self.call_bytes_per_pixel <= self.keep_bytes
        self.last_shape = image.shape
        return self.session.run([OUTPUT], {IMAGE: image, MASK: mask}, None if keep else self.give_back)[0]


_ARENA: list = []  # the process-wide CPU arena ONNX Runtime sessions share (registered once)


def use_growing_arena(ort, options) -> None:
    """Sessions use one CPU arena that grows by what is requested (ORT's own grows by powers of two)."""
    if not _ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))  # 1: kSameAsRequested
        except Exception:  # registered already by someone else in this process: share theirs
            pass
        _ARENA.append(info)
    options.add_session_config_entry("session.use_env_allocators", "1")


class TorchBackend:
    """The PyTorch reference on a checkpoint: the same composited, clamped output as the ONNX graph."""

    name = "torch"

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        import torch  # the only torch import in the runtime

        from pconv_deploy.contract import file_sha256
        from pconv_deploy.model import composite, load_checkpoint

        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise PConvError(f"{path}: {device} was requested but this torch has no usable CUDA GPU")
        if kind == "cuda" and (index or 0) >= torch.cuda.device_count():
            raise PConvError(f"{path}: {device} was requested but torch sees {torch.cuda.device_count()} GPU(s)")
        if kind == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch, self.composite = torch, composite
        self.device = kind if index is None else f"{kind}:{index}"
        self.model = model = load_checkpoint(path, device=self.device)
        cfg = model.config
        self.multiple = cfg.multiple
        self.metadata = contract_metadata(
            layers=cfg.layers,
            width=cfg.width,
            input_norm=cfg.input_norm,
            precision="fp32",
            checkpoint_sha256=file_sha256(path),
            output_activation=cfg.output_activation,
        )

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x, m = torch.from_numpy(image).to(self.device), torch.from_numpy(mask).to(self.device)
            out = torch.clamp(self.composite(x, m, self.model(x, m)), 0.0, 1.0)  # what the ONNX graph computes
        return out.float().cpu().numpy()


def load_backend(
    model_path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    *,
    on_fallback: Callable[[str], None] | None = None,
    threads: int | None = None,
    precision: str = "auto",
) -> Backend:
    """Open ``model_path`` with the requested backend; ``auto`` picks the fastest usable one.

    - ``.engine`` / ``.plan``: TensorRT when ``tensorrt_unavailable()`` finds no reason against it, else (auto only)
      the ONNX file named in the engine's sidecar JSON, announced through ``on_fallback``;
    - ``.onnx``: ONNX Runtime, CUDA when the session really runs on it, else CPU; on the CPU an INT8 file runs
      on OpenVINO when it is installed (same numbers, faster), and ``precision`` bf16 / f16 needs OpenVINO;
    - ``.safetensors``: the PyTorch reference (needs torch).

    ``device``: auto | cpu | cuda | cuda:N (a CUDA request is never served by the CPU);
    ``threads``: the CPU engine's threads; ``precision``: one of ``INFERENCE_PRECISIONS`` (auto: the file's own).
    """
    path = Path(model_path)
    if backend not in BACKENDS:
        raise PConvError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision not in INFERENCE_PRECISIONS:
        raise PConvError(f"unknown inference precision {precision!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision not in ("auto", "f32") and backend not in ("auto", "openvino"):
        raise PConvError(
            f"--inference-precision {precision} needs --backend openvino ({backend} computes what the file stores)"
        )
    parse_device(device)
    if not path.exists():
        raise PConvError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if backend == "openvino":  # the engine's source ONNX, on the CPU
            return open_onnx(engine_source_onnx(path), backend, device, threads=threads, precision=precision)
        return load_engine(path, backend, device, announce=on_fallback or log.warning, threads=threads)
    if suffix == ONNX_SUFFIX:
        if backend in ("auto", "onnxruntime", "openvino"):
            return open_onnx(path, backend, device, threads=threads, precision=precision)
        if backend == "tensorrt":
            raise PConvError(f"{path}: the tensorrt backend needs an engine: build one with `pconv build-engine`")
        raise PConvError(f"{path}: the torch backend needs a checkpoint ({CHECKPOINT_SUFFIX}), not an ONNX file")
    if suffix == CHECKPOINT_SUFFIX:
        if precision not in ("auto", "f32"):
            raise PConvError(
                f"{path}: --inference-precision {precision} runs an exported .onnx on OpenVINO, not a checkpoint"
            )
        if backend in ("auto", "torch"):
            return load_torch(path, device)
        raise PConvError(f"{path}: the {backend} backend needs an exported model: run `pconv export` first")
    raise PConvError(
        f"{path}: unknown model type {suffix or '(no suffix)'}: expected {ONNX_SUFFIX}, "
        f"{', '.join(ENGINE_SUFFIXES)} or {CHECKPOINT_SUFFIX}"
    )


def open_onnx(path: Path, backend: str, device: str, *, threads: int | None, precision: str) -> Backend:
    """An ONNX file on ONNX Runtime or OpenVINO (``auto``: :func:`cpu_engine` chooses)."""
    if backend == "auto":
        backend = cpu_engine(path, device, precision)
    if backend == "openvino":
        from pconv_deploy.runtime.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, device, threads, precision=precision)
    return OnnxRuntimeBackend(path, device, threads)


def cpu_engine(path: Path, device: str, precision: str) -> str:
    """``auto``'s engine for an ONNX file: never a lower precision than the file asks for.

    bf16 / f16 are only ever asked for, and only OpenVINO computes them. Otherwise ONNX Runtime (CUDA
    when it has it), except that on the CPU an INT8 file runs on OpenVINO when it is installed: its
    int8 convolutions are the same Q/DQ arithmetic, measured ~1.4x faster there.
    """
    from pconv_deploy.runtime.openvino_backend import onnx_metadata, openvino_installed

    if precision not in ("auto", "f32"):
        return "openvino"
    kind, _ = parse_device(device)
    if kind == "cuda" or not openvino_installed():
        return "onnxruntime"
    if kind == "auto":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "onnxruntime"
    return "openvino" if onnx_metadata(path).get("pconv.precision") in OPENVINO_AUTO_PRECISIONS else "onnxruntime"


def load_engine(
    path: Path, backend: str, device: str, *, announce: Callable[[str], None], threads: int | None
) -> Backend:
    """A TensorRT engine on its GPU; with ``auto``, its source ONNX on ONNX Runtime when TensorRT cannot run."""
    kind, index = parse_device(device)
    if backend == "torch":
        raise PConvError(f"{path}: the torch backend needs a checkpoint ({CHECKPOINT_SUFFIX}), not an engine")
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(engine_source_onnx(path), device, threads)
    reason = "--device cpu was requested" if kind == "cpu" else tensorrt_unavailable()
    if reason is None:
        from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, device=index or 0)
    if backend == "tensorrt":
        raise PConvError(f"{path}: {reason}")
    onnx_path = engine_source_onnx(path)
    fallback = OnnxRuntimeBackend(onnx_path, device, threads)
    announce(f"TensorRT unavailable ({reason}): using ONNX Runtime {fallback.provider_label} on {onnx_path.name}")
    return fallback


def load_torch(path: Path, device: str) -> Backend:
    try:
        return TorchBackend(path, device)
    except ModuleNotFoundError as e:
        if e.name not in ("torch", "safetensors"):
            raise
        raise PConvError(
            f"{path}: a checkpoint needs torch (pip install 'pconv-deploy[torch]'); "
            f"or export it with `pconv export` and pass the {ONNX_SUFFIX} file"
        ) from None


def tensorrt_unavailable() -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else a one-line reason."""
    from pconv_deploy.engines.trt_api import tensorrt_readiness  # numpy only: TensorRT itself is imported lazily

    return None if (readiness := tensorrt_readiness()).usable else readiness.reason


def engine_source_onnx(engine: Path) -> Path:
    """The ONNX file an engine was built from: its sidecar validated, the file beside the engine and unchanged."""
    from pconv_deploy.engines.sidecar import Sidecar

    return Sidecar.read(engine).source_onnx(engine)
