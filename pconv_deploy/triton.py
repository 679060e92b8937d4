"""A Triton Inference Server model repository for an exported model or a TensorRT engine.

Layout (DESIGN.md section 10): ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/VERSION/model.onnx``
(platform ``onnxruntime_onnx``) or ``model.plan`` (platform ``tensorrt_plan``). With
``max_batch_size`` set, Triton owns the batch dimension, so ``dims`` leave it out. The
model contract's metadata travels as config ``parameters`` so that a client can read the
required size multiple from the server.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pconv_deploy.engines.sidecar import read_sidecar, validate_sidecar
from pconv_deploy.errors import PConvError

ENGINE_SUFFIXES = (".engine", ".plan")


def model_metadata(model: Path) -> dict[str, str]:
    """The ``pconv.*`` contract metadata: from the ONNX file, or from an engine's sidecar JSON."""
    if model.suffix in ENGINE_SUFFIXES:
        return dict(read_sidecar(model)["metadata"])
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise PConvError(f"{model}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (["image", "mask"], ["inpainted"]) or "pconv.multiple" not in meta:
        raise PConvError(f"{model}: not a pconv-deploy model (inputs image, mask; output inpainted; pconv.* metadata)")
    return meta


def engine_max_batch(engine: Path) -> int:
    """The largest batch every optimization profile accepts (Triton may send any batch up to it)."""
    return min(profile.max[0] for profile in validate_sidecar(read_sidecar(engine), str(engine)))


def config_text(name: str, platform: str, max_batch_size: int, instances: int, kind: str, meta: dict[str, str]) -> str:
    preferred = sorted({b for b in (max_batch_size // 2, max_batch_size) if b >= 1})
    params = "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in sorted(meta.items()))
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{ name: "image" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }},
  {{ name: "mask" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }}
]
output [
  {{ name: "inpainted" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: 2000
}}
instance_group [ {{ count: {instances} kind: {kind} }} ]
{params}
"""


def write_triton_repo(
    model: str | Path,
    repo: str | Path,
    name: str = "pconv",
    version: int = 1,
    max_batch_size: int = 8,
    instances: int = 1,
    kind: str = "KIND_GPU",
    overwrite: bool = False,
) -> Path:
    """Copy ``model`` into ``repo/name/version/`` and write ``config.pbtxt``; returns the model folder.

    The folder is assembled beside its final place and renamed into it, so Triton (which may
    poll the repository) never sees a half-written model.
    """
    model, repo = Path(model), Path(repo)
    if not model.is_file():
        raise PConvError(f"{model}: no such model file")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise PConvError(f"invalid model name {name!r}: a plain folder name is needed")
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise PConvError(f"invalid instance kind {kind!r}: KIND_GPU or KIND_CPU")
    if max_batch_size < 1 or instances < 1 or version < 1:
        raise PConvError("max batch size, instances and version must be at least 1")
    is_engine = model.suffix in ENGINE_SUFFIXES
    meta = model_metadata(model)
    if is_engine and max_batch_size > (limit := engine_max_batch(model)):
        raise PConvError(f"{model}: its profiles accept batches up to {limit}, not --max-batch-size {max_batch_size}")
    target = repo / name
    if target.exists() and not overwrite:
        raise PConvError(f"{target}: already exists (use --overwrite to replace it)")

    platform, file_name = ("tensorrt_plan", "model.plan") if is_engine else ("onnxruntime_onnx", "model.onnx")
    staging = repo / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / str(version)).mkdir(parents=True)
    try:
        shutil.copyfile(model, staging / str(version) / file_name)
        (staging / "config.pbtxt").write_text(config_text(name, platform, max_batch_size, instances, kind, meta))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
