"""The partial convolution of Liu et al. (ECCV 2018), written with conv and clamp ops only.

Per sliding window with features X, binary mask M, weights W and bias b:

    x' = W^T (X * M) * sum(1) / sum(M) + b   if sum(M) > 0, else 0
    m' = 1 if sum(M) > 0 else 0

sum(1) counts every element of the window (C_in * kh * kw, multi-channel semantics).
No epsilon: ``clamp(count, min=1)`` is exact for binary masks and survives both the
ONNX optimizer (which folds ``count + 1e-8`` away) and FP16 (docs/design.md section 3).

Masks are carried as one single-channel mask per concatenated channel group, so a
decoder layer gets exact multi-channel semantics from a G-channel mask convolution
instead of a C_out x C_in one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PartialConv2d(nn.Module):
    """Partial convolution; ``forward(x, mask) -> (out, new_mask)``.

    ``mask`` is ``[N, G, H, W]``: one binary mask per channel group, where
    ``mask_groups`` gives the channel count of each group of ``x`` (default: one group
    covering all ``in_channels``, i.e. ``mask`` is ``[N, 1, H, W]``). ``new_mask`` is
    ``[N, 1, H', W']``: after a partial convolution every output channel shares a mask.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        mask_groups: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        groups = tuple(mask_groups) if mask_groups is not None else (in_channels,)
        if sum(groups) != in_channels or min(groups) < 1:
            raise ValueError(f"mask_groups {groups} must be positive and sum to in_channels={in_channels}")
        self.mask_groups = groups
        kh, kw = self.conv.kernel_size
        self.window_size = float(in_channels * kh * kw)  # the paper's sum(1)
        # count = sum_g C_g * conv(m_g, ones): one conv whose weight is C_g on group g.
        ones = torch.cat([torch.full((1, 1, kh, kw), float(c)) for c in groups], dim=1)
        self.register_buffer("mask_kernel", ones, persistent=False)

    def expand_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The ``[N, C_in, H, W]`` multi-channel mask that the grouped mask stands for."""
        if len(self.mask_groups) == 1:
            return mask
        parts = [m.expand(-1, c, -1, -1) for m, c in zip(mask.split(1, dim=1), self.mask_groups)]
        return torch.cat(parts, dim=1)

    def mask_count(self, mask: torch.Tensor) -> torch.Tensor:
        """sum(M) per output window, as a ``[N, 1, H', W']`` tensor."""
        c = self.conv
        return F.conv2d(mask, self.mask_kernel.to(mask.dtype), None, c.stride, c.padding, c.dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mask.shape[1] != len(self.mask_groups):
            raise ValueError(
                f"mask has {mask.shape[1]} channels, expected one per mask group ({len(self.mask_groups)})"
            )
        count = self.mask_count(mask)
        ratio = self.window_size / torch.clamp(count, min=1.0)
        valid = torch.clamp(count, 0.0, 1.0)
        raw = F.conv2d(x * self.expand_mask(mask), self.conv.weight, None, self.conv.stride, self.conv.padding)
        out = raw * ratio.to(raw.dtype)
        if self.conv.bias is not None:
            out = out + self.conv.bias.view(1, -1, 1, 1)
        return out * valid.to(out.dtype), valid
