"""Where an exported file could leak the machine that made it: the checkout's and site-packages' paths."""

from __future__ import annotations

import site
import sysconfig
from pathlib import Path

import onnx

import pconv_deploy


def developer_paths() -> list[str]:
    """The source checkout (or installed package) and every site-packages folder of this interpreter."""
    paths = {str(Path(pconv_deploy.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"]}
    paths.update(site.getsitepackages())
    return sorted(p for p in paths if len(p) > 1)


def provenance_leaks(model: onnx.ModelProto) -> list[str]:
    """Every string of the file outside the model-level contract that names a developer path or a stack trace."""
    found = []
    graphs = [model.graph, *model.functions]
    for graph in graphs:
        owners = [graph, *graph.node]
        if isinstance(graph, onnx.GraphProto):
            owners += [*graph.input, *graph.output, *graph.value_info, *graph.initializer]
        for owner in owners:
            texts = [owner.doc_string, *(f"{p.key}={p.value}" for p in owner.metadata_props)]
            for text in texts:
                if "stack_trace" in text or any(path in text for path in developer_paths()):
                    found.append(f"{type(owner).__name__} {getattr(owner, 'name', '')!r}: {text[:120]}")
    raw = model.SerializeToString()
    found += [f"bytes name {path}" for path in developer_paths() if path.encode() in raw]
    return found
