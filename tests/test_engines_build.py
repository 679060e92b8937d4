"""`pconv build-engine` on a CPU machine.

- Every check before the build, and the one-line refusal where the full TensorRT (the builder) is absent.
- The build's calls, against the real Polygraphy loaders (their signatures; CreateConfig really run to
  see which builder flags it sets, with the real TensorRT 11.4 enums of ``tensorrt_lean``), and the
  FP16 graph a strongly typed build receives: every elementwise operand pair already agrees in type.
"""

import importlib.util
import inspect
import sys
from types import SimpleNamespace
from unittest import mock

import onnx
import pytest
import tensorrt_lean
from helpers.cli import pconv
from helpers.engines_onnx import contract_metadata, write_contract_onnx

from pconv_deploy.engines.build import BuildError, build_engine, plan_build, polygraphy_loaders
from pconv_deploy.engines.profiles import ShapeRange
from pconv_deploy.engines.sidecar import Sidecar
from pconv_deploy.engines.trt_api import TensorRTUnavailable
from pconv_deploy.errors import PConvError

HINT = "pip install 'pconv-deploy[gpu]' on a CUDA machine"
NO_BUILDER = (
    f"building an engine needs the full TensorRT (only tensorrt_lean is installed, which runs engines): {HINT}"
    if importlib.util.find_spec("tensorrt_lean")
    else f"TensorRT is not installed: {HINT}"
)
# Where the full TensorRT imports, a build can succeed: these refusals must not be expected there.
needs_no_builder = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="the full TensorRT (the builder) is installed here"
)


def test_plan_defaults_and_explicit_profiles(tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "m.onnx")
    plan = plan_build(onnx_path, tmp_path / "out" / "m.engine")
    assert plan.precision == "fp32" and plan.metadata == contract_metadata()
    assert plan.profiles == [ShapeRange((1, 32, 32), (4, 512, 512), (8, 1024, 1024))]
    assert (plan.timing_cache, plan.workspace_bytes, plan.version_compatible) == (None, None, False)
    plan = plan_build(
        onnx_path,
        tmp_path / "m.engine",
        min_shapes=["1x32x32", "1x256x256"],
        opt_shapes=["1x64x64", "2x512x512"],
        max_shapes=["2x128x128", "4x512x1024"],
        timing_cache=tmp_path / "cache.bin",
        workspace_gib=1.5,
        version_compatible=True,
    )
    assert [p.max for p in plan.profiles] == [(2, 128, 128), (4, 512, 1024)]
    assert plan.workspace_bytes == 3 * 2**29 and plan.timing_cache == tmp_path / "cache.bin"
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_precision_comes_from_the_graph(tmp_path):
    fp32 = write_contract_onnx(tmp_path / "fp32.onnx")
    fp16 = write_contract_onnx(tmp_path / "fp16.onnx", contract_metadata(precision="fp16"))
    assert plan_build(fp16, tmp_path / "a.engine", fp16=True).precision == "fp16"
    assert plan_build(fp16, tmp_path / "a.engine").precision == "fp16"  # the graph decides
    with pytest.raises(BuildError) as e:
        plan_build(fp32, tmp_path / "a.engine", fp16=True)
    assert str(e.value) == (
        f"{fp32}: --fp16 needs an FP16 graph but this one is fp32 (TensorRT takes the precision from the graph): "
        "run `pconv export --fp16` and build from that file"
    )


def test_plan_refuses_files_that_are_not_the_contract(tmp_path):
    with pytest.raises(BuildError, match=r"nope.onnx: no such ONNX file"):
        plan_build(tmp_path / "nope.onnx", tmp_path / "m.engine")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(BuildError, match=r"junk.onnx: not an ONNX model"):
        plan_build(tmp_path / "junk.onnx", tmp_path / "m.engine")
    renamed = write_contract_onnx(tmp_path / "renamed.onnx", input_names=("input", "mask"))
    with pytest.raises(BuildError, match=r"inputs \['input', 'mask'\] and outputs \['inpainted'\] are not the model"):
        plan_build(renamed, tmp_path / "m.engine")
    bare = write_contract_onnx(tmp_path / "bare.onnx", metadata={})
    with pytest.raises(PConvError, match=r"bare.onnx: not a pconv-deploy model: metadata lacks pconv.format, .*"):
        plan_build(bare, tmp_path / "m.engine")
    partial = write_contract_onnx(tmp_path / "partial.onnx", contract_metadata(**{"pconv.producer": None}))
    with pytest.raises(PConvError, match=r"metadata lacks pconv.producer; export it with `pconv export`"):
        plan_build(partial, tmp_path / "m.engine")


def test_plan_refuses_bad_options(tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "m.onnx")
    with pytest.raises(BuildError, match="must not overwrite or look like an ONNX file"):
        plan_build(onnx_path, onnx_path)
    with pytest.raises(BuildError, match="is a directory"):
        plan_build(onnx_path, tmp_path)
    with pytest.raises(BuildError, match=r"--workspace must be > 0 GiB, got 0"):
        plan_build(onnx_path, tmp_path / "m.engine", workspace_gib=0)
    with pytest.raises(BuildError, match=r"--exclude-lean-runtime needs --version-compatible"):
        plan_build(onnx_path, tmp_path / "m.engine", exclude_lean_runtime=True)
    with pytest.raises(PConvError, match=r"profile 0: min shape 1x48x48: height and width must be multiples of 32"):
        plan_build(
            onnx_path, tmp_path / "m.engine", min_shapes=["1x48x48"], opt_shapes=["1x64x64"], max_shapes=["1x64x64"]
        )


@needs_no_builder
def test_build_engine_without_the_builder_raises_the_install_hint(tmp_path):
    plan = plan_build(write_contract_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")
    with pytest.raises(TensorRTUnavailable) as e:
        build_engine(plan)
    assert str(e.value) == NO_BUILDER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@needs_no_builder
def test_cli_without_the_builder_is_one_line_and_leaves_nothing(tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "out" / "m.engine"
    r = pconv("build-engine", str(onnx_path), "--output", str(engine), "--timing-cache", str(tmp_path / "t.cache"))
    assert r.returncode == 1
    assert r.stderr == f"error: {NO_BUILDER}\n"
    assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.onnx"]  # no engine, sidecar, temp file or cache


def test_cli_option_errors_are_one_line(tmp_path):
    fp32 = write_contract_onnx(tmp_path / "m.onnx")
    r = pconv("build-engine", str(fp32), "-o", str(tmp_path / "m.engine"), "--fp16")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {fp32}: --fp16 needs an FP16 graph") and r.stderr.count("\n") == 1
    r = pconv(
        "build-engine",
        str(fp32),
        "-o",
        str(tmp_path / "m.engine"),
        "--min-shape",
        "1x32",
        "--opt-shape",
        "1x32x32",
        "--max-shape",
        "1x32x32",
    )
    assert (r.returncode, r.stderr) == (
        1,
        "error: invalid shape '1x32': expected BxHxW with positive integers, e.g. 4x512x512\n",
    )
    r = pconv("build-engine", str(fp32), "-o", str(tmp_path / "m.engine"), "--exclude-lean-runtime")
    assert (r.returncode, r.stderr) == (
        1,
        "error: --exclude-lean-runtime needs --version-compatible (TensorRT's EXCLUDE_LEAN_RUNTIME does)\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_plan_accepts_a_real_export(small_onnx, tmp_path):
    """The exporter's metadata and I/O are what the builder expects (guards against contract drift)."""
    plan = plan_build(
        small_onnx,
        tmp_path / "small.engine",
        min_shapes=["1x64x64"],
        opt_shapes=["2x128x128"],
        max_shapes=["4x256x256"],
    )
    assert (plan.precision, plan.metadata["pconv.multiple"], plan.metadata["pconv.layers"]) == ("fp32", "32", "5")
    with pytest.raises(BuildError, match="run `pconv export --fp16`"):
        plan_build(small_onnx, tmp_path / "small.engine", fp16=True)


# ---------------------------------------------------------------- the builder's calls, against the real loaders


def test_polygraphy_loaders_take_the_arguments_we_pass():
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    create_config = set(inspect.signature(CreateConfig.__init__).parameters)
    create_config |= set(inspect.signature(CreateConfig.__mro__[1].__init__).parameters)  # its **kwargs
    assert {
        "profiles",
        "load_timing_cache",
        "memory_pool_limits",
        "version_compatible",
        "exclude_lean_runtime",
        "fp16",
    } <= create_config
    assert list(inspect.signature(NetworkFromOnnxPath.__init__).parameters)[:2] == ["self", "path"]
    assert "strongly_typed" in inspect.signature(NetworkFromOnnxPath.__init__).parameters
    assert list(inspect.signature(EngineBytesFromNetwork.__init__).parameters)[:3] == ["self", "network", "config"]
    assert "save_timing_cache" in inspect.signature(EngineBytesFromNetwork.__init__).parameters
    assert list(inspect.signature(Profile.add).parameters) == ["self", "name", "min", "opt", "max"]


def fake_network():
    """What CreateConfig reads from a parsed network (INetworkDefinition is not in tensorrt_lean): the inputs."""
    inputs = [
        SimpleNamespace(name=n, shape=(-1, c, -1, -1), is_shape_tensor=False, dtype=tensorrt_lean.DataType.FLOAT)
        for n, c in (("image", 3), ("mask", 1))
    ]
    network = mock.MagicMock(num_inputs=2)
    network.get_input.side_effect = lambda i: inputs[i]
    return network


def test_create_config_sets_the_documented_builder_calls_with_tensorrt_11_enums(tmp_path, monkeypatch):
    """Polygraphy's real CreateConfig, run with the real TensorRT 11.4 enums; the builder only records."""
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_lean)  # the real module (it lacks only the builder)
    onnx_path = write_contract_onnx(tmp_path / "m.onnx", contract_metadata(precision="fp16"))
    plan = plan_build(
        onnx_path,
        tmp_path / "m.engine",
        fp16=True,
        min_shapes=["1x32x32"],
        opt_shapes=["2x64x64"],
        max_shapes=["4x128x128"],
        workspace_gib=1,
        timing_cache=tmp_path / "t.cache",
        version_compatible=True,
        exclude_lean_runtime=True,
    )
    network_loader, config_loader = polygraphy_loaders(plan, tensorrt_lean)
    assert (network_loader.path, network_loader.strongly_typed) == (str(onnx_path), True)
    builder = mock.MagicMock()  # IBuilder / IBuilderConfig exist only in the full tensorrt: a recorder
    config_loader(builder, fake_network())
    config = builder.create_builder_config.return_value
    flags = [c.args[0] for c in config.set_flag.mock_calls]
    bf = tensorrt_lean.BuilderFlag
    assert flags == [bf.VERSION_COMPATIBLE, bf.EXCLUDE_LEAN_RUNTIME]  # the real 11.4 enum members
    assert [c.args[0] for c in config.clear_flag.mock_calls] == [bf.TF32]  # FP32 engines stay FP32
    assert "FP16" not in bf.__members__  # removed in TensorRT 11: precision comes from the graph
    config.set_memory_pool_limit.assert_called_once_with(tensorrt_lean.MemoryPoolType.WORKSPACE, 2**30)
    config.set_timing_cache.assert_called_once()  # a missing cache file starts an empty one
    profile = builder.create_optimization_profile.return_value
    assert profile.set_shape.mock_calls == [
        mock.call.set_shape("image", [1, 3, 32, 32], [2, 3, 64, 64], [4, 3, 128, 128]),
        mock.call.set_shape("mask", [1, 1, 32, 32], [2, 1, 64, 64], [4, 1, 128, 128]),
    ]  # both inputs in every profile


def test_build_wiring(recorded_build, tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "m.onnx", contract_metadata(precision="fp16"))
    plan = plan_build(
        onnx_path, tmp_path / "out" / "m.engine", fp16=True, timing_cache=tmp_path / "t.cache", version_compatible=True
    )
    sidecar = build_engine(plan, device=0)
    (call,) = recorded_build.loader.mock_calls  # the autospec checked it against the real __init__
    (network,), config = call.args, call.kwargs["config"]
    assert call.kwargs["save_timing_cache"] == str(tmp_path / "t.cache")
    assert config.timing_cache_path == str(tmp_path / "t.cache")
    assert (network.strongly_typed, config.version_compatible, config.exclude_lean_runtime) == (True, True, None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.engine", "m.engine.json"]  # no temp left
    assert (tmp_path / "out" / "m.engine").read_bytes() == b"serialised engine"
    assert Sidecar.read(tmp_path / "out" / "m.engine") == sidecar
    assert (sidecar.gpu_name, sidecar.compute_capability, sidecar.tensorrt_version) == (
        "NVIDIA L4",
        "8.9",
        tensorrt_lean.__version__,
    )
    assert (sidecar.precision, sidecar.onnx_file, sidecar.version_compatible) == ("fp16", "m.onnx", True)
    assert [name for name, *_ in recorded_build.gpu.calls] == [
        "cudaGetDeviceCount",
        "cudaSetDevice",
        "cudaGetDeviceProperties",
    ]


def test_failed_build_leaves_the_previous_engine_alone(recorded_build, tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "m.onnx")
    plan = plan_build(onnx_path, tmp_path / "m.engine")
    build_engine(plan)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    recorded_build.state["fail"] = True
    with pytest.raises(BuildError) as e:
        build_engine(plan)
    assert str(e.value) == f"{onnx_path}: TensorRT build failed: Could not parse the network"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, old pair intact


ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Concat", "Where", "Max", "Min"}


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:  # Constant nodes carry their tensor as an attribute
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def test_fp16_graph_is_strongly_typed_as_exported(small_onnx_fp16):
    """A strongly typed build casts nothing implicitly: every Mul/Add/Concat... must already agree in type."""
    model = onnx.load(str(small_onnx_fp16))
    types = tensor_types(model)
    seen = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for node in model.graph.node:
        if node.op_type not in ELEMENTWISE:
            continue
        operands = [name for name in node.input if name]
        if node.op_type == "Where":
            operands = operands[1:]  # the condition is bool
        kinds = {types[name] for name in operands}
        assert len(kinds) == 1, f"{node.op_type} {node.name}: operands of types {kinds} ({operands})"
        seen[kinds.pop()] += 1
    assert seen[onnx.TensorProto.FLOAT16] > 10 and seen[onnx.TensorProto.FLOAT] > 0  # features fp16, mask path fp32
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert set(io.values()) == {onnx.TensorProto.FLOAT}  # I/O float32, cast inside the graph


def test_the_type_walk_finds_an_implicit_cast(tmp_path):
    """The walk above can fail: a float16 tensor meeting a float32 one in a Mul."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("Mul", ["h", "x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    types = tensor_types_lenient(model)
    assert {types["h"], types["x"]} == {TensorProto.FLOAT16, TensorProto.FLOAT}


def tensor_types_lenient(model):
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
