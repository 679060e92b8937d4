"""Optimization profiles: the [min, opt, max] input shapes a TensorRT engine accepts.

An engine built from a graph with dynamic N, H, W only runs shapes inside one of its
profiles, and TensorRT tunes its kernels for each profile's `opt` shape. Users give shapes
as ``BxHxW`` (batch x height x width); the channel counts come from the model contract
(pconv_deploy.contract: ``image`` has 3, ``mask`` 1). H and W must be multiples of the model's 2^layers.

Pure Python, no TensorRT: the runtime uses `select_profile` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pconv_deploy.contract import CHANNELS, IMAGE, INPUT_NAMES, MASK
from pconv_deploy.errors import PConvError

Shape = tuple[int, int, int]  # (batch, height, width)
MAX_DIM = 2**31 - 1  # TensorRT's dimensions and tensor volumes are 32-bit signed integers

# The contract's inputs and their channel counts (docs/design.md section 2).
INPUT_CHANNELS = {name: CHANNELS[name] for name in INPUT_NAMES}


class ProfileError(PConvError, ValueError):
    """A shape or profile that cannot be built; the message names the option and the value."""


def parse_shape(text: str) -> Shape:
    """'4x512x768' -> (4, 512, 768)."""
    parts = text.strip().lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ProfileError(f"invalid shape {text!r}: expected BxHxW with positive integers, e.g. 4x512x512")
    return dims  # type: ignore[return-value]


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class ShapeRange:
    """One optimization profile, as (batch, height, width) triples for min, opt and max."""

    min: Shape
    opt: Shape
    max: Shape

    def input_shapes(self) -> dict[str, list[list[int]]]:
        """{input name: [min, opt, max] full NCHW shapes}: the sidecar's and Polygraphy's form."""
        return {
            name: [[b, channels, h, w] for b, h, w in (self.min, self.opt, self.max)]
            for name, channels in INPUT_CHANNELS.items()
        }

    @classmethod
    def from_input_shapes(cls, shapes: dict[str, list[list[int]]], where: str = "profile") -> ShapeRange:
        """Inverse of `input_shapes`; checks that it holds exactly the contract's inputs, consistently."""
        if set(shapes) != set(INPUT_CHANNELS):
            raise ProfileError(f"{where}: inputs {sorted(shapes)} are not the contract's {sorted(INPUT_CHANNELS)}")
        triples = {}
        for name, channels in INPUT_CHANNELS.items():
            value = shapes[name]
            ok = isinstance(value, list) and len(value) == 3
            ok = ok and all(isinstance(s, list) and len(s) == 4 and all(_is_int(d) for d in s) for s in value)
            if not ok or any(s[1] != channels for s in value):
                got = _short(value)
                raise ProfileError(f"{where}: {name!r} needs [min, opt, max] shapes [N, {channels}, H, W], got {got}")
            triples[name] = tuple((s[0], s[2], s[3]) for s in value)
        if triples[IMAGE] != triples[MASK]:
            raise ProfileError(f"{where}: {IMAGE} and {MASK} have different shapes: {_short(shapes)}")
        return cls(*triples[IMAGE])

    def contains(self, batch: int, height: int, width: int) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (batch, height, width), self.max))

    def __str__(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no dimension


def _short(value: object, limit: int = 200) -> str:
    """A value for a one-line message: a hand-edited sidecar can hold megabytes where a shape belongs."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def validate(profile: ShapeRange, multiple: int, where: str = "profile") -> ShapeRange:
    """Refuse shapes the model cannot take (H, W not multiples) and ranges TensorRT would reject."""
    for label, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        b, h, w = shape
        if min(shape) < 1:
            raise ProfileError(f"{where}: {label} shape {format_shape(shape)} has a dimension < 1")
        if max(shape) > MAX_DIM:
            raise ProfileError(f"{where}: {label} shape {format_shape(shape)} has a dimension over {MAX_DIM}")
        if h % multiple or w % multiple:
            raise ProfileError(
                f"{where}: {label} shape {format_shape(shape)}: height and width must be multiples of "
                f"{multiple} (2^layers for this model)"
            )
    for i, dim in enumerate(("batch", "height", "width")):
        if not profile.min[i] <= profile.opt[i] <= profile.max[i]:
            raise ProfileError(
                f"{where}: {dim} must satisfy min <= opt <= max, got "
                f"{profile.min[i]}, {profile.opt[i]}, {profile.max[i]} ({profile})"
            )
    return profile


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def default_profiles(multiple: int) -> list[ShapeRange]:
    """One profile from a single tile up to 8 x 1024 x 1024, tuned for batches of 4 at 512 x 512.

    512 is the paper's size; the folder pipeline batches tiles of bounded size, so larger
    inputs are the exception. Sizes are rounded up to the model's multiple.
    """
    opt, top = _round_up(512, multiple), _round_up(1024, multiple)
    return [ShapeRange((1, multiple, multiple), (4, opt, opt), (8, top, top))]


def make_profiles(
    min_shapes: Sequence[str], opt_shapes: Sequence[str], max_shapes: Sequence[str], *, multiple: int
) -> list[ShapeRange]:
    """Pair the i-th --min-shape, --opt-shape and --max-shape into profile i; none at all -> defaults."""
    counts = (len(min_shapes), len(opt_shapes), len(max_shapes))
    if counts == (0, 0, 0):
        return default_profiles(multiple)
    if len(set(counts)) != 1:
        raise ProfileError(
            "give --min-shape, --opt-shape and --max-shape once per profile "
            f"(got {counts[0]}, {counts[1]} and {counts[2]})"
        )
    profiles = []
    for i, texts in enumerate(zip(min_shapes, opt_shapes, max_shapes)):
        profile = ShapeRange(*(parse_shape(t) for t in texts))
        profiles.append(validate(profile, multiple, where=f"profile {i}"))
    return profiles


def select_profile(profiles: Sequence[ShapeRange], shape: tuple[int, int, int]) -> int | None:
    """Index of the profile to run this (batch, height, width) shape with, or None: among those
    containing it, the one whose opt shape is nearest (TensorRT's kernels are tuned for opt)."""
    batch, height, width = shape
    candidates = [i for i, p in enumerate(profiles) if p.contains(batch, height, width)]
    if not candidates:
        return None

    def distance(i: int) -> int:
        ob, oh, ow = profiles[i].opt
        return abs(ob * oh * ow - batch * height * width)

    return min(candidates, key=distance)


def max_batch(profiles: Sequence[ShapeRange], height: int, width: int) -> int:
    """The largest batch any profile runs at this size (0 if none covers it): to split big batches."""
    return max((p.max[0] for p in profiles if p.contains(p.min[0], height, width)), default=0)
