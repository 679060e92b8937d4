"""Every hole mask the project draws: training's irregular masks, the parity check's brush strokes, the
benchmarks' straight strokes, scribbles, objects and boxes, and pixel grids.

One convention for all: a bool [H, W] array, True = HOLE (what a mask file's white marks). The model takes
the inverse as float, 1 = known (:func:`as_known`). Every random generator is ``(height, width, rng, *,
options)`` with a :class:`numpy.random.Generator`, so a seed gives the same mask. Nothing is anti-aliased
or resized: masks stay exactly binary. Torch-free: numpy, Pillow (a core dependency) for the photo shapes,
and OpenCV (the train extra) for the irregular masks only, imported when drawn.

No irregular-mask data set is installable here (docs/design.md section 9), so training draws its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The paper's evaluation bins of hole-to-image area, as (low, high].
HOLE_BINS: tuple[tuple[float, float], ...] = ((0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))


def as_known(hole: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """The model's convention (contract.MASK_CONVENTION): 1 = known, 0 = hole."""
    return (~np.asarray(hole, bool)).astype(dtype)


def bin_label(hole_bin: tuple[float, float]) -> str:
    lo, hi = hole_bin
    return f"({lo:g}, {hi:g}]"


def irregular(
    height: int, width: int, rng: np.random.Generator, *, hole_range: tuple[float, float] = (0.01, 0.6)
) -> np.ndarray:
    """Training-style strokes, ellipses and lines whose hole ratio lies in ``hole_range`` = (low, high].

    Shapes are added one at a time; one that would overshoot ``high`` is redrawn smaller. The
    target ratio is drawn uniformly inside the range so masks spread over the whole bin.
    """
    import cv2

    lo, hi = hole_range
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"hole_range must satisfy 0 <= low < high <= 1, got {hole_range}")
    total = height * width
    min_holes, max_holes = int(np.floor(lo * total)) + 1, int(np.floor(hi * total))
    if min_holes > max_holes:
        raise ValueError(f"no {height}x{width} mask has a hole ratio in ({lo}, {hi}]")
    for _attempt in range(100):
        target = rng.integers(min_holes, max_holes + 1)
        holes = np.zeros((height, width), np.uint8)
        scale = 1.0
        for _shape in range(500):
            candidate = holes.copy()
            _draw_shape(cv2, candidate, rng, scale=scale)
            count = int(candidate.sum())
            if count > max_holes:
                scale *= 0.7  # too big: try a smaller shape
                continue
            holes = candidate
            if count >= target:
                break
        if min_holes <= int(holes.sum()) <= max_holes:
            return holes.astype(bool)
    raise RuntimeError(f"could not draw a {height}x{width} mask in ({lo}, {hi}]")  # not reached in practice


def _draw_shape(cv2, canvas: np.ndarray, rng: np.random.Generator, *, scale: float) -> None:
    """Draw one stroke, ellipse or line of 1s onto ``canvas``, sized relative to the image."""
    h, w = canvas.shape
    size = min(h, w)
    kind = rng.choice(["stroke", "ellipse", "line"], p=[0.5, 0.25, 0.25])
    thickness = max(1, int(rng.uniform(0.02, 0.08) * size * scale))
    if kind == "stroke":  # a random walk of segments with one brush width
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        for _ in range(int(rng.integers(2, 7))):
            angle = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.05, 0.3) * size * scale
            nx = int(np.clip(x + length * np.cos(angle), 0, w - 1))
            ny = int(np.clip(y + length * np.sin(angle), 0, h - 1))
            cv2.line(canvas, (x, y), (nx, ny), 1, thickness, lineType=cv2.LINE_8)
            cv2.circle(canvas, (nx, ny), max(1, thickness // 2), 1, -1, lineType=cv2.LINE_8)
            x, y = nx, ny
    elif kind == "ellipse":
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = tuple(max(1, int(rng.uniform(0.03, 0.2) * size * scale)) for _ in range(2))
        cv2.ellipse(canvas, center, axes, rng.uniform(0, 180), 0, 360, 1, -1, lineType=cv2.LINE_8)
    else:
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(canvas, p1, p2, 1, max(1, thickness // 2), lineType=cv2.LINE_8)


def training_mask(height: int, width: int, rng: np.random.Generator, *, bins: int | None = None) -> np.ndarray:
    """An :func:`irregular` mask from a uniformly chosen paper bin (of the first ``bins``): small and large holes."""
    return irregular(height, width, rng, hole_range=HOLE_BINS[int(rng.integers(bins or len(HOLE_BINS)))])


def brush_strokes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Three to six random walks of three to seven segments, each stamped with a round brush of radius 1 + 1-5 %
    of the shorter side (numpy only: the parity check runs without OpenCV). On square images 5-45 % holes
    (median about 20 %); fewer on elongated ones, as the strokes are sized by the shorter side."""
    hole = np.zeros((height, width), bool)
    yy, xx = np.mgrid[:height, :width]
    scale = min(height, width)
    for _ in range(rng.integers(3, 7)):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.01, 0.05) * scale + 1
        for _ in range(rng.integers(3, 8)):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.3) * scale
            y2 = np.clip(y + length * np.sin(angle), 0, height - 1)
            x2 = np.clip(x + length * np.cos(angle), 0, width - 1)
            for t in np.linspace(0, 1, max(2, int(length / max(radius / 2, 1)))):
                cy, cx = y + t * (y2 - y), x + t * (x2 - x)
                y0, y1 = int(max(cy - radius, 0)), int(min(cy + radius + 1, height))
                x0, x1 = int(max(cx - radius, 0)), int(min(cx + radius + 1, width))
                box = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= radius**2
                hole[y0:y1, x0:x1] |= box
            y, x = y2, x2
    return hole


def straight_strokes(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    ratio: float | None = None,
    count: int | None = None,
    widths: tuple[int, int] = (20, 60),
    lengths: tuple[float, float] = (300, 600),
) -> np.ndarray:
    """Straight strokes ``widths`` px wide (inclusive), ``lengths`` px long, at any angle, centred anywhere
    (clipped at the border): ``count`` of them, or until ``ratio`` of the image is hole (the last stroke may
    overshoot by its own area). The defaults are the long diagonal holes one axis-aligned window covers
    badly (a 12 MP photo needs about six for 1 %)."""
    if (ratio is None) == (count is None):
        raise ValueError("straight_strokes needs exactly one of ratio and count")
    canvas, draw = _canvas(height, width)
    drawn = 0
    while (drawn < count) if count is not None else (np.asarray(canvas).mean() / 255 < ratio):
        length, angle = rng.uniform(*lengths), rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(widths[0], widths[1] + 1)))
        drawn += 1
    return np.asarray(canvas) > 0


def scribbles(height: int, width: int, rng: np.random.Generator, *, ratio: float) -> np.ndarray:
    """Short curved scribbles (5-point polylines, steps under 120 px, 15-34 px wide) scattered over the image
    until ``ratio`` of it is hole."""
    return _scribbles(height, width, rng, ratio=ratio, around_objects=False)


def objects(height: int, width: int, rng: np.random.Generator, *, ratio: float) -> np.ndarray:
    """Scribbles (steps under 60 px) around one to three centres until ``ratio`` of the image is hole: one to
    three compact irregular blobs, as when removing a person, a sign or a blemish."""
    return _scribbles(height, width, rng, ratio=ratio, around_objects=True)


def _scribbles(height: int, width: int, rng: np.random.Generator, *, ratio: float, around_objects: bool) -> np.ndarray:
    canvas, draw = _canvas(height, width)
    border = min(400, width // 4, height // 4)
    # The centres are drawn for scribbles too: a seed gives the masks scripts/bench_photos.py always drew.
    centres = [rng.integers(border, [width - border, height - border]) for _ in range(int(rng.integers(1, 4)))]
    while np.asarray(canvas).mean() / 255 < ratio:
        if around_objects:
            x, y = centres[int(rng.integers(len(centres)))] + rng.integers(-120, 120, 2)
            step = 60
        else:
            x, y = rng.integers(border // 2, [width - border // 2, height - border // 2])
            step = 120
        points = [(int(x), int(y))]
        for _ in range(4):
            x, y = np.clip([x, y] + rng.integers(-step, step, 2), 0, [width - 1, height - 1])
            points.append((int(x), int(y)))
        draw.line(points, fill=255, width=int(rng.integers(15, 35)), joint="curve")
    return np.asarray(canvas) > 0


def _canvas(height: int, width: int):
    """A black 8-bit Pillow image and its drawing context (Pillow does not anti-alias lines: 0 or 255)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    return canvas, ImageDraw.Draw(canvas)


def boxes(height: int, width: int, rng: np.random.Generator, *, count: int = 6) -> np.ndarray:
    """``count`` axis-aligned boxes, each side 1/16 to 1/4 of the image's, top-left corners in the first 7/8:
    at most count/16 of the image (six boxes: 6-22 %, about 13 % on average)."""
    hole = np.zeros((height, width), bool)
    for _ in range(count):
        y, x = rng.integers(0, [height - height // 8, width - width // 8])
        h, w = rng.integers([height // 16, width // 16], [height // 4, width // 4])
        hole[y : y + h, x : x + w] = True
    return hole


def grid(height: int, width: int, *, step: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One pixel per ``step`` x ``step`` cell, at (row, column) ``offset`` in it: isolated 1-pixel holes, or
    with ``~`` isolated known pixels (every window of the network then holds at most one)."""
    hole = np.zeros((height, width), bool)
    hole[offset[0] :: step, offset[1] :: step] = True
    return hole


# What scripts/bench_photos.py --masks (and crop_context.py) can draw on a photo, at a given hole ratio.
PHOTO_MASKS: dict[str, Callable[..., np.ndarray]] = {
    "objects": objects,
    "strokes": straight_strokes,
    "scribbles": scribbles,
}


def photo_mask(kind: str, height: int, width: int, *, rng: np.random.Generator, ratio: float) -> np.ndarray:
    """The ``kind`` of :data:`PHOTO_MASKS` covering about ``ratio`` of a ``height`` x ``width`` photo."""
    if kind not in PHOTO_MASKS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {tuple(PHOTO_MASKS)}")
    return PHOTO_MASKS[kind](height, width, rng, ratio=ratio)
