"""Training images: a folder of photos or the built-in corpus, as seeded random crops with flips.

A batch is a pure function of (seed, rank, step): resuming a run or adding a process needs no
data-loader state, and every rank of a distributed run sees different crops and masks.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pconv_deploy.contract import IMAGE_SUFFIXES
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.masks import as_known, training_mask

MAX_ASPECT = 16  # long side / short side: the short side is upscaled to the crop size
MAX_SIZE = 2048  # crop size (--size) of training and evaluation: an upscaled crop costs size^2 x aspect
CACHE_BYTES = 2 << 30  # decoded images kept in memory

# Colour photos bundled inside scikit-image's wheel (no pooch download needed); checked
# against scikit-image 0.26. Greyscale and synthetic images of that folder are left out.
BUILTIN_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
)


def builtin_paths() -> list[Path]:
    """The built-in corpus: photos shipped in scikit-image's package data."""
    import importlib.resources

    try:
        folder = importlib.resources.files("skimage.data")
    except ModuleNotFoundError:
        raise PConvError(
            "the builtin corpus needs scikit-image: pip install 'pconv-deploy[train]', or pass --data DIR"
        ) from None
    paths = [Path(str(folder / name)) for name in BUILTIN_PHOTOS]
    present = [p for p in paths if p.is_file()]
    if not present:
        raise PConvError(f"{folder}: none of scikit-image's bundled photos were found; pass --data DIR")
    return present


def image_paths(source: str | Path) -> list[Path]:
    """``"builtin"``, a recorded split (``demo-train``, ``demo-heldout``) or a folder -> image files."""
    from pconv_deploy.train.photos import SPLITS, split_paths

    if str(source) == "builtin":
        return builtin_paths()
    if str(source) in SPLITS:
        return split_paths(str(source))
    folder = Path(source)
    if not folder.is_dir():
        raise PConvError(f"{folder}: no such directory (use --data DIR or --data builtin)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise PConvError(f"{folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


class BadImage(PConvError):
    """An image file that cannot be used (corrupt, or over the size limits): skipped and counted."""


class _DecodedCache:
    """Decoded images, least recently used first out, bounded by bytes (64 large photos would be 11 GB)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.items = max_bytes, collections.OrderedDict()

    def get(self, path: Path) -> np.ndarray | None:
        if path in self.items:
            self.items.move_to_end(path)
        return self.items.get(path)

    def put(self, path: Path, image: np.ndarray) -> None:
        self.items[path] = image
        while len(self.items) > 1 and sum(a.nbytes for a in self.items.values()) > self.max_bytes:
            self.items.popitem(last=False)


_decoded = _DecodedCache(CACHE_BYTES)


def load_rgb(path: Path) -> np.ndarray:
    """Decode once (cached) to uint8 [H, W, 3]; BadImage when the file is unusable.

    The size is checked on the header (Pillow opens lazily) before any decoding: at most
    `pconv infer`'s default --max-pixels, and no more elongated than MAX_ASPECT:1, because the
    short side is upscaled to the crop size for every crop (a 167-byte 30000x1 PNG took 2.6 GB
    at --size 64).
    """
    image = _decoded.get(path)
    if image is None:
        image = _decode(path)
        _decoded.put(path, image)
    return image


def _decode(path: Path) -> np.ndarray:
    from pconv_deploy.runtime.images import DEFAULT_MAX_PIXELS, InputError, open_checked, own_pixel_limit

    try:
        with own_pixel_limit, open_checked(path, DEFAULT_MAX_PIXELS, "image") as im:
            w, h = im.size
            if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
                raise BadImage(f"{path}: {w}x{h} is more elongated than {MAX_ASPECT}:1")
            return _to_rgb(path, im)
    except BadImage:
        raise
    except InputError as e:
        raise BadImage(f"{path}: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # Pillow surfaces corrupt data as OSError, SyntaxError, ValueError, EOFError...
        raise BadImage(f"{path}: cannot read image ({type(e).__name__}: {first_line(e)})") from None


def _to_rgb(path: Path, im) -> np.ndarray:
    """uint8 RGB. 16-bit grey keeps its top 8 bits (Pillow's convert would clip it to white);
    32-bit integer or float images have no known range and are refused."""
    if im.mode.startswith("I;16"):
        grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        raise BadImage(f"{path}: 32-bit {'float' if im.mode == 'F' else 'integer'} pixels have no known range")
    return np.asarray(im.convert("RGB"))


def fit_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Upscale (bicubic) so both sides are at least ``size``; larger images are left alone."""
    h, w = image.shape[:2]
    if min(h, w) >= size:
        return image
    from PIL import Image

    f = size / min(h, w)
    new = (max(size, round(w * f)), max(size, round(h * f)))
    return np.asarray(Image.fromarray(image).resize(new, Image.BICUBIC))


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` crop at a random position, mirrored left-right half of the time."""
    image = fit_short_side(image, size)
    h, w = image.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    crop = image[y : y + size, x : x + size]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    image = fit_short_side(image, size)
    h, w = image.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return image[y : y + size, x : x + size]


def load_image(path: Path, photo_scale: bool) -> np.ndarray:
    """A training or test image: photos of the recorded corpus at their normalised scale, else as stored."""
    if photo_scale:
        from pconv_deploy.train.photos import load_photo

        return load_photo(path)
    return load_rgb(path)


def scaled_crop(image: np.ndarray, size: int, rng: np.random.Generator, *, max_zoom: float = 1.5) -> np.ndarray:
    """A square crop of side in [size, size * max_zoom] (bounded by the image), area-resized to ``size``."""
    import cv2

    image = fit_short_side(image, size)
    side = int(rng.integers(size, max(size, min(min(image.shape[:2]), int(size * max_zoom))) + 1))
    crop = random_crop(image, side, rng)
    if side == size:
        return crop
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)


class CropDataset:
    """Random crops and masks from a list of images; ``batch(step, rank)`` is deterministic.

    ``hole_bins``: masks come from the first N of the paper's bins (uniformly); ``photo_scale``:
    images are read at the corpus scale (photos.load_photo) and cropped with a random zoom.
    An unusable file is skipped (another is drawn from the same generator, so batches stay a
    function of seed, rank and step), recorded in ``skipped`` and reported once to ``on_skip``.
    """

    def __init__(
        self, paths: list[Path], size: int, seed: int = 0, *, hole_bins: int | None = None, photo_scale: bool = False
    ) -> None:
        self.paths, self.size, self.seed = list(paths), size, seed
        self.hole_bins, self.photo_scale = hole_bins, photo_scale
        self.skipped: dict[Path, str] = {}
        self.on_skip: Callable[[str], None] | None = None

    def check(self) -> None:
        """Find one usable image (in order) before a run writes anything; PConvError when none is."""
        for path in self.paths:
            if path not in self.skipped and self._load(path) is not None:
                return

    def _load(self, path: Path) -> np.ndarray | None:
        try:
            return load_image(path, self.photo_scale)
        except BadImage as e:
            self.skipped[path] = str(e)
            if self.on_skip is not None:
                self.on_skip(f"skipping {e}")
            if len(self.skipped) == len(self.paths):
                first = next(iter(self.skipped.values()))
                raise PConvError(f"none of the {len(self.paths)} images is usable (e.g. {first})") from None
            return None

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        while True:  # ends: every failed draw adds a file to skipped, and all skipped raises
            path = self.paths[int(rng.integers(len(self.paths)))]
            image = None if path in self.skipped else self._load(path)
            if image is not None:
                return image

    def batch(self, step: int, batch_size: int, *, rank: int = 0, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """float32 images [B, 3, S, S] in [0, 1] and masks [B, 1, S, S] (1 = known).

        ``stream`` separates independent uses of the same seed (0 = training, 1 = sample grids).
        """
        rng = np.random.default_rng([self.seed, stream, rank, step])
        images, masks = [], []
        for _ in range(batch_size):
            image = self._draw(rng)
            crop = scaled_crop(image, self.size, rng) if self.photo_scale else random_crop(image, self.size, rng)
            images.append(crop.transpose(2, 0, 1))
            masks.append(as_known(training_mask(self.size, self.size, rng, bins=self.hole_bins))[None])
        return np.stack(images).astype(np.float32) / 255.0, np.stack(masks).astype(np.float32)
