"""Encoding and writing outputs: the format, its settings, and one atomic write per file.

Decisions:

- PNG by default, lossless, so known pixels stay byte-identical to the input, written by
  :func:`encode_png` (numpy filter + zlib-ng) at level 2 by default (``--png-level``): on a 12 MP
  photo 0.6 s against 1.9 s for Pillow's level 1 and 9.9 s for its default 6 (files 14, 15 and
  13 MiB; level 1 is 10% faster than 2 but 45% larger), so the encoder no longer dominates a crop run.
- ``jpg`` and ``webp`` are lossy: every pixel, known ones included, is re-encoded (``--quality``).
  WebP at quality 100 is written lossless.
- ``same`` keeps each input's own format and suffix (JPEG in, JPEG out).
- The input's ICC profile is carried along where the format stores one, so colours look the same.
- Every file goes through :func:`pconv_deploy.files.atomic_write`: a reader, or a rerun after a
  kill, never sees a partial file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pconv_deploy.contract import DEFAULT_PNG_LEVEL, DEFAULT_QUALITY, OUTPUT_FORMATS
from pconv_deploy.errors import PConvError
from pconv_deploy.files import atomic_write

SUFFIX_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
FORMAT_SUFFIXES = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")


@dataclass(frozen=True)
class OutputSettings:
    """How outputs are encoded: ``format`` png | jpg | webp | same, ``quality`` for the lossy ones."""

    format: str = "png"
    quality: int = DEFAULT_QUALITY
    png_level: int = DEFAULT_PNG_LEVEL

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise PConvError(f"unknown output format {self.format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
        if not 1 <= self.quality <= 100:
            raise PConvError(f"--quality must be 1-100, got {self.quality}")
        if not 0 <= self.png_level <= 9:
            raise PConvError(f"--png-level must be 0-9, got {self.png_level}")


def output_name(image: Path, output_format: str = "png") -> str:
    """The output file name for ``image``: its stem with the format's suffix (``same``: its own)."""
    if output_format == "same":
        return image.stem + image.suffix.lower() if image.suffix.lower() in SUFFIX_FORMATS else image.stem + ".png"
    return image.stem + FORMAT_SUFFIXES[output_format]


def pil_format(path: str | Path) -> str:
    return SUFFIX_FORMATS.get(Path(path).suffix.lower(), "PNG")


def unstorable(path: str | Path, has_alpha: bool) -> str | None:
    """Why ``path``'s format cannot hold this image (JPEG has no alpha), or None: checked before inference."""
    if has_alpha and pil_format(path) == "JPEG":
        return "the image has an alpha channel, which JPEG cannot store: use --output-format png or webp"
    return None


def write_image(
    path: str | Path, pixels: np.ndarray, settings: OutputSettings, *, icc_profile: bytes | None = None
) -> Path:
    """Encode ``pixels`` (HxW, HxWx2 grey+alpha, HxWx3 or HxWx4 uint8) in the format of ``path``, atomically."""
    path = Path(path)
    fmt = pil_format(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        if fmt == "PNG":
            f.write(encode_png(pixels, settings.png_level, icc_profile))
        else:
            save_with_pillow(f, pixels, fmt, settings=settings, icc_profile=icc_profile)
    return path


def save_with_pillow(f, pixels: np.ndarray, fmt: str, *, settings: OutputSettings, icc_profile: bytes | None) -> None:
    from PIL import Image

    im = Image.fromarray(pixels)
    if fmt in ("WEBP", "BMP") and im.mode in ("L", "LA"):  # no grey modes there
        im = im.convert("RGBA" if im.mode == "LA" else "RGB")
    options: dict = {}
    if icc_profile and fmt in ICC_FORMATS:
        options["icc_profile"] = icc_profile
    if fmt == "JPEG":
        options["quality"] = settings.quality
    elif fmt == "WEBP":
        options.update(quality=settings.quality, lossless=settings.quality == 100)
    im.save(f, format=fmt, **options)


PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA


def encode_png(pixels: np.ndarray, level: int = DEFAULT_PNG_LEVEL, icc_profile: bytes | None = None) -> bytes:
    """An 8-bit PNG in numpy + zlib-ng: the "Up" filter on every row, one zlib stream at ``level``.

    Pillow's encoder tries five filters per row, which on a 12 MP photo costs more than the
    compression itself; this is about 4x faster at level 1 (figures in README "Inference").
    The compressor releases the GIL, so writer threads encode while the backend runs.
    """
    import struct
    import zlib

    try:  # zlib-ng (a core dependency) deflates 2.5x faster than the system zlib at level 1
        from zlib_ng import zlib_ng as deflate
    except ImportError:  # pragma: no cover - a source install without it still works, slower
        deflate = zlib
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(h, w * channels)
    raw = np.empty((h, w * channels + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the byte above it (mod 256)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, PNG_COLOUR_TYPES[channels], 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header)]
    if icc_profile:
        parts.append(chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    parts += [chunk(b"IDAT", deflate.compress(raw.data, level)), chunk(b"IEND", b"")]
    return b"".join(parts)
