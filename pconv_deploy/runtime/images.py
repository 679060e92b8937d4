"""Image and mask files: decoding with clear per-file errors (writing: :mod:`pconv_deploy.runtime.outputs`).

Decisions:

- EXIF orientation is applied to images and masks: masks are drawn on the image as viewers
  show it, and the output PNG stores those displayed pixels (without the EXIF tag), so it
  looks the same as the input.
- Grey images stay grey, alpha is kept as it is (not inpainted), palette images become RGB(A),
  and a PNG tRNS colour key on a grey or RGB image becomes an alpha channel (transparent pixels
  stay transparent). 16-bit and 32-bit images are refused: writing them back as 8-bit would
  change known pixels.
- CMYK (and other non-RGB) images are converted to sRGB through their own ICC profile when it is
  usable; a profile is carried into the output only when it describes the output's pixels.
- Masks are read as greyscale and binarised at 128; by default white = hole. Transparent mask
  pixels (alpha < 128) are never holes; a mask that makes every pixel a hole is refused.
- ``max_pixels`` is checked on the header before decoding and replaces Pillow's global limit.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pconv_deploy.contract import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, MASK_CONVENTIONS
from pconv_deploy.errors import PConvError

FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "TIFF"}


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
        if path.is_symlink() and not path.exists():
            raise InputError(f"{what} is a dangling symbolic link (to {os.readlink(path)})")
        if path.is_dir():
            raise InputError(f"{what} is a folder, not a file")
        raise InputError(f"{what} not found" if not path.exists() else f"{what} is not a regular file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        kind = path.suffix or "no extension"
        raise InputError(f"not an image file ({kind}): expected PNG, JPEG, WebP, BMP or TIFF")
    if path.stat().st_size == 0:
        raise InputError(f"{what} is empty (0 bytes)")


class _OwnPixelLimit:
    """While any of our decodes runs, Pillow's global decompression-bomb limit is off (ours applies).

    ``Image.MAX_IMAGE_PIXELS`` is one process-wide value: Pillow refuses images over twice it and
    warns over it, so ``--max-pixels`` could not be raised past ~179 M and a 100 MP image leaked a
    ``DecompressionBombWarning``. Our limit is checked on the header size before any decoding, so
    Pillow's is redundant for our files. A counter under a lock makes overlapping decodes in several
    threads safe: the value is switched off by the first and restored by the last. Other Pillow users
    in the same process are unprotected by Pillow's check only while one of our decodes is running.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: int | None = None

    def __enter__(self) -> None:
        from PIL import Image

        with self.lock:
            if self.users == 0:
                self.saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self.users += 1

    def __exit__(self, *exc: object) -> None:
        from PIL import Image

        with self.lock:
            self.users -= 1
            if self.users == 0:
                Image.MAX_IMAGE_PIXELS = self.saved


own_pixel_limit = _OwnPixelLimit()


def open_checked(path: Path, max_pixels: int, what: str):
    """Open ``path`` with Pillow (header only) after the checks that need no decoding.

    Call it inside ``with own_pixel_limit:`` so that ``max_pixels``, not Pillow's global limit, applies.
    """
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


def deep_pixels(im) -> str | None:
    """'16-bit', '32-bit float' or '32-bit integer' for images deeper than 8 bits per channel, else None.

    Pillow reads 16-bit RGB PNG/TIFF as 8-bit RGB; the raw mode in its tile still says ;16.
    """
    if im.mode == "F":
        return "32-bit float"
    raws = [im.mode]
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str):
            raws.append(raw)
    if any(";16" in raw for raw in raws):
        return "16-bit"
    if im.mode == "I":
        return "32-bit integer"
    return None


def icc_space(icc: bytes | None) -> str | None:
    """The data colour space an ICC profile declares ('RGB', 'GRAY', 'CMYK', ...); None if unreadable."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("ascii", "replace").strip() or None


def to_rgb_with_profile(im, icc: bytes | None):
    """A CMYK (or other non-RGB) image as sRGB, through its own ICC profile when it has a usable one.

    Pillow's plain ``convert("RGB")`` ignores the profile (press CMYK comes out too bright and
    saturated); ImageCms maps through it. Either way the output is sRGB and carries no profile.
    """
    from PIL import ImageCms

    if icc and icc_space(icc) == im.mode:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's formula below
    return im.convert("RGB")


def normalise_mode(im, icc: bytes | None):
    """``(image, icc)`` in L, LA, RGB or RGBA; the profile kept only when it matches the pixels."""
    mode = im.mode
    keyed = "transparency" in im.info  # palette transparency or a PNG tRNS colour key on L/RGB
    if mode == "P":
        im = im.convert("RGBA" if keyed else "RGB")
    elif mode in ("1", "L"):
        im = im.convert("LA" if keyed else "L")
    elif mode == "RGB" and keyed:
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode not in ("LA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, RGBX, HSV
        im, icc = to_rgb_with_profile(im, icc), None
    wanted = "GRAY" if im.mode in ("L", "LA") else "RGB"
    return im, (icc if icc_space(icc) == wanted else None)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an image file to a :class:`Picture`; InputError with one clear line otherwise."""
    path = Path(path)
    with own_pixel_limit, open_checked(path, max_pixels, "image") as im:
        depth = deep_pixels(im)
        if depth is not None:
            raise InputError(f"{depth} images are not supported ({im.mode} {im.format}): convert to 8 bits per channel")
        icc = im.info.get("icc_profile")
        im, icc = normalise_mode(load_pixels(im, "image"), icc)
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        raise InputError(f"unsupported pixel type {arr.dtype} (mode {im.mode})")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        return Picture(
            np.ascontiguousarray(arr[..., :-1].squeeze(2) if arr.shape[2] == 2 else arr[..., :3]),
            np.ascontiguousarray(arr[..., -1]),
            icc,
        )
    return Picture(np.ascontiguousarray(arr), None, icc)


def has_alpha(im) -> bool:
    return im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info


def read_mask(path: str | Path, convention: str = "hole-white", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file as a bool array, True = hole.

    Greyscale, binarised at 128 (half range for 16-bit). Where the mask has transparency (alpha
    channel, palette or tRNS key), a pixel with alpha < 128 is never a hole, whatever its colour:
    editors export strokes as opaque paint on a transparent layer, often with white RGB everywhere.
    A mask that makes every pixel a hole is refused: it would replace the whole photo.
    """
    if convention not in MASK_CONVENTIONS:
        raise PConvError(f"unknown mask convention {convention!r}: choose one of {', '.join(MASK_CONVENTIONS)}")
    path = Path(path)
    with own_pixel_limit, open_checked(path, max_pixels, "mask") as im:
        im = load_pixels(im, "mask")
        opaque = None
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            arr = np.asarray(im)
            white = arr >= (0.5 if im.mode == "F" else 32768)
        elif has_alpha(im):
            rgba = im.convert("RGBA")
            white = np.asarray(rgba.convert("L")) >= 128
            opaque = np.asarray(rgba.getchannel("A")) >= 128
        else:
            white = np.asarray(im.convert("L")) >= 128
    hole = white if convention == "hole-white" else ~white
    if opaque is not None:
        if not opaque.any():
            raise InputError("mask is fully transparent: transparent pixels are never holes")
        hole &= opaque
    if hole.all():
        raise InputError(
            f"mask marks every pixel as a hole ({'white' if convention == 'hole-white' else 'black'} = hole "
            f"with --mask-convention {convention}): nothing known would be left; check the convention"
        )
    return hole
