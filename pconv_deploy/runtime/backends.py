"""Backends: one small interface over ONNX Runtime, TensorRT and the PyTorch reference.

A backend runs one padded batch of the model contract (DESIGN.md section 2):
``run(image [N,3,H,W] float32 RGB in [0,1], mask [N,1,H,W] float32 1 = known) -> [N,3,H,W]``,
composited and clamped, with H and W already multiples of ``multiple``. Padding, batching
and strategies live in :mod:`pconv_deploy.runtime.inpainter`, so a backend stays a thin
wrapper that a new accelerator can implement in an afternoon.

Only the torch backend imports torch, and only when a ``.safetensors`` checkpoint is loaded.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pconv_deploy.errors import PConvError, first_line

log = logging.getLogger("pconv_deploy.runtime")

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
ENGINE_SUFFIXES = (".engine", ".plan")
INPUT_NAMES = ("image", "mask")
OUTPUT_NAME = "inpainted"


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. ``max_batch`` (int) is optional: when present the runtime never exceeds it."""

    name: str  # "onnxruntime-cuda", "onnxruntime-cpu", "tensorrt", "torch"
    multiple: int  # H and W of every batch are multiples of this
    metadata: dict[str, str]  # the model's pconv.* metadata (may be empty for old exports)

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeBackend:
    """ONNX Runtime with CUDA when it really runs (checked with ``get_providers()``), else CPU."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PConvError(f"{path}: no such ONNX model file")
        wanted = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            wanted.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # warnings about unused CUDA libraries are not the user's problem
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as e:  # ORT raises its own exception types for corrupt or unsupported files
            raise PConvError(f"{path}: ONNX Runtime cannot load this model ({first_line(e)})") from None
        # onnxruntime-gpu silently falls back to CPU when CUDA libraries are missing: ask what runs.
        self.provider = self.session.get_providers()[0]
        self.name = "onnxruntime-cuda" if self.provider == "CUDAExecutionProvider" else "onnxruntime-cpu"
        if device == "cuda" and self.name != "onnxruntime-cuda":
            raise PConvError(f"{path}: CUDA was requested but ONNX Runtime runs on {self.provider}")
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(INPUT_NAMES) - set(inputs) or OUTPUT_NAME not in outputs:
            raise PConvError(
                f"{path}: not a pconv model (inputs {sorted(inputs)}, outputs {outputs}; "
                f"expected inputs {list(INPUT_NAMES)} and output '{OUTPUT_NAME}')"
            )
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.multiple = model_multiple(self.metadata, inputs["image"].shape, path)

    @property
    def provider_label(self) -> str:
        return "CUDA" if self.name == "onnxruntime-cuda" else "CPU"

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {"image": image, "mask": mask})[0]


class TorchBackend:
    """The PyTorch reference on a checkpoint: the same composited, clamped output as the ONNX graph."""

    name = "torch"

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import torch  # the only torch import in the runtime

        from pconv_deploy.contract import file_sha256
        from pconv_deploy.model import composite, load_checkpoint

        self.torch, self.composite = torch, composite
        self.device = (
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        self.model = model = load_checkpoint(path, device=self.device)
        cfg = model.config
        self.multiple = cfg.multiple
        self.metadata = {
            "pconv.layers": str(cfg.layers),
            "pconv.width": str(cfg.width),
            "pconv.multiple": str(cfg.multiple),
            "pconv.input_norm": cfg.input_norm,
            "pconv.mask_convention": "1=known",
            "pconv.precision": "fp32",
            "pconv.checkpoint_sha256": file_sha256(path),
        }

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x, m = torch.from_numpy(image).to(self.device), torch.from_numpy(mask).to(self.device)
            out = torch.clamp(self.composite(x, m, self.model(x, m)), 0.0, 1.0)  # what the ONNX graph computes
        return out.float().cpu().numpy()


def model_multiple(metadata: dict[str, str], image_shape: list, path: Path) -> int:
    """``pconv.multiple`` from the metadata; for older exports, the ``32*h`` dim names the exporter writes."""
    if "pconv.multiple" in metadata:
        try:
            value = int(metadata["pconv.multiple"])
        except ValueError:
            value = 0
        if value < 1:
            raise PConvError(f"{path}: invalid pconv.multiple metadata {metadata['pconv.multiple']!r}")
        return value
    found = {int(m.group(1)) for d in image_shape[2:] if isinstance(d, str) for m in [re.match(r"(\d+)\*", d)] if m}
    if len(found) == 1:
        return found.pop()
    raise PConvError(
        f"{path}: cannot tell the required size multiple (no 'pconv.multiple' metadata and no 'K*h' input dims); "
        "re-export it with `pconv export`"
    )


def load_backend(
    model_path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    on_fallback: Callable[[str], None] | None = None,
) -> Backend:
    """Open ``model_path`` with the requested backend; ``auto`` picks the fastest usable one.

    - ``.engine`` / ``.plan``: TensorRT when ``tensorrt_status()`` says it is usable, else (auto only)
      the ONNX file named in the engine's sidecar JSON, announced through ``on_fallback``;
    - ``.onnx``: ONNX Runtime, CUDA when the session really runs on it, else CPU;
    - ``.safetensors``: the PyTorch reference (needs torch).
    """
    path = Path(model_path)
    say = on_fallback or log.warning
    if backend not in BACKENDS:
        raise PConvError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise PConvError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if backend in ("auto", "tensorrt"):
            reason = tensorrt_unavailable()
            if reason is None:
                from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend

                return TensorRTBackend(path)
            if backend == "tensorrt":
                raise PConvError(f"{path}: {reason}")
            onnx_path = engine_source_onnx(path)
            backend_ = OnnxRuntimeBackend(onnx_path, device)
            say(f"TensorRT unavailable ({reason}): using ONNX Runtime {backend_.provider_label} on {onnx_path.name}")
            return backend_
        if backend == "onnxruntime":
            return OnnxRuntimeBackend(engine_source_onnx(path), device)
        raise PConvError(f"{path}: the torch backend needs a checkpoint (.safetensors), not an engine")
    if suffix == ".onnx":
        if backend in ("auto", "onnxruntime"):
            return OnnxRuntimeBackend(path, device)
        if backend == "tensorrt":
            raise PConvError(f"{path}: the tensorrt backend needs an engine: build one with `pconv build-engine`")
        raise PConvError(f"{path}: the torch backend needs a checkpoint (.safetensors), not an ONNX file")
    if suffix == ".safetensors":
        if backend in ("auto", "torch"):
            try:
                return TorchBackend(path, device)
            except ModuleNotFoundError as e:
                if e.name not in ("torch", "safetensors"):
                    raise
                raise PConvError(
                    f"{path}: a checkpoint needs torch (pip install 'pconv-deploy[torch]'); "
                    "or export it with `pconv export` and pass the .onnx file"
                ) from None
        raise PConvError(f"{path}: the {backend} backend needs an exported model: run `pconv export` first")
    raise PConvError(
        f"{path}: unknown model type {suffix or '(no suffix)'}: expected .onnx, .engine, .plan or .safetensors"
    )


def tensorrt_unavailable() -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else a one-line reason."""
    try:
        from pconv_deploy.runtime.tensorrt_backend import tensorrt_status
    except ImportError as e:  # the module is optional (and lands with the engines issue)
        return f"TensorRT backend not available: {e}"
    return tensorrt_status()


def engine_source_onnx(engine: Path) -> Path:
    """The ONNX file an engine was built from, as recorded in its sidecar ``<engine>.json``."""
    sidecar = engine.with_name(engine.name + ".json")
    try:
        onnx_file = json.loads(sidecar.read_text())["onnx_file"]
    except FileNotFoundError:
        raise PConvError(f"{engine}: no sidecar {sidecar.name}, so no ONNX file to fall back to") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PConvError(f"{sidecar}: unreadable engine sidecar ({first_line(e)})") from None
    path = engine.parent / str(onnx_file)
    if not path.is_file():
        raise PConvError(f"{engine}: its source ONNX {path} (from {sidecar.name}) does not exist")
    return path
