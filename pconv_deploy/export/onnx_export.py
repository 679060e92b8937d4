"""PyTorch model -> one self-contained, checked ONNX file honouring the model contract (docs/design.md section 2).

Contract: inputs ``image`` [N,3,H,W] float32 RGB in [0,1] and ``mask`` [N,1,H,W] float32
(1 = known); output ``inpainted`` [N,3,H,W] float32, composited and clamped. N, H, W are
dynamic; H and W are multiples of 2^layers. ``fp16=True`` exports the same contract with a
float16 feature path (docs/design.md section 6).

Order of work: export the export-time network (:mod:`.graph`) with the dynamo exporter,
add the metadata, run the graph checks (:mod:`.checks`), then write to a temp file in the
target directory and rename, so a failed export never leaves a file behind.
:func:`export_checkpoint` adds the Polygraphy parity check (:mod:`.parity`) before the rename.
What the exporter records about the machine that ran it (a stack trace of this checkout per node)
is stripped: a shipped file names no developer's paths (:func:`strip_provenance`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from pconv_deploy.contract import (
    DEFAULT_OPSET,
    IMAGE,
    INPUT_NAMES,
    MASK,
    ONNX_SUFFIX,
    OUTPUT_NAMES,
    contract_metadata,
)
from pconv_deploy.errors import first_line
from pconv_deploy.export.checks import ExportError, GraphReport, check_finite, check_graph, mask_overhead_limit
from pconv_deploy.export.graph import ExportNet
from pconv_deploy.export.options import ExportOptions
from pconv_deploy.files import atomic_write
from pconv_deploy.model.unet import PConvConfig, PConvUNet

if TYPE_CHECKING:
    from pconv_deploy.export.calibration import CalibrationSet
    from pconv_deploy.export.parity import ParityReport
    from pconv_deploy.export.quantize import Int8Recipe


@dataclass
class ExportResult:
    path: Path
    graph: GraphReport
    seconds: float  # torch export + graph checks
    parity: ParityReport | None = None  # when checked


def build_metadata(config: PConvConfig, precision: str, checkpoint_sha256: str | None) -> dict[str, str]:
    """The ``metadata_props`` every pconv-deploy ONNX file carries (the runtime and sidecar read these keys)."""
    return contract_metadata(
        layers=config.layers,
        width=config.width,
        input_norm=config.input_norm,
        precision=precision,
        checkpoint_sha256=checkpoint_sha256,
        output_activation=config.output_activation,
    )


def torch_to_onnx(net: torch.nn.Module, multiple: int, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """``net(image, mask)`` as an in-memory ONNX model with the contract's names, dynamic N and H, W in
    multiples of ``multiple``, no external data: the one torch.onnx.export call (ours and the bench's variants)."""
    from torch.export import Dim

    # Example sizes of 2 and 3 multiples: a factor of 1 would be specialised by torch.export.
    m = multiple
    example = (torch.rand(2, 3, 2 * m, 3 * m), (torch.rand(2, 1, 2 * m, 3 * m) > 0.5).float())
    batch, h, w = Dim("batch", min=1, max=4096), Dim("h", min=1, max=256), Dim("w", min=1, max=256)
    dims = {0: batch, 2: m * h, 3: m * w}
    with _quiet_exporter():
        program = torch.onnx.export(
            net,
            example,
            None,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={IMAGE: dims, MASK: dims},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    return strip_provenance(program.model_proto)


def strip_provenance(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop every doc string and ``metadata_props`` below the model level, in place: the exporter writes a
    stack trace of the exporting checkout (source and site-packages paths) into every node, and its
    program's signature into the graph. The model-level ``metadata_props`` (the contract) stay."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        owners = [graph, *graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]
        for owner in owners:
            owner.ClearField("doc_string")  # cleared, not set to "": the initialisers stay byte-identical
            owner.ClearField("metadata_props")
        for attribute in (a for node in graph.node for a in node.attribute):  # If/Loop bodies
            graphs += [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]
    for function in proto.functions:
        for owner in (function, *function.node):
            owner.ClearField("doc_string")
            owner.ClearField("metadata_props")
    return proto


def build_onnx(
    model: PConvUNet, opset: int = DEFAULT_OPSET, *, fp16: bool = False, checkpoint_sha256: str | None = None
) -> tuple[onnx.ModelProto, GraphReport]:
    """Export in memory and run the graph checks; raises ExportError. Nothing is written."""
    net = ExportNet(model.eval(), torch.float16 if fp16 else torch.float32)
    try:
        proto = torch_to_onnx(net, model.config.multiple, opset)
    except Exception as e:  # the exporter raises many types; report one line
        raise ExportError(f"torch.onnx.export failed: {first_line(e)}") from e
    proto.doc_string = "pconv-deploy partial-convolution inpainting; contract: see metadata_props and README"
    del proto.metadata_props[:]
    for key, value in build_metadata(model.config, "fp16" if fp16 else "fp32", checkpoint_sha256).items():
        proto.metadata_props.add(key=key, value=value)
    report = check_graph(proto, max_mask_overhead=mask_overhead_limit(model.config.width))
    check_finite(proto)
    return proto, report


def build_int8(
    model: PConvUNet,
    calibration: CalibrationSet,
    recipe: Int8Recipe | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    checkpoint_sha256: str | None = None,
) -> tuple[onnx.ModelProto, GraphReport]:
    """The FP32 graph, calibrated and quantized (feature convolutions only), metadata and checks updated."""
    from pconv_deploy.export.checks import TENSORRT_OPS
    from pconv_deploy.export.quantize import QDQ_OPS, Int8Recipe, calibration_metadata, quantize_int8

    recipe = recipe or Int8Recipe()
    fp32, _ = build_onnx(model, opset, checkpoint_sha256=checkpoint_sha256)
    proto = strip_provenance(quantize_int8(fp32, calibration, recipe))
    values = {**build_metadata(model.config, "int8", checkpoint_sha256), **calibration_metadata(calibration, recipe)}
    del proto.metadata_props[:]
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    limit = mask_overhead_limit(model.config.width)
    report = check_graph(proto, max_mask_overhead=limit, allowed_ops=TENSORRT_OPS | QDQ_OPS)
    check_finite(proto)
    return proto, report


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's warnings (torchvision absent, axis renames) are noise for our users."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def write_atomic(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write one self-contained file via a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return path


def export_onnx(
    model: PConvUNet,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    *,
    fp16: bool = False,
    checkpoint_sha256: str | None = None,
) -> Path:
    """Export with dynamic batch and size to one checked file (no external data); returns the path."""
    proto, _ = build_onnx(model, opset, fp16=fp16, checkpoint_sha256=checkpoint_sha256)
    return write_atomic(proto, path)


def export_checkpoint(options: ExportOptions) -> ExportResult:
    """Export ``options.checkpoint``; with ``options.check`` the parity (FP32) or quality (FP16, INT8) check
    must pass before the file appears.

    On a failed check the model is kept as ``<output stem>.failed.onnx`` (for ``polygraphy run``)
    and ParityError is raised; ``output`` itself is never written.
    """
    from pconv_deploy.contract import file_sha256
    from pconv_deploy.model.checkpoint import load_checkpoint

    output, calibration = options.output, options.calibration_set()
    model = load_checkpoint(options.checkpoint)
    start = time.perf_counter()
    sha = file_sha256(options.checkpoint)
    if calibration is not None:  # int8 (the options hold one exactly then)
        proto, graph = build_int8(model, calibration, options.recipe, opset=options.opset, checkpoint_sha256=sha)
    else:
        fp16 = options.precision == "fp16"
        proto, graph = build_onnx(model, options.opset, fp16=fp16, checkpoint_sha256=sha)
    seconds = time.perf_counter() - start
    if not options.check:
        return ExportResult(write_atomic(proto, output), graph, seconds)

    from pconv_deploy.export.parity import ParityError, default_parity_dir
    from pconv_deploy.export.verify import verify

    output.parent.mkdir(parents=True, exist_ok=True)
    failed = output.with_name(f"{output.stem}.failed{ONNX_SUFFIX}")
    with atomic_write(output) as staged:  # renamed to ``output`` only if the check passes
        onnx.save_model(proto, str(staged), save_as_external_data=False)
        report = verify(staged, model, save_dir=options.parity_dir or default_parity_dir(output))
        if not report.passed:
            staged.replace(failed)
            message = f"{failed}: {report.kind} check failed ({report.summary()}); {output} not written"
            raise ParityError(message, report)
    return ExportResult(output, graph, seconds, report)
