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

CHECKPOINT = "last.safetensors"
STATE = "state.pt"
HISTORY = "history.jsonl"


def has_state(run_dir: Path) -> bool:
    return (run_dir / STATE).is_file() and (run_dir / CHECKPOINT).is_file()


def save_state(run_dir: Path, model, optimizer, step: int, settings: dict) -> None:
    """Checkpoint first, then the state that points at it; each written to a temp file and renamed."""
    import torch

    from pconv_deploy.model.checkpoint import save_checkpoint

    save_checkpoint(model, run_dir / CHECKPOINT, extra={"step": str(step), "settings": json.dumps(settings)})
    tmp = run_dir / f".{STATE}.tmp"
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "settings": json.dumps(settings)}, tmp)
    tmp.replace(run_dir / STATE)


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
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if before_step is None or r["step"] < before_step]


def write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite the whole file (after a resume drops steps past the checkpoint)."""
    tmp = run_dir / f".{HISTORY}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(run_dir / HISTORY)


def append_history(run_dir: Path, row: dict[str, float]) -> None:
    with open(run_dir / HISTORY, "a") as f:
        f.write(json.dumps(row) + "\n")
