import numpy as np
import pytest
import torch
from helpers.reference import partial_conv_bruteforce, random_binary_mask

from pconv_deploy.model import PartialConv2d


def _layer(c_in, c_out, k, stride, padding, bias, groups=None, seed=0):
    torch.manual_seed(seed)
    layer = PartialConv2d(c_in, c_out, k, stride=stride, padding=padding, bias=bias, mask_groups=groups).double()
    if bias:
        torch.nn.init.uniform_(layer.conv.bias, -1, 1)
    return layer


MASKS = {"random": 0.5, "sparse": 0.97, "all-hole": 1.0, "no-hole": 0.0}


@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize(
    "k,stride,padding,bias",
    [(3, 1, 1, True), (3, 2, 1, False), (5, 2, 2, True), (7, 2, 3, True), (1, 1, 0, True), (3, 1, 0, True)],
)
def test_matches_paper_formula(mask_kind, k, stride, padding, bias):
    rng = np.random.default_rng(k * 100 + stride * 10 + padding)
    c_in, c_out = 3, 4
    x = rng.standard_normal((2, c_in, 11, 9))
    mask1 = random_binary_mask(rng, (2, 1, 11, 9), MASKS[mask_kind])
    layer = _layer(c_in, c_out, k, stride, padding, bias)
    out, new_mask = layer(torch.from_numpy(x), torch.from_numpy(mask1))
    ref_out, ref_mask = partial_conv_bruteforce(
        x,
        np.repeat(mask1, c_in, axis=1),
        layer.conv.weight.detach().numpy(),
        layer.conv.bias.detach().numpy() if bias else None,
        stride,
        padding,
    )
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(new_mask.detach().numpy(), ref_mask)
    if mask_kind == "all-hole":
        assert not new_mask.any() and not out.any()
    if mask_kind == "no-hole" and padding == 0:
        assert new_mask.all()


def test_grouped_mask_equals_explicit_multichannel_mask():
    """A decoder layer (two concatenated groups) equals per-channel masks and the paper's formula."""
    rng = np.random.default_rng(7)
    c_a, c_b = 5, 3  # upsampled features and the encoder skip
    x = rng.standard_normal((2, c_a + c_b, 8, 10))
    m_a = random_binary_mask(rng, (2, 1, 8, 10), 0.6)
    m_b = random_binary_mask(rng, (2, 1, 8, 10), 0.3)
    full_mask = np.concatenate([np.repeat(m_a, c_a, 1), np.repeat(m_b, c_b, 1)], axis=1)

    grouped = _layer(c_a + c_b, 6, 3, 1, 1, True, groups=(c_a, c_b), seed=1)
    per_channel = _layer(c_a + c_b, 6, 3, 1, 1, True, groups=(1,) * (c_a + c_b), seed=1)
    per_channel.load_state_dict(grouped.state_dict())

    out_g, mask_g = grouped(torch.from_numpy(x), torch.from_numpy(np.concatenate([m_a, m_b], 1)))
    out_c, mask_c = per_channel(torch.from_numpy(x), torch.from_numpy(full_mask))
    torch.testing.assert_close(out_g, out_c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mask_g, mask_c)

    ref_out, ref_mask = partial_conv_bruteforce(
        x, full_mask, grouped.conv.weight.detach().numpy(), grouped.conv.bias.detach().numpy(), 1, 1
    )
    np.testing.assert_allclose(out_g.detach().numpy(), ref_out, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(mask_g.detach().numpy(), ref_mask)


def test_mask_path_has_no_epsilon_and_stays_finite_in_float16():
    """Run in float16 (tiny sizes: fp16 convolutions are slow on CPU): windows holding a single valid pixel
    give ratio C*k*k (576 here), all-hole windows give exactly 0; no 1/eps blow-up, no 0 * inf."""
    layer = _layer(64, 4, 3, 1, 1, True)
    mask = torch.zeros(2, 1, 9, 9, dtype=torch.float64)
    mask[0, 0, 4, 4] = 1  # item 0: one valid pixel; item 1: all hole
    x = torch.randn(2, 64, 9, 9, dtype=torch.float64)
    ref_out, ref_mask = layer(x, mask)  # float64, checked against the paper's formula above
    half = layer.half()
    out, new_mask = half(x.half(), mask.half())
    assert out.dtype == torch.float16 and new_mask.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert new_mask[0].sum() == 9 and new_mask[1].sum() == 0  # the 3x3 neighbourhood of the single valid pixel
    assert not out[1].any()  # all-hole: exactly zero, bias included
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-2, atol=1e-2)
    # what an epsilon would do here: 1e-8 is 0 in float16, so an all-hole window divides by zero
    eps_ratio = torch.tensor(576.0, dtype=torch.float16) / (torch.tensor(0.0, dtype=torch.float16) + 1e-8)
    assert torch.isinf(eps_ratio) and torch.isnan(eps_ratio * 0)


def test_rejects_bad_groups_and_mask_channels():
    with pytest.raises(ValueError, match="sum to in_channels"):
        PartialConv2d(4, 2, 3, mask_groups=(1, 2))
    layer = PartialConv2d(4, 2, 3, mask_groups=(2, 2))
    with pytest.raises(ValueError, match="mask group"):
        layer(torch.zeros(1, 4, 5, 5), torch.zeros(1, 1, 5, 5))
