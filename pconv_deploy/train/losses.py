"""The paper's loss (Liu et al. 2018, eq. 7), every term returned separately (docs/design.md section 9).

    total = L_valid + 6 L_hole + 0.05 L_perc + 120 (L_style_out + L_style_comp) + 0.1 L_tv

Normalisations, as in the paper and the authors' code:
- L_valid, L_hole: L1 averaged over all N*C*H*W elements (the mask selects, it does not renormalise).
- L_perc: for each of VGG16 pool1..pool3, the mean L1 between features of I_out and I_gt plus
  between I_comp and I_gt; summed over the three layers.
- L_style_*: Gram matrices f f^T / (C*H*W) per image, mean L1 over the N*C*C entries, summed over layers.
- L_hole_mean (not in the paper; `--loss pixel-mean` and `hole-mean`): L1 over each image's hole pixels, averaged
  per image, so small holes weigh as much as large ones.
- L_tv: absolute differences of horizontally and vertically neighbouring pixels of I_comp where
  both pixels lie in the hole region dilated by one pixel (3x3), summed and divided by N*C*H*W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pconv_deploy.model.unet import composite

WEIGHTS = {"valid": 1.0, "hole": 6.0, "perceptual": 0.05, "style_out": 120.0, "style_comp": 120.0, "tv": 0.1}


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, C], divided by C*H*W."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def dilated_holes(mask: torch.Tensor) -> torch.Tensor:
    """The hole region (mask == 0) grown by one pixel in all 8 directions, as a {0, 1} tensor."""
    return (F.max_pool2d(1 - mask, kernel_size=3, stride=1, padding=1) > 0).to(mask.dtype)


def hole_mean(image: torch.Tensor, mask: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """L1 averaged over each image's own hole pixels (and channels), then over the batch.

    Unlike L_hole (normalised by N*C*H*W), every image counts the same whatever its hole size:
    the evaluation's mean hole L1 per bin, where thin strokes would otherwise get little weight.
    """
    holes = 1 - mask
    count = holes.sum(dim=(1, 2, 3)).clamp_min(1) * image.shape[1]  # an image without holes counts 0
    return ((holes * (raw - image)).abs().sum(dim=(1, 2, 3)) / count).mean()


def total_variation(comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TV of I_comp over neighbour pairs both inside the dilated hole region, per N*C*H*W."""
    region = dilated_holes(mask)
    pairs_h = region[:, :, :, 1:] * region[:, :, :, :-1]
    pairs_v = region[:, :, 1:, :] * region[:, :, :-1, :]
    tv_h = (pairs_h * (comp[:, :, :, 1:] - comp[:, :, :, :-1]).abs()).sum()
    tv_v = (pairs_v * (comp[:, :, 1:, :] - comp[:, :, :-1, :]).abs()).sum()
    return (tv_h + tv_v) / comp.numel()


class InpaintingLoss(nn.Module):
    """``forward(image, mask, raw) -> {"valid", "hole", "perceptual", "style_out", "style_comp", "tv", "total"}``.

    ``image`` is I_gt in [0, 1], ``mask`` 1 = known, ``raw`` the network's I_out. ``vgg`` maps
    [0, 1] RGB to a list of feature maps (see :mod:`pconv_deploy.train.vgg`).
    """

    def __init__(self, vgg: nn.Module | None, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.vgg = vgg  # None: the pixel terms only (perceptual and style are reported as 0)
        if vgg is not None:  # a fixed feature extractor: the loss trains only the network behind raw
            vgg.requires_grad_(False)
        self.weights = dict(weights or WEIGHTS)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        comp = composite(image, mask, raw)
        n = image.shape[0]
        terms = {
            "valid": (mask * (raw - image)).abs().mean(),
            "hole": ((1 - mask) * (raw - image)).abs().mean(),
            "hole_mean": hole_mean(image, mask, raw),
            "perceptual": raw.new_zeros(()),
            "style_out": raw.new_zeros(()),
            "style_comp": raw.new_zeros(()),
        }
        for f, f_gt in self._features(image, raw, comp):
            f_out, f_comp = f[:n], f[n:]
            terms["perceptual"] = terms["perceptual"] + (f_out - f_gt).abs().mean() + (f_comp - f_gt).abs().mean()
            g_gt = gram_matrix(f_gt)
            terms["style_out"] = terms["style_out"] + (gram_matrix(f_out) - g_gt).abs().mean()
            terms["style_comp"] = terms["style_comp"] + (gram_matrix(f_comp) - g_gt).abs().mean()
        terms["tv"] = total_variation(comp, mask)
        terms["total"] = sum(self.weights[k] * terms[k] for k in self.weights)
        return terms

    def _features(self, image: torch.Tensor, raw: torch.Tensor, comp: torch.Tensor) -> list:
        """[(features of cat(raw, comp), features of image)] per VGG layer; [] without a VGG."""
        if self.vgg is None:
            return []
        # I_gt's features need no gradient: a separate no-grad pass saves a third of VGG's backward,
        # which dominates a training step of a small model.
        with torch.no_grad():
            feats_gt = self.vgg(image)
        return list(zip(self.vgg(torch.cat([raw, comp], dim=0)), feats_gt))
