"""The bundled demo model: it loads, exports, passes `pconv check`, and was trained on the recorded split only."""

import json

from helpers.cli import pconv

from pconv_deploy.contract import file_sha256
from pconv_deploy.model.checkpoint import default_checkpoint, load_checkpoint, read_metadata
from pconv_deploy.train import photos


def test_bundled_weights_load_export_and_pass_check(tmp_path):
    path = default_checkpoint()
    assert path.stat().st_size < 20 * 2**20  # the package keeps weights under 20 MB
    model = load_checkpoint(path)
    assert (model.config.layers, model.config.width) == (7, 0.25)
    onnx_path = tmp_path / "demo.onnx"
    r = pconv("export", "--checkpoint", str(path), "--output", str(onnx_path))
    assert r.returncode == 0 and onnx_path.is_file(), r.stderr
    r = pconv("check", str(onnx_path), "--checkpoint", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fp32: PASSED" in r.stdout


def test_bundled_model_was_trained_on_the_recorded_training_split_only():
    header = read_metadata(default_checkpoint())
    training = json.loads(header["training"])
    # The header pins the split files it was trained and scored with; the split test proves they are disjoint.
    assert training["train_split_sha256"] == file_sha256(photos.SPLITS["demo-train"])
    assert training["heldout_split_sha256"] == file_sha256(photos.SPLITS["demo-heldout"])
    first, *fine_tuning = training["phases"]
    assert first["name"] == "v1" and fine_tuning and all(p["data"] == "demo-train" for p in fine_tuning)
    held = {i for i, _ in photos.read_split("demo-heldout")}
    v1_photos = {p.id for p in photos.CATALOGUE if p.train_only}  # the v1 model it was fine-tuned from saw these
    assert not held & v1_photos
