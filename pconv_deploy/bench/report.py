"""`pconv bench` output: the report as rich tables, and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pconv_deploy.bench.spec import BenchReport


def render(report: BenchReport) -> Any:
    """The report as rich renderables (main table, comparisons, targets)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    main = Table(title="pconv bench: images/s per configuration (median of repeats)")
    columns = (
        "configuration",
        "size",
        "batch",
        "latency ms",
        "images/s",
        "x ORT fp32",
        "efficiency",
        "hole L1 vs fp32",
        "peak / base MiB",
        "note",
    )
    for col in columns:
        main.add_column(col, justify="left" if col in ("configuration", "note") else "right")
    skipped = [r for r in report.rows if not r.size]
    for r in report.rows:
        if not r.size:
            continue
        quality = report.quality.get(r.backend, {}).get("difference")
        main.add_row(
            r.backend,
            str(r.size or ""),
            str(r.batch or ""),
            _fmt(r.latency_ms, 1),
            _fmt(r.images_per_s, 2),
            _fmt(report.speedup(r), 2),
            _fmt(report.efficiency(r), 3),
            "" if quality is None else f"{quality:+.3f}",
            _fmt(r.peak_mib, 0) + (f" / {r.base_mib:.0f}" if r.base_mib else ""),
            r.note,
        )
    parts: list[Any] = [main, *(escape(f"{r.backend}: {r.note}") for r in skipped)]
    if report.quality:
        any_row = next(iter(v for v in report.quality.values() if "images" in v), None)
        if any_row:
            parts.append(
                f"hole L1 vs fp32: mean hole L1 (0-255) minus ONNX Runtime FP32's, bundled model, "
                f"{any_row['samples']} samples on {any_row['images']} (masks up to 30 % holes)"
            )
    if report.compare:
        parts.append(_compare_table(report))
    targets = Table(title="targets")
    for col in ("target", "goal", "measured", "met"):
        targets.add_column(col)
    for t in report.targets():
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
        targets.add_row(t["target"], t["goal"], "not measured" if t["measured"] is None else str(t["measured"]), met)
    parts.append(targets)
    load = report.machine.get("load_average_start"), report.machine.get("load_average_end")
    parts.append(
        f"load average (1, 5, 15 min) at start {load[0]}, at end {load[1]}; {report.seconds:.0f} s in all, "
        f"{report.prepare_seconds:.0f} s of it exporting (exports are reused on the next run)"
    )
    return Group(*parts)


def _compare_table(report: BenchReport) -> Any:
    from rich.table import Table

    c, p = report.compare, report.pipeline
    size = report.settings["compare_size"]
    title = f"one process, interleaved rounds, {size}x{size} batch 1, {c['threads']} threads, per-round ratios"
    table = Table(title=title)
    table.add_column("comparison")
    table.add_column("value", justify="right")
    table.add_column("from (median ms)")
    ms = {k: f"{v:.0f}" for k, v in c["ms"].items()}
    table.add_row("mask-path cost: ours / plain U-Net", f"{c['mask_path_cost']:.3f}x", f"{ms['ours']} / {ms['plain']}")
    table.add_row("naive C_out x C_in mask conv / ours", f"{c['naive_over_ours']:.2f}x", f"{ms['naive']}/{ms['ours']}")
    gemm = {k: f"{v:.1f}" for k, v in c["gemm_gflops"].items()}
    table.add_row(
        "efficiency: ours conv GFLOP/s / best GEMM",
        f"{c['efficiency']:.3f}",
        f"{c['ours_gflops']:.1f} / {gemm[c['gemm_best']]} GFLOP/s ({c['gemm_best']}; torch {gemm['gemm_torch']}, "
        f"numpy {gemm['gemm_numpy']})",
    )
    if "openvino_over_ours" in c:
        table.add_row(
            "OpenVINO on our FP32 file / ONNX Runtime",
            f"{c['openvino_over_ours']:.3f}x",
            f"time ratio; OpenVINO's efficiency {c['openvino_efficiency']:.3f}",
        )
    for label, key in (("from the medians", "from_medians"), ("from each one's fastest round", "from_fastest")):
        f = c[key]
        table.add_row(
            f"  same, {label}",
            f"{f['mask_path_cost']:.3f}x / {f['naive_over_ours']:.2f}x / {f['efficiency']:.3f}",
            "mask-path cost / naive / efficiency",
        )
    if p:
        table.add_row(
            "pipeline: run_folder / model alone",
            f"{p['pipeline_over_model']:.3f}x",
            f"{p['pipeline_images_per_s']} / {p['model_images_per_s']} images/s, {p['images']} photos 512x512",
        )
    return table


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_json(report: BenchReport, path: str | Path) -> Path:
    from pconv_deploy.files import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(report.to_json(), indent=2) + "\n")
    return path
