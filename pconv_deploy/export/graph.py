"""The export-time network: the same function as ``PConvUNet`` + compositing, in fewer, cheaper ops.

``ExportNet(model)`` copies a trained :class:`~pconv_deploy.model.unet.PConvUNet` and rewrites it
for deployment (docs/design.md sections 3, 4 and 6). Every rewrite keeps the outputs exact; the parity
check (:mod:`pconv_deploy.export.parity`) compares against the original model, never against this one.

1. BatchNorm is folded into the partial conv's weights and bias. In valid pixels
   ``BN((conv(X) * ratio + b) * 1) = conv_{W*s}(X) * ratio + (b*s + t)`` with ``s, t`` the BN
   scale and shift (BN is per channel, the ratio per pixel, so they commute).
2. The mask multiplies move from the consumers to the producer. The original multiplies
   ``* valid`` before BN and then every consumer multiplies its input by its mask
   (``X * M``; an encoder output has two consumers: the next level and a decoder skip,
   and a decoder input needs a per-group Split/Expand/Concat of the mask). Here each
   layer multiplies its own output by ``valid`` once, after the activation, so every
   feature tensor is already zero in its holes and no consumer multiplies again.
   In valid pixels nothing changes; hole pixels were ignored by every consumer anyway.
   The last layer's ``* valid`` is observable (an all-hole window outputs 0 before
   de-normalisation) and is the same multiply.
4. The per-pixel work is written so ONNX Runtime's CPU kernels keep it in their blocked NCHWc
   layout and fuse it (measured: the naive form leaves 31 ReorderOutput/14 ReorderInput around the
   32 convs). With ``v = valid`` in {0, 1} and ``act(0) = 0`` (ReLU, LeakyReLU, none):
   ``act(y * ratio + b) * v == act(y * ratio + b * v)``, because ``y = 0`` wherever ``v = 0``
   (the input is zero in its holes). So each layer is ``act(y * R + B)`` with
   ``R = conv1x1(ratio, ones[C,1,1,1])`` (the ratio on all C channels) and
   ``B = conv1x1(1 - v, -b[C,1,1,1]) + b`` (``b * v``, exact: ``b - b`` or ``b - 0``): every operand
   of the Mul and the Add is then a C-channel convolution output, which the NCHWc transformer
   accepts (it rejects a ``[N,1,H,W]`` broadcast and a constant ``[1,C,1,1]`` bias); the Add fuses
   into the bias convolution as its sum input, and a ReLU after it fuses too. The bias convolution
   has a real bias input on purpose: ORT's CPU Conv+Add+activation fusion requires one.
   This is the FP32 graph (the CPU one). The FP16 graph is for TensorRT (ORT CPU has no fast
   float16 convolution): it keeps the ``[N,1,H,W]`` broadcast multiplies, which a GPU fuses into
   pointwise kernels, while the C-channel maps would be extra memory traffic there
   (about 135 MB per 512x512 image at full width, README "GPU estimate").
5. Normalisation, the configured output activation (``PConvConfig.output_activation``, e.g.
   tanh for the seed's PUNet), de-normalisation, compositing and the clamp are inside the graph,
   so callers supply [0, 1] RGB and get [0, 1] RGB with known pixels unchanged.

FP16 (``dtype=torch.float16``): weights are folded in float64 and then cast; features are
float16; the mask path (counts, ratio, valid) stays float32 because counts reach C_in*k*k,
beyond float16's exact integers; the ratio and valid are cast where they meet the features.
Inputs and output stay float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pconv_deploy.model.unet import PConvBlock, PConvUNet, output_activation, run_unet


class ExportPConv(nn.Module):
    """One partial conv with its BatchNorm folded in and its activation; input zero in its holes."""

    def __init__(self, block: PConvBlock, dtype: torch.dtype) -> None:
        super().__init__()
        pconv, conv = block.pconv, block.pconv.conv
        # Fold in float64, round once to the export dtype.
        weight = conv.weight.detach().double()
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels).double()
        if block.bn is not None:
            bn = block.bn
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            shift = bn.bias.detach().double() - bn.running_mean.double() * scale
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = bias * scale + shift
        self.register_buffer("weight", weight.to(dtype))
        self.register_buffer("bias", bias.to(dtype))
        # 1x1 kernels that put the per-pixel ratio and b * valid on all C channels (rewrite 4).
        self.register_buffer("ratio_kernel", torch.ones(conv.out_channels, 1, 1, 1, dtype=dtype))
        self.register_buffer("bias_kernel", -bias.to(dtype).view(-1, 1, 1, 1))
        self.register_buffer("mask_kernel", pconv.mask_kernel.detach().float().clone())
        self.window_size = pconv.window_size
        self.stride, self.padding = conv.stride, conv.padding
        self.act = block.act

    def ratio_and_valid(self, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sum(1)/sum(M) and the updated mask, exact for binary masks: clamps, never an epsilon."""
        return self.window_size / torch.clamp(count, min=1.0), torch.clamp(count, 0.0, 1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One [1, G, k, k] convolution counts the known elements of all G mask groups.
        count = F.conv2d(mask, self.mask_kernel, None, self.stride, self.padding)
        ratio, valid = self.ratio_and_valid(count)
        features = F.conv2d(x, self.weight, None, self.stride, self.padding)
        if x.dtype == torch.float16:  # the TensorRT graph: [N,1,H,W] broadcasts, fused into pointwise kernels
            out = features * ratio.to(x.dtype) + self.bias.view(1, -1, 1, 1)
            out = self.act(out) if self.act is not None else out
            return out * valid.to(out.dtype), valid
        ratio_c = F.conv2d(ratio.to(x.dtype), self.ratio_kernel)  # [N, C, H, W]
        bias_valid = F.conv2d((1.0 - valid).to(x.dtype), self.bias_kernel, self.bias)  # b * valid
        out = features * ratio_c + bias_valid
        return (self.act(out) if self.act is not None else out), valid


class ExportNet(nn.Module):
    """``forward(image, mask) -> inpainted``: the model contract of docs/design.md section 2."""

    def __init__(self, model: PConvUNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = model.config
        self.dtype = dtype
        self.encoder = nn.ModuleList(ExportPConv(b, dtype) for b in model.encoder)
        self.decoder = nn.ModuleList(ExportPConv(b, dtype) for b in model.decoder)
        self.register_buffer("mean", model.mean.detach().float().clone())
        self.register_buffer("std", model.std.detach().float().clone())
        self.eval()

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Normalise and mask in float32, then switch to the feature dtype.
        x = ((image - self.mean) / self.std * mask).to(self.dtype)
        h = run_unet(self.encoder, self.decoder, x, mask=mask)
        raw = output_activation(h.float(), self.config.output_activation) * self.std + self.mean
        return torch.clamp(mask * image + (1 - mask) * raw, 0.0, 1.0)
