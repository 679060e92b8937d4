"""Triton repositories: the generated config parses with Triton's own protobuf schema."""

import subprocess
import sys

import pytest
from google.protobuf import text_format
from helpers.cli import infer_args
from helpers.engines_onnx import contract_metadata, write_contract_onnx
from helpers.reference import sha256_of as file_sha256
from tritonclient.grpc import model_config_pb2

from pconv_deploy.engines.profiles import ShapeRange
from pconv_deploy.engines.sidecar import Sidecar
from pconv_deploy.errors import PConvError
from pconv_deploy.serving.options import RepositoryOptions
from pconv_deploy.serving.repository import write_triton_repo


def write(model, repo, **options):
    """`pconv triton-repo MODEL --repo REPO ...` through the API."""
    return write_triton_repo(RepositoryOptions(model=model, repo=repo, **options))


def parse(folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_onnx_repository(small_onnx, tmp_path):
    folder = write(small_onnx, tmp_path / "repo", name="inpaint", max_batch_size=6, instances=2)
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
    Sidecar.new(
        onnx_path=onnx_path,
        onnx_sha256=file_sha256(onnx_path),
        engine_path=engine,
        metadata=contract_metadata(),
        profiles=profiles,
        tensorrt_version="10.9.0.34",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        version_compatible=False,
    ).write(engine)
    with pytest.raises(PConvError, match="accept batches up to 4"):
        write(engine, tmp_path / "repo", max_batch_size=8)
    assert not (tmp_path / "repo" / "pconv").exists()
    folder = write(engine, tmp_path / "repo", max_batch_size=4, kind="KIND_CPU", version=3)
    config = parse(folder)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
    assert (folder / "3" / "model.plan").read_bytes() == engine.read_bytes()


def test_refusals_keep_the_existing_model(small_onnx, tmp_path):
    folder = write(small_onnx, tmp_path / "repo")
    before = (folder / "config.pbtxt").read_text()
    with pytest.raises(PConvError, match="already exists"):
        write(small_onnx, tmp_path / "repo", max_batch_size=2)
    assert (folder / "config.pbtxt").read_text() == before
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(PConvError, match="junk.onnx: not a loadable ONNX model"):
        write(junk, tmp_path / "repo", name="other")
    with pytest.raises(PConvError, match="a model name is 1-64 characters"):
        write(small_onnx, tmp_path / "repo", name="../escape")
    assert write(small_onnx, tmp_path / "repo", max_batch_size=2, overwrite=True) == folder
    assert parse(folder).max_batch_size == 2


def test_cli(small_onnx, tmp_path):
    cmd = [sys.executable, "-m", "pconv_deploy.cli", "triton-repo", str(small_onnx), "--repo", str(tmp_path / "r")]
    r = subprocess.run([*cmd, "--cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert parse(tmp_path / "r" / "pconv").instance_group[0].kind == model_config_pb2.ModelInstanceGroup.Kind.KIND_CPU
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "already exists" in r.stderr
    assert "Traceback" not in r.stderr


def as_json(folder):
    """The config in Triton's JSON form (what a server returns for GET /v2/models/NAME/config)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(parse(folder), preserving_proto_field_name=True)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_client_requests_match_the_repository_config(small_onnx, tmp_path, scheme):
    """What `pconv infer --server` sends fits the config `pconv triton-repo` writes: names, dtypes, dims, batch."""
    import numpy as np

    from pconv_deploy.serving.client import TritonBackend, check_config

    folder = write(small_onnx, tmp_path / "repo", max_batch_size=4, kind="KIND_CPU")
    config = parse(folder)
    served = check_config(as_json(folder), "repo")
    assert (served.multiple, served.max_batch) == (32, 4)
    assert served.metadata["pconv.mask_convention"] == "1=known,0=hole"
    batch = (np.zeros((4, 3, 64, 96), np.float32), np.ones((4, 1, 64, 96), np.float32))
    inputs, outputs = TritonBackend.request_tensors(scheme, *batch)
    declared = {i.name: i for i in config.input}
    assert [t.name() for t in inputs] == [i.name for i in config.input]
    for tensor in inputs:
        spec = declared[tensor.name()]
        assert "TYPE_" + tensor.datatype() == model_config_pb2.DataType.Name(spec.data_type) == "TYPE_FP32"
        shape = tensor.shape()
        assert shape[0] <= config.max_batch_size and len(shape) == len(spec.dims) + 1
        assert all(d == -1 or d == s for d, s in zip(spec.dims, shape[1:]))
        assert shape[2] % served.multiple == 0 and shape[3] % served.multiple == 0
    assert [o.name() for o in outputs] == [o.name for o in config.output]


def test_check_config_refuses_what_breaks_the_contract(small_onnx, tmp_path):
    from pconv_deploy.serving.client import check_config

    good = as_json(write(small_onnx, tmp_path / "repo"))
    wrong_dims = {**good, "input": [dict(good["input"][0], dims=["3", "-1"]), good["input"][1]]}
    with pytest.raises(PConvError, match=r"srv: tensor 'image' is TYPE_FP32 \[3, -1\], the contract needs"):
        check_config(wrong_dims, "srv")
    with pytest.raises(PConvError, match="no tensor 'mask'"):
        check_config({**good, "input": good["input"][:1]}, "srv")
    with pytest.raises(PConvError, match="no valid pconv.multiple"):
        check_config({**good, "parameters": {}}, "srv")
    unbatched = {**good, "max_batch_size": 0}  # then the batch dimension is part of dims
    for t in unbatched["input"] + unbatched["output"]:
        t["dims"] = ["-1", *t["dims"]]
    assert check_config(unbatched, "srv").max_batch == 0


def test_server_urls():
    from pconv_deploy.serving.client import parse_server

    assert parse_server("http://10.0.0.5:9000") == ("http", "10.0.0.5:9000")
    assert parse_server("grpc://host") == ("grpc", "host:8001")
    assert parse_server("localhost:8000") == ("http", "localhost:8000")
    assert parse_server("grpc://[::1]:8101") == ("grpc", "[::1]:8101")
    bad_urls = [("ftp://h:1", "unknown scheme"), ("http://h:x", "invalid port"), ("http://h:1/v2", "expected")]
    for bad, message in bad_urls:
        with pytest.raises(PConvError, match=message):
            parse_server(bad)


def test_a_killed_run_leaves_nothing_the_next_run_keeps(small_onnx, tmp_path):
    repo = tmp_path / "repo"
    dead = repo / ".pconv.pconv-tmp-99999999-0123abcd"  # a staging folder of a process that no longer exists
    (dead / "1").mkdir(parents=True)
    alive = repo / ".pconv.pconv-tmp-1-0123abcd"  # pid 1 is alive: maybe another run in progress, kept
    alive.mkdir()
    write(small_onnx, repo)
    assert sorted(p.name for p in repo.iterdir()) == [alive.name, "pconv"]
    write(small_onnx, repo, max_batch_size=2, overwrite=True)
    assert sorted(p.name for p in repo.iterdir()) == [alive.name, "pconv"] and parse(repo / "pconv").max_batch_size == 2


def test_infer_server_without_the_client_extra_is_one_line(tmp_path):
    for folder in ("img", "masks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(b"")
    code = (
        "import sys; sys.modules['tritonclient.http'] = None; sys.argv = ['pconv', *sys.argv[1:]]\n"
        "from pconv_deploy.cli import main; main()"
    )
    args = infer_args(tmp_path / "img", tmp_path / "masks", tmp_path / "out", "--server", "http://127.0.0.1:1")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: --server needs the client extra") and len(r.stderr.splitlines()) == 1
    assert r.stderr.strip().endswith("pip install 'pconv-deploy[client]'")


HOSTILE_VALUES = [
    'x" }\n}\nbackend: "python"\nparameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/tmp/evil.tar.gz',
    'x" } } parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/e.tgz" } }',
    "back\\slash \\\" quote ' single \t tab \r\n crlf \x00 nul \x7f del",
    "unicode: \u00e9\u4e2d\U0001f600 and # not a comment",
    "",
]


@pytest.mark.parametrize("hostile", HOSTILE_VALUES)
def test_config_from_hostile_metadata_has_exactly_our_fields(tmp_path, hostile):
    """A crafted pconv.producer (or any value) stays one string: no backend, no EXECUTION_ENV_PATH, no new field."""
    metadata = contract_metadata(**{"pconv.producer": hostile, "pconv.input_norm": hostile[::-1]})
    model = write_contract_onnx(tmp_path / "m.onnx", metadata)
    folder = write(model, tmp_path / "repo", max_batch_size=4, kind="KIND_CPU")
    config = parse(folder)
    assert config.parameters["pconv.producer"].string_value == hostile
    assert config.parameters["pconv.input_norm"].string_value == hostile[::-1]
    assert dict((k, v.string_value) for k, v in config.parameters.items()) == metadata
    assert config.backend == "" and config.platform == "onnxruntime_onnx" and config.name == "pconv"
    fields = sorted(f.name for f, _ in config.ListFields())
    assert fields == sorted(
        ["name", "platform", "max_batch_size", "input", "output", "dynamic_batching", "instance_group", "parameters"]
    )
    assert [i.name for i in config.input] == ["image", "mask"] and [o.name for o in config.output] == ["inpainted"]


def test_engine_sidecar_metadata_is_escaped_too(tmp_path):
    onnx_path = write_contract_onnx(tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    hostile = HOSTILE_VALUES[0]
    Sidecar.new(
        onnx_path=onnx_path,
        onnx_sha256=file_sha256(onnx_path),
        engine_path=engine,
        metadata=contract_metadata(**{"pconv.producer": hostile}),
        profiles=[ShapeRange((1, 32, 32), (2, 64, 64), (4, 128, 128))],
        tensorrt_version="10.9.0.34",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        version_compatible=False,
    ).write(engine)
    config = parse(write(engine, tmp_path / "repo", max_batch_size=4))
    assert config.parameters["pconv.producer"].string_value == hostile and config.backend == ""
    assert "EXECUTION_ENV_PATH" not in config.parameters


def test_metadata_keys_outside_the_safe_set_are_refused(tmp_path):
    model = write_contract_onnx(tmp_path / "m.onnx", contract_metadata(**{'pconv.x" } backend: "python': "1"}))
    with pytest.raises(PConvError, match=r"metadata key .* is not a plain name"):
        write(model, tmp_path / "repo")
    assert not (tmp_path / "repo" / "pconv").exists()
    other = write_contract_onnx(tmp_path / "o.onnx", {**contract_metadata(), 'other" key': 'v"'})
    config = parse(write(other, tmp_path / "repo2"))  # non-contract metadata is not copied
    assert sorted(config.parameters) == sorted(contract_metadata())


BAD_NAMES = ['a"b', "a\nb", "x" * 240, "x" * 65, "", ".hidden", "a/b", "a b", "caf\u00e9", "a\\b", "a;b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_names_are_one_line_errors(small_onnx, tmp_path, name):
    cmd = [sys.executable, "-m", "pconv_deploy.cli", "triton-repo", str(small_onnx), "--repo", str(tmp_path / "r")]
    r = subprocess.run([*cmd, "--name", name], capture_output=True, text=True, timeout=120)
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "model name is 1-64 characters" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())


def test_longest_safe_name_works(small_onnx, tmp_path):
    name = "A-z_0.9" + "x" * 57
    config = parse(write(small_onnx, tmp_path / "repo", name=name))
    assert config.name == name and len(name) == 64


def test_the_client_and_the_launcher_import_without_torch():
    """`pconv infer --server` and `pconv serve` belong to the runtime-only install: no torch, no OpenCV."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['cv2'] = None\n"
        "import pconv_deploy.serving.client, pconv_deploy.serving.launcher, pconv_deploy.serving.repository\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'cv2') and sys.modules[m] is not None))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
