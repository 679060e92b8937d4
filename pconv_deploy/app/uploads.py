"""Requests to the app: a bounded multipart body parsed in memory, photos and masks decoded from bytes.

Nothing touches the disk: Starlette's own form parser spools uploads over 1 MiB to temporary files,
so the body is read here (refused past ``max_bytes`` with 413) and split by python-multipart's
streaming parser into byte strings. Photos and masks are decoded with the same checks and the same
conventions as ``pconv infer``'s files (:mod:`pconv_deploy.runtime.images`): the pixel limit on the
header before decoding, EXIF orientation, grey and alpha kept, 16-bit refused, white = hole,
transparent mask pixels never holes.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pconv_deploy.errors import PConvError
from pconv_deploy.runtime.images import (
    FORMATS,
    Picture,
    deep_pixels,
    has_alpha,
    load_pixels,
    normalise_mode,
    own_pixel_limit,
)

MAX_PARTS = 8  # image, mask, model and a few more are plenty; more is not a form of this app
DRAIN_BYTES = 256 * 2**20  # read (and drop) this much of a too-large body so the client sees the 413


class UploadError(PConvError):
    """A request the app cannot use: ``status`` is the HTTP status the page and the API answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Form:
    """The parts of one multipart body: ``files`` name -> (file name, bytes), ``fields`` name -> text."""

    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> tuple[str, bytes]:
        if name not in self.files:
            raise UploadError(f"missing the file field {name!r} (multipart/form-data)", 400)
        filename, data = self.files[name]
        if not data:
            raise UploadError(f"{name} {filename or '(no name)'}: the file is empty (0 bytes)", 400)
        return filename, data


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, max_bytes: int) -> bytes:
    """The whole body, at most ``max_bytes``; a larger one is drained (up to a bound) and refused with 413."""
    too_big = UploadError(f"the request is over the upload limit of {max_bytes / 2**20:.0f} MiB (--max-upload)", 413)
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + DRAIN_BYTES:
        raise too_big
    body, size = bytearray(), 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes + DRAIN_BYTES:
            break
        if size <= max_bytes:
            body += chunk
    if size > max_bytes:
        raise too_big
    return bytes(body)


def parse_form(body: bytes, content_type: str | None) -> Form:
    """Split a multipart/form-data body into files and text fields, in memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError("expected a multipart/form-data body with the fields image and mask", 400)
    form, parts = Form(), []
    state: dict = {}

    def on_part_begin() -> None:
        state.update(headers={}, field=b"", value=b"", data=[])

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_end() -> None:
        parts.append((state["headers"], b"".join(state["data"])))
        if len(parts) > MAX_PARTS:
            raise UploadError(f"more than {MAX_PARTS} form fields", 400)

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": lambda d, s, e: state.update(field=state["field"] + d[s:e]),
        "on_header_value": lambda d, s, e: state.update(value=state["value"] + d[s:e]),
        "on_header_end": on_header_end,
        "on_part_data": lambda d, s, e: state["data"].append(d[s:e]),
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except UploadError:
        raise
    except Exception as e:  # python-multipart's errors name the byte where the body broke
        raise UploadError(f"malformed multipart body ({e})", 400) from None
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition:
            form.files[name] = (disposition[b"filename"].decode("utf-8", "replace"), data)
        else:
            form.fields[name] = data.decode("utf-8", "replace")
    return form


def open_upload(data: bytes, max_pixels: int, what: str):
    """Open uploaded bytes with Pillow (header only), checking the format and the pixel limit first.

    Call inside ``with own_pixel_limit:`` (our limit, on the header, replaces Pillow's global one).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UploadError(f"{what} is not an image (unknown format or corrupt header)", 415) from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UploadError(f"{what} cannot be read ({e})", 415) from None
    if im.format not in FORMATS:
        im.close()
        raise UploadError(f"{what} is in {im.format} format: expected PNG, JPEG, WebP, BMP or TIFF", 415)
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise UploadError(
            f"{what} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} (--max-pixels); "
            "a small file that claims this many is a decompression bomb",
            413,
        )
    return im


@contextmanager
def reading() -> Iterator[None]:
    """The runtime's decoding errors (InputError: corrupt, truncated) as 422 answers."""
    try:
        yield
    except UploadError:
        raise
    except PConvError as e:
        raise UploadError(str(e)) from None


def decode_photo(data: bytes, max_pixels: int, name: str = "photo") -> Picture:
    """Uploaded bytes as a :class:`Picture`, decoded exactly as ``pconv infer`` decodes a file."""
    with own_pixel_limit, reading(), open_upload(data, max_pixels, name) as im:
        depth = deep_pixels(im)
        if depth is not None:
            raise UploadError(f"{name}: {depth} images are not supported ({im.mode} {im.format}): use 8 bits")
        icc = im.info.get("icc_profile")
        im, icc = normalise_mode(load_pixels(im, name), icc)
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        raise UploadError(f"{name}: unsupported pixel type {arr.dtype} (mode {im.mode})")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        pixels = arr[..., :-1].squeeze(2) if arr.shape[2] == 2 else arr[..., :3]
        return Picture(np.ascontiguousarray(pixels), np.ascontiguousarray(arr[..., -1]), icc)
    return Picture(np.ascontiguousarray(arr), None, icc)


def decode_mask(data: bytes, shape: tuple[int, int], max_pixels: int, *, name: str = "mask") -> np.ndarray:
    """An uploaded mask as bool HxW, True = hole (white, opaque), checked against the photo's ``shape``."""
    with own_pixel_limit, reading(), open_upload(data, max_pixels, name) as im:
        im = load_pixels(im, name)
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            arr = np.asarray(im)
            hole = arr >= (0.5 if im.mode == "F" else 32768)
        elif has_alpha(im):
            rgba = im.convert("RGBA")
            hole = (np.asarray(rgba.convert("L")) >= 128) & (np.asarray(rgba.getchannel("A")) >= 128)
        else:
            hole = np.asarray(im.convert("L")) >= 128
    h, w = shape
    if hole.shape != (h, w):
        raise UploadError(f"{name} is {hole.shape[1]}x{hole.shape[0]} but the photo is {w}x{h}: they must match")
    if not hole.any():
        raise UploadError(f"{name} marks no hole: paint over what should go (white = hole)")
    if hole.all():
        raise UploadError(f"{name} marks every pixel as a hole (white = hole): nothing known would be left")
    return hole
