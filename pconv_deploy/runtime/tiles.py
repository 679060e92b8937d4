"""Tiles and windows: what the network sees of an image, and how its fill goes back into the holes.

``Tile`` is one network input (a window of the image, maybe downscaled); ``Job`` is one image with
its tiles, and ``Job.finish`` pastes each fill into the hole pixels of its window only, so known
pixels stay byte-identical. ``hole_windows`` chooses the crop strategy's windows: every hole with
context (the margin) around it, aligned to the model's multiple.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Tile:
    """One network input: a window of the image, possibly downscaled, and its hole mask."""

    window: tuple[int, int, int, int]  # y0, y1, x0, x1 in the full image
    rgb: np.ndarray  # uint8 h x w x 3 at network scale
    hole: np.ndarray  # bool h x w at network scale
    result: np.ndarray | None = None  # float32 h x w x 3 in [0, 1], set by run_tiles

    @property
    def resized(self) -> bool:
        y0, y1, x0, x1 = self.window
        return self.rgb.shape[:2] != (y1 - y0, x1 - x0)

    def padded_shape(self, multiple: int) -> tuple[int, int]:
        h, w = self.hole.shape
        return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


@dataclass
class Job:
    """One image in flight: the original (untouched), its hole mask and the tiles to run."""

    image: np.ndarray  # uint8 HxW, HxWx3 or HxWx4, as given
    hole: np.ndarray  # bool HxW
    tiles: list[Tile] = field(default_factory=list)

    def finish(self) -> np.ndarray:
        """A copy of the image with each tile's fill pasted into the hole pixels of its window."""
        import cv2

        out = self.image.copy()
        for tile in self.tiles:
            if tile.result is None:
                raise RuntimeError("finish() before all tiles ran")
            y0, y1, x0, x1 = tile.window
            fill = tile.result
            if tile.resized:
                fill = cv2.resize(fill, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
            fill = np.clip(np.rint(fill * 255.0), 0, 255).astype(np.uint8)
            if out.ndim == 2:
                fill = cv2.cvtColor(fill, cv2.COLOR_RGB2GRAY)
            hole = self.hole[y0:y1, x0:x1]
            region = out[y0:y1, x0:x1]
            if out.ndim == 2:
                region[hole] = fill[hole]
            else:  # the alpha channel of RGBA images is kept, not inpainted
                region[..., :3][hole] = fill[hole]
            tile.result = None  # free the float buffer early
        return out


def make_tile(rgb: np.ndarray, hole: np.ndarray, window: tuple[int, int, int, int], max_side: int | None) -> Tile:
    """The tile for one window; downscaled so its long side is ``max_side`` when that is given."""
    import cv2

    y0, y1, x0, x1 = window
    crop_rgb, crop_hole = rgb[y0:y1, x0:x1], hole[y0:y1, x0:x1]
    if max_side is None or max(y1 - y0, x1 - x0) <= max_side:
        return Tile(window, crop_rgb, crop_hole)
    scale = max_side / max(y1 - y0, x1 - x0)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))  # cv2 takes (w, h)
    small_rgb = cv2.resize(crop_rgb, size, interpolation=cv2.INTER_AREA)
    # A small pixel is a hole if any of the pixels it covers is: the fill then covers every hole pixel.
    small_hole = cv2.resize(crop_hole.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    return Tile(window, small_rgb, small_hole)


def hole_windows(hole: np.ndarray, margin: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Disjoint windows covering every hole with context, aligned to ``multiple`` where the image allows.

    Holes closer than about twice the margin share a window. Each window gets the margin, or half
    the hole's long side when that is larger, on every side.
    """
    import cv2

    h, w = hole.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    cluster = np.arange(count)
    if margin > 0 and count > 2:  # holes whose margins touch form one cluster
        k = 2 * margin + 1
        grown = cv2.dilate(hole.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
        _, grown_labels = cv2.connectedComponents(grown, connectivity=8)
        _, first = np.unique(labels.ravel(), return_index=True)  # one pixel of each hole component
        cluster = grown_labels.ravel()[first]
    union: dict[int, list[int]] = {}
    for i in range(1, count):
        x, y, bw, bh, _ = stats[i]
        box = union.setdefault(int(cluster[i]), [y, y + bh, x, x + bw])
        box[:] = [min(box[0], y), max(box[1], y + bh), min(box[2], x), max(box[3], x + bw)]
    boxes = []
    for y0, y1, x0, x1 in union.values():
        extra = max(margin, max(y1 - y0, x1 - x0) // 2)
        boxes.append((max(0, y0 - extra), min(h, y1 + extra), max(0, x0 - extra), min(w, x1 + extra)))
    while True:
        aligned = [align_window(b, h, w, multiple) for b in merge_overlapping(boxes)]
        merged = merge_overlapping(aligned)
        if len(merged) == len(aligned):
            return sorted(aligned)
        boxes = merged


def merge_overlapping(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Replace overlapping boxes by their union until none overlap."""
    boxes = list(boxes)
    changed = True
    while changed:
        changed = False
        out: list[tuple[int, int, int, int]] = []
        for b in boxes:
            for i, o in enumerate(out):
                if b[0] < o[1] and o[0] < b[1] and b[2] < o[3] and o[2] < b[3]:
                    out[i] = (min(b[0], o[0]), max(b[1], o[1]), min(b[2], o[2]), max(b[3], o[3]))
                    changed = True
                    break
            else:
                out.append(b)
        boxes = out
    return boxes


def align_window(box: tuple[int, int, int, int], h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """Grow each side of the box to a multiple of ``multiple`` (less padding, better batching), inside the image."""

    def grow(a: int, b: int, n: int) -> tuple[int, int]:
        length = min(n, -(-(b - a) // multiple) * multiple)
        start = max(0, min(a - (length - (b - a)) // 2, n - length))
        return start, start + length

    y0, y1 = grow(box[0], box[1], h)
    x0, x1 = grow(box[2], box[3], w)
    return (y0, y1, x0, x1)
