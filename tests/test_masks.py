"""pconv_deploy.masks: every generator returns bool [H, W] with True = hole, seeded, inside its documented
hole-ratio range; straight strokes are straight. Ratios and geometry are measured here with numpy and
OpenCV, never with the module's own helpers."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from pconv_deploy.masks import (
    HOLE_BINS,
    PHOTO_MASKS,
    as_known,
    boxes,
    brush_strokes,
    grid,
    irregular,
    objects,
    photo_mask,
    scribbles,
    straight_strokes,
    training_mask,
)

SEEDS = range(40)

# name -> a draw of (height, width, rng) with the options the callers use, scaled to small images.
GENERATORS = {
    "irregular": lambda h, w, rng: irregular(h, w, rng, hole_range=(0.1, 0.2)),
    "training_mask": lambda h, w, rng: training_mask(h, w, rng),
    "brush_strokes": brush_strokes,
    "straight_strokes ratio": lambda h, w, rng: straight_strokes(h, w, rng, ratio=0.1, widths=(3, 9), lengths=(20, 60)),
    "straight_strokes count": lambda h, w, rng: straight_strokes(h, w, rng, count=3, widths=(3, 9), lengths=(20, 60)),
    "scribbles": lambda h, w, rng: scribbles(h, w, rng, ratio=0.1),
    "objects": lambda h, w, rng: objects(h, w, rng, ratio=0.1),
    "boxes": lambda h, w, rng: boxes(h, w, rng, count=6),
}


def test_bins_are_the_papers():
    assert HOLE_BINS == ((0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("shape", [(90, 150), (150, 90)])
def test_bool_hole_of_the_asked_shape_and_seeded(name, shape):
    draw = GENERATORS[name]
    a, b = draw(*shape, np.random.default_rng(3)), draw(*shape, np.random.default_rng(3))
    assert a.dtype == np.bool_ and a.shape == shape, (a.dtype, a.shape)
    np.testing.assert_array_equal(a, b)
    assert a.any() and not a.all()
    assert any((draw(*shape, np.random.default_rng(seed)) != a).any() for seed in (4, 5))


def test_as_known_is_the_models_convention():
    hole = np.array([[True, False], [False, True]])
    known = as_known(hole)
    assert known.dtype == np.float32 and known.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert as_known(hole, np.uint8).dtype == np.uint8


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (256, 256)])
def test_irregular_masks_hit_every_bin(size):
    for hole_bin in HOLE_BINS:
        ratios = []
        for seed in range(8):
            hole = irregular(*size, np.random.default_rng(seed), hole_range=hole_bin)
            ratio = np.count_nonzero(hole) / hole.size
            assert hole_bin[0] < ratio <= hole_bin[1], (hole_bin, ratio)
            ratios.append(ratio)
        assert np.ptp(ratios) > 0  # not the same mask each time


def test_irregular_masks_are_not_boxes():
    hole = irregular(128, 128, np.random.default_rng(7), hole_range=(0.2, 0.3))
    ys, xs = np.nonzero(hole)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert hole.sum() < 0.9 * box


def test_training_masks_cover_all_bins():
    rng = np.random.default_rng(0)
    ratios = [np.count_nonzero(training_mask(64, 64, rng)) / 64**2 for _ in range(60)]
    counts = [sum(lo < r <= hi for r in ratios) for lo, hi in HOLE_BINS]
    assert all(c > 0 for c in counts), counts
    assert sum(counts) == len(ratios)
    first_two = [np.count_nonzero(training_mask(64, 64, rng, bins=2)) / 64**2 for _ in range(30)]
    assert max(first_two) <= HOLE_BINS[1][1]


def test_impossible_ranges_are_rejected():
    with pytest.raises(ValueError, match="0 <= low < high <= 1"):
        irregular(32, 32, np.random.default_rng(0), hole_range=(0.5, 0.4))
    with pytest.raises(ValueError, match="no 4x4 mask"):
        irregular(4, 4, np.random.default_rng(0), hole_range=(0.01, 0.05))  # 1/16 is already above 0.05
    with pytest.raises(ValueError, match="exactly one of ratio and count"):
        straight_strokes(32, 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown mask kind 'blobs'"):
        photo_mask("blobs", 32, 32, rng=np.random.default_rng(0), ratio=0.1)


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (96, 160)])
def test_brush_strokes_stay_in_their_documented_range(size):
    ratios = [np.count_nonzero(brush_strokes(*size, np.random.default_rng(s))) / (size[0] * size[1]) for s in SEEDS]
    assert 0.05 < min(ratios) and max(ratios) < 0.45, (min(ratios), max(ratios))


def test_boxes_stay_in_their_documented_range():
    for seed in SEEDS:
        hole = boxes(128, 160, np.random.default_rng(seed), count=6)
        ratio = np.count_nonzero(hole) / hole.size
        assert 0.06 <= ratio <= 6 / 16, (seed, ratio)
        assert cv2.connectedComponents(hole.astype(np.uint8))[0] - 1 <= 6


@pytest.mark.parametrize(
    ("shape", "ratio", "lengths", "widths"),
    [((512, 512), 0.1, (300, 600), (20, 60)), ((300, 400), 0.05, (40, 120), (4, 12))],
)
def test_straight_strokes_stop_at_the_ratio(shape, ratio, lengths, widths):
    """At least ``ratio``, and at most one stroke more (a PIL line has no caps: length x width, +1 px each way)."""
    one_stroke = (lengths[1] + 2) * (widths[1] + 2) / (shape[0] * shape[1])
    overshoot = []
    for seed in SEEDS:
        hole = straight_strokes(*shape, np.random.default_rng(seed), ratio=ratio, lengths=lengths, widths=widths)
        got = np.count_nonzero(hole) / hole.size
        assert ratio <= got < ratio + one_stroke, (seed, got)
        overshoot.append(got - ratio)
    assert np.mean(overshoot) < one_stroke / 3  # the last stroke crosses the ratio part-way (measured: 0.2)


@pytest.mark.parametrize(("draw", "step"), [(scribbles, 120), (objects, 60)])
def test_scribbles_and_objects_stop_at_the_ratio(draw, step):
    """At least ``ratio``, at most one scribble more: 4 segments under step * sqrt(2), <= 34 px wide, round joints."""
    h, w, ratio = 600, 800, 0.02
    one_scribble = (4 * step * np.sqrt(2) * 36 + 5 * np.pi * 18**2) / (h * w)
    overshoot = []
    for seed in range(12):
        got = np.count_nonzero(draw(h, w, np.random.default_rng(seed), ratio=ratio)) / (h * w)
        assert ratio <= got < ratio + one_scribble, (seed, got)
        overshoot.append(got - ratio)
    assert np.mean(overshoot) < one_scribble / 3  # the last scribble crosses the ratio part-way (measured: 0.1-0.2)


def test_photo_masks_are_the_named_generators():
    assert set(PHOTO_MASKS) == {"objects", "strokes", "scribbles"}
    for kind, draw in PHOTO_MASKS.items():
        got = photo_mask(kind, 400, 500, rng=np.random.default_rng(1), ratio=0.05)
        np.testing.assert_array_equal(got, draw(400, 500, np.random.default_rng(1), ratio=0.05))


def perpendicular_spread(hole: np.ndarray) -> tuple[float, float]:
    """(largest distance of a hole pixel from the pixels' principal axis, extent along that axis)."""
    points = np.argwhere(hole).astype(np.float64)
    centred = points - points.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    along, across = centred @ axes[0], centred @ axes[1]
    return float(np.abs(across).max()), float(np.ptp(along))


def test_straight_strokes_are_straight():
    """One stroke, away from the border: every pixel within half the widest width (+1) of one line, and its
    extent along it the stroke's length. A curved or zigzag stroke of the same width fails the first."""
    lengths, widths, checked = (150, 300), (6, 20), 0
    for seed in range(60):
        hole = straight_strokes(500, 500, np.random.default_rng(seed), count=1, lengths=lengths, widths=widths)
        if hole[0].any() or hole[-1].any() or hole[:, 0].any() or hole[:, -1].any():
            continue  # clipped: its length is not the one drawn
        across, along = perpendicular_spread(hole)
        assert widths[0] / 2 - 1 <= across <= widths[1] / 2 + 1, (seed, across)
        assert lengths[0] - 2 <= along <= lengths[1] + widths[1], (seed, along)
        checked += 1
    assert checked >= 20


def test_the_straightness_check_catches_a_bent_stroke():
    bent = np.zeros((500, 500), np.uint8)
    cv2.polylines(bent, [np.array([(100, 100), (250, 130), (400, 100)], np.int32)], False, 1, 10)
    assert perpendicular_spread(bent > 0)[0] > 20 / 2 + 1


def test_straight_strokes_count_draws_that_many():
    for seed in range(10):
        hole = straight_strokes(400, 400, np.random.default_rng(seed), count=3, lengths=(40, 80), widths=(3, 6))
        assert 1 <= cv2.connectedComponents(hole.astype(np.uint8))[0] - 1 <= 3


@pytest.mark.parametrize(("step", "offset"), [(7, (0, 0)), (5, (2, 3)), (7, (6, 1))])
def test_grid_is_one_pixel_per_cell(step, offset):
    hole = grid(40, 53, step=step, offset=offset)
    yy, xx = np.mgrid[:40, :53]
    np.testing.assert_array_equal(hole, (yy % step == offset[0]) & (xx % step == offset[1]))
    assert hole.dtype == np.bool_


def test_importing_the_module_loads_neither_torch_nor_opencv():
    """Parity and the bench draw masks without the train extra (OpenCV), scripts without torch."""
    code = "import sys, pconv_deploy.masks; print(sorted({'torch', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
