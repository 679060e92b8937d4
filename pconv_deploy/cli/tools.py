"""`pconv doctor` and `pconv bench`: what this machine runs, and how fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.bench.spec import CONFIG_NAMES as BENCH_CONFIGS
from pconv_deploy.cli.base import (
    app,
    exit_with_error,
)
from pconv_deploy.errors import PConvError
from pconv_deploy.paths import (
    check_output_dir,
    check_output_file,
)


@app.command()
def doctor() -> None:
    """Report what this machine can run.

    torch, the ONNX Runtime providers that work, TensorRT, GPUs.
    """
    from pconv_deploy.doctor import report

    typer.echo(report())


@app.command()
def bench(
    model: Annotated[
        Path | None, typer.Option(help="Checkpoint (.safetensors) to measure (default: a random paper-size model).")
    ] = None,
    sizes: Annotated[str, typer.Option(help="Square image sides, comma-separated.")] = "256,512",
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,4",
    backends: Annotated[
        str, typer.Option(help="Comma-separated configurations (missing ones are skipped): " + ", ".join(BENCH_CONFIGS))
    ] = ",".join(BENCH_CONFIGS),
    threads: Annotated[int, typer.Option(min=1, help="Intra-op threads for every backend and the GEMM.")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per configuration (the median counts).")] = 3,
    compare_size: Annotated[
        int, typer.Option(min=0, help="Side for the mask-path / naive / GEMM comparison (0 skips it).")
    ] = 512,
    pipeline_images: Annotated[int, typer.Option(min=0, help="512x512 photos for the pipeline run (0 skips).")] = 4,
    quality: Annotated[
        bool, typer.Option("--quality/--no-quality", help="Hole-L1 change vs FP32 per configuration (bundled model).")
    ] = True,
    layers: Annotated[int, typer.Option(help="Levels of the random model (without --model).")] = 8,
    width: Annotated[float, typer.Option(help="Width of the random model (without --model).")] = 1.0,
    work_dir: Annotated[Path | None, typer.Option(help="Keep the exported models here.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full results as JSON here.")] = None,
) -> None:
    """Measure speed side by side in one run.

    Backends, mask-path cost, naive mask conv, GEMM efficiency, pipeline.
    """
    from rich.console import Console

    if json_path is not None:  # before the run: a bad path must not cost the results
        check_output_file(json_path, "--json", suffixes=(".json",))
    if work_dir is not None:
        check_output_dir(work_dir, "--work-dir")
    from pconv_deploy.bench.report import render, write_json
    from pconv_deploy.bench.run import run_bench
    from pconv_deploy.bench.spec import BenchSettings, parse_ints

    try:
        settings = BenchSettings(
            model=model,
            layers=layers,
            width=width,
            sizes=parse_ints(sizes, "--sizes"),
            batch_sizes=parse_ints(batch_sizes, "--batch-sizes"),
            backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
            threads=threads,
            repeats=repeats,
            compare_size=compare_size,
            pipeline_images=pipeline_images,
            quality=quality,
            work_dir=work_dir,
        )
        report = run_bench(settings, say=lambda line: typer.echo(line, err=True))
    except (PConvError, ValueError) as e:
        exit_with_error(str(e))
    Console(width=None if sys.stdout.isatty() else 160).print(render(report))  # a log keeps whole rows
    if json_path is not None:
        typer.echo(f"wrote {write_json(report, json_path)}")
