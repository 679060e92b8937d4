"""Colour cast of a model's fill on flat background, by distance to the hole's edge (the demo's 'pale bands').

Runs each checkpoint on one example image and mask at native size (as `make demo` does) and
prints the mean signed error (output - original, 0-255) per R, G, B over hole pixels whose
surroundings are flat (|pixel - Gaussian(4 px) blur| < 4), grouped by distance to the hole edge.
A colour cast shows as unequal channels; an edge halo as a band that differs from the interior.

Usage: python scripts/colour_cast.py CHECKPOINT [CHECKPOINT ...] [--image examples/images/astronaut.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BANDS = ((0, 1.5), (1.5, 2.5), (2.5, 4.5), (4.5, 1e9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--image", type=Path, default=Path("examples/images/astronaut.jpg"))
    parser.add_argument("--mask", type=Path, default=None, help="default: examples/masks/STEM.png (white = hole)")
    args = parser.parse_args()
    import cv2
    import torch
    from PIL import Image

    from pconv_deploy.model import load_checkpoint

    torch.set_num_threads(1)
    mask_path = args.mask or Path("examples/masks") / f"{args.image.stem}.png"
    img = np.asarray(Image.open(args.image).convert("RGB"))
    hole = np.asarray(Image.open(mask_path).convert("L")) >= 128
    dist = cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 3)
    blur = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 4)
    flat = np.abs(img - blur).mean(axis=2) < 4
    x = torch.from_numpy(img / 255.0).float().permute(2, 0, 1)[None]
    known = torch.from_numpy(~hole).float()[None, None]
    for path in args.checkpoints:
        with torch.no_grad():
            raw = load_checkpoint(path)(x, known)[0].permute(1, 2, 0).numpy() * 255.0
        err = np.clip(raw, 0, 255) - img
        print(path)
        for lo, hi in BANDS:
            sel = hole & flat & (dist > lo) & (dist <= hi)
            label = f"> {lo:g} px" if hi > 1e8 else f"({lo:g}, {hi:g}] px"
            print(f"  {label:>13} from the edge, {int(sel.sum()):5d} px: R G B {np.round(err[sel].mean(axis=0), 1)}")


if __name__ == "__main__":
    main()
