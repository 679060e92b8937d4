"""PNG charts drawn with Pillow (no matplotlib dependency): loss curves, sample grids, bar charts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (0, 0, 0))


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _save(image, path: str | Path) -> Path:
    """Write atomically: a half-written PNG is never visible under the final name."""
    from pconv_deploy.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def loss_curve(history: Sequence[dict[str, float]], path: str | Path, keys: Sequence[str] | None = None) -> Path:
    """One line per loss term against ``step`` on a log10 y axis (the terms differ by orders of magnitude)."""
    from PIL import Image, ImageDraw

    keys = list(keys or [k for k in history[0] if k != "step"]) if history else []
    w, h, left, right, top, bottom = 800, 450, 60, 130, 20, 40
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    values = [math.log10(r[k]) for r in history for k in keys if r.get(k, 0) > 0]
    if not values:
        draw.text((left, top), "no data yet", fill="black", font=font)
        return _save(img, path)
    steps = [r["step"] for r in history]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = math.floor(min(values)), math.ceil(max(values) + 1e-9)
    y1 = max(y1, y0 + 1)

    def xy(step: float, logv: float) -> tuple[float, float]:
        px = left + (step - x0) / (x1 - x0) * (w - left - right)
        py = h - bottom - (logv - y0) / (y1 - y0) * (h - top - bottom)
        return px, py

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for e in range(y0, y1 + 1):
        _, py = xy(x0, e)
        draw.line([left, py, w - right, py], fill=(225, 225, 225))
        draw.text((5, py - 6), f"1e{e}", fill="black", font=font)
    draw.text((left, h - bottom + 5), str(x0), fill="black", font=font)
    draw.text((w - right - 40, h - bottom + 5), str(x1), fill="black", font=font)
    draw.text(((w - right + left) // 2 - 15, h - bottom + 18), "step", fill="black", font=font)
    for i, key in enumerate(keys):
        color = PALETTE[i % len(PALETTE)]
        pts = [xy(r["step"], math.log10(r[key])) for r in history if r.get(key, 0) > 0]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        draw.text((w - right + 10, top + 16 * i), key, fill=color, font=font)
    return _save(img, path)


def sample_grid(
    images: np.ndarray, masks: np.ndarray, outputs: np.ndarray, *, path: str | Path, max_rows: int = 4
) -> Path:
    """Rows of input (holes white) | mask | output (composited) | ground truth, from [N,3,H,W] / [N,1,H,W] floats."""
    from PIL import Image

    rows = []
    for img, mask, out in list(zip(images, masks, outputs))[:max_rows]:
        holed = img * mask + (1 - mask)
        cells = [holed, np.repeat(mask, 3, axis=0), out, img]
        rows.append(np.concatenate([np.clip(c, 0, 1).transpose(1, 2, 0) for c in cells], axis=1))
    grid = (np.concatenate(rows, axis=0) * 255 + 0.5).astype(np.uint8)
    return _save(Image.fromarray(grid), path)


def bar_charts(groups: Sequence[str], panels: dict[str, dict[str, Sequence[float]]], path: str | Path) -> Path:
    """One grouped bar chart per panel (title -> series), stacked vertically in one PNG."""
    from PIL import Image

    charts = [bar_chart(groups, series, title) for title, series in panels.items()]
    sheet = Image.new("RGB", (charts[0].width, sum(c.height for c in charts)), "white")
    for i, chart in enumerate(charts):
        sheet.paste(chart, (0, i * charts[0].height))
    return _save(sheet, path)


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[float]], title: str = ""):
    """Grouped bars as a Pillow image: one group per x label, one bar per series (e.g. model, Telea)."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 800, 400, 60, 20, 40, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    top_value = max([v for vals in series.values() for v in vals if np.isfinite(v)] + [1e-9]) * 1.1
    draw.text((left, 10), title, fill="black", font=_font(14))
    draw.line([left, h - bottom, w - right, h - bottom], fill="black")
    for k in range(5):
        v = top_value * k / 4
        py = h - bottom - v / top_value * (h - top - bottom)
        draw.line([left, py, w - right, py], fill=(225, 225, 225))
        draw.text((5, py - 6), f"{v:.3g}", fill="black", font=font)
    group_w = (w - left - right) / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(series))
    for g, label in enumerate(groups):
        gx = left + g * group_w + group_w * 0.1
        for s, vals in enumerate(series.values()):
            v = vals[g] if np.isfinite(vals[g]) else 0.0
            py = h - bottom - v / top_value * (h - top - bottom)
            draw.rectangle([gx + s * bar_w, py, gx + (s + 1) * bar_w - 2, h - bottom], fill=PALETTE[s % len(PALETTE)])
        draw.text((gx, h - bottom + 5), label, fill="black", font=font)
    for s, name in enumerate(series):
        draw.rectangle([w - right - 150, top + 16 * s, w - right - 140, top + 16 * s + 10], fill=PALETTE[s])
        draw.text((w - right - 135, top + 16 * s - 2), name, fill="black", font=font)
    return img
