"""The engine sidecar: ``<engine>.json`` beside each TensorRT engine.

An engine only runs on the TensorRT version and GPU model that built it, and says nothing
readable about the model inside. The sidecar records both, plus the model contract (the
ONNX ``pconv.*`` metadata), the profiles and the ONNX it came from, so that the runtime can
refuse a mismatch with a clear message before TensorRT deserialises (or crashes on) the file.
It also names the ONNX (``onnx_file``, relative to the engine's folder): the runtime's
``auto`` falls back to it where TensorRT cannot run.

numpy-free, torch-free, onnx-free: the runtime imports this.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pconv_deploy.contract import METADATA_KEYS, file_sha256
from pconv_deploy.engines.profiles import ProfileError, ShapeRange, validate
from pconv_deploy.errors import PConvError

FORMAT = "pconv-deploy.engine/1"
KEYS = (
    "format",
    "onnx_file",
    "onnx_sha256",
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "precision",
    "profiles",
    "version_compatible",
    "metadata",
    "created",
)
PRECISIONS = ("fp32", "fp16")
REBUILD = "rebuild it here with `pconv build-engine`"


class SidecarError(PConvError, ValueError):
    """A missing or invalid sidecar, or an engine that does not fit this machine or model."""


def sidecar_path(engine_path: str | Path) -> Path:
    """model.engine -> model.engine.json"""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def check_contract_metadata(metadata: dict[str, str], where: str) -> int:
    """Check the pconv.* keys are present and coherent; return the model's multiple."""
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise SidecarError(
            f"{where}: not a pconv-deploy model: metadata lacks {', '.join(missing)}; export it with `pconv export`"
        )
    try:
        layers, multiple = int(metadata["pconv.layers"]), int(metadata["pconv.multiple"])
    except ValueError:
        raise SidecarError(f"{where}: pconv.layers and pconv.multiple must be integers") from None
    if multiple != 2**layers:
        raise SidecarError(f"{where}: pconv.multiple is {multiple} but pconv.layers is {layers} (expected {2**layers})")
    if metadata["pconv.precision"] not in PRECISIONS:
        raise SidecarError(f"{where}: pconv.precision must be one of {PRECISIONS}, got {metadata['pconv.precision']!r}")
    return multiple


def make_sidecar(
    *,
    onnx_path: Path,
    onnx_sha256: str,
    engine_path: Path,
    metadata: dict[str, str],
    profiles: list[ShapeRange],
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    version_compatible: bool,
) -> dict[str, Any]:
    """The sidecar's content. `onnx_file` is stored relative to the engine's folder when possible."""
    try:
        onnx_file = os.path.relpath(Path(onnx_path).resolve(), Path(engine_path).resolve().parent)
    except ValueError:  # another drive on Windows
        onnx_file = str(Path(onnx_path).resolve())
    data = {
        "format": FORMAT,
        "onnx_file": Path(onnx_file).as_posix(),
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": metadata["pconv.precision"],
        "profiles": [p.input_shapes() for p in profiles],
        "version_compatible": bool(version_compatible),
        "metadata": dict(metadata),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    validate_sidecar(data, str(engine_path))
    return data


def write_sidecar(engine_path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``<engine>.json`` atomically (temp file + rename)."""
    path = sidecar_path(engine_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def validate_sidecar(data: Any, where: str) -> list[ShapeRange]:
    """Check keys, types and the contract; return the profiles."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SidecarError(f"{where}: not a pconv-deploy engine sidecar (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise SidecarError(f"{where}: sidecar lacks {', '.join(missing)}; {REBUILD}")
    for key in ("onnx_file", "onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability", "precision"):
        if not isinstance(data[key], str):
            raise SidecarError(f"{where}: sidecar key {key!r} must be a string")
    if not isinstance(data["metadata"], dict) or not all(isinstance(v, str) for v in data["metadata"].values()):
        raise SidecarError(f"{where}: sidecar 'metadata' must map names to strings")
    multiple = check_contract_metadata(data["metadata"], where)
    if data["precision"] != data["metadata"]["pconv.precision"]:
        raise SidecarError(
            f"{where}: sidecar precision {data['precision']!r} differs from the model's "
            f"pconv.precision {data['metadata']['pconv.precision']!r}"
        )
    if not isinstance(data["profiles"], list) or not data["profiles"]:
        raise SidecarError(f"{where}: sidecar 'profiles' must be a non-empty list")
    profiles = []
    for i, shapes in enumerate(data["profiles"]):
        try:
            if not isinstance(shapes, dict):
                raise ProfileError(f"profile {i} must map input names to shapes, got {shapes!r}")
            profile = ShapeRange.from_input_shapes(shapes, where=f"profile {i}")
            profiles.append(validate(profile, multiple, where=f"profile {i}"))
        except ProfileError as e:
            raise SidecarError(f"{where}: {e}") from None
    return profiles


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """Load and validate ``<engine>.json``; every failure names the file."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise SidecarError(f"{path}: no sidecar beside engine {engine_path}; {REBUILD}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarError(f"{path}: unreadable sidecar ({e})") from None
    validate_sidecar(data, str(path))
    return data


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def check_compatible(
    data: dict[str, Any],
    engine_path: str | Path,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    expected_metadata: dict[str, str] | None = None,
    check_onnx: bool = True,
) -> None:
    """Refuse an engine built for another TensorRT, GPU, model or ONNX, saying what differs and what to do.

    - TensorRT: the exact version, or for a version-compatible engine the same major and a
      runtime at least as new as the builder.
    - GPU: same name and compute capability (TensorRT picks kernels for the exact GPU).
    - expected_metadata: any pconv.* values the caller relies on (e.g. the checkpoint sha256).
    - ONNX: if the ONNX the engine was built from is still beside it and has changed, the
      engine is stale.
    """
    where = str(engine_path)
    built = data["tensorrt_version"]
    if data["version_compatible"]:
        b, h = _version(built), _version(tensorrt_version)
        if not b or not h or h[0] != b[0] or h < b:
            raise SidecarError(
                f"{where}: built version-compatible with TensorRT {built}, which runs on TensorRT "
                f"{'.'.join(map(str, b))} to {b[0] if b else '?'}.x; this is TensorRT {tensorrt_version}: {REBUILD}"
            )
    elif built != tensorrt_version:
        raise SidecarError(
            f"{where}: built with TensorRT {built}, this is TensorRT {tensorrt_version}; an engine only runs on the "
            f"TensorRT version that built it: {REBUILD} (or build with --version-compatible)"
        )
    if (data["gpu_name"], data["compute_capability"]) != (gpu_name, compute_capability):
        raise SidecarError(
            f"{where}: built for {data['gpu_name']} (compute capability {data['compute_capability']}), this GPU is "
            f"{gpu_name} (compute capability {compute_capability}): {REBUILD}"
        )
    for key, value in (expected_metadata or {}).items():
        found = data["metadata"].get(key)
        if found != value:
            raise SidecarError(f"{where}: model contract mismatch: {key} is {found!r}, expected {value!r}")
    if check_onnx:
        onnx_path = Path(engine_path).parent / data["onnx_file"]
        if onnx_path.is_file() and file_sha256(onnx_path) != data["onnx_sha256"]:
            raise SidecarError(
                f"{where}: {onnx_path} has changed since the engine was built from it "
                f"(sha256 {data['onnx_sha256'][:12]}..., now {file_sha256(onnx_path)[:12]}...): {REBUILD}"
            )
