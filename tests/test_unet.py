import pytest
import torch

from pconv_deploy.model import PConvUNet, composite, feature_macs, parameter_count

# The seed's table, written out independently of the model code:
# (C_in, C_out, kernel, has BatchNorm, has bias) for PConv1..PConv16.
ENC = [
    (3, 64, 7),
    (64, 128, 5),
    (128, 256, 5),
    (256, 512, 3),
    (512, 512, 3),
    (512, 512, 3),
    (512, 512, 3),
    (512, 512, 3),
]
DEC = [(1024, 512), (1024, 512), (1024, 512), (1024, 512), (768, 256), (384, 128), (192, 64), (67, 3)]


def seed_table_parameters() -> int:
    total = 0
    for i, (c_in, c_out, k) in enumerate(ENC):
        total += c_in * c_out * k * k + (c_out if i == 0 else 2 * c_out)  # bias on PConv1, BN gamma/beta after
    for i, (c_in, c_out) in enumerate(DEC):
        last = i == len(DEC) - 1
        total += c_in * c_out * 9 + (c_out if last else 2 * c_out)
    return total


def seed_table_macs(height: int, width: int) -> int:
    """Feature-conv MACs from the table: encoder level i outputs H/2^(i+1), decoder level i runs at H/2^i."""
    total = 0
    for i, (c_in, c_out, k) in enumerate(ENC):
        total += c_in * c_out * k * k * (height >> (i + 1)) * (width >> (i + 1))
    for i, (c_in, c_out) in enumerate(DEC):  # deepest first: 2x2 at 512 after the upsample, up to 512x512
        scale = len(DEC) - 1 - i
        total += c_in * c_out * 9 * (height >> scale) * (width >> scale)
    return total


def test_full_network_matches_seed_table():
    model = PConvUNet(layers=8, width=1.0)
    assert parameter_count(model) == seed_table_parameters()
    assert 32.8e6 < parameter_count(model) < 33.0e6
    convs = model.partial_convs()
    assert len(convs) == 16
    got = [(c.conv.in_channels, c.conv.out_channels, c.conv.kernel_size[0]) for c in convs]
    assert got == ENC + [(c_in, c_out, 3) for c_in, c_out in DEC]
    # exactly the table's count (37.97 GMACs at 512x512, as docs/design.md section 4 gives it)
    assert feature_macs(model, 512, 512) == seed_table_macs(512, 512)
    assert f"{seed_table_macs(512, 512) / 1e9:.2f}" == "37.97"
    assert feature_macs(model, 256, 768) == seed_table_macs(256, 768)


def test_per_layer_output_shapes_and_masks():
    model = PConvUNet(layers=8, width=0.125).eval()
    shapes = []
    for conv in model.partial_convs():
        conv.register_forward_hook(lambda mod, inp, out: shapes.append((tuple(out[0].shape), tuple(out[1].shape))))
    image = torch.rand(2, 3, 256, 512)
    mask = (torch.rand(2, 1, 256, 512) > 0.3).float()
    out = model(image, mask)
    assert out.shape == (2, 3, 256, 512)
    enc_c = [8, 16, 32, 64, 64, 64, 64, 64]
    expected = [(2, c, 256 >> (i + 1), 512 >> (i + 1)) for i, c in enumerate(enc_c)]
    expected += [(2, c, 256 >> i, 512 >> i) for i, c in zip(range(7, -1, -1), [64, 64, 64, 64, 32, 16, 8, 3])]
    assert [s[0] for s in shapes] == expected
    assert all(m[1] == 1 for _, m in shapes)  # one mask channel after every partial conv


@pytest.mark.parametrize("hole", [0.0, 1.0, 0.5])
def test_full_model_outputs_finite(hole):
    torch.manual_seed(0)
    model = PConvUNet().eval()
    image = torch.rand(1, 3, 256, 256)
    mask = (torch.rand(1, 1, 256, 256) >= hole).float()
    with torch.no_grad():
        out = model(image, mask)
    assert torch.isfinite(out).all()
    comp = composite(image, mask, out)
    assert torch.equal(comp[mask.expand_as(comp) == 1], image[mask.expand_as(image) == 1])


def test_all_hole_image_is_filled_from_nothing_but_biases():
    model = PConvUNet(layers=7, width=0.25).eval()
    with torch.no_grad():
        a = model(torch.rand(1, 3, 128, 128), torch.zeros(1, 1, 128, 128))
        b = model(torch.rand(1, 3, 128, 128), torch.zeros(1, 1, 128, 128))
    torch.testing.assert_close(a, b)  # the image under a full hole must not leak in


def test_clear_errors():
    model = PConvUNet(layers=7, width=0.25)
    with pytest.raises(ValueError, match="not a multiple of 128"):
        model(torch.rand(2, 3, 130, 128), torch.ones(2, 1, 130, 128))
    with pytest.raises(ValueError, match="1x1 bottleneck"):
        model.train()(torch.rand(1, 3, 128, 128), torch.ones(1, 1, 128, 128))
    with pytest.raises(ValueError, match=r"mask \[N,1,H,W\]"):
        model(torch.rand(2, 3, 128, 128), torch.ones(2, 3, 128, 128))
    with pytest.raises(ValueError, match="layers"):
        PConvUNet(layers=9)
    with pytest.raises(ValueError, match="input_norm"):
        PConvUNet(input_norm="bgr")
