"""Write a chosen snapshot as the bundled demo model, with its training provenance in the header.

The header's "training" entry lists every phase (v1, or the phases of the shipped model the first
run started from, then each run directory of scripts/train_demo_model.py up to the chosen step:
recipe, steps, wall seconds) and the sha256 of both split files, which tests/test_bundled_model.py
compares with the committed ones.

Usage: python scripts/ship_demo_model.py SNAPSHOT RUN_DIR [RUN_DIR ...] [--out CHECKPOINT]
(RUN_DIRs in training order, the last one holds SNAPSHOT; --out defaults to the bundled model's path.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ASSET = Path(__file__).resolve().parent.parent / "pconv_deploy" / "assets" / "pconv-demo.safetensors"
V1 = {
    "name": "v1",
    "steps": 9196,
    "data": "skimage photos + mate-backgrounds nature (all train-only in the demo corpus)",
    "recipe": "L_valid + 6 L_hole + 0.1 TV, 128x128 crops, batch 8, Adam 2e-4 (the first bundled model)",
}


def phase(run_dir: Path, last_step: int | None) -> dict:
    """A run directory's recipe, steps and summed per-step wall time, up to ``last_step``."""
    config = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if last_step is None or r["step"] < last_step]
    keys = ("data", "size", "batch_size", "finetune", "loss", "hole_bins", "seed")
    lr = config.get("lr") or (5e-5 if config.get("finetune") else 2e-4)  # the loop's defaults
    init = Path(config["init"]).name if config.get("init") else None
    return {
        "name": run_dir.name,
        **{k: config.get(k) for k in keys},
        "lr": lr,
        "init": init,
        "steps": len(rows),
        "wall_seconds": round(sum(r["seconds"] for r in rows)),
    }


def init_step(run_dir: Path) -> int:
    """The step of the snapshot a run directory was started from (--init)."""
    from pconv_deploy.model.checkpoint import read_metadata

    return int(read_metadata(json.loads((run_dir / "config.json").read_text())["init"])["step"])


def earlier_phases(first_run: Path) -> list[dict]:
    """The phases before the first run: v1, or those of a shipped model the run started from (--init)."""
    from pconv_deploy.model.checkpoint import read_metadata

    header = read_metadata(json.loads((first_run / "config.json").read_text())["init"])
    if "training" not in header:
        return [V1]
    earlier = json.loads(header["training"])
    phases = earlier["phases"]
    if "averaged_steps" in earlier:  # that model was a mean of its last phase's snapshots
        phases[-1]["averaged_steps"] = earlier["averaged_steps"]
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args()
    from pconv_deploy.contract import file_sha256
    from pconv_deploy.files import atomic_write
    from pconv_deploy.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from pconv_deploy.train.photos import SPLITS

    header = read_metadata(args.snapshot)
    step = int(header["step"])
    # Each phase counts up to where the next one took its --init snapshot; the last up to SNAPSHOT.
    cutoffs = [init_step(run) for run in args.runs[1:]] + [step]
    phases = earlier_phases(args.runs[0]) + [phase(run, cut) for run, cut in zip(args.runs, cutoffs)]
    training = {
        "phases": phases,
        "train_split_sha256": file_sha256(SPLITS["demo-train"]),
        "heldout_split_sha256": file_sha256(SPLITS["demo-heldout"]),
        "snapshot": args.snapshot.name,
    }
    if "averaged_steps" in header:  # scripts/average_snapshots.py: the mean of these steps of the last phase
        training["averaged_steps"] = json.loads(header["averaged_steps"])
    total = sum(p["steps"] for p in phases)
    with atomic_write(args.out) as tmp:
        save_checkpoint(
            load_checkpoint(args.snapshot), tmp, extra={"training": json.dumps(training), "trained_steps": str(total)}
        )
    print(json.dumps(training, indent=1))
    print(f"wrote {args.out}: {total} steps in all")


if __name__ == "__main__":
    main()
