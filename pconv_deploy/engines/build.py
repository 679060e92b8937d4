"""ONNX -> TensorRT engine + sidecar, through Polygraphy's loaders (docs/design.md sections 6-7).

Two halves:

- `plan_build` reads the ONNX contract and checks every option. Pure CPU (onnx + numpy),
  fully tested here.
- `build_engine` is the thin GPU half: a strongly typed network (the graph's types decide
  the precision, so TensorRT 10 and 11 take the same path), the profiles, the timing cache,
  then the engine and its sidecar written atomically. Runs only with the full TensorRT and a GPU.

FP16 and INT8: the precision lives in the ONNX graph. ``--precision fp16|int8`` (``--fp16`` is
``--precision fp16``) asks for that graph; given another we refuse and say which ``pconv export``
makes it (the FP16 graph is exported from the checkpoint with float32 masks and I/O, not converted
afterwards). An INT8 file is explicitly quantized (Q/DQ around the feature convolutions, mask path
float32) and builds as any strongly typed network; TensorRT takes only symmetric INT8 Q/DQ (zero
point 0), so a file exported with ``--int8-activations u8`` (the CPU default) is refused here.

Where each builder call comes from (checked against the installed Polygraphy and the
``tensorrt_lean`` 11.4 enums in tests/test_engines_build.py):

- Polygraphy's loaders (polygraphy.backend.trt, 0.49+): ``NetworkFromOnnxPath(path,
  strongly_typed=True)``, ``Profile().add(name, min, opt, max)``, ``CreateConfig(profiles=...,
  load_timing_cache=..., memory_pool_limits=..., version_compatible=..., exclude_lean_runtime=...)``,
  ``EngineBytesFromNetwork(network, config, save_timing_cache=...)``. They wrap the raw API
  (``Builder.create_network``, ``OnnxParser.parse_from_file``, ``create_builder_config``,
  ``create_optimization_profile`` + ``set_shape``, ``build_serialized_network``).
- TensorRT 10.x "Strongly Typed Networks": NetworkDefinitionCreationFlag.STRONGLY_TYPED makes the
  graph's types binding. TensorRT 11.x (Migrating 10.x to 11.x, "Strongly Typed Networks Are Now
  Required"): every network is strongly typed, the flag is accepted and ignored; BuilderFlag.FP16,
  INT8, BF16, OBEY/PREFER_PRECISION_CONSTRAINTS, calibrators and algorithm selectors are removed.
  So we never pass ``fp16=True`` to CreateConfig, and TF32 stays off (Polygraphy clears it unless asked).
- Builder memory: ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` (10.x
  and 11.x), through ``memory_pool_limits``.
- Timing cache: ``create_timing_cache`` / ``set_timing_cache`` (10.x, 11.x), through Polygraphy's
  load/save: a missing file is an empty cache, and the file is locked while it is updated.
- Version Compatibility (10.x "Version Compatibility", 11.x "Engine Compatibility"):
  ``BuilderFlag.VERSION_COMPATIBLE`` embeds a lean runtime in the plan, so any later TensorRT (full or
  ``tensorrt_lean``; 10.x engines run on 11.x) runs it with ``Runtime.engine_host_code_allowed = True``;
  ``BuilderFlag.EXCLUDE_LEAN_RUNTIME`` leaves it out (smaller plan), and then only the builder's
  own version's runtime (e.g. ``tensorrt-lean-cu12==<version>``) can run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pconv_deploy.contract import INPUT_NAMES, ONNX_SUFFIX, OUTPUT_NAMES, file_sha256
from pconv_deploy.engines.profiles import ShapeRange, make_profiles
from pconv_deploy.engines.sidecar import Sidecar, check_contract_metadata, sidecar_path
from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.files import write_bytes_atomic


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
    exclude_lean_runtime: bool = False


def read_onnx_contract(onnx_path: Path) -> dict[str, str]:
    """The pconv.* metadata of an ONNX file, after checking its inputs and outputs are the contract's."""
    try:
        from pconv_deploy.export.checks import ExportError, load_model
    except ImportError:
        raise BuildError("reading the ONNX model needs the onnx package: pip install 'pconv-deploy[gpu]'") from None
    try:
        model = load_model(onnx_path)  # a regular file, ONNX, no external data (TensorRT would read it from anywhere)
    except ExportError as e:
        raise BuildError(str(e)) from None
    inputs = tuple(i.name for i in model.graph.input)
    outputs = tuple(o.name for o in model.graph.output)
    if (inputs, outputs) != (INPUT_NAMES, OUTPUT_NAMES):
        raise BuildError(
            f"{onnx_path}: inputs {list(inputs)} and outputs {list(outputs)} are not the model contract's "
            f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}"
        )
    metadata = {p.key: p.value for p in model.metadata_props if p.key.startswith("pconv.")}
    check_contract_metadata(metadata, str(onnx_path))
    return metadata


def plan_build(
    onnx_path: str | Path,
    output: str | Path,
    *,
    fp16: bool = False,
    precision: str | None = None,
    min_shapes: list[str] | None = None,
    opt_shapes: list[str] | None = None,
    max_shapes: list[str] | None = None,
    timing_cache: str | Path | None = None,
    workspace_gib: float | None = None,
    version_compatible: bool = False,
    exclude_lean_runtime: bool = False,
) -> BuildPlan:
    """Check the ONNX and every option; nothing is written."""
    onnx_path, output = Path(onnx_path), Path(output)
    metadata = read_onnx_contract(onnx_path)
    precision = check_precision(onnx_path, metadata["pconv.precision"], precision, fp16=fp16)
    if output.resolve() == onnx_path.resolve() or output.suffix.lower() == ONNX_SUFFIX:
        raise BuildError(f"{output}: the engine must not overwrite or look like an ONNX file; use e.g. model.engine")
    if output.is_dir():
        raise BuildError(f"{output}: is a directory; give the engine file's path")
    if workspace_gib is not None and not workspace_gib > 0:
        raise BuildError(f"--workspace must be > 0 GiB, got {workspace_gib}")
    if exclude_lean_runtime and not version_compatible:
        raise BuildError("--exclude-lean-runtime needs --version-compatible (TensorRT's EXCLUDE_LEAN_RUNTIME does)")
    profiles = make_profiles(
        min_shapes or [], opt_shapes or [], max_shapes or [], multiple=int(metadata["pconv.multiple"])
    )
    return BuildPlan(
        onnx_path=onnx_path,
        output=output,
        metadata=metadata,
        precision=precision,
        profiles=profiles,
        timing_cache=Path(timing_cache) if timing_cache else None,
        workspace_bytes=int(workspace_gib * 2**30) if workspace_gib else None,
        version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime,
    )


def check_precision(onnx_path: Path, graph: str, wanted: str | None, *, fp16: bool) -> str:
    """The graph's precision, if it is the one asked for (``--fp16`` = ``--precision fp16``) and TensorRT builds it."""
    if fp16 and wanted not in (None, "fp16"):
        raise BuildError(f"--fp16 and --precision {wanted} disagree: give one of them")
    wanted = wanted or ("fp16" if fp16 else None)
    if wanted is not None and wanted != graph:
        option = "--fp16" if fp16 else f"--precision {wanted}"
        export = option + (" --int8-activations s8 --calibration DIR" if wanted == "int8" else "")
        raise BuildError(
            f"{onnx_path}: {option} needs an {wanted.upper()} graph but this one is {graph} (TensorRT takes the "
            f"precision from the graph): run `pconv export {export}` and build from that file"
        )
    if graph == "int8":
        import onnx

        from pconv_deploy.export.checks import ExportError
        from pconv_deploy.export.quantize import check_tensorrt_int8

        try:
            check_tensorrt_int8(onnx.load(str(onnx_path), load_external_data=False))
        except ExportError as e:
            raise BuildError(f"{onnx_path}: {e}") from None
    return graph


def polygraphy_loaders(plan: BuildPlan, trt: Any) -> tuple[Any, Any]:
    """(network loader, builder config loader) for ``plan``: Polygraphy's lazy loaders, nothing built yet."""
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile

    trt_profiles = []
    for shape_range in plan.profiles:
        profile = Profile()
        for name, (lo, opt, hi) in shape_range.input_shapes().items():
            profile.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(profile)
    config = CreateConfig(
        profiles=trt_profiles,  # one per --min/--opt/--max-shape triple, each covering both inputs
        load_timing_cache=str(plan.timing_cache) if plan.timing_cache else None,  # missing file: empty cache
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.workspace_bytes} if plan.workspace_bytes else None,
        version_compatible=plan.version_compatible or None,
        exclude_lean_runtime=plan.exclude_lean_runtime or None,
    )  # no fp16=...: TensorRT 11 removed the flag; the graph's types decide (strongly typed)
    network = NetworkFromOnnxPath(str(plan.onnx_path), strongly_typed=True)  # 10.x: opt in; 11.x: always
    return network, config


def build_engine(plan: BuildPlan, device: int = 0) -> Sidecar:
    """Build and write ``plan.output`` and its sidecar; returns the sidecar. Needs the full TensorRT and a GPU."""
    from pconv_deploy.engines.trt_api import import_tensorrt, use_device

    found = import_tensorrt(builder=True)  # the full tensorrt: tensorrt_lean cannot build
    try:
        from polygraphy.backend.trt import EngineBytesFromNetwork
        from polygraphy.exception import PolygraphyException
    except ImportError:
        raise BuildError("Polygraphy is not installed: pip install 'pconv-deploy[gpu]'") from None
    gpu = use_device(device)  # the builder tunes kernels for this GPU; the sidecar records it
    network, config = polygraphy_loaders(plan, found.module)
    onnx_sha256 = file_sha256(plan.onnx_path)  # of the file as TensorRT is about to read it
    cache = str(plan.timing_cache) if plan.timing_cache else None
    try:
        serialised = EngineBytesFromNetwork(network, config=config, save_timing_cache=cache)()
    except PolygraphyException as e:  # Polygraphy has logged the details already
        raise BuildError(f"{plan.onnx_path}: TensorRT build failed: {first_line(e)}") from None
    sidecar = Sidecar.new(
        onnx_path=plan.onnx_path,
        onnx_sha256=onnx_sha256,
        engine_path=plan.output,
        metadata=plan.metadata,
        profiles=plan.profiles,
        tensorrt_version=found.version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        version_compatible=plan.version_compatible,
        exclude_lean_runtime=plan.exclude_lean_runtime,
    )
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    # Never leave a new engine beside an old sidecar: drop the sidecar, write the engine, write the sidecar.
    sidecar_path(plan.output).unlink(missing_ok=True)
    write_bytes_atomic(plan.output, memoryview(serialised))
    sidecar.write(plan.output)
    return sidecar
