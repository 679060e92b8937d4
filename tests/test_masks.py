"""The irregular mask generator: binary, seeded, and inside the requested hole-ratio bin."""

import numpy as np
import pytest

from pconv_deploy.masks import HOLE_BINS, hole_ratio, random_mask, training_mask


def test_bins_are_the_papers():
    assert HOLE_BINS == ((0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (256, 256)])
def test_every_bin_is_hit_and_masks_stay_binary(size):
    for hole_bin in HOLE_BINS:
        ratios = []
        for seed in range(8):
            mask = random_mask(*size, np.random.default_rng(seed), hole_bin)
            assert mask.shape == size and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 1}
            ratio = (mask == 0).sum() / mask.size  # independent of hole_ratio()
            assert hole_bin[0] < ratio <= hole_bin[1], (hole_bin, ratio)
            assert ratio == hole_ratio(mask)
            ratios.append(ratio)
        assert np.ptp(ratios) > 0  # not the same mask each time


def test_seeded_and_irregular():
    a = random_mask(128, 128, np.random.default_rng(7), (0.2, 0.3))
    b = random_mask(128, 128, np.random.default_rng(7), (0.2, 0.3))
    c = random_mask(128, 128, np.random.default_rng(8), (0.2, 0.3))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    holes = a == 0
    ys, xs = np.nonzero(holes)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert holes.sum() < 0.9 * box  # not a filled rectangle


def test_training_masks_cover_all_bins():
    rng = np.random.default_rng(0)
    ratios = [hole_ratio(training_mask(64, 64, rng)) for _ in range(60)]
    counts = [sum(lo < r <= hi for r in ratios) for lo, hi in HOLE_BINS]
    assert all(c > 0 for c in counts), counts
    assert sum(counts) == len(ratios)


def test_impossible_ranges_are_rejected():
    with pytest.raises(ValueError, match="0 <= low < high <= 1"):
        random_mask(32, 32, np.random.default_rng(0), (0.5, 0.4))
    with pytest.raises(ValueError, match="no 4x4 mask"):
        random_mask(4, 4, np.random.default_rng(0), (0.01, 0.05))  # 1/16 is already above 0.05
