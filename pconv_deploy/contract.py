"""The model contract's shared vocabulary (docs/design.md section 2), importable without torch or onnx.

Every exported ONNX file carries these ``metadata_props``; every engine sidecar repeats them; the
runtime, the TensorRT backend and the Triton config read them. Spell them here and nowhere else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Tensor names and channel counts: [N, C, H, W] float32 in and out.
IMAGE, MASK, OUTPUT = "image", "mask", "inpainted"
INPUT_NAMES = (IMAGE, MASK)
OUTPUT_NAMES = (OUTPUT,)
CHANNELS = {IMAGE: 3, MASK: 1, OUTPUT: 3}

FORMAT_VERSION = "1"
MASK_CONVENTION = "1=known,0=hole"

# pconv.precision of a file: the graph's feature path (the mask path, compositing and I/O are float32 in all).
# fp16: float16 features (TensorRT); int8: Q/DQ feature convolutions (`pconv export --precision int8`).
PRECISIONS = ("fp32", "fp16", "int8")

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

# Keys added after format 1 shipped: written by every export, read with these defaults from older files
# (which are valid without them), so METADATA_KEYS above stays the set a file must carry.
METADATA_DEFAULTS = {
    "pconv.output_activation": "none",  # applied inside the graph; "tanh" for the seed's PUNet
}

# What pconv.layers and pconv.width stand for: the paper's encoder widths per level (docs/design.md section 4),
# scaled by the width. Here, not in model/, because the runtime's memory estimate reads them without torch.
ENCODER_CHANNELS = (64, 128, 256, 512, 512, 512, 512, 512)


def encoder_channels(layers: int, width: float) -> list[int]:
    """Output channels of each encoder level of a model with this ``pconv.layers`` and ``pconv.width``."""
    return [max(1, round(c * width)) for c in ENCODER_CHANNELS[:layers]]


# Model files by suffix.
ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan")
CHECKPOINT_SUFFIX = ".safetensors"

# The network's own input space: x_net = (x - mean) / std, applied inside the model and the graph.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def contract_metadata(
    *,
    layers: int,
    width: float,
    input_norm: str,
    precision: str,
    checkpoint_sha256: str | None,
    output_activation: str = "none",
) -> dict[str, str]:
    """The ``metadata_props`` of a model with this architecture (the exporter and the torch backend share it)."""
    from pconv_deploy import __version__

    return {
        "pconv.format": FORMAT_VERSION,
        "pconv.layers": str(layers),
        "pconv.width": str(width),
        "pconv.multiple": str(2**layers),
        "pconv.input_norm": input_norm,
        "pconv.mask_convention": MASK_CONVENTION,
        "pconv.precision": precision,
        "pconv.checkpoint_sha256": checkpoint_sha256 or "none",
        "pconv.producer": f"pconv-deploy {__version__}",
        "pconv.output_activation": output_activation,
    }


def metadata_value(metadata: dict[str, str], key: str) -> str:
    """A contract key from a file's metadata, with the default for keys older files lack."""
    return metadata[key] if key in metadata else METADATA_DEFAULTS[key]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (models reach hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
