"""The model contract's shared vocabulary (DESIGN.md section 2), importable without torch or onnx.

Every exported ONNX file carries these ``metadata_props``; every engine sidecar repeats them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

METADATA_KEYS = (
    "pconv.format",
    "pconv.layers",
    "pconv.width",
    "pconv.multiple",
    "pconv.input_norm",
    "pconv.mask_convention",
    "pconv.precision",
    "pconv.checkpoint_sha256",
    "pconv.producer",
)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (models reach hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
