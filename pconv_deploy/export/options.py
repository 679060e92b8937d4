"""What one export makes, checked once: the options ``pconv export`` parses and ``export_checkpoint`` takes.

Validation is pure (no file is read): the checkpoint and the calibration photos are read by the
export itself, so a script builds the same object the CLI does and gets the same one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pconv_deploy.contract import DEFAULT_OPSET, MIN_OPSET, PRECISIONS
from pconv_deploy.errors import UsageError
from pconv_deploy.export.calibration import CalibrationSet, calibration_set
from pconv_deploy.export.quantize import CALIBRATION_METHODS, INT8_ACTIVATIONS, Int8Recipe


def resolve_precision(precision: str | None, fp16: bool = False) -> str:
    """``--precision`` with ``--fp16`` as its synonym; one line when they disagree or the name is unknown."""
    if precision is None:
        return "fp16" if fp16 else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if fp16 and precision != "fp16":
        raise UsageError(f"--fp16 and --precision {precision} disagree: give one of them")
    return precision


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """One export: ``checkpoint`` -> ``output`` at ``precision``, parity-checked unless ``check`` is False.

    ``calibration`` (int8 only, and int8 needs it): a :class:`CalibrationSet`, or a folder of photos
    of which the first ``calibration_images`` are used (default ``DEFAULT_IMAGES``). ``recipe``: how
    the INT8 file is calibrated and which activations it uses (u8 for CPUs, s8 for TensorRT).
    """

    checkpoint: Path
    output: Path
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    check: bool = True
    parity_dir: Path | None = None  # default: OUTPUT_STEM.parity/
    calibration: CalibrationSet | Path | None = None
    calibration_images: int | None = None
    recipe: Int8Recipe = field(default_factory=Int8Recipe)

    def __post_init__(self) -> None:
        for name in ("checkpoint", "output", "parity_dir", "calibration"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        self.validate()

    def validate(self) -> None:
        """Raise UsageError (exit 2) for a combination no export can use, with the CLI's option names."""
        from onnx.defs import onnx_opset_version

        newest = onnx_opset_version()
        if self.opset > newest:
            raise UsageError(f"--opset {self.opset}: the installed onnx knows opsets up to {newest}")
        if self.opset < MIN_OPSET:
            raise UsageError(f"--opset {self.opset}: the exporter writes opset {MIN_OPSET} or later")
        resolve_precision(self.precision)
        if (self.precision == "int8") != (self.calibration is not None):
            raise UsageError("--calibration DIR goes with --precision int8 (and int8 needs it)")
        if self.calibration_images is not None and not isinstance(self.calibration, Path):
            raise UsageError("--calibration-images N goes with --calibration DIR (a folder of photos)")
        if self.calibration_images is not None and self.calibration_images < 1:
            raise UsageError(f"--calibration-images {self.calibration_images}: expected 1 or more")
        if self.recipe.activations not in INT8_ACTIVATIONS:
            raise UsageError(
                f"--int8-activations {self.recipe.activations}: expected one of {', '.join(INT8_ACTIVATIONS)}"
            )
        if self.recipe.method not in CALIBRATION_METHODS:
            raise UsageError(f"calibration method {self.recipe.method!r}: expected one of {CALIBRATION_METHODS}")

    def calibration_set(self) -> CalibrationSet | None:
        """The calibration photos (read from the folder now: CalibrationError when it has none)."""
        if isinstance(self.calibration, Path):
            return calibration_set(self.calibration, self.calibration_images)
        return self.calibration
