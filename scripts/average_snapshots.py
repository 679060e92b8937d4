"""Average the weights (and BatchNorm statistics) of several snapshots of one run into one checkpoint.

Late in a constant-learning-rate run, snapshots scatter around a minimum; their mean usually
sits nearer to it than any one of them (Izmailov et al. 2018, "Averaging Weights Leads to Wider
Optima"). The header keeps the run's settings and the averaged steps.

Usage: python scripts/average_snapshots.py OUT.safetensors SNAPSHOT [SNAPSHOT ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("snapshots", type=Path, nargs="+")
    args = parser.parse_args()
    import torch

    from pconv_deploy.files import atomic_write
    from pconv_deploy.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    models = [load_checkpoint(p) for p in args.snapshots]
    configs = {json.dumps(m.config.to_dict(), sort_keys=True) for m in models}
    if len(configs) != 1:
        raise SystemExit(f"error: the snapshots have different architectures: {sorted(configs)}")
    states = [m.state_dict() for m in models]
    mean = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            mean[key] = torch.stack([s[key] for s in states]).mean(dim=0)
        else:  # e.g. BatchNorm's num_batches_tracked: keep the last snapshot's
            mean[key] = states[-1][key]
    models[-1].load_state_dict(mean)
    meta = [read_metadata(p) for p in args.snapshots]
    steps = [int(m["step"]) for m in meta]
    extra = {"step": str(max(steps)), "settings": meta[-1].get("settings", "{}"), "averaged_steps": json.dumps(steps)}
    with atomic_write(args.out) as tmp:
        save_checkpoint(models[-1], tmp, extra=extra)
    print(f"wrote {args.out}: mean of {len(steps)} snapshots, steps {steps}")


if __name__ == "__main__":
    main()
