"""Images, masks and a backend that the runtime's tests share (tests import these, never each other)."""

from __future__ import annotations

import struct
import threading

import cv2
import numpy as np
from PIL import Image

from pconv_deploy.masks import straight_strokes

H, W = 224, 256  # the coordinate image: multiples of CoordinateBackend's 16, so no padding


def strokes(h: int, w: int, seed: int = 0, n: int = 4) -> np.ndarray:
    """``n`` straight strokes 4-15 px wide across the image, True = hole."""
    side = min(h, w)
    return straight_strokes(h, w, np.random.default_rng(seed), count=n, widths=(4, 15), lengths=(side / 4, side))


def polyline(shape: tuple[int, int], points: list[tuple[int, int]], width: int) -> np.ndarray:
    """A bool mask with a polyline of ``width`` px through (x, y) ``points`` (OpenCV, independent of masks.py)."""
    mask = np.zeros(shape, np.uint8)
    cv2.polylines(mask, [np.array(points, np.int32)], False, 1, width)
    return mask > 0


def ring(shape: tuple[int, int], centre: tuple[int, int], radius: int, width: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, width)
    return mask > 0


def save(path, array):
    Image.fromarray(array).save(path)
    return path


def save_mask(path, hole):
    return save(path, hole.astype(np.uint8) * 255)


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _lut16(inputs: int, outputs: int, clut: list[int]) -> bytes:
    head = b"mft2" + bytes(4) + bytes([inputs, outputs, 2, 0]) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp_in, ramp_out = [0, 65535] * inputs, [0, 65535] * outputs
    return head + struct.pack(f">HH{len(ramp_in)}H{len(clut)}H{len(ramp_out)}H", 2, 2, *ramp_in, *clut, *ramp_out)


def neutral_cmyk_profile() -> bytes:
    """A valid ICC v2 CMYK printer profile in which every colour is neutral: L* = 100 (1 - K), a* = b* = 0.

    Converting through it gives grey pixels whose level depends on K alone; Pillow's plain
    CMYK -> RGB formula gives colours. So the output shows which of the two ran.
    """
    a2b = [v for i in range(16) for v in ((0 if i & 1 else 0xFF00), 0x8000, 0x8000)]  # (C, M, Y, K) corners
    b2a = [v for i in range(8) for v in (0, 0, 0, 0 if (i >> 2) & 1 else 65535)]  # (L, a, b) corners
    text = b"neutral CMYK test\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    white = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [
        (b"desc", desc),
        (b"wtpt", b"XYZ " + bytes(4) + white),
        (b"cprt", b"text" + bytes(4) + b"none\0"),
        (b"A2B0", _lut16(4, 3, a2b)),
        (b"B2A0", _lut16(3, 4, b2a)),
    ]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = struct.pack(">I4xI", offset + len(data), 0x02100000) + b"prtrCMYKLab " + bytes(12) + b"acsp"
    header += bytes(28) + white
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + table + data


class CoordinateBackend:
    """Fills holes with the affine fit (least squares over known pixels) of each channel against (y, x)."""

    name = "coordinates"
    multiple = 16
    metadata: dict[str, str] = {}
    bytes_per_pixel = 64

    def __init__(self, tag: bool = False) -> None:
        self.seen: list[tuple[float, float, int, int, float, float]] = []  # (y0, x0, h, w, step, blue) per window
        self.lock = threading.Lock()
        self.tag = tag  # blue in the holes = 1 + the window's index in seen (red and green stay exact)

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = image.copy()
        n, _, h, w = image.shape
        yy, xx = np.mgrid[:h, :w].astype(np.float64)
        for i in range(n):
            known = mask[i, 0] > 0.5
            design = np.column_stack([yy[known], xx[known], np.ones(known.sum())])
            coef = [np.linalg.lstsq(design, image[i, c][known].astype(np.float64), rcond=None)[0] for c in range(3)]
            for c in range(3):
                out[i, c][~known] = (coef[c][0] * yy + coef[c][1] * xx + coef[c][2])[~known]
            # red = x / 255 and green = y / 255 in the image: the fit says where this window sits and its scale.
            with self.lock:
                self.seen.append((coef[1][2] * 255, coef[0][2] * 255, h, w, coef[0][1] * 255, coef[2][2] * 255))
                if self.tag:
                    out[i, 2][~known] = len(self.seen) / 255
        return np.clip(out, 0, 1)


def coordinate_image(blue: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.dstack([xx, yy, np.full((H, W), blue)]).astype(np.uint8)


def holes(seed: int) -> np.ndarray:
    """Two blobs far apart and a stroke, away from the border (bicubic upscaling clamps at the border)."""
    rng = np.random.default_rng(seed)
    m = np.zeros((H, W), np.uint8)
    y, x = rng.integers(12, 40, 2)
    m[y : y + 10, x : x + 18] = 1
    cv2.line(m, (int(rng.integers(150, 200)), 150), (int(rng.integers(200, 236)), 200), 1, 5)
    cv2.circle(m, (200, 50), 8, 1, -1)
    return m > 0
