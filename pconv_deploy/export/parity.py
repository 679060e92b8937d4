"""Parity of an exported ONNX model (ONNX Runtime, CPU) with the PyTorch model, through Polygraphy.

The reference is always the original FP32 :class:`PConvUNet` plus compositing and clamp, never
the export-time network, so the parity also proves the export's simplifications exact. Inputs
are real binary masks (random strokes, all-hole, no-hole, sparse), at several sizes and batch
sizes including non-square ones.

Verdicts (per iteration, i.e. per batch):
- FP32: max |error| <= 1e-4 on [0, 1] pixels (``SimpleCompareFunc``, ``max`` statistic);
- FP16, INT8: PSNR against the FP32 PyTorch output >= ``MIN_PSNR`` (``PsnrCompareFunc``), plus the
  quality check of :mod:`.verify` (hole L1 per bin, known pixels, adversarial masks);
- all: no Inf/NaN (``Comparator.validate``).

Every threshold of ``pconv check`` and ``pconv export`` is here, in one place.

The inputs and the PyTorch outputs are saved as Polygraphy JSON, so that
``polygraphy run MODEL.onnx --onnxrt --load-inputs inputs.json --load-outputs reference.json ...``
(see :meth:`ParityReport.polygraphy_command`) reproduces the verdict without this package.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pconv_deploy.contract import IMAGE, MASK, OUTPUT, PRECISIONS, file_sha256, metadata_value
from pconv_deploy.export.checks import (
    TENSORRT_OPS,
    ExportError,
    check_contract,
    check_graph,
    load_model,
    mask_overhead_limit,
    metadata,
)
from pconv_deploy.export.quantize import QDQ_OPS, check_mask_path_float
from pconv_deploy.masks import as_known, brush_strokes, grid

FP32_ATOL = 1e-4
# Reduced precision, against the FP32 PyTorch model. PSNR of the composited [0, 1] output over the
# parity cases and the quality samples; hole L1 increase (0-255) in each bin up to 30 % holes
# (INT8: the target for the bundled model, measured in docs/precision.md).
MIN_PSNR = {"fp16": 40.0, "int8": 30.0}
MAX_HOLE_L1_INCREASE = {"fp16": 0.05, "int8": 0.10}
FP16_MIN_PSNR = MIN_PSNR["fp16"]
MASK_KINDS = ("strokes", "all-hole", "no-hole", "sparse")


class ParityError(ExportError):
    """The ONNX model's outputs differ from PyTorch beyond the tolerance, or are not finite."""

    def __init__(self, message: str, report: ParityReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ParityCase:
    """One batch: a mask kind per item, at (h, w) multiples of 2^layers."""

    name: str
    masks: tuple[str, ...]
    size: tuple[int, int]  # in multiples of 2^layers


# At the paper's 8 levels (multiple 256): 512x512, 256x256 x4, 256x768 x2, 512x256 x3.
DEFAULT_CASES = (
    ParityCase("strokes", ("strokes",), (2, 2)),
    ParityCase("adversarial", ("all-hole", "no-hole", "sparse", "strokes"), (1, 1)),
    ParityCase("wide", ("strokes", "sparse"), (1, 3)),
    ParityCase("tall", ("strokes", "all-hole", "sparse"), (2, 1)),
)


def make_mask(kind: str, height: int, width: int, *, rng: np.random.Generator) -> np.ndarray:
    """A binary [1, H, W] float32 mask of one of ``MASK_KINDS``, 1 = known, 0 = hole (the model's convention)."""
    if kind == "no-hole":
        hole = np.zeros((height, width), bool)
    elif kind == "all-hole":
        hole = np.ones((height, width), bool)
    elif kind == "sparse":  # one known pixel per 7x7 cell: windows hold a single known pixel
        hole = ~grid(height, width, step=7, offset=(int(rng.integers(7)), int(rng.integers(7))))
    elif kind == "strokes":
        hole = brush_strokes(height, width, rng)
    else:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    return as_known(hole)[None]


def make_feeds(cases: Sequence[ParityCase], multiple: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One feed dict per case: smooth random RGB images in [0, 1] and the cases' binary masks."""
    rng = np.random.default_rng(seed)
    feeds = []
    for case in cases:
        h, w = case.size[0] * multiple, case.size[1] * multiple
        n = len(case.masks)
        # Low-frequency colour fields plus noise: image-like, not white noise.
        coarse = rng.random((n, 3, 4, 4), dtype=np.float32)
        smooth = np.repeat(np.repeat(coarse, -(-h // 4), axis=2), -(-w // 4), axis=3)[:, :, :h, :w]
        image = np.clip(0.8 * smooth + 0.2 * rng.random((n, 3, h, w), dtype=np.float32), 0, 1)
        mask = np.stack([make_mask(kind, h, w, rng=rng) for kind in case.masks])
        feeds.append({IMAGE: image.astype(np.float32), MASK: mask})
    return feeds


def torch_reference(model, feeds: Sequence[dict[str, np.ndarray]], fp64: bool = False) -> list[dict[str, np.ndarray]]:
    """The PyTorch model's composited, clamped output for each feed, as float32.

    Computed in float32 (the model as users run it), or with ``fp64`` in float64 (about 5x
    slower): for networks with huge activations float32 PyTorch is itself further from the
    exact result than ONNX Runtime is, and the float64 reference separates the two.
    """
    import copy

    import torch

    from pconv_deploy.model.unet import composite

    dtype = torch.float64 if fp64 else torch.float32
    model = copy.deepcopy(model).to(dtype).eval() if fp64 else model.float().eval()
    outputs = []
    with torch.no_grad():
        for feed in feeds:
            image, mask = torch.from_numpy(feed[IMAGE]).to(dtype), torch.from_numpy(feed[MASK]).to(dtype)
            out = torch.clamp(composite(image, mask, model(image, mask)), 0.0, 1.0)
            outputs.append({OUTPUT: out.float().numpy()})
    return outputs


@dataclass
class ParityRow:
    case: str
    shape: tuple[int, ...]
    masks: tuple[str, ...]
    max_abs_err: float
    psnr: float
    finite: bool
    passed: bool


@dataclass
class ParityReport:
    precision: str
    rows: list[ParityRow]
    reference: str = "float32"  # dtype of the PyTorch reference run
    inputs_json: Path | None = None
    reference_json: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def max_abs_err(self) -> float:
        return max(r.max_abs_err for r in self.rows)

    @property
    def min_psnr(self) -> float:
        return min(r.psnr for r in self.rows)

    kind = "parity"

    def criterion(self) -> str:
        if self.precision in MIN_PSNR:
            return f"PSNR >= {MIN_PSNR[self.precision]:g} dB vs {self.reference} PyTorch, no Inf/NaN"
        return f"max |err| <= {FP32_ATOL:g} vs {self.reference} PyTorch, no Inf/NaN"

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return f"{verdict}: max |err| {self.max_abs_err:.2e}, min PSNR {self.min_psnr:.1f} dB ({self.criterion()})"

    def table(self) -> str:
        lines = [f"{'case':<12} {'N x C x H x W':<18} {'masks':<34} {'max |err|':>10} {'PSNR dB':>8}  result"]
        for r in self.rows:
            shape = " x ".join(str(d) for d in r.shape)
            psnr = "inf" if np.isinf(r.psnr) else f"{r.psnr:.1f}"
            result = "ok" if r.passed else ("NON-FINITE" if not r.finite else "FAIL")
            lines.append(f"{r.case:<12} {shape:<18} {','.join(r.masks):<34} {r.max_abs_err:>10.2e} {psnr:>8}  {result}")
        lines.append(f"{self.precision}: {self.summary()}")
        return "\n".join(lines)

    def polygraphy_command(self, model_path: str | Path) -> str:
        """The ``polygraphy run`` command that reproduces this verdict from the saved JSON."""
        flags = polygraphy_flags(self.precision)
        args = ["polygraphy", "run", str(model_path), "--onnxrt"]
        args += ["--load-inputs", str(self.inputs_json), "--load-outputs", str(self.reference_json), *flags]
        return shlex.join(args)


def polygraphy_flags(precision: str) -> list[str]:
    if precision in MIN_PSNR:
        return ["--compare", "psnr", "--psnr-threshold", f"{MIN_PSNR[precision]:g}", "--validate"]
    return ["--check-error-stat", "max", "--atol", f"{FP32_ATOL:g}", "--rtol", "0", "--validate"]


PARITY_FILES = ("inputs.json", "reference.json")  # written into the parity folder (the CLI checks them first)


def default_parity_dir(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.parity/`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.parity")


def run_parity(
    onnx_path: str | Path,
    model,
    cases: Sequence[ParityCase] = DEFAULT_CASES,
    *,
    save_dir: str | Path | None = None,
    seed: int = 0,
    fp64_reference: bool = False,
) -> ParityReport:
    """Compare ``onnx_path`` under ONNX Runtime (CPU) with ``model`` (a PConvUNet) through Polygraphy."""
    meta = metadata(onnx.load(str(onnx_path), load_external_data=False))
    precision = meta.get("pconv.precision", "fp32")
    multiple = int(meta.get("pconv.multiple", model.config.multiple))
    if multiple != model.config.multiple:
        raise ExportError(f"{onnx_path}: multiple {multiple} in its metadata, the model needs {model.config.multiple}")
    feeds = make_feeds(cases, multiple, seed)
    reference = torch_reference(model, feeds, fp64=fp64_reference)
    outputs, verdicts = _compare_with_polygraphy(onnx_path, precision, feeds, reference=reference)
    rows = [
        _parity_row(case, ref[OUTPUT], got[OUTPUT], verdict=bool(verdict[OUTPUT]))
        for case, ref, got, verdict in zip(cases, reference, outputs, verdicts)
    ]
    report = ParityReport(precision, rows, reference="float64" if fp64_reference else "float32")
    if save_dir is not None:
        report.inputs_json, report.reference_json = _save_polygraphy_json(Path(save_dir), feeds, reference)
    return report


def _compare_with_polygraphy(onnx_path, precision: str, feeds: list, *, reference: list) -> tuple[list, list]:
    """ONNX Runtime outputs per feed and Polygraphy's per-iteration verdicts against ``reference``."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import PsnrCompareFunc, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    if precision in MIN_PSNR:
        compare = PsnrCompareFunc(psnr_threshold=MIN_PSNR[precision])
    else:
        compare = SimpleCompareFunc(atol=FP32_ATOL, rtol=0.0, check_error_stat="max")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name="onnxrt")
        results = Comparator.run([runner], data_loader=feeds)
        results.add(reference, runner_name="pytorch")
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    return list(results["onnxrt"]), list(accuracy[0][("onnxrt", "pytorch")])


def _parity_row(case: ParityCase, expected: np.ndarray, out: np.ndarray, *, verdict: bool) -> ParityRow:
    finite = bool(np.isfinite(out).all())
    diff = np.abs(out.astype(np.float64) - expected)
    mse = float(np.mean(diff**2)) if finite else float("nan")
    return ParityRow(
        case=case.name,
        shape=tuple(out.shape),
        masks=case.masks,
        max_abs_err=float(diff.max()) if finite else float("inf"),
        psnr=float("inf") if mse == 0 else (10 * np.log10(1.0 / mse) if finite else float("nan")),
        finite=finite,
        passed=finite and verdict,
    )


def _save_polygraphy_json(save_dir: Path, feeds: list, reference: list) -> tuple[Path, Path]:
    """Inputs and PyTorch outputs as Polygraphy JSON (for ``polygraphy run --load-inputs/--load-outputs``)."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    from pconv_deploy.files import atomic_write

    save_dir.mkdir(parents=True, exist_ok=True)
    inputs_json, reference_json = (save_dir / name for name in PARITY_FILES)
    saved = RunResults()
    saved.add(reference, runner_name="pytorch")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        with atomic_write(inputs_json) as tmp:
            save_json(feeds, str(tmp), description="parity inputs")
        with atomic_write(reference_json) as tmp:
            saved.save(str(tmp))
    return inputs_json, reference_json


def load_checked(onnx_path: str | Path, checkpoint: str | Path | None = None) -> tuple:
    """The contract and graph checks of ``pconv check``; returns (the checkpoint's model, the file's metadata).

    Without ``checkpoint`` the bundled default is used. A checkpoint whose sha256 differs from
    the one recorded in the ONNX metadata is refused before anything runs, and so is a
    ``pconv.precision`` that ``pconv build-engine`` would refuse (the same ``PRECISIONS``).
    """
    from pconv_deploy.model.checkpoint import default_checkpoint, load_checkpoint

    onnx_path = Path(onnx_path)
    proto = load_model(onnx_path)  # a regular file, ONNX, no external data (named as such)
    try:
        check_contract(proto)
    except ExportError as e:
        raise ExportError(f"{onnx_path}: {e}") from None
    meta = metadata(proto)
    if meta["pconv.precision"] not in PRECISIONS:
        raise ExportError(f"{onnx_path}: pconv.precision must be one of {PRECISIONS}, got {meta['pconv.precision']!r}")
    checkpoint = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    recorded = meta["pconv.checkpoint_sha256"]
    if recorded != "none" and recorded != file_sha256(checkpoint):
        raise ExportError(
            f"{onnx_path} was exported from another checkpoint (sha256 {recorded[:12]}...) than {checkpoint}"
        )
    model = load_checkpoint(checkpoint)
    cfg = model.config
    recorded_cfg = (meta["pconv.layers"], meta["pconv.width"], meta["pconv.input_norm"])
    recorded_cfg += (metadata_value(meta, "pconv.output_activation"),)
    if recorded_cfg != (str(cfg.layers), str(cfg.width), cfg.input_norm, cfg.output_activation):
        raise ExportError(
            f"{onnx_path}: layers/width/input_norm/output_activation in its metadata differ from {checkpoint}'s config"
        )
    try:
        check_graph(proto, max_mask_overhead=mask_overhead_limit(cfg.width), allowed_ops=TENSORRT_OPS | QDQ_OPS)
        if meta["pconv.precision"] == "int8":
            check_mask_path_float(proto)
    except ExportError as e:
        raise ExportError(f"{onnx_path}: {e}") from None
    return model, meta
