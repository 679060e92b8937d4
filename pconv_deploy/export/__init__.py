"""torch -> ONNX (FP32 and FP16), graph checks, Polygraphy parity.

One job per module: ``graph`` the export-time network, ``onnx_export`` the export and the
metadata, ``checks`` the graph checks, ``parity`` the Polygraphy comparison with PyTorch,
``variants`` the comparison networks ``pconv bench`` exports beside ours.
"""

from pconv_deploy.export.checks import ConvMacs, ExportError, GraphReport, check_finite, check_graph, conv_macs
from pconv_deploy.export.onnx_export import (
    ExportResult,
    build_metadata,
    build_onnx,
    export_checkpoint,
    export_onnx,
    write_atomic,
)

__all__ = [
    "ConvMacs",
    "ExportError",
    "ExportResult",
    "GraphReport",
    "build_metadata",
    "build_onnx",
    "check_finite",
    "check_graph",
    "conv_macs",
    "export_checkpoint",
    "export_onnx",
    "write_atomic",
]
