"""What `pconv bench` measures (settings, typed worker specs) and what it found (rows, report).

Everything here crosses a process boundary as JSON: the main process writes a :class:`WorkerSpec`
to a worker's stdin, the worker prints its result dict as the last line of stdout.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pconv_deploy.errors import PConvError

# A configuration of the main table: name -> (runtime backend, file it runs, inference precision asked for).
# File keys: "checkpoint" is the PyTorch model itself, "ours_<precision>" our export in that precision
# (contract.PRECISIONS; "ours" is fp32), "engine" a TensorRT engine of the fp16 export. The inference
# precision is the runtime's (contract.INFERENCE_PRECISIONS): "auto" runs the file's own numbers.
CONFIGS: dict[str, tuple[str, str, str]] = {
    "torch": ("torch", "checkpoint", "auto"),
    "onnxruntime": ("onnxruntime", "ours", "auto"),
    "onnxruntime-fp16": ("onnxruntime", "ours_fp16", "auto"),
    "onnxruntime-int8": ("onnxruntime", "ours_int8", "auto"),
    "openvino": ("openvino", "ours", "f32"),
    "openvino-bf16": ("openvino", "ours", "bf16"),
    "openvino-int8": ("openvino", "ours_int8", "auto"),
    "tensorrt": ("tensorrt", "engine", "auto"),
}
BASELINE = "onnxruntime"  # every ratio of the main table is to this configuration (ONNX Runtime FP32)
CONFIG_NAMES = tuple(CONFIGS)  # the names --backends takes
TARGET_MASK_COST = 1.05  # our export / plain U-Net, at most
TARGET_EFFICIENCY = 0.85  # conv GFLOP/s over the best GEMM, at least
TARGET_SECONDS = 300.0  # the whole default run
GEMM_SIZE = 4096


@dataclass(frozen=True)
class BenchSettings:
    """What to measure; validated once, here. ``model`` None: a random paper-size model."""

    model: Path | None = None
    layers: int = 8
    width: float = 1.0
    sizes: tuple[int, ...] = (256, 512)
    batch_sizes: tuple[int, ...] = (1, 4)
    backends: tuple[str, ...] = CONFIG_NAMES
    threads: int = 2
    repeats: int = 3
    warmup: int = 1
    compare_size: int = 512  # where the mask-path, naive and efficiency comparisons run (batch 1)
    compare_repeats: int = 7
    gemm_size: int = GEMM_SIZE
    pipeline_images: int = 4  # 0 skips the pipeline measurement (one batch of 4 by default)
    pipeline_batch: int = 4
    quality: bool = True  # hole-L1 difference to FP32 per configuration, on the bundled model
    work_dir: Path | None = None  # exports are kept here between runs (default: prepare.default_work_dir())

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in CONFIGS]
        if unknown:
            raise PConvError(f"unknown backend(s) {', '.join(unknown)}: choose from {', '.join(CONFIG_NAMES)}")
        for name in ("threads", "repeats", "compare_repeats", "gemm_size", "pipeline_batch"):
            if getattr(self, name) < 1:
                raise PConvError(f"bench setting {name} must be at least 1, got {getattr(self, name)}")
        if not self.sizes or not self.batch_sizes or min(*self.sizes, *self.batch_sizes) < 1:
            raise PConvError("bench sizes and batch sizes must be positive integers")
        if self.model is not None and (not Path(self.model).is_file() or Path(self.model).suffix != ".safetensors"):
            raise PConvError(f"--model {self.model}: expected a pconv-deploy checkpoint (.safetensors)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("model", "work_dir"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchSettings:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("model", "work_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        for key in ("sizes", "batch_sizes", "backends"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class WorkerSpec:
    """One measurement in its own process: a main-table cell, the interleaved comparison, or the pipeline."""

    kind: Literal["backend", "compare", "pipeline", "quality"]
    settings: BenchSettings
    files: dict[str, str]  # file key (see CONFIGS) -> path
    backend: str = ""  # a CONFIGS name (kinds "backend" and "quality")
    size: int = 0
    batch: int = 0
    folder: str = ""  # scratch folder (kind "pipeline")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "settings": self.settings.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(**{**data, "settings": BenchSettings.from_dict(data["settings"])})


@dataclass(frozen=True)
class Row:
    """One line of the main table."""

    backend: str
    size: int
    batch: int
    latency_ms: float | None = None  # median time per batch
    images_per_s: float | None = None
    peak_mib: float | None = None  # peak RSS (VmHWM) of the configuration's process
    base_mib: float | None = None  # RSS high-water mark after the imports, before the model
    gemm_gflops: float | None = None  # numpy's float32 GEMM in the same process, interleaved with the model
    note: str = ""


@dataclass
class BenchReport:
    settings: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    compare: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)  # configuration -> hole-L1 difference to FP32
    conv_macs: dict[int, int] = field(default_factory=dict)  # image side -> conv MACs of one image
    prepare_seconds: float = 0.0  # checkpoint + exports (0-ish when reused from the work folder)
    seconds: float = 0.0

    def targets(self) -> list[dict[str, Any]]:
        """Each target next to its measured value (None when not measured)."""
        cost, eff = self.compare.get("mask_path_cost"), self.compare.get("efficiency")
        return [
            target(
                "mask-path cost (ours / plain U-Net)",
                f"<= {TARGET_MASK_COST}x",
                cost,
                met=cost is not None and cost <= TARGET_MASK_COST,
            ),
            target(
                "efficiency (conv GFLOP/s / best GEMM)",
                f">= {TARGET_EFFICIENCY}",
                eff,
                met=eff is not None and eff >= TARGET_EFFICIENCY,
            ),
            target("whole run", f"< {TARGET_SECONDS:.0f} s", round(self.seconds, 1), met=self.seconds < TARGET_SECONDS),
        ]

    def speedup(self, row: Row) -> float | None:
        """``row``'s images/s over ONNX Runtime FP32's at the same size and batch."""
        base = next((r for r in self.rows if (r.backend, r.size, r.batch) == (BASELINE, row.size, row.batch)), None)
        if base is None or not base.latency_ms or not row.latency_ms:
            return None
        return base.latency_ms / row.latency_ms

    def efficiency(self, row: Row) -> float | None:
        """``row``'s conv GFLOP/s over the float32 GEMM timed beside it (INT8 and BF16 may pass 1)."""
        if not row.latency_ms or not row.gemm_gflops or row.size not in self.conv_macs:
            return None
        return 2 * self.conv_macs[row.size] * row.batch / (row.latency_ms / 1000) / 1e9 / row.gemm_gflops

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = self.targets()
        for row, entry in zip(self.rows, data["rows"]):
            entry["speedup_vs_onnxruntime_fp32"] = self.speedup(row)
            entry["efficiency_vs_fp32_gemm"] = self.efficiency(row)
        return data


def target(name: str, goal: str, value: float | None, *, met: bool) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value, "met": bool(met) if value is not None else None}


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """'1,4' -> (1, 4); one clear line for anything else."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise PConvError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise PConvError(f"{what} must be positive integers, got {text!r}")
    return values


def check_sizes(settings: BenchSettings, multiple: int) -> None:
    """Sizes must be multiples of the model's 2^layers."""
    for size in (*settings.sizes, *((settings.compare_size,) if settings.compare_size else ())):
        if size % multiple:
            raise PConvError(f"size {size} is not a multiple of {multiple} (2^layers): choose another --sizes")
