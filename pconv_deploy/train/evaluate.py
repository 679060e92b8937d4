"""Evaluation as in the paper: L1 (%), PSNR and SSIM per hole-ratio bin on composited outputs,
plus the mean L1 inside the holes (0-255), which does not shrink with the known area.

Every method is a *predictor*: ``predict(images, holes) -> outputs`` on uint8 HxWx3 RGB images
and bool HxW hole masks (True = hole), returning uint8 images. That is what a user gets from any
of them, so all are scored the same way, on whole images:

- a checkpoint, run in PyTorch (composited, clamped, rounded to uint8);
- a deployed model (``.onnx``, TensorRT engine) through ``pconv_deploy.runtime.Inpainter``,
  so the numbers describe what is served;
- OpenCV's ``cv2.inpaint`` (Telea), the classical baseline, in the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pconv_deploy.errors import PConvError, UsageError
from pconv_deploy.masks import HOLE_BINS, bin_label, irregular

MAX_MASKS_PER_BIN = 100  # every sample keeps its mask in memory: images x 6 bins x this x size^2 bytes
TABLE, SCORES, CHART = "evaluation.md", "evaluation.json", "evaluation.png"
EVALUATION_FILES = (TABLE, SCORES, CHART)  # what an evaluation writes into its output folder
Predict = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 HxWx3, the ground truth
    hole: np.ndarray  # bool HxW, True = hole
    bin_index: int


@dataclass(frozen=True)
class BinScore:
    method: str
    bin_index: int
    count: int
    l1_percent: float
    psnr: float
    ssim: float
    hole_l1: float  # mean |output - truth| over hole pixels and channels, 0-255
    hole_bias: tuple[float, float, float]  # mean signed (output - truth) in the holes per R, G, B: colour casts


def l1_percent(output: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error over all pixels and channels, in percent of the 0-255 range."""
    return float(np.abs(output.astype(np.float64) - truth.astype(np.float64)).mean() / 255.0 * 100.0)


def hole_l1(output: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> float:
    """Mean absolute error over the hole pixels and channels, on the 0-255 scale."""
    return float(np.abs(output[hole].astype(np.float64) - truth[hole].astype(np.float64)).mean())


def hole_bias(output: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Mean signed error per channel over the hole pixels (0-255): a colour cast shows as unequal values."""
    return (output[hole].astype(np.float64) - truth[hole].astype(np.float64)).mean(axis=0)


def psnr(output: np.ndarray, truth: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(truth, output, data_range=255))


def ssim(output: np.ndarray, truth: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(truth, output, channel_axis=2, data_range=255))


def make_samples(images: Sequence[np.ndarray], masks_per_bin: int, seed: int = 0) -> list[Sample]:
    """``masks_per_bin`` seeded masks per image and bin; the same seed gives the same test set."""
    samples = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        for b, hole_bin in enumerate(HOLE_BINS):
            for k in range(masks_per_bin):
                hole = irregular(h, w, np.random.default_rng([seed, i, b, k]), hole_range=hole_bin)
                samples.append(Sample(image, hole, b))
    return samples


def score(method: str, predict: Predict, samples: Sequence[Sample], *, batch_size: int = 8) -> list[BinScore]:
    """Run ``predict`` over the samples in batches and average each metric per bin."""
    per_bin: dict[int, list[np.ndarray]] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        outputs = predict([s.image for s in chunk], [s.hole for s in chunk])
        for s, out in zip(chunk, outputs):
            values = [l1_percent(out, s.image), psnr(out, s.image), ssim(out, s.image), hole_l1(out, s.image, s.hole)]
            per_bin.setdefault(s.bin_index, []).append(np.array([*values, *hole_bias(out, s.image, s.hole)]))
    scores = []
    for b in sorted(per_bin):
        m = np.mean(per_bin[b], axis=0)
        bias = (float(m[4]), float(m[5]), float(m[6]))
        scores.append(BinScore(method, b, len(per_bin[b]), float(m[0]), float(m[1]), float(m[2]), float(m[3]), bias))
    return scores


def telea_predictor(radius: int = 3) -> Predict:
    """OpenCV's Telea inpainting (fast marching); known pixels are kept by construction."""
    import cv2

    def predict(images: Sequence[np.ndarray], holes: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [cv2.inpaint(img, hole.astype(np.uint8), radius, cv2.INPAINT_TELEA) for img, hole in zip(images, holes)]

    return predict


def checkpoint_predictor(checkpoint: str | Path, device: str = "cpu") -> tuple[Predict, int]:
    """A checkpoint in PyTorch: composite(image, mask, raw), clamped and rounded to uint8. -> (predict, multiple)."""
    import torch

    from pconv_deploy.model.checkpoint import load_checkpoint
    from pconv_deploy.model.unet import composite

    model = load_checkpoint(checkpoint, device=device).eval()

    def predict(images: Sequence[np.ndarray], holes: Sequence[np.ndarray]) -> list[np.ndarray]:
        image = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0).permute(0, 3, 1, 2).to(device)
        mask = torch.from_numpy(~np.stack(holes)[:, None]).float().to(device)
        with torch.no_grad():
            out = composite(image, mask, model(image, mask)).clamp(0, 1)
        out = (out.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        return list(out)

    return predict, model.config.multiple


def runtime_predictor(model_path: str | Path, backend: str = "auto") -> Predict:
    """A deployed model through the runtime, whole image at native size (the runtime pads)."""
    from pconv_deploy.runtime import Inpainter, InpaintOptions  # numpy + onnxruntime: no torch

    inpainter = Inpainter.from_path(model_path, InpaintOptions(strategy="full"), backend=backend)

    def predict(images: Sequence[np.ndarray], holes: Sequence[np.ndarray]) -> list[np.ndarray]:
        return inpainter.inpaint(list(images), list(holes))

    return predict


def markdown_table(scores: Sequence[BinScore]) -> str:
    """One row per bin, one column group per method: L1s lower is better, PSNR and SSIM higher."""
    methods = list(dict.fromkeys(s.method for s in scores))
    by_key = {(s.method, s.bin_index): s for s in scores}
    labels = ("hole L1", "L1 (%)", "PSNR (dB)", "SSIM")
    header = ["hole ratio", "n"] + [f"{m} {label}" for m in methods for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b in sorted({s.bin_index for s in scores}):
        row = [bin_label(HOLE_BINS[b]), str(by_key[(methods[0], b)].count)]
        for m in methods:
            s = by_key.get((m, b))
            row += [f"{s.hole_l1:.2f}", f"{s.l1_percent:.2f}", f"{s.psnr:.2f}", f"{s.ssim:.3f}"] if s else [""] * 4
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def crop_images(
    paths: Sequence[Path], size: int, *, photo_scale: bool = False, skipped: dict[Path, str] | None = None
) -> list[np.ndarray]:
    """The centre ``size`` x ``size`` crop of each image (upscaled first if smaller).

    ``photo_scale``: photos of a recorded split are first resized to the corpus scale, as in training.
    ``skipped``: unusable files (corrupt, over the size limits) are recorded there and left out;
    without it the first one raises.
    """
    from pconv_deploy.train.data import BadImage, center_crop, load_image

    crops = []
    for path in paths:
        try:
            image = load_image(path, photo_scale)
        except BadImage as e:
            if skipped is None:
                raise
            skipped[path] = str(e)
            continue
        crops.append(np.ascontiguousarray(center_crop(image, size)))
    return crops


@dataclass
class EvalReport:
    scores: list[BinScore]
    table: str
    table_path: Path
    chart_path: Path
    skipped: dict[str, str] = field(default_factory=dict)  # unusable image files left out: path -> why


def load_samples(
    data: str | Path,
    size: int = 256,
    *,
    masks_per_bin: int = 4,
    seed: int = 0,
    max_images: int | None = None,
    skipped: dict[Path, str] | None = None,
) -> tuple[list[Sample], int]:
    """The test set: centre crops of ``data`` (a folder, "builtin" or a recorded split) with seeded masks.

    -> (samples, images used). Unusable files are left out (and recorded in ``skipped``); none usable raises.
    """
    from pconv_deploy.train.data import image_paths
    from pconv_deploy.train.photos import SPLITS

    paths = image_paths(data)[:max_images]
    skipped = {} if skipped is None else skipped
    crops = crop_images(paths, size, photo_scale=str(data) in SPLITS, skipped=skipped)
    if not crops:
        raise PConvError(f"none of the {len(paths)} images is usable (e.g. {next(iter(skipped.values()))})")
    return make_samples(crops, masks_per_bin, seed), len(crops)


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """One evaluation, checked once (bad values: UsageError, the CLI's exit 2) before any file is read:
    exactly one of ``checkpoint`` (run in PyTorch) or ``model`` (ONNX / engine, through the runtime)."""

    data: str | Path  # a folder of test images, "builtin" or a recorded split
    output: Path
    checkpoint: Path | None = None
    model: Path | None = None
    masks_per_bin: int = 4
    seed: int = 0
    size: int = 256
    max_images: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("output", "checkpoint", "model"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Path(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        from pconv_deploy.train.data import MAX_SIZE

        if (self.checkpoint is None) == (self.model is None):
            raise UsageError("give exactly one of --checkpoint (PyTorch) or --model (ONNX / engine, via the runtime)")
        if not 1 <= self.size <= MAX_SIZE:
            raise UsageError(f"--size must be between 1 and {MAX_SIZE}, got {self.size}")
        if not 1 <= self.masks_per_bin <= MAX_MASKS_PER_BIN:
            raise UsageError(f"--masks-per-bin must be between 1 and {MAX_MASKS_PER_BIN}, got {self.masks_per_bin}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be between 0 and 2^63 - 1, got {self.seed}")
        if self.max_images is not None and self.max_images < 1:
            raise UsageError(f"--max-images must be 1 or more, got {self.max_images}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be 1 or more, got {self.batch_size}")


def evaluate(options: EvaluateOptions) -> EvalReport:
    """Score a checkpoint (PyTorch) or a deployed model (runtime) against Telea; write table, JSON and chart."""
    o = options
    if o.checkpoint is not None:
        predict, multiple = checkpoint_predictor(o.checkpoint)
        if o.size % multiple:
            raise PConvError(f"--size {o.size} must be a multiple of {multiple} for {o.checkpoint} (2^layers)")
        name = "PConv"
    else:
        predict, name = runtime_predictor(o.model), "PConv (runtime)"
    skipped: dict[Path, str] = {}
    samples, count = load_samples(
        o.data, o.size, masks_per_bin=o.masks_per_bin, seed=o.seed, max_images=o.max_images, skipped=skipped
    )
    scores = score(name, predict, samples, batch_size=o.batch_size)
    scores += score("Telea", telea_predictor(), samples, batch_size=o.batch_size)
    crops = f"{count} images, {o.size}x{o.size} centre crops, {o.masks_per_bin} masks/bin, seed {o.seed}"
    if skipped:
        crops += f" ({len(skipped)} unusable image(s) skipped, listed in {SCORES})"
    return write_report(scores, Path(o.output), f"{o.checkpoint or o.model} on {o.data}: {crops}", skipped=skipped)


def write_report(
    scores: list[BinScore], output: Path, note: str, *, skipped: dict[Path, str] | None = None
) -> EvalReport:
    """evaluation.md (the table), evaluation.json (every number) and evaluation.png (bar charts)."""
    import dataclasses
    import json

    from pconv_deploy.files import write_text_atomic
    from pconv_deploy.train import plots

    output.mkdir(parents=True, exist_ok=True)
    table = markdown_table(scores)
    table_path = output / TABLE
    write_text_atomic(table_path, f"# Evaluation\n\n{note}\n\n{table}")
    rows = [{**dataclasses.asdict(s), "bin": bin_label(HOLE_BINS[s.bin_index])} for s in scores]
    skipped_text = {str(k): v for k, v in (skipped or {}).items()}
    report = {"note": note, "scores": rows, "skipped": skipped_text}
    write_text_atomic(output / SCORES, json.dumps(report, indent=1))
    labels = [bin_label(HOLE_BINS[b]) for b in sorted({s.bin_index for s in scores})]
    methods = list(dict.fromkeys(s.method for s in scores))
    titles = (("hole_l1", "hole L1 (0-255) - lower is better"), ("psnr", "PSNR (dB)"), ("ssim", "SSIM"))
    panels = {title: {m: [getattr(s, key) for s in scores if s.method == m] for m in methods} for key, title in titles}
    chart_path = plots.bar_charts(labels, panels, output / CHART)
    return EvalReport(scores, table, table_path, chart_path, skipped_text)
