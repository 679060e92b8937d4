"""Checks every exported graph must pass before it is written (docs/design.md section 5).

- ``onnx.checker`` full check and strict shape inference (type errors fail, not warn);
- the model contract: input/output names, dtypes and ranks, the metadata keys, no external data;
- op types: only ops that TensorRT's ONNX parser supports (``TENSORRT_OPS``);
- conv MACs at a concrete size, split into feature and mask convolutions: the mask path
  must be the grouped one-channel count, not a C_out x C_in convolution that doubles the cost;
- no Inf/NaN under ONNX Runtime for all-hole, no-hole and sparse masks (the epsilon trap
  of docs/design.md section 3 shows up exactly here).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pconv_deploy.contract import (
    CHANNELS,
    IMAGE,
    INPUT_NAMES,
    MASK,
    METADATA_KEYS,
    OUTPUT,
    OUTPUT_NAMES,
    contract_levels,
)
from pconv_deploy.errors import PConvError, first_line

# Op types of the exported graphs (FP32 and FP16) plus close relatives a future exporter
# version may emit instead. All are in onnx-tensorrt's supported-operator list,
# https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md
TENSORRT_OPS = frozenset(
    {
        "Add",
        "Cast",
        "Clip",
        "Concat",
        "Constant",
        "Conv",
        "Div",
        "Expand",
        "Gather",
        "Identity",
        "LeakyRelu",
        "Max",
        "Min",
        "Mul",
        "Reciprocal",
        "Relu",
        "Reshape",
        "Resize",
        "Shape",
        "Slice",
        "Split",
        "Sub",
        "Tanh",
        "Unsqueeze",
        "Squeeze",
    }
)

# (name, channels) of the contract's inputs and output; all float32 [N, C, H, W].
CONTRACT_INPUTS = tuple((name, CHANNELS[name]) for name in INPUT_NAMES)
CONTRACT_OUTPUTS = tuple((name, CHANNELS[name]) for name in OUTPUT_NAMES)


class ExportError(PConvError):
    """An export or an exported graph that breaks the contract; the message names the check."""


@dataclass(frozen=True)
class ConvMacs:
    """Multiply-accumulates of the graph's Conv nodes at one size, batch 1."""

    feature: int
    mask: int

    @property
    def total(self) -> int:
        return self.feature + self.mask

    @property
    def mask_overhead(self) -> float:
        """What the mask path adds, as a fraction of the feature convolutions."""
        return self.mask / self.feature if self.feature else float("inf")


@dataclass(frozen=True)
class GraphReport:
    op_types: dict[str, int]
    macs: ConvMacs
    mac_size: tuple[int, int]


def mask_overhead_limit(width: float) -> float:
    """1% at the paper's widths (>= 0.5). Feature MACs shrink with width^2 while the one-channel
    mask count does not (1.4% at width 0.125), so narrow test models get (0.5/width)^2 times that;
    a naive C_out x C_in mask convolution (+100%) still fails."""
    return 0.01 * max(1.0, (0.5 / width) ** 2)


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def load_model(path: str | Path) -> onnx.ModelProto:
    """An ONNX file read without following its external-data references (the contract wants one file).

    A FIFO or device is never opened; a file that is not ONNX and one whose weights live in other files
    are each refused in one line that says which (onnx's own loader called the second a ValidationError).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        raise ExportError(f"{path}: no such ONNX file") from None
    if not stat.S_ISREG(mode):
        what = "is a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise ExportError(f"{path}: {what}, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common base class
        raise ExportError(f"{path}: not an ONNX model ({type(e).__name__}: {first_line(e)})") from None
    external = external_data(model)
    if external:
        name, location = external[0]
        inside = os.path.normpath(location) == os.path.basename(location) and not os.path.isabs(location)
        where = "in the model's folder" if inside else "outside the model's folder"
        raise ExportError(
            f"{path}: {len(external)} initialisers use external data (e.g. {name} in {location!r}, {where}); "
            "the model contract wants one self-contained file: export it again with `pconv export`"
        )
    return model


def external_data(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(initialiser name, location) of every tensor stored outside the file, graphs and constants included."""
    found = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            found.append((tensor.name, location))
    return found


def check_graph(
    model: onnx.ModelProto,
    *,
    max_mask_overhead: float | None = 0.01,
    allowed_ops: frozenset[str] = TENSORRT_OPS,
) -> GraphReport:
    """Run the static checks; raise ExportError naming the first failure."""
    try:
        onnx.checker.check_model(model, full_check=True)  # full_check runs strict shape inference too
    except onnx.shape_inference.InferenceError as e:
        raise ExportError(f"strict shape inference: {first_line(e)}") from None
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx checker: {first_line(e)}") from None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise ExportError(f"strict shape inference: {first_line(e)}") from None
    check_contract(model)  # range-checks pconv.layers and pconv.multiple before they are used below
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    unsupported = sorted(set(ops) - allowed_ops)
    if unsupported:
        raise ExportError(f"op types outside the TensorRT allowlist: {', '.join(unsupported)}")
    multiple = int(metadata(model)["pconv.multiple"])
    size = (2 * multiple, 2 * multiple)
    macs = conv_macs(model, *size)
    if max_mask_overhead is not None and macs.mask_overhead > max_mask_overhead:
        raise ExportError(
            f"the mask path adds {macs.mask_overhead:.2%} to the feature convolutions' MACs "
            f"(limit {max_mask_overhead:.0%}): mask counts must be grouped one-channel convolutions"
        )
    return GraphReport(ops, macs, size)


def check_contract(model: onnx.ModelProto) -> None:
    """Names, dtypes and ranks of the I/O, metadata keys, and all weights inside the file."""
    for kind, values, expected in (
        ("input", model.graph.input, CONTRACT_INPUTS),
        ("output", model.graph.output, CONTRACT_OUTPUTS),
    ):
        got = [v.name for v in values]
        if got != [name for name, _ in expected]:
            raise ExportError(f"{kind}s are {got}, the contract says {[name for name, _ in expected]}")
        for value, (name, channels) in zip(values, expected):
            t = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            if t.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] != channels:
                raise ExportError(f"{kind} '{name}' must be float32 [N, {channels}, H, W], got {dims}")
            if any(isinstance(d, int) for i, d in enumerate(dims) if i != 1):
                raise ExportError(f"{kind} '{name}' must have dynamic N, H, W, got {dims}")
    found = metadata(model)
    missing = [k for k in METADATA_KEYS if k not in found]
    if missing:
        raise ExportError(f"metadata_props lack {', '.join(missing)}")
    try:
        contract_levels(found, "metadata_props")
    except PConvError as e:
        raise ExportError(str(e)) from None
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"{len(external)} initialisers use external data (e.g. {external[0]}): export one file")


def conv_macs(model: onnx.ModelProto, height: int, width: int) -> ConvMacs:
    """Conv MACs at batch 1, HxW, from shapes inferred on a copy with concrete input sizes.

    A Conv with one output channel is a mask count (feature convolutions always have 3 or
    more). A 1x1 Conv with one input channel is not counted: it broadcasts a per-pixel mask-path
    value (ratio, b * valid) to C channels, per-pixel work like the Mul it feeds (graph.py
    rewrite 4), not a convolution. Anything else counts as a feature convolution.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in [*fixed.graph.input, *fixed.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for i, v in zip((0, 2, 3), (1, height, width)):
            dims[i].Clear()
            dims[i].dim_value = v
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise ExportError(f"shape inference at {height}x{width}: {first_line(e)}") from None
    shapes = {t.name: list(t.dims) for t in fixed.graph.initializer}
    for v in [*fixed.graph.value_info, *fixed.graph.input, *fixed.graph.output]:
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    feature = mask = 0
    for node in fixed.graph.node:
        if node.op_type != "Conv":
            continue
        c_out, c_in_per_group, kh, kw = shapes[node.input[1]]
        _, _, out_h, out_w = shapes[node.output[0]]
        if not out_h or not out_w:
            raise ExportError(f"Conv '{node.name}': output size not inferred at {height}x{width}")
        macs = c_out * c_in_per_group * kh * kw * out_h * out_w
        if c_in_per_group == 1 and kh == kw == 1:
            continue
        if c_out == 1:
            mask += macs
        else:
            feature += macs
    return ConvMacs(feature, mask)


def adversarial_feeds(multiple: int) -> dict[str, np.ndarray]:
    """One batch of all-hole, no-hole and sparse masks (windows holding a single known pixel)."""
    size = multiple
    rng = np.random.default_rng(0)
    image = rng.random((3, 3, size, 2 * size), dtype=np.float32)
    mask = np.zeros((3, 1, size, 2 * size), np.float32)
    mask[1] = 1.0
    mask[2, 0, 3::7, 2::7] = 1.0
    return {IMAGE: image, MASK: mask}


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def check_finite(model: onnx.ModelProto | str | Path) -> None:
    """Run ONNX Runtime (CPU) on adversarial masks; raise ExportError on any Inf/NaN."""
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    for init in model.graph.initializer:  # broken weights are the checkpoint's fault, not the graph's epsilon
        if init.data_type in FLOAT_TYPES:
            bad = int((~np.isfinite(numpy_helper.to_array(init))).sum())
            if bad:
                raise ExportError(
                    f"weight {init.name} holds {bad} non-finite values (NaN or Inf): the checkpoint is broken"
                )
    feeds = adversarial_feeds(int(metadata(model)["pconv.multiple"]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT], feeds)
    bad = ~np.isfinite(out)
    if bad.any():
        names = [name for i, name in enumerate(("all-hole", "no-hole", "sparse")) if bad[i].any()]
        raise ExportError(
            f"non-finite outputs ({int(bad.sum())} values) for {', '.join(names)} masks: "
            "is an epsilon in the mask ratio (count + eps) folded away?"
        )
