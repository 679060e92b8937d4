"""The `pconv` app itself and what its commands share: the choice types, errors, the bundled model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.contract import (
    BACKENDS,
    IMPORT_FORMATS,
    INFERENCE_PRECISIONS,
    MASK_CONVENTIONS,
    OUTPUT_FORMATS,
    PRECISIONS,
    STRATEGIES,
)
from pconv_deploy.errors import PConvError

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


def choices(name: str, words: tuple[str, ...]) -> type[Enum]:
    """A typer choice type whose values are a vocabulary list of contract.py (spelled there, once)."""
    return Enum(name, {word: word for word in words}, type=str)


ImportFormat = choices("ImportFormat", ("auto", *IMPORT_FORMATS))


Precision = choices("Precision", PRECISIONS)


InferBackend = choices("InferBackend", BACKENDS)


InferencePrecision = choices("InferencePrecision", INFERENCE_PRECISIONS)


MaskConvention = choices("MaskConvention", MASK_CONVENTIONS)


Strategy = choices("Strategy", STRATEGIES)


OutputFormat = choices("OutputFormat", OUTPUT_FORMATS)


MAX_WARNINGS = 10  # warning lines printed before "and N more"


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
