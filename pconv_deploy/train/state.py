"""A run directory: one self-contained resume file, the model checkpoint, the loss history.

    RUN/state.pt           THE save: model weights and config, optimizer state, step and run settings
                           in one file, replaced atomically (fsynced temp file, rename). torch.save, read
                           back with torch.load(weights_only=True), so loading never runs pickled code.
    RUN/last.safetensors   the model at the same step, for users (--init, export, evaluate); written
                           after state.pt, and rewritten from it on resume when a kill left it behind
    RUN/history.jsonl      one JSON line of loss terms per step

A kill at any instant leaves state.pt either at the previous save or at the new one, never between:
resume reads nothing else. Batches are a pure function of (seed, rank, step), so no RNG or data-loader
state is needed to resume: the next step after a resume sees exactly the batch it would have seen.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.files import atomic_write, clean_stale_temps, write_text_atomic

CHECKPOINT = "last.safetensors"
STATE = "state.pt"
HISTORY = "history.jsonl"
SNAPSHOTS = "snapshots"
STATE_FORMAT = "pconv-deploy.train-state/2"  # 1 (no "format" key): optimizer only, weights in last.safetensors
# Every file a run writes in its folder: `pconv train` checks first that none of these names is a folder.
RUN_FILES = (CHECKPOINT, STATE, HISTORY, "config.json", "loss_curve.png", "samples.png", "train.json")
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


def has_state(run_dir: Path) -> bool:
    """Whether the folder holds a save to resume from (a state.pt that is not a regular file is refused)."""
    path = run_dir / STATE
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as e:
        raise PConvError(f"{path}: cannot read training state ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise PConvError(f"{path}: not a regular file; a run's state.pt is a file written by pconv train")
    return True


def check_no_lost_run(run_dir: Path) -> None:
    """Without state.pt, refuse a folder that holds a run's results rather than start over it from step 0."""
    found = [n for n in (CHECKPOINT, "train.json") if (run_dir / n).exists()]
    if (run_dir / SNAPSHOTS).is_dir() and any((run_dir / SNAPSHOTS).iterdir()):
        found.append(f"{SNAPSHOTS}/")
    if found:
        raise PConvError(
            f"{run_dir / STATE}: missing, but {run_dir} holds a run ({', '.join(found)}); it cannot be resumed "
            f"and is not overwritten: start a new run directory (e.g. with --init {run_dir / CHECKPOINT})"
        )


def clean_temps(run_dir: Path) -> int:
    """Remove the temp files of killed runs (their process is gone) from the run and snapshot folders."""
    return clean_stale_temps(run_dir) + clean_stale_temps(run_dir / SNAPSHOTS)


def snapshot_path(run_dir: Path, step: int) -> Path:
    """RUN/snapshots/step-NNNNNN.safetensors, kept every --keep-every steps."""
    return run_dir / SNAPSHOTS / f"step-{step:06d}.safetensors"


def save_model(model, path: Path, step: int, *, settings: dict) -> Path:
    """A checkpoint with the run's step and settings in its header (save_checkpoint writes atomically)."""
    from pconv_deploy.model.checkpoint import save_checkpoint

    return save_checkpoint(model, path, extra={"step": str(step), "settings": json.dumps(settings)})


def save_state(run_dir: Path, model, optimizer, *, step: int, settings: dict) -> None:
    """The save: state.pt, one atomic rename (the caller writes last.safetensors after it)."""
    import torch

    payload = {
        "format": STATE_FORMAT,
        "step": step,
        "settings": json.dumps(settings),
        "config": json.dumps(model.config.to_dict()),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    with atomic_write(run_dir / STATE) as tmp:
        torch.save(payload, tmp)


def load_state(run_dir: Path, device: str = "cpu"):
    """-> (model, optimizer_state_dict, step, settings) of an interrupted or finished run."""
    import torch

    path = run_dir / STATE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated, foreign or hand-edited file: one clear line
        raise PConvError(f"{path}: cannot read training state ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(state, dict):
        raise PConvError(f"{path}: not a training state (a {type(state).__name__}, not a dict)")
    step, settings = _step_and_settings(path, state)
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict):
        raise PConvError(f"{path}: no optimizer state (the 'optimizer' entry is missing or not a dict)")
    if "model" in state:
        model = _model_from_state(path, state, device)
    else:
        model = _model_from_legacy_pair(run_dir, step, device)
    return model, optimizer, step, settings


def _step_and_settings(path: Path, state: dict) -> tuple[int, dict]:
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise PConvError(f"{path}: 'step' must be a non-negative integer, got {step!r:.40}")
    try:
        settings = json.loads(state.get("settings"))
    except (TypeError, ValueError) as e:
        raise PConvError(f"{path}: 'settings' is not JSON ({first_line(e)})") from None
    if not isinstance(settings, dict):
        raise PConvError(f"{path}: 'settings' must be a JSON object")
    lr = settings.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0):
        raise PConvError(f"{path}: the learning rate in 'settings' must be a finite number > 0, got {lr!r:.40}")
    return step, settings


def _model_from_state(path: Path, state: dict, device: str):
    """The model saved inside state.pt: config, then every tensor (strict), all finite."""
    import torch

    from pconv_deploy.model.unet import PConvConfig, PConvUNet

    try:
        config = PConvConfig(**json.loads(state["config"]))
        model = PConvUNet(**config.to_dict())
    except (KeyError, TypeError, ValueError) as e:
        raise PConvError(f"{path}: invalid model config ({type(e).__name__}: {first_line(e)})") from None
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise PConvError(f"{path}: 'model' must map names to tensors")
    try:
        model.load_state_dict(weights, strict=True)
    except Exception as e:  # missing/unexpected keys, shapes, dtypes torch cannot copy
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise PConvError(f"{path}: the weights do not fit the model config ({lines[-1] if lines else e})") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PConvError(f"{path}: weight {name} holds NaN or infinite values")
    return model.to(device)


def _model_from_legacy_pair(run_dir: Path, step: int, device: str):
    """A run saved by an older version (state.pt without weights): last.safetensors must be at the same step."""
    from pconv_deploy.model.checkpoint import load_checkpoint, read_metadata

    ckpt_step = read_metadata(run_dir / CHECKPOINT).get("step")
    if ckpt_step != str(step):
        raise PConvError(
            f"{run_dir}: {CHECKPOINT} is at step {ckpt_step} but {STATE} at step {step} (an older version's save "
            f"was interrupted); start a new run directory with --init {run_dir / CHECKPOINT}"
        )
    return load_checkpoint(run_dir / CHECKPOINT, device=device)


def check_optimizer(path: Path, optimizer) -> None:
    """After load_state_dict: every parameter's Adam state is tensors shaped like it, finite, step >= 1.

    torch checks only the number of parameters; a hand-edited state would fail mid-step, or train on NaN.
    """
    import torch

    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            entry = optimizer.state.get(param)
            if not entry:
                continue  # a parameter without state starts fresh, as Adam does at step 1
            for key in ADAM_STATE:
                value = entry.get(key)
                if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                    raise PConvError(f"{path}: optimizer state of parameter {i}: '{key}' is not a float tensor")
                if key != "step" and value.shape != param.shape:
                    raise PConvError(
                        f"{path}: optimizer state of parameter {i}: '{key}' has shape {list(value.shape)}, "
                        f"the parameter {list(param.shape)}"
                    )
                if not bool(torch.isfinite(value).all()) or (key == "step" and not float(value) >= 1):
                    raise PConvError(f"{path}: optimizer state of parameter {i}: '{key}' is not finite (or step < 1)")


def checkpoint_step(run_dir: Path) -> str | None:
    """The step in last.safetensors' header; None when it is missing or unreadable."""
    from pconv_deploy.model.checkpoint import read_metadata

    try:
        return read_metadata(run_dir / CHECKPOINT).get("step")
    except PConvError:
        return None


def read_history(run_dir: Path, before_step: int | None = None) -> tuple[list[dict], int]:
    """-> (rows, lines ignored): rows are JSON objects with an integer step; other lines are skipped.

    The last line of a killed run may be cut short; a hand-edited or damaged line is not worth
    refusing a resume for (the caller says how many were ignored).
    """
    path = run_dir / HISTORY
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for line in path.read_bytes().splitlines():
        try:
            row = json.loads(line.decode())
        except (UnicodeDecodeError, ValueError):
            row = None
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, bool) or not isinstance(step, int):
            bad += bool(line.strip())
            continue
        if before_step is None or step < before_step:
            rows.append(row)
    return rows, bad


def write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite the whole file (after a resume drops steps past the checkpoint)."""
    write_text_atomic(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in rows))


def append_history(run_dir: Path, row: dict[str, float]) -> None:
    """One line appended per step; a line cut by a kill is dropped on read, and resume rewrites the file."""
    with open(run_dir / HISTORY, "a") as f:
        f.write(json.dumps(row) + "\n")
