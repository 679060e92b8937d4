"""`pconv check`, `build-engine` and `triton-repo` on hostile ONNX files: one line naming the file and the
problem, exit 1 or 2, nothing written (issue 21 items 10, 13, 14).

The files are the session's small export with one thing changed: a graph that fails shape inference,
weights in external data (beside the model and outside its folder), out-of-range ``pconv.layers`` and
``pconv.multiple``, and links to devices or FIFOs where a model belongs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.cli import run_cli
from onnx import numpy_helper


def one_line(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edited(small_onnx: Path, path: Path, edit) -> Path:
    model = onnx.load(str(small_onnx))
    edit(model)
    onnx.save_model(model, str(path))
    return path


def set_meta(model: onnx.ModelProto, **values: str) -> None:
    for prop in model.metadata_props:
        key = prop.key.removeprefix("pconv.")
        if key in values:
            prop.value = values[key]


def break_shapes(model: onnx.ModelProto) -> None:
    """The first Conv's weight gets the wrong input channels: the graph no longer type-checks."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    weight = numpy_helper.to_array(init)
    bad = np.zeros((weight.shape[0], weight.shape[1] + 5, *weight.shape[2:]), weight.dtype)
    init.CopyFrom(numpy_helper.from_array(bad, init.name))


def test_check_a_graph_that_fails_shape_inference(small_onnx, small_checkpoint, folder, monkeypatch, capsys):
    model = edited(small_onnx, folder / "broken.onnx", break_shapes)
    code, err = run_cli(["check", str(model), "--checkpoint", str(small_checkpoint)], monkeypatch, capsys)
    one_line(code, err, "broken.onnx", "shape inference")
    assert sorted(p.name for p in folder.iterdir()) == ["broken.onnx"]


def external(small_onnx: Path, folder: Path, location: str) -> Path:
    """folder/model/ext.onnx: the small model with its largest initialiser in external data at ``location``."""
    model = onnx.load(str(small_onnx))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data = init.raw_data
    path = folder / "model" / "ext.onnx"
    path.parent.mkdir()
    (path.parent / location).write_bytes(data)
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        init.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../outside.bin", "weights.bin"])
def test_external_data_is_named_as_such(small_onnx, small_checkpoint, folder, monkeypatch, capsys, location):
    model = external(small_onnx, folder, location)
    before = sorted(str(p) for p in folder.rglob("*"))
    for args in (
        ["check", str(model), "--checkpoint", str(small_checkpoint)],
        ["build-engine", str(model), "-o", "m.engine"],
    ):
        code, err = run_cli(args, monkeypatch, capsys)
        line = one_line(code, err, "ext.onnx", "external data", repr(location))
        assert "ValidationError" not in line
        assert ("outside the model's folder" in line) == location.startswith(".."), line
    assert sorted(str(p) for p in folder.rglob("*")) == before


@pytest.mark.parametrize(
    ("layers", "multiple", "needle"),
    [
        ("30000000000", "32", "pconv.layers must be a positive integer"),
        ("100000000", "32", "pconv.layers must be a positive integer"),
        ("3.5", "32", "pconv.layers must be a positive integer"),
        ("5", "0", "pconv.multiple is 0 but pconv.layers is 5"),
        ("5", "-32", "pconv.multiple must be a positive integer"),
        ("0", "1", "pconv.layers must be from 2 to 8"),
    ],
)
def test_out_of_range_layers_everywhere(
    small_onnx, small_checkpoint, folder, monkeypatch, capsys, layers, multiple, needle
):
    model = edited(small_onnx, folder / "odd.onnx", lambda m: set_meta(m, layers=layers, multiple=multiple))
    for args in (
        ["check", str(model), "--checkpoint", str(small_checkpoint)],
        ["build-engine", str(model), "-o", "m.engine"],
        ["triton-repo", str(model), "--repo", "repo", "--cpu"],
    ):
        start = time.monotonic()
        code, err = run_cli(args, monkeypatch, capsys)
        one_line(code, err, "odd.onnx", needle)
        assert time.monotonic() - start < 60
    assert sorted(p.name for p in folder.iterdir()) == ["odd.onnx"]


def test_links_to_devices_and_fifos_are_not_regular_files(small_checkpoint, folder, monkeypatch, capsys):
    (folder / "zero.onnx").symlink_to("/dev/zero")
    (folder / "random.safetensors").symlink_to("/dev/urandom")
    os.mkfifo(folder / "pipe.onnx")
    os.mkfifo(folder / "pipe.safetensors")
    cases = [
        ["check", "zero.onnx", "--checkpoint", str(small_checkpoint)],
        ["check", "pipe.onnx", "--checkpoint", str(small_checkpoint)],
        ["build-engine", "zero.onnx", "-o", "m.engine"],
        ["build-engine", "pipe.onnx", "-o", "m.engine"],
        ["triton-repo", "pipe.onnx", "--repo", "repo", "--cpu"],
        ["info", "random.safetensors"],
        ["info", "pipe.safetensors"],
        ["export", "--checkpoint", "pipe.safetensors", "-o", "o.onnx"],
        ["import-checkpoint", "random.safetensors", "-o", "o.safetensors"],
        ["import-checkpoint", "pipe.safetensors", "-o", "o.safetensors"],
    ]
    for args in cases:
        code, err = run_cli(args, monkeypatch, capsys)
        line = one_line(code, err, "not a regular file")
        assert "no such file" not in line, line
    assert sorted(p.name for p in folder.iterdir()) == [
        "pipe.onnx",
        "pipe.safetensors",
        "random.safetensors",
        "zero.onnx",
    ]


def test_export_of_nan_weights_blames_the_weights_not_an_epsilon(folder, monkeypatch, capsys):
    import torch
    from conftest import SMALL

    from pconv_deploy.model import PConvUNet, save_checkpoint

    model = PConvUNet(**SMALL).eval()
    with torch.no_grad():
        model.decoder[0].pconv.conv.weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(model, folder / "nan.safetensors")
    code, err = run_cli(
        ["export", "--checkpoint", "nan.safetensors", "-o", "m.onnx", "--no-check"], monkeypatch, capsys
    )
    line = one_line(code, err, "non-finite values (NaN or Inf)", "the checkpoint is broken")
    assert "epsilon" not in line
    assert sorted(p.name for p in folder.iterdir()) == ["nan.safetensors"]
