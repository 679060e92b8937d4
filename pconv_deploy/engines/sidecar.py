"""The engine sidecar: ``<engine>.json`` beside each TensorRT engine.

An engine only runs on the TensorRT version and GPU model that built it, and says nothing
readable about the model inside. The sidecar records both, plus the model contract (the
ONNX ``pconv.*`` metadata), the profiles and the ONNX it came from, so that the runtime can
refuse a mismatch with a clear message before TensorRT deserialises (or crashes on) the file.
It also names the ONNX (``onnx_file``, a file name in the engine's folder) and its sha256: where
TensorRT cannot run, the runtime's ``auto`` falls back to that file, only if it sits beside the engine
and is unchanged (`source_onnx`).

numpy-free, torch-free, onnx-free: the runtime imports this.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pconv_deploy.contract import METADATA_KEYS, PRECISIONS, contract_levels, file_sha256
from pconv_deploy.engines.profiles import ProfileError, ShapeRange, validate
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.files import write_text_atomic

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
    "exclude_lean_runtime",
    "metadata",
    "created",
)
REBUILD = "rebuild it here with `pconv build-engine`"
MAX_SIDECAR_BYTES = 1 << 20


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
        _, multiple = contract_levels(metadata, where)  # range-checked before 2**layers is computed
    except PConvError as e:
        raise SidecarError(str(e)) from None
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
    exclude_lean_runtime: bool = False,
) -> dict[str, Any]:
    """The sidecar's content. `onnx_file` is the ONNX's file name: the fallback looks for it beside the engine only."""
    data = {
        "format": FORMAT,
        "onnx_file": Path(onnx_path).name,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": metadata["pconv.precision"],
        "profiles": [p.input_shapes() for p in profiles],
        "version_compatible": bool(version_compatible),
        "exclude_lean_runtime": bool(exclude_lean_runtime),
        "metadata": dict(metadata),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    validate_sidecar(data, str(engine_path))
    return data


def write_sidecar(engine_path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``<engine>.json`` atomically (pconv_deploy.files: temp file, fsync, rename)."""
    return write_text_atomic(sidecar_path(engine_path), json.dumps(data, indent=2) + "\n")


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
    for key in ("version_compatible", "exclude_lean_runtime"):
        if not isinstance(data[key], bool):
            raise SidecarError(f"{where}: sidecar key {key!r} must be true or false")
    if data["exclude_lean_runtime"] and not data["version_compatible"]:
        raise SidecarError(f"{where}: exclude_lean_runtime needs version_compatible (TensorRT refuses it otherwise)")
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
    if path.exists() and not path.is_file():  # a folder, FIFO or device: never opened
        raise SidecarError(f"{path}: not a regular file, so not the sidecar of engine {engine_path}; {REBUILD}")
    if not path.is_file():
        raise SidecarError(f"{path}: no sidecar beside engine {engine_path}; {REBUILD}")
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise SidecarError(f"{path}: {path.stat().st_size} bytes, not a sidecar (they are a few KB); {REBUILD}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deeply nested JSON
        raise SidecarError(f"{path}: unreadable sidecar ({first_line(e)})") from None
    validate_sidecar(data, str(path))
    return data


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def check_runtime(data: dict[str, Any], engine_path: str | Path, *, tensorrt_version: str, lean: bool = False) -> None:
    """Refuse an engine this TensorRT cannot run, before any GPU is touched (TensorRT's Version Compatibility page).

    - Not version-compatible: only the exact TensorRT version that built it, and never the lean runtime
      (it runs version-compatible plans only).
    - Version-compatible with its lean runtime embedded: TensorRT (full or lean) at least as new as the
      builder, across majors too (11.x "Engine Compatibility": TensorRT 10 engines work with TensorRT 11).
    - Version-compatible without the lean runtime (``--exclude-lean-runtime``): the runtime itself must be
      the builder's version (``pip install tensorrt-lean-cu12==<that version>``).
    """
    where, built = str(engine_path), data["tensorrt_version"]
    runtime = f"{'tensorrt_lean' if lean else 'TensorRT'} {tensorrt_version}"
    if not data["version_compatible"]:
        if lean:
            raise SidecarError(
                f"{where}: the lean runtime (tensorrt_lean) runs only version-compatible engines; rebuild with "
                f"`pconv build-engine --version-compatible`, or install the full TensorRT {built}"
            )
        if built != tensorrt_version:
            raise SidecarError(
                f"{where}: built with TensorRT {built}, this is TensorRT {tensorrt_version}; an engine only runs on "
                f"the TensorRT version that built it: {REBUILD} (or build with --version-compatible)"
            )
        return
    if data["exclude_lean_runtime"]:
        if built != tensorrt_version:
            raise SidecarError(
                f"{where}: built version-compatible without its lean runtime by TensorRT {built}, so it needs that "
                f"version's runtime; this is {runtime}: pip install 'tensorrt-lean-cu12=={built}' or {REBUILD}"
            )
        return
    b, h = _version(built), _version(tensorrt_version)
    if not b or not h or h < b:
        raise SidecarError(
            f"{where}: built version-compatible with TensorRT {built}, which runs on TensorRT "
            f"{'.'.join(map(str, b))} and later; this is {runtime}: {REBUILD}"
        )


def check_gpu(data: dict[str, Any], engine_path: str | Path, *, gpu_name: str, compute_capability: str) -> None:
    """Same GPU name and compute capability as the build (TensorRT picks kernels for the exact GPU)."""
    if (data["gpu_name"], data["compute_capability"]) != (gpu_name, compute_capability):
        raise SidecarError(
            f"{engine_path}: built for {data['gpu_name']} (compute capability {data['compute_capability']}), this "
            f"GPU is {gpu_name} (compute capability {compute_capability}): {REBUILD}"
        )


def check_model(
    data: dict[str, Any],
    engine_path: str | Path,
    expected_metadata: dict[str, str] | None = None,
    check_onnx: bool = True,
) -> None:
    """The pconv.* values the caller relies on match; the ONNX beside the engine (if any) is the one it came from."""
    where = str(engine_path)
    for key, value in (expected_metadata or {}).items():
        found = data["metadata"].get(key)
        if found != value:
            raise SidecarError(f"{where}: model contract mismatch: {key} is {found!r}, expected {value!r}")
    if check_onnx:
        onnx_path = Path(engine_path).parent / data["onnx_file"]
        if _plain_name(data["onnx_file"]) and onnx_path.is_file():
            _check_sha256(data, engine_path, onnx_path)


def _plain_name(name: str) -> bool:
    """A file name, not a path: no folder part, no '..', nothing absolute."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _check_sha256(data: dict[str, Any], engine_path: str | Path, onnx_path: Path) -> None:
    if (now := file_sha256(onnx_path)) != data["onnx_sha256"]:
        raise SidecarError(
            f"{engine_path}: {onnx_path} has changed since the engine was built from it "
            f"(sha256 {data['onnx_sha256'][:12]}..., now {now[:12]}...): {REBUILD}"
        )


def source_onnx(engine_path: str | Path) -> Path:
    """The ONNX an engine was built from, for running it where TensorRT cannot: validated, never trusted.

    The sidecar must be valid; ``onnx_file`` must be a plain file name, present beside the engine as a
    regular file (a symbolic link only within that folder), with the sha256 the sidecar recorded. A
    sidecar naming ``../other/x.onnx`` or an ONNX replaced since the build is refused in one line.
    """
    engine_path = Path(engine_path)
    data = read_sidecar(engine_path)
    where, name = sidecar_path(engine_path), data["onnx_file"]
    if not _plain_name(name):
        raise SidecarError(
            f"{where}: onnx_file {name!r} is not a file name in the engine's folder; the fallback runs only "
            "the ONNX beside the engine"
        )
    path = engine_path.parent / name
    folder = engine_path.resolve().parent
    if path.is_symlink() and path.resolve().parent != folder:
        raise SidecarError(f"{path}: a symbolic link out of the engine's folder (to {path.resolve()}); refused")
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise SidecarError(f"{engine_path}: its source ONNX {path} {what}; put {name} beside the engine")
    _check_sha256(data, engine_path, path)
    return path


def check_compatible(
    data: dict[str, Any],
    engine_path: str | Path,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    lean: bool = False,
    expected_metadata: dict[str, str] | None = None,
    check_onnx: bool = True,
) -> None:
    """All three checks: runtime, GPU, model. Each refusal says what differs and what to do."""
    check_runtime(data, engine_path, tensorrt_version=tensorrt_version, lean=lean)
    check_gpu(data, engine_path, gpu_name=gpu_name, compute_capability=compute_capability)
    check_model(data, engine_path, expected_metadata, check_onnx)
