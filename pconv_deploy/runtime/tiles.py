"""Tiles and windows: what the network sees of an image, and how its fill goes back into the holes.

``Tile`` is one network input (a window of the image, maybe downscaled); ``Job`` is one image with
its tiles, and ``Job.finish`` pastes each fill into the hole pixels of its window only, so known
pixels stay byte-identical. ``hole_windows`` chooses the crop strategy's windows: every hole with
context (the margin) around it, aligned to the model's multiple.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class Tile:
    """One network input: a window of the image, possibly downscaled, and its hole mask."""

    window: tuple[int, int, int, int]  # y0, y1, x0, x1 in the full image
    rgb: np.ndarray  # uint8 h x w x 3 at network scale
    hole: np.ndarray  # bool h x w at network scale
    # Set by run_batch: uint8 h x w x 3 at native scale; float32 in [0, 1] when resized (upscaled in finish).
    result: np.ndarray | None = None

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
        out = self.image.copy()
        for tile in self.tiles:
            if tile.result is None:
                raise RuntimeError("finish() before all tiles ran")
            y0, y1, x0, x1 = tile.window
            fill = tile.result
            if tile.resized:
                fill = to_uint8(resize_float(fill, (y1 - y0, x1 - x0)))
            if out.ndim == 2:  # grey images get the fill's luma (ITU-R BT.601, as Pillow's "L")
                fill = to_uint8(fill @ LUMA, scale=1.0)
            hole = self.hole[y0:y1, x0:x1]
            region = out[y0:y1, x0:x1]
            if out.ndim == 2:
                region[hole] = fill[hole]
            else:  # the alpha channel of RGBA images is kept, not inpainted
                region[..., :3][hole] = fill[hole]
            tile.result = None  # free the buffer early
        return out


def to_uint8(values: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """``values * scale`` rounded to nearest, clipped to uint8 ([0, 1] fills by default)."""
    return np.clip(np.rint(values * np.float32(scale)), 0, 255).astype(np.uint8)


def resize_float(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float32 HxWxC array to ``size`` (h, w), one channel at a time (Pillow mode F)."""
    from PIL import Image

    h, w = size
    channels = [Image.fromarray(np.ascontiguousarray(array[..., c])) for c in range(array.shape[2])]
    return np.stack([np.asarray(im.resize((w, h), Image.Resampling.BICUBIC)) for im in channels], axis=2)


def make_tile(rgb: np.ndarray, hole: np.ndarray, window: tuple[int, int, int, int], max_side: int | None) -> Tile:
    """The tile for one window; downscaled (area average) so its long side is ``max_side`` when that is given."""
    from PIL import Image

    y0, y1, x0, x1 = window
    crop_rgb, crop_hole = rgb[y0:y1, x0:x1], hole[y0:y1, x0:x1]
    if max_side is None or max(y1 - y0, x1 - x0) <= max_side:
        return Tile(window, crop_rgb, crop_hole)
    scale = max_side / max(y1 - y0, x1 - x0)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))  # Pillow takes (w, h)
    small_rgb = np.asarray(Image.fromarray(np.ascontiguousarray(crop_rgb)).resize(size, Image.Resampling.BOX))
    # A small pixel is a hole if any of the pixels it covers is: the fill then covers every hole pixel.
    hole_share = Image.fromarray(crop_hole.astype(np.float32)).resize(size, Image.Resampling.BOX)
    return Tile(window, small_rgb, np.asarray(hole_share) > 0)


def hole_windows(hole: np.ndarray, margin: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Disjoint windows covering every hole with context, aligned to ``multiple`` where the image allows.

    Each hole (8-connected component) gets the margin, or half its long side when that is larger,
    on every side (clipped to the image); holes whose context boxes overlap or touch share a window.
    """
    h, w = hole.shape
    boxes = []
    for y0, y1, x0, x1 in component_boxes(hole):
        extra = max(margin, max(y1 - y0, x1 - x0) // 2)
        boxes.append((max(0, y0 - extra), min(h, y1 + extra), max(0, x0 - extra), min(w, x1 + extra)))
    boxes = union_of_boxes(boxes, h, w)
    while True:
        aligned = [align_window(b, h, w, multiple) for b in merge_overlapping(boxes)]
        merged = merge_overlapping(aligned)
        if len(merged) == len(aligned):
            return sorted(aligned)
        boxes = merged


def union_of_boxes(boxes: list[tuple[int, int, int, int]], h: int, w: int, cell: int = 8) -> list[tuple[int, ...]]:
    """Bounding boxes of the connected regions the boxes cover, on a grid of ``cell`` px (rounded outward).

    Thousands of small holes (a noisy mask) become a few boxes in one pass over a small raster,
    instead of a quadratic pairwise merge.
    """
    if len(boxes) <= 1:
        return list(boxes)
    gh, gw = -(-h // cell), -(-w // cell)
    b = np.array(boxes)
    y0, y1, x0, x1 = b[:, 0] // cell, -(-b[:, 1] // cell), b[:, 2] // cell, -(-b[:, 3] // cell)
    corners = np.zeros((gh + 1, gw + 1), np.int32)  # 2-D difference array: +1/-1 at the box corners
    np.add.at(corners, (y0, x0), 1)
    np.add.at(corners, (y0, x1), -1)
    np.add.at(corners, (y1, x0), -1)
    np.add.at(corners, (y1, x1), 1)
    covered = corners.cumsum(0).cumsum(1)[:gh, :gw] > 0
    return [(a * cell, min(h, z * cell), c * cell, min(w, d * cell)) for a, z, c, d in component_boxes(covered)]


def component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, y1, x0, x1) of the 8-connected components of a bool mask, in numpy.

    Works on runs of True per row: runs in adjacent rows that overlap or touch diagonally are joined
    (vectorised union-find by hooking and pointer jumping).
    """
    h, w = mask.shape
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive; row-major order pairs them with the starts
    n = len(rows)
    if n == 0:
        return []
    # Run b (row y+1) touches run a (row y) when a.start <= b.end and b.start <= a.end (8-connectivity).
    stride = w + 2
    start_key, end_key = rows * stride + starts, rows * stride + ends
    below = rows > 0
    b_idx = np.nonzero(below)[0]
    lo = np.searchsorted(end_key, (rows[b_idx] - 1) * stride + starts[b_idx], "left")
    hi = np.searchsorted(start_key, (rows[b_idx] - 1) * stride + ends[b_idx], "right")
    counts = np.maximum(hi - lo, 0)
    src = np.repeat(b_idx, counts)
    dst = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    parent = np.arange(n)
    while len(src):
        ps, pd = parent[src], parent[dst]
        differ = ps != pd
        if not differ.any():
            break
        np.minimum.at(parent, np.maximum(ps, pd)[differ], np.minimum(ps, pd)[differ])
        while not np.array_equal(jumped := parent[parent], parent):
            parent = jumped
    roots, label = np.unique(parent, return_inverse=True)
    y0 = np.full(len(roots), h)
    x0 = np.full(len(roots), w)
    y1 = np.zeros(len(roots), np.int64)
    x1 = np.zeros(len(roots), np.int64)
    np.minimum.at(y0, label, rows)
    np.maximum.at(y1, label, rows + 1)
    np.minimum.at(x0, label, starts)
    np.maximum.at(x1, label, ends)
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(y0, y1, x0, x1)]


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
