"""FP32 graph -> INT8 Q/DQ graph whose mask path, compositing and I/O stay float32.

The partial convolution's mask path (the 0/1 mask counts, the clamp, the ratio sum(1)/sum(M),
the updated mask, and the 1x1 convolutions that spread the ratio and ``b * valid`` over the
channels) is exact in float32 and wrong everywhere near a hole edge once quantized. Which nodes
belong to it is read from the graph's structure, never from node names: a tensor computed from
the ``mask`` input and constants alone is mask path; a Conv whose data input depends on the
``image`` input is a feature convolution. Only feature convolutions are quantized
(``op_types_to_quantize=["Conv"]``, everything else in ``nodes_to_exclude``), with per-channel
symmetric INT8 weights, and activations either u8 with a zero point (ONNX Runtime and OpenVINO on
a CPU: every quantized Conv becomes an integer kernel) or s8 symmetric (zero point 0: the only kind
TensorRT's explicit quantization takes; :func:`check_tensorrt_int8`).
:func:`check_mask_path_float` proves the result: no QuantizeLinear/DequantizeLinear node takes a
mask-path tensor or feeds a mask-path node, and the model's output is not dequantized.

The recipe (calibration method, which feature convolutions stay float32, how many photos) was
chosen by measurement on the bundled model: docs/precision.md, scripts/quantize_probe.py.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from pconv_deploy.contract import IMAGE, MASK
from pconv_deploy.export.calibration import CalibrationSet, calibration_feeds, list_sha256
from pconv_deploy.export.checks import ExportError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_ACTIVATIONS = ("u8", "s8")  # s8: symmetric, for TensorRT
CALIBRATION_CHUNK = 8  # samples held in memory at once while calibrating


@dataclass(frozen=True)
class Int8Recipe:
    """How an INT8 file is made. ``keep_fp32``: indices (data-flow order, negative from the end) of
    feature convolutions left in float32; the first one (3 input channels) is always kept.
    ``activations``: ``u8`` (asymmetric, a zero point: ONNX Runtime fuses every quantized Conv into
    an integer kernel) or ``s8`` (symmetric, zero point 0: what TensorRT's explicit quantization takes)."""

    method: str = "percentile"
    percentile: float = 99.99
    keep_fp32: tuple[int, ...] = (1, -1)
    activations: str = "u8"

    @property
    def symmetric_activations(self) -> bool:
        return self.activations == "s8"

    def describe(self) -> str:
        method = f"percentile {self.percentile:g}" if self.method == "percentile" else self.method
        kept = ",".join(str(i) for i in self.keep_fp32) or "none"
        return f"{method}; feature convs kept fp32: 0,{kept}" if kept != "none" else f"{method}; kept fp32: 0"


@dataclass(frozen=True)
class GraphRoles:
    """Nodes by role: ``feature_convs`` in data-flow order, ``mask_path`` the nodes computed from the mask only."""

    feature_convs: tuple[str, ...]
    mask_path: frozenset[str]
    mask_tensors: frozenset[str]


def graph_roles(proto: onnx.ModelProto) -> GraphRoles:
    """Split the graph's nodes by what they consume (ONNX graphs are topologically sorted)."""
    from_image, from_mask = {IMAGE}, {MASK}
    feature_convs, mask_path = [], set()
    for node in proto.graph.node:
        inputs = [name for name in node.input if name]
        if any(name in from_image for name in inputs):
            from_image.update(node.output)
            if node.op_type == "Conv" and node.input[0] in from_image:
                feature_convs.append(node.name)
        elif any(name in from_mask for name in inputs):
            from_mask.update(node.output)
            mask_path.add(node.name)
    return GraphRoles(tuple(feature_convs), frozenset(mask_path), frozenset(from_mask))


def check_mask_path_float(proto: onnx.ModelProto) -> int:
    """Raise ExportError if any Q/DQ node touches the mask path or the output; returns the Q/DQ count.

    Walks forward from the ``mask`` input: a Q/DQ node whose input is computed from the mask
    alone quantizes the mask path; a mask-path node with a Q/DQ output among its inputs (a
    quantized mask-count weight, say) computes the mask path from rounded numbers.
    """
    produced_by = {out: node for node in proto.graph.node for out in node.output}
    roles = graph_roles(proto)
    count = 0
    for node in proto.graph.node:
        if node.op_type in QDQ_OPS:
            count += 1
            touched = [name for name in node.input if name in roles.mask_tensors]
            if touched:
                raise ExportError(f"{node.op_type} '{node.name}' quantizes the mask path ({touched[0]})")
        elif node.name in roles.mask_path:
            for name in node.input:
                source = produced_by.get(name)
                if source is not None and source.op_type in QDQ_OPS:
                    fed = f"{source.op_type} '{source.name}'"
                    raise ExportError(f"mask-path {node.op_type} '{node.name}' is fed by {fed}")
    for output in proto.graph.output:
        source = produced_by.get(output.name)
        if source is not None and source.op_type in QDQ_OPS:
            fed = f"{source.op_type} '{source.name}'"
            raise ExportError(f"output '{output.name}' comes from {fed}: the I/O must be float32")
    return count


def kept_convs(roles: GraphRoles, recipe: Int8Recipe) -> set[str]:
    """Feature convolutions left in float32: the first always (3 input channels: no speed to gain)."""
    convs = roles.feature_convs
    for i in recipe.keep_fp32:
        if not -len(convs) <= i < len(convs):
            raise ExportError(f"keep_fp32 index {i} is outside the {len(convs)} feature convolutions")
    return {convs[0], *(convs[i] for i in recipe.keep_fp32)}


def quantize_int8(proto: onnx.ModelProto, cal: CalibrationSet, recipe: Int8Recipe = Int8Recipe()) -> onnx.ModelProto:
    """Calibrate on ``cal`` and return the Q/DQ model (metadata copied from ``proto``; caller updates it)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if recipe.activations not in INT8_ACTIVATIONS:
        raise ExportError(f"int8 activations {recipe.activations!r}: expected one of {', '.join(INT8_ACTIVATIONS)}")
    if recipe.method not in CALIBRATION_METHODS:
        raise ExportError(f"calibration method {recipe.method!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
    roles = graph_roles(proto)
    quantized = set(roles.feature_convs) - kept_convs(roles, recipe)
    exclude = [node.name for node in proto.graph.node if node.name not in quantized]
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
    extra = {
        "ActivationSymmetric": recipe.symmetric_activations,
        "WeightSymmetric": True,
        "CalibPercentile": recipe.percentile,
        "CalibTensorRangeSymmetric": recipe.symmetric_activations,
    }
    method = methods.get(recipe.method, CalibrationMethod.Percentile)
    with tempfile.TemporaryDirectory(prefix="pconv-int8-") as tmp:
        source, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, str(source))  # quantize_static turns a ModelProto it is given into external data
        ranges = calibrate(source, cal, method, extra=extra, tmp=Path(tmp))
        quantize_static(
            source,
            out,
            None,
            calibration_cache_path=ranges,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            extra_options=extra,
        )
        result = onnx.load(str(out))
    del result.metadata_props[:]
    result.metadata_props.extend(proto.metadata_props)
    result.doc_string = proto.doc_string
    check_mask_path_float(result)
    return result


def calibrate(source: Path, cal: CalibrationSet, method, *, extra: dict, tmp: Path) -> Path:
    """Activation ranges of every Conv tensor, written as onnxruntime's calibration cache; returns its path.

    ``quantize_static`` keeps every sample's activations until the end (about 140 MB per 512x512
    sample at the bundled model's width, 16x that at full width); here the histograms (or min/max)
    are merged every ``CALIBRATION_CHUNK`` samples, so memory does not grow with the photo count.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"symmetric": extra["CalibTensorRangeSymmetric"], "percentile": extra["CalibPercentile"]}
    calibrator = create_calibrator(
        source,
        ["Conv"],
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=method,
        extra_options=options,
    )
    feeds = calibration_feeds(cal)
    while True:
        chunk = list(itertools.islice(feeds, CALIBRATION_CHUNK))
        if not chunk:
            break
        if hasattr(calibrator, "collector"):  # histogram calibrators merge into their histograms, then forget
            calibrator.intermediate_outputs = []
        calibrator.collect_data(ListReader(chunk))  # MinMax merges its ranges and forgets by itself
    path = tmp / "ranges.json"
    save_tensors_data(calibrator.compute_data(), path)
    return path


class ListReader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list) -> None:
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def calibration_metadata(cal: CalibrationSet, recipe: Int8Recipe) -> dict[str, str]:
    """What calibrated an INT8 file, for its ``metadata_props`` (``pconv check`` reads the photo hashes
    to refuse scoring on calibration photos)."""
    from pconv_deploy.contract import file_sha256
    from pconv_deploy.masks import HOLE_BINS

    act = "s8 symmetric" if recipe.symmetric_activations else "u8 asymmetric"
    return {
        "pconv.int8_activations": recipe.activations,
        "pconv.calibration_images": str(len(cal.photos)),
        "pconv.calibration_method": f"{recipe.describe()}; activations {act}, weights s8 per channel",
        "pconv.calibration_sha256": list_sha256(cal.photos),
        "pconv.calibration_photos": ",".join(sorted(file_sha256(p)[:16] for p in cal.photos)),
        "pconv.calibration_masks": (
            f"{cal.masks_per_image} per photo, {cal.size}x{cal.size} centre crops, "
            f"hole ratio up to {HOLE_BINS[cal.hole_bins - 1][1]:g}, seed {cal.seed}"
        ),
    }


def check_tensorrt_int8(proto: onnx.ModelProto) -> None:
    """Raise ExportError unless every QuantizeLinear is INT8 with zero point 0 (TensorRT's explicit quantization)."""
    from onnx import numpy_helper

    constants = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None or zero.data_type != onnx.TensorProto.INT8 or numpy_helper.to_array(zero).any():
            raise ExportError(
                f"QuantizeLinear '{node.name}' is not symmetric INT8 (zero point 0), which TensorRT requires: "
                "export with --int8-activations s8"
            )
