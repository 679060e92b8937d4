"""INT8 calibration samples: photos from a folder with seeded masks drawn like the training masks.

A sample is one photo, resized (area) so its short side is ``size`` and centre-cropped to
``size`` x ``size``, with ``masks_per_image`` masks from :func:`pconv_deploy.masks.irregular`
in the paper's hole-ratio bins the model was trained for (the first ``hole_bins`` bins, taken in
turn so every bin is represented). The same folder, size and seed give the same samples, and
:func:`list_sha256` names the folder's contents in the file's metadata.

Torch-free: Pillow decodes (pixel count checked on the header), OpenCV draws the masks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pconv_deploy.contract import IMAGE, IMAGE_SUFFIXES, MASK
from pconv_deploy.errors import PConvError

MAX_PHOTO_PIXELS = 60_000_000  # checked on the header, before decoding
DEFAULT_IMAGES = 32  # photos used when --calibration-images is not given


class CalibrationError(PConvError):
    """A calibration folder or photo that cannot be used."""


@dataclass(frozen=True)
class CalibrationSet:
    """Which photos, at which size, with which masks: everything that decides the INT8 ranges."""

    photos: tuple[Path, ...]
    size: int
    masks_per_image: int = 2
    hole_bins: int = 3  # masks from the bins up to 30 % holes: the bundled model's training bins
    seed: int = 0

    @property
    def samples(self) -> int:
        return len(self.photos) * self.masks_per_image


def find_photos(folder: str | Path, limit: int | None = None) -> tuple[Path, ...]:
    """The image files under ``folder``, sorted by relative path; the first ``limit`` of them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: no such calibration directory")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationError(f"{folder}: no photos to calibrate with ({', '.join(IMAGE_SUFFIXES)})")
    return tuple(paths[:limit] if limit else paths)


def list_sha256(photos: tuple[Path, ...]) -> str:
    """sha256 over ``"<sha256 of the file> <file name>"`` lines, sorted by name: names the calibration data."""
    from pconv_deploy.contract import file_sha256

    lines = sorted(f"{p.name} {file_sha256(p)}" for p in photos)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_photo(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: area-resized so the short side is ``size``, centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PHOTO_PIXELS:
                raise CalibrationError(f"{path}: {im.width}x{im.height} is over {MAX_PHOTO_PIXELS:,} pixels")
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale directly
            rgb = im.convert("RGB")
            f = size / min(rgb.size)
            new = (max(size, round(rgb.width * f)), max(size, round(rgb.height * f)))
            rgb = rgb.resize(new, Image.Resampling.BOX if f < 1 else Image.Resampling.BICUBIC)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise CalibrationError(f"{path}: cannot read photo ({type(e).__name__})") from None
    x, y = (rgb.width - size) // 2, (rgb.height - size) // 2
    return np.asarray(rgb.crop((x, y, x + size, y + size)))


def calibration_feeds(cal: CalibrationSet):
    """Yield ``{image, mask}`` feeds of batch 1, float32 [1,3,S,S] in [0,1] and [1,1,S,S] (1 = known)."""
    from pconv_deploy.masks import HOLE_BINS, as_known, irregular

    for i, path in enumerate(cal.photos):
        image = load_photo(path, cal.size).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        for k in range(cal.masks_per_image):
            b = (i * cal.masks_per_image + k) % cal.hole_bins
            hole = irregular(cal.size, cal.size, np.random.default_rng([cal.seed, i, k]), hole_range=HOLE_BINS[b])
            yield {IMAGE: image, MASK: as_known(hole)[None, None]}


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over :func:`calibration_feeds`."""

    def __init__(self, cal: CalibrationSet) -> None:
        self.cal = cal
        self._feeds = calibration_feeds(cal)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = calibration_feeds(self.cal)


def calibration_set(folder: str | Path, images: int | None = None, size: int = 512) -> CalibrationSet:
    """The calibration of ``pconv export --precision int8 --calibration DIR``: the first ``images`` photos
    (default ``DEFAULT_IMAGES``: 8, 16 and 32 all met the bundled model's target; docs/precision.md)."""
    return CalibrationSet(find_photos(folder, images or DEFAULT_IMAGES), size)
