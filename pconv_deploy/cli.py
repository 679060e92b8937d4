"""The `pconv` command: a thin layer over the Python API.

Every command turns a PConvError into one line on stderr (exit 1); typer turns usage
errors into exit 2. Heavy modules (torch, onnx) are imported inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.errors import PConvError

app = typer.Typer(
    name="pconv",
    help="Partial-convolution inpainting: export to ONNX, check, build TensorRT engines, infer, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def init(
    output: Annotated[Path, typer.Argument(help="Checkpoint to write (.safetensors).")],
    layers: Annotated[int, typer.Option(help="Encoder levels: 8 = the paper at 512, 7 = the common 256 setup.")] = 8,
    width: Annotated[float, typer.Option(help="Channel width multiplier (1.0 = the paper).")] = 1.0,
    input_norm: Annotated[str, typer.Option(help="imagenet | minus_one_one | unit")] = "imagenet",
    seed: Annotated[int, typer.Option(help="Seed for the random initialisation.")] = 0,
) -> None:
    """Write a randomly initialised checkpoint (a starting point for training, or for tests)."""
    import torch

    from pconv_deploy.model import PConvUNet, save_checkpoint

    torch.manual_seed(seed)
    try:
        model = PConvUNet(layers, width, input_norm)
    except ValueError as e:
        fail(str(e), 2)
    save_checkpoint(model, output)
    typer.echo(f"wrote {output}")


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A pconv-deploy checkpoint (.safetensors).")],
    size: Annotated[str, typer.Option(help="HxW at which to count MACs.")] = "512x512",
) -> None:
    """Print a checkpoint's config, parameter count and MACs at a given size."""
    from pconv_deploy.model import feature_macs, load_checkpoint, parameter_count

    model = load_checkpoint(checkpoint)
    h, w = parse_size(size)
    cfg = model.config
    typer.echo(f"checkpoint:   {checkpoint}")
    typer.echo(f"layers:       {cfg.layers}  (H, W multiples of {cfg.multiple})")
    typer.echo(f"width:        {cfg.width}")
    typer.echo(f"input_norm:   {cfg.input_norm}")
    typer.echo(f"parameters:   {parameter_count(model):,}")
    typer.echo(f"GMACs @ {h}x{w}: {feature_macs(model, h, w) / 1e9:.2f}")


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
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
