"""Image and mask files: decoding with clear per-file errors, and atomic PNG writes.

Decisions:

- EXIF orientation is applied to images and masks: masks are drawn on the image as viewers
  show it, and the output PNG stores those displayed pixels (without the EXIF tag), so it
  looks the same as the input.
- Grey images stay grey, alpha is kept as it is (not inpainted), palette images become RGB(A).
  16-bit images are refused: writing them back as 8-bit would change known pixels.
- Masks are read as greyscale and binarised at 128; by default white = hole.
- Outputs are written to a hidden temp file in the output folder, fsynced, then renamed over
  the final name: a reader (or a rerun after a kill) never sees a partial PNG.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pconv_deploy.errors import PConvError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "TIFF"}
DEFAULT_MAX_PIXELS = 60_000_000
MASK_CONVENTIONS = ("hole-white", "hole-black")
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)$")


class InputError(PConvError):
    """One input file cannot be used; the pipeline records it and goes on with the others."""


@dataclass
class Picture:
    """A decoded image: ``pixels`` HxW (grey) or HxWx3 (RGB) uint8, plus what is kept aside."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None  # HxW uint8, written back unchanged
    icc_profile: bytes | None = None  # carried into the output so colours look the same

    def merged(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` with the alpha channel re-attached (HxW -> HxWx2, HxWx3 -> HxWx4)."""
        if self.alpha is None:
            return pixels
        base = pixels if pixels.ndim == 3 else pixels[..., None]
        return np.concatenate([base, self.alpha[..., None]], axis=2)


def precheck(path: Path, what: str = "image") -> None:
    """The checks that need no decoding: exists, image extension, not empty."""
    if not path.is_file():
        raise InputError(f"{what} not found" if not path.exists() else f"{what} is not a regular file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        kind = path.suffix or "no extension"
        raise InputError(f"not an image file ({kind}): expected PNG, JPEG, WebP, BMP or TIFF")
    if path.stat().st_size == 0:
        raise InputError(f"{what} is empty (0 bytes)")


def open_checked(path: Path, max_pixels: int, what: str):
    """Open ``path`` with Pillow (header only) after the checks that need no decoding."""
    from PIL import Image, UnidentifiedImageError

    precheck(path, what)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:
        raise InputError(f"{what} has more than {max_pixels:,} pixels (raise --max-pixels to allow it)") from None
    except UnidentifiedImageError:
        raise InputError(f"{what} is unreadable: unknown format or corrupt header") from None
    except OSError as e:
        raise InputError(f"{what} cannot be read ({e})") from None
    if im.format not in FORMATS:
        im.close()
        raise InputError(f"{what} is in {im.format} format: expected PNG, JPEG, WebP, BMP or TIFF")
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise InputError(f"{what} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} (--max-pixels)")
    return im


def load_pixels(im, what: str):
    """Decode fully (corrupt and truncated data surface here) and apply EXIF orientation."""
    from PIL import Image, ImageOps

    try:
        im.load()
        oriented = ImageOps.exif_transpose(im)
        return oriented if oriented is not None else im
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{what} is corrupt or truncated ({e})") from None


def is_16bit(im) -> bool:
    """Pillow reads 16-bit RGB PNG/TIFF as 8-bit RGB; the raw mode in its tile still says ;16."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return True
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an image file to a :class:`Picture`; InputError with one clear line otherwise."""
    path = Path(path)
    with open_checked(path, max_pixels, "image") as im:
        if is_16bit(im):
            raise InputError(f"16-bit images are not supported ({im.mode} {im.format}): convert to 8 bits per channel")
        icc = im.info.get("icc_profile")
        im = load_pixels(im, "image")
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode == "PA" or mode.endswith("a"):  # palette + alpha, premultiplied modes
            im = im.convert("RGBA")
        elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, RGBX, ...
            im = im.convert("RGB")
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        raise InputError(f"unsupported pixel type {arr.dtype} (mode {mode})")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        return Picture(
            np.ascontiguousarray(arr[..., :-1].squeeze(2) if arr.shape[2] == 2 else arr[..., :3]),
            np.ascontiguousarray(arr[..., -1]),
            icc,
        )
    return Picture(np.ascontiguousarray(arr), None, icc)


def read_mask(path: str | Path, convention: str = "hole-white", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file as a bool array, True = hole. Greyscale, binarised at 128 (half range for 16-bit)."""
    if convention not in MASK_CONVENTIONS:
        raise PConvError(f"unknown mask convention {convention!r}: choose one of {', '.join(MASK_CONVENTIONS)}")
    path = Path(path)
    with open_checked(path, max_pixels, "mask") as im:
        im = load_pixels(im, "mask")
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            arr = np.asarray(im)
            white = arr >= (0.5 if im.mode == "F" else 32768)
        else:
            white = np.asarray(im.convert("L")) >= 128
    return white if convention == "hole-white" else ~white


def write_png(path: str | Path, pixels: np.ndarray, icc_profile: bytes | None = None) -> Path:
    """Write a lossless PNG atomically: hidden temp file in the same folder, fsync, rename."""
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            extra = {"icc_profile": icc_profile} if icc_profile else {}
            Image.fromarray(pixels).save(f, format="PNG", compress_level=3, **extra)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


_dir_lock = threading.Lock()


def fsync_dir(folder: Path) -> None:
    """Make the rename durable (a crash right after it must not lose the file)."""
    with _dir_lock:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def clean_stale_temps(folder: Path) -> int:
    """Delete temp files left by killed runs (their process is gone); returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in os.scandir(folder):
        m = TEMP_PATTERN.match(entry.name)
        if m and entry.is_file() and not pid_alive(int(m.group(1))):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier, dead process with a recycled pid cannot be in use yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
