"""A run directory: model checkpoint, resumable optimizer state, loss history.

    RUN/last.safetensors   the model (pconv-deploy checkpoint; header also holds "step")
    RUN/state.pt           optimizer state, step and run settings; torch.save, read back with
                           torch.load(weights_only=True), so loading never runs pickled code
    RUN/history.jsonl      one JSON line of loss terms per step

Batches are a pure function of (seed, rank, step), so no RNG or data-loader state is needed to
resume: the next step after a resume sees exactly the batch it would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

from pconv_deploy.errors import PConvError
from pconv_deploy.files import atomic_write, write_text_atomic

CHECKPOINT = "last.safetensors"
STATE = "state.pt"
HISTORY = "history.jsonl"
# Every file a run writes in its folder: `pconv train` checks first that none of these names is a folder.
RUN_FILES = (CHECKPOINT, STATE, HISTORY, "config.json", "loss_curve.png", "samples.png", "train.json")


def has_state(run_dir: Path) -> bool:
    return (run_dir / STATE).is_file() and (run_dir / CHECKPOINT).is_file()


def save_model(model, path: Path, step: int, settings: dict) -> Path:
    """A checkpoint with the run's step and settings in its header, written atomically."""
    from pconv_deploy.model.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_checkpoint(model, tmp, extra={"step": str(step), "settings": json.dumps(settings)})
    return path


def save_state(run_dir: Path, model, optimizer, step: int, settings: dict) -> None:
    """Checkpoint first, then the state that points at it; each atomically (fsynced temp file, rename)."""
    import torch

    save_model(model, run_dir / CHECKPOINT, step, settings)
    with atomic_write(run_dir / STATE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "settings": json.dumps(settings)}, tmp)


def load_state(run_dir: Path, device: str = "cpu"):
    """-> (model, optimizer_state_dict, step, settings) of an interrupted or finished run."""
    import torch

    from pconv_deploy.model.checkpoint import load_checkpoint, read_metadata

    path = run_dir / STATE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        step, settings = int(state["step"]), json.loads(state["settings"])
    except Exception as e:  # a truncated or foreign file: one clear line
        raise PConvError(f"{path}: cannot read training state ({type(e).__name__}: {e})") from None
    ckpt_step = read_metadata(run_dir / CHECKPOINT).get("step")
    if ckpt_step != str(step):
        raise PConvError(
            f"{run_dir}: {CHECKPOINT} is at step {ckpt_step} but {STATE} at step {step}; remove one to restart"
        )
    return load_checkpoint(run_dir / CHECKPOINT, device=device), state["optimizer"], step, settings


def read_history(run_dir: Path, before_step: int | None = None) -> list[dict[str, float]]:
    path = run_dir / HISTORY
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
    return [r for r in rows if before_step is None or r["step"] < before_step]


def write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite the whole file (after a resume drops steps past the checkpoint)."""
    write_text_atomic(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in rows))


def append_history(run_dir: Path, row: dict[str, float]) -> None:
    """One line appended per step; a line cut by a kill is dropped on read, and resume rewrites the file."""
    with open(run_dir / HISTORY, "a") as f:
        f.write(json.dumps(row) + "\n")
