"""The paper's PConv U-Net (docs/design.md section 4), configurable in depth and width."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pconv_deploy.contract import ENCODER_CHANNELS, NORMALISATIONS, encoder_channels
from pconv_deploy.model.pconv import PartialConv2d

# Encoder kernels of the paper's 8 levels (their widths: contract.ENCODER_CHANNELS); 7 levels drop the last one.
ENCODER_KERNELS = (7, 5, 5, 3, 3, 3, 3, 3)

# What the last layer's output goes through before de-normalisation (e.g. the seed's PUNet ends in tanh).
OUTPUT_ACTIVATIONS = ("none", "tanh")


@dataclass(frozen=True)
class PConvConfig:
    """Everything needed to rebuild the architecture; stored in every checkpoint.

    ``input_norm`` names the network's own input space (contract.NORMALISATIONS: "imagenet",
    "minus_one_one" for [-1, 1], "unit" for [0, 1] as is); ``output_activation`` is applied to the
    last layer's output in that space, before de-normalisation. Both live inside the model and
    the exported graph, so callers always supply and receive [0, 1] RGB.
    """

    layers: int = 8
    width: float = 1.0
    input_norm: str = "imagenet"
    output_activation: str = "none"

    def __post_init__(self) -> None:
        if not 2 <= self.layers <= len(ENCODER_CHANNELS):
            raise ValueError(f"layers must be between 2 and {len(ENCODER_CHANNELS)}, got {self.layers}")
        if not 0 < self.width <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if self.input_norm not in NORMALISATIONS:
            raise ValueError(f"input_norm must be one of {sorted(NORMALISATIONS)}, got {self.input_norm!r}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {list(OUTPUT_ACTIVATIONS)}, got {self.output_activation!r}"
            )

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this (one halving per encoder level)."""
        return 2**self.layers

    def encoder_channels(self) -> list[int]:
        return encoder_channels(self.layers, self.width)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PConvBlock(nn.Module):
    """Partial conv, optional BatchNorm, activation."""

    def __init__(self, pconv: PartialConv2d, bn: bool, act: nn.Module | None) -> None:
        super().__init__()
        self.pconv = pconv
        self.bn = nn.BatchNorm2d(pconv.conv.out_channels) if bn else None
        self.act = act

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.pconv(x, mask)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x, mask


class PConvUNet(nn.Module):
    """``forward(image, mask)``: image RGB [N,3,H,W] in [0,1], mask [N,1,H,W] with 1 = known.

    Returns the raw prediction in [0, 1] space (not composited, not clamped); use
    :func:`composite` for the paper's I_comp.
    """

    def __init__(
        self, layers: int = 8, width: float = 1.0, input_norm: str = "imagenet", *, output_activation: str = "none"
    ) -> None:
        super().__init__()
        self.config = PConvConfig(layers, width, input_norm, output_activation)
        enc = self.config.encoder_channels()
        self.encoder = nn.ModuleList()
        in_ch = 3
        for i, (out_ch, k) in enumerate(zip(enc, ENCODER_KERNELS)):
            # BatchNorm makes the conv bias redundant: only the first level keeps one.
            pconv = PartialConv2d(in_ch, out_ch, k, stride=2, padding=k // 2, bias=i == 0)
            self.encoder.append(PConvBlock(pconv, bn=i > 0, act=nn.ReLU()))
            in_ch = out_ch
        # Decoder level i (deepest first) joins the upsampled features with encoder
        # output i-1 (the input image for the last level) and returns to its width.
        self.decoder = nn.ModuleList()
        skips = [3, *enc[:-1]]
        for i in reversed(range(layers)):
            last = i == 0
            out_ch = 3 if last else skips[i]
            pconv = PartialConv2d(in_ch + skips[i], out_ch, 3, padding=1, bias=last, mask_groups=(in_ch, skips[i]))
            self.decoder.append(PConvBlock(pconv, bn=not last, act=None if last else nn.LeakyReLU(0.2)))
            in_ch = out_ch
        mean, std = NORMALISATIONS[input_norm]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def check_input(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        n, c, h, w = image.shape
        m = self.config.multiple
        if c != 3 or mask.shape != (n, 1, h, w):
            raise ValueError(
                f"expected image [N,3,H,W] and mask [N,1,H,W], got {list(image.shape)} and {list(mask.shape)}"
            )
        if h % m or w % m:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of {m} (2^layers for layers={self.config.layers}): pad it first"
            )
        if self.training and n == 1 and h == m and w == m:
            raise ValueError(
                f"batch size 1 at {h}x{w} leaves a 1x1 bottleneck, where BatchNorm cannot train: "
                "use a batch of 2 or more, a larger size, or freeze BatchNorm (model.eval())"
            )

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.check_input(image, mask)
        x = (image - self.mean) / self.std
        raw = output_activation(run_unet(self.encoder, self.decoder, x, mask=mask), self.config.output_activation)
        return raw * self.std + self.mean

    def partial_convs(self) -> list[PartialConv2d]:
        return [b.pconv for b in [*self.encoder, *self.decoder]]


def run_unet(encoder: nn.ModuleList, decoder: nn.ModuleList, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
    """The U-Net wiring shared by the model and its export-time rewrite: layers map (h, m) -> (h, m).

    Decoder level i upsamples features and mask (nearest x2) and concatenates them with encoder
    output i-1 (the input itself for the last level), as two mask groups.
    """
    skips = [(x, mask)]
    h, m = x, mask
    for layer in encoder:
        h, m = layer(h, m)
        skips.append((h, m))
    skips.pop()  # the deepest output is the decoder's input, not a skip
    for layer in decoder:
        skip, skip_mask = skips.pop()
        h = torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skip], dim=1)
        m = torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), skip_mask], dim=1)
        h, m = layer(h, m)
    return h


def output_activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """The configured output activation (shared by the model and the export graph)."""
    return torch.tanh(x) if name == "tanh" else x


def composite(image: torch.Tensor, mask: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """The paper's I_comp: known pixels from ``image``, holes from ``raw``."""
    return mask * image + (1 - mask) * raw


def feature_macs(model: PConvUNet, height: int, width: int) -> int:
    """Multiply-accumulates of the feature convolutions (not the mask path) at HxW."""
    total, scale = 0, 1
    for block in model.encoder:
        scale *= 2
        total += _conv_macs(block.pconv.conv, height // scale, width // scale)
    for block in model.decoder:
        scale //= 2  # nearest x2 upsample, then a stride-1 conv
        total += _conv_macs(block.pconv.conv, height // scale, width // scale)
    return total


def _conv_macs(conv: nn.Conv2d, out_h: int, out_w: int) -> int:
    kh, kw = conv.kernel_size
    return conv.in_channels * conv.out_channels * kh * kw * out_h * out_w


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
