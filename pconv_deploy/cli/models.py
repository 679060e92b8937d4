"""`pconv init`, `info`, `import-checkpoint`: checkpoints in, checkpoints out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.cli.base import (
    ImportFormat,
    app,
    bundled_checkpoint,
    exit_with_error,
    parse_size,
)
from pconv_deploy.contract import (
    CHECKPOINT_SUFFIX,
)
from pconv_deploy.paths import (
    check_input_file,
    check_output_file,
)


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
    check_output_file(output, "--output", [(source, "SOURCE")], suffixes=(CHECKPOINT_SUFFIX,))
    from pconv_deploy.model.importers import import_checkpoint

    result = import_checkpoint(source, output, format=format.value, layers=layers)
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
