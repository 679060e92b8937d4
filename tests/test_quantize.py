"""INT8: the mask path stays float32 (proved by walking the graph, and shown to fail when a mask conv
is quantized on purpose), export through the CLI, `pconv check` on quality, ONNX Runtime runs, known
pixels byte-identical and no NaN on adversarial masks, an imported checkpoint, build-engine's rules."""

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.provenance import provenance_leaks
from PIL import Image

from pconv_deploy.contract import PRECISIONS
from pconv_deploy.engines.build import BuildError, plan_build
from pconv_deploy.errors import PConvError
from pconv_deploy.export import ExportError
from pconv_deploy.export.calibration import CalibrationSet, find_photos
from pconv_deploy.export.quantize import Int8Recipe, check_mask_path_float, graph_roles, quantize_int8
from pconv_deploy.export.verify import check_onnx

QDQ = {"QuantizeLinear", "DequantizeLinear"}


def pconv(*args):
    return subprocess.run([sys.executable, "-m", "pconv_deploy.cli", *args], capture_output=True, text=True)


def write_photos(folder: Path, count: int, seed: int) -> Path:
    """Photo-like PNGs: smooth colour fields with edges and a little noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.random((6, 8, 3))
        image = np.kron(coarse, np.ones((16, 16, 1)))[:96, :128] * 0.9 + 0.1 * rng.random((96, 128, 3))
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("calibration"), 4, seed=0)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("heldout"), 3, seed=1)


@pytest.fixture(scope="module")
def cli_int8(small_checkpoint, photos, tmp_path_factory):
    """`pconv export --precision int8` of the small model: the file and the command's result."""
    out = tmp_path_factory.mktemp("int8") / "small-int8.onnx"
    r = pconv(
        "export",
        "--checkpoint",
        str(small_checkpoint),
        "--precision",
        "int8",
        "--calibration",
        str(photos),
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def mask_only_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from the ``mask`` input and constants alone, by a walk over the consumers."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    image_side = {"image"}
    for node in model.graph.node:  # what the image reaches (the graph is topologically sorted)
        if image_side.intersection(node.input):
            image_side.update(node.output)
    found, todo = set(), ["mask"]
    while todo:
        for node in consumers.get(todo.pop(), []):
            for out in node.output:
                if out not in image_side and out not in found:
                    found.add(out)
                    todo.append(out)
    return found | {"mask"}


def mask_path_violations(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes that take a mask-only tensor, and mask-path nodes (mask convs, Clip, Reciprocal...) fed by Q/DQ."""
    mask_only = mask_only_tensors(model)
    qdq_outputs = {out for node in model.graph.node if node.op_type in QDQ for out in node.output}
    bad = []
    for node in model.graph.node:
        if node.op_type in QDQ and mask_only.intersection(node.input):
            bad.append(f"{node.op_type} {node.name} quantizes {sorted(mask_only.intersection(node.input))}")
        if node.op_type not in QDQ and set(node.output) <= mask_only and qdq_outputs.intersection(node.input):
            bad.append(f"mask-path {node.op_type} {node.name} is fed by Q/DQ")
    return bad


def mask_path_ops(model: onnx.ModelProto) -> dict[str, int]:
    mask_only = mask_only_tensors(model)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in QDQ and set(node.output) <= mask_only:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def test_precisions_are_spelled_once():
    assert PRECISIONS == ("fp32", "fp16", "int8")


def test_roles_come_from_the_structure(small_onnx):
    """Feature convs are those whose weights are not the mask path's shapes (1 output channel: the count;
    1x1 with one input channel: the ratio and b * valid spread over C channels)."""
    model = onnx.load(str(small_onnx))
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    by_shape = [n.name for n in convs if not (shapes[n.input[1]][0] == 1 or shapes[n.input[1]][1:] == (1, 1, 1))]
    roles = graph_roles(model)
    assert list(roles.feature_convs) == by_shape and len(by_shape) == 10  # 5 encoder + 5 decoder levels
    assert {n.name for n in convs} - set(by_shape) <= roles.mask_path
    assert mask_path_ops(model)["Conv"] == 30 and mask_path_ops(model)["Clip"] >= 10


def test_cli_export_is_int8_with_float_mask_path(cli_int8, photos):
    path, result = cli_int8
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    assert mask_path_violations(model) == []
    assert check_mask_path_float(model) == ops.count("QuantizeLinear") + ops.count("DequantizeLinear")
    assert mask_path_ops(model) == mask_path_ops(onnx.load(str(path)))  # the walk finds the mask path
    assert mask_path_ops(model)["Conv"] == 30  # all 30 mask-path convs still float
    meta = {p.key: p.value for p in model.metadata_props}
    files = sorted(photos.iterdir())
    lines = sorted(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files)
    assert meta["pconv.precision"] == "int8" and meta["pconv.calibration_images"] == "4"
    assert meta["pconv.calibration_sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert "percentile 99.99" in meta["pconv.calibration_method"] and meta["pconv.int8_activations"] == "u8"
    assert "int8" in result.stdout and "quality on 8 synthetic images" in result.stdout and "PASSED" in result.stdout
    assert (path.parent / "small-int8.parity" / "quality.json").is_file()


def test_int8_file_names_no_developer_paths(cli_int8):
    """The INT8 path (exporter, then onnxruntime's quantizer) strips the per-node stack traces too."""
    from pconv_deploy.contract import METADATA_KEYS

    model = onnx.load(str(cli_int8[0]))
    assert provenance_leaks(model) == []
    assert set(METADATA_KEYS) <= {p.key for p in model.metadata_props}
    assert all(not node.metadata_props and not node.doc_string for node in model.graph.node)


def test_quantizing_a_mask_conv_on_purpose_is_caught(small_onnx, photos, tmp_path):
    """The same quantizer with one mask-count convolution left quantizable: both walks must fail."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    from pconv_deploy.export.calibration import FeedReader

    model = onnx.load(str(small_onnx))
    roles = graph_roles(model)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    mask_conv = next(n.name for n in model.graph.node if n.op_type == "Conv" and shapes[n.input[1]][0] == 1)
    quantize_static(
        str(small_onnx),
        tmp_path / "bad.onnx",
        FeedReader(CalibrationSet(find_photos(photos), 64)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        nodes_to_quantize=[*roles.feature_convs[1:], mask_conv],
    )
    bad = onnx.load(str(tmp_path / "bad.onnx"))
    assert mask_path_violations(bad)
    with pytest.raises(ExportError, match="mask path|mask-path"):
        check_mask_path_float(bad)


@pytest.mark.parametrize("method", ["minmax"])
def test_streamed_calibration_matches_onnxruntimes(small_onnx, photos, tmp_path, monkeypatch, method):
    """Our chunked calibration (bounded memory) against quantize_static's own, all samples at once: the
    same ranges. (Percentile ranges of these few 64x64 samples already differ by >10 % between
    quantize_static and the same calibrator driven in one chunk; 0.2 % on the bundled model at 256x256.)"""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from pconv_deploy.export import quantize
    from pconv_deploy.export.calibration import FeedReader

    monkeypatch.setattr(quantize, "CALIBRATION_CHUNK", 3)  # 8 samples: chunks of 3, 3, 2
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    cal, recipe = CalibrationSet(find_photos(photos), 64), Int8Recipe(method=method)
    model = onnx.load(str(small_onnx))
    roles = graph_roles(model)
    keep = quantize.kept_convs(roles, recipe)
    exclude = [n.name for n in model.graph.node if n.name not in set(roles.feature_convs) - keep]
    quantize_static(
        str(small_onnx),
        tmp_path / "ref.onnx",
        FeedReader(cal),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        nodes_to_exclude=exclude,
        calibrate_method=methods[method],
        extra_options={"CalibPercentile": 99.99},
    )

    def scales(m: onnx.ModelProto) -> dict[str, float]:
        inits = {t.name: t for t in m.graph.initializer}
        qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
        return {n.input[0]: float(onnx.numpy_helper.to_array(inits[n.input[1]])) for n in qs}

    ours, ref = scales(quantize_int8(model, cal, recipe)), scales(onnx.load(str(tmp_path / "ref.onnx")))
    assert ours.keys() == ref.keys() and len(ref) > 10
    assert ours == ref


def test_int8_runs_exactly_where_it_must(cli_int8):
    """Known pixels byte-identical, finite everywhere: all-hole, 1-pixel holes, one known pixel per window."""
    path, _ = cli_int8
    rng = np.random.default_rng(5)
    n, h, w = 5, 64, 96
    image = rng.random((n, 3, h, w), dtype=np.float32)
    mask = np.ones((n, 1, h, w), np.float32)
    mask[0] = 0  # all hole
    mask[1, 0, 3::5, 2::5] = 0  # isolated 1-pixel holes
    mask[2] = 0
    mask[2, 0, 3::7, 1::7] = 1  # windows with a single known pixel
    mask[3, 0, 10:50, 20:70] = 0  # one big hole: all-hole windows at every level
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["inpainted"], {"image": image, "mask": mask})
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    known = np.broadcast_to(mask == 1, out.shape)
    assert np.array_equal(out[known], image[known])  # bit for bit
    assert np.array_equal(out[4], image[4])  # no hole: the input unchanged
    assert np.abs(out[3] - image[3])[~known[3]].mean() > 0  # the holes are filled (not the input)


def test_cli_check_and_infer_on_int8(cli_int8, small_checkpoint, heldout, photos, tmp_path):
    path, _ = cli_int8
    r = pconv(
        "check",
        str(path),
        "--checkpoint",
        str(small_checkpoint),
        "--photos",
        str(heldout),
        "--save-dir",
        str(tmp_path / "check"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "int8 quality on 3 photos" in r.stdout and "PASSED" in r.stdout
    assert '"max_hole_l1_increase": 0.1' in (tmp_path / "check" / "quality.json").read_text()
    r = pconv("check", str(path), "--checkpoint", str(small_checkpoint), "--photos", str(photos))
    assert r.returncode == 1 and "calibrated" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    images, masks, out = tmp_path / "img", tmp_path / "masks", tmp_path / "out"
    write_photos(images, 2, seed=3)
    masks.mkdir()
    for p in images.iterdir():
        hole = np.zeros((96, 128), np.uint8)
        hole[30:60, 40:90] = 255
        Image.fromarray(hole).save(masks / p.name)
    r = pconv("infer", "--model", str(path), "--images", str(images), "--masks", str(masks), "--output", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    for p in images.iterdir():
        got, src = np.asarray(Image.open(out / p.name)), np.asarray(Image.open(p))
        known = np.ones((96, 128), bool)
        known[30:60, 40:90] = False
        assert np.array_equal(got[known], src[known])


def test_check_fails_a_degraded_int8(cli_int8, small_checkpoint, tmp_path):
    """Scale one feature conv's weight scales by 3: the quality check must fail, with its numbers."""
    path, _ = cli_int8
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    weight_dq = next(n for n in dqs if inits[n.input[0]].dims)  # a per-channel weight
    scale = inits[weight_dq.input[1]]
    values = onnx.numpy_helper.to_array(scale) * 3
    scale.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), scale.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    report = check_onnx(tmp_path / "bad.onnx", small_checkpoint, save_dir=tmp_path / "bad.parity")
    assert not report.passed and report.kind == "quality"
    assert '"passed": false' in (tmp_path / "bad.parity" / "quality.json").read_text()


@pytest.fixture(scope="module")
def s8_onnx(small_onnx, photos, tmp_path_factory):
    """The small model quantized with symmetric s8 activations (TensorRT's kind), marked int8."""
    cal = CalibrationSet(find_photos(photos), 64)
    s8 = quantize_int8(onnx.load(str(small_onnx)), cal, Int8Recipe(activations="s8"))
    for p in s8.metadata_props:
        if p.key == "pconv.precision":
            p.value = "int8"
    path = tmp_path_factory.mktemp("s8") / "s8.onnx"
    onnx.save(s8, str(path))
    return path


def test_tensorrt_int8_build_wiring(recorded_build, s8_onnx, tmp_path):
    """build-engine on the Q/DQ file, against the real tensorrt_lean enums and Polygraphy's loaders:
    strongly typed, no INT8 or FP16 builder flag (TensorRT 11 removed them), sidecar precision int8."""
    from pconv_deploy.engines.build import build_engine
    from pconv_deploy.engines.sidecar import Sidecar

    plan = plan_build(s8_onnx, tmp_path / "out" / "m.engine", precision="int8")
    sidecar = build_engine(plan, device=0)
    (call,) = recorded_build.loader.mock_calls
    (network,), config = call.args, call.kwargs["config"]
    assert network.strongly_typed and not config.int8 and not config.fp16 and config.calibrator is None
    assert sidecar.precision == "int8" == Sidecar.read(tmp_path / "out" / "m.engine").metadata["pconv.precision"]


def test_s8_for_tensorrt_and_build_engine_rules(s8_onnx, cli_int8, small_onnx, tmp_path):
    from pconv_deploy.engines.sidecar import check_contract_metadata

    s8 = onnx.load(str(s8_onnx))
    (tmp_path / "s8.onnx").write_bytes(s8_onnx.read_bytes())
    int8 = [t for t in s8.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    zero_points = [onnx.numpy_helper.to_array(t) for t in int8 if not t.dims]
    assert zero_points and not any(z.any() for z in zero_points)
    assert plan_build(tmp_path / "s8.onnx", tmp_path / "a.engine", precision="int8").precision == "int8"
    u8, _ = cli_int8
    with pytest.raises(BuildError, match="not symmetric INT8.*--int8-activations s8"):
        plan_build(u8, tmp_path / "b.engine")
    with pytest.raises(BuildError, match=r"--precision int8 needs an INT8 graph but this one is fp32"):
        plan_build(small_onnx, tmp_path / "c.engine", precision="int8")
    with pytest.raises(BuildError, match="disagree"):
        plan_build(tmp_path / "s8.onnx", tmp_path / "d.engine", precision="int8", fp16=True)
    meta = {p.key: p.value for p in s8.metadata_props}
    assert check_contract_metadata(meta, "s8.onnx") == 32  # the sidecar accepts what check accepts


def test_check_and_build_engine_refuse_the_same_precisions(small_onnx, small_checkpoint, tmp_path):
    model = onnx.load(str(small_onnx))
    for p in model.metadata_props:
        if p.key == "pconv.precision":
            p.value = "bf16"
    onnx.save(model, str(tmp_path / "bf16.onnx"))
    with pytest.raises(ExportError, match="pconv.precision must be one of"):
        check_onnx(tmp_path / "bf16.onnx", small_checkpoint)
    with pytest.raises(PConvError, match="pconv.precision must be one of"):
        plan_build(tmp_path / "bf16.onnx", tmp_path / "x.engine")
    r = pconv("check", str(tmp_path / "bf16.onnx"), "--checkpoint", str(small_checkpoint))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_imported_checkpoint_to_int8(photos, tmp_path):
    """A checkpoint imported from another project (xiefan-guo layout: 7 levels, tanh output) exports to INT8
    with its mask path float32 and runs exactly where it must. This test network was trained on noise and
    its tanh output saturates (FP32 hole L1 ~120), so INT8 flips pixels between 0 and 1: the quality check
    must say so, with its numbers, rather than pass it."""
    import torch
    from helpers.reference import CASES, SCALE, make_project_unet, save_as_the_project, train_like_the_project

    from pconv_deploy.export.onnx_export import ExportOptions, export_checkpoint
    from pconv_deploy.export.parity import ParityError
    from pconv_deploy.model.importers import import_checkpoint

    levels = CASES["xiefan-guo"][0]
    torch.manual_seed(0)
    net, optimizer = train_like_the_project("xiefan-guo", make_project_unet("xiefan-guo", levels, SCALE), levels)
    source = save_as_the_project("xiefan-guo", net, optimizer, tmp_path / "model_500.pth")
    imported = import_checkpoint(source, tmp_path / "imported.safetensors")
    cal = CalibrationSet(find_photos(photos), 2**levels * 2)
    options = ExportOptions(checkpoint=imported.path, output=tmp_path / "int8.onnx", precision="int8", calibration=cal)
    path = export_checkpoint(dataclasses.replace(options, check=False)).path
    model = onnx.load(str(path))
    assert mask_path_violations(model) == [] and mask_path_ops(model)["Conv"] == 3 * 2 * levels
    meta = {p.key: p.value for p in model.metadata_props}
    assert (meta["pconv.precision"], meta["pconv.output_activation"]) == ("int8", "tanh")
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, 256, 384), dtype=np.float32)
    mask = (rng.random((2, 1, 256, 384)) > 0.3).astype(np.float32)
    mask[1] = 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": image, "mask": mask})
    known = np.broadcast_to(mask == 1, out.shape)
    assert np.isfinite(out).all() and np.array_equal(out[known], image[known])
    with pytest.raises(ParityError, match="quality check failed") as failed:
        export_checkpoint(dataclasses.replace(options, output=tmp_path / "checked.onnx"))
    assert len(failed.value.report.quality.bins) == 3 and not (tmp_path / "checked.onnx").exists()
