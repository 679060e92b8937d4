"""Tiles and windows: what the network sees of an image, and how its fill goes back into the holes.

``Tile`` is one network input (a window of the image, maybe downscaled); ``Job`` is one image with
its tiles, and ``Job.finish(fills)`` pastes each tile's fill (what the backend returned for it, in
tile order) into the hole pixels of its window only, so known pixels stay byte-identical. Both are
frozen: a fill is a value returned to the caller, never stored on the tile.
Which windows the crop strategy infers is runtime/windows.py's job
(re-exported here: ``plan_windows``, ``hole_windows``, ``align_window``, ``CROP_MARGIN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pconv_deploy.contract import CROP_MARGIN
from pconv_deploy.runtime.windows import (
    Box,
    Components,
    align_window,
    component_boxes,
    context_extra,
    hole_windows,
    plan_windows,
)

__all__ = [
    "CROP_MARGIN",
    "Box",
    "Components",
    "Job",
    "Tile",
    "align_window",
    "component_boxes",
    "context_extra",
    "hole_windows",
    "make_tile",
    "plan_windows",
    "resize_float",
    "to_uint8",
]

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True, eq=False)
class Tile:
    """One network input: a window of the image, possibly downscaled, and its hole mask."""

    window: tuple[int, int, int, int]  # y0, y1, x0, x1 in the full image
    rgb: np.ndarray  # uint8 h x w x 3 at network scale
    hole: np.ndarray  # bool h x w at network scale
    # The hole pixels of the window this tile fills (crop windows may overlap); None: all of them.
    paste: np.ndarray | None = None

    @property
    def resized(self) -> bool:
        y0, y1, x0, x1 = self.window
        return self.rgb.shape[:2] != (y1 - y0, x1 - x0)

    def padded_shape(self, multiple: int) -> tuple[int, int]:
        h, w = self.hole.shape
        return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


@dataclass(frozen=True, eq=False)
class Job:
    """One image in flight: the original (untouched), its hole mask and the tiles to run."""

    image: np.ndarray  # uint8 HxW, HxWx3 or HxWx4, as given
    hole: np.ndarray  # bool HxW
    tiles: tuple[Tile, ...] = ()

    def finish(self, fills: Sequence[np.ndarray]) -> np.ndarray:
        """A copy of the image with each tile's fill pasted into the hole pixels of its window.

        ``fills[i]`` is tile i's fill as ``Inpainter.crop_fills`` returns it: uint8 h x w x 3 at native
        scale, float32 in [0, 1] at network scale for a downscaled tile (upscaled here).
        """
        if len(fills) != len(self.tiles):
            raise ValueError(f"{len(fills)} fills for {len(self.tiles)} tiles")
        out = self.image.copy()
        for tile, fill in zip(self.tiles, fills):
            y0, y1, x0, x1 = tile.window
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


def make_tile(
    rgb: np.ndarray,
    hole: np.ndarray,
    window: tuple[int, int, int, int],
    *,
    max_side: int | None = None,
    paste: np.ndarray | None = None,
) -> Tile:
    """The tile for one window; downscaled (area average) so its long side is ``max_side`` when that is given.

    ``paste``: the window's hole pixels this tile fills (``plan_windows`` gives it); None: all of them.
    """
    from PIL import Image

    y0, y1, x0, x1 = window
    crop_rgb, crop_hole = rgb[y0:y1, x0:x1], hole[y0:y1, x0:x1]
    if max_side is None or max(y1 - y0, x1 - x0) <= max_side:
        return Tile(window, crop_rgb, crop_hole, paste)
    scale = max_side / max(y1 - y0, x1 - x0)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))  # Pillow takes (w, h)
    small_rgb = np.asarray(Image.fromarray(np.ascontiguousarray(crop_rgb)).resize(size, Image.Resampling.BOX))
    # A small pixel is a hole if any of the pixels it covers is: the fill then covers every hole pixel.
    hole_share = Image.fromarray(crop_hole.astype(np.float32)).resize(size, Image.Resampling.BOX)
    return Tile(window, small_rgb, np.asarray(hole_share) > 0, paste)
