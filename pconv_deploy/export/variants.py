"""Comparison networks for ``pconv bench``: the same U-Net without the mask path, and a naive mask path.

Both are built from our export-time network (:class:`~pconv_deploy.export.graph.ExportNet`), so
weights, BatchNorm folding, wiring, normalisation and compositing are identical, and exported the
same way (dynamo exporter, opset 20, dynamic batch and size, one file). Only the layers differ:

- ``plain``: ``conv(x) + b`` (bias inside the Conv) and the activation. No counts, ratio or
  valid multiply: what a plain U-Net costs. The difference to ours is the mask path's cost.
- ``naive``: the partial convolution as naoto0804's implementation computes it: a full
  ``[C_out, C_in, k, k]`` all-ones mask convolution on a C_in-channel mask per layer, C_out-channel
  masks between layers and ``X * M`` on every layer input. Same function as ours (the bench's test
  checks that), about twice the convolution work.

These are never shipped; they only measure what our graph saves.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pconv_deploy.export.graph import ExportNet, ExportPConv
from pconv_deploy.model.unet import PConvUNet

VARIANTS = ("ours", "plain", "naive")


class PlainConv(nn.Module):
    """A plain convolution with the same (BatchNorm-folded) weights; the mask is only subsampled, and unused.

    The subsampled mask keeps the U-Net wiring's shapes; nothing reads it, so the exporter drops it.
    """

    def __init__(self, layer: ExportPConv) -> None:
        super().__init__()
        self.register_buffer("weight", layer.weight.detach().clone())
        self.register_buffer("bias", layer.bias.detach().reshape(-1).clone())
        self.stride, self.padding, self.act = layer.stride, layer.padding, layer.act

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        sh, sw = self.stride
        return (self.act(out) if self.act is not None else out), mask[:, :1, ::sh, ::sw]


class NaivePConv(nn.Module):
    """The partial convolution with a C_out x C_in all-ones mask convolution and C_out-channel masks."""

    def __init__(self, layer: ExportPConv, groups: tuple[int, ...]) -> None:
        super().__init__()
        weight = layer.weight.detach().clone()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", layer.bias.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("mask_kernel", torch.ones(weight.shape, dtype=torch.float32))
        self.window_size = float(weight.shape[1] * weight.shape[2] * weight.shape[3])
        self.stride, self.padding, self.act, self.groups = layer.stride, layer.padding, layer.act, groups

    def full_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Expand the network's one-channel input mask (first layer, last skip) to its C_in channels."""
        if mask.shape[1] == sum(self.groups):
            return mask
        if mask.shape[1] == 1:
            return mask.expand(-1, sum(self.groups), -1, -1)
        return torch.cat([mask[:, :-1], mask[:, -1:].expand(-1, self.groups[-1], -1, -1)], dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.full_mask(mask)
        count = F.conv2d(mask, self.mask_kernel, None, self.stride, self.padding)  # [N, C_out, H, W]
        ratio, valid = self.window_size / torch.clamp(count, min=1.0), torch.clamp(count, 0.0, 1.0)
        raw = F.conv2d(x * mask.to(x.dtype), self.weight, None, self.stride, self.padding)
        out = raw * ratio.to(x.dtype) + self.bias
        if self.act is not None:
            out = self.act(out)
        return out * valid.to(out.dtype), valid


def variant_net(model: PConvUNet, kind: str, dtype: torch.dtype = torch.float32) -> ExportNet:
    """Our export-time network (``ours``) or one of the comparison variants, in eval mode."""
    if kind not in VARIANTS:
        raise ValueError(f"unknown variant {kind!r}: choose one of {', '.join(VARIANTS)}")
    net = ExportNet(model.eval(), dtype)
    if kind == "plain":
        net.encoder = nn.ModuleList(PlainConv(layer) for layer in net.encoder)
        net.decoder = nn.ModuleList(PlainConv(layer) for layer in net.decoder)
    elif kind == "naive":
        blocks = [*model.encoder, *model.decoder]
        layers = [NaivePConv(layer, b.pconv.mask_groups) for layer, b in zip([*net.encoder, *net.decoder], blocks)]
        net.encoder = nn.ModuleList(layers[: len(net.encoder)])
        net.decoder = nn.ModuleList(layers[len(net.encoder) :])
    return net.eval()


def export_variant(model: PConvUNet, kind: str, path: str | Path, *, fp16: bool = False, opset: int = 20) -> Path:
    """Export a variant exactly as ``pconv export`` exports ours (dynamic batch and size, no external data).

    No contract metadata and no checks: these files only feed the benchmark.
    """
    from pconv_deploy.export.onnx_export import torch_to_onnx, write_atomic

    net = variant_net(model, kind, torch.float16 if fp16 else torch.float32)
    return write_atomic(torch_to_onnx(net, model.config.multiple, opset), path)
