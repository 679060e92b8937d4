"""How much context the crop strategy needs: hole L1 against the true photo for each margin, and full.

    .venv/bin/python scripts/crop_context.py --model demo.onnx [--margins 0,32,64,96,128] [--seeds 2]
    .venv/bin/python scripts/crop_context.py --model demo.onnx --masks strokes --margins 64 --unsplit

Held-out photos of at least ``--min-pixels`` (the demo-heldout split at native resolution, 6-20 MP:
needs the demo-data extra and the Debian wallpaper packages, see pconv_deploy/train/photos.py),
each with masks drawn as scripts/bench_photos.py draws them (masks.photo_mask; ``--masks``: objects of about 1%
holes by default; strokes: six long straight strokes). For every margin, ``--strategy crop``
fills the holes (long holes split into several windows); with ``--unsplit`` also one window per
hole as before splitting (``plan_windows(split=False)``); ``full`` runs the whole photo at once.
Reports the mean L1 (0-255) inside the holes against the photo before masking, paired against
full's and against the unsplit crop's (mean ± standard error over photo-masks), the mean
|crop - full| there, and the share of pixels the network ran on. The photos were never trained
on; the masks differ from the model-selection masks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pconv_deploy.masks import PHOTO_MASKS, photo_mask


def unsplit_job(inpainter, photo: np.ndarray, hole: np.ndarray):
    """``inpainter.plan`` for crop with one window per hole (no splitting): Inpainter.plan's crop branch."""
    from pconv_deploy.runtime.tiles import Job, make_tile, plan_windows

    tiles = []
    for window, paste in plan_windows(hole, inpainter.margin, inpainter.multiple, split=False):
        y0, y1, x0, x1 = window
        max_side = None if max(y1 - y0, x1 - x0) <= inpainter.max_side else inpainter.max_side
        tiles.append(make_tile(photo, hole, window, max_side=max_side, paste=paste))
    return Job(photo, hole, tuple(tiles))


def paired(a: list[float], b: list[float]) -> str:
    """Mean of a - b with its standard error."""
    diff = np.subtract(a, b)
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return f"{diff.mean():+.3f} ± {se:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model (pconv export of the bundled model)")
    parser.add_argument("--margins", default="0,32,64,96,128")
    parser.add_argument("--seeds", type=int, default=2, help="masks per photo")
    parser.add_argument("--min-pixels", type=float, default=6e6)
    parser.add_argument("--ratio", type=float, default=0.01, help="hole share of each photo (objects, scribbles)")
    parser.add_argument("--masks", choices=tuple(PHOTO_MASKS), default="objects", help="hole layout (masks.photo_mask)")
    parser.add_argument("--unsplit", action="store_true", help="also crop with one window per hole (no splitting)")
    args = parser.parse_args()

    from pconv_deploy.runtime import Inpainter, InpaintOptions
    from pconv_deploy.train.photos import split_paths

    margins = [int(m) for m in args.margins.split(",")]
    paths = [p for p in split_paths("demo-heldout") if np.prod(Image.open(p).size) >= args.min_pixels]
    crop = {m: InpaintOptions(strategy="crop", margin=m) for m in margins}
    inpainters = {f"crop {m}": Inpainter.from_path(args.model, crop[m]) for m in margins}
    if args.unsplit:
        inpainters |= {f"crop {m} unsplit": inpainters[f"crop {m}"] for m in margins}
    inpainters["full"] = Inpainter.from_path(args.model, InpaintOptions(strategy="full"))
    l1 = {name: [] for name in inpainters}
    to_full = {name: [] for name in inpainters}
    share = {name: [] for name in inpainters}
    seconds = dict.fromkeys(inpainters, 0.0)
    holes = []
    for path in paths:
        photo = np.asarray(Image.open(path).convert("RGB"))
        h, w = photo.shape[:2]
        for seed in range(args.seeds):
            hole = photo_mask(args.masks, h, w, rng=np.random.default_rng(seed), ratio=args.ratio)
            outs = {}
            for name, inpainter in inpainters.items():
                start = time.perf_counter()
                # Inpainter.inpaint's steps, so the planned tiles can be counted
                job = unsplit_job(inpainter, photo, hole) if name.endswith("unsplit") else inpainter.plan(photo, hole)
                outs[name] = job.finish(inpainter.run_tiles(job.tiles))
                seconds[name] += time.perf_counter() - start
                share[name].append(sum(t.hole.size for t in job.tiles) / hole.size)
            holes.append(hole.mean())
            truth = photo[hole].astype(np.float32)
            for name, out in outs.items():
                l1[name].append(np.abs(out[hole].astype(np.float32) - truth).mean())
                to_full[name].append(np.abs(out[hole].astype(np.float32) - outs["full"][hole]).mean())
        print(f"{path.name}: {w}x{h}", file=sys.stderr)
    print(
        f"{len(paths)} held-out photos of >= {args.min_pixels / 1e6:g} MP, {args.seeds} {args.masks} masks each "
        f"({100 * np.mean(holes):.2f}% holes), model {args.model.name}"
    )
    print(
        "| strategy | hole L1 vs photo | - full (paired, ± s.e.) | - unsplit (paired) | abs(crop - full) "
        "| pixels run | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in inpainters:
        base = name if name == "full" or name.endswith("unsplit") else f"{name} unsplit"
        to_unsplit = paired(l1[name], l1[base]) if base in l1 and base != name else "-"
        print(
            f"| {name} | {np.mean(l1[name]):.2f} | {paired(l1[name], l1['full'])} | {to_unsplit} | "
            f"{np.mean(to_full[name]):.2f} | {100 * np.mean(share[name]):.1f}% | {seconds[name]:.1f} |"
        )


if __name__ == "__main__":
    main()
