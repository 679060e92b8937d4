"""torch -> ONNX (FP32, FP16, INT8), graph checks, Polygraphy parity and reduced-precision quality.

One job per module: ``options`` what one export makes (checked once), ``graph`` the export-time
network, ``onnx_export`` the export and the metadata, ``calibration`` the INT8 calibration photos and
masks, ``quantize`` the Q/DQ rewrite with the mask path kept float32, ``checks`` the graph checks,
``parity`` the Polygraphy comparison with PyTorch (and every threshold), ``verify`` what
``pconv check`` runs per precision, ``variants`` the comparison networks ``pconv bench`` exports
beside ours.
"""

from pconv_deploy.export.checks import ConvMacs, ExportError, GraphReport, check_finite, check_graph, conv_macs
from pconv_deploy.export.onnx_export import (
    ExportResult,
    build_int8,
    build_metadata,
    build_onnx,
    export_checkpoint,
    export_onnx,
    strip_provenance,
    write_atomic,
)
from pconv_deploy.export.options import ExportOptions

__all__ = [
    "ConvMacs",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "GraphReport",
    "build_int8",
    "build_metadata",
    "build_onnx",
    "check_finite",
    "check_graph",
    "conv_macs",
    "export_checkpoint",
    "export_onnx",
    "strip_provenance",
    "write_atomic",
]
