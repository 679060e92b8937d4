"""OpenVINO on the CPU: our FP32, FP16 and INT8 (Q/DQ) ONNX files, with the precision chosen, never guessed.

OpenVINO reads the ONNX file directly. Its CPU plugin computes in bfloat16 by default on a CPU
with BF16 (AVX512_BF16 / AMX): that changes the numbers of an FP32 model (about 80 dB PSNR
against FP32 instead of ~160 dB), so this backend always sets ``INFERENCE_PRECISION_HINT``
itself: ``f32`` unless the caller asks for ``bf16`` or ``f16`` (``--inference-precision``). An
INT8 file runs its Q/DQ convolutions in int8 (VNNI / AMX) whatever the hint; the hint applies
to what the file keeps in float. The backend's ``name`` says what runs, e.g. ``openvino-cpu-bf16``.

Imports OpenVINO only when a backend is made (optional extra ``openvino``); never torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pconv_deploy.contract import IMAGE, INFERENCE_PRECISIONS, MASK, OUTPUT
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.runtime.backend_checks import check_io_names, model_multiple, parse_device

# --inference-precision -> (OpenVINO's INFERENCE_PRECISION_HINT, the OPTIMIZATION_CAPABILITIES entry it needs)
OPENVINO_HINTS = {"f32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "f16": ("f16", "FP16")}
INSTALL_HINT = "pip install 'pconv-deploy[openvino]'"


class OpenVinoBackend:
    """An ONNX model compiled by OpenVINO for the CPU, at an explicit inference precision.

    ``threads``: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, every core). ``precision``:
    one of ``INFERENCE_PRECISIONS``; ``auto`` is ``f32`` (the file's own numbers).
    """

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, *, precision: str = "auto"
    ) -> None:
        path = Path(path)
        kind, _ = parse_device(device)
        if kind == "cuda":
            raise PConvError(f"{path}: the openvino backend runs on the CPU only; use --device cpu or auto")
        if precision not in INFERENCE_PRECISIONS:
            raise PConvError(
                f"unknown inference precision {precision!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}"
            )
        ov = import_openvino(path)
        core = ov.Core()
        self.precision = "f32" if precision == "auto" else precision
        hint, capability = OPENVINO_HINTS[self.precision]
        capabilities = cpu_capabilities(core)
        if capability not in capabilities:
            raise PConvError(
                f"{path}: this CPU cannot run {self.precision} in OpenVINO (it offers {', '.join(capabilities)}): "
                "use --inference-precision f32"
            )
        config: dict = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for bad files
            raise PConvError(f"{path}: OpenVINO cannot load this model ({first_line(e)})") from None
        inputs = [n for p in self.compiled.inputs for n in p.get_names()]
        outputs = [n for p in self.compiled.outputs for n in p.get_names()]
        check_io_names(path, inputs, outputs)
        self.request = self.compiled.create_infer_request()
        self.metadata = onnx_metadata(path)
        self.file_precision = self.metadata.get("pconv.precision", "fp32")
        self.name = f"openvino-cpu-{self.precision}"
        shape = model.input(IMAGE).get_partial_shape()
        dims = [str(d) if d.is_dynamic else int(d.get_length()) for d in shape]
        self.multiple = model_multiple(self.metadata, dims, path)
        self.threads = threads

    @property
    def provider_label(self) -> str:
        return f"OpenVINO CPU {self.precision}"

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        result = self.request.infer({IMAGE: image, MASK: mask}, share_inputs=True)
        return np.array(result[OUTPUT], dtype=np.float32, copy=True)  # the request reuses its output buffer


def import_openvino(path: Path):
    try:
        import openvino as ov
    except ModuleNotFoundError as e:
        if e.name is None or not e.name.startswith("openvino"):
            raise
        raise PConvError(f"{path}: the openvino backend needs OpenVINO ({INSTALL_HINT})") from None
    return ov


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cpu_capabilities(core) -> list[str]:
    """What OpenVINO's CPU plugin can compute in on this machine (``FP32``, ``BF16``, ``FP16``, ``INT8``...)."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read from its protobuf without onnx (seeks past the graph).

    ModelProto field 14 is ``metadata_props`` (StringStringEntryProto: key = 1, value = 2); every other
    field is skipped by its wire type, so a 130 MB model costs a few reads. A malformed file gives ``{}``:
    the loader that reads the model next reports what is wrong with it.
    """
    try:
        with open(path, "rb") as f:
            return read_metadata_props(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def read_metadata_props(f) -> dict[str, str]:
    metadata: dict[str, str] = {}
    while (tag := read_varint(f, allow_eof=True)) is not None:
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            read_varint(f)
        elif wire == 1:
            f.seek(8, 1)
        elif wire == 5:
            f.seek(4, 1)
        elif wire == 2:
            length = read_varint(f)
            if field != 14:
                f.seek(length, 1)
                continue
            entry = f.read(length)
            key, value = string_pair(entry)
            metadata[key] = value
        else:
            raise ValueError(f"wire type {wire}")
    return metadata


def string_pair(entry: bytes) -> tuple[str, str]:
    """(key, value) of a StringStringEntryProto."""
    import io

    parts = {1: "", 2: ""}
    buf = io.BytesIO(entry)
    while (tag := read_varint(buf, allow_eof=True)) is not None:
        length = read_varint(buf)
        if tag & 7 != 2:
            raise ValueError("not a string entry")
        parts[tag >> 3] = buf.read(length).decode("utf-8")
    return parts[1], parts[2]


def read_varint(f, allow_eof: bool = False) -> int | None:
    value, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte:
            if allow_eof and shift == 0:
                return None
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


__all__ = ["OpenVinoBackend", "onnx_metadata", "openvino_installed"]
