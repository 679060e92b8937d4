"""Where in the holes the bundled model loses to Telea: hole L1 by distance to the nearest known pixel.

    .venv/bin/python scripts/boundary_error.py [--checkpoint pconv_deploy/assets/pconv-demo.safetensors]
        [--model demo-int8.onnx ...]

The README evaluation's samples (demo-heldout, 256x256 centre crops, 2 masks per bin, mask seed 0;
needs the demo-data extra), the bins up to 30% holes. Each hole pixel is put in a band by its
Euclidean distance (px) to the nearest known pixel (cv2.distanceTransform); the table gives the
mean L1 (0-255, mean over RGB) of PConv and of Telea per band, and the band's share of hole pixels.
Each ``--model`` (an exported file, run through the runtime) adds a row, e.g. an INT8 file beside
the FP32 checkpoint it came from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BANDS = (1, 2, 3, 4, 6, 8, 12, 1e9)  # upper edges (px); a band is (previous edge, edge]


def band_errors(out: np.ndarray, truth: np.ndarray, hole: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """(len(BANDS), 2): summed per-pixel L1 and pixel count for each distance band."""
    error = np.abs(out.astype(np.float32) - truth).mean(-1)
    sums, lower = [], 0.0
    for upper in BANDS:
        inside = hole & (distance > lower) & (distance <= upper)
        sums.append((error[inside].sum(), inside.sum()))
        lower = upper
    return np.array(sums)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--model", type=Path, action="append", default=[], help="an exported file (repeatable)")
    args = parser.parse_args()
    import cv2

    from pconv_deploy.model.checkpoint import default_checkpoint
    from pconv_deploy.train.evaluate import (
        HOLE_BINS,
        checkpoint_predictor,
        load_samples,
        runtime_predictor,
        telea_predictor,
    )

    samples, _ = load_samples("demo-heldout", 256, masks_per_bin=2, seed=0)
    samples = [s for s in samples if s.bin_index < 3]
    methods = {"PConv": checkpoint_predictor(args.checkpoint or default_checkpoint())[0]}
    methods.update({model.name: runtime_predictor(model) for model in args.model})
    methods["Telea"] = telea_predictor()
    totals = {(m, b): np.zeros((len(BANDS), 2)) for m in methods for b in range(3)}
    for start in range(0, len(samples), 8):
        chunk = samples[start : start + 8]
        for name, predict in methods.items():
            for s, out in zip(chunk, predict([s.image for s in chunk], [s.hole for s in chunk])):
                distance = cv2.distanceTransform(s.hole.astype(np.uint8), cv2.DIST_L2, 3)
                totals[name, s.bin_index] += band_errors(out, s.image, s.hole, distance)
    labels = [f"{lo:g}-{hi:g}" if hi < 1e9 else f"> {lo:g}" for lo, hi in zip((0, *BANDS[:-1]), BANDS)]
    print("| hole ratio | method | " + " | ".join(f"{x} px" for x in labels) + " |")
    print("|---|---|" + "---|" * len(BANDS))
    for b in range(3):
        lo, hi = HOLE_BINS[b]
        share = totals["PConv", b][:, 1] / totals["PConv", b][:, 1].sum()
        print(f"| {lo:g}-{hi:g} | share of hole pixels | " + " | ".join(f"{100 * x:.0f}%" for x in share) + " |")
        for name in methods:
            t = totals[name, b]
            print(f"| | {name} | " + " | ".join(f"{x:.1f}" for x in t[:, 0] / np.maximum(t[:, 1], 1)) + " |")


if __name__ == "__main__":
    main()
