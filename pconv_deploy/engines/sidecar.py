"""The engine sidecar: ``<engine>.json`` beside each TensorRT engine, as one typed, validated `Sidecar`.

An engine only runs on the TensorRT version and GPU model that built it, and says nothing
readable about the model inside. The sidecar records both, plus the model contract (the
ONNX ``pconv.*`` metadata), the profiles and the ONNX it came from, so that the runtime can
refuse a mismatch with a clear message before TensorRT deserialises (or crashes on) the file.
It also names the ONNX (``onnx_file``, a file name in the engine's folder) and its sha256: where
TensorRT cannot run, the runtime's ``auto`` falls back to that file, only if it sits beside the engine
and is unchanged (`Sidecar.source_onnx`).

The file is read and checked once (`Sidecar.read`); the backend, ``pconv triton-repo`` and
``pconv build-engine`` use its attributes (profiles already `ShapeRange`s), never the JSON.

numpy-free, torch-free, onnx-free: the runtime imports this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pconv_deploy.contract import METADATA_KEYS, PRECISIONS, contract_levels, file_sha256
from pconv_deploy.engines.profiles import ProfileError, ShapeRange, validate
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.files import write_text_atomic

FORMAT = "pconv-deploy.engine/1"
REBUILD = "rebuild it here with `pconv build-engine`"
MAX_SIDECAR_BYTES = 1 << 20
STRING_KEYS = ("onnx_file", "onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability", "precision")
FLAG_KEYS = ("version_compatible", "exclude_lean_runtime")


class SidecarError(PConvError, ValueError):
    """A missing or invalid sidecar, or an engine that does not fit this machine or model."""


def sidecar_path(engine_path: str | Path) -> Path:
    """model.engine -> model.engine.json"""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def check_contract_metadata(metadata: Mapping[str, str], where: str) -> int:
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


@dataclass(frozen=True, kw_only=True)
class Sidecar:
    """Everything ``<engine>.json`` holds, checked when made: a `Sidecar` that exists is valid.

    The fields are the file's keys, in the file's order; ``profiles`` are parsed and checked against
    the model's multiple, ``metadata`` (the model contract) is read-only. ``where`` (not stored) names
    the file in the one-line `SidecarError` of a failed check.
    """

    format: str = FORMAT
    onnx_file: str  # a file name in the engine's folder: the fallback looks there only
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # the graph's, equal to metadata["pconv.precision"]
    profiles: tuple[ShapeRange, ...]
    version_compatible: bool  # a lean runtime embedded (unless exclude_lean_runtime): later TensorRTs run it
    exclude_lean_runtime: bool
    metadata: Mapping[str, str]
    created: str  # ISO 8601, UTC
    where: InitVar[str] = "sidecar"

    def __post_init__(self, where: str) -> None:
        object.__setattr__(self, "profiles", tuple(self.profiles))
        if isinstance(self.metadata, Mapping):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        if self.format != FORMAT:
            raise SidecarError(
                f"{where}: not a pconv-deploy engine sidecar (format {self.format!r}, expected {FORMAT!r})"
            )
        for key in (*STRING_KEYS, "created"):
            if not isinstance(getattr(self, key), str):
                raise SidecarError(f"{where}: sidecar key {key!r} must be a string")
        for key in FLAG_KEYS:
            if not isinstance(getattr(self, key), bool):
                raise SidecarError(f"{where}: sidecar key {key!r} must be true or false")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise SidecarError(
                f"{where}: exclude_lean_runtime needs version_compatible (TensorRT refuses it otherwise)"
            )
        if not isinstance(self.metadata, Mapping) or not all(isinstance(v, str) for v in self.metadata.values()):
            raise SidecarError(f"{where}: sidecar 'metadata' must map names to strings")
        multiple = check_contract_metadata(self.metadata, where)
        if self.precision != self.metadata["pconv.precision"]:
            raise SidecarError(
                f"{where}: sidecar precision {self.precision!r} differs from the model's "
                f"pconv.precision {self.metadata['pconv.precision']!r}"
            )
        if not self.profiles:
            raise SidecarError(f"{where}: sidecar 'profiles' must be a non-empty list")
        for i, profile in enumerate(self.profiles):
            try:
                validate(profile, multiple, where=f"profile {i}")
            except ProfileError as e:
                raise SidecarError(f"{where}: {e}") from None

    @classmethod
    def new(
        cls,
        *,
        onnx_path: Path,
        onnx_sha256: str,
        engine_path: Path,
        metadata: Mapping[str, str],
        profiles: list[ShapeRange],
        tensorrt_version: str,
        gpu_name: str,
        compute_capability: str,
        version_compatible: bool,
        exclude_lean_runtime: bool = False,
    ) -> Sidecar:
        """The sidecar of a build: ``onnx_file`` is the ONNX's file name, ``precision`` the contract's, created now."""
        return cls(
            onnx_file=Path(onnx_path).name,
            onnx_sha256=onnx_sha256,
            tensorrt_version=tensorrt_version,
            gpu_name=gpu_name,
            compute_capability=compute_capability,
            precision=metadata.get("pconv.precision", ""),  # a missing key is refused with the others
            profiles=tuple(profiles),
            version_compatible=bool(version_compatible),
            exclude_lean_runtime=bool(exclude_lean_runtime),
            metadata=metadata,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            where=str(engine_path),
        )

    @classmethod
    def from_json(cls, data: Any, where: str) -> Sidecar:
        """The parsed JSON of a sidecar, checked: keys, types, the contract and every profile."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise SidecarError(f"{where}: not a pconv-deploy engine sidecar (format {found!r}, expected {FORMAT!r})")
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise SidecarError(f"{where}: sidecar lacks {', '.join(missing)}; {REBUILD}")
        if not isinstance(data["profiles"], list):
            raise SidecarError(f"{where}: sidecar 'profiles' must be a non-empty list")
        profiles = []
        for i, shapes in enumerate(data["profiles"]):
            try:
                if not isinstance(shapes, dict):
                    raise ProfileError(f"profile {i} must map input names to shapes, got {shapes!r}")
                profiles.append(ShapeRange.from_input_shapes(shapes, where=f"profile {i}"))
            except ProfileError as e:
                raise SidecarError(f"{where}: {e}") from None
        return cls(**{**{k: data[k] for k in KEYS}, "profiles": tuple(profiles)}, where=where)

    @classmethod
    def read(cls, engine_path: str | Path) -> Sidecar:
        """Load and check ``<engine>.json``; every failure is one line naming the file."""
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
        return cls.from_json(data, str(path))

    def to_json(self) -> dict[str, Any]:
        """The file's content: the keys in `KEYS` order, profiles as {input: [min, opt, max] NCHW shapes}."""
        data = {key: getattr(self, key) for key in KEYS}
        data["profiles"] = [p.input_shapes() for p in self.profiles]
        data["metadata"] = dict(self.metadata)
        return data

    def write(self, engine_path: str | Path) -> Path:
        """Write ``<engine>.json`` atomically (pconv_deploy.files: temp file, fsync, rename)."""
        return write_text_atomic(sidecar_path(engine_path), json.dumps(self.to_json(), indent=2) + "\n")

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this (2^layers, checked when the sidecar was made)."""
        return int(self.metadata["pconv.multiple"])

    def check_runtime(self, engine_path: str | Path, *, tensorrt_version: str, lean: bool = False) -> None:
        """Refuse an engine this TensorRT cannot run, before any GPU is touched (TensorRT's Version Compatibility page).

        - Not version-compatible: only the exact TensorRT version that built it, and never the lean runtime
          (it runs version-compatible plans only).
        - Version-compatible with its lean runtime embedded: TensorRT (full or lean) at least as new as the
          builder, across majors too (11.x "Engine Compatibility": TensorRT 10 engines work with TensorRT 11).
        - Version-compatible without the lean runtime (``--exclude-lean-runtime``): the runtime itself must be
          the builder's version (``pip install tensorrt-lean-cu12==<that version>``).
        """
        where, built = str(engine_path), self.tensorrt_version
        runtime = f"{'tensorrt_lean' if lean else 'TensorRT'} {tensorrt_version}"
        if not self.version_compatible:
            if lean:
                raise SidecarError(
                    f"{where}: the lean runtime (tensorrt_lean) runs only version-compatible engines; rebuild with "
                    f"`pconv build-engine --version-compatible`, or install the full TensorRT {built}"
                )
            if built != tensorrt_version:
                raise SidecarError(
                    f"{where}: built with TensorRT {built}, this is TensorRT {tensorrt_version}; an engine only runs "
                    f"on the TensorRT version that built it: {REBUILD} (or build with --version-compatible)"
                )
            return
        if self.exclude_lean_runtime:
            if built != tensorrt_version:
                raise SidecarError(
                    f"{where}: built version-compatible without its lean runtime by TensorRT {built}, so it needs "
                    f"that version's runtime; this is {runtime}: pip install 'tensorrt-lean-cu12=={built}' or {REBUILD}"
                )
            return
        b, h = _version(built), _version(tensorrt_version)
        if not b or not h or h < b:
            raise SidecarError(
                f"{where}: built version-compatible with TensorRT {built}, which runs on TensorRT "
                f"{'.'.join(map(str, b))} and later; this is {runtime}: {REBUILD}"
            )

    def check_gpu(self, engine_path: str | Path, *, gpu_name: str, compute_capability: str) -> None:
        """Same GPU name and compute capability as the build (TensorRT picks kernels for the exact GPU)."""
        if (self.gpu_name, self.compute_capability) != (gpu_name, compute_capability):
            raise SidecarError(
                f"{engine_path}: built for {self.gpu_name} (compute capability {self.compute_capability}), this "
                f"GPU is {gpu_name} (compute capability {compute_capability}): {REBUILD}"
            )

    def source_onnx(self, engine_path: str | Path) -> Path:
        """The ONNX the engine was built from, for running it where TensorRT cannot: validated, never trusted.

        ``onnx_file`` must be a plain file name, present beside the engine as a regular file (a symbolic
        link only within that folder), with the sha256 the sidecar recorded. A sidecar naming
        ``../other/x.onnx`` or an ONNX replaced since the build is refused in one line.
        """
        engine_path, name = Path(engine_path), self.onnx_file
        if not _plain_name(name):
            raise SidecarError(
                f"{sidecar_path(engine_path)}: onnx_file {name!r} is not a file name in the engine's folder; the "
                "fallback runs only the ONNX beside the engine"
            )
        path = engine_path.parent / name
        folder = engine_path.resolve().parent
        if path.is_symlink() and path.resolve().parent != folder:
            raise SidecarError(f"{path}: a symbolic link out of the engine's folder (to {path.resolve()}); refused")
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise SidecarError(f"{engine_path}: its source ONNX {path} {what}; put {name} beside the engine")
        if (now := file_sha256(path)) != self.onnx_sha256:
            raise SidecarError(
                f"{engine_path}: {path} has changed since the engine was built from it "
                f"(sha256 {self.onnx_sha256[:12]}..., now {now[:12]}...): {REBUILD}"
            )
        return path


KEYS = tuple(f.name for f in fields(Sidecar))  # the file's keys, in its order


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def _plain_name(name: str) -> bool:
    """A file name, not a path: no folder part, no '..', nothing absolute."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
