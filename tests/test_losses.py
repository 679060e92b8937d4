"""Each loss term against a naive numpy computation written from the paper's definitions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pconv_deploy.train.losses import WEIGHTS, InpaintingLoss, dilated_holes, gram_matrix, total_variation


class TwoLayerFeatures(torch.nn.Module):
    """A small fixed feature extractor standing in for VGG: two maps at different scales."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x):
        a = F.max_pool2d(F.relu(self.conv1(x)), 2)
        b = F.max_pool2d(F.relu(self.conv2(a)), 2)
        return [a, b]


def naive_gram(f: np.ndarray) -> np.ndarray:
    n, c, h, w = f.shape
    g = np.zeros((n, c, c))
    for k in range(n):
        for i in range(c):
            for j in range(c):
                g[k, i, j] = sum(f[k, i, y, x] * f[k, j, y, x] for y in range(h) for x in range(w))
    return g / (c * h * w)


def naive_dilated_holes(mask: np.ndarray) -> np.ndarray:
    """A pixel is in the region if any pixel of its 3x3 neighbourhood (inside the image) is a hole."""
    n, _, h, w = mask.shape
    region = np.zeros((n, h, w), bool)
    for k in range(n):
        for y in range(h):
            for x in range(w):
                window = mask[k, 0, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
                region[k, y, x] = (window == 0).any()
    return region


def naive_tv(comp: np.ndarray, mask: np.ndarray) -> float:
    region = naive_dilated_holes(mask)
    n, c, h, w = comp.shape
    total = 0.0
    for k in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    if x + 1 < w and region[k, y, x] and region[k, y, x + 1]:
                        total += abs(comp[k, ch, y, x + 1] - comp[k, ch, y, x])
                    if y + 1 < h and region[k, y, x] and region[k, y + 1, x]:
                        total += abs(comp[k, ch, y + 1, x] - comp[k, ch, y, x])
    return total / comp.size


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, 8, 8))
    raw = rng.random((2, 3, 8, 8)) * 1.2 - 0.1  # the raw prediction may leave [0, 1]
    mask = np.ones((2, 1, 8, 8))
    mask[0, 0, 2:5, 3:7] = 0
    mask[1, 0, 0:2, 0:3] = 0  # a hole touching the border
    mask[1, 0, 7, 7] = 0
    return image, mask, raw


def test_gram_matrix_divides_by_chw():
    f = np.random.default_rng(1).random((2, 3, 4, 5))
    np.testing.assert_allclose(gram_matrix(torch.tensor(f)).numpy(), naive_gram(f), rtol=1e-12)


def test_dilated_hole_region_and_tv_against_loops(batch):
    image, mask, raw = batch
    comp = mask * image + (1 - mask) * raw
    region = dilated_holes(torch.tensor(mask)).numpy()[:, 0].astype(bool)
    np.testing.assert_array_equal(region, naive_dilated_holes(mask))
    assert region[0, 1:6, 2:8].all() and region.sum() > (mask == 0).sum()  # grown by one pixel
    np.testing.assert_allclose(float(total_variation(torch.tensor(comp), torch.tensor(mask))), naive_tv(comp, mask))


def test_tv_by_hand():
    # One hole pixel in the middle of 5x5: the region is the 3x3 block around it, holding 6
    # horizontal and 6 vertical pairs. On a ramp I(y, x) = x each horizontal pair differs by 1.
    mask = torch.ones(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 0
    ramp = torch.arange(5.0).repeat(5, 1).view(1, 1, 5, 5)
    assert float(total_variation(ramp, mask)) == pytest.approx(6 / 25)
    # Pixels outside the dilated region do not count, however rough they are.
    rough = ramp.clone()
    rough[0, 0, 0, :] = torch.tensor([0.0, 9.0, 0.0, 9.0, 0.0])
    assert float(total_variation(rough, mask)) == pytest.approx(6 / 25)


def test_every_term_against_naive_computation(batch):
    image, mask, raw = batch
    features = TwoLayerFeatures().double()
    terms = InpaintingLoss(features)(torch.tensor(image), torch.tensor(mask), torch.tensor(raw))
    comp = mask * image + (1 - mask) * raw

    def feats(x):
        with torch.no_grad():
            return [f.numpy() for f in features(torch.tensor(x))]

    f_out, f_comp, f_gt = feats(raw), feats(comp), feats(image)
    n_elements = image.size  # N*C*H*W, as the authors' size-averaged L1
    expected = {
        "valid": np.abs(mask * (raw - image)).sum() / n_elements,
        "hole": np.abs((1 - mask) * (raw - image)).sum() / n_elements,
        "perceptual": sum(np.abs(o - g).mean() + np.abs(c - g).mean() for o, c, g in zip(f_out, f_comp, f_gt)),
        "style_out": sum(np.abs(naive_gram(o) - naive_gram(g)).mean() for o, g in zip(f_out, f_gt)),
        "style_comp": sum(np.abs(naive_gram(c) - naive_gram(g)).mean() for c, g in zip(f_comp, f_gt)),
        "tv": naive_tv(comp, mask),
    }
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-9), key
        assert value > 0, key  # each term is exercised, not trivially zero
    total = expected["valid"] + 6 * expected["hole"] + 0.05 * expected["perceptual"]
    total += 120 * (expected["style_out"] + expected["style_comp"]) + 0.1 * expected["tv"]
    assert terms["total"].item() == pytest.approx(total, rel=1e-9)
    assert WEIGHTS == {"valid": 1, "hole": 6, "perceptual": 0.05, "style_out": 120, "style_comp": 120, "tv": 0.1}


def test_hole_mean_weighs_every_image_the_same(batch):
    image, mask, raw = batch
    terms = InpaintingLoss(None)(torch.tensor(image), torch.tensor(mask), torch.tensor(raw))
    per_image = [np.abs(raw[k] - image[k])[:, mask[k, 0] == 0].mean() for k in range(2)]
    assert terms["hole_mean"].item() == pytest.approx(np.mean(per_image), rel=1e-12)
    assert (mask[0] == 0).sum() != (mask[1] == 0).sum()  # different hole sizes, equal weights
    no_holes = np.ones_like(mask)
    assert InpaintingLoss(None)(torch.tensor(image), torch.tensor(no_holes), torch.tensor(raw))["hole_mean"] == 0


def test_perfect_prediction_has_only_tv_left(batch):
    image, mask, _ = batch
    x, m = torch.tensor(image), torch.tensor(mask)
    terms = InpaintingLoss(TwoLayerFeatures().double())(x, m, x.clone())
    for key in ("valid", "hole", "perceptual", "style_out", "style_comp"):
        assert terms[key].item() == 0.0, key
    assert terms["tv"].item() > 0  # the image's own texture inside the region


def test_gradients_reach_only_through_raw(batch):
    """The feature network is frozen and I_gt's features are targets: only raw (the network's output) is trained."""
    image, mask, raw = batch
    image_t, raw_t = torch.tensor(image, requires_grad=True), torch.tensor(raw, requires_grad=True)
    features = TwoLayerFeatures().double()  # parameters require grad: any gradient into them would show
    terms = InpaintingLoss(features)(image_t, torch.tensor(mask), raw_t)
    terms["total"].backward(retain_graph=True)
    grad = raw_t.grad.numpy()
    assert np.abs(grad).sum() > 0 and np.isfinite(grad).all()
    assert all(p.grad is None for p in features.parameters())
    # At hole pixels I_gt enters the VGG terms only through its own feature pass; that pass is a
    # constant target (no grad), so those terms give I_gt no gradient there. (Known pixels reach
    # the VGG through I_comp, which copies them from I_gt.)
    hole = ~mask.astype(bool).repeat(3, axis=1)
    for key in ("perceptual", "style_out", "style_comp"):
        (g,) = torch.autograd.grad(terms[key], image_t, retain_graph=True, allow_unused=True)
        assert g is None or np.all(g.numpy()[hole] == 0), key


def test_composite_terms_give_known_pixels_no_gradient(batch):
    """Through I_comp only the hole pixels of raw are reached: known pixels come from I_gt."""
    image, mask, raw = batch
    known = mask.astype(bool).repeat(3, axis=1)
    raw_t = torch.tensor(raw, requires_grad=True)
    terms = InpaintingLoss(TwoLayerFeatures().double())(torch.tensor(image), torch.tensor(mask), raw_t)
    for key in ("style_comp", "tv"):  # terms computed on I_comp alone
        (grad,) = torch.autograd.grad(terms[key], raw_t, retain_graph=True)
        grad = grad.numpy()
        assert np.all(grad[known] == 0), key
        assert np.abs(grad[~known]).sum() > 0, key
    (grad,) = torch.autograd.grad(terms["hole"], raw_t, retain_graph=True)
    assert np.all(grad.numpy()[known] == 0) and np.abs(grad.numpy()[~known]).sum() > 0
    (grad,) = torch.autograd.grad(terms["valid"], raw_t, retain_graph=True)
    assert np.all(grad.numpy()[~known] == 0) and np.abs(grad.numpy()[known]).sum() > 0
