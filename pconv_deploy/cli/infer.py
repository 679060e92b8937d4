"""`pconv infer`: a folder of photos and masks through a local model or Triton servers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pconv_deploy.cli.base import (
    MAX_WARNINGS,
    InferBackend,
    InferencePrecision,
    MaskConvention,
    OutputFormat,
    Strategy,
    app,
    bundled_checkpoint,
    exit_with_error,
)
from pconv_deploy.contract import (
    CROP_MARGIN,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DEFAULT_MODEL_NAME,
    DEFAULT_PNG_LEVEL,
    DEFAULT_QUALITY,
    DEFAULT_SERVER_WAIT,
    DEFAULT_STRATEGY,
    DEFAULT_WORKERS,
)
from pconv_deploy.paths import check_folder_job, check_input_file

if TYPE_CHECKING:
    from pconv_deploy.runtime.pipeline import Report

# Helps too long for one line of the signature.
MODEL_HELP = "Model: .onnx, TensorRT .engine/.plan, or .safetensors (torch). Default: the bundled model."
BACKEND_HELP = "auto picks TensorRT, else ONNX Runtime CUDA, else CPU."
STRATEGY_HELP = (
    "crop: windows around holes at native size; resize: whole image downscaled; "
    "full: whole image at native size (most memory)."
)
PRECISION_HELP = "OpenVINO computes in: auto = f32 (the file's numbers); bf16 / f16 faster, asked for only."
OUTPUT_FORMAT_HELP = (
    "png: lossless, known pixels byte-identical. jpg, webp: lossy, so the KNOWN pixels are re-encoded too. "
    "same: each input's own format."
)


@app.command()
def infer(
    images: Annotated[Path, typer.Option(help="A folder of images (PNG, JPEG, WebP, BMP, TIFF) or one image file.")],
    masks: Annotated[Path, typer.Option(help="A folder of masks paired by file stem, or one mask for all images.")],
    output: Annotated[Path, typer.Option(help="Folder for OUTPUT/<stem>.<format> (same size as the input).")],
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    backend: Annotated[InferBackend, typer.Option(help=BACKEND_HELP)] = InferBackend["auto"],
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles of equal padded size per run.")] = DEFAULT_BATCH_SIZE,
    mask_convention: Annotated[
        MaskConvention, typer.Option(help="hole-white: white (>= 128) marks the hole; hole-black: the inverse.")
    ] = MaskConvention["hole-white"],
    strategy: Annotated[Strategy, typer.Option(help=STRATEGY_HELP)] = Strategy[DEFAULT_STRATEGY],
    max_side: Annotated[int, typer.Option(min=32, help="Longest side the network sees (not full).")] = DEFAULT_MAX_SIDE,
    margin: Annotated[
        int, typer.Option(min=0, help="crop: context px around each hole (at least a quarter of its long side).")
    ] = CROP_MARGIN,
    workers: Annotated[int, typer.Option(min=1, help="Threads for decoding and for writing.")] = DEFAULT_WORKERS,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose output exists (default: skip them).")] = False,
    report: Annotated[Path | None, typer.Option(help="Write a JSON report with every file's status.")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images of more pixels.")] = DEFAULT_MAX_PIXELS,
    server: Annotated[
        list[str] | None, typer.Option(metavar="URL", help="Triton http://HOST:PORT or grpc://HOST:PORT; repeatable.")
    ] = None,
    server_model: Annotated[str, typer.Option(help="Model name on the --server(s).")] = DEFAULT_MODEL_NAME,
    server_wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the model.")] = DEFAULT_SERVER_WAIT,
    inflight: Annotated[int | None, typer.Option(min=1, help="Batches at once [default: 1, 2 per --server].")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (cuda: that GPU or an error).")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU engine threads [default: all cores].")] = None,
    inference_precision: Annotated[InferencePrecision, typer.Option(help=PRECISION_HELP)] = InferencePrecision["auto"],
    memory_limit: Annotated[str | None, typer.Option(help="Memory for the run, e.g. 6GiB [default: 80% free].")] = None,
    output_format: Annotated[OutputFormat, typer.Option(help=OUTPUT_FORMAT_HELP)] = OutputFormat["png"],
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG, WebP quality (100: lossless).")] = DEFAULT_QUALITY,
    png_level: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level (2 fast, 9 small).")] = DEFAULT_PNG_LEVEL,
) -> None:
    """Inpaint a folder of images (or one image).

    One line per failed file; exit 1 if any failed, 130 if interrupted.
    """
    import signal

    from pconv_deploy.infer import FolderOptions, InferOptions, InpaintOptions, default_inflight, infer
    from pconv_deploy.runtime.memory import parse_memory
    from pconv_deploy.runtime.outputs import OutputSettings

    model = check_infer_inputs(images, masks, output, model=model, servers=server, report=report)
    warn_orphan_masks(images, masks, report)
    folder = FolderOptions(
        images=images,
        masks=masks,
        output=output,
        mask_convention=mask_convention.value,
        workers=workers,
        overwrite=overwrite,
        max_pixels=max_pixels,
        encoding=OutputSettings(output_format.value, quality, png_level),
    )
    inpaint = InpaintOptions(
        batch_size=batch_size,
        strategy=strategy.value,
        max_side=max_side,
        margin=margin,
        inflight=inflight or default_inflight(server or ()),
        memory_limit=parse_memory(memory_limit) if memory_limit else "auto",
    )
    options = InferOptions(
        folder=folder,
        inpaint=inpaint,
        model=model,
        backend=backend.value,
        device=device,
        threads=threads,
        precision=inference_precision.value,
        servers=tuple(server or ()),
        server_model=server_model,
        server_wait=server_wait,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as cleanly as Ctrl-C
    result = infer(options, announce=lambda line: typer.echo(line, err=True))
    finish_infer(result, report)


def check_infer_inputs(
    images: Path, masks: Path, output: Path, *, model: Path | None, servers: list[str] | None, report: Path | None
) -> Path | None:
    """Every path checked before a model loads (exit 2, nothing written); the model to run (None: the servers')."""
    from pconv_deploy.runtime.pipeline import visible_files

    if servers and model is not None:
        exit_with_error("--model and --server exclude each other: the servers hold the model", 2)
    if model is None and not servers:
        model = bundled_checkpoint()
    for path, name in ((images, "--images"), (masks, "--masks"), *([(model, "--model")] if model else [])):
        if not path.exists():
            exit_with_error(f"{name} {path}: no such file or folder", 2)
    check_folder_job(images, masks, output, report=report)
    if model is not None:
        check_input_file(model, "--model")
    if images.is_dir() and not visible_files(images):
        exit_with_error(f"--images {images}: no files to inpaint", 2)
    return model


def finish_infer(result: Report, report: Path | None) -> None:
    """The summary line first (never lost to a bad --report), the report, then the exit code."""
    from pconv_deploy.runtime.pipeline import write_report

    ok, skipped, failed = (result.count(s) for s in ("ok", "skipped", "failed"))
    rate = ok / result.seconds if result.seconds > 0 else 0.0
    summary = f"{ok} inpainted, {skipped} skipped (output exists), {failed} failed in {result.seconds:.1f} s"
    typer.echo(f"{summary} ({rate:.3g} images/s, {result.backend})")
    if report is not None:
        try:
            write_report(result, report)
        except OSError as e:
            exit_with_error(f"--report {report}: cannot write the report ({e.strerror or e})")
        typer.echo(f"report: {report}")
    if result.interrupted:
        pending = result.count("pending")
        exit_with_error(f"interrupted: {pending} images not done; run the same command again to finish", 130)
    if failed:
        raise typer.Exit(1)


def warn_orphan_masks(images: Path, masks: Path, report: Path | None) -> None:
    """One warning line per mask no image pairs with (the first MAX_WARNINGS, then a count); all go in the report."""
    from pconv_deploy.runtime.inputs import orphan_masks

    warnings = orphan_masks(images, masks)
    for line in warnings[:MAX_WARNINGS]:
        typer.echo(f"warning: {line}", err=True)
    if len(warnings) > MAX_WARNINGS:
        where = " (all in --report)" if report else ""
        typer.echo(f"warning: and {len(warnings) - MAX_WARNINGS} more masks without an image{where}", err=True)
