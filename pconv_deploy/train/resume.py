"""Setting up a run folder: resume from its save (or refuse), or start fresh; undo a start that failed.

Resume reads state.pt alone (see state.py). Without it, a folder holding a run's results is refused,
never silently restarted from step 0 over it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pconv_deploy.errors import PConvError, first_line

if TYPE_CHECKING:
    from pconv_deploy.train.loop import Run, TrainConfig


class RunLock:
    """An exclusive flock on the run folder, held by rank 0 while it trains; a kill releases it.

    A second `pconv train` on the same folder would resume from the first one's save and both would
    write there: it is refused in one line instead.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.fd = run_dir, None
        self.acquire()

    def acquire(self) -> None:
        """Lock the folder if it exists (called again once it is made)."""
        import fcntl

        if self.fd is not None or not self.run_dir.is_dir():
            return
        fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PConvError(f"{self.run_dir}: another pconv train is running in this folder") from None
        except OSError:  # a file system without locks (some network mounts): go on unlocked
            os.close(fd)
            return
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def load_model(cfg: TrainConfig, d, log: Callable[[str], None]):
    """-> (model, optimizer state or None, start step, settings): the run in cfg.output, --init, or random.

    Resume reads state.pt alone. Without it, a folder holding a run's results is refused, never
    silently restarted from step 0.
    """
    import torch

    from pconv_deploy.model.unet import PConvUNet
    from pconv_deploy.train import state

    run_dir = Path(cfg.output)
    settings = cfg.recipe()
    if state.has_state(run_dir):
        model, optimizer_state, start, saved = state.load_state(run_dir)
        settings["lr"] = check_same_recipe(run_dir, cfg, saved, config=model.config, log=log if d.is_main else None)
        if d.is_main:
            log(f"resuming {run_dir} at step {start} (architecture from its checkpoint)")
        return model, optimizer_state, start, settings
    state.check_no_lost_run(run_dir)
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


def check_same_recipe(
    run_dir: Path, cfg: TrainConfig, saved: dict, *, config, log: Callable[[str], None] | None
) -> float:
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


def make_optimizer(model, optimizer_state: dict | None, lr: float, *, state_path: Path):
    """Adam over the trainable parameters, with a resumed run's per-parameter state (checked).

    The hyperparameters are the run's own, not the file's: a hand-edited beta or eps cannot slip in.
    """
    import torch

    from pconv_deploy.train import state

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if optimizer_state is not None:
        fresh = optimizer.state_dict()["param_groups"]
        try:
            optimizer.load_state_dict({"state": optimizer_state["state"], "param_groups": fresh})
        except Exception as e:  # keys or values torch cannot map onto the parameters
            raise PConvError(f"{state_path}: optimizer state does not fit the model ({first_line(e)})") from None
        state.check_optimizer(state_path, optimizer)
    return optimizer


def write_run_files(run: Run, log: Callable[[str], None]) -> None:
    """Rank 0: the run folder, config.json and history.jsonl (cut back to the resumed step)."""
    from pconv_deploy.files import write_text_atomic
    from pconv_deploy.train import state

    cfg, run_dir = run.cfg, Path(run.cfg.output)
    snapshots = run_dir / state.SNAPSHOTS
    if cfg.keep_every and snapshots.exists() and not snapshots.is_dir():
        raise PConvError(f"{snapshots}: not a folder, so --keep-every cannot keep snapshots in it")
    if not run_dir.is_dir():
        run_dir.mkdir(parents=True)
        run.made_files.append(run_dir)
        run.lock.acquire()
    history, bad = state.read_history(run_dir, before_step=run.start)
    if bad:
        log(f"{run_dir / state.HISTORY}: ignored {bad} line(s) that are not a JSON object with an integer step")
    if run.start == 0 and (run_dir / state.HISTORY).is_file():
        log(f"{run_dir}: no save to resume from yet ({state.HISTORY} without {state.STATE}): starting at step 0")
    run.history = history
    for name, text in (
        (state.HISTORY, "".join(json.dumps(r) + "\n" for r in history)),
        ("config.json", json.dumps({**asdict(cfg), "world_size": run.d.world_size}, default=str)),
    ):
        if not (run_dir / name).exists():
            run.made_files.append(run_dir / name)
        try:
            write_text_atomic(run_dir / name, text)
        except OSError as e:
            raise PConvError(f"{run_dir / name}: cannot write ({e.strerror or e})") from None
    if run.start and state.checkpoint_step(run_dir) != str(run.start):  # a kill between state.pt and it
        state.save_model(run.model, run_dir / state.CHECKPOINT, run.start, settings=run.settings)
        log(f"{run_dir / state.CHECKPOINT}: rewritten from {state.STATE} (step {run.start})")
    snapshot = state.snapshot_path(run_dir, run.start)
    if run.start and cfg.keep_every and run.start % cfg.keep_every == 0 and not snapshot.exists():
        state.save_model(run.model, snapshot, run.start, settings=run.settings)  # the kill came before it


def discard_unsaved_start(run: Run) -> None:
    """After a failure before the first save of a new run: remove what this start wrote (rank 0)."""
    if not run.d.is_main or run.saved_step or not run.made_files:
        return
    for path in reversed(run.made_files):
        try:
            path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
        except OSError:  # a folder that is not empty (other files were put there) stays
            pass
