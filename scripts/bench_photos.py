"""12 MP photos through `pconv infer`: crop vs full time, peak memory, and the output encoders, in one run.

    .venv/bin/python scripts/bench_photos.py [--model demo.onnx] [--count 4] [--memory-limit 6GiB]
        [--masks objects|strokes|scribbles] [--baseline OLD_CHECKOUT] [--repeat 3] [--margin M] [--skip-encoders]

Makes ``--count`` photo-like 4000x3000 JPEGs (scikit-image photos upscaled, with sensor-like noise)
and masks covering about 1% of each (``--masks objects``: one to three irregular blobs per photo;
``strokes``: six long straight strokes at any angle; ``scribbles``: short scribbles scattered over
the photo), then runs `pconv infer` as a user would
(one subprocess per run, ONNX Runtime CPU): ``--strategy crop``, ``--strategy full`` under
``--memory-limit``, and crop again (load on a shared machine drifts: the crop time is the mean
of the runs; ``--baseline DIR`` adds a crop run with the package of another checkout before each
later crop run; ``--repeat N`` makes N later crop runs and a second full run at the end).
Prints the share of pixels crop infers with and without splitting long holes, and the load
average. Peak memory is the report's ``peak_memory_bytes`` (ru_maxrss of the infer process).
Then times the encoders on one 12 MP result: ours (runtime/outputs.encode_png) at PNG levels 1, 2
(the default) and 6, and Pillow's PNG at 1 and 6 (its default), JPEG and WebP. Without
``--model`` the bundled demo checkpoint is exported to ONNX first (needs torch). Timings vary
20-30% between runs on shared machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pconv_deploy.masks import PHOTO_MASKS, photo_mask

SIZE = (4000, 3000)  # w, h


def make_photos(folder: Path, count: int, masks: str = "objects", hole_ratio: float = 0.01) -> None:
    """Photo-like JPEGs (upscaled scikit-image photos + noise) and masks of about ``hole_ratio``, drawn by
    :func:`pconv_deploy.masks.photo_mask`: ``masks`` is one of its ``PHOTO_MASKS``."""
    import skimage.data

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = Image.fromarray(sources[i % len(sources)]).resize(SIZE, Image.Resampling.BICUBIC)
        pixels = np.asarray(photo).astype(np.float32) + rng.normal(0, 4, (SIZE[1], SIZE[0], 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "images" / f"photo{i}.jpg", quality=92)
        hole = photo_mask(masks, SIZE[1], SIZE[0], rng=rng, ratio=hole_ratio)
        Image.fromarray(hole.astype(np.uint8) * 255).save(folder / "masks" / f"photo{i}.png")


def infer(model: Path, folder: Path, name: str, *extra: str, package: Path | None = None) -> dict:
    """One `pconv infer` subprocess; ``package``: a checkout whose pconv_deploy runs instead (PYTHONPATH)."""
    out, report = folder / f"out-{name}", folder / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "pconv_deploy.cli",
        "infer",
        "--images",
        str(folder / "images"),
        "--masks",
        str(folder / "masks"),
        "--output",
        str(out),
        "--model",
        str(model),
        "--report",
        str(report),
        "--overwrite",
        *extra,
    ]
    env = None if package is None else {**os.environ, "PYTHONPATH": str(package.resolve())}
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{name} failed:\n{r.stderr}")
    data = json.loads(report.read_text())
    return {
        "wall": wall,
        "seconds": data["seconds"],
        "peak": data["peak_memory_bytes"],
        "limit": data["memory_limit_bytes"],
    }


def encode_times(pixels: np.ndarray) -> dict[str, tuple[float, int]]:
    """Seconds and bytes to encode one image: our PNG writer at levels 1, 2 (default), 6; Pillow's PNG, JPEG, WebP."""
    from pconv_deploy.runtime.outputs import encode_png

    im = Image.fromarray(pixels)
    pillow = {
        "Pillow png 1": ("PNG", {"compress_level": 1}),
        "Pillow png 6": ("PNG", {"compress_level": 6}),
        "Pillow jpg 95": ("JPEG", {"quality": 95}),
        "Pillow webp 95": ("WEBP", {"quality": 95}),
    }
    encoders = {f"png level {n}": (lambda n=n: encode_png(pixels, n)) for n in (1, 2, 6)}
    for label, (fmt, options) in pillow.items():
        encoders[label] = lambda fmt=fmt, options=options: save(im, fmt, options)
    results = {}
    for label, encode in encoders.items():
        best, size = float("inf"), 0
        for _ in range(2):
            start = time.perf_counter()
            size = len(encode())
            best = min(best, time.perf_counter() - start)
        results[label] = (best, size)
    return results


def save(im: Image.Image, fmt: str, options: dict) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def print_crop_pixels(model: Path, folder: Path, margin: int | None = None) -> None:
    """The share of the photos' pixels crop infers (default margin), with long holes split and with one window each."""
    from pconv_deploy.runtime.backends import load_backend
    from pconv_deploy.runtime.tiles import CROP_MARGIN, plan_windows

    multiple = load_backend(model, "onnxruntime", "cpu").multiple
    for split in (True, False):
        pixels = windows = total = 0
        for path in sorted((folder / "masks").iterdir()):
            hole = np.asarray(Image.open(path)) > 127
            plans = plan_windows(hole, CROP_MARGIN if margin is None else margin, multiple, split=split)
            pixels += sum((y1 - y0) * (x1 - x0) for (y0, y1, x0, x1), _ in plans)
            windows, total = windows + len(plans), total + hole.size
        label = "split (default)" if split else "one window per hole"
        print(f"crop infers {100 * pixels / total:.1f}% of the pixels in {windows} windows: {label}")


def time_strategies(args: argparse.Namespace, model: Path, folder: Path) -> None:
    """crop, full, then ``--repeat`` times (baseline crop, crop), then full again if repeated; prints the ratios."""
    margin = () if args.margin is None else ("--margin", str(args.margin))
    crops = [infer(model, folder, "crop", *margin)]
    fulls = [infer(model, folder, "full", "--strategy", "full", "--memory-limit", args.memory_limit)]
    baselines = []
    for _ in range(args.repeat):
        if args.baseline:
            baselines.append(infer(model, folder, "crop-baseline", *margin, package=args.baseline))
        crops.append(infer(model, folder, "crop", *margin))
    if args.repeat > 1:
        fulls.append(infer(model, folder, "full", "--strategy", "full", "--memory-limit", args.memory_limit))
    gib = 2**30
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    full_s = np.mean([r["seconds"] for r in fulls])
    for label, runs in (("crop", crops), (f"crop with {args.baseline}", baselines)):
        if runs:
            seconds = [r["seconds"] for r in runs]
            print(
                f"{label}: {', '.join(f'{t:.1f}' for t in seconds)} s (mean {np.mean(seconds):.1f}), "
                f"peak {runs[0]['peak'] / gib:.2f} GiB; full / mean: {full_s / np.mean(seconds):.1f}x"
            )
    full_list = ", ".join(f"{r['seconds']:.1f}" for r in fulls)
    print(f"full: {full_list} s, peak {fulls[0]['peak'] / gib:.2f} GiB (--memory-limit {args.memory_limit})")


def default_model(folder: Path) -> Path:
    from pconv_deploy.export.onnx_export import export_onnx
    from pconv_deploy.model import load_checkpoint
    from pconv_deploy.model.checkpoint import default_checkpoint

    return export_onnx(load_checkpoint(default_checkpoint()), folder / "demo.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: the bundled demo model, exported)")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--memory-limit", default="6GiB", help="--memory-limit for the full-strategy run")
    parser.add_argument(
        "--masks", choices=tuple(PHOTO_MASKS), default="objects", help="hole layout (pconv_deploy.masks)"
    )
    parser.add_argument("--keep", type=Path, help="make the photos in this folder and keep them")
    parser.add_argument(
        "--baseline", type=Path, help="also time crop with the pconv_deploy of this checkout (e.g. a git worktree)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="crop (and baseline) runs after full; >1: full twice")
    parser.add_argument("--margin", type=int, help="--margin for the crop runs (default: pconv infer's)")
    parser.add_argument("--skip-encoders", action="store_true", help="do not time the PNG/JPEG/WebP encoders")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="pconv-photos-"))
    model = args.model or default_model(folder)
    make_photos(folder, args.count, args.masks)
    holes = np.mean([np.asarray(Image.open(p)).mean() / 255 for p in sorted((folder / "masks").iterdir())])
    print(f"{args.count} photos {SIZE[0]}x{SIZE[1]}, {100 * holes:.2f}% holes ({args.masks}), model {model.name}")
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print_crop_pixels(model, folder, args.margin)
    time_strategies(args, model, folder)
    if args.skip_encoders:
        return
    result = np.asarray(Image.open(folder / "out-crop" / "photo0.png").convert("RGB"))
    times = encode_times(result)
    base = times["png level 1"][0]
    for label, (seconds, size) in times.items():
        print(f"encode {label:14s} {seconds:5.2f} s  {size / 2**20:5.1f} MiB  ({seconds / base:.2f}x png level 1)")


if __name__ == "__main__":
    main()
