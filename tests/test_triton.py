"""Triton repositories: the generated config parses with Triton's own protobuf schema."""

import subprocess
import sys

import pytest
from engines_onnx import contract_metadata, write_contract_onnx
from google.protobuf import text_format
from reference import sha256_of as file_sha256
from tritonclient.grpc import model_config_pb2

from pconv_deploy.engines.profiles import ShapeRange
from pconv_deploy.engines.sidecar import make_sidecar, write_sidecar
from pconv_deploy.errors import PConvError
from pconv_deploy.triton import write_triton_repo


def parse(folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_onnx_repository(small_onnx, tmp_path):
    folder = write_triton_repo(small_onnx, tmp_path / "repo", name="inpaint", max_batch_size=6, instances=2)
    assert folder == tmp_path / "repo" / "inpaint"
    assert (folder / "1" / "model.onnx").read_bytes() == small_onnx.read_bytes()
    config = parse(folder)
    assert config.name == "inpaint" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 6
    T = model_config_pb2.DataType
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("image", T.TYPE_FP32, [3, -1, -1]),
        ("mask", T.TYPE_FP32, [1, -1, -1]),
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("inpainted", [3, -1, -1])]
    assert list(config.dynamic_batching.preferred_batch_size) == [3, 6]
    group = config.instance_group[0]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.Kind.KIND_GPU
    # the contract travels with the model: a client can ask the server for the size multiple
    assert config.parameters["pconv.multiple"].string_value == "32"
    assert config.parameters["pconv.mask_convention"].string_value == "1=known,0=hole"
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]


def test_engine_repository_respects_profiles(tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes (never deserialised here)")
    profiles = [ShapeRange((1, 32, 32), (2, 64, 64), (4, 128, 128)), ShapeRange((1, 64, 64), (4, 64, 64), (8, 64, 64))]
    sidecar = make_sidecar(
        onnx_path=onnx_path, onnx_sha256=file_sha256(onnx_path), engine_path=engine, metadata=contract_metadata(),
        profiles=profiles, tensorrt_version="10.9.0.34", gpu_name="NVIDIA L4", compute_capability="8.9",
        version_compatible=False,
    )  # fmt: skip
    write_sidecar(engine, sidecar)
    with pytest.raises(PConvError, match="accept batches up to 4"):
        write_triton_repo(engine, tmp_path / "repo", max_batch_size=8)
    assert not (tmp_path / "repo" / "pconv").exists()
    folder = write_triton_repo(engine, tmp_path / "repo", max_batch_size=4, kind="KIND_CPU", version=3)
    config = parse(folder)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
    assert (folder / "3" / "model.plan").read_bytes() == engine.read_bytes()


def test_refusals_keep_the_existing_model(small_onnx, tmp_path):
    folder = write_triton_repo(small_onnx, tmp_path / "repo")
    before = (folder / "config.pbtxt").read_text()
    with pytest.raises(PConvError, match="already exists"):
        write_triton_repo(small_onnx, tmp_path / "repo", max_batch_size=2)
    assert (folder / "config.pbtxt").read_text() == before
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(PConvError, match="junk.onnx: not a loadable ONNX model"):
        write_triton_repo(junk, tmp_path / "repo", name="other")
    with pytest.raises(PConvError, match="invalid model name"):
        write_triton_repo(small_onnx, tmp_path / "repo", name="../escape")
    assert write_triton_repo(small_onnx, tmp_path / "repo", max_batch_size=2, overwrite=True) == folder
    assert parse(folder).max_batch_size == 2


def test_cli(small_onnx, tmp_path):
    cmd = [sys.executable, "-m", "pconv_deploy.cli", "triton-repo", str(small_onnx), "--repo", str(tmp_path / "r")]
    r = subprocess.run([*cmd, "--cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert parse(tmp_path / "r" / "pconv").instance_group[0].kind == model_config_pb2.ModelInstanceGroup.Kind.KIND_CPU
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "already exists" in r.stderr
    assert "Traceback" not in r.stderr
