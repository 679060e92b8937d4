"""How the bundled demo model (pconv_deploy/assets/pconv-demo.safetensors) was trained.

A quick CPU recipe, not the paper's: L_valid + 6 L_hole + 0.1 TV (no VGG terms), 7 levels at
quarter width, 128x128 crops of scikit-image's photos and the Debian `mate-backgrounds`
wallpapers (apt-get install mate-backgrounds), random stroke masks (5-50 % holes), Adam 2e-4,
batch 8, for a wall-clock budget. The bundled file is 9,196 steps: 3,083 from scratch
(`OUT 2400`, one thread, a busy 2-core machine), then 6,113 with `--init` from them
(`OUT2 1800 --init OUT --threads 2`, fresh Adam state). `pconv train` is the full recipe with
the paper's loss.

Usage: python scripts/train_demo_model.py OUT.safetensors [SECONDS] [--init CHECKPOINT] [--threads N]
"""

import argparse
import glob
import time

import cv2
import numpy as np
import skimage.data
import torch
from PIL import Image

from pconv_deploy.model import PConvUNet, load_checkpoint, save_checkpoint
from pconv_deploy.model.checkpoint import read_metadata

SIZE, BATCH = 128, 8
rng = np.random.default_rng(0)


def load_photos() -> list[np.ndarray]:
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    photos += [skimage.data.hubble_deep_field(), skimage.data.retina(), skimage.data.stereo_motorcycle()[0]]
    for path in sorted(glob.glob("/usr/share/backgrounds/mate/nature/*.jpg")):
        photos.append(np.asarray(Image.open(path).convert("RGB")))
    out = []
    for p in photos:
        s = min(1.0, 1024 / max(p.shape[:2]))
        out.append(cv2.resize(p, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else p)
    return out


def random_crop(photos: list[np.ndarray]) -> np.ndarray:
    p = photos[rng.integers(len(photos))]
    s = rng.uniform(SIZE / min(p.shape[:2]), 1.0)
    q = cv2.resize(p, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else p
    y, x = rng.integers(q.shape[0] - SIZE + 1), rng.integers(q.shape[1] - SIZE + 1)
    crop = q[y : y + SIZE, x : x + SIZE]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def stroke_mask() -> np.ndarray:
    """1 = known, 0 = hole; random polylines until the target hole ratio is reached."""
    m = np.ones((SIZE, SIZE), np.uint8)
    target = rng.uniform(0.05, 0.5)
    while (m == 0).mean() < target:
        x, y = rng.integers(SIZE, size=2)
        for _ in range(rng.integers(2, 8)):
            a, length = rng.uniform(0, 2 * np.pi), rng.integers(5, 40)
            x2 = int(np.clip(x + length * np.cos(a), 0, SIZE - 1))
            y2 = int(np.clip(y + length * np.sin(a), 0, SIZE - 1))
            cv2.line(m, (int(x), int(y)), (x2, y2), 0, int(rng.integers(3, 16)))
            x, y = x2, y2
    return m


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("seconds", type=float, nargs="?", default=2400.0)
    parser.add_argument("--init", help="continue from this checkpoint (fresh optimizer state)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    out, budget = args.out, args.seconds
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    photos = load_photos()
    model = (load_checkpoint(args.init) if args.init else PConvUNet(layers=7, width=0.25)).train()
    done = int(read_metadata(args.init).get("trained_steps", 0)) if args.init else 0
    opt = torch.optim.Adam(model.parameters(), 2e-4)
    t0, step = time.time(), 0
    while time.time() - t0 < budget:
        img = torch.from_numpy(np.stack([random_crop(photos) for _ in range(BATCH)])).permute(0, 3, 1, 2) / 255
        m = torch.from_numpy(np.stack([stroke_mask() for _ in range(BATCH)])).float()[:, None]
        pred = model(img, m)
        comp = m * img + (1 - m) * pred
        valid, hole = (m * (pred - img)).abs().mean(), ((1 - m) * (pred - img)).abs().mean()
        tv = (comp[..., 1:, :] - comp[..., :-1, :]).abs().mean() + (comp[..., 1:] - comp[..., :-1]).abs().mean()
        loss = valid + 6 * hole + 0.1 * tv
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(step, round(time.time() - t0), round(loss.item(), 4), flush=True)
    save_checkpoint(model.eval(), out, extra={"trained_steps": str(done + step)})
    print("wrote", out, "after", step, "steps")


if __name__ == "__main__":
    main()
