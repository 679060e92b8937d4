import os
import subprocess
import sys

import pytest
import torch

from pconv_deploy.model import PConvUNet, load_checkpoint, save_checkpoint
from pconv_deploy.model.checkpoint import CheckpointError

LOAD_AND_RUN = """
import sys, torch
from pconv_deploy.model import load_checkpoint
model = load_checkpoint(sys.argv[1])
inputs = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(inputs["image"], inputs["mask"]), sys.argv[3])
"""


def _trained_looking_model():
    torch.manual_seed(3)
    model = PConvUNet(layers=7, width=0.125, input_norm="minus_one_one")
    model.train()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        model(torch.rand(4, 3, 128, 128), (torch.rand(4, 1, 128, 128) > 0.4).float())
    return model.eval()


def test_round_trip_in_fresh_process(tmp_path):
    model = _trained_looking_model()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    image, mask = torch.rand(2, 3, 128, 256), (torch.rand(2, 1, 128, 256) > 0.5).float()
    torch.save({"image": image, "mask": mask}, tmp_path / "in.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, str(path), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], check=True
    )
    with torch.no_grad():
        expected = model(image, mask)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_config_comes_from_the_header(tmp_path):
    model = _trained_looking_model()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors"))
    assert loaded.config == model.config
    assert not loaded.training


def test_bad_checkpoints_fail_with_the_file_name(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.safetensors: not a safetensors checkpoint"):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a pconv-deploy checkpoint"):
        load_checkpoint(foreign)
    # header says 8 layers, tensors are from a 7-layer model
    model = _trained_looking_model()
    path = tmp_path / "mismatch.safetensors"
    save_checkpoint(model, path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["config"] = meta["config"].replace('"layers": 7', '"layers": 8')
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_checkpoint(path)


def test_checkpoints_from_before_output_activation_load_as_none(tmp_path):
    """Configs written before output_activation existed lack the key: they mean no activation."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = _trained_looking_model()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert '"output_activation": "none"' in meta["config"]
    meta["config"] = meta["config"].replace(', "output_activation": "none"', "")
    save_file(tensors, str(path), metadata=meta)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.config.output_activation == "none"
    image, mask = torch.rand(1, 3, 128, 128), (torch.rand(1, 1, 128, 128) > 0.5).float()
    with torch.no_grad():
        assert torch.equal(loaded(image, mask), model(image, mask))


def test_tanh_output_activation_is_applied_before_denormalisation():
    """output_activation acts in the network's own space: [-1, 1] de-normalised is [0, 1]."""
    torch.manual_seed(0)
    plain = PConvUNet(layers=3, width=0.125, input_norm="minus_one_one").eval()
    tanh = PConvUNet(layers=3, width=0.125, input_norm="minus_one_one", output_activation="tanh").eval()
    tanh.load_state_dict(plain.state_dict())
    image, mask = torch.rand(2, 3, 16, 24), (torch.rand(2, 1, 16, 24) > 0.5).float()
    with torch.no_grad():
        raw = (plain(image, mask) - 0.5) / 0.5  # back to the network's own output
        torch.testing.assert_close(tanh(image, mask), torch.tanh(raw) * 0.5 + 0.5)
    with pytest.raises(ValueError, match="output_activation"):
        PConvUNet(output_activation="sigmoid")


# issue 21 item 13: hand-edited headers and odd tensors are one line naming the file -----------------


def _with_header(tmp_path, config: str, tensors: dict | None = None):
    from safetensors.torch import save_file

    from pconv_deploy.model.checkpoint import FORMAT

    model = PConvUNet(layers=3, width=0.125)
    path = tmp_path / "edited.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({**state, **(tensors or {})}, str(path), metadata={"format": FORMAT, "config": config})
    return path


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ('{"layers": 3.5, "width": 0.125}', "layers must be an integer, got 3.5"),
        ('{"layers": true, "width": 0.125}', "layers must be an integer, got True"),
        ('{"layers": 30000000000, "width": 0.125}', "layers must be between 2 and 8"),
        ('{"layers": 3, "width": "wide"}', "width must be float"),
        ('{"layers": 3, "width": NaN}', "width must be finite"),
        ('{"layers": 3, "width": 0.125, "evil": 1}', "unknown field 'evil'"),
        ("[3, 0.125]", "expected an object"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
        ('{"layers": ' + "[" * 100_000 + "]" * 100_000 + "}", "not JSON"),
    ],
)
def test_hand_edited_config_headers(tmp_path, config, needle):
    path = _with_header(tmp_path, config)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert message.startswith(f"{path}: invalid model config in header") and needle in message, message
    assert "\n" not in message


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool, torch.int64])
def test_weights_of_the_wrong_kind_are_named(tmp_path, dtype):
    key = "encoder.1.pconv.conv.weight"
    weight = PConvUNet(layers=3, width=0.125).state_dict()[key]
    path = _with_header(tmp_path, '{"layers": 3, "width": 0.125}', {key: weight.to(dtype)})
    with pytest.raises(CheckpointError, match=rf"{key} is {str(dtype).removeprefix('torch.')}, expected float32"):
        load_checkpoint(path)


def test_info_on_a_fifo_or_device_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    for name in ("pipe.safetensors", "zero.safetensors"):
        with pytest.raises(CheckpointError, match=rf"{name}: not a regular file"):
            load_checkpoint(tmp_path / name)


def test_write_failure_is_one_line_and_leaves_nothing(tmp_path):
    model = PConvUNet(layers=3, width=0.125)
    with pytest.raises(CheckpointError, match=r"^/proc/x.safetensors: cannot write \(") as e:
        save_checkpoint(model, "/proc/x.safetensors")
    assert "pconv-tmp" not in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    if os.geteuid() != 0:  # root writes anywhere: the read-only folder only tells for other users
        with pytest.raises(CheckpointError, match="cannot write"):
            save_checkpoint(model, tmp_path / "ro" / "m.safetensors")
    assert list((tmp_path / "ro").iterdir()) == []
