"""`pconv bench` orchestration: prepare the models, run every measurement in its worker, collect."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pconv_deploy.bench.prepare import backend_unavailable, default_work_dir, prepare_models, prepare_quality
from pconv_deploy.bench.spec import CONFIGS, BenchReport, BenchSettings, Row, WorkerSpec
from pconv_deploy.bench.workers import run_worker
from pconv_deploy.errors import PConvError


def run_bench(settings: BenchSettings, say: Callable[[str], None] = print) -> BenchReport:
    """Prepare the models, run every configuration, return the report (nothing else is written)."""
    start = time.perf_counter()
    report = BenchReport(settings.to_dict(), machine_info(settings.threads))
    work = Path(settings.work_dir or default_work_dir())
    work.mkdir(parents=True, exist_ok=True)
    files = prepare_models(settings, work, say)
    report.prepare_seconds = round(time.perf_counter() - start, 1)
    report.conv_macs = conv_macs(files["ours"], settings.sizes)
    for backend in settings.backends:
        report.rows.extend(backend_rows(settings, files, backend, say=say))
    if settings.compare_size:
        say(f"comparing ours, plain and naive at {settings.compare_size}^2 with a {settings.gemm_size}^2 GEMM")
        report.compare = run_worker(WorkerSpec("compare", settings, files))
    if settings.pipeline_images:
        say(f"pipeline: run_folder over {settings.pipeline_images} photos of 512x512")
        with tempfile.TemporaryDirectory(prefix="pconv-bench-") as tmp:
            report.pipeline = run_worker(WorkerSpec("pipeline", settings, files, folder=tmp))
    if settings.quality:
        report.quality = quality_rows(settings, work, say)
    report.machine["load_average_end"] = load_average()
    report.seconds = time.perf_counter() - start
    return report


def backend_rows(
    settings: BenchSettings, files: dict[str, str], backend: str, *, say: Callable[[str], None]
) -> list[Row]:
    """One row per size and batch for one configuration (one skipped row saying why, if it cannot run)."""
    reason = backend_unavailable(backend, files)
    if reason:
        say(f"{backend}: skipped ({reason})")
        return [Row(backend, 0, 0, note=f"skipped: {reason}")]
    rows = []
    for size in settings.sizes:
        for batch in settings.batch_sizes:
            say(f"{backend}: {size}x{size}, batch {batch}")
            try:
                result = run_worker(WorkerSpec("backend", settings, files, backend=backend, size=size, batch=batch))
            except PConvError as e:
                rows.append(Row(backend, size, batch, note=f"failed: {e}"))
                continue
            rows.append(Row(backend, size, batch, **result))
    return rows


def conv_macs(onnx_path: str, sizes: tuple[int, ...]) -> dict[int, int]:
    """Conv MACs of one image of each side, from the FP32 graph (every precision runs the same network)."""
    import onnx

    from pconv_deploy.export.checks import conv_macs as count

    model = onnx.load(onnx_path)
    return {size: count(model, size, size).total for size in sizes}


def quality_rows(settings: BenchSettings, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Each configuration's hole-L1 difference to ONNX Runtime FP32, on the bundled model and held-out photos."""
    files = prepare_quality(settings, work, say)
    results: dict[str, Any] = {}
    for name in settings.backends:
        if CONFIGS[name][1] not in files or backend_unavailable(name, files):
            continue
        say(f"quality: {name} on the bundled model")
        try:
            results[name] = run_worker(WorkerSpec("quality", settings, files, backend=name, folder=str(work)))
        except PConvError as e:
            results[name] = {"note": f"failed: {e}"}
    return results


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    import onnxruntime

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ},
        "load_average_start": load_average(),
    }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
