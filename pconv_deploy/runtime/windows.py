"""Crop windows: which parts of an image the network sees so that every hole is filled with context.

Each hole (8-connected component) gets a window with context around it, aligned to the model's
multiple. A long or diagonal hole (a brush stroke) is cut into pieces when the pieces' windows,
each with its own context, add up to fewer pixels than the one window around the whole hole
(:func:`split_pieces`). Windows are then joined while joining costs no more pixels. Windows may
overlap; each fills only the hole pixels of its own pieces. Cost = pixels inferred: ONNX Runtime
on this CPU spends no more per pixel on a 128 px tile than on a 512 px one (no per-call overhead
worth a pixel term), see docs/crop-windows.md.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # y0, y1, x0, x1
Runs = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows, starts, ends (exclusive) of runs of hole pixels
MAX_PAIRWISE = 64  # more holes than this are first joined by overlapping context (union_of_boxes), not split
MAX_PIECES = 256  # more pieces than this: the holes are planned whole (pairwise joining is quadratic)


def context_extra(box: Box, margin: int) -> int:
    """The context promised around a hole (or a piece of one) on every side: margin or a quarter of its long side."""
    return max(margin, max(box[1] - box[0], box[3] - box[2]) // 4)


def hole_windows(hole: np.ndarray, margin: int, multiple: int) -> list[Box]:
    """The crop strategy's windows (see :func:`plan_windows`), without their paste masks."""
    return [window for window, _ in plan_windows(hole, margin, multiple)]


def plan_windows(
    hole: np.ndarray, margin: int, multiple: int, *, split: bool = True
) -> list[tuple[Box, np.ndarray | None]]:
    """Windows covering every hole pixel with its context, aligned to ``multiple``, and the hole pixels each fills.

    Units are the holes (8-connected components), or with ``split`` the pieces :func:`split_pieces`
    cuts them into; each unit lies in one window with :func:`context_extra` of its own bounding
    box around it (clipped to the image). Two windows are joined when the joined window costs no
    more pixels than the two apart; windows may then overlap, and each fills only the pixels of
    its own units (the mask returned with it; None: every hole pixel in the window is its own).
    """
    shape = hole.shape
    comps = Components(hole)
    units = [(box, runs) for box, runs in zip(comps.boxes, comps.runs())]
    if split and len(units) <= MAX_PAIRWISE:
        pieces = [p for box, runs in units for p in split_pieces(runs, box, shape, margin=margin, multiple=multiple)[1]]
        units = pieces if len(pieces) <= MAX_PIECES else units
    context = [context_box(box, margin, shape) for box, _ in units]
    groups = [[i] for i in range(len(context))]
    if len(comps.boxes) > MAX_PAIRWISE:  # many holes: one group per region of overlapping context
        clusters = union_of_boxes(context, shape)
        owner = [next(k for k, cluster in enumerate(clusters) if inside(c, cluster)) for c in context]
        # A cluster's box may hold another's contexts (boxes of regions overlap): it may then own none.
        groups = [g for k in range(len(clusters)) if (g := [i for i in range(len(context)) if owner[i] == k])]
    windows = [align_window(bounding(context[i] for i in g), shape, multiple) for g in groups]
    windows, groups = join_cheaper(windows, groups, shape, multiple=multiple)
    labels = None
    if any(overlap(a, b) for i, a in enumerate(windows) for b in windows[:i]):
        labels = paint_runs(shape, [runs for _, runs in units])
    plans = []
    for window, group in sorted(zip(windows, groups)):
        paste = None
        if labels is not None:
            y0, y1, x0, x1 = window
            paste = np.isin(labels[y0:y1, x0:x1], np.asarray(group) + 1)
        plans.append((window, paste))
    return plans


def split_pieces(runs: Runs, box: Box, shape: tuple[int, int], *, margin: int, multiple: int) -> tuple[int, list]:
    """The cheapest cover found of one hole: (pixels inferred, [(piece box, piece runs)]).

    The cheapest of :func:`bisect_cover` and of :func:`grid_cover` for grids whose cells get
    windows of k multiples (k growing by half each time, while a cell is shorter than the hole);
    the hole whole when nothing is cheaper. A piece gets the context of its own bounding box
    (:func:`context_extra`), like a hole of that size: what the network needs around a pixel is
    known pixels within its reach, and a piece of a stroke has the stroke's full width plus at
    least the margin on each side in its window. A compact hole is not cut: its pieces' windows
    overlap by twice their context and cost more than the whole's.
    """
    best = bisect_cover(runs, box, shape, margin=margin, multiple=multiple)
    long_side = max(box[1] - box[0], box[3] - box[2])
    k = 2 * margin // multiple + 1  # the first k whose cells are not empty
    while (cell := max(1, min(k * multiple - 2 * margin, 2 * k * multiple // 3))) < long_side:
        best = min(
            best, grid_cover(runs, box, shape, margin=margin, multiple=multiple, cell=cell), key=lambda cover: cover[0]
        )
        k = max(k + 1, k * 3 // 2)  # a few grids per hole, whatever the multiple
    return best


def bisect_cover(runs: Runs, box: Box, shape: tuple[int, int], *, margin: int, multiple: int) -> tuple[int, list]:
    """Recursive bisection: cut the hole at the middle of its box's longer side while that infers fewer pixels.

    Each half is covered the cheapest way recursively; the cut is kept only when the two covers
    together cost less than one window around the whole.
    """
    h, w = shape
    cost = window_cost(box, shape, margin, multiple=multiple)
    y0, y1, x0, x1 = box
    # Neither half can cost less than the smallest window a 1-pixel piece inside this box can get.
    floor = smallest_window(y0, y1, h, margin=margin, multiple=multiple) * smallest_window(
        x0, x1, w, margin=margin, multiple=multiple
    )
    if cost <= 2 * floor or max(y1 - y0, x1 - x0) < 2:
        return cost, [(box, runs)]
    halves = bisect_runs(runs, box)
    cost_a, pieces_a = bisect_cover(halves[0], runs_box(halves[0]), shape, margin=margin, multiple=multiple)
    cost_b, pieces_b = bisect_cover(halves[1], runs_box(halves[1]), shape, margin=margin, multiple=multiple)
    if cost_a + cost_b < cost:
        return cost_a + cost_b, pieces_a + pieces_b
    return cost, [(box, runs)]


def grid_cover(
    runs: Runs, box: Box, shape: tuple[int, int], *, margin: int, multiple: int, cell: int
) -> tuple[int, list]:
    """The hole cut by a grid of ``cell`` px squares from its box's corner: one piece per non-empty cell."""
    rows, starts, ends = runs
    first, last = (starts - box[2]) // cell, (ends - 1 - box[2]) // cell  # the columns of cells each run crosses
    count = last - first + 1
    run = np.repeat(np.arange(len(rows)), count)
    col = np.repeat(first, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    cut_starts = np.maximum(starts[run], box[2] + col * cell)
    cut_ends = np.minimum(ends[run], box[2] + (col + 1) * cell)
    key = ((rows[run] - box[0]) // cell) * (col.max() + 1) + col
    order = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[order])) + 1
    pieces = []
    for i in np.split(order, cuts):
        piece = (rows[run][i], cut_starts[i], cut_ends[i])
        pieces.append((runs_box(piece), piece))
    return sum(window_cost(b, shape, margin, multiple=multiple) for b, _ in pieces), pieces


def window_cost(box: Box, shape: tuple[int, int], margin: int, *, multiple: int) -> int:
    """Pixels inferred for a hole (or piece) with this bounding box: its aligned window with context."""
    return area(align_window(context_box(box, margin, shape), shape, multiple))


def smallest_window(a: int, b: int, n: int, *, margin: int, multiple: int) -> int:
    """The shortest aligned window side (clipped to ``n``) a 1-pixel piece at a position in [a, b) can get."""
    span = min(min(n, p + 1 + margin) - max(0, p - margin) for p in (a, b - 1))
    return min(n, -(-span // multiple) * multiple)


def bisect_runs(runs: Runs, box: Box) -> tuple[Runs, Runs]:
    """The runs cut at the middle of the longer side of ``box`` (the tight box of the runs): two non-empty halves."""
    rows, starts, ends = runs
    y0, y1, x0, x1 = box
    if y1 - y0 >= x1 - x0:
        top = rows < (y0 + y1) // 2
        return (rows[top], starts[top], ends[top]), (rows[~top], starts[~top], ends[~top])
    mid = (x0 + x1) // 2
    left, right = starts < mid, ends > mid
    return (
        (rows[left], starts[left], np.minimum(ends[left], mid)),
        (rows[right], np.maximum(starts[right], mid), ends[right]),
    )


def runs_box(runs: Runs) -> Box:
    rows, starts, ends = runs
    return (int(rows.min()), int(rows.max()) + 1, int(starts.min()), int(ends.max()))


def paint_runs(shape: tuple[int, int], units: list[Runs]) -> np.ndarray:
    """int32 image: unit index + 1 on the pixels of each unit's runs, 0 elsewhere."""
    h, w = shape
    labels = np.zeros(h * w, np.int32)
    if not units:
        return labels.reshape(h, w)
    rows, starts, ends = (np.concatenate([u[k] for u in units]) for k in range(3))
    unit = np.repeat(np.arange(1, len(units) + 1, dtype=np.int32), [len(u[0]) for u in units])
    lengths = ends - starts
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels[np.repeat(rows * w + starts, lengths) + offsets] = np.repeat(unit, lengths)
    return labels.reshape(h, w)


def context_box(box: Box, margin: int, shape: tuple[int, int]) -> Box:
    """``box`` grown by its :func:`context_extra` on every side, clipped to the image of this ``shape``."""
    h, w = shape
    e = context_extra(box, margin)
    return (max(0, box[0] - e), min(h, box[1] + e), max(0, box[2] - e), min(w, box[3] + e))


def join_cheaper(
    windows: list[Box], groups: list[list[int]], shape: tuple[int, int], *, multiple: int
) -> tuple[list, list]:
    """Join pairs of windows while the aligned union has no more pixels than the two together."""
    while (pair := cheaper_pair(windows, shape, multiple)) is not None:
        i, j, union = pair
        windows[i], groups[i] = union, groups[i] + groups[j]
        del windows[j], groups[j]
    return windows, groups


def cheaper_pair(windows: list[Box], shape: tuple[int, int], multiple: int) -> tuple[int, int, Box] | None:
    """The first pair (i < j) whose aligned union costs no more pixels than the two apart, with that union.

    All pairs at once in numpy: split strokes give hundreds of windows.
    """
    n, (h, w) = len(windows), shape
    if n < 2:
        return None
    b = np.asarray(windows, np.int64)
    y0, y1 = np.minimum.outer(b[:, 0], b[:, 0]), np.maximum.outer(b[:, 1], b[:, 1])
    x0, x1 = np.minimum.outer(b[:, 2], b[:, 2]), np.maximum.outer(b[:, 3], b[:, 3])
    (uy0, uy1), (ux0, ux1) = align_span(y0, y1, h, multiple=multiple), align_span(x0, x1, w, multiple=multiple)
    alone = (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])
    cheaper = np.triu((uy1 - uy0) * (ux1 - ux0) <= alone[:, None] + alone[None, :], k=1)
    if not cheaper.any():
        return None
    i, j = divmod(int(np.argmax(cheaper)), n)  # row-major: the first pair (i < j)
    return i, j, (int(uy0[i, j]), int(uy1[i, j]), int(ux0[i, j]), int(ux1[i, j]))


def area(b: Box) -> int:
    return (b[1] - b[0]) * (b[3] - b[2])


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def inside(a: Box, b: Box) -> bool:
    return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]


def bounding(boxes) -> Box:
    ys0, ys1, xs0, xs1 = zip(*boxes)
    return (min(ys0), max(ys1), min(xs0), max(xs1))


def union_of_boxes(
    boxes: list[tuple[int, int, int, int]], shape: tuple[int, int], cell: int = 8
) -> list[tuple[int, ...]]:
    """Bounding boxes of the connected regions the boxes cover, on a grid of ``cell`` px (rounded outward).

    Thousands of small holes (a noisy mask) become a few boxes in one pass over a small raster,
    instead of a quadratic pairwise merge.
    """
    if len(boxes) <= 1:
        return list(boxes)
    h, w = shape
    gh, gw = -(-h // cell), -(-w // cell)
    b = np.array(boxes)
    y0, y1, x0, x1 = b[:, 0] // cell, -(-b[:, 1] // cell), b[:, 2] // cell, -(-b[:, 3] // cell)
    corners = np.zeros((gh + 1, gw + 1), np.int32)  # 2-D difference array: +1/-1 at the box corners
    np.add.at(corners, (y0, x0), 1)
    np.add.at(corners, (y0, x1), -1)
    np.add.at(corners, (y1, x0), -1)
    np.add.at(corners, (y1, x1), 1)
    covered = corners.cumsum(0).cumsum(1)[:gh, :gw] > 0
    return [(a * cell, min(h, z * cell), c * cell, min(w, d * cell)) for a, z, c, d in component_boxes(covered)]


class Components:
    """The 8-connected components of a bool mask, found in numpy on runs of True per row.

    Runs in adjacent rows that overlap or touch diagonally are joined (a vectorised union-find by
    hooking and pointer jumping); ``boxes`` are the components' bounding boxes (y0, y1, x0, x1).
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.shape = mask.shape
        h, w = mask.shape
        self.rows, self.starts, self.ends = row_runs(np.asarray(mask, bool))
        self.run_label = np.zeros(0, np.int64)
        self.boxes: list[Box] = []
        if len(self.rows):
            self.run_label = self.join_runs(w)
            self.boxes = self.bounding_boxes(h, w)

    def join_runs(self, w: int) -> np.ndarray:
        """Component index of every run."""
        rows, starts, ends = self.rows, self.starts, self.ends
        # Run b (row y+1) touches run a (row y) when a.start <= b.end and b.start <= a.end (8-connectivity).
        stride = w + 2
        start_key, end_key = rows * stride + starts, rows * stride + ends
        b_idx = np.nonzero(rows > 0)[0]
        lo = np.searchsorted(end_key, (rows[b_idx] - 1) * stride + starts[b_idx], "left")
        hi = np.searchsorted(start_key, (rows[b_idx] - 1) * stride + ends[b_idx], "right")
        counts = np.maximum(hi - lo, 0)
        src = np.repeat(b_idx, counts)
        dst = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        parent = np.arange(len(rows))
        while len(src):
            ps, pd = parent[src], parent[dst]
            differ = ps != pd
            if not differ.any():
                break
            np.minimum.at(parent, np.maximum(ps, pd)[differ], np.minimum(ps, pd)[differ])
            while not np.array_equal(jumped := parent[parent], parent):
                parent = jumped
        return np.unique(parent, return_inverse=True)[1]

    def bounding_boxes(self, h: int, w: int) -> list[Box]:
        n = int(self.run_label.max()) + 1
        y0, x0 = np.full(n, h), np.full(n, w)
        y1, x1 = np.zeros(n, np.int64), np.zeros(n, np.int64)
        np.minimum.at(y0, self.run_label, self.rows)
        np.maximum.at(y1, self.run_label, self.rows + 1)
        np.minimum.at(x0, self.run_label, self.starts)
        np.maximum.at(x1, self.run_label, self.ends)
        return [(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(y0, y1, x0, x1)]

    def runs(self) -> list[Runs]:
        """Each component's runs (rows, starts, ends), in component order."""
        order = np.argsort(self.run_label, kind="stable")
        cuts = np.cumsum(np.bincount(self.run_label, minlength=len(self.boxes)))[:-1]
        return [(self.rows[i], self.starts[i], self.ends[i]) for i in np.split(order, cuts)] if len(self.boxes) else []

    def label_image(self) -> np.ndarray:
        """int32 image: component index + 1 on its pixels, 0 elsewhere."""
        return paint_runs(self.shape, self.runs())


def row_runs(mask: np.ndarray) -> Runs:
    """The runs of True in each row of a 2-D bool mask, in row-major order: rows, starts, ends (exclusive).

    One pass of 1-D flatnonzero over the changes between neighbouring columns (2-D nonzero on a
    padded copy took 0.1 s on a 12 MP mask).
    """
    h, w = mask.shape
    stride = w + 1  # keys row * stride + column; column w is the end of a run that reaches the right edge
    first, last = np.flatnonzero(mask[:, 0]), np.flatnonzero(mask[:, -1])
    change = np.flatnonzero(mask[:, 1:] != mask[:, :-1]) if w > 1 else np.zeros(0, np.int64)
    row, col = change // max(1, w - 1), change % max(1, w - 1) + 1
    key = row * stride + col
    opens = mask[row, col]  # a change to True starts a run there; to False ends one
    start_key = np.sort(np.concatenate([first * stride, key[opens]]))
    end_key = np.sort(np.concatenate([last * stride + w, key[~opens]]))
    return start_key // stride, start_key % stride, end_key % stride


def component_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes (y0, y1, x0, x1) of the 8-connected components of a bool mask."""
    return Components(mask).boxes


def align_window(box: tuple[int, int, int, int], shape: tuple[int, int], multiple: int) -> tuple[int, int, int, int]:
    """Grow each side of the box to a multiple of ``multiple`` (less padding, better batching), inside the image."""
    h, w = shape
    (y0, y1), (x0, x1) = (
        align_span(box[0], box[1], h, multiple=multiple),
        align_span(box[2], box[3], w, multiple=multiple),
    )
    return (int(y0), int(y1), int(x0), int(x1))


def align_span(a, b, n: int, *, multiple: int):
    """[a, b) grown about its centre to a multiple of ``multiple`` (at most ``n``), shifted into [0, n); numpy-able."""
    length = np.minimum(n, -(-(b - a) // multiple) * multiple)
    start = np.maximum(0, np.minimum(a - (length - (b - a)) // 2, n - length))
    return start, start + length
