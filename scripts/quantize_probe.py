"""Which INT8 recipe keeps the bundled model's quality: hole L1 per bin against its FP32 file.

    .venv/bin/python scripts/quantize_probe.py [--images 8 16 32] [--methods minmax entropy percentile]
        [--keep "1,-1" "none"] [--percentiles 99.99] [--size 512] [--activations u8|s8]
    .venv/bin/python scripts/quantize_probe.py --images 16 --link-photos cal16/   # the same photos, for the CLI

Needs the demo-data extra (photos.py). Calibration photos come from demo-train (every k-th of the
split, so they spread over its sources), each with 2 masks from the bins up to 30 % (seed 0);
scoring is on demo-heldout, never used for calibration: the README evaluation's samples (256x256
centre crops, 2 masks per bin, mask seed 0, bins up to 30 %), every file through the runtime
(ONNX Runtime, strategy full). Prints one markdown row per recipe as soon as it is scored:
mean hole L1 (0-255) of FP32 and the INT8 difference per bin, NaN count, known pixels changed,
and ORT time at 512x512 batch 1 relative to the FP32 file (one run, same process).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def calibration_photos(count: int) -> tuple[Path, ...]:
    from pconv_deploy.train.photos import split_paths

    paths = split_paths("demo-train")
    step = max(1, len(paths) // count)
    return tuple(paths[::step][:count])


def score(model: Path, samples) -> dict:
    from pconv_deploy.train.evaluate import hole_l1, runtime_predictor

    predict = runtime_predictor(model)
    per_bin: dict[int, list[float]] = {}
    nan = changed = 0
    for start in range(0, len(samples), 8):
        chunk = samples[start : start + 8]
        for s, out in zip(chunk, predict([s.image for s in chunk], [s.hole for s in chunk])):
            per_bin.setdefault(s.bin_index, []).append(hole_l1(out, s.image, s.hole))
            changed += int((out[~s.hole] != s.image[~s.hole]).any())
    return {"bins": {b: float(np.mean(v)) for b, v in sorted(per_bin.items())}, "nan": nan, "changed": changed}


def ort_seconds(model: Path, size: int = 512, repeats: int = 5) -> float:
    import onnxruntime as ort

    from pconv_deploy.contract import IMAGE, MASK

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {IMAGE: rng.random((1, 3, size, size), dtype=np.float32), MASK: np.ones((1, 1, size, size), np.float32)}
    feeds[MASK][:, :, 100:200, 100:300] = 0
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[16])
    parser.add_argument("--methods", nargs="+", default=["percentile"])
    parser.add_argument("--percentiles", type=float, nargs="+", default=[99.99])
    parser.add_argument("--keep", nargs="+", default=["1,-1"], help='feature convs kept fp32, e.g. "1,-1" or none')
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--activations", default="u8", help="u8 (asymmetric, CPU) or s8 (symmetric, TensorRT)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--link-photos", type=Path, default=None, help="just link the --images calibration photos here")
    args = parser.parse_args()
    if args.link_photos:  # for `pconv export --precision int8 --calibration FOLDER` with the probe's photos
        args.link_photos.mkdir(parents=True, exist_ok=True)
        for i, photo in enumerate(calibration_photos(args.images[0])):
            (args.link_photos / f"{i:03d}-{photo.name}").symlink_to(photo)
        return

    from pconv_deploy.export.calibration import CalibrationSet
    from pconv_deploy.export.onnx_export import build_onnx, write_atomic
    from pconv_deploy.export.quantize import Int8Recipe, quantize_int8
    from pconv_deploy.model.checkpoint import default_checkpoint, load_checkpoint
    from pconv_deploy.train.evaluate import load_samples

    work = args.workdir or Path(tempfile.mkdtemp(prefix="quantize-probe-"))
    fp32_path = work / "fp32.onnx"
    proto, _ = build_onnx(load_checkpoint(default_checkpoint()))
    write_atomic(proto, fp32_path)
    samples, _ = load_samples("demo-heldout", 256, masks_per_bin=2, seed=0)
    samples = [s for s in samples if s.bin_index < 3]
    base = score(fp32_path, samples)
    base_s = ort_seconds(fp32_path)
    b = base["bins"]
    print(f"FP32: hole L1 {b[0]:.3f} / {b[1]:.3f} / {b[2]:.3f}; {len(samples)} held-out samples", flush=True)
    print(
        "| images | method | kept fp32 | act | 1-10 % | 10-20 % | 20-30 % | NaN | known changed | speed |", flush=True
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.images:
        photos = calibration_photos(n)
        for method in args.methods:
            for pct in args.percentiles if method == "percentile" else [99.99]:
                for keep in args.keep:
                    kept = () if keep == "none" else tuple(int(i) for i in keep.split(","))
                    recipe = Int8Recipe(method, pct, kept, args.activations)
                    cal = CalibrationSet(photos, args.size)
                    t = time.perf_counter()
                    q = quantize_int8(proto, cal, recipe)
                    cal_s = time.perf_counter() - t
                    path = write_atomic(q, work / f"int8-{n}-{method}-{pct}-{keep}.onnx")
                    got = score(path, samples)
                    diff = " | ".join(f"{got['bins'][k] - b[k]:+.3f}" for k in sorted(b))
                    speed = base_s / ort_seconds(path)
                    label = f"pct {pct:g}" if method == "percentile" else method
                    print(
                        f"| {n} | {label} | 0,{keep} | {args.activations} | {diff} | {got['nan']} | {got['changed']} | "
                        f"{speed:.2f}x | (calibrated in {cal_s:.0f} s)",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
