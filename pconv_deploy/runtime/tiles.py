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
    # The hole pixels of the window this tile fills (crop windows may overlap); None: all of them.
    paste: np.ndarray | None = None

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
            hole = self.hole[y0:y1, x0:x1] if tile.paste is None else tile.paste
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


Box = tuple[int, int, int, int]  # y0, y1, x0, x1
# Context around each hole for crop. 64 px filled held-out 6-20 MP photos as well as 128 px and as
# the whole image (hole L1 within 0.03-0.05 of full's; scripts/crop_context.py, README Inference) for
# two thirds of the pixels; the quarter-of-the-long-side rule gives large holes more.
CROP_MARGIN = 64
MAX_PAIRWISE = 64  # more holes than this are first joined by overlapping context (union_of_boxes)


def context_extra(box: Box, margin: int) -> int:
    """The context promised around a hole on every side: the margin, or a quarter of its long side if larger."""
    return max(margin, max(box[1] - box[0], box[3] - box[2]) // 4)


def hole_windows(hole: np.ndarray, margin: int, multiple: int) -> list[Box]:
    """The crop strategy's windows (see :func:`plan_windows`), without their paste masks."""
    return [window for window, _ in plan_windows(hole, margin, multiple)]


def plan_windows(hole: np.ndarray, margin: int, multiple: int) -> list[tuple[Box, np.ndarray | None]]:
    """Windows covering every hole with its context, aligned to ``multiple``, and the hole pixels each one fills.

    Each hole (8-connected component) lies in one window with :func:`context_extra` around it
    (clipped to the image). Two windows are joined when the joined window costs no more pixels
    than the two apart, so scattered holes do not make one huge window; windows may then overlap,
    and each fills only the pixels of its own holes (the mask returned with it; None: every hole
    pixel in the window is its own).
    """
    h, w = hole.shape
    comps = Components(hole)
    context = []
    for y0, y1, x0, x1 in comps.boxes:
        e = context_extra((y0, y1, x0, x1), margin)
        context.append((max(0, y0 - e), min(h, y1 + e), max(0, x0 - e), min(w, x1 + e)))
    groups = [[i] for i in range(len(context))]
    if len(context) > MAX_PAIRWISE:  # many holes: one group per region of overlapping context
        clusters = union_of_boxes(context, h, w)
        owner = [next(k for k, cluster in enumerate(clusters) if inside(c, cluster)) for c in context]
        groups = [[i for i in range(len(context)) if owner[i] == k] for k in range(len(clusters))]
    windows = [align_window(bounding(context[i] for i in g), h, w, multiple) for g in groups]
    windows, groups = join_cheaper(windows, groups, h, w, multiple)
    labels = comps.label_image() if any(overlap(a, b) for i, a in enumerate(windows) for b in windows[:i]) else None
    plans = []
    for window, group in sorted(zip(windows, groups)):
        paste = None
        if labels is not None:
            y0, y1, x0, x1 = window
            paste = np.isin(labels[y0:y1, x0:x1], np.asarray(group) + 1)
        plans.append((window, paste))
    return plans


def join_cheaper(windows: list[Box], groups: list[list[int]], h: int, w: int, multiple: int) -> tuple[list, list]:
    """Join pairs of windows while the aligned union has no more pixels than the two together."""
    while (pair := cheaper_pair(windows, h, w, multiple)) is not None:
        i, j, union = pair
        windows[i], groups[i] = union, groups[i] + groups[j]
        del windows[j], groups[j]
    return windows, groups


def cheaper_pair(windows: list[Box], h: int, w: int, multiple: int) -> tuple[int, int, Box] | None:
    """The first pair (i < j) whose aligned union costs no more pixels than the two apart, with that union."""
    for i in range(len(windows)):
        for j in range(i + 1, len(windows)):
            union = align_window(bounding([windows[i], windows[j]]), h, w, multiple)
            if area(union) <= area(windows[i]) + area(windows[j]):
                return i, j, union
    return None


def area(b: Box) -> int:
    return (b[1] - b[0]) * (b[3] - b[2])


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def inside(a: Box, b: Box) -> bool:
    return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]


def bounding(boxes) -> Box:
    ys0, ys1, xs0, xs1 = zip(*boxes)
    return (min(ys0), max(ys1), min(xs0), max(xs1))


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


class Components:
    """The 8-connected components of a bool mask, found in numpy on runs of True per row.

    Runs in adjacent rows that overlap or touch diagonally are joined (a vectorised union-find by
    hooking and pointer jumping); ``boxes`` are the components' bounding boxes (y0, y1, x0, x1).
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.shape = mask.shape
        h, w = mask.shape
        edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        self.rows, self.starts = np.nonzero(edges == 1)
        _, self.ends = np.nonzero(edges == -1)  # exclusive; row-major order pairs them with the starts
        self.run_label = np.zeros(0, np.int64)
        self.boxes: list[Box] = []
        if len(self.rows):
            self.run_label = self.join_runs(w)
            self.boxes = self.bounding_boxes(h, w)

    def join_runs(self, w: int) -> np.ndarray:
        """Component index of every run."""
        rows, starts, ends = self.rows, self.starts, self.ends
        # Run b (row y+1) touches run a (row y) when a.start <= b.end and b.start <= a.end (8-connectivity).
        stride = w + 2
        start_key, end_key = rows * stride + starts, rows * stride + ends
        b_idx = np.nonzero(rows > 0)[0]
        lo = np.searchsorted(end_key, (rows[b_idx] - 1) * stride + starts[b_idx], "left")
        hi = np.searchsorted(start_key, (rows[b_idx] - 1) * stride + ends[b_idx], "right")
        counts = np.maximum(hi - lo, 0)
        src = np.repeat(b_idx, counts)
        dst = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        parent = np.arange(len(rows))
        while len(src):
            ps, pd = parent[src], parent[dst]
            differ = ps != pd
            if not differ.any():
                break
            np.minimum.at(parent, np.maximum(ps, pd)[differ], np.minimum(ps, pd)[differ])
            while not np.array_equal(jumped := parent[parent], parent):
                parent = jumped
        return np.unique(parent, return_inverse=True)[1]

    def bounding_boxes(self, h: int, w: int) -> list[Box]:
        n = int(self.run_label.max()) + 1
        y0, x0 = np.full(n, h), np.full(n, w)
        y1, x1 = np.zeros(n, np.int64), np.zeros(n, np.int64)
        np.minimum.at(y0, self.run_label, self.rows)
        np.maximum.at(y1, self.run_label, self.rows + 1)
        np.minimum.at(x0, self.run_label, self.starts)
        np.maximum.at(x1, self.run_label, self.ends)
        return [(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(y0, y1, x0, x1)]

    def label_image(self) -> np.ndarray:
        """int32 image: component index + 1 on its pixels, 0 elsewhere."""
        h, w = self.shape
        labels = np.zeros(h * w, np.int32)
        lengths = self.ends - self.starts
        first = self.rows * w + self.starts
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        labels[np.repeat(first, lengths) + offsets] = np.repeat(self.run_label + 1, lengths)
        return labels.reshape(h, w)


def component_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes (y0, y1, x0, x1) of the 8-connected components of a bool mask."""
    return Components(mask).boxes


def align_window(box: tuple[int, int, int, int], h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """Grow each side of the box to a multiple of ``multiple`` (less padding, better batching), inside the image."""

    def grow(a: int, b: int, n: int) -> tuple[int, int]:
        length = min(n, -(-(b - a) // multiple) * multiple)
        start = max(0, min(a - (length - (b - a)) // 2, n - length))
        return start, start + length

    y0, y1 = grow(box[0], box[1], h)
    x0, x1 = grow(box[2], box[3], w)
    return (y0, y1, x0, x1)
