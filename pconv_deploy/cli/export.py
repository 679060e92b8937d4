"""`pconv export`, `check`, `build-engine`: a checkpoint to a checked ONNX file to a TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.cli.base import (
    Precision,
    app,
    bundled_checkpoint,
    exit_with_error,
)
from pconv_deploy.contract import (
    CHECKPOINT_SUFFIX,
    DEFAULT_OPSET,
    MIN_OPSET,
    ONNX_SUFFIX,
)
from pconv_deploy.errors import first_line
from pconv_deploy.paths import (
    check_input_file,
    check_output_dir,
    check_output_file,
)


@app.command("export")
def export_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write (one self-contained file).")],
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint to export (default: the bundled model).")] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(help="Feature path precision [default: fp32]; the mask path, compositing and I/O stay float32."),
    ] = None,
    fp16: Annotated[bool, typer.Option(help="Same as --precision fp16.")] = False,
    calibration: Annotated[
        Path | None, typer.Option(metavar="DIR", help="int8: photos to calibrate on (masks drawn like training's).")
    ] = None,
    calibration_images: Annotated[
        int | None, typer.Option(min=1, help="int8: use the first N photos of DIR (sorted) [default: 32].")
    ] = None,
    int8_activations: Annotated[
        str, typer.Option(help="int8: u8 (CPU: ONNX Runtime, OpenVINO) or s8 (symmetric: TensorRT).")
    ] = "u8",
    opset: Annotated[
        int, typer.Option(min=MIN_OPSET, help=f"ONNX opset; keep {DEFAULT_OPSET} for TensorRT unless you need another.")
    ] = DEFAULT_OPSET,
    check: Annotated[bool, typer.Option(help="Check parity with PyTorch through Polygraphy before writing.")] = True,
    parity_dir: Annotated[
        Path | None, typer.Option(help="Where the Polygraphy JSON goes (default: OUTPUT_STEM.parity/).")
    ] = None,
) -> None:
    """Export a checkpoint to ONNX, graph- and parity-checked.

    The file carries the model contract (docs/contract.md) in its metadata.
    """
    from pconv_deploy.export import ExportOptions, export_checkpoint
    from pconv_deploy.export.options import resolve_precision
    from pconv_deploy.export.parity import PARITY_FILES, ParityError, default_parity_dir
    from pconv_deploy.export.quantize import Int8Recipe

    options = ExportOptions(  # bad values: one line, exit 2, before any file is looked at
        checkpoint=checkpoint or bundled_checkpoint(),
        output=output,
        precision=resolve_precision(precision.value if precision else None, fp16),
        opset=opset,
        check=check,
        parity_dir=parity_dir,
        calibration=calibration,
        calibration_images=calibration_images,
        recipe=Int8Recipe(activations=int8_activations),
    )
    check_input_file(options.checkpoint, "--checkpoint", (CHECKPOINT_SUFFIX,))
    check_output_file(output, "--output", [(options.checkpoint, "--checkpoint")], suffixes=(ONNX_SUFFIX,))
    if check:
        check_output_dir(parity_dir or default_parity_dir(output), "--parity-dir", files=PARITY_FILES)
    try:
        result = export_checkpoint(options)
    except ParityError as e:
        if e.report is not None:
            typer.echo(e.report.table())
        exit_with_error(str(e))
    except OSError as e:  # a full disk while writing: the temp file is already gone
        exit_with_error(f"{output}: cannot write ({e.strerror or first_line(e)})")
    macs, (h, w) = result.graph.macs, result.graph.mac_size
    size_mb = result.path.stat().st_size / 1e6
    typer.echo(f"wrote {result.path} ({options.precision}, {size_mb:.1f} MB, exported in {result.seconds:.0f} s)")
    typer.echo(f"conv GMACs @ {h}x{w}: {macs.feature / 1e9:.3f} features + {macs.mask_overhead:.2%} mask path")
    if result.parity is not None:
        typer.echo(result.parity.table())
        typer.echo(f"reproduce: {result.parity.polygraphy_command(result.path)}")


@app.command("check")
def check_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="An ONNX model from `pconv export`.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint it was exported from (default: the bundled model).")
    ] = None,
    save_dir: Annotated[
        Path | None, typer.Option(help="Where the Polygraphy JSON goes (default: MODEL_STEM.parity/).")
    ] = None,
    fp64_reference: Annotated[
        bool, typer.Option(help="Compute the PyTorch reference in float64 (slower; separates float32 noise).")
    ] = False,
    photos: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="fp16/int8: score hole L1 on these photos (not the calibration ones)."),
    ] = None,
) -> None:
    """Check an ONNX model against PyTorch.

    FP32: parity through Polygraphy under ONNX Runtime. FP16/INT8: quality against the FP32 model
    (PSNR, hole L1 per bin, known pixels, adversarial masks). Exits 1 on a failure.
    """
    check_input_file(model, "MODEL", (ONNX_SUFFIX,))
    if checkpoint is not None:
        check_input_file(checkpoint, "--checkpoint", (CHECKPOINT_SUFFIX,))
    from pconv_deploy.export.calibration import find_photos
    from pconv_deploy.export.parity import PARITY_FILES, default_parity_dir
    from pconv_deploy.export.verify import check_onnx

    check_output_dir(save_dir or default_parity_dir(model), "--save-dir", files=PARITY_FILES)
    found = find_photos(photos) if photos is not None else None
    report = check_onnx(model, checkpoint, save_dir=save_dir, photos=found, fp64_reference=fp64_reference)
    typer.echo(report.table())
    typer.echo(f"reproduce: {report.polygraphy_command(model)}")
    if not report.passed:
        exit_with_error(f"{model}: {report.kind} check failed ({report.summary()})")


@app.command("build-engine")
def build_engine_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The exported ONNX model (from `pconv export`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Engine file to write; its sidecar is ENGINE.json.")],
    fp16: Annotated[
        bool, typer.Option(help="Require an FP16 graph (`pconv export --fp16`): TensorRT takes precision from it.")
    ] = False,
    precision: Annotated[
        Precision | None, typer.Option(help="Require a graph of this precision (--fp16 = --precision fp16).")
    ] = None,
    min_shape: Annotated[list[str] | None, typer.Option(metavar="BxHxW", help="Smallest shape, per profile.")] = None,
    opt_shape: Annotated[list[str] | None, typer.Option(metavar="BxHxW", help="Tuned-for shape, per profile.")] = None,
    max_shape: Annotated[list[str] | None, typer.Option(metavar="BxHxW", help="Largest shape, per profile.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache to reuse and update.")] = None,
    workspace: Annotated[float | None, typer.Option(help="Builder workspace limit in GiB.")] = None,
    version_compatible: Annotated[
        bool,
        typer.Option(help="Embed a lean runtime: any later TensorRT, or tensorrt_lean alone, can run the engine."),
    ] = False,
    exclude_lean_runtime: Annotated[
        bool,
        typer.Option(help="With --version-compatible: leave the lean runtime out (smaller; needs this exact version)."),
    ] = False,
    device: Annotated[int, typer.Option(help="CUDA device to build for.")] = 0,
) -> None:
    """Build a TensorRT engine and its sidecar JSON. Needs a GPU.

    The network is strongly typed: the precision comes from the ONNX graph.
    """
    check_input_file(model, "MODEL", (ONNX_SUFFIX,))
    check_output_file(output, "--output", [(model, "MODEL")])
    check_output_file(Path(f"{output}.json"), "--output", [(model, "MODEL")])  # its sidecar, written after the build
    if timing_cache is not None:
        check_output_file(timing_cache, "--timing-cache", [(model, "MODEL"), (output, "--output")])
    from pconv_deploy.engines.build import build_engine, plan_build

    plan = plan_build(
        model,
        output,
        fp16=fp16,
        precision=precision.value if precision else None,
        min_shapes=min_shape,
        opt_shapes=opt_shape,
        max_shapes=max_shape,
        timing_cache=timing_cache,
        workspace_gib=workspace,
        version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime,
    )
    sidecar = build_engine(plan, device=device)
    typer.echo(f"wrote {plan.output} ({sidecar.precision}, TensorRT {sidecar.tensorrt_version}, {sidecar.gpu_name})")
    for i, profile in enumerate(plan.profiles):
        typer.echo(f"  profile {i}: {profile}")
