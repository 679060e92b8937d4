"""Parity through Polygraphy: FP32 and FP16 pass, wrong models fail, `polygraphy run` agrees, the CLI, full width."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from polygraphy.json import load_json

from pconv_deploy.export import ExportError, ExportOptions, conv_macs, export_checkpoint
from pconv_deploy.export.graph import ExportPConv
from pconv_deploy.export.parity import MASK_KINDS, ParityCase, ParityError, make_mask, run_parity
from pconv_deploy.export.verify import check_onnx
from pconv_deploy.model import PConvUNet, feature_macs, load_checkpoint, save_checkpoint

BIN = Path(sys.executable).parent


def pconv(*args):
    return subprocess.run([sys.executable, "-m", "pconv_deploy.cli", *args], capture_output=True, text=True)


def polygraphy(command: str):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(shlex.split(command), capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def perturbed_checkpoint(small_checkpoint, tmp_path_factory):
    """The small model with one BatchNorm statistic changed: a model the ONNX file must not match."""
    model = load_checkpoint(small_checkpoint)
    with torch.no_grad():
        model.decoder[1].bn.running_mean += 0.05
    return save_checkpoint(model, tmp_path_factory.mktemp("perturbed") / "perturbed.safetensors")


@pytest.fixture(scope="module")
def fp32_parity(small_onnx, small_checkpoint, tmp_path_factory):
    return run_parity(small_onnx, load_checkpoint(small_checkpoint), save_dir=tmp_path_factory.mktemp("parity32"))


def test_fp32_parity(fp32_parity):
    report = fp32_parity
    assert report.passed, report.table()
    assert report.max_abs_err <= 1e-4
    shapes = {r.shape for r in report.rows}
    assert {s[0] for s in shapes} == {1, 2, 3, 4}  # several batch sizes
    assert any(s[2] != s[3] for s in shapes)  # non-square
    assert {k for r in report.rows for k in r.masks} == set(MASK_KINDS)
    assert all(r.finite for r in report.rows)
    feeds = load_json(str(report.inputs_json))  # polygraphy JSON: a list of feed dicts with real binary masks
    assert [f["image"].shape[0] for f in feeds] == [r.shape[0] for r in report.rows]
    assert all(set(np.unique(f["mask"])) <= {0.0, 1.0} for f in feeds)
    assert report.reference_json.is_file()


def test_fp64_reference(small_onnx, small_checkpoint):
    cases = [ParityCase("mixed", ("strokes", "sparse"), (2, 3))]
    report = run_parity(small_onnx, load_checkpoint(small_checkpoint), cases, fp64_reference=True)
    assert report.passed and report.reference == "float64" and "vs float64 PyTorch" in report.table()
    assert report.max_abs_err <= 1e-5


def test_fp16_parity(small_onnx_fp16, small_checkpoint, tmp_path):
    report = run_parity(small_onnx_fp16, load_checkpoint(small_checkpoint), save_dir=tmp_path)
    assert report.precision == "fp16"
    assert report.passed, report.table()
    assert report.min_psnr >= 40 and all(r.finite for r in report.rows)
    assert report.max_abs_err > 1e-5  # really float16 arithmetic, compared with the FP32 PyTorch model


def test_parity_fails_for_another_model(small_onnx, perturbed_checkpoint, tmp_path):
    report = run_parity(small_onnx, load_checkpoint(perturbed_checkpoint), save_dir=tmp_path)
    assert not report.passed
    assert report.max_abs_err > 1e-4
    assert "FAILED" in report.table()
    result = polygraphy(report.polygraphy_command(small_onnx))  # the saved JSON reproduces the verdict
    assert result.returncode != 0, result.stdout[-2000:]


def test_polygraphy_run_reproduces_the_verdict(fp32_parity, small_onnx):
    command = fp32_parity.polygraphy_command(small_onnx)
    assert command.startswith("polygraphy run ") and "--onnxrt --load-inputs" in command
    result = polygraphy(command)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Passed: 4/4 iterations" in result.stdout


def test_check_refuses_mismatched_checkpoint(small_onnx_fp16, small_onnx, perturbed_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="exported from another checkpoint"):
        check_onnx(small_onnx_fp16, perturbed_checkpoint)  # its metadata records the small checkpoint's sha256
    with pytest.raises(ExportError, match="no such ONNX file"):
        check_onnx(tmp_path / "missing.onnx", perturbed_checkpoint)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not an ONNX model"):
        check_onnx(tmp_path / "junk.onnx", perturbed_checkpoint)


def test_cli_check(small_onnx, small_onnx_fp16, small_checkpoint, perturbed_checkpoint, tmp_path):
    r = pconv("check", str(small_onnx_fp16), "--checkpoint", str(small_checkpoint), "--save-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "fp16: PASSED" in r.stdout and "reproduce: polygraphy run" in r.stdout
    assert "fp16 quality on 8 synthetic images" in r.stdout  # reduced precision: the quality check too
    assert (tmp_path / "inputs.json").is_file()
    quality = json.loads((tmp_path / "quality.json").read_text())
    assert quality["passed"] and quality["thresholds"] == {"min_psnr_db": 40.0, "max_hole_l1_increase": 0.05}
    assert [b["samples"] for b in quality["quality"]["bins"]] == [16, 16, 16]
    # small_onnx records no checkpoint (exported from memory): parity runs and fails
    r = pconv("check", str(small_onnx), "--checkpoint", str(perturbed_checkpoint), "--save-dir", str(tmp_path))
    assert r.returncode == 1
    assert "FAIL" in r.stdout and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    r = pconv("check", str(small_onnx_fp16), "--checkpoint", str(perturbed_checkpoint))
    assert r.returncode == 1 and "exported from another checkpoint" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    assert pconv("init", str(path), "--layers", "3", "--width", "0.125").returncode == 0
    return path


def test_cli_export_checks_by_default(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny.onnx"
    r = pconv("export", "--checkpoint", str(tiny_checkpoint), "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "fp32: PASSED" in r.stdout and "reproduce: polygraphy run" in r.stdout
    assert out.is_file() and (tmp_path / "tiny.parity" / "reference.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.parity"]
    missing = tmp_path / "missing.safetensors"
    r = pconv("export", "--checkpoint", str(missing), "--output", str(tmp_path / "x.onnx"))
    assert r.returncode == 1 and r.stderr.strip() == f"error: {missing}: no such checkpoint file"
    assert not (tmp_path / "x.onnx").exists()


def test_export_refused_when_parity_fails(tiny_checkpoint, tmp_path, monkeypatch):
    """A finite but wrong graph passes the graph checks; parity stops it before the file appears."""
    right = ExportPConv.ratio_and_valid

    def slightly_wrong(self, count):
        ratio, valid = right(self, count)
        return ratio * 1.001, valid

    monkeypatch.setattr(ExportPConv, "ratio_and_valid", slightly_wrong)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(ParityError, match="parity check failed") as e:
        export_checkpoint(ExportOptions(checkpoint=tiny_checkpoint, output=out))
    assert not e.value.report.passed
    assert not out.exists() and (tmp_path / "wrong.failed.onnx").is_file()


def image_range_full_width_model() -> PConvUNet:
    """A random full-width model calibrated like a trained one on stroke masks: BatchNorm statistics
    from a batch, and predictions with an image's spread (std 0.25 in [0, 1] units).

    Uncalibrated, the random network predicts values up to +-380 in [0, 1] units around stroke
    holes (everything clamps), and float32 PyTorch itself then differs from float64 by up to
    3e-4 (ONNX Runtime by 9e-5): the 1e-4 tolerance would measure float32 noise, not the export.
    """
    torch.manual_seed(0)
    model = PConvUNet(layers=8, width=1.0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = this batch's statistics
    rng = np.random.default_rng(1)
    image = torch.rand(2, 3, 512, 512)
    mask = torch.from_numpy(np.stack([make_mask("strokes", 512, 512, rng=rng) for _ in range(2)]))
    with torch.no_grad():
        model.train()(image, mask)
        spread = float((model.eval()(image, mask) - model.mean).std())
        last = model.decoder[-1].pconv.conv
        last.weight *= 0.25 / spread
        last.bias *= 0.25 / spread
        raw = model(image, mask)
    assert 0.2 < float(raw.std()) < 0.3 and ((raw > 0) & (raw < 1)).float().mean() > 0.8
    return model


@pytest.mark.slow
def test_full_width_export_and_parity(tmp_path):
    """The paper's 8-level full-width model: parity at 512x512 and 256x768, MACs within 1% of the features."""
    model = image_range_full_width_model()
    checkpoint = save_checkpoint(model.eval(), tmp_path / "full.safetensors")
    result = export_checkpoint(ExportOptions(checkpoint=checkpoint, output=tmp_path / "full.onnx"))
    report = result.parity
    print(f"\nfull width: export {result.seconds:.1f} s\n{report.table()}")
    assert report.passed and report.max_abs_err <= 1e-4
    shapes = {r.shape for r in report.rows}
    assert (1, 3, 512, 512) in shapes and (2, 3, 256, 768) in shapes
    exported = onnx.load(str(result.path))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in exported.graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx") == ["full.onnx"]  # no .onnx.data
    macs = conv_macs(exported, 512, 512)
    features = feature_macs(model, 512, 512)
    assert macs.feature == features
    assert abs(macs.total - features) / features < 0.01
    print(f"conv MACs @512: {macs.total / 1e9:.3f} G (features {features / 1e9:.3f} G, +{macs.mask_overhead:.3%})")


def test_files_without_newer_metadata_keys_still_check(small_onnx, small_checkpoint, tmp_path):
    """pconv.output_activation came after format 1: files without it mean 'none' and stay valid; a file that
    says another activation than its checkpoint's config is refused before parity runs."""
    model = onnx.load(str(small_onnx))
    props = {p.key: p.value for p in model.metadata_props}
    assert props.pop("pconv.output_activation") == "none"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    older = tmp_path / "older.onnx"
    onnx.save_model(model, str(older))
    assert check_onnx(older, small_checkpoint, save_dir=tmp_path / "older.parity").passed
    onnx.helper.set_model_props(model, {**props, "pconv.output_activation": "tanh"})
    onnx.save_model(model, str(older))
    with pytest.raises(ExportError, match="output_activation in its metadata differ"):
        check_onnx(older, small_checkpoint)
