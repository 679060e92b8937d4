"""``pconv check`` and the check ``pconv export`` runs: parity (FP32) or quality (FP16, INT8).

An FP32 file must match the PyTorch model to 1e-4 (:mod:`.parity`). A reduced-precision file
cannot; it is checked against the FP32 PyTorch model on what a user sees:

- the Polygraphy parity cases with a PSNR floor per precision (``parity.MIN_PSNR``);
- mean hole L1 (0-255, outputs rounded to uint8 as the runtime writes them) of the file and of the
  FP32 model against the true pixels, per hole-ratio bin up to 30 %, on photos that did not calibrate
  it (``photos``; an INT8 file records its calibration photos' hashes and overlapping ones are
  refused) or on seeded synthetic images; the increase must stay under ``parity.MAX_HOLE_L1_INCREASE``;
- no Inf/NaN and known pixels bit-identical to the input, including all-hole windows, 1-pixel
  holes and windows with a single known pixel.

Every threshold lives in :mod:`.parity`; the verdict and the numbers go to ``quality.json`` beside
the Polygraphy JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pconv_deploy.contract import IMAGE, MASK, OUTPUT
from pconv_deploy.export.parity import (
    MAX_HOLE_L1_INCREASE,
    MIN_PSNR,
    ParityReport,
    default_parity_dir,
    load_checked,
    make_mask,
    run_parity,
    torch_reference,
)
from pconv_deploy.masks import HOLE_BINS, as_known, bin_label, grid, irregular

QUALITY_FILE = "quality.json"
QUALITY_BINS = 3  # the paper's bins up to 30 % holes
MASKS_PER_BIN = 2
SYNTHETIC_IMAGES = 8
ADVERSARIAL_MASKS = ("all-hole", "pixel-holes", "sparse")


@dataclass
class QualityBin:
    bin: str
    samples: int
    hole_l1_fp32: float
    hole_l1_model: float
    increase: float
    min_psnr: float


@dataclass
class QualityReport:
    precision: str
    images: str  # what was scored: "N photos from DIR" or "N synthetic images, seed S"
    bins: list[QualityBin]
    nonfinite: int
    known_changed: int
    max_increase: float
    min_psnr: float
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        worst = max((b.increase for b in self.bins), default=float("inf"))
        psnr = min((b.min_psnr for b in self.bins), default=0.0)
        self.passed = self.nonfinite == 0 and self.known_changed == 0 and worst <= self.max_increase
        self.passed = self.passed and psnr >= self.min_psnr

    def table(self) -> str:
        ours = f"{self.precision} hole L1"
        lines = [f"{'hole ratio':<12} {'n':>3} {'FP32 hole L1':>13} {ours:>13} {'diff':>7} {'PSNR':>6}"]
        for b in self.bins:
            lines.append(
                f"{b.bin:<12} {b.samples:>3} {b.hole_l1_fp32:>13.3f} {b.hole_l1_model:>13.3f} "
                f"{b.increase:>+7.3f} {b.min_psnr:>6.1f}"
            )
        lines.append(
            f"{self.precision} quality on {self.images}: {'PASSED' if self.passed else 'FAILED'} "
            f"(hole L1 +{self.max_increase:g} at most per bin, PSNR >= {self.min_psnr:g} dB vs FP32 PyTorch, "
            f"{self.nonfinite} non-finite, {self.known_changed} samples with known pixels changed)"
        )
        return "\n".join(lines)


@dataclass
class ReducedReport:
    """Parity cases (PSNR) plus the quality table: the verdict for an FP16 or INT8 file."""

    parity: ParityReport
    quality: QualityReport
    quality_json: Path | None = None
    kind: str = "quality"

    @property
    def passed(self) -> bool:
        return self.parity.passed and self.quality.passed

    def summary(self) -> str:
        worst = max(b.increase for b in self.quality.bins)
        verdict = "PASSED" if self.passed else "FAILED"
        return f"{verdict}: min PSNR {self.parity.min_psnr:.1f} dB, hole L1 {worst:+.3f} worst bin ({self.criterion()})"

    def criterion(self) -> str:
        return f"{self.parity.criterion()}; hole L1 +{self.quality.max_increase:g} at most; known pixels identical"

    def table(self) -> str:
        return f"{self.parity.table()}\n{self.quality.table()}"

    def polygraphy_command(self, model_path: str | Path) -> str:
        return self.parity.polygraphy_command(model_path)


def adversarial_masks(height: int, width: int, rng: np.random.Generator) -> list[np.ndarray]:
    """All hole, isolated 1-pixel holes on a 5-pixel grid, and isolated known pixels (1 = known)."""
    pixel_holes = as_known(grid(height, width, step=5, offset=(2, 3)))
    return [np.zeros((height, width), np.float32), pixel_holes, make_mask("sparse", height, width, rng=rng)[0]]


def quality_images(photos: Sequence[Path] | None, size: int, seed: int) -> tuple[list[np.ndarray], str]:
    """uint8 [S, S, 3] images: centre crops of ``photos``, or seeded smooth synthetic ones."""
    if photos:
        from pconv_deploy.export.calibration import load_photo

        return [load_photo(p, size) for p in photos], f"{len(photos)} photos ({size}x{size})"
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(SYNTHETIC_IMAGES):  # colour fields at 3 scales plus a little noise: edges and texture
        image = np.zeros((size, size, 3), np.float32)
        for cells, weight in ((4, 0.5), (16, 0.3), (64, 0.15)):
            coarse = rng.random((cells, cells, 3), dtype=np.float32)
            image += weight * np.repeat(np.repeat(coarse, -(-size // cells), 0), -(-size // cells), 1)[:size, :size]
        image += 0.05 * rng.random((size, size, 3), dtype=np.float32)
        images.append((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return images, f"{SYNTHETIC_IMAGES} synthetic images ({size}x{size}, seed {seed})"


def quality_samples(images: list[np.ndarray], seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(image, known mask, bin) per image and bin: MASKS_PER_BIN seeded training-style masks each."""
    samples = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        for b in range(QUALITY_BINS):
            for k in range(MASKS_PER_BIN):
                hole = irregular(h, w, np.random.default_rng([seed, i, b, k]), hole_range=HOLE_BINS[b])
                samples.append((image, as_known(hole), b))
    return samples


def _run_both(session, model, image: np.ndarray, *, masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The file's and the FP32 PyTorch model's composited outputs, float32 [N, 3, H, W], for one image."""
    x = np.repeat(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0, len(masks), 0)
    feed = {IMAGE: x, MASK: np.stack(masks)[:, None]}
    (got,) = session.run([OUTPUT], feed)
    return got, torch_reference(model, [feed])[0][OUTPUT]


def _hole_l1(out: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> float:
    rounded = (np.clip(out.transpose(1, 2, 0), 0, 1) * 255).round()
    return float(np.abs(rounded[hole] - truth[hole].astype(np.float64)).mean())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def run_quality(
    onnx_path: str | Path, model, *, photos: Sequence[Path] | None = None, size: int | None = None, seed: int = 0
) -> QualityReport:
    """Score ``onnx_path`` (ONNX Runtime, CPU) against ``model`` (FP32 PyTorch) as the module docstring says."""
    import onnx
    import onnxruntime as ort

    from pconv_deploy.export.checks import metadata

    precision = metadata(onnx.load(str(onnx_path), load_external_data=False)).get("pconv.precision", "fp32")
    multiple = model.config.multiple
    size = size or max(256, 2 * multiple) // multiple * multiple
    images, described = quality_images(photos, size, seed)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    per_bin: dict[int, list[tuple[float, float, float]]] = {}
    nonfinite = changed = 0
    samples = quality_samples(images, seed)
    rng = np.random.default_rng(seed)
    for start in range(0, len(samples), MASKS_PER_BIN * QUALITY_BINS):
        chunk = samples[start : start + MASKS_PER_BIN * QUALITY_BINS]
        image = chunk[0][0]
        masks = [m for _, m, _ in chunk] + adversarial_masks(size, size, rng)
        got, ref = _run_both(session, model, image, masks=masks)
        nonfinite += int((~np.isfinite(got)).sum())
        x = image.transpose(2, 0, 1).astype(np.float32) / 255.0
        changed += sum(int((got[i][:, m > 0] != x[:, m > 0]).any()) for i, m in enumerate(masks))
        for i, (_, m, b) in enumerate(chunk):
            hole = m == 0
            row = (_hole_l1(ref[i], image, hole), _hole_l1(got[i], image, hole), _psnr(got[i], ref[i]))
            per_bin.setdefault(b, []).append(row)
    bins = []
    for b, rows in sorted(per_bin.items()):
        values = np.array(rows)
        fp32, ours = float(values[:, 0].mean()), float(values[:, 1].mean())
        bins.append(QualityBin(bin_label(HOLE_BINS[b]), len(rows), fp32, ours, ours - fp32, float(values[:, 2].min())))
    return QualityReport(
        precision,
        described,
        bins,
        nonfinite,
        changed,
        max_increase=MAX_HOLE_L1_INCREASE[precision],
        min_psnr=MIN_PSNR[precision],
    )


def verify(onnx_path: str | Path, model, *, save_dir: str | Path | None = None, photos=None, fp64: bool = False):
    """The check for this file's precision: a ParityReport (FP32) or a ReducedReport (FP16, INT8)."""
    import onnx

    from pconv_deploy.export.checks import metadata
    from pconv_deploy.files import write_text_atomic

    precision = metadata(onnx.load(str(onnx_path), load_external_data=False)).get("pconv.precision", "fp32")
    parity = run_parity(onnx_path, model, save_dir=save_dir, fp64_reference=fp64)
    if precision not in MIN_PSNR:
        return parity
    quality = run_quality(onnx_path, model, photos=photos)
    report = ReducedReport(parity, quality)
    if save_dir is not None:
        data = {
            "precision": precision,
            "passed": report.passed,
            "criterion": report.criterion(),
            "thresholds": {"min_psnr_db": MIN_PSNR[precision], "max_hole_l1_increase": MAX_HOLE_L1_INCREASE[precision]},
            "parity": [asdict(r) for r in parity.rows],
            "quality": asdict(quality),
        }
        report.quality_json = Path(save_dir) / QUALITY_FILE
        write_text_atomic(report.quality_json, json.dumps(data, indent=1, default=float))
    return report


def check_onnx(
    onnx_path: str | Path,
    checkpoint: str | Path | None = None,
    *,
    save_dir: str | Path | None = None,
    photos: Sequence[Path] | None = None,
    fp64_reference: bool = False,
):
    """``pconv check``: the contract and graph checks, then :func:`verify` against the checkpoint.

    ``photos`` (FP16/INT8 only) that calibrated an INT8 file are refused before anything runs.
    """
    model, meta = load_checked(onnx_path, checkpoint)
    if photos:
        refuse_calibration_photos(onnx_path, meta, photos)
    save_dir = save_dir if save_dir is not None else default_parity_dir(onnx_path)
    return verify(onnx_path, model, save_dir=save_dir, photos=photos, fp64=fp64_reference)


def refuse_calibration_photos(onnx_path, meta: dict[str, str], photos: Sequence[Path]) -> None:
    from pconv_deploy.contract import file_sha256
    from pconv_deploy.export.checks import ExportError

    recorded = set(filter(None, meta.get("pconv.calibration_photos", "").split(",")))
    seen = [p for p in photos if file_sha256(p)[:16] in recorded]
    if seen:
        raise ExportError(
            f"{seen[0]}: calibrated {onnx_path} ({len(seen)} of the {len(photos)} photos did); score on other photos"
        )
