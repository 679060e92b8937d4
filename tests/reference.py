"""Independent numpy references used by the tests (no code from pconv_deploy)."""

from __future__ import annotations

import numpy as np


def partial_conv_bruteforce(x, mask, weight, bias, stride, padding):
    """The paper's formula evaluated window by window.

    x: [N, C, H, W]; mask: [N, C, H, W] binary (one value per feature element);
    weight: [O, C, kh, kw]; bias: [O] or None. Returns (out [N,O,H',W'], new_mask [N,1,H',W']).
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    mp = np.pad(mask, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), dtype=np.float64)
    new_mask = np.zeros((n, 1, ho, wo), dtype=np.float64)
    sum1 = c * kh * kw
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                xs = xp[b, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                ms = mp[b, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                summ = ms.sum()
                if summ > 0:
                    for oc in range(o):
                        val = (weight[oc] * xs * ms).sum() * sum1 / summ
                        out[b, oc, i, j] = val + (bias[oc] if bias is not None else 0.0)
                    new_mask[b, 0, i, j] = 1.0
    return out, new_mask


def random_binary_mask(rng, shape, hole_ratio):
    return (rng.random(shape) >= hole_ratio).astype(np.float64)


def sha256_of(path) -> str:
    """Independent of pconv_deploy's own hashing helper."""
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
