"""Every hole pixel gets exactly the fill computed for it, from a window with the promised context.

The backend here is a real Backend (numpy, no mock of anything): on a "coordinate image" whose red
channel is x and green channel is y, it fits an affine map to the known pixels of each window it is
given and fills the holes with that map, so a correct pipeline reproduces the coordinate image
exactly in every hole. A fill pasted a few pixels off, into the wrong image, or from the wrong
tile shows up as wrong coordinates. The backend also records which window of the image it saw, so
the context around every hole is checked against what the network really received.
"""

import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from pconv_deploy.runtime import Inpainter
from pconv_deploy.runtime.pipeline import run_folder

H, W = 224, 256  # multiples of the backend's 16: no padding, so every input is linear in (y, x)
MARGIN = 24


class CoordinateBackend:
    """Fills holes with the affine fit (least squares over known pixels) of each channel against (y, x)."""

    name = "coordinates"
    multiple = 16
    metadata: dict[str, str] = {}
    bytes_per_pixel = 64

    def __init__(self) -> None:
        self.seen: list[tuple[float, float, int, int, float, float]] = []  # (y0, x0, h, w, step, blue) per window
        self.lock = threading.Lock()

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


def hole_boxes(hole: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Each hole's bounding box grown by the promised context (margin or a quarter of its long side), clipped."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    boxes = []
    for x, y, bw, bh, _ in stats[1:]:
        extra = max(MARGIN, max(bw, bh) // 4)
        boxes.append((max(0, y - extra), min(H, y + bh + extra), max(0, x - extra), min(W, x + bw + extra)))
    return boxes


def check_context(backend: CoordinateBackend, hole: np.ndarray, blue: int) -> None:
    """Every hole with its context lies inside one window the backend was given of that image, at native scale."""
    windows = [
        (round(y0), round(x0), h, w)
        for y0, x0, h, w, step, b in backend.seen
        if abs(step - 1) < 1e-3 and round(b) == blue
    ]
    for y0, y1, x0, x1 in hole_boxes(hole):
        assert any(wy <= y0 and y1 <= wy + wh and wx <= x0 and x1 <= wx + ww for wy, wx, wh, ww in windows), (
            f"hole box {(y0, y1, x0, x1)} + context in no window of {windows}"
        )


@pytest.mark.parametrize("strategy", ["crop", "full", "resize"])
def test_every_hole_pixel_gets_its_own_fill(strategy):
    backend = CoordinateBackend()
    inpainter = Inpainter(backend, batch_size=2, strategy=strategy, max_side=128 if strategy == "resize" else 1024)
    inpainter.margin = MARGIN
    images = [coordinate_image(40 * k) for k in range(3)]
    masks = [holes(k) for k in range(3)]
    outs = inpainter.inpaint(images, masks)
    for k, (image, hole, out) in enumerate(zip(images, masks, outs)):
        assert np.array_equal(out[~hole], image[~hole])
        error = np.abs(out.astype(int) - image.astype(int))[hole]
        # crop and full reproduce the coordinates exactly; resize goes through a 2x down/up-scale (rounding).
        assert error.max() <= (1 if strategy == "resize" else 0), (strategy, error.max())
        if strategy == "crop":
            check_context(backend, hole, 40 * k)
    steps = {round(seen[4], 2) for seen in backend.seen}
    assert steps == ({2.0} if strategy == "resize" else {1.0})  # image pixels per network pixel
    if strategy == "crop":
        assert len(backend.seen) > len(images)  # several windows per image, not the whole image


def test_folder_job_pastes_each_fill_into_its_own_image(tmp_path):
    """The pipeline's batching across images (shared batches, concurrent calls) keeps every fill in place."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    expected = {}
    for k in range(5):
        image, hole = coordinate_image(30 * k), holes(10 + k)
        Image.fromarray(image).save(tmp_path / "images" / f"p{k}.png")
        Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "masks" / f"p{k}.png")
        expected[f"p{k}.png"] = image
    backend = CoordinateBackend()
    inpainter = Inpainter(backend, batch_size=3, inflight=2)
    inpainter.margin = MARGIN
    report = run_folder(inpainter, tmp_path / "images", tmp_path / "masks", tmp_path / "out", progress=False)
    assert report.count("ok") == 5, [f.error for f in report.files]
    for name, image in expected.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), image), name
    for k in range(5):
        check_context(backend, holes(10 + k), 30 * k)


def test_overlapping_windows_fill_each_hole_from_its_own_window():
    """A stroke and a dot by its window's corner get overlapping windows; each pixel's fill is still exact."""
    hole = np.zeros((H, W), np.uint8)
    cv2.line(hole, (20, 20), (120, 120), 1, 4)
    hole[150:156, 150:156] = 1
    hole = hole > 0
    backend = CoordinateBackend()
    inpainter = Inpainter(backend, strategy="crop")
    inpainter.margin = MARGIN
    job = inpainter.plan(coordinate_image(0), hole)
    assert len(job.tiles) == 2 and any(tile.paste is not None for tile in job.tiles)
    [out] = inpainter.inpaint([coordinate_image(0)], [hole])
    assert np.array_equal(out, coordinate_image(0))
    check_context(backend, hole, 0)
