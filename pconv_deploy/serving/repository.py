"""A Triton Inference Server model repository for an exported model or a TensorRT engine.

Layout (docs/design.md section 10): ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/VERSION/model.onnx``
(platform ``onnxruntime_onnx``) or ``model.plan`` (platform ``tensorrt_plan``). With
``max_batch_size`` set, Triton owns the batch dimension, so ``dims`` leave it out. The
model contract's metadata travels as config ``parameters`` so that a client (``pconv infer
--server``, :mod:`pconv_deploy.serving.client`) can read the required size multiple from the server.
What to write is one :class:`~pconv_deploy.serving.options.RepositoryOptions`, checked when it is made.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from pconv_deploy.contract import CHANNELS, ENGINE_SUFFIXES, INPUT_NAMES, OUTPUT_NAMES, contract_levels
from pconv_deploy.engines.sidecar import Sidecar
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.files import fsync_dir, stale_temps, temp_path, write_text_atomic
from pconv_deploy.serving.options import (
    MAX_NAME_CHARS,
    QUEUE_DELAY_US,
    SAFE_NAME,
    RepositoryOptions,
    preferred_batch_sizes,
)

MAX_VALUE_CHARS = 4096  # a metadata value (a producer string, a sha256) is far shorter


def platform_of(is_engine: bool) -> str:
    return "tensorrt_plan" if is_engine else "onnxruntime_onnx"


def onnx_model_metadata(model: Path) -> dict[str, str]:
    """The ``pconv.*`` contract metadata of an ONNX file (an engine's comes from its `Sidecar`)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise PConvError(f"{model}: not a loadable ONNX model ({first_line(e)})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    names = (tuple(i.name for i in session.get_inputs()), tuple(o.name for o in session.get_outputs()))
    if names != (INPUT_NAMES, OUTPUT_NAMES) or "pconv.multiple" not in meta:
        raise PConvError(
            f"{model}: not a pconv-deploy model (inputs {', '.join(INPUT_NAMES)}; output {', '.join(OUTPUT_NAMES)}; "
            "pconv.* metadata)"
        )
    contract_levels(meta, str(model))  # pconv.layers and pconv.multiple range-checked before a client reads them
    return meta


def engine_max_batch(sidecar: Sidecar) -> int:
    """The largest batch every optimization profile accepts (Triton may send any batch up to it)."""
    return min(profile.max[0] for profile in sidecar.profiles)


def pbtxt_string(text: str, what: str) -> str:
    """``text`` as a protobuf text-format string literal: every byte outside printable ASCII, ``"`` and ``\\``
    escaped, so no value can end the string and add fields of its own (a hostile ``pconv.producer``)."""
    if len(text) > MAX_VALUE_CHARS:
        raise PConvError(f"{what}: {len(text)} characters, more than {MAX_VALUE_CHARS}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise PConvError(f"{what}: not valid text (a lone surrogate)") from None
    escaped = "".join("\\" + chr(b) if b in b'"\\' else chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}" for b in data)
    return f'"{escaped}"'


def tensor_lines(names: tuple[str, ...]) -> str:
    """``{ name: "image" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }`` entries: [C, H, W], Triton adds the batch."""
    return ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {CHANNELS[n]}, -1, -1 ] }}' for n in names)


def parameter_lines(meta: dict[str, str], model: Path) -> str:
    """``parameters`` entries for the ``pconv.*`` metadata only (keys checked, values escaped)."""
    lines = []
    for key, value in sorted(meta.items()):
        if not key.startswith("pconv."):
            continue  # other metadata is not part of the contract: not copied into the config
        if not re.fullmatch(SAFE_NAME, key) or len(key) > MAX_NAME_CHARS:
            raise PConvError(f"{model}: metadata key {key[:80]!r} is not a plain name ([A-Za-z0-9_.-])")
        value = pbtxt_string(str(value), f"{model}: metadata {key}")
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: {value} }} }}')
    return "\n".join(lines)


def config_text(options: RepositoryOptions, platform: str, meta: str) -> str:
    """config.pbtxt; ``options.name`` is already checked (RepositoryOptions) and ``meta``'s lines escaped."""
    preferred = preferred_batch_sizes(options.max_batch_size)
    return f"""name: "{options.name}"
platform: "{platform}"
max_batch_size: {options.max_batch_size}
input [
{tensor_lines(INPUT_NAMES)}
]
output [
{tensor_lines(OUTPUT_NAMES)}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
instance_group [ {{ count: {options.instances} kind: {options.kind} }} ]
{meta}
"""


def write_triton_repo(options: RepositoryOptions) -> Path:
    """Copy ``options.model`` into ``repo/name/version/`` and write ``config.pbtxt``; returns the model folder.

    The folder is assembled beside its final place under a temp name and renamed into it, so Triton
    (which may poll the repository) never sees a half-written model, and a killed run leaves only a
    recognisable temp folder that the next run removes.
    """
    model, repo, name, version = options.model, options.repo, options.name, str(options.version)
    if not model.is_file():
        raise PConvError(f"{model}: no such model file")
    is_engine = model.suffix in ENGINE_SUFFIXES
    sidecar = Sidecar.read(model) if is_engine else None  # an engine's contract and profiles, read once
    meta = dict(sidecar.metadata) if sidecar is not None else onnx_model_metadata(model)
    if sidecar is not None and options.max_batch_size > (limit := engine_max_batch(sidecar)):
        raise PConvError(
            f"{model}: its profiles accept batches up to {limit}, not --max-batch-size {options.max_batch_size}"
        )
    text = config_text(options, platform_of(is_engine), parameter_lines(meta, model))
    target = repo / name
    if target.exists() and not options.overwrite:
        raise PConvError(f"{target}: already exists (use --overwrite to replace it)")

    file_name = "model.plan" if is_engine else "model.onnx"
    repo.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(repo, name)
    staging = temp_path(target)
    try:
        (staging / version).mkdir(parents=True)
        shutil.copyfile(model, staging / version / file_name)
        write_text_atomic(staging / "config.pbtxt", text)
        fsync_dir(staging / version)
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def replace_folder(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``: the old folder is moved aside first, so ``target`` is never half-deleted."""
    old = temp_path(target) if target.exists() else None
    if old is not None:
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(repo: Path, name: str) -> None:
    """Remove the temp folders of ``name`` that killed runs left (their process is gone)."""
    for entry in stale_temps(repo, {name}):
        if entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(OSError):
                shutil.rmtree(entry.path)
