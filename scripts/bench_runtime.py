"""Images/s of the torch and onnxruntime backends through the runtime, measured in one run.

    .venv/bin/python scripts/bench_runtime.py [--layers 7] [--width 0.25] [--sizes 256,512] [--batch 1,4]

Builds a random checkpoint of the given shape (or takes --checkpoint), exports it to ONNX, then
times ``Inpainter.inpaint`` (strategy full: padding, batching and compositing included) on
stroke-masked crops of a scikit-image photo. Timings vary 20-30% between runs on shared
machines, so compare the ratios printed in one run rather than absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from pconv_deploy.masks import straight_strokes


def images_per_second(inpainter, images, masks, repeats: int) -> float:
    inpainter.inpaint(images[: inpainter.batch_size], masks[: inpainter.batch_size])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        inpainter.inpaint(images, masks)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of a random one")
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--sizes", default="256,512", help="square image sides")
    parser.add_argument("--batch", default="1,4", help="batch sizes")
    parser.add_argument("--images", type=int, default=8, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the best counts)")
    args = parser.parse_args()

    import torch

    from pconv_deploy.export.onnx_export import export_onnx
    from pconv_deploy.model import PConvUNet, load_checkpoint, save_checkpoint
    from pconv_deploy.runtime import Inpainter, InpaintOptions

    tmp = Path(tempfile.mkdtemp(prefix="pconv-bench-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(PConvUNet(args.layers, args.width).eval(), tmp / "bench.safetensors")
    model = load_checkpoint(checkpoint)
    onnx_path = export_onnx(model, tmp / "bench.onnx")
    cfg = model.config
    print(f"model: layers={cfg.layers} width={cfg.width}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    photo = cv2.resize(skimage.data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    print(f"{'size':>6} {'batch':>5} {'torch img/s':>12} {'onnxruntime img/s':>18} {'ort/torch':>10}")
    for size in [int(s) for s in args.sizes.split(",")]:
        images = [np.ascontiguousarray(photo[i * 8 : i * 8 + size, i * 8 : i * 8 + size]) for i in range(args.images)]
        masks = [straight_strokes(size, size, rng, count=5, widths=(8, 23), lengths=(size / 4, size)) for _ in images]
        for batch in [int(b) for b in args.batch.split(",")]:
            rates = {}
            for backend, path in (("torch", checkpoint), ("onnxruntime", onnx_path)):
                options = InpaintOptions(batch_size=batch, strategy="full")
                inpainter = Inpainter.from_path(path, options, backend=backend)
                rates[backend] = images_per_second(inpainter, images, masks, args.repeats)
            ratio = rates["onnxruntime"] / rates["torch"]
            print(f"{size:>6} {batch:>5} {rates['torch']:>12.2f} {rates['onnxruntime']:>18.2f} {ratio:>9.2f}x")


if __name__ == "__main__":
    main()
