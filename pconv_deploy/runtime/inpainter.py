"""Inpainting on numpy arrays: strategies, padding, batching and compositing around a backend.

The flow for one image is ``plan`` (cut it into tiles the network sees) -> ``run_tiles`` (pad
each tile to the model's multiple, batch tiles of equal padded size, run the backend) ->
``Job.finish`` (paste the fill into the holes only). Known pixels are never written, so they
stay byte-identical to the input in every strategy.

Strategies for large photos:

- ``crop`` (default): one window per cluster of holes, with context around it, at native
  resolution; a window longer than ``max_side`` is inferred downscaled (as ``resize`` does).
- ``resize``: the whole image downscaled so its long side is at most ``max_side``; the fill is
  upscaled back (bicubic) and pasted into the holes.
- ``full``: the whole image at native resolution, whatever its size.

Mask convention of this API: a boolean or integer HxW array where nonzero / True marks a
HOLE (as white marks the hole in mask files). The ONNX model itself takes 1 = known.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pconv_deploy.errors import PConvError
from pconv_deploy.runtime.backends import Backend, load_backend

STRATEGIES = ("crop", "resize", "full")


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


class Inpainter:
    """Inpaint uint8 images with any backend; the class a service embeds (numpy + onnxruntime only).

    >>> inpainter = Inpainter.from_path("model.onnx")
    >>> [result] = inpainter.inpaint([image], [hole_mask])   # hole_mask: True / nonzero = hole
    """

    def __init__(
        self,
        backend: Backend,
        batch_size: int = 4,
        strategy: str = "crop",
        max_side: int = 1024,
        margin: int = 128,
    ) -> None:
        if strategy not in STRATEGIES:
            raise PConvError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if batch_size < 1 or max_side < 1 or margin < 0:
            raise PConvError("batch_size and max_side must be >= 1 and margin >= 0")
        self.backend = backend
        self.multiple = int(backend.multiple)
        max_batch = getattr(backend, "max_batch", None)
        self.batch_size = min(batch_size, max_batch) if max_batch else batch_size
        self.strategy = strategy
        # The network never sees more than max_side, rounded up to the multiple it needs anyway.
        self.max_side = max(self.multiple, max_side)
        self.margin = margin

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        backend: str = "auto",
        batch_size: int = 4,
        strategy: str = "crop",
        max_side: int = 1024,
        margin: int = 128,
        device: str = "auto",
    ) -> Inpainter:
        """Load an ONNX model, a TensorRT engine or (with torch installed) a checkpoint."""
        return cls(load_backend(path, backend, device), batch_size, strategy, max_side, margin)

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Fill the holes of each image; returns new uint8 arrays of the same shapes.

        ``images``: uint8 HxWx3 RGB, HxW grey or HxWx4 RGBA (alpha kept); any sizes.
        ``masks``: HxW bool or integer arrays, True / nonzero = HOLE. An image whose mask has no
        hole is returned unchanged (as a copy). Pixels outside holes are byte-identical to the input.
        """
        if len(images) != len(masks):
            raise PConvError(f"got {len(images)} images but {len(masks)} masks")
        jobs = [
            self.plan(image, hole_mask(mask, image.shape[:2], i)) for i, (image, mask) in enumerate(zip(images, masks))
        ]
        self.run_tiles([t for job in jobs for t in job.tiles])
        return [job.finish() for job in jobs]

    def plan(self, image: np.ndarray, hole: np.ndarray) -> Job:
        """Cut one image into tiles according to the strategy (``hole``: bool HxW, True = hole)."""
        check_image(image)
        if hole.shape != image.shape[:2] or hole.dtype != bool:
            raise PConvError(f"hole mask must be bool {image.shape[:2]}, got {hole.dtype} {hole.shape}")
        job = Job(image, hole)
        if not hole.any():
            return job
        rgb = as_rgb(image)
        h, w = hole.shape
        if self.strategy == "full":
            windows = [(0, h, 0, w)]
        elif self.strategy == "resize":
            windows = [(0, h, 0, w)]
        else:
            windows = hole_windows(hole, self.margin, self.multiple)
        for y0, y1, x0, x1 in windows:
            native = self.strategy == "full" or max(y1 - y0, x1 - x0) <= self.max_side
            job.tiles.append(make_tile(rgb, hole, (y0, y1, x0, x1), None if native else self.max_side))
        return job

    def run_tiles(self, tiles: Sequence[Tile]) -> None:
        """Run tiles in batches of equal padded size; sets each ``tile.result``."""
        buckets: dict[tuple[int, int], list[Tile]] = defaultdict(list)
        for tile in tiles:
            buckets[tile.padded_shape(self.multiple)].append(tile)
        for shape, group in buckets.items():
            for start in range(0, len(group), self.batch_size):
                self.run_batch(group[start : start + self.batch_size], shape)

    def run_batch(self, tiles: Sequence[Tile], shape: tuple[int, int]) -> None:
        """One backend call: pad every tile to ``shape`` (mirroring image and mask), run, crop back."""
        ph, pw = shape
        image = np.empty((len(tiles), 3, ph, pw), np.float32)
        mask = np.empty((len(tiles), 1, ph, pw), np.float32)
        for i, tile in enumerate(tiles):
            h, w = tile.hole.shape
            pad = ((0, ph - h), (0, pw - w))
            known = ~tile.hole
            rgb = tile.rgb * known[..., None]  # holes carry no information into the network
            image[i] = np.pad(rgb, (*pad, (0, 0)), mode="symmetric").transpose(2, 0, 1) * np.float32(1 / 255)
            mask[i, 0] = np.pad(known, pad, mode="symmetric")
        out = self.backend.run(image, mask)
        if out.shape != image.shape:
            raise PConvError(f"backend {self.backend.name} returned shape {out.shape} for input {image.shape}")
        for i, tile in enumerate(tiles):
            h, w = tile.hole.shape
            tile.result = np.ascontiguousarray(out[i, :, :h, :w].transpose(1, 2, 0))


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


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        dtype = getattr(image, "dtype", type(image).__name__)
        raise PConvError(f"images must be uint8 numpy arrays, got {dtype} (16-bit images: convert to 8-bit first)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or 0 in image.shape[:2]:
        raise PConvError(f"images must be HxW, HxWx3 or HxWx4 and non-empty, got shape {image.shape}")


def as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def hole_mask(mask: np.ndarray, shape: tuple[int, int], index: int = 0) -> np.ndarray:
    """A numpy-API mask (True / nonzero = hole, HxW or HxWx1) as a bool array, checked against the image."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise PConvError(f"mask {index} has shape {mask.shape}, its image is {tuple(shape)}")
    return mask != 0
