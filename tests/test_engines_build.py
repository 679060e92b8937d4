"""`pconv build-engine` on a CPU machine: every check before the build, and the one-line refusal without TensorRT."""

import subprocess
import sys

import pytest
from engines_onnx import contract_metadata, write_contract_onnx

from pconv_deploy.engines.build import BuildError, build_engine, plan_build
from pconv_deploy.engines.profiles import ShapeRange
from pconv_deploy.errors import PConvError
from pconv_deploy.runtime.tensorrt_backend import TensorRTUnavailable, tensorrt_status

NO_TENSORRT = "TensorRT is not installed: pip install 'pconv-deploy[gpu]' on a CUDA machine"
needs_no_tensorrt = pytest.mark.skipif(tensorrt_status() is not None and "not installed" not in tensorrt_status(),
                                       reason="TensorRT is installed here")  # fmt: skip


def pconv(*args):
    return subprocess.run([sys.executable, "-m", "pconv_deploy.cli", *args], capture_output=True, text=True)


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
    with pytest.raises(PConvError, match=r"profile 0: min shape 1x48x48: height and width must be multiples of 32"):
        plan_build(
            onnx_path, tmp_path / "m.engine", min_shapes=["1x48x48"], opt_shapes=["1x64x64"], max_shapes=["1x64x64"]
        )


@needs_no_tensorrt
def test_build_engine_without_tensorrt_raises_the_install_hint(tmp_path):
    plan = plan_build(write_contract_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")
    with pytest.raises(TensorRTUnavailable) as e:
        build_engine(plan)
    assert str(e.value) == NO_TENSORRT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@needs_no_tensorrt
def test_cli_without_tensorrt_is_one_line_and_leaves_nothing(tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "out" / "m.engine"
    r = pconv("build-engine", str(onnx_path), "--output", str(engine), "--timing-cache", str(tmp_path / "t.cache"))
    assert r.returncode == 1
    assert r.stderr == f"error: {NO_TENSORRT}\n"
    assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.onnx"]  # no engine, sidecar, temp file or cache


def test_cli_option_errors_are_one_line(tmp_path):
    fp32 = write_contract_onnx(tmp_path / "m.onnx")
    r = pconv("build-engine", str(fp32), "-o", str(tmp_path / "m.engine"), "--fp16")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {fp32}: --fp16 needs an FP16 graph") and r.stderr.count("\n") == 1
    r = pconv("build-engine", str(fp32), "-o", str(tmp_path / "m.engine"), "--min-shape", "1x32", "--opt-shape",
              "1x32x32", "--max-shape", "1x32x32")  # fmt: skip
    assert (r.returncode, r.stderr) == (
        1,
        "error: invalid shape '1x32': expected BxHxW with positive integers, e.g. 4x512x512\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_plan_accepts_a_real_export(small_onnx, tmp_path):
    """The exporter's metadata and I/O are what the builder expects (guards against contract drift)."""
    plan = plan_build(small_onnx, tmp_path / "small.engine", min_shapes=["1x64x64"], opt_shapes=["2x128x128"],
                      max_shapes=["4x256x256"])  # fmt: skip
    assert (plan.precision, plan.metadata["pconv.multiple"], plan.metadata["pconv.layers"]) == ("fp32", "32", "5")
    with pytest.raises(BuildError, match="run `pconv export --fp16`"):
        plan_build(small_onnx, tmp_path / "small.engine", fp16=True)
