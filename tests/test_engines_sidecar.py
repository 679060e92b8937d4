"""The engine sidecar: round trip, validation, and the message for each kind of mismatch."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from helpers.engines_onnx import contract_metadata, write_contract_onnx
from helpers.reference import sha256_of as file_sha256

from pconv_deploy.engines.profiles import ShapeRange
from pconv_deploy.engines.sidecar import KEYS, Sidecar, SidecarError, sidecar_path

# A sidecar exactly as the dict-based code before the typed Sidecar wrote it (pconv-deploy.engine/1).
V1_SIDECAR = Path(__file__).parent / "data" / "engine-sidecar-v1.json"

PROFILES = [
    ShapeRange((1, 32, 32), (4, 64, 64), (8, 128, 128)),
    ShapeRange((1, 256, 256), (1, 512, 512), (2, 512, 512)),
]
HERE = {"tensorrt_version": "10.9.0.34", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}


@pytest.fixture
def engine(tmp_path):
    """An engine file (placeholder bytes: nothing here deserialises it) with a valid sidecar beside it."""
    onnx_path = write_contract_onnx(tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    Sidecar.new(
        onnx_path=onnx_path,
        onnx_sha256=file_sha256(onnx_path),
        engine_path=engine,
        metadata=contract_metadata(),
        profiles=PROFILES,
        version_compatible=False,
        **HERE,
    ).write(engine)
    return engine


def check_here(sidecar, engine, *, tensorrt_version=HERE["tensorrt_version"], **gpu):
    """What the backend checks before deserialising: this TensorRT, then this GPU."""
    sidecar.check_runtime(engine, tensorrt_version=tensorrt_version)
    gpu = {"gpu_name": HERE["gpu_name"], "compute_capability": HERE["compute_capability"], **gpu}
    sidecar.check_gpu(engine, **gpu)


def rewrite(engine, **changes):
    path = sidecar_path(engine)
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def test_round_trip(engine, tmp_path):
    assert sidecar_path(engine) == tmp_path / "model.engine.json"
    sidecar = Sidecar.read(engine)
    data = json.loads(sidecar_path(engine).read_text())
    assert list(data) == list(KEYS) and data["format"] == "pconv-deploy.engine/1"
    assert sidecar.onnx_file == "model.onnx"  # a file name: the fallback looks beside the engine only
    assert sidecar.onnx_sha256 == file_sha256(tmp_path / "model.onnx")
    assert sidecar.precision == "fp32" and sidecar.metadata == contract_metadata() and sidecar.multiple == 32
    assert data["profiles"][1] == {
        "image": [[1, 3, 256, 256], [1, 3, 512, 512], [2, 3, 512, 512]],
        "mask": [[1, 1, 256, 256], [1, 1, 512, 512], [2, 1, 512, 512]],
    }
    assert sidecar.profiles == tuple(PROFILES)  # parsed once, when read
    assert sidecar.tensorrt_version == "10.9.0.34" and sidecar.version_compatible is False
    assert sidecar.created.endswith("+00:00")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp file renamed away
    check_here(sidecar, engine)  # same machine: accepted
    sidecar.write(tmp_path / "copy.engine")  # write -> read gives the same object
    assert Sidecar.read(tmp_path / "copy.engine") == sidecar
    with pytest.raises(dataclasses.FrozenInstanceError):
        sidecar.precision = "fp16"
    with pytest.raises(TypeError):
        sidecar.metadata["pconv.precision"] = "fp16"  # the contract is read-only too


def test_a_sidecar_written_before_the_typed_sidecar_still_loads_and_rewrites_byte_for_byte(tmp_path):
    shutil.copyfile(V1_SIDECAR, tmp_path / "old.engine.json")
    sidecar = Sidecar.read(tmp_path / "old.engine")
    assert sidecar.profiles == (ShapeRange((1, 32, 32), (4, 64, 64), (8, 128, 128)),)
    assert (sidecar.version_compatible, sidecar.exclude_lean_runtime, sidecar.gpu_name) == (True, True, "NVIDIA L4")
    assert sidecar.to_json() == json.loads(V1_SIDECAR.read_text())
    sidecar.write(tmp_path / "new.engine")
    assert (tmp_path / "new.engine.json").read_bytes() == V1_SIDECAR.read_bytes()  # the file format is unchanged


def test_tensorrt_version_mismatch(engine):
    sidecar = Sidecar.read(engine)
    with pytest.raises(SidecarError) as e:
        check_here(sidecar, engine, tensorrt_version="10.9.0.35")
    assert str(e.value) == (
        f"{engine}: built with TensorRT 10.9.0.34, this is TensorRT 10.9.0.35; an engine only runs on the TensorRT "
        "version that built it: rebuild it here with `pconv build-engine` (or build with --version-compatible)"
    )


@pytest.mark.parametrize(
    ("runtime", "ok"), [("10.9.0.34", True), ("10.12.0.1", True), ("10.8.1", False), ("11.4.0.106", True)]
)
def test_version_compatible_engines_run_on_later_versions(engine, runtime, ok):
    """TensorRT's Engine Compatibility page: a version-compatible engine runs on later versions, majors included."""
    rewrite(engine, version_compatible=True)
    sidecar = Sidecar.read(engine)
    if ok:
        check_here(sidecar, engine, tensorrt_version=runtime)
    else:
        with pytest.raises(
            SidecarError,
            match=rf"built version-compatible with TensorRT 10.9.0.34, which runs on "
            rf"TensorRT 10.9 and later; this is TensorRT {runtime}",
        ):
            check_here(sidecar, engine, tensorrt_version=runtime)


@pytest.mark.parametrize(
    ("version_compatible", "exclude", "runtime", "lean", "refusal"),
    [
        (False, False, "10.9.0.34", True, "the lean runtime (tensorrt_lean) runs only version-compatible engines"),
        (True, False, "10.9.0.34", True, None),
        (True, False, "11.4.0.106", True, None),
        (True, True, "10.9.0.34", True, None),  # lean runtime excluded: exactly the builder's version
        (True, True, "10.9.0.35", True, "built version-compatible without its lean runtime by TensorRT 10.9.0.34"),
        (True, True, "11.4.0.106", False, "so it needs that version's runtime; this is TensorRT 11.4.0.106"),
    ],
)
def test_lean_runtime_rules(engine, version_compatible, exclude, runtime, lean, refusal):
    rewrite(engine, version_compatible=version_compatible, exclude_lean_runtime=exclude)
    sidecar = Sidecar.read(engine)
    if refusal is None:
        sidecar.check_runtime(engine, tensorrt_version=runtime, lean=lean)
    else:
        with pytest.raises(SidecarError, match=re.escape(refusal)):
            sidecar.check_runtime(engine, tensorrt_version=runtime, lean=lean)


def test_exclude_lean_runtime_needs_version_compatible(engine):
    rewrite(engine, version_compatible=False, exclude_lean_runtime=True)
    with pytest.raises(SidecarError, match="exclude_lean_runtime needs version_compatible"):
        Sidecar.read(engine)


@pytest.mark.parametrize(("name", "cc"), [("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA L4", "8.6")])
def test_gpu_mismatch(engine, name, cc):
    with pytest.raises(SidecarError) as e:
        check_here(Sidecar.read(engine), engine, gpu_name=name, compute_capability=cc)
    assert str(e.value) == (
        f"{engine}: built for NVIDIA L4 (compute capability 8.9), this GPU is {name} (compute capability {cc}): "
        "rebuild it here with `pconv build-engine`"
    )


def test_missing_and_unreadable_sidecars(engine, tmp_path):
    other = tmp_path / "other.engine"
    with pytest.raises(SidecarError, match=r"other.engine.json: no sidecar beside engine .*other.engine; rebuild"):
        Sidecar.read(other)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(SidecarError, match=r"model.engine.json: unreadable sidecar"):
        Sidecar.read(engine)
    sidecar_path(engine).write_text(json.dumps({"format": "something-else/2"}))
    with pytest.raises(SidecarError, match=r"not a pconv-deploy engine sidecar \(format 'something-else/2'"):
        Sidecar.read(engine)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("onnx_file"), r"sidecar lacks onnx_file"),
        (lambda d: d.update(gpu_name=7), r"'gpu_name' must be a string"),
        (lambda d: d.update(precision="fp16"), r"sidecar precision 'fp16' differs from the model's pconv.precision"),
        (lambda d: d["metadata"].pop("pconv.mask_convention"), r"metadata lacks pconv.mask_convention"),
        (lambda d: d["metadata"].update({"pconv.multiple": "64"}), r"pconv.multiple is 64 but pconv.layers is 5"),
        (lambda d: d["metadata"].update({"pconv.precision": "int4"}), r"pconv.precision must be one of"),
        (lambda d: d.update(profiles=[]), r"'profiles' must be a non-empty list"),
        (lambda d: [s[2].__setitem__(2, 100) for s in d["profiles"][0].values()], r"profile 0: max shape 8x100x128"),
        (lambda d: d["profiles"][0]["image"][2].__setitem__(2, 96), r"profile 0: image and mask have different shapes"),
        (lambda d: d["profiles"][1].pop("mask"), r"profile 1: inputs \['image'\] are not the contract's"),
        (lambda d: d["profiles"].__setitem__(0, 5), r"profile 0 must map input names to shapes, got 5"),
        (lambda d: d.update(profiles={"image": []}), r"'profiles' must be a non-empty list"),
        (lambda d: d.update(metadata=["pconv.layers"]), r"'metadata' must map names to strings"),
        (lambda d: d["metadata"].update({"pconv.layers": 5}), r"'metadata' must map names to strings"),
        (lambda d: d.update(version_compatible="yes"), r"'version_compatible' must be true or false"),
        (lambda d: d.update(created=None), r"'created' must be a string"),
    ],
)
def test_invalid_sidecars_are_refused(engine, change, message):
    data = json.loads(sidecar_path(engine).read_text())
    change(data)
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(SidecarError, match=message) as e:
        Sidecar.read(engine)
    assert str(e.value).startswith(f"{sidecar_path(engine)}: ") and "\n" not in str(e.value)


def test_a_new_sidecar_is_checked_as_a_read_one(engine):
    """`Sidecar.new` (build-engine) and `Sidecar.read` share one check: a Sidecar that exists is valid."""
    with pytest.raises(SidecarError, match=rf"^{re.escape(str(engine))}: profile 0: min shape 1x48x48: height"):
        profiles = (ShapeRange((1, 48, 48), (1, 64, 64), (1, 64, 64)),)
        dataclasses.replace(valid_sidecar(engine), profiles=profiles, where=str(engine))
    with pytest.raises(SidecarError, match=r"metadata lacks pconv.precision"):
        Sidecar.new(**{**NEW, "engine_path": engine, "metadata": contract_metadata(precision=None)})
    with pytest.raises(SidecarError, match=r"exclude_lean_runtime needs version_compatible"):
        Sidecar.new(**{**NEW, "engine_path": engine, "exclude_lean_runtime": True})


# issue 21 items 10, 11 and 13: range-checked integers, the validated fallback, hostile JSON ----------


@pytest.mark.parametrize(
    ("layers", "multiple", "message"),
    [
        ("30000000000", "32", r"pconv.layers must be a positive integer, got '30000000000'"),
        ("100000000", "32", r"pconv.layers must be a positive integer, got '100000000'"),
        ("3.5", "32", r"pconv.layers must be a positive integer, got '3.5'"),
        ("0", "1", r"pconv.layers must be from 2 to 8, got 0"),
        ("-5", "32", r"pconv.layers must be a positive integer, got '-5'"),
        ("9", "512", r"pconv.layers must be from 2 to 8, got 9"),
        ("5", "0", r"pconv.multiple is 0 but pconv.layers is 5"),
        ("5", "-32", r"pconv.multiple must be a positive integer, got '-32'"),
        ("5", "3_2", r"pconv.multiple must be a positive integer, got '3_2'"),
        (" 5", "32", r"pconv.layers must be a positive integer, got ' 5'"),
    ],
)
def test_layers_and_multiple_are_range_checked_before_use(engine, layers, multiple, message):
    data = json.loads(sidecar_path(engine).read_text())
    data["metadata"].update({"pconv.layers": layers, "pconv.multiple": multiple})
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(SidecarError, match=rf"^{re.escape(str(sidecar_path(engine)))}: {message}"):
        Sidecar.read(engine)


def test_deeply_nested_or_huge_sidecar_is_one_line(engine):
    sidecar_path(engine).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(SidecarError, match=r"model.engine.json: unreadable sidecar"):
        Sidecar.read(engine)
    data = valid_sidecar(engine).to_json()
    data["metadata"]["pconv.producer"] = "x" * (2 << 20)
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(SidecarError, match=r"not a sidecar \(they are a few KB\)"):
        Sidecar.read(engine)


NEW = {
    "onnx_path": Path("model.onnx"),
    "onnx_sha256": "ab" * 32,
    "metadata": contract_metadata(),
    "profiles": PROFILES,
    "version_compatible": False,
    **HERE,
}


def valid_sidecar(engine):
    """A valid sidecar, rebuilt (the one on disk has been overwritten by the test)."""
    return Sidecar.new(**NEW, engine_path=engine)


@pytest.mark.parametrize(("which", "batch"), [(0, True), (2, 2**40)])
def test_profile_dimensions_must_be_sane_integers(engine, which, batch):
    data = json.loads(sidecar_path(engine).read_text())
    for name in ("image", "mask"):
        data["profiles"][0][name][which][0] = batch  # min batch JSON true, or max batch 2^40
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(SidecarError, match=r"profile 0: "):
        Sidecar.read(engine)


def source_onnx(engine):
    """As the runtime's fallback finds it: the sidecar read and checked, then the ONNX it names."""
    return Sidecar.read(engine).source_onnx(engine)


def test_fallback_runs_only_the_unchanged_onnx_beside_the_engine(engine, tmp_path):
    assert source_onnx(engine) == tmp_path / "model.onnx"
    other = tmp_path / "other"
    other.mkdir()
    original = (tmp_path / "model.onnx").read_bytes()
    (other / "x.onnx").write_bytes(original)  # the same bytes: the sha256 would match, the folder does not
    for name in ("../other/x.onnx", str(other / "x.onnx"), "other/x.onnx", "..", ""):
        rewrite(engine, onnx_file=name)
        with pytest.raises(SidecarError, match=r"is not a file name in the engine's folder"):
            source_onnx(engine)
    rewrite(engine, onnx_file="link.onnx")
    (tmp_path / "link.onnx").symlink_to(other / "x.onnx")
    with pytest.raises(SidecarError, match=r"link.onnx: a symbolic link out of the engine's folder"):
        source_onnx(engine)
    rewrite(engine, onnx_file="model.onnx")
    write_contract_onnx(tmp_path / "model.onnx", contract_metadata(**{"pconv.checkpoint_sha256": "cd" * 32}))
    with pytest.raises(SidecarError, match=r"model.onnx has changed since the engine was built from it"):
        source_onnx(engine)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(SidecarError, match=r"its source ONNX .*model.onnx does not exist; put model.onnx beside"):
        source_onnx(engine)
    (tmp_path / "model.onnx").write_bytes(original)
    assert source_onnx(engine) == tmp_path / "model.onnx"


def test_a_fifo_sidecar_is_not_opened(engine):
    import os

    sidecar_path(engine).unlink()
    os.mkfifo(sidecar_path(engine))  # reading it would block for ever
    with pytest.raises(SidecarError, match=r"model.engine.json: not a regular file, so not the sidecar"):
        Sidecar.read(engine)
