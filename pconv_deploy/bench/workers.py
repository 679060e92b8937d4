"""`pconv bench` workers: each measurement in a fresh interpreter, so its peak RSS is its own.

A worker reads a :class:`~pconv_deploy.bench.spec.WorkerSpec` as JSON on stdin and prints its result
dict as the last line of stdout. Backends are opened the way the runtime opens them
(:func:`pconv_deploy.runtime.load_backend`), so the bench measures what `pconv infer` runs.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pconv_deploy.bench.spec import CONFIGS, BenchSettings, WorkerSpec
from pconv_deploy.errors import PConvError
from pconv_deploy.masks import as_known, boxes

ROW_GEMM = 2048  # the float32 GEMM each main-table row times beside its model (numpy, same threads)


def run_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its JSON result."""
    cmd = [sys.executable, "-c", "import sys; from pconv_deploy.bench.workers import main; sys.exit(main())"]
    proc = subprocess.run(cmd, input=spec.to_json(), capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PConvError(f"benchmark worker ({spec.kind} {spec.backend}) failed: {tail}")
    return json.loads(lines[-1])


def main() -> int:
    """Entry point of a worker subprocess."""
    spec = WorkerSpec.from_json(sys.stdin.read())
    kinds = {"backend": measure_backend, "compare": measure_compare, "pipeline": measure_pipeline}
    result = {**kinds, "quality": measure_quality}[spec.kind](spec)
    print(json.dumps(result))
    return 0


def max_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a
    worker would report its parent's RSS (the main process holds a full model after exporting)."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024.0
    except (OSError, StopIteration, ValueError):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def feeds(batch: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images and binary masks (1 = known) with six rectangular holes each (:func:`masks.boxes`)."""
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 3, size, size), dtype=np.float32)
    mask = np.stack([as_known(boxes(size, size, rng, count=6))[None] for _ in range(batch)])
    return image, mask


def open_backend(config: str, files: dict[str, str], threads: int) -> Any:
    """The runtime backend a main-table configuration names, with ``threads`` intra-op threads."""
    from pconv_deploy.runtime import load_backend

    backend, file_key, precision = CONFIGS[config]
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    device = "auto" if backend == "tensorrt" else "cpu"
    return load_backend(files[file_key], backend, device, threads=threads, precision=precision)


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure_backend(spec: WorkerSpec) -> dict[str, Any]:
    """One main-table cell: latency and images/s of one configuration at one size and batch."""
    settings = spec.settings
    if CONFIGS[spec.backend][0] == "torch":
        import torch  # noqa: F401  (the import counts in the baseline, as for a torch user)
    else:
        import onnxruntime  # noqa: F401
    from threadpoolctl import threadpool_limits

    from pconv_deploy.bench.stats import interleave

    base = max_rss_mib()
    backend = open_backend(spec.backend, spec.files, settings.threads)
    image, mask = feeds(spec.batch, spec.size)
    a, b = (np.random.default_rng(i).random((ROW_GEMM, ROW_GEMM), dtype=np.float32) for i in (0, 1))
    calls = {"model": lambda: backend.run(image, mask), "gemm_numpy": lambda: a @ b}
    with threadpool_limits(limits=settings.threads):  # the GEMM round by round with the model: the same load
        times = interleave(calls, settings.warmup, settings.repeats, time_calls=time_calls)
    median = statistics.median(times["model"])
    return {
        "latency_ms": round(median * 1000, 4),
        "images_per_s": round(spec.batch / median, 3),
        "peak_mib": round(max_rss_mib(), 1),
        "base_mib": round(base, 1),
        "gemm_gflops": round(2 * ROW_GEMM**3 / statistics.median(times["gemm_numpy"]) / 1e9, 3),
    }


def measure_compare(spec: WorkerSpec) -> dict[str, Any]:
    """Ours, plain, naive (and OpenVINO) and the GEMMs, interleaved round by round in this one process."""
    import onnx
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from pconv_deploy.bench.prepare import backend_unavailable
    from pconv_deploy.bench.stats import compare_result, fastest_ratios, interleave
    from pconv_deploy.export.checks import conv_macs

    settings, files = spec.settings, spec.files
    threads, size, n = settings.threads, settings.compare_size, settings.gemm_size
    torch.set_num_threads(threads)
    backends = {k: open_backend("onnxruntime", {"ours": files[k]}, threads) for k in ("ours", "plain", "naive")}
    if backend_unavailable("openvino", files) is None:  # the other CPU engine, on our same FP32 file
        backends["openvino"] = open_backend("openvino", files, threads)
    image, mask = feeds(1, size)
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    calls = {name: (lambda r=r: r.run(image, mask)) for name, r in backends.items()}
    calls["gemm_torch"] = lambda: torch.mm(a, b)
    with threadpool_limits(limits=threads):
        calls["gemm_numpy"] = lambda: an @ bn
        times = interleave(calls, settings.warmup, settings.compare_repeats, time_calls=time_calls)
        blas = [f"{i['internal_api']} {i.get('architecture') or ''}".strip() for i in threadpool_info()]
    macs = {k: conv_macs(onnx.load(files[k]), size, size).total for k in ("ours", "naive")}
    result = compare_result(times, macs, n)
    result["from_fastest"] = fastest_ratios(times, macs, n)
    return {**result, "numpy_blas": blas, "peak_mib": round(max_rss_mib(), 1), "threads": threads}


def photo_folder(folder: Path, count: int, size: int = 512) -> tuple[Path, Path]:
    """``count`` JPEG photos (scikit-image's, cropped; noise if absent) and PNG hole masks (white = hole)."""
    from PIL import Image

    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    sources = _photos()
    _, hole_masks = feeds(count, size, seed=1)
    for i in range(count):
        pic = sources[i % len(sources)] if sources else np.random.default_rng(i).integers(0, 256, (size, size, 3))
        pic = Image.fromarray(np.asarray(pic, np.uint8)).convert("RGB").resize((size, size), Image.BICUBIC)
        pic.save(images / f"photo{i:03d}.jpg", quality=90)
        Image.fromarray(((1 - hole_masks[i, 0]) * 255).astype(np.uint8)).save(masks / f"photo{i:03d}.png")
    return images, masks


def _photos() -> list[np.ndarray]:
    try:
        import skimage.data as data
    except ImportError:
        return []
    return [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]


def measure_pipeline(spec: WorkerSpec) -> dict[str, Any]:
    """``run_folder`` (what ``pconv infer`` runs) against ``backend.run`` on the same batches."""
    from pconv_deploy.runtime import Inpainter, InpaintOptions
    from pconv_deploy.runtime.pipeline import FolderOptions, run_folder

    settings: BenchSettings = spec.settings
    if not spec.folder:
        raise PConvError("the pipeline measurement needs a scratch folder")
    count, batch, threads = settings.pipeline_images, settings.pipeline_batch, settings.threads
    folder = Path(spec.folder) / "pipeline"
    images, masks = photo_folder(folder, count)
    options = InpaintOptions(batch_size=batch, strategy="full")
    inpainter = Inpainter.from_path(spec.files["ours"], options, backend="onnxruntime", device="cpu", threads=threads)
    image, mask = feeds(batch, 512)
    steps = -(-count // batch)

    def model_only() -> None:
        for _ in range(steps):
            inpainter.backend.run(image, mask)

    def pipeline() -> None:
        out = folder / "out"
        folder_options = FolderOptions(images=images, masks=masks, output=out, overwrite=True)
        report = run_folder(inpainter, folder_options, progress=False, echo=lambda _: None)
        if report.count("ok") != count:
            failed = [f"{r.image}: {r.error}" for r in report.files if r.status == "failed"]
            raise PConvError(f"pipeline wrote {report.count('ok')} of {count} images {failed[:1]}")

    times: dict[str, list[float]] = {"model": [], "pipeline": []}
    for rnd in range(settings.warmup + settings.repeats):
        for name, call in (("model", model_only), ("pipeline", pipeline)):
            t = time_calls(call, 0, 1)[0]
            if rnd >= settings.warmup:
                times[name].append(t)
    model_rate = steps * batch / statistics.median(times["model"])
    pipe_rate = count / statistics.median(times["pipeline"])
    return {
        "images": count,
        "batch": batch,
        "strategy": "full",
        "model_images_per_s": round(model_rate, 3),
        "pipeline_images_per_s": round(pipe_rate, 3),
        "pipeline_over_model": round(pipe_rate / model_rate, 4),
        "peak_mib": round(max_rss_mib(), 1),
    }


def measure_quality(spec: WorkerSpec) -> dict[str, Any]:
    """Mean hole L1 (0-255) of one configuration against the held-out photos, beside ONNX Runtime FP32's on
    the same samples (the paper's masks up to 30 % holes, as `pconv check` draws them)."""
    from pconv_deploy.bench.prepare import photo_folders
    from pconv_deploy.bench.spec import BASELINE
    from pconv_deploy.export.calibration import find_photos
    from pconv_deploy.export.verify import quality_images, quality_samples

    threads = spec.settings.threads
    backends = {name: open_backend(name, spec.files, threads) for name in (BASELINE, spec.backend)}
    size = max(256, backends[BASELINE].multiple)
    images, described = quality_images(find_photos(photo_folders(Path(spec.folder))[1]), size, seed=0)
    errors: dict[str, list[float]] = {name: [] for name in backends}
    for image, known, _ in quality_samples(images, seed=0):
        x = image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        hole = known == 0
        for name, backend in backends.items():
            out = np.clip(backend.run(x, known[None, None]), 0, 1)[0].transpose(1, 2, 0)
            errors[name].append(float(np.abs((out * 255).round()[hole] - image[hole]).mean()))
    ours, fp32 = float(np.mean(errors[spec.backend])), float(np.mean(errors[BASELINE]))
    return {
        "hole_l1": round(ours, 4),
        "hole_l1_fp32": round(fp32, 4),
        "difference": round(ours - fp32, 4),
        "samples": len(errors[BASELINE]),
        "images": described,
    }
