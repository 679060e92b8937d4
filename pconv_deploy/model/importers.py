"""Checkpoints of other PConv code bases -> pconv-deploy checkpoints (``pconv import-checkpoint``).

Formats (docs/design.md section 3; each read from that project's own source):

- ``xiefan-guo``: the seed's ``PUNet`` (xiefan-guo/PConv ``src/generator.py``), saved by its
  ``train.py`` as ``{'n_iter', 'generator'}``; keys ``ec_images_{i}.conv.weight``,
  ``ec_images_{i}.bn.*``, ``dc_images_{i}.*``. NVIDIA's multi-channel partial conv, 7 levels,
  [0, 1] inputs without normalisation, bias only on ``dc_images_1``, ``tanh`` on the output.
- ``naoto0804``: naoto0804/pytorch-inpainting-with-partial-conv ``net.py`` ``PConvUNet``, saved by
  ``util/io.py`` as ``{'n_iter', 'model', 'optimizer'}``; keys ``enc_{i}.conv.input_conv.weight``,
  ``enc_{i}.conv.mask_conv.weight`` (all ones), ``enc_{i}.bn.*``, ``dec_{i}.*``. Divides by sum(M)
  only, so its weights are ours times C_in*kh*kw; ImageNet mean/std inputs; no output activation.
- ``mmagic``: open-mmlab/mmagic ``PConvEncoderDecoder`` inside ``PConvInpaintor`` (attribute
  ``generator``), saved by mmengine/mmcv as ``{'meta', 'state_dict', 'optimizer', ...}``; keys
  ``generator.encoder.enc{i}.conv.weight``, ``...conv.weight_mask_updater`` (all-ones buffer),
  ``...bn.*``, ``generator.decoder.dec{i}.*``; biases only where there is no norm (enc1, dec1);
  NVIDIA's partial conv with eps 1e-8; inputs normalised to [-1, 1] (mean = std = 127.5 on 0-255);
  no output activation. Keys outside ``generator.`` (loss networks) are not part of the model.
- ``state-dict``: pconv-deploy's own ``PConvUNet.state_dict()``.

Any of these may be bare or wrapped in ``{'state_dict'}``, ``{'model'}`` or ``{'generator'}``, and
may carry DataParallel's ``module.`` prefix.

The math, per layer. NVIDIA's ``((conv(X*M) - b) * ratio + b) * valid`` with ``ratio =
C_in*kh*kw / (count + eps)`` is ours (``conv_nobias(X*M) * ratio + b) * valid``, no eps) up to
eps/count (at most 1e-8 relative): weights map 1:1. naoto0804's ``conv_nobias(X*M) / count + b``
maps with ``W_ours = W / (C_in*kh*kw)``. All three take a 3-channel mask equal on all channels,
which is our one-channel mask counted with weight 3; all concatenate ``[upsampled, skip]`` after
nearest upsampling, as ours does. A bias that a source puts on a conv followed by BatchNorm (ours
has none there) is folded into the BN running mean: ``BN(y + b) = BN'(y)`` with ``mean' = mean - b``
(exact in eval mode, and batch statistics cancel it in training). A source without a bias where
ours has one gets zeros.

Reading the file (:mod:`.sources`) never runs code and never costs more memory than the file holds;
every tensor the model takes is checked (dtype, shape, finite values) with its key named. Nothing is
written unless the import succeeds, and never over the source itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pconv_deploy.contract import ENCODER_CHANNELS
from pconv_deploy.errors import first_line
from pconv_deploy.model.sources import (
    ImportCheckpointError,
    check_batch_count,
    check_tensors,
    check_values,
    read_source,
)
from pconv_deploy.model.unet import PConvConfig, PConvUNet

WRAPPERS = ("state_dict", "model", "generator")  # keys under which projects nest the model's state dict
BN_KEYS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True, kw_only=True)
class SourceFormat:
    """How one project names its layers, and what its network does around them."""

    name: str
    encoder: Callable[[int], str]  # level i (1-based) -> key prefix of its block
    decoder: Callable[[int], str] | None  # decoder level i (1 = last, full resolution) -> key prefix
    conv: str  # the conv's key inside a block (".conv" or ".conv.input_conv")
    mask_weight: str | None  # an all-ones mask kernel stored beside the conv (checked, then dropped)
    divides_by_count_only: bool  # naoto0804: out = conv(X*M)/count + b, no C_in*kh*kw factor
    input_norm: str
    output_activation: str
    prefix: str = ""  # the model's keys inside a larger state dict (mmagic: "generator.")


SOURCE_FORMATS = {
    fmt.name: fmt
    for fmt in (
        SourceFormat(
            name="xiefan-guo",
            encoder="ec_images_{}".format,
            decoder="dc_images_{}".format,
            conv=".conv",
            mask_weight=None,
            divides_by_count_only=False,
            input_norm="unit",
            output_activation="tanh",
        ),
        SourceFormat(
            name="naoto0804",
            encoder="enc_{}".format,
            decoder="dec_{}".format,
            conv=".conv.input_conv",
            mask_weight=".conv.mask_conv.weight",
            divides_by_count_only=True,
            input_norm="imagenet",
            output_activation="none",
        ),
        SourceFormat(
            name="mmagic",
            encoder="encoder.enc{}".format,
            decoder="decoder.dec{}".format,
            conv=".conv",
            mask_weight=".conv.weight_mask_updater",
            divides_by_count_only=False,
            input_norm="minus_one_one",
            output_activation="none",
            prefix="generator.",
        ),
        SourceFormat(
            name="state-dict",
            encoder=lambda i: f"encoder.{i - 1}",
            decoder=None,
            conv=".pconv.conv",
            mask_weight=None,
            divides_by_count_only=False,
            input_norm="imagenet",
            output_activation="none",
        ),
    )
}
FORMATS = tuple(SOURCE_FORMATS)  # auto-detection tries them in this order


@dataclass(frozen=True)
class ImportResult:
    path: Path
    format: str
    detected: bool  # True when --format auto chose it
    config: PConvConfig
    source_sha256: str
    ignored_keys: int  # keys outside the model (mmagic's loss networks), not imported


def unwrap(obj: dict, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(the model's state dict, the wrapper's other entries): bare, or under one of WRAPPERS."""
    for key in WRAPPERS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            check_tensors(inner, path)
            return dict(inner), {k: v for k, v in obj.items() if k != key}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        check_tensors(obj, path)
        return dict(obj), {}
    raise ImportCheckpointError(
        f"{path}: no state dict found (top-level keys: {', '.join(map(str, list(obj)[:8])) or 'none'}; "
        f"expected a state dict, or one under {', '.join(repr(w) for w in WRAPPERS)})"
    )


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def rename_naoto_2018(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """naoto0804's first net.py (2018, class PConv2d): ``conv.conv2d`` / ``conv.mask2d`` with a zero mask bias.

    Its math is the later one's (``(conv(X*M) - conv(0)) / sum(M) + conv(0)``), with a bias on every conv
    (folded into BatchNorm where one follows); renamed to the later keys, the zero mask biases dropped.
    """
    if not any(".conv.conv2d." in k for k in state):
        return state
    renamed = {}
    for key, value in state.items():
        if key.endswith(".conv.mask2d.bias"):
            if bool(check_values(value, key, path).abs().max() > 0):
                raise ImportCheckpointError(f"{path}: {key} is not zero, so its mask count is not sum(M)")
            continue
        renamed[key.replace(".conv.conv2d.", ".conv.input_conv.").replace(".conv.mask2d.", ".conv.mask_conv.")] = value
    return renamed


def detect_format(state: dict[str, torch.Tensor], path: Path) -> str:
    """The format whose first encoder conv weight is among the keys (with or without its prefix)."""
    for name, fmt in SOURCE_FORMATS.items():
        first = f"{fmt.encoder(1)}{fmt.conv}.weight"
        if f"{fmt.prefix}{first}" in state or first in state:
            return name
    sample = ", ".join(sorted(state)[:4])
    raise ImportCheckpointError(
        f"{path}: keys match none of the formats {', '.join(FORMATS)} (first keys: {sample}); pass --format"
    )


def count_levels(state: dict[str, torch.Tensor], fmt: SourceFormat) -> int:
    """Encoder levels present: consecutive levels with any key (so a renamed key is reported as missing)."""
    levels = 0
    while any(k.startswith(f"{fmt.prefix}{fmt.encoder(levels + 1)}.") for k in state):
        levels += 1
    return levels


def convert(
    state: dict[str, torch.Tensor], fmt: SourceFormat, path: Path, *, layers: int | None = None
) -> tuple[PConvUNet, int]:
    """Build our model from a source state dict; returns (model in eval mode, keys ignored as not the model's)."""
    if fmt.prefix and not any(k.startswith(fmt.prefix) for k in state):
        fmt = dataclasses.replace(fmt, prefix="")  # e.g. mmagic's PConvEncoderDecoder saved on its own
    model_keys = {k[len(fmt.prefix) :]: v for k, v in state.items() if k.startswith(fmt.prefix)}
    ignored = len(state) - len(model_keys)
    found = count_levels(state, fmt)
    if found == 0:
        first_key = f"{fmt.prefix}{fmt.encoder(1)}{fmt.conv}.weight"
        raise ImportCheckpointError(f"{path}: not a {fmt.name} checkpoint (no {first_key}); try --format auto")
    if found < 2 or found > len(ENCODER_CHANNELS):
        raise ImportCheckpointError(f"{path}: {found} encoder levels found, expected 2 to {len(ENCODER_CHANNELS)}")
    if layers is not None and layers != found:
        raise ImportCheckpointError(f"{path}: the checkpoint has {found} levels, --layers says {layers}")
    first_key = f"{fmt.encoder(1)}{fmt.conv}.weight"
    first = model_keys[first_key]
    if first.dim() != 4:
        raise ImportCheckpointError(
            f"{path}: {fmt.prefix}{first_key} has shape {list(first.shape)}, expected a 4-D convolution weight"
        )
    width = first.shape[0] / ENCODER_CHANNELS[0]
    try:
        model = PConvUNet(found, width, fmt.input_norm, output_activation=fmt.output_activation)
    except ValueError as e:
        raise ImportCheckpointError(f"{path}: {e}") from None
    ours, consumed = _map_blocks(model, model_keys, fmt, path=path)
    leftover = sorted(set(model_keys) - consumed)
    if leftover:
        raise ImportCheckpointError(f"{path}: unexpected key {fmt.prefix}{leftover[0]} for format {fmt.name}")
    model.load_state_dict(ours, strict=True)
    return model.eval(), ignored


def _block_prefixes(model: PConvUNet, fmt: SourceFormat) -> list[tuple[str, str]]:
    """(our block prefix, the source's block prefix) for every partial conv, encoder then decoder."""
    levels = model.config.layers
    pairs = [(f"encoder.{i}", fmt.encoder(i + 1)) for i in range(levels)]
    for j in range(levels):  # our decoder[j] is the source's decoder level ``levels - j``
        pairs.append((f"decoder.{j}", fmt.decoder(levels - j) if fmt.decoder else f"decoder.{j}"))
    return pairs


def _map_blocks(
    model: PConvUNet, src: dict[str, torch.Tensor], fmt: SourceFormat, *, path: Path
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our state dict from the source's keys, and the source keys it used."""
    expected = model.state_dict()
    out: dict = {}
    consumed: set[str] = set()

    def take(key: str, shape: torch.Size | None = None) -> torch.Tensor:
        """The source's tensor for ``key``: shape checked first, then values (float64), before any arithmetic."""
        if key not in src:
            raise ImportCheckpointError(f"{path}: missing key {fmt.prefix}{key} for format {fmt.name}")
        value = src[key]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ImportCheckpointError(
                f"{path}: {fmt.prefix}{key} has shape {list(value.shape)}, expected {list(shape)} "
                f"(for {model.config.layers} levels at width {model.config.width:g})"
            )
        consumed.add(key)
        if key.endswith(".num_batches_tracked"):
            return check_batch_count(value, fmt.prefix + key, path)
        return check_values(value, fmt.prefix + key, path, variance=key.endswith(".running_var"))

    for ours, theirs in _block_prefixes(model, fmt):
        conv = f"{ours}.pconv.conv"
        weight = take(f"{theirs}{fmt.conv}.weight", expected[f"{conv}.weight"].shape)
        c_out, c_in, kh, kw = weight.shape
        if fmt.divides_by_count_only:
            weight = weight / (c_in * kh * kw)
        if fmt.mask_weight:
            mask_key = f"{theirs}{fmt.mask_weight}"
            _check_all_ones(take, src, mask_key, shape=(c_out, c_in, kh, kw), shown=fmt.prefix + mask_key, path=path)
        bias_key = f"{theirs}{fmt.conv}.bias"
        bias = take(bias_key, (c_out,)) if bias_key in src else torch.zeros(c_out, dtype=torch.float64)
        out[f"{conv}.weight"] = weight.float()
        if f"{conv}.bias" in expected:
            out[f"{conv}.bias"] = bias.float()
        elif f"{ours}.bn.running_mean" in expected:
            bn = {k: take(f"{theirs}.bn.{k}", expected[f"{ours}.bn.{k}"].shape) for k in BN_KEYS}
            bn["running_mean"] = bn["running_mean"] - bias  # BN(y + b) = BN_{mean - b}(y)
            out.update({f"{ours}.bn.{k}": v.float() for k, v in bn.items()})
            tracked = f"{theirs}.bn.num_batches_tracked"
            out[f"{ours}.bn.num_batches_tracked"] = take(tracked) if tracked in src else torch.tensor(0)
    return out, consumed


def _check_all_ones(take: Callable, src: dict, key: str, *, shape: tuple[int, ...], shown: str, path: Path) -> None:
    """The mask kernel must be the multi-channel all-ones count, else its count is not the paper's sum(M)."""
    if key in src and tuple(src[key].shape) != shape:
        raise ImportCheckpointError(
            f"{path}: {shown} has shape {list(src[key].shape)}, expected {list(shape)} "
            "(only multi-channel partial convolutions are supported)"
        )
    if not bool((take(key, shape) == 1).all()):
        raise ImportCheckpointError(f"{path}: {shown} is not all ones, so it does not count sum(M)")


def check_output_path(output: Path, source: Path | None = None) -> None:
    """Refuse an output that cannot become a checkpoint, or would replace ``source``, before any work is done."""
    from pconv_deploy.contract import CHECKPOINT_SUFFIX

    if source is not None and _same_file(source, output):
        raise ImportCheckpointError(f"{output}: is the source checkpoint {source}; write the import elsewhere")
    if output.suffix != CHECKPOINT_SUFFIX:
        raise ImportCheckpointError(f"{output}: the output must be a {CHECKPOINT_SUFFIX} file")
    if output.is_dir():
        raise ImportCheckpointError(f"{output}: is a folder; give the checkpoint file to write")
    parent = next((p for p in output.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ImportCheckpointError(f"{output}: {parent} is a file, not a folder")


def _same_file(a: Path, b: Path) -> bool:
    """Same path once resolved, or the same file through a symbolic or hard link."""
    if Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def import_checkpoint(
    source: str | Path,
    output: str | Path,
    *,
    format: str = "auto",
    layers: int | None = None,
) -> ImportResult:
    """Convert ``source`` (a checkpoint of one of FORMATS) to a pconv-deploy checkpoint at ``output``.

    The header records the config plus ``source_format``, ``source_file``, ``source_sha256`` (and
    ``source_iterations`` when the source says). ``output`` is written atomically and only on success.
    """
    from pconv_deploy.contract import file_sha256
    from pconv_deploy.model.checkpoint import save_checkpoint

    source, output = Path(source), Path(output)
    if format != "auto" and format not in SOURCE_FORMATS:
        raise ImportCheckpointError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    check_output_path(output, source)
    state, extra = unwrap(read_source(source), source)
    state = rename_naoto_2018(strip_prefix(state, "module."), source)  # DataParallel; naoto0804's first layout
    name = detect_format(state, source) if format == "auto" else format
    model, ignored = convert(state, SOURCE_FORMATS[name], source, layers=layers)
    sha = file_sha256(source)
    header = {"source_format": name, "source_file": source.name, "source_sha256": sha}
    meta = extra.get("meta") if isinstance(extra.get("meta"), dict) else {}
    iterations = extra.get("n_iter", meta.get("iter"))  # xiefan-guo/naoto0804: n_iter; mmengine: meta.iter
    if isinstance(iterations, int):
        header["source_iterations"] = str(iterations)
    try:
        path = save_checkpoint(model, output, extra=header)
    except OSError as e:
        raise ImportCheckpointError(f"{output}: cannot write ({e.strerror or first_line(e)})") from None
    return ImportResult(path, name, format == "auto", model.config, sha, ignored)
