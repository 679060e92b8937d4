"""Make the demo's side-by-side picture: one row per image, `input with holes | result | original`.

Usage: python scripts/side_by_side.py IMAGES_DIR MASKS_DIR RESULTS_DIR OUT.png [--height 256]
Holes are shown in magenta on the input so that what the network had to invent is visible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABELS = ("input (holes in magenta)", "inpainted", "original")


def row(image: Path, mask: Path, result: Path, height: int) -> Image.Image:
    original = np.asarray(Image.open(image).convert("RGB"))
    hole = np.asarray(Image.open(mask).convert("L")) >= 128
    holed = original.copy()
    holed[hole] = (255, 0, 255)
    tiles = [Image.fromarray(holed), Image.open(result).convert("RGB"), Image.fromarray(original)]
    box = (tile_width(height), height)
    strip = Image.new("RGB", (3 * box[0] + 8, height), "white")
    for i, tile in enumerate(tiles):
        tile.thumbnail(box, Image.Resampling.LANCZOS)  # fit inside the box, keep the aspect ratio
        strip.paste(tile, (i * (box[0] + 4) + (box[0] - tile.width) // 2, (height - tile.height) // 2))
    return strip


def tile_width(height: int) -> int:
    return height * 3 // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("masks", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--height", type=int, default=256)
    args = parser.parse_args()
    rows = []
    for result in sorted(args.results.glob("*.png")):
        image = next(p for p in args.images.iterdir() if p.stem == result.stem)
        rows.append(row(image, args.masks / f"{result.stem}.png", result, args.height))
    if not rows:
        raise SystemExit(f"error: {args.results}: no results to show")
    header = 24
    sheet = Image.new("RGB", (max(r.width for r in rows), header + sum(r.height + 4 for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(LABELS):
        draw.text((i * (tile_width(args.height) + 4) + 6, 6), label, fill="black")
    y = header
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
