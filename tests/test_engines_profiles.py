"""Optimization-profile shapes: parsing, validation against the model multiple, defaults, selection."""

import pytest

from pconv_deploy.engines.profiles import (
    ProfileError,
    ShapeRange,
    default_profiles,
    make_profiles,
    parse_shape,
    select_profile,
    validate,
)
from pconv_deploy.errors import PConvError
from pconv_deploy.runtime.tensorrt_backend import plan_batches


@pytest.mark.parametrize(("text", "shape"), [("4x512x768", (4, 512, 768)), (" 1X32X64 ", (1, 32, 64))])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "512x512", "1x2x3x4", "0x256x256", "-1x256x256", "4x256xabc", "4x256.5x256"])
def test_parse_shape_rejects(text):
    with pytest.raises(ProfileError, match="expected BxHxW") as e:
        parse_shape(text)
    assert isinstance(e.value, PConvError)  # the CLI turns it into one line


def test_make_profiles_pairs_options_in_order():
    profiles = make_profiles(
        ["1x32x32", "1x256x256"], ["2x64x64", "4x512x512"], ["4x128x128", "8x1024x1024"], multiple=32
    )
    assert profiles == [
        ShapeRange((1, 32, 32), (2, 64, 64), (4, 128, 128)),
        ShapeRange((1, 256, 256), (4, 512, 512), (8, 1024, 1024)),
    ]
    assert profiles[0].input_shapes() == {
        "image": [[1, 3, 32, 32], [2, 3, 64, 64], [4, 3, 128, 128]],
        "mask": [[1, 1, 32, 32], [2, 1, 64, 64], [4, 1, 128, 128]],
    }


def test_make_profiles_needs_one_of_each_per_profile():
    with pytest.raises(ProfileError, match=r"once per profile \(got 2, 1 and 2\)"):
        make_profiles(["1x32x32", "1x32x32"], ["1x32x32"], ["1x32x32", "1x32x32"], multiple=32)
    with pytest.raises(ProfileError, match=r"got 0, 0 and 1"):
        make_profiles([], [], ["1x32x32"], multiple=32)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (("1x32x32", "1x48x64", "1x64x64"), r"profile 0: opt shape 1x48x64: height and width must be multiples of 32"),
        (("1x256x256", "1x256x256", "1x256x300"), r"max shape 1x256x300: .* multiples of 256"),
        (("4x32x32", "2x32x32", "8x32x32"), r"batch must satisfy min <= opt <= max, got 4, 2, 8"),
        (("1x64x64", "1x32x64", "1x64x64"), r"height must satisfy min <= opt <= max, got 64, 32, 64"),
        (("1x32x32", "1x32x64", "1x32x32"), r"width must satisfy min <= opt <= max, got 32, 64, 32"),
    ],
)
def test_make_profiles_rejects_bad_ranges(shapes, message):
    multiple = 256 if "256" in shapes[0] else 32
    with pytest.raises(ProfileError, match=message):
        make_profiles([shapes[0]], [shapes[1]], [shapes[2]], multiple=multiple)


def test_default_profile_follows_the_multiple():
    assert make_profiles([], [], [], multiple=32) == default_profiles(32)
    assert default_profiles(32) == [ShapeRange((1, 32, 32), (4, 512, 512), (8, 1024, 1024))]
    assert default_profiles(256) == [ShapeRange((1, 256, 256), (4, 512, 512), (8, 1024, 1024))]
    # a multiple that does not divide 512 rounds up, and every default validates
    (p,) = default_profiles(384)
    assert p == ShapeRange((1, 384, 384), (4, 768, 768), (8, 1152, 1152))
    for multiple in (4, 32, 128, 256, 384):
        for profile in default_profiles(multiple):
            validate(profile, multiple)


def test_from_input_shapes_round_trip_and_rejects():
    p = ShapeRange((1, 32, 32), (2, 64, 64), (4, 128, 96))
    assert ShapeRange.from_input_shapes(p.input_shapes()) == p
    shapes = p.input_shapes()
    shapes["mask"][2] = [4, 1, 128, 128]
    with pytest.raises(ProfileError, match="image and mask have different shapes"):
        ShapeRange.from_input_shapes(shapes)
    with pytest.raises(ProfileError, match="not the contract's"):
        ShapeRange.from_input_shapes({"image": p.input_shapes()["image"]})
    bad = p.input_shapes()
    bad["image"][0][1] = 1
    with pytest.raises(ProfileError, match=r"'image' needs \[min, opt, max\] shapes \[N, 3, H, W\]"):
        ShapeRange.from_input_shapes(bad)


def test_select_profile_prefers_the_nearest_opt():
    small = ShapeRange((1, 32, 32), (1, 64, 64), (8, 256, 256))
    large = ShapeRange((1, 32, 32), (4, 512, 512), (8, 1024, 1024))
    profiles = [small, large]
    assert select_profile(profiles, (1, 64, 64)) == 0
    assert select_profile(profiles, (4, 512, 512)) == 1
    assert select_profile(profiles, (2, 512, 256)) == 1  # only the large one holds H=512
    assert select_profile(profiles, (9, 64, 64)) is None
    assert select_profile(profiles, (1, 2048, 64)) is None


def test_plan_batches_splits_batches_larger_than_any_profile():
    profiles = [ShapeRange((1, 32, 32), (2, 64, 64), (4, 128, 128))]
    assert plan_batches(profiles, (3, 64, 64)) == [(0, 3, 0)]
    assert plan_batches(profiles, (10, 64, 64)) == [(0, 4, 0), (4, 8, 0), (8, 10, 0)]
    with pytest.raises(PConvError, match=r"no optimization profile of this engine takes 1x256x256 .*--max-shape"):
        plan_batches(profiles, (1, 256, 256))
    # a remainder below a profile's min batch cannot run: said, not crashed
    with pytest.raises(PConvError, match="takes 1x64x64"):
        plan_batches([ShapeRange((2, 32, 32), (2, 64, 64), (4, 64, 64))], (5, 64, 64))
