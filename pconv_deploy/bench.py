"""`pconv bench`: the toolkit's speed side by side, every figure measured in one run.

Shared machines are noisy (20-50% between runs here), so the results that matter are ratios
taken inside one run, and the comparisons that give the ratios are interleaved round by round
in one process (ours, plain, naive, GEMM, ours, plain, ...), so a load change hits all of them.

- Main table: images/s and latency per backend, size and batch (PyTorch eager, ONNX Runtime on
  our FP32 and FP16 exports, OpenVINO and TensorRT where installed). Each configuration runs
  in its own subprocess, so its peak RSS (VmHWM) is its own: reported with the peak after the
  imports, whose difference is what the model and its activations took.
- Mask-path cost: our export against the same U-Net with plain convolutions, exported the same
  way (:mod:`pconv_deploy.export.variants`); and against a naive C_out x C_in mask convolution.
- Efficiency: our graph's conv GFLOP/s over the best large float32 GEMM of the same run
  (``torch.mm`` and numpy at 4096^2, the better one counts and is named).
- Pipeline: ``run_folder`` (what ``pconv infer`` runs) over a folder of 512x512 photos against
  the model alone on the same batches.

Warm-up, then the median of the repeats. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pconv_deploy.errors import PConvError

BACKENDS = ("torch", "onnxruntime", "onnxruntime-fp16", "openvino", "tensorrt")
TARGET_MASK_COST = 1.05  # our export / plain U-Net, at most
TARGET_EFFICIENCY = 0.85  # conv GFLOP/s over the best GEMM, at least
TARGET_SECONDS = 300.0  # the whole default run
GEMM_SIZE = 4096


@dataclass
class BenchSettings:
    """What to measure. ``model`` None: a random paper-size model (BatchNorm statistics randomised)."""

    model: Path | None = None
    layers: int = 8
    width: float = 1.0
    sizes: tuple[int, ...] = (256, 512)
    batch_sizes: tuple[int, ...] = (1, 4)
    backends: tuple[str, ...] = BACKENDS
    threads: int = 2
    repeats: int = 3
    warmup: int = 1
    compare_size: int = 512  # where the mask-path, naive and efficiency comparisons run (batch 1)
    compare_repeats: int = 7
    gemm_size: int = GEMM_SIZE
    pipeline_images: int = 4  # 0 skips the pipeline measurement (one batch of 4 by default)
    pipeline_batch: int = 4
    work_dir: Path | None = None  # exports are kept here between runs (default: default_work_dir())


@dataclass
class Row:
    """One line of the main table."""

    backend: str
    size: int
    batch: int
    latency_ms: float | None = None  # median time per batch
    images_per_s: float | None = None
    peak_mib: float | None = None  # peak RSS (VmHWM) of the configuration's process
    base_mib: float | None = None  # RSS high-water mark after the imports, before the model
    note: str = ""


@dataclass
class BenchReport:
    settings: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    compare: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    prepare_seconds: float = 0.0  # checkpoint + exports (0-ish when reused from the work folder)
    seconds: float = 0.0

    def targets(self) -> list[dict[str, Any]]:
        """Each target next to its measured value (None when not measured)."""
        cost, eff = self.compare.get("mask_path_cost"), self.compare.get("efficiency")
        return [
            _target("mask-path cost (ours / plain U-Net)", f"<= {TARGET_MASK_COST}x", cost,
                    cost is not None and cost <= TARGET_MASK_COST),
            _target("efficiency (conv GFLOP/s / best GEMM)", f">= {TARGET_EFFICIENCY}", eff,
                    eff is not None and eff >= TARGET_EFFICIENCY),
            _target("whole run", f"< {TARGET_SECONDS:.0f} s", round(self.seconds, 1), self.seconds < TARGET_SECONDS),
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = self.targets()
        return data


def _target(name: str, goal: str, value: float | None, met: bool) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value, "met": bool(met) if value is not None else None}


# ---------------------------------------------------------------------------------------------
# Orchestration (main process)


def run_bench(settings: BenchSettings, say: Callable[[str], None] = print) -> BenchReport:
    """Prepare the models, run every configuration, return the report (nothing else is written)."""
    start = time.perf_counter()
    report = BenchReport(_settings_dict(settings), machine_info(settings.threads))
    work = Path(settings.work_dir or default_work_dir())
    work.mkdir(parents=True, exist_ok=True)
    files = prepare_models(settings, work, say)
    report.prepare_seconds = round(time.perf_counter() - start, 1)
    for backend in settings.backends:
        report.rows.extend(_backend_rows(settings, files, backend, say))
    if settings.compare_size:
        say(f"comparing ours, plain and naive at {settings.compare_size}^2 with a {settings.gemm_size}^2 GEMM")
        report.compare = run_worker({"kind": "compare", "settings": _settings_dict(settings), "files": files})
    if settings.pipeline_images:
        say(f"pipeline: run_folder over {settings.pipeline_images} photos of 512x512")
        with tempfile.TemporaryDirectory(prefix="pconv-bench-") as tmp:
            spec = {"kind": "pipeline", "settings": _settings_dict(settings), "files": files, "dir": tmp}
            report.pipeline = run_worker(spec)
    report.machine["load_average_end"] = _load_average()
    report.seconds = time.perf_counter() - start
    return report


def _backend_rows(
    settings: BenchSettings, files: dict[str, str], backend: str, say: Callable[[str], None]
) -> list[Row]:
    reason = backend_unavailable(backend, files)
    if reason:
        say(f"{backend}: skipped ({reason})")
        return [Row(backend, 0, 0, note=f"skipped: {reason}")]
    rows = []
    for size in settings.sizes:
        for batch in settings.batch_sizes:
            say(f"{backend}: {size}x{size}, batch {batch}")
            spec = {"kind": "backend", "backend": backend, "size": size, "batch": batch}
            try:
                result = run_worker({**spec, "settings": _settings_dict(settings), "files": files})
            except PConvError as e:
                rows.append(Row(backend, size, batch, note=f"failed: {e}"))
                continue
            rows.append(Row(backend, size, batch, **result))
    return rows


def backend_unavailable(backend: str, files: dict[str, str]) -> str | None:
    """Why a backend cannot run here, or None."""
    import importlib.util

    if backend not in BACKENDS:
        return f"unknown backend (choose from {', '.join(BACKENDS)})"
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'pconv-deploy[openvino]')"
    if backend == "tensorrt":
        from pconv_deploy.runtime.backends import tensorrt_unavailable

        return tensorrt_unavailable() or (None if files.get("engine") else "no engine was built")
    return None


def prepare_models(settings: BenchSettings, work: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Checkpoint + our FP32/FP16 exports + the plain and naive variants (+ an engine with TensorRT).

    Exports are kept in ``work/<key>/``, the key hashing the checkpoint, the export code and torch's
    version: a second run on the same model reuses them (each file is written atomically).
    """
    from pconv_deploy.model import load_checkpoint, save_checkpoint
    from pconv_deploy.model.checkpoint import read_config

    if settings.model is not None:
        if not settings.model.is_file() or settings.model.suffix != ".safetensors":
            raise PConvError(f"--model {settings.model}: expected a pconv-deploy checkpoint (.safetensors)")
        checkpoint = settings.model
        check_settings(settings, read_config(checkpoint).multiple)
    else:
        check_settings(settings, 2**settings.layers)
        checkpoint = work / f"random-{settings.layers}-{settings.width}.safetensors"
        if not checkpoint.is_file():
            save_checkpoint(random_model(settings.layers, settings.width), checkpoint)
    folder = work / export_key(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"checkpoint": str(checkpoint)}
    wanted = ["ours"]
    if "onnxruntime-fp16" in settings.backends or "tensorrt" in settings.backends:
        wanted.append("ours_fp16")
    if settings.compare_size:
        wanted += ["plain", "naive"]
    model = None
    for name in wanted:
        path = folder / f"{name}.onnx"
        if not path.is_file():
            model = model or load_checkpoint(checkpoint)
            _export(model, name, path, say)
        files[name] = str(path)
    if "tensorrt" in settings.backends and backend_unavailable("tensorrt", {"engine": "?"}) is None:
        files["engine"] = str(_build_engine(settings, Path(files["ours_fp16"]), folder, say))
    return files


def export_key(checkpoint: Path) -> str:
    """Checkpoint bytes + the source of every module that shapes the exported graphs + torch's version."""
    import hashlib

    import torch

    from pconv_deploy.contract import file_sha256
    from pconv_deploy.export import graph, onnx_export, variants
    from pconv_deploy.model import pconv, unet

    digest = hashlib.sha256(file_sha256(checkpoint).encode())
    for module in (graph, onnx_export, variants, pconv, unet):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def _export(model: Any, name: str, path: Path, say: Callable[[str], None]) -> None:
    import torch

    from pconv_deploy.export.onnx_export import export_onnx
    from pconv_deploy.export.variants import export_variant

    t0 = time.perf_counter()
    torch.manual_seed(0)
    if name.startswith("ours"):
        export_onnx(model, path, fp16=name == "ours_fp16")
    else:
        export_variant(model, name, path)
    say(f"exported {name} in {time.perf_counter() - t0:.0f} s")


def default_work_dir() -> Path:
    """Where exports are kept between runs: $XDG_CACHE_HOME/pconv-deploy/bench (~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pconv-deploy" / "bench"


def random_model(layers: int, width: float, seed: int = 0):  # -> PConvUNet
    """A random model whose BatchNorm statistics look trained (nonzero shifts), so folded biases are
    nonzero as in a real checkpoint: the exporter drops all-zero biases, which changes ORT's fusions."""
    import torch

    from pconv_deploy.model import PConvUNet

    torch.manual_seed(seed)
    model = PConvUNet(layers, width)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def _build_engine(settings: BenchSettings, onnx_fp16: Path, work: Path, say: Callable[[str], None]) -> Path:
    from pconv_deploy.engines.build import build_engine, plan_build

    lo, hi, big = min(settings.sizes), max(settings.sizes), max(settings.batch_sizes)
    plan = plan_build(
        onnx_fp16, work / "ours_fp16.engine", fp16=True,
        min_shapes=[f"1x{lo}x{lo}"], opt_shapes=[f"{big}x{hi}x{hi}"], max_shapes=[f"{big}x{hi}x{hi}"],
    )  # fmt: skip
    t0 = time.perf_counter()
    build_engine(plan)
    say(f"built a TensorRT FP16 engine in {time.perf_counter() - t0:.0f} s")
    return plan.output


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own peak RSS); returns its JSON result."""
    cmd = [sys.executable, "-c", "import sys; from pconv_deploy.bench import worker_main; sys.exit(worker_main())"]
    proc = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PConvError(f"benchmark worker ({spec['kind']} {spec.get('backend', '')}) failed: {tail}")
    return json.loads(lines[-1])


def _settings_dict(settings: BenchSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["model"] = str(settings.model) if settings.model else None
    data["work_dir"] = str(settings.work_dir) if settings.work_dir else None
    return data


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    import onnxruntime

    cpu = ""
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
        "load_average_start": _load_average(),
    }


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# Workers (one subprocess each)


def worker_main() -> int:
    """Entry point of a worker subprocess: JSON spec on stdin, JSON result as the last stdout line."""
    spec = json.loads(sys.stdin.read())
    kind = spec["kind"]
    result = {"backend": _worker_backend, "compare": _worker_compare, "pipeline": _worker_pipeline}[kind](spec)
    print(json.dumps(result))
    return 0


def _max_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a
    worker would report its parent's RSS (the main process holds a full model after exporting)."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024.0
    except (OSError, StopIteration, ValueError):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def feeds(batch: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images and binary masks with rectangular holes (about 20% of the pixels)."""
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 3, size, size), dtype=np.float32)
    mask = np.ones((batch, 1, size, size), np.float32)
    for n in range(batch):
        for _ in range(6):
            y, x = rng.integers(0, size - size // 8, 2)
            h, w = rng.integers(size // 16, size // 4, 2)
            mask[n, 0, y : y + h, x : x + w] = 0.0
    return image, mask


def make_runner(backend: str, files: dict[str, str], threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    """``run(image, mask)`` for one backend, with ``threads`` intra-op threads."""
    if backend == "torch":
        import torch

        from pconv_deploy.runtime.backends import TorchBackend

        torch.set_num_threads(threads)
        return TorchBackend(files["checkpoint"], "cpu").run
    if backend in ("onnxruntime", "onnxruntime-fp16"):
        from pconv_deploy.runtime.backends import OnnxRuntimeBackend

        path = files["ours_fp16" if backend.endswith("fp16") else "ours"]
        return OnnxRuntimeBackend(path, "cpu", threads).run
    if backend == "openvino":
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}  # not bf16: FP32 graph
        compiled = ov.Core().compile_model(files["ours"], "CPU", config)
        return lambda image, mask: compiled({"image": image, "mask": mask})[0]
    if backend == "tensorrt":
        from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(files["engine"]).run
    raise PConvError(f"unknown backend {backend!r}")


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _worker_backend(spec: dict[str, Any]) -> dict[str, Any]:
    settings, size, batch = spec["settings"], spec["size"], spec["batch"]
    if spec["backend"] == "torch":
        import torch  # noqa: F401  (the import counts in the baseline, as for a torch user)
    else:
        import onnxruntime  # noqa: F401
    base = _max_rss_mib()
    run = make_runner(spec["backend"], spec["files"], settings["threads"])
    image, mask = feeds(batch, size)
    times = time_calls(lambda: run(image, mask), settings["warmup"], settings["repeats"])
    median = statistics.median(times)
    return {
        "latency_ms": round(median * 1000, 4),
        "images_per_s": round(batch / median, 3),
        "peak_mib": round(_max_rss_mib(), 1),
        "base_mib": round(base, 1),
    }


def _worker_compare(spec: dict[str, Any]) -> dict[str, Any]:
    """Ours, plain, naive and the GEMMs, interleaved round by round in this one process."""
    import onnx
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from pconv_deploy.export.checks import conv_macs

    settings, files = spec["settings"], spec["files"]
    threads, size, n = settings["threads"], settings["compare_size"], settings["gemm_size"]
    torch.set_num_threads(threads)
    runners = {name: make_runner("onnxruntime", {"ours": files[name]}, threads) for name in ("ours", "plain", "naive")}
    image, mask = feeds(1, size)
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    if backend_unavailable("openvino", files) is None:  # the other CPU engine, on our same FP32 file
        runners["openvino"] = make_runner("openvino", files, threads)
    calls = {name: (lambda r=r: r(image, mask)) for name, r in runners.items()}
    calls["gemm_torch"] = lambda: torch.mm(a, b)
    with threadpool_limits(limits=threads):
        calls["gemm_numpy"] = lambda: an @ bn
        times = _interleave(calls, settings["warmup"], settings["compare_repeats"])
        blas = [f"{i['internal_api']} {i.get('architecture') or ''}".strip() for i in threadpool_info()]
    med = {k: statistics.median(v) for k, v in times.items()}
    fastest = {k: min(v) for k, v in times.items()}
    macs = {k: conv_macs(onnx.load(files[k]), size, size).total for k in ("ours", "naive")}
    result = _compare_result(med, times, macs, n, blas, threads)
    # The fastest round of each is the least disturbed by other jobs: the same ratios from it.
    result["from_fastest"] = {
        "mask_path_cost": round(fastest["ours"] / fastest["plain"], 4),
        "naive_over_ours": round(fastest["naive"] / fastest["ours"], 4),
        "efficiency": round((2 * macs["ours"] / fastest["ours"]) / max(2 * n**3 / fastest[k] for k in
                            ("gemm_torch", "gemm_numpy")), 4),
    }  # fmt: skip
    return result


def _interleave(calls: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Round-robin timing; the order rotates every round so no call always follows the same one,
    and a pause follows each GEMM: the BLAS threads spin-wait after a GEMM and would slow the next call."""
    names = list(calls)
    times: dict[str, list[float]] = {k: [] for k in names}
    for rnd in range(warmup + repeats):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            t = time_calls(calls[name], 0, 1)[0]
            if rnd >= warmup:
                times[name].append(t)
            if name.startswith("gemm"):
                time.sleep(0.3)
    return times


def _compare_result(med: dict, times: dict, macs: dict, n: int, blas: list[str], threads: int) -> dict[str, Any]:
    gemm = {k: 2 * n**3 / med[k] / 1e9 for k in ("gemm_torch", "gemm_numpy")}
    best = max(gemm, key=gemm.get)
    ours_gflops = 2 * macs["ours"] / med["ours"] / 1e9
    rounds = range(len(times["ours"]))
    flops_gemm = 2 * n**3

    def per_round(ratio: Callable[[int], float]) -> float:
        """Median over rounds of a ratio of calls made seconds apart: slow load drift cancels."""
        return statistics.median(ratio(i) for i in rounds)

    def round_efficiency(i: int) -> float:
        best_gemm = max(flops_gemm / times[k][i] for k in ("gemm_torch", "gemm_numpy"))
        return 2 * macs["ours"] / times["ours"][i] / best_gemm

    return {
        "ms": {k: round(v * 1000, 4) for k, v in med.items()},
        "ms_all": {k: [round(t * 1000, 4) for t in v] for k, v in times.items()},
        "mask_path_cost": round(per_round(lambda i: times["ours"][i] / times["plain"][i]), 4),
        "naive_over_ours": round(per_round(lambda i: times["naive"][i] / times["ours"][i]), 4),
        "efficiency": round(per_round(round_efficiency), 4),
        **(
            {
                "openvino_over_ours": round(per_round(lambda i: times["openvino"][i] / times["ours"][i]), 4),
                "openvino_efficiency": round(
                    per_round(lambda i: round_efficiency(i) * times["ours"][i] / times["openvino"][i]), 4
                ),
            }
            if "openvino" in times
            else {}
        ),  # fmt: skip
        "from_medians": {
            "mask_path_cost": round(med["ours"] / med["plain"], 4),
            "naive_over_ours": round(med["naive"] / med["ours"], 4),
            "efficiency": round(ours_gflops / gemm[best], 4),
        },
        "conv_gmacs": {k: round(v / 1e9, 3) for k, v in macs.items()},
        "ours_gflops": round(ours_gflops, 3),
        "gemm_gflops": {k: round(v, 3) for k, v in gemm.items()},
        "gemm_best": best,
        "numpy_blas": blas,
        "peak_mib": round(_max_rss_mib(), 1),
        "threads": threads,
    }


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


def _worker_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """``run_folder`` (what ``pconv infer`` runs) against ``backend.run`` on the same batches."""
    from pconv_deploy.runtime import Inpainter
    from pconv_deploy.runtime.pipeline import run_folder

    settings, files = spec["settings"], spec["files"]
    count, batch, threads = settings["pipeline_images"], settings["pipeline_batch"], settings["threads"]
    folder = Path(spec["dir"]) / "pipeline"
    images, masks = photo_folder(folder, count)
    inpainter = Inpainter.from_path(files["ours"], "onnxruntime", batch, "full", device="cpu", threads=threads)
    image, mask = feeds(batch, 512)
    steps = -(-count // batch)

    def model_only() -> None:
        for _ in range(steps):
            inpainter.backend.run(image, mask)

    def pipeline() -> None:
        out = folder / "out"
        report = run_folder(inpainter, images, masks, out, overwrite=True, progress=False, echo=lambda _: None)
        if report.count("ok") != count:
            failed = [f"{r.image}: {r.error}" for r in report.files if r.status == "failed"]
            raise PConvError(f"pipeline wrote {report.count('ok')} of {count} images {failed[:1]}")

    times: dict[str, list[float]] = {"model": [], "pipeline": []}
    for rnd in range(settings["warmup"] + settings["repeats"]):
        for name, call in (("model", model_only), ("pipeline", pipeline)):
            t = time_calls(call, 0, 1)[0]
            if rnd >= settings["warmup"]:
                times[name].append(t)
    model_rate = steps * batch / statistics.median(times["model"])
    pipe_rate = count / statistics.median(times["pipeline"])
    return {
        "images": count, "batch": batch, "strategy": "full",
        "model_images_per_s": round(model_rate, 3), "pipeline_images_per_s": round(pipe_rate, 3),
        "pipeline_over_model": round(pipe_rate / model_rate, 4), "peak_mib": round(_max_rss_mib(), 1),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Output


def render(report: BenchReport) -> Any:
    """The report as rich renderables (main table, comparisons, targets)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    main = Table(title="pconv bench: images/s per backend (median of repeats)")
    for col in ("backend", "size", "batch", "latency ms", "images/s", "peak MiB", "note"):
        main.add_column(col, justify="left" if col in ("backend", "note") else "right")
    skipped = [r for r in report.rows if not r.size]
    for r in report.rows:
        if not r.size:
            continue
        main.add_row(
            r.backend, str(r.size or ""), str(r.batch or ""), _fmt(r.latency_ms, 1), _fmt(r.images_per_s, 2),
            _fmt(r.peak_mib, 0) + (f" ({r.base_mib:.0f} base)" if r.base_mib else ""), r.note,
        )  # fmt: skip
    parts: list[Any] = [main, *(escape(f"{r.backend}: {r.note}") for r in skipped)]
    if report.compare:
        parts.append(_compare_table(report))
    targets = Table(title="targets")
    for col in ("target", "goal", "measured", "met"):
        targets.add_column(col)
    for t in report.targets():
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
        targets.add_row(t["target"], t["goal"], "not measured" if t["measured"] is None else str(t["measured"]), met)
    parts.append(targets)
    load = report.machine.get("load_average_start"), report.machine.get("load_average_end")
    parts.append(
        f"load average (1, 5, 15 min) at start {load[0]}, at end {load[1]}; {report.seconds:.0f} s in all, "
        f"{report.prepare_seconds:.0f} s of it exporting (exports are reused on the next run)"
    )
    return Group(*parts)


def _compare_table(report: BenchReport) -> Any:
    from rich.table import Table

    c, p = report.compare, report.pipeline
    size = report.settings["compare_size"]
    title = f"one process, interleaved rounds, {size}x{size} batch 1, {c['threads']} threads, per-round ratios"
    table = Table(title=title)
    table.add_column("comparison")
    table.add_column("value", justify="right")
    table.add_column("from (median ms)")
    ms = {k: f"{v:.0f}" for k, v in c["ms"].items()}
    table.add_row("mask-path cost: ours / plain U-Net", f"{c['mask_path_cost']:.3f}x", f"{ms['ours']} / {ms['plain']}")
    table.add_row("naive C_out x C_in mask conv / ours", f"{c['naive_over_ours']:.2f}x", f"{ms['naive']}/{ms['ours']}")
    gemm = {k: f"{v:.1f}" for k, v in c["gemm_gflops"].items()}
    table.add_row(
        "efficiency: ours conv GFLOP/s / best GEMM", f"{c['efficiency']:.3f}",
        f"{c['ours_gflops']:.1f} / {gemm[c['gemm_best']]} GFLOP/s ({c['gemm_best']}; torch {gemm['gemm_torch']}, "
        f"numpy {gemm['gemm_numpy']})",
    )  # fmt: skip
    if "openvino_over_ours" in c:
        table.add_row(
            "OpenVINO on our FP32 file / ONNX Runtime", f"{c['openvino_over_ours']:.3f}x",
            f"time ratio; OpenVINO's efficiency {c['openvino_efficiency']:.3f}",
        )  # fmt: skip
    for label, key in (("from the medians", "from_medians"), ("from each one's fastest round", "from_fastest")):
        f = c[key]
        table.add_row(
            f"  same, {label}", f"{f['mask_path_cost']:.3f}x / {f['naive_over_ours']:.2f}x / {f['efficiency']:.3f}",
            "mask-path cost / naive / efficiency",
        )  # fmt: skip
    if p:
        table.add_row(
            "pipeline: run_folder / model alone", f"{p['pipeline_over_model']:.3f}x",
            f"{p['pipeline_images_per_s']} / {p['model_images_per_s']} images/s, {p['images']} photos 512x512",
        )  # fmt: skip
    return table


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise PConvError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise PConvError(f"{what} must be positive integers, got {text!r}")
    return values


def check_settings(settings: BenchSettings, multiple: int) -> None:
    """Sizes must be multiples of 2^layers; backends must be known. One clear line otherwise."""
    for size in (*settings.sizes, *((settings.compare_size,) if settings.compare_size else ())):
        if size % multiple:
            raise PConvError(f"size {size} is not a multiple of {multiple} (2^layers): choose another --sizes")
    unknown = [b for b in settings.backends if b not in BACKENDS]
    if unknown:
        raise PConvError(f"unknown backend(s) {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")


def write_json(report: BenchReport, path: str | Path) -> Path:
    from pconv_deploy.files import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(report.to_json(), indent=2) + "\n")
    return path


def summary_lines(report: BenchReport) -> Sequence[str]:
    """Plain-text lines of the targets (for logs)."""
    return [f"{t['target']}: {t['measured']} (goal {t['goal']}, met: {t['met']})" for t in report.targets()]
