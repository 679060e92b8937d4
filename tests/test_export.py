"""The exported graph: contract, metadata, one file, op set, mask path, MACs, FP16 types, the epsilon trap."""

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SMALL
from helpers.provenance import provenance_leaks
from helpers.reference import sha256_of as file_sha256

from pconv_deploy import __version__
from pconv_deploy.contract import METADATA_KEYS
from pconv_deploy.errors import PConvError, UsageError
from pconv_deploy.export import ExportError, check_graph, conv_macs, export_onnx
from pconv_deploy.export.checks import TENSORRT_OPS, adversarial_feeds, metadata
from pconv_deploy.export.graph import ExportNet, ExportPConv
from pconv_deploy.export.onnx_export import mask_overhead_limit
from pconv_deploy.export.options import ExportOptions
from pconv_deploy.export.quantize import Int8Recipe
from pconv_deploy.model import PConvUNet, composite, feature_macs, load_checkpoint


def dims(value):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def scalar_constants(model):
    """Every single-element constant of the graph (initialisers and Constant nodes) as floats."""
    values = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant":
            values += [onnx.numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"]
    return [float(v.reshape(-1)[0]) for v in values if v.size == 1 and v.dtype.kind == "f"]


@pytest.mark.parametrize("fixture", ["small_onnx", "small_onnx_fp16"])
def test_contract_metadata_and_single_file(fixture, small_checkpoint, request):
    path = request.getfixturevalue(fixture)
    model = onnx.load(str(path))
    fp16 = fixture.endswith("fp16")
    assert [(i.name, i.type.tensor_type.elem_type, dims(i)) for i in model.graph.input] == [
        ("image", onnx.TensorProto.FLOAT, ["batch", 3, "32*h", "32*w"]),
        ("mask", onnx.TensorProto.FLOAT, ["batch", 1, "32*h", "32*w"]),
    ]
    assert [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output] == [
        ("inpainted", onnx.TensorProto.FLOAT, ["batch", 3, "32*h", "32*w"]),
    ]
    assert metadata(model) == {
        "pconv.format": "1",
        "pconv.layers": "5",
        "pconv.width": "0.125",
        "pconv.multiple": "32",
        "pconv.input_norm": "imagenet",
        "pconv.mask_convention": "1=known,0=hole",
        "pconv.precision": "fp16" if fp16 else "fp32",
        # small_onnx comes from an in-memory model, small_onnx_fp16 from the checkpoint file
        "pconv.checkpoint_sha256": file_sha256(small_checkpoint) if fp16 else "none",
        "pconv.producer": f"pconv-deploy {__version__}",
        "pconv.output_activation": "none",
    }
    assert model.opset_import[0].version == 20
    # one self-contained file: no external data, nothing else written beside it but the parity JSON
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    leftovers = [p.name for p in path.parent.iterdir() if p.suffix in (".data", ".tmp") or p.name.startswith(".")]
    assert leftovers == [] and path.is_file()


@pytest.mark.parametrize("fixture", ["small_onnx", "small_onnx_fp16"])
def test_no_developer_paths_in_the_file(fixture, request):
    """The exporter records a stack trace (source paths of this checkout and site-packages) per node: stripped,
    while the contract's metadata stays."""
    model = onnx.load(str(request.getfixturevalue(fixture)))
    assert provenance_leaks(model) == []
    assert set(METADATA_KEYS) <= set(metadata(model))
    assert all(not node.metadata_props and not node.doc_string for node in model.graph.node)


@pytest.mark.parametrize("fixture", ["small_onnx", "small_onnx_fp16"])
def test_graph_is_simplified_and_tensorrt_friendly(fixture, request):
    model = onnx.load(str(request.getfixturevalue(fixture)))
    ops = {n.op_type for n in model.graph.node}
    assert ops <= TENSORRT_OPS
    assert "BatchNormalization" not in ops  # folded into the partial conv weights
    assert not ops & {"Split", "Expand"}  # grouped masks are not expanded per channel
    assert {"Conv", "Clip", "Resize"} <= ops
    layers = 2 * SMALL["layers"]
    counts = {op: sum(n.op_type == op for n in model.graph.node) for op in ("Conv", "Clip", "Mul")}
    fp32 = fixture == "small_onnx"
    # per layer: the feature conv and the mask count; in FP32 also two 1x1 one-input-channel convs that
    # put the ratio and b * valid on all C channels (graph.py rewrite 4: ORT keeps them in NCHWc)
    assert counts["Conv"] == (4 if fp32 else 2) * layers
    assert counts["Clip"] == 2 * layers + 1  # clamp(count, min=1) and clamp(count, 0, 1); the output clamp
    # per layer: ratio*window, features*ratio (FP16: and output*valid; FP32: b * valid and features
    # that are zero in holes make it redundant); plus masking the input, de-normalising the output and
    # compositing (2): no X * M per consumer, no mask multiply before BatchNorm
    assert counts["Mul"] == (2 if fp32 else 3) * layers + 4
    # no epsilon anywhere: no tiny scalar constant that could stand for `count + eps`
    assert not [v for v in scalar_constants(model) if 0 < abs(v) < 1e-3]


def test_fp16_graph_types(small_onnx_fp16):
    """Features float16, mask path float32 (counts exceed float16's exact integers), I/O float32."""
    model = onnx.load(str(small_onnx_fp16))
    weights = {t.name: t for t in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    mask_convs = [n for n in convs if weights[n.input[1]].dims[0] == 1]
    assert len(mask_convs) == len(convs) // 2  # per layer: the count and the features
    for node in convs:
        expected = onnx.TensorProto.FLOAT if node in mask_convs else onnx.TensorProto.FLOAT16
        assert weights[node.input[1]].data_type == expected, node.name
        assert types[node.output[0]] == expected, node.name
    for node in model.graph.node:
        if node.op_type == "Clip" and node.output[0] != "inpainted":
            assert types[node.output[0]] == onnx.TensorProto.FLOAT  # counts, ratio, valid
    assert sum(n.op_type == "Cast" for n in model.graph.node) >= 2 * len(mask_convs)


@pytest.mark.parametrize("fixture", ["small_onnx", "small_onnx_fp16"])
def test_no_inf_nan_on_adversarial_masks(fixture, small_checkpoint, request):
    session = ort.InferenceSession(str(request.getfixturevalue(fixture)), providers=["CPUExecutionProvider"])
    feeds = adversarial_feeds(32)  # all-hole, no-hole, sparse (windows with one known pixel)
    (out,) = session.run(None, feeds)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1], feeds["image"][1])  # no-hole: the input, exactly
    mask = feeds["mask"][2:3]
    np.testing.assert_array_equal(out[2] * mask, feeds["image"][2] * mask)  # known pixels unchanged
    model = load_checkpoint(small_checkpoint)
    with torch.no_grad():
        # all-hole: every window is empty, the network outputs 0 in its own space: the de-normalised mean
        np.testing.assert_allclose(out[0], model.mean[0].expand(3, 32, 64).numpy(), atol=1e-6)


def test_graph_macs_are_the_feature_convolutions(small_onnx, small_checkpoint):
    """Feature conv MACs exactly as the PyTorch model's; the mask path is one grouped one-channel count."""
    model = load_checkpoint(small_checkpoint)
    macs = conv_macs(onnx.load(str(small_onnx)), 64, 96)
    assert macs.feature == feature_macs(model, 64, 96)
    expected_mask, scale = 0, 1
    for block in model.encoder:
        scale *= 2
        k = block.pconv.conv.kernel_size[0]
        expected_mask += k * k * (64 // scale) * (96 // scale)
    for _ in model.decoder:
        scale //= 2
        expected_mask += 2 * 3 * 3 * (64 // scale) * (96 // scale)  # [1, 2, 3, 3] count kernel
    assert macs.mask == expected_mask
    assert macs.mask_overhead < mask_overhead_limit(SMALL["width"])
    assert macs.mask_overhead < 0.02  # 1.4% at width 0.125; a naive C_out x C_in count would be 100%


def test_checks_can_fail(small_onnx):
    """The graph checks reject what they are there to reject."""
    model = onnx.load(str(small_onnx))
    check_graph(model, max_mask_overhead=0.02)
    with pytest.raises(ExportError, match="mask path adds 1.4"):
        check_graph(model, max_mask_overhead=0.001)
    with pytest.raises(ExportError, match="outside the TensorRT allowlist: Resize"):
        check_graph(model, allowed_ops=TENSORRT_OPS - {"Resize"})
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    renamed.graph.input[1].name = "valid"  # breaks the contract (and the graph)
    with pytest.raises(ExportError):
        check_graph(renamed)
    del renamed.metadata_props[:]
    with pytest.raises(ExportError):
        check_graph(renamed)


def test_export_graph_equals_model_in_torch(small_checkpoint):
    """BN folding and moved mask multiplies, before any ONNX: same outputs as the model + compositing."""
    model = load_checkpoint(small_checkpoint)
    net = ExportNet(model)
    torch.manual_seed(1)
    image = torch.rand(4, 3, 64, 96)
    mask = (torch.rand(4, 1, 64, 96) > 0.5).float()
    mask[1], mask[2] = 0.0, 1.0
    with torch.no_grad():
        expected = torch.clamp(composite(image, mask, model(image, mask)), 0, 1)
        torch.testing.assert_close(net(image, mask), expected, atol=1e-5, rtol=0)


def epsilon_ratio(self, count):
    """NVIDIA's formulation: ratio = sum(1) / (count + eps) * valid. The exporter folds the eps away."""
    valid = torch.clamp(count, 0.0, 1.0)
    return self.window_size / (count + 1e-8) * valid, valid


def test_epsilon_trap_is_caught(tmp_path, monkeypatch):
    """docs/design.md section 3: an epsilon-based ratio exports as 1/0 in all-hole windows -> NaN; export fails."""
    torch.manual_seed(0)
    model = PConvUNet(layers=3, width=0.125).eval()
    monkeypatch.setattr(ExportPConv, "ratio_and_valid", epsilon_ratio)
    with torch.no_grad():  # harmless in eager PyTorch: the NaN only appears in the exported graph
        out = ExportNet(model)(torch.rand(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))
    assert torch.isfinite(out).all()
    target = tmp_path / "trap.onnx"
    with pytest.raises(ExportError, match=r"non-finite outputs .* all-hole"):
        export_onnx(model, target)
    assert list(tmp_path.iterdir()) == []  # atomic: nothing written, no temp file left


def test_write_is_atomic(small_onnx, tmp_path, monkeypatch):
    from pconv_deploy.export import write_atomic

    target = tmp_path / "sub" / "m.onnx"
    target.parent.mkdir()
    target.write_bytes(b"an older model")
    model = onnx.load(str(small_onnx))
    write_atomic(model, target)
    assert onnx.load(str(target)) == model
    assert [p.name for p in target.parent.iterdir()] == ["m.onnx"]

    def disk_full(proto, path, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(onnx, "save_model", disk_full)
    with pytest.raises(OSError):
        write_atomic(model, target)
    assert target.read_bytes() == Path(small_onnx).read_bytes()  # the old file, untouched
    assert [p.name for p in target.parent.iterdir()] == ["m.onnx"]  # no temp file left


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"opset": 99}, "--opset 99: the installed onnx knows opsets up to"),
        ({"opset": 17}, "--opset 17: the exporter writes opset 18 or later"),
        ({"precision": "fp8"}, "precision 'fp8': expected one of fp32, fp16, int8"),
        ({"precision": "int8"}, "--calibration DIR goes with --precision int8 (and int8 needs it)"),
        ({"calibration": "photos"}, "--calibration DIR goes with --precision int8 (and int8 needs it)"),
        ({"calibration_images": 4}, "--calibration-images N goes with --calibration DIR"),
        ({"recipe": Int8Recipe(activations="u4")}, "--int8-activations u4: expected one of u8, s8"),
        ({"recipe": Int8Recipe(method="mean")}, "calibration method 'mean'"),
    ],
)
def test_export_options_refuse_bad_values_before_reading_anything(tmp_path, change, message):
    """What `pconv export` refuses with exit 2 is refused by the options themselves, with the same line."""
    good = {"checkpoint": tmp_path / "none.safetensors", "output": tmp_path / "m.onnx"}
    assert ExportOptions(**good).precision == "fp32"
    with pytest.raises(UsageError, match=re.escape(message)):
        ExportOptions(**{**good, **change})
    assert list(tmp_path.iterdir()) == []


def test_export_options_take_a_folder_of_calibration_photos(tmp_path):
    options = ExportOptions(
        checkpoint=tmp_path / "m.safetensors", output=tmp_path / "m.onnx", precision="int8", calibration=str(tmp_path)
    )
    assert options.calibration == tmp_path  # a folder, read when the export runs
    with pytest.raises(PConvError, match="no photos to calibrate with"):
        options.calibration_set()
