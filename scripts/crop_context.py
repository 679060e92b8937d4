"""How much context the crop strategy needs: hole L1 against the true photo for each margin, and full.

    .venv/bin/python scripts/crop_context.py [--model demo.onnx] [--margins 0,32,64,96,128] [--seeds 2]

Held-out photos of at least ``--min-pixels`` (the demo-heldout split at native resolution, 6-20 MP:
needs the demo-data extra and the Debian wallpaper packages, see pconv_deploy/train/photos.py),
each with object masks of about 1% holes drawn as scripts/bench_photos.py draws them. For every
margin, ``--strategy crop`` fills the holes; ``full`` runs the whole photo at once. Reports the
mean L1 (0-255) inside the holes against the photo before masking, the mean |crop - full| there,
and the share of pixels the network ran on. The photos were never trained on; the masks differ
from the model-selection masks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_photos import hole_mask  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model (pconv export of the bundled model)")
    parser.add_argument("--margins", default="0,32,64,96,128")
    parser.add_argument("--seeds", type=int, default=2, help="masks per photo")
    parser.add_argument("--min-pixels", type=float, default=6e6)
    parser.add_argument("--ratio", type=float, default=0.01, help="hole share of each photo")
    args = parser.parse_args()

    from pconv_deploy.runtime import Inpainter
    from pconv_deploy.train.photos import split_paths

    margins = [int(m) for m in args.margins.split(",")]
    paths = [p for p in split_paths("demo-heldout") if np.prod(Image.open(p).size) >= args.min_pixels]
    runners = {f"crop {m}": Inpainter.from_path(args.model, strategy="crop", margin=m) for m in margins}
    runners["full"] = Inpainter.from_path(args.model, strategy="full")
    l1 = {name: [] for name in runners}
    to_full = {name: [] for name in runners}
    share = {name: [] for name in runners}
    seconds = dict.fromkeys(runners, 0.0)
    for path in paths:
        photo = np.asarray(Image.open(path).convert("RGB"))
        h, w = photo.shape[:2]
        for seed in range(args.seeds):
            hole = np.asarray(hole_mask((w, h), np.random.default_rng(seed), "objects", args.ratio)) > 127
            outs = {}
            for name, runner in runners.items():
                start = time.perf_counter()
                job = runner.plan(photo, hole)  # Inpainter.inpaint's steps, so the planned tiles can be counted
                runner.run_tiles(job.tiles)
                outs[name] = job.finish()
                seconds[name] += time.perf_counter() - start
                share[name].append(sum(t.hole.size for t in job.tiles) / hole.size)
            truth = photo[hole].astype(np.float32)
            for name, out in outs.items():
                l1[name].append(np.abs(out[hole].astype(np.float32) - truth).mean())
                to_full[name].append(np.abs(out[hole].astype(np.float32) - outs["full"][hole]).mean())
        print(f"{path.name}: {w}x{h}", file=sys.stderr)
    print(f"{len(paths)} held-out photos of >= {args.min_pixels / 1e6:g} MP, {args.seeds} object masks each "
          f"(~{100 * args.ratio:g}% holes), model {args.model.name}")  # fmt: skip
    print("| strategy | hole L1 vs photo | - full (paired, ± s.e.) | abs(crop - full) | pixels run | seconds |")
    print("|---|---|---|---|---|---|")
    for name in runners:
        diff = np.subtract(l1[name], l1["full"])
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(f"| {name} | {np.mean(l1[name]):.2f} | {diff.mean():+.3f} ± {se:.3f} | {np.mean(to_full[name]):.2f} | "
              f"{100 * np.mean(share[name]):.1f}% | {seconds[name]:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
