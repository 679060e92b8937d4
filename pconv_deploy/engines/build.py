"""ONNX -> TensorRT engine + sidecar, through Polygraphy's loaders (DESIGN.md sections 6-7).

Two halves:

- `plan_build` reads the ONNX contract and checks every option. Pure CPU (onnx + numpy),
  fully tested here.
- `build_engine` is the thin GPU half: a strongly typed network (the graph's types decide
  the precision, so TensorRT 10 and 11 take the same path), the profiles, the timing cache,
  then the engine and its sidecar written atomically. Runs only with TensorRT and a GPU.

FP16: the precision lives in the ONNX graph. ``--fp16`` asks for an FP16 graph; given an
FP32 one we refuse and say to run ``pconv export --fp16`` (the FP16 graph is exported from
the checkpoint with float32 masks and I/O, not converted afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pconv_deploy.contract import file_sha256
from pconv_deploy.engines.profiles import ShapeRange, make_profiles
from pconv_deploy.engines.sidecar import (
    check_contract_metadata,
    make_sidecar,
    sidecar_path,
    write_sidecar,
)
from pconv_deploy.errors import PConvError

CONTRACT_INPUTS = ("image", "mask")
CONTRACT_OUTPUTS = ("inpainted",)


class BuildError(PConvError, ValueError):
    """An ONNX file or option that cannot make an engine."""


@dataclass(frozen=True)
class BuildPlan:
    """Everything `build_engine` needs, checked."""

    onnx_path: Path
    output: Path
    metadata: dict[str, str]
    precision: str
    profiles: list[ShapeRange]
    timing_cache: Path | None
    workspace_bytes: int | None
    version_compatible: bool


def read_onnx_contract(onnx_path: Path) -> dict[str, str]:
    """The pconv.* metadata of an ONNX file, after checking its inputs and outputs are the contract's."""
    try:
        import onnx
    except ImportError:
        raise BuildError("reading the ONNX model needs the onnx package: pip install 'pconv-deploy[gpu]'") from None
    if not onnx_path.is_file():
        raise BuildError(f"{onnx_path}: no such ONNX file")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... on a file that is not ONNX
        raise BuildError(f"{onnx_path}: not an ONNX model ({type(e).__name__}: {e})") from None
    inputs = tuple(i.name for i in model.graph.input)
    outputs = tuple(o.name for o in model.graph.output)
    if (inputs, outputs) != (CONTRACT_INPUTS, CONTRACT_OUTPUTS):
        raise BuildError(
            f"{onnx_path}: inputs {list(inputs)} and outputs {list(outputs)} are not the model contract's "
            f"{list(CONTRACT_INPUTS)} -> {list(CONTRACT_OUTPUTS)}"
        )
    metadata = {p.key: p.value for p in model.metadata_props if p.key.startswith("pconv.")}
    check_contract_metadata(metadata, str(onnx_path))
    return metadata


def plan_build(
    onnx_path: str | Path,
    output: str | Path,
    *,
    fp16: bool = False,
    min_shapes: list[str] | None = None,
    opt_shapes: list[str] | None = None,
    max_shapes: list[str] | None = None,
    timing_cache: str | Path | None = None,
    workspace_gib: float | None = None,
    version_compatible: bool = False,
) -> BuildPlan:
    """Check the ONNX and every option; nothing is written."""
    onnx_path, output = Path(onnx_path), Path(output)
    metadata = read_onnx_contract(onnx_path)
    precision = metadata["pconv.precision"]
    if fp16 and precision != "fp16":
        raise BuildError(
            f"{onnx_path}: --fp16 needs an FP16 graph but this one is {precision} (TensorRT takes the precision "
            f"from the graph): run `pconv export --fp16` and build from that file"
        )
    if output.resolve() == onnx_path.resolve() or output.suffix.lower() == ".onnx":
        raise BuildError(f"{output}: the engine must not overwrite or look like an ONNX file; use e.g. model.engine")
    if output.is_dir():
        raise BuildError(f"{output}: is a directory; give the engine file's path")
    if workspace_gib is not None and not workspace_gib > 0:
        raise BuildError(f"--workspace must be > 0 GiB, got {workspace_gib}")
    profiles = make_profiles(min_shapes or [], opt_shapes or [], max_shapes or [], int(metadata["pconv.multiple"]))
    return BuildPlan(
        onnx_path=onnx_path,
        output=output,
        metadata=metadata,
        precision=precision,
        profiles=profiles,
        timing_cache=Path(timing_cache) if timing_cache else None,
        workspace_bytes=int(workspace_gib * 2**30) if workspace_gib else None,
        version_compatible=version_compatible,
    )


def build_engine(plan: BuildPlan, device: int = 0) -> dict[str, Any]:
    """Build and write ``plan.output`` and its sidecar; returns the sidecar. Needs TensorRT and a GPU."""
    from pconv_deploy.runtime.tensorrt_backend import (
        TensorRTUnavailable,
        cuda_call,
        cuda_runtime,
        gpu_info,
        tensorrt_status,
    )

    problem = tensorrt_status()
    if problem:
        raise TensorRTUnavailable(problem)
    try:
        from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine
        from polygraphy.exception import PolygraphyException
    except ImportError:
        raise TensorRTUnavailable("Polygraphy is not installed: pip install 'pconv-deploy[gpu]'") from None
    import tensorrt as trt

    cuda_call(cuda_runtime().cudaSetDevice(device))
    gpu = gpu_info(device)
    trt_profiles = []
    for shape_range in plan.profiles:
        profile = Profile()
        for name, (lo, opt, hi) in shape_range.input_shapes().items():
            profile.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(profile)
    cache = str(plan.timing_cache) if plan.timing_cache else None
    config = CreateConfig(
        profiles=trt_profiles,
        load_timing_cache=cache,  # a missing file is a warning and an empty cache
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.workspace_bytes} if plan.workspace_bytes else None,
        version_compatible=plan.version_compatible or None,
    )
    network = NetworkFromOnnxPath(str(plan.onnx_path), strongly_typed=True)

    onnx_sha256 = file_sha256(plan.onnx_path)  # of the file as TensorRT is about to read it
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.output.with_name(f".{plan.output.name}.tmp")
    try:
        try:
            engine = EngineFromNetwork(network, config=config, save_timing_cache=cache)()
            SaveEngine(engine, str(tmp))()
        except PolygraphyException as e:  # Polygraphy has logged the details already
            raise BuildError(f"{plan.onnx_path}: TensorRT build failed: {str(e).strip().splitlines()[0]}") from None
        sidecar = make_sidecar(
            onnx_path=plan.onnx_path,
            onnx_sha256=onnx_sha256,
            engine_path=plan.output,
            metadata=plan.metadata,
            profiles=plan.profiles,
            tensorrt_version=trt.__version__,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            version_compatible=plan.version_compatible,
        )
        # Never leave a new engine beside an old sidecar: drop the sidecar, move the engine, write the sidecar.
        sidecar_path(plan.output).unlink(missing_ok=True)
        tmp.replace(plan.output)
        write_sidecar(plan.output, sidecar)
    finally:
        tmp.unlink(missing_ok=True)  # after a failure or interruption: no partial engine
    return sidecar
