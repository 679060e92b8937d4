"""pconv import-checkpoint: the three projects' checkpoints, as they save them, against their own forward passes.

Each source network is built by tests/helpers/reference.py from that project's published code (their key names,
their partial convolution, their normalisation and output handling), at reduced channel widths, with
BatchNorm statistics from training-mode passes and, where the project saves one, an Adam state. The
reference output is computed in float64 by that code, never by our model.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers.reference import (
    CASES,
    SCALE,
    make_project_unet,
    mmengine_message_hub,
    project_inpaint,
    save_as_the_project,
    sha256_of,
    train_like_the_project,
)
from typer.testing import CliRunner

from pconv_deploy.cli import app
from pconv_deploy.masks import as_known, brush_strokes
from pconv_deploy.model import load_checkpoint
from pconv_deploy.model.checkpoint import read_metadata
from pconv_deploy.model.importers import ImportCheckpointError, import_checkpoint

# (project, levels, H, W): sides that are not 256, at the projects' own level counts


def stroke_masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Binary masks (1 = known): round-brush strokes (the parity check's) plus one large rectangle (all-hole
    windows at every level), and as the last item an all-hole mask. Not straight_strokes: with those, float32's
    error against the float64 reference was two to three times larger (1.4e-4 for xiefan-guo, over the bound)."""
    rng = np.random.default_rng(seed)
    holes = np.ones((n, h, w), bool)
    for i in range(n - 1):
        holes[i] = brush_strokes(h, w, rng)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        holes[i, top : top + h // 3, left : left + w // 3] = True
    return torch.from_numpy(as_known(holes)[:, None])


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory):
    """(project, source path, imported checkpoint, reference net in float64, image, mask)."""
    project = request.param
    levels, h, w = CASES[project]
    torch.manual_seed({"xiefan-guo": 0, "naoto0804": 1, "mmagic": 2}[project])
    net, optimizer = train_like_the_project(project, make_project_unet(project, levels, SCALE), levels)
    folder = tmp_path_factory.mktemp(project)
    source = save_as_the_project(project, net, optimizer, folder / "model_500.pth")
    result = import_checkpoint(source, folder / "imported.safetensors")
    assert result.format == project and result.detected
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(3, 3, h, w, generator=gen)
    return project, source, result, net.double(), image, stroke_masks(3, h, w, seed=4)


def test_imported_model_matches_the_project_forward_pass(imported):
    project, source, result, reference, image, mask = imported
    assert (mask == 0).all(dim=(1, 2, 3))[-1] and 0.2 < float(mask[0].mean()) < 0.9
    with torch.no_grad():
        expected = project_inpaint(project, reference, image.double(), mask.double())
        ours = load_checkpoint(result.path)(image, mask)
    assert ours.shape == expected.shape
    assert float(expected.std()) > 0.05  # a non-trivial output, not a constant
    err = (ours.double() - expected).abs().max().item()
    assert err <= 1e-4, f"{project}: max |err| {err:.2e}"


def test_exported_onnx_matches_the_project_forward_pass(imported, tmp_path):
    from pconv_deploy.export.onnx_export import export_onnx

    project, source, result, reference, image, mask = imported
    onnx_path = export_onnx(load_checkpoint(result.path), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["inpainted"], {"image": image.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        raw = project_inpaint(project, reference, image.double(), mask.double())
    expected = torch.clamp(mask * image + (1 - mask) * raw, 0, 1).numpy()  # the contract: composited, clamped
    err = float(np.abs(out.astype(np.float64) - expected).max())
    assert err <= 1e-4, f"{project}: ONNX max |err| {err:.2e}"


def test_header_records_config_and_provenance(imported):
    project, source, result, _, _, _ = imported
    meta = read_metadata(result.path)
    assert (meta["source_format"], meta["source_file"], meta["source_sha256"]) == (
        project,
        "model_500.pth",
        sha256_of(source),
    )
    config = json.loads(meta["config"])
    expected = {
        "xiefan-guo": ("unit", "tanh", 7),
        "naoto0804": ("imagenet", "none", 8),
        "mmagic": ("minus_one_one", "none", 7),
    }
    assert (config["input_norm"], config["output_activation"], config["layers"]) == expected[project]
    assert config["width"] == SCALE
    assert meta["source_iterations"] == {"xiefan-guo": "501", "naoto0804": "1000000", "mmagic": "500000"}[project]
    assert result.ignored_keys == (2 if project == "mmagic" else 0)
    if project == "mmagic":  # its message_hub is refused by a plain weights-only load; we map it to placeholders
        with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer"):
            torch.load(source, weights_only=True)


def test_bare_and_wrapped_state_dicts(imported, tmp_path):
    """The same weights as a bare state dict, under 'state_dict', with DataParallel's 'module.' prefix, and in
    torch's legacy (pre-zip) serialization."""
    project, source, result, _, image, mask = imported
    state = torch.load(source, weights_only=False)  # our own file (mmagic's holds the stand-in HistoryBuffer)
    state = state.get("generator") or state.get("model") or state["state_dict"]
    side = result.config.multiple  # one small window of the test images is enough here
    image, mask = image[:1, :, :side, :side], mask[:1, :, :side, :side]
    with torch.no_grad():
        expected = load_checkpoint(result.path)(image, mask)
    variants = {
        "bare.pt": state,
        "wrapped.pt": {"state_dict": state},
        "dataparallel.pt": {f"module.{k}": v for k, v in state.items()},
        "legacy.pt": {"model": state},  # torch < 1.6's non-zip format (checkpoints released in 2018-2020)
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=name != "legacy.pt")
        got = import_checkpoint(tmp_path / name, tmp_path / f"{name}.safetensors", format=project)
        with torch.no_grad():
            torch.testing.assert_close(load_checkpoint(got.path)(image, mask), expected, rtol=0, atol=0)


def test_own_state_dict_format(tmp_path):
    (tmp_path / "sub").mkdir()
    from pconv_deploy.model import PConvUNet

    torch.manual_seed(0)
    model = PConvUNet(layers=4, width=0.125).eval()
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    result = import_checkpoint(tmp_path / "ours.pth", tmp_path / "ours.safetensors")
    assert result.format == "state-dict" and result.config == model.config
    back = load_checkpoint(result.path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    # the same tensors as a plain safetensors file import too; a pconv-deploy checkpoint is refused (its config
    # would be replaced by defaults)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ours-st.safetensors"))
    again = import_checkpoint(tmp_path / "ours-st.safetensors", tmp_path / "again.safetensors")
    assert again.format == "state-dict"
    _fails(result.path, tmp_path / "sub", "already a pconv-deploy checkpoint")


@pytest.mark.parametrize("imported", ["xiefan-guo"], indirect=True)  # the tanh model differs most from ours
def test_cli_import_info_export_fp16_check_infer(imported, tmp_path):
    """The command line from a source checkpoint to a checked FP16 ONNX file and inpainted pictures."""
    project, source, _, _, _, _ = imported
    runner = CliRunner()
    ckpt, fp16 = tmp_path / "punet.safetensors", tmp_path / "punet-fp16.onnx"
    run = runner.invoke(app, ["import-checkpoint", str(source), "--output", str(ckpt), "--layers", "7"])
    assert run.exit_code == 0, run.output
    assert "format:       xiefan-guo (recognised from its keys)" in run.output
    run = runner.invoke(app, ["info", str(ckpt)])
    assert run.exit_code == 0 and "output_act.:  tanh" in run.output and "imported:     xiefan-guo" in run.output
    run = runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--output", str(fp16), "--fp16", "--no-check"])
    assert run.exit_code == 0, run.output
    run = runner.invoke(app, ["check", str(fp16), "--checkpoint", str(ckpt)])  # the parity, once
    assert run.exit_code == 0, run.output
    assert "PASSED" in run.output

    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    hole = np.zeros((200, 300), np.uint8)
    hole[50:120, 80:200] = 255
    Image.fromarray(hole).save(tmp_path / "msk" / "a.png")
    args = ["infer", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk")]
    run = runner.invoke(app, [*args, "--output", str(tmp_path / "out"), "--model", str(ckpt), "--backend", "torch"])
    assert run.exit_code == 0, run.output
    out = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert out.shape == (200, 300, 3)


# --- bad files: one clear line, nothing written, no code run -------------------------------------------


class _WouldRunCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def good_source(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = make_project_unet("xiefan-guo", 7, SCALE).eval()
    path = tmp_path_factory.mktemp("good") / "model_5.pth"
    torch.save({"n_iter": 6, "generator": net.state_dict()}, path)
    return path


def _fails(source: Path, tmp_path: Path, match: str, **kwargs) -> str:
    output = tmp_path / "out.safetensors"
    with pytest.raises(ImportCheckpointError, match=match) as info:
        import_checkpoint(source, output, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(source) in message
    assert not output.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    return message


def test_pickle_that_would_run_code_is_refused_and_does_not_run(good_source, tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-marker"
    state = torch.load(good_source, weights_only=True)
    evil = tmp_path / "evil.pth"
    torch.save({"n_iter": 1, "generator": state["generator"], "hook": _WouldRunCode(marker)}, evil)
    message = _fails(evil, tmp_path, "refused")
    assert "builtins.exec" in message
    assert not marker.exists()
    # the payload is real: an ordinary unpickler runs it (what a weights-only load must never do)
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    # mmengine's training logs are loaded as inert placeholders, but never beside anything else
    mixed = tmp_path / "mixed.pth"
    hub = mmengine_message_hub()
    torch.save({"state_dict": state["generator"], "message_hub": hub, "hook": _WouldRunCode(marker)}, mixed)
    message = _fails(mixed, tmp_path, "refused")
    assert "builtins.exec" in message and "HistoryBuffer" not in message and not marker.exists()
    # the same with a bare pickle (not torch's zip container)
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(_WouldRunCode(marker)))
    _fails(bare, tmp_path, "refused|not a PyTorch checkpoint")
    assert not marker.exists()


def test_truncated_zero_byte_and_foreign_files(good_source, tmp_path):
    data = good_source.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    _fails(truncated, tmp_path, "truncated or corrupt")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _fails(empty, tmp_path, "empty file")
    png = tmp_path / "picture.pth"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png, format="PNG")
    _fails(png, tmp_path, "not a PyTorch checkpoint")
    _fails(tmp_path / "missing.pth", tmp_path, "no such file")
    (tmp_path / "folder.pth").mkdir()
    _fails(tmp_path / "folder.pth", tmp_path, "is a folder")
    (tmp_path / "folder.pth").rmdir()
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(10)}, other)
    _fails(other, tmp_path, "match none of the formats")
    plain = tmp_path / "numbers.pth"
    torch.save({"n_iter": 3, "lr": 0.1}, plain)
    _fails(plain, tmp_path, "no state dict found")


def _edited(good_source: Path, tmp_path: Path, edit) -> Path:
    obj = torch.load(good_source, weights_only=True)
    edit(obj["generator"])
    path = tmp_path / "edited.pth"
    torch.save(obj, path)
    return path


def test_renamed_extra_and_reshaped_keys_are_named(good_source, tmp_path):
    def rename(s):
        s["ec_images_3.conv.weights"] = s.pop("ec_images_3.conv.weight")

    message = _fails(_edited(good_source, tmp_path, rename), tmp_path, "missing key")
    assert "ec_images_3.conv.weight " in message
    message = _fails(_edited(good_source, tmp_path, lambda s: s.update(extra=torch.zeros(1))), tmp_path, "unexpected")
    assert "extra" in message

    def reshape(s):
        s["dc_images_4.bn.running_var"] = torch.ones(7)

    message = _fails(_edited(good_source, tmp_path, reshape), tmp_path, "shape")
    assert "dc_images_4.bn.running_var has shape [7], expected [32]" in message
    _fails(good_source, tmp_path, "7 levels, --layers says 8", layers=8)
    _fails(good_source, tmp_path, "not a naoto0804 checkpoint", format="naoto0804")


def test_naoto_mask_kernel_must_be_all_ones(tmp_path):
    torch.manual_seed(0)
    net = make_project_unet("naoto0804", 7, SCALE)
    state = net.state_dict()
    state["enc_2.conv.mask_conv.weight"][0, 0, 0, 0] = 2.0
    path = tmp_path / "naoto.pth"
    torch.save({"n_iter": 1, "model": state}, path)
    _fails(path, tmp_path, "enc_2.conv.mask_conv.weight is not all ones")


def test_cli_error_is_one_line(good_source, tmp_path):
    import subprocess
    import sys

    from pconv_deploy.cli import main  # noqa: F401  (the console script maps PConvError to one line)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pconv_deploy.cli import main; main()",
            "import-checkpoint",
            str(empty),
            "--output",
            str(tmp_path / "x.safetensors"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert run.returncode == 1
    assert run.stderr.strip() == f"error: {empty}: empty file (0 bytes)"
    assert not (tmp_path / "x.safetensors").exists()


def test_bias_before_batchnorm_is_folded_into_the_running_mean(tmp_path):
    """A source with a bias on every conv (ours has none where BatchNorm follows) imports exactly."""
    levels = 4
    torch.manual_seed(5)
    net = make_project_unet("xiefan-guo", levels, SCALE)
    for module in net.modules():
        if hasattr(module, "bn") and module.conv.bias is None:
            module.conv.bias = torch.nn.Parameter(torch.empty(module.conv.out_channels).uniform_(-1, 1))
    net, _ = train_like_the_project("xiefan-guo", net, levels)
    assert "ec_images_2.conv.bias" in net.state_dict() and "dc_images_2.conv.bias" in net.state_dict()
    torch.save({"n_iter": 1, "generator": net.state_dict()}, tmp_path / "biased.pth")
    result = import_checkpoint(tmp_path / "biased.pth", tmp_path / "biased.safetensors")
    image, mask = torch.rand(2, 3, 32, 48), stroke_masks(2, 32, 48, seed=6)
    with torch.no_grad():
        expected = project_inpaint("xiefan-guo", net.double(), image.double(), mask.double())
        ours = load_checkpoint(result.path)(image, mask)
    assert (ours.double() - expected).abs().max().item() <= 1e-4  # float32 vs float64; unfolded: 2.0


def test_bad_output_paths_fail_before_any_work(good_source, tmp_path):
    for output, match in (
        (tmp_path / "model.pth", "must be a .safetensors file"),
        (tmp_path / "dir.safetensors", "is a folder"),
        (tmp_path / "file" / "m.safetensors", "is a file, not a folder"),
    ):
        (tmp_path / "dir.safetensors").mkdir(exist_ok=True)
        (tmp_path / "file").write_text("x")
        with pytest.raises(ImportCheckpointError, match=match):
            import_checkpoint(good_source, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.safetensors", "file"]


def test_naoto_2018_layout_with_a_bias_on_every_conv(tmp_path):
    """naoto0804's first net.py: keys conv.conv2d / conv.mask2d (with a zero bias), a bias on every conv."""
    levels = 4
    torch.manual_seed(7)
    net = make_project_unet("naoto0804", levels, SCALE)
    for module in net.modules():
        if hasattr(module, "conv") and hasattr(module.conv, "input_conv") and module.conv.input_conv.bias is None:
            bias = torch.empty(module.conv.input_conv.out_channels).uniform_(-1, 1)
            module.conv.input_conv.bias = torch.nn.Parameter(bias)
    net, _ = train_like_the_project("naoto0804", net, levels)
    old = {}
    for key, value in net.state_dict().items():
        old[key.replace(".input_conv.", ".conv2d.").replace(".mask_conv.", ".mask2d.")] = value
        if key.endswith("mask_conv.weight"):
            old[key.replace(".mask_conv.weight", ".mask2d.bias")] = torch.zeros(value.shape[0])
    assert "enc_1.conv.conv2d.bias" in old and "enc_2.conv.mask2d.bias" in old
    torch.save({"n_iter": 200000, "model": old}, tmp_path / "200000.pth")
    result = import_checkpoint(tmp_path / "200000.pth", tmp_path / "old.safetensors")
    assert result.format == "naoto0804"
    image, mask = torch.rand(2, 3, 32, 48), stroke_masks(2, 32, 48, seed=8)
    with torch.no_grad():
        expected = project_inpaint("naoto0804", net.double(), image.double(), mask.double())
        ours = load_checkpoint(result.path)(image, mask)
    assert (ours.double() - expected).abs().max().item() <= 1e-4
    old["enc_2.conv.mask2d.bias"] += 0.5
    torch.save({"n_iter": 200000, "model": old}, tmp_path / "bad.pth")
    (tmp_path / "sub").mkdir()
    _fails(tmp_path / "bad.pth", tmp_path / "sub", "enc_2.conv.mask2d.bias is not zero")
