"""Seeded irregular masks (strokes, ellipses, lines) that land in the paper's hole-ratio bins.

No irregular-mask data set is installable here (docs/design.md section 9), so masks are drawn with
OpenCV on a binary canvas: no anti-aliasing, no resizing, so they stay exactly binary.
Model convention: 1 = known pixel, 0 = hole.
"""

from __future__ import annotations

import numpy as np

# The paper's evaluation bins of hole-to-image area, as (low, high].
HOLE_BINS: tuple[tuple[float, float], ...] = ((0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))


def hole_ratio(mask: np.ndarray) -> float:
    """Fraction of hole pixels (mask == 0)."""
    return float((mask == 0).mean())


def bin_label(hole_bin: tuple[float, float]) -> str:
    lo, hi = hole_bin
    return f"({lo:g}, {hi:g}]"


def random_mask(
    height: int, width: int, rng: np.random.Generator, hole_range: tuple[float, float] = (0.01, 0.6)
) -> np.ndarray:
    """A uint8 [H, W] mask (1 = known) whose hole ratio lies in ``hole_range`` = (low, high].

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
            _draw_shape(cv2, candidate, rng, scale)
            count = int(candidate.sum())
            if count > max_holes:
                scale *= 0.7  # too big: try a smaller shape
                continue
            holes = candidate
            if count >= target:
                break
        if min_holes <= int(holes.sum()) <= max_holes:
            return (1 - holes).astype(np.uint8)
    raise RuntimeError(f"could not draw a {height}x{width} mask in ({lo}, {hi}]")  # not reached in practice


def _draw_shape(cv2, canvas: np.ndarray, rng: np.random.Generator, scale: float) -> None:
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


def training_mask(height: int, width: int, rng: np.random.Generator, bins: int | None = None) -> np.ndarray:
    """A mask from a uniformly chosen paper bin (of the first ``bins``), so training sees small and large holes."""
    return random_mask(height, width, rng, HOLE_BINS[int(rng.integers(bins or len(HOLE_BINS)))])
