"""Does the folder job keep up with the model? Folder vs model-only images/s per backend, interleaved in one run.

    .venv/bin/python scripts/bench_folder.py --model full.onnx [--int8 full-int8.onnx] [--photos 32] \\
        [--rounds 3] [--batch-size 4] [--configs ort-fp32,ort-int8,ov-f32,ov-bf16,ov-int8]

Makes ``--photos`` 512x512 JPEG photos (scikit-image photos cropped, upscaled, with sensor noise) and
stroke masks of about 10 % (``--images``/``--masks`` take yours). Then, each round, for each
configuration on ONE backend object: model-only images/s (its ``run`` on a prepared batch of
``--batch-size`` images, back to back) and the folder job's images/s (``run_folder``, strategy full,
in this process: decoding, padding, batching, compositing, PNG encoding and atomic writes; loading
excluded), one right after the other; configurations run in reverse order every other round. It
prints each round and the medians: folder / model per configuration, and every configuration's
folder and model images/s over ONNX Runtime FP32's of the same round (the speed targets), with minor
page faults per image and the load average. Configurations:

- ``ort-fp32`` / ``ort-int8``: ONNX Runtime CPU on the FP32 / INT8 file, as ``pconv infer`` runs it;
- ``ort-fp32-giveback``: the same with nothing kept between calls (keep_bytes 0: the arena gives its
  buffers back after every call, as the arena-off runtime did); ``ort-fp32-spin``: idle threads spin;
- ``ov-f32`` / ``ov-bf16`` / ``ov-f16``: OpenVINO on the FP32 file at that inference precision;
  ``ov-int8``: OpenVINO on the INT8 file (f32 for what the file keeps in float).

Machines here are shared and timings drift 20-30 % within minutes: read the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {  # name -> (file, backend, inference precision, options)
    "ort-fp32": ("fp32", "onnxruntime", "auto", {}),
    "ort-fp32-giveback": ("fp32", "onnxruntime", "auto", {"keep_bytes": 0}),
    "ort-fp32-spin": ("fp32", "onnxruntime", "auto", {"spinning": True}),
    "ort-int8": ("int8", "onnxruntime", "auto", {}),
    "ov-f32": ("fp32", "openvino", "f32", {}),
    "ov-bf16": ("fp32", "openvino", "bf16", {}),
    "ov-f16": ("fp32", "openvino", "f16", {}),
    "ov-int8": ("int8", "openvino", "f32", {}),
}
SIZE = 512


def make_photos(folder: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """``count`` photo-like 512x512 JPEGs and PNG stroke masks (about 10 % hole) in folder/images, folder/masks."""
    import skimage.data
    from PIL import Image

    from pconv_deploy.masks import straight_strokes

    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    for i in range(count):
        src = sources[i % len(sources)]
        y, x = rng.integers(0, [src.shape[0] - 279, src.shape[1] - 279])
        crop = Image.fromarray(src[y : y + 280, x : x + 280]).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        pixels = np.asarray(crop).astype(np.float32) + rng.normal(0, 3, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / f"p{i:03d}.jpg", quality=92)
        hole = straight_strokes(SIZE, SIZE, rng, ratio=0.1)
        Image.fromarray(hole.astype(np.uint8) * 255).save(masks / f"p{i:03d}.png")
    return images, masks


def open_config(name: str, files: dict[str, Path], threads: int | None):
    from pconv_deploy.runtime.backends import OnnxRuntimeBackend, load_backend

    file_key, backend_name, precision, options = CONFIGS[name]
    if backend_name == "onnxruntime":
        backend = OnnxRuntimeBackend(files[file_key], "cpu", threads, spinning=options.get("spinning", False))
    else:
        backend = load_backend(files[file_key], backend_name, "cpu", threads=threads, precision=precision)
    return backend, options.get("keep_bytes", "auto")


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def model_only(backend, batch: int, images: int) -> tuple[float, float]:
    """(images/s, minor faults per image) of ``backend.run`` on a prepared batch, back to back."""
    rng = np.random.default_rng(0)
    image = rng.random((batch, 3, SIZE, SIZE), dtype=np.float32)
    mask = (rng.random((batch, 1, SIZE, SIZE)) > 0.1).astype(np.float32)
    calls = max(1, images // batch)
    backend.run(image, mask)  # untimed: ONNX Runtime sessions of one process share one arena, refilled here
    f0, t0 = faults(), time.perf_counter()
    for _ in range(calls):
        backend.run(image, mask)
    return calls * batch / (time.perf_counter() - t0), (faults() - f0) / (calls * batch)


def folder_job(inpainter, images: Path, masks: Path, out: Path) -> tuple[float, float]:
    """(images/s, minor faults per image) of the folder job, strategy full, outputs overwritten."""
    from pconv_deploy.runtime.pipeline import FolderOptions, run_folder

    f0, t0 = faults(), time.perf_counter()
    options = FolderOptions(images=images, masks=masks, output=out, overwrite=True)
    report = run_folder(inpainter, options, progress=False)
    seconds = time.perf_counter() - t0
    if report.count("ok") != len(report.files):
        raise SystemExit(f"folder job failed: {[f.error for f in report.files if f.error][:3]}")
    return len(report.files) / seconds, (faults() - f0) / len(report.files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the FP32 ONNX file")
    parser.add_argument("--int8", type=Path, help="the INT8 ONNX file (pconv export --precision int8)")
    parser.add_argument("--configs", default="ort-fp32,ort-fp32-giveback,ort-fp32-spin,ort-int8,ov-f32,ov-bf16,ov-int8")
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--images", type=Path, help="your own images folder (with --masks)")
    parser.add_argument("--masks", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="as pconv infer's (default 4)")
    parser.add_argument("--model-images", type=int, default=16, help="images per model-only measurement")
    parser.add_argument("--threads", type=int, help="CPU engine threads (default: every core)")
    args = parser.parse_args()

    from pconv_deploy.runtime import Inpainter, InpaintOptions

    files = {"fp32": args.model, "int8": args.int8}
    names = [c for c in args.configs.split(",") if c and (CONFIGS[c][0] != "int8" or args.int8)]
    work = Path(tempfile.mkdtemp(prefix="pconv-bench-folder-"))
    images, masks = (args.images, args.masks) if args.images else make_photos(work / "photos", args.photos)
    inpainters = {}
    for name in names:
        backend, keep = open_config(name, files, args.threads)
        inpainters[name] = Inpainter(backend, InpaintOptions(batch_size=args.batch_size, strategy="full"))
        if keep != "auto":
            backend.keep_bytes = keep
        if hasattr(backend, "keep_bytes"):
            kept = "no limit" if backend.keep_bytes is None else f"{backend.keep_bytes / 2**20:.0f} MiB"
            print(f"{name}: {backend.name}, keeps calls of up to {kept} between equal calls")
        folder_job(inpainters[name], images, masks, work / "warm")  # first-call costs out of the rounds
    print(f"{len(names)} configurations, batch {args.batch_size}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    results: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            inpainter = inpainters[name]
            model = model_only(inpainter.backend, args.batch_size, args.model_images)
            folder = folder_job(inpainter, images, masks, work / "out")
            results[name].append((*model, *folder))
            rates = f"model {model[0]:6.2f} img/s  folder {folder[0]:6.2f} img/s  ratio {folder[0] / model[0]:.2f}"
            print(f"round {r} {name:18} {rates}  faults/img {model[1]:8.0f} {folder[1]:8.0f}", flush=True)
    report(results, names, args.rounds)


def report(results: dict, names: list[str], rounds: int) -> None:
    base = "ort-fp32" if "ort-fp32" in results else names[0]
    print(f"\nload {os.getloadavg()}; medians over {rounds} rounds; 'vs {base}': same round, then the median")
    print(
        f"{'config':18} {'model img/s':>11} {'folder img/s':>12} {'folder/model':>12} "
        f"{'model vs base':>13} {'folder vs base':>14} {'faults/img model, folder':>25}"
    )
    for name in names:
        rows = results[name]
        ratio = statistics.median(f / m for m, _, f, _ in rows)
        model_vs = statistics.median(rows[i][0] / results[base][i][0] for i in range(rounds))
        folder_vs = statistics.median(rows[i][2] / results[base][i][2] for i in range(rounds))
        print(
            f"{name:18} {statistics.median(r[0] for r in rows):11.2f} {statistics.median(r[2] for r in rows):12.2f} "
            f"{ratio:12.2f} {model_vs:12.2f}x {folder_vs:13.2f}x "
            f"{statistics.median(r[1] for r in rows):12.0f} {statistics.median(r[3] for r in rows):12.0f}"
        )


if __name__ == "__main__":
    main()
