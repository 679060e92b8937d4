"""Crop windows that follow thin strokes (runtime/windows.py): fewer pixels, every hole pixel once, with context.

The checks are independent of the planner's own bookkeeping: hole pixels and their bounding boxes
come from OpenCV (drawing and connected components) or numpy on painted masks, windows are checked
pixel by pixel, and the joining rule against a brute-force loop over pairs.
"""

import cv2
import numpy as np
import pytest
from helpers.images import polyline, ring

from pconv_deploy.masks import straight_strokes
from pconv_deploy.runtime import windows
from pconv_deploy.runtime.tiles import plan_windows

MARGIN, MULTIPLE = 64, 32


def area(box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def scattered_strokes(shape, count, seed) -> np.ndarray:
    """``count`` straight strokes 20-60 px wide, 300-600 px long, any angle (as bench_photos --masks strokes)."""
    return straight_strokes(*shape, np.random.default_rng(seed), count=count)


MASKS = {
    "diagonal stroke": lambda: polyline((1400, 1400), [(100, 120), (1250, 1300)], 30),
    "L-shape": lambda: polyline((1200, 1500), [(100, 100), (100, 1000), (1300, 1000)], 40),
    "ring": lambda: ring((1200, 1200), (600, 600), 450, 30),
    "stroke off the border": lambda: polyline((900, 1300), [(-50, 700), (700, 880), (1400, 880)], 25),
    "stroke spanning the image": lambda: polyline((1000, 1500), [(0, 0), (1499, 999)], 20),
    "twelve strokes": lambda: scattered_strokes((1500, 2000), 12, 0),
}


def check_plan(hole: np.ndarray, plans, margin: int = MARGIN) -> None:
    """Each hole pixel is pasted by exactly one window, which holds ``margin`` px around it (clipped)."""
    h, w = hole.shape
    count = np.zeros(hole.shape, int)
    filler = np.full(hole.shape, -1)
    for k, ((y0, y1, x0, x1), paste) in enumerate(plans):
        assert (y1 - y0) % MULTIPLE == 0 or (y0, y1) == (0, h)
        assert (x1 - x0) % MULTIPLE == 0 or (x0, x1) == (0, w)
        region = hole[y0:y1, x0:x1] if paste is None else paste
        assert not (region & ~hole[y0:y1, x0:x1]).any(), "a window pastes a known pixel"
        count[y0:y1, x0:x1] += region
        filler[y0:y1, x0:x1][region] = k
    assert np.array_equal(count, hole.astype(int)), "a hole pixel pasted zero or several times"
    ys, xs = np.nonzero(hole)
    box = np.array([window for window, _ in plans])[filler[ys, xs]]
    lacking = (
        (box[:, 0] > np.maximum(0, ys - margin))
        | (box[:, 1] < np.minimum(h, ys + margin + 1))
        | (box[:, 2] > np.maximum(0, xs - margin))
        | (box[:, 3] < np.minimum(w, xs + margin + 1))
    )
    assert not lacking.any(), f"{lacking.sum()} hole pixels with less than {margin} px of context"


@pytest.mark.parametrize("name", MASKS)
def test_split_plans_fill_each_hole_pixel_once_with_context(name):
    hole = MASKS[name]()
    plans = plan_windows(hole, MARGIN, MULTIPLE)
    check_plan(hole, plans)
    whole = plan_windows(hole, MARGIN, MULTIPLE, split=False)
    check_plan(hole, whole)
    assert sum(area(w) for w, _ in plans) <= sum(area(w) for w, _ in whole)


@pytest.mark.parametrize("multiple", [32, 128])
def test_diagonal_stroke_is_split_into_less_area(multiple):
    """One axis-aligned window around a diagonal stroke is mostly known pixels: several smaller ones cost less."""
    hole = polyline((3000, 4000), [(1000, 800), (1420, 1220)], 40)  # 600 px long at 45 degrees
    plans = plan_windows(hole, MARGIN, multiple)
    [(single, _)] = plan_windows(hole, MARGIN, multiple, split=False)
    assert len(plans) > 1
    assert sum(area(w) for w, _ in plans) < 0.8 * area(single)
    [(x, y, bw, bh, _)] = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)[2][1:]
    e = max(MARGIN, max(bw, bh) // 4)  # the whole hole gets a quarter of its long side
    assert single[0] <= y - e and y + bh + e <= single[1] and single[2] <= x - e and x + bw + e <= single[3]
    check_plan(hole, plans)


@pytest.mark.parametrize(
    "blob",
    [
        lambda m: cv2.circle(m, (700, 600), 200, 1, -1),
        lambda m: cv2.rectangle(m, (300, 300), (700, 650), 1, -1),
        lambda m: cv2.circle(m, (700, 600), 12, 1, -1),
        lambda m: cv2.ellipse(m, (700, 600), (260, 150), 30, 0, 360, 1, -1),
    ],
    ids=["disc", "square", "dot", "fat ellipse"],
)
def test_compact_blob_is_one_window(blob):
    mask = np.zeros((1200, 1400), np.uint8)
    blob(mask)
    hole = mask > 0
    plans = plan_windows(hole, MARGIN, 128)
    assert len(plans) == 1 and plans == [(w, None) for w, _ in plans]
    assert [w for w, _ in plans] == [w for w, _ in plan_windows(hole, MARGIN, 128, split=False)]
    # The whole blob with a quarter of its long side (or the margin) around it, as for any unsplit hole.
    [(x, y, bw, bh, _)] = cv2.connectedComponentsWithStats(mask, connectivity=8)[2][1:]
    e = max(MARGIN, max(bw, bh) // 4)
    (y0, y1, x0, x1), _ = plans[0]
    assert y0 <= max(0, y - e) and min(1200, y + bh + e) <= y1 and x0 <= max(0, x - e) and min(1400, x + bw + e) <= x1


def painted_box(shape, runs):
    """The bounding box of a piece's pixels, from a painted mask."""
    mask = np.zeros(shape, bool)
    for row, start, end in zip(*runs):
        mask[row, start:end] = True
    ys, xs = np.nonzero(mask)
    return mask, (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)


@pytest.mark.parametrize("name", ["diagonal stroke", "ring", "stroke off the border"])
def test_each_piece_gets_the_context_of_its_own_box(name):
    """The promise for a piece: max(margin, a quarter of its long side) around its box, in the window pasting it."""
    hole = MASKS[name]()
    h, w = hole.shape
    comps = windows.Components(hole)
    pieces = [
        p
        for box, runs in zip(comps.boxes, comps.runs())
        for p in windows.split_pieces(runs, box, hole.shape, margin=MARGIN, multiple=MULTIPLE)[1]
    ]
    assert len(pieces) > 1
    plans = plan_windows(hole, MARGIN, MULTIPLE)
    covered = np.zeros(hole.shape, int)
    for _, runs in pieces:
        mask, (y0, y1, x0, x1) = painted_box(hole.shape, runs)
        covered += mask
        e = max(MARGIN, max(y1 - y0, x1 - x0) // 4)
        need = (max(0, y0 - e), min(h, y1 + e), max(0, x0 - e), min(w, x1 + e))
        fillers = [
            (wy0, wy1, wx0, wx1)
            for (wy0, wy1, wx0, wx1), paste in plans
            if (hole[wy0:wy1, wx0:wx1] if paste is None else paste)[mask[wy0:wy1, wx0:wx1]].any()
        ]
        assert len(fillers) == 1, "a piece pasted by several windows"
        wy0, wy1, wx0, wx1 = fillers[0]
        assert wy0 <= need[0] and need[1] <= wy1 and wx0 <= need[2] and need[3] <= wx1, (need, fillers[0])
    assert np.array_equal(covered, hole.astype(int)), "pieces do not partition the hole"


def test_many_holes_still_fill_each_pixel_once():
    """More holes than pairwise joining handles (dots and strokes): clustered, every pixel once with context."""
    rng = np.random.default_rng(3)
    hole = scattered_strokes((1500, 2000), 5, 1)
    for y, x in rng.integers(0, [1500, 2000], (windows.MAX_PAIRWISE + 30, 2)):
        hole[y : y + 3, x : x + 3] = True
    plans = plan_windows(hole, MARGIN, MULTIPLE)
    check_plan(hole, plans)


def brute_cheaper_pair(boxes, h, w, multiple):
    """The first (i < j) whose union, grown to the multiple inside the image, costs no more than the two."""

    def grow(a, b, n):
        length = min(n, ((b - a + multiple - 1) // multiple) * multiple)
        start = max(0, min(a - (length - (b - a)) // 2, n - length))
        return start, start + length

    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            y0, y1 = grow(min(a[0], b[0]), max(a[1], b[1]), h)
            x0, x1 = grow(min(a[2], b[2]), max(a[3], b[3]), w)
            if (y1 - y0) * (x1 - x0) <= area(a) + area(b):
                return i, j, (y0, y1, x0, x1)
    return None


@pytest.mark.parametrize("seed", range(6))
def test_joining_matches_a_brute_force_loop(seed):
    rng = np.random.default_rng(seed)
    h, w = 700, 900
    for _ in range(20):
        n = int(rng.integers(2, 12))
        y0, x0 = rng.integers(0, h - 100, n), rng.integers(0, w - 100, n)
        side = rng.integers(1, 4, (n, 2)) * MULTIPLE
        boxes = [(int(a), int(min(h, a + s)), int(b), int(min(w, b + t))) for a, b, (s, t) in zip(y0, x0, side)]
        assert windows.cheaper_pair(boxes, (h, w), MULTIPLE) == brute_cheaper_pair(boxes, h, w, MULTIPLE)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (40, 60), (120, 7)])
def test_components_match_opencv(shape):
    """Hole components (runs joined by 8-connectivity), at the image edges too, have OpenCV's bounding boxes."""
    rng = np.random.default_rng(sum(shape))
    for density in (0.05, 0.3, 0.6, 1.0):
        mask = rng.random(shape) < density
        mask[:, -1] |= density > 0.5  # runs that reach the right edge
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        expected = sorted((y, y + bh, x, x + bw) for x, y, bw, bh, _ in stats[1:])
        assert sorted(windows.Components(mask).boxes) == expected
        comps = windows.Components(mask)
        labels = comps.label_image()
        assert np.array_equal(labels > 0, mask) and labels.max() == count - 1


def test_more_pieces_than_pairwise_joining_limit_stay_split():
    """48 strokes on 12 MP: more pieces than holes are clustered at; joining them never costs more than apart."""
    hole = scattered_strokes((3000, 4000), 48, 5)  # 35 holes, 77 pieces
    h, w = hole.shape
    comps = windows.Components(hole)
    assert len(comps.boxes) <= windows.MAX_PAIRWISE
    pieces = [
        p
        for b, r in zip(comps.boxes, comps.runs())
        for p in windows.split_pieces(r, b, hole.shape, margin=MARGIN, multiple=128)[1]
    ]
    assert len(pieces) > windows.MAX_PAIRWISE
    apart = 0
    for _, (rows, starts, ends) in pieces:  # each piece's own window: box + max(margin, long side / 4), aligned
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, starts.min(), ends.max()
        e = max(MARGIN, max(y1 - y0, x1 - x0) // 4)
        ly, lx = min(h, y1 + e) - max(0, y0 - e), min(w, x1 + e) - max(0, x0 - e)
        apart += min(h, -(-ly // 128) * 128) * min(w, -(-lx // 128) * 128)
    plans = plan_windows(hole, MARGIN, 128)
    check_plan(hole, plans)
    assert sum(area(w) for w, _ in plans) <= apart
