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
MIN_OPSET, DEFAULT_OPSET = 18, 20  # ONNX opsets of an export: the dynamo exporter's oldest; TensorRT 10's best

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


# What a CPU engine computes a file's float parts in (`pconv infer --inference-precision`), spelled as
# OpenVINO's INFERENCE_PRECISION_HINT: "auto" is f32, the file's own numbers; bf16 and f16 are asked for,
# never chosen silently. Not the file's precision (pconv.precision: what the graph itself stores).
INFERENCE_PRECISIONS = ("auto", "f32", "bf16", "f16")

# The choices every layer offers (CLI options, the Python API, the app): spelled here, imported everywhere.
BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")  # what runs a batch (runtime.load_backend)
STRATEGIES = ("crop", "resize", "full")  # how a photo meets the network (runtime.Inpainter)
MASK_CONVENTIONS = ("hole-white", "hole-black")  # how a mask file marks the hole (white is the default)
OUTPUT_FORMATS = ("png", "jpg", "webp", "same")  # what `pconv infer` writes ("same": each input's own format)
IMPORT_FORMATS = ("xiefan-guo", "naoto0804", "mmagic", "state-dict")  # checkpoints import-checkpoint reads
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # image files a folder job reads

# The defaults of `pconv infer`'s settings (and the app's), spelled once: the options objects of the API
# and the CLI flags both read them here (this module imports nothing heavy, so `pconv --help` stays fast).
DEFAULT_BATCH_SIZE = 4  # tiles of equal padded size per backend call
DEFAULT_STRATEGY = STRATEGIES[0]  # crop
DEFAULT_MAX_SIDE = 1024  # the longest side the network sees (crop and resize)
# Context pixels around each hole for crop: 64 px filled held-out 6-20 MP photos as well as 128 px and as
# the whole image (hole L1 within 0.03-0.05 of full's; scripts/crop_context.py) for two thirds of the
# pixels; the quarter-of-the-long-side rule (runtime/windows.py) gives large holes more.
CROP_MARGIN = 64
DEFAULT_WORKERS = 2  # decode and write threads of the folder job
DEFAULT_MAX_PIXELS = 60_000_000  # an image is refused past this, checked on its header (decompression bombs)
DEFAULT_QUALITY = 95  # JPEG / WebP
DEFAULT_PNG_LEVEL = 2  # zlib level: ~3x faster than 6, files ~10 % larger
DEFAULT_MODEL_NAME = "pconv"  # the model's name on a Triton server (`pconv serve`, `triton-repo`, `--server-model`)
DEFAULT_SERVER_WAIT = 60.0  # seconds `pconv infer --server` waits for a server's model to be ready

# The largest hole-to-image ratio the models are trained and evaluated on: the top of the paper's largest
# bin (50-60 %). `pconv infer` warns past it: such a mask is more often one saved with the inverse convention.
TRAINED_HOLE_RATIO = 0.6

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


def contract_levels(metadata: dict[str, str], where: str) -> tuple[int, int]:
    """(pconv.layers, pconv.multiple) of a file's metadata, range-checked before any use.

    The one reader for these two integers (build-engine, triton-repo, the engine runtime and check):
    a header or sidecar is untrusted text, and ``2**layers`` of a hand-edited 30000000000 runs for
    minutes. Both must be plain decimal integers, layers one of the network's depths and multiple
    exactly 2**layers; anything else is one line naming the file and the field.
    """
    from pconv_deploy.errors import PConvError

    values = []
    for key in ("pconv.layers", "pconv.multiple"):
        text = metadata.get(key)
        if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 4:
            raise PConvError(f"{where}: {key} must be a positive integer, got {text!r}")
        values.append(int(text))
    layers, multiple = values
    if not 2 <= layers <= len(ENCODER_CHANNELS):
        raise PConvError(f"{where}: pconv.layers must be from 2 to {len(ENCODER_CHANNELS)}, got {layers}")
    if multiple != 2**layers:
        raise PConvError(f"{where}: pconv.multiple is {multiple} but pconv.layers is {layers} (expected {2**layers})")
    return layers, multiple


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
