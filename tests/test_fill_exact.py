"""Every hole pixel gets exactly the fill computed for it, from a window with the promised context.

The backend here is a real Backend (numpy, no mock of anything): on a "coordinate image" whose red
channel is x and green channel is y, it fits an affine map to the known pixels of each window it is
given and fills the holes with that map, so a correct pipeline reproduces the coordinate image
exactly in every hole. A fill pasted a few pixels off, into the wrong image, or from the wrong
tile shows up as wrong coordinates. The backend also records which window of the image it saw, so
the context around every hole is checked against what the network really received; with
``tag=True`` it writes the number of the window into the blue channel of the holes it fills, so the
window that filled each hole pixel is known and the context around that pixel is checked in it
(long holes are split into several windows, each filling only its own piece).
"""

import cv2
import numpy as np
import pytest
from helpers.images import CoordinateBackend, H, W, coordinate_image, holes, polyline, ring
from PIL import Image

from pconv_deploy.runtime import Inpainter, InpaintOptions
from pconv_deploy.runtime.pipeline import FolderOptions, run_folder

MARGIN = 24


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


def check_pixel_context(backend: CoordinateBackend, hole: np.ndarray, out: np.ndarray, margin: int = MARGIN) -> None:
    """Every hole pixel was filled by a native window (its tag in blue) holding ``margin`` px around it (clipped)."""
    h, w = hole.shape
    ys, xs = np.nonzero(hole)
    tags = out[ys, xs, 2].astype(int)
    assert tags.min() >= 1 and tags.max() <= len(backend.seen), "a hole pixel was not filled by a window"
    seen = np.array([(round(y0), round(x0), wh, ww, step) for y0, x0, wh, ww, step, _ in backend.seen])
    wy, wx, wh, ww, step = seen[tags - 1].T
    assert np.allclose(step, 1), "filled from a downscaled window"
    lacking = (
        (wy > np.maximum(0, ys - margin))
        | (wy + wh < np.minimum(h, ys + margin + 1))
        | (wx > np.maximum(0, xs - margin))
        | (wx + ww < np.minimum(w, xs + margin + 1))
    )
    assert not lacking.any(), f"{lacking.sum()} hole pixels lack {margin} px of context, e.g. at y {ys[lacking][:3]}"


def fill_tagged(hole: np.ndarray, margin: int = MARGIN) -> tuple[CoordinateBackend, np.ndarray]:
    """Crop-inpaint the coordinate image (blue 0) with a tagging backend: (backend, output)."""
    image = coordinate_image(0)
    backend = CoordinateBackend(tag=True)
    inpainter = Inpainter(backend, InpaintOptions(strategy="crop", max_side=4096))
    inpainter.margin = margin
    [out] = inpainter.inpaint([image], [hole])
    assert np.array_equal(out[~hole], image[~hole])
    assert np.array_equal(out[hole][:, :2], image[hole][:, :2]), "a hole pixel got another pixel's fill"
    return backend, out


@pytest.mark.parametrize("strategy", ["crop", "full", "resize"])
def test_every_hole_pixel_gets_its_own_fill(strategy):
    backend = CoordinateBackend()
    inpainter = Inpainter(
        backend, InpaintOptions(batch_size=2, strategy=strategy, max_side=128 if strategy == "resize" else 1024)
    )
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
            check_context(backend, hole, 40 * k)  # these holes are compact: each lies whole in one window
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
    inpainter = Inpainter(backend, InpaintOptions(batch_size=3, inflight=2, margin=MARGIN))
    folder = FolderOptions(images=tmp_path / "images", masks=tmp_path / "masks", output=tmp_path / "out")
    report = run_folder(inpainter, folder, progress=False)
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
    inpainter = Inpainter(backend, InpaintOptions(strategy="crop", margin=MARGIN))
    job = inpainter.plan(coordinate_image(0), hole)
    assert len(job.tiles) >= 2 and any(tile.paste is not None for tile in job.tiles)
    [out] = inpainter.inpaint([coordinate_image(0)], [hole])
    assert np.array_equal(out, coordinate_image(0))
    backend, out = fill_tagged(hole)
    check_pixel_context(backend, hole, out)


SPLIT_MARGIN = 12  # the coordinate image is at most 256 px wide: a small margin leaves room to split
SPLIT_HOLES = {
    "diagonal stroke": polyline((H, W), [(20, 15), (235, 200)], 5),
    "L-shape": polyline((H, W), [(30, 20), (30, 190), (230, 190)], 6),
    "ring": ring((H, W), (128, 112), 90, 5),
    "stroke off the border": polyline((H, W), [(-10, 150), (180, 215), (300, 215)], 4),
    "stroke spanning the image": polyline((H, W), [(0, 0), (W - 1, H - 1)], 4),
    "zigzag spanning the image": polyline((H, W), [(0, H - 1), (80, 0), (170, H - 1), (W - 1, 0)], 4),
}


@pytest.mark.parametrize("name", SPLIT_HOLES)
def test_split_windows_fill_every_hole_pixel_with_its_context(name):
    """Long holes are filled by several windows; every pixel exactly, from a window with the margin around it."""
    hole = SPLIT_HOLES[name]
    backend, out = fill_tagged(hole, SPLIT_MARGIN)
    check_pixel_context(backend, hole, out, SPLIT_MARGIN)
    assert len(np.unique(out[hole][:, 2])) > 1, "not split into several windows"


def test_hole_covering_the_image_is_one_window():
    """A hole over all but a frame of the image: one window, the whole image (no piece without known pixels)."""
    hole = np.ones((H, W), bool)
    hole[:3], hole[-3:], hole[:, :3], hole[:, -3:] = False, False, False, False
    backend, out = fill_tagged(hole, SPLIT_MARGIN)
    check_pixel_context(backend, hole, out, SPLIT_MARGIN)
    assert [(round(y0), round(x0), h, w) for y0, x0, h, w, _, _ in backend.seen] == [(0, 0, H, W)]
