"""`pconv infer` against the eleven defects an adversarial run found (issue 16), one test per defect.

The CLI runs in-process (``pconv_deploy.cli.main``, the console script) on real files with the
small ONNX model; the torch-less case runs in a child process where ``import torch`` fails.
Each test checks the message, the exit code, that good files are still done, and that nothing
is lost or left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import skimage.data
from helpers.cli import infer_args as folder_args
from helpers.images import neutral_cmyk_profile
from PIL import Image

from pconv_deploy.cli import main

PHOTO = skimage.data.chelsea()[:256, :320].copy()  # 320 x 256 RGB
HOLE = np.zeros(PHOTO.shape[:2], bool)
HOLE[60:110, 80:170] = True


def run(args, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["pconv", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    return images, masks


def save_pair(images, masks, stem, image=PHOTO, hole=HOLE, **save_args):
    Image.fromarray(image).save(images / f"{stem}.png", **save_args)
    Image.fromarray(hole.astype(np.uint8) * 255).save(masks / f"{stem}.png")


def infer_args(images, masks, out, model, *extra):
    return folder_args(images, masks, out, "--model", model, *extra)


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# 1 ------------------------------------------------------------------------------------------------
def test_alpha_mask_inpaints_the_stroke_only_and_a_full_mask_is_refused(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    Image.fromarray(PHOTO).save(images / "alpha.png")
    stroke_in_alpha = np.dstack([np.full((*HOLE.shape, 3), 255, np.uint8), HOLE.astype(np.uint8) * 255])
    Image.fromarray(stroke_in_alpha).save(masks / "alpha.png")  # RGB white everywhere, stroke only in alpha
    save_pair(images, masks, "full", hole=np.ones_like(HOLE))  # every pixel a hole
    save_pair(images, masks, "good")
    out = tmp_path / "out"
    code, _, err = run(infer_args(images, masks, out, small_onnx), monkeypatch, capsys)
    assert code == 1
    assert err.strip() == (
        f"failed: {images / 'full.png'}: mask {masks / 'full.png'}: mask marks every pixel as a hole "
        "(white = hole with --mask-convention hole-white): nothing known would be left; check the convention"
    )
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "good.png"]
    result = np.asarray(Image.open(out / "alpha.png"))
    assert (result[~HOLE] == PHOTO[~HOLE]).all()  # the photo outside the stroke is untouched...
    assert (result[HOLE] != PHOTO[HOLE]).any()  # ...and the stroke was inpainted


# 2 ------------------------------------------------------------------------------------------------
TORCHLESS = "import sys; sys.modules['torch'] = None; from pconv_deploy.cli import main; del sys.argv[0]; main()"


def test_without_torch_the_default_model_and_torch_commands_are_one_line(tmp_path):
    images, masks = folders(tmp_path)
    save_pair(images, masks, "a")
    out = tmp_path / "out"
    cases = {
        ("pconv", "infer", "--images", images, "--masks", masks, "--output", out): (
            "error: the bundled model is a PyTorch checkpoint and needs torch (pip install 'pconv-deploy[torch]'); "
            "or pass --model an exported .onnx (from `pconv export` where torch is installed)"
        ),
        ("pconv", "export", "-o", tmp_path / "m.onnx", "--checkpoint", tmp_path / "x.safetensors"): (
            "error: this command needs torch (pip install 'pconv-deploy[torch]')"
        ),
    }
    for args, expected in cases.items():
        r = subprocess.run([sys.executable, "-c", TORCHLESS, *map(str, args)], capture_output=True, text=True)
        assert (r.returncode, r.stderr.strip()) == (1, expected), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks"]


# 3 ------------------------------------------------------------------------------------------------
def test_stale_temp_cleanup_removes_only_our_own_temps(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    save_pair(images, masks, "a")
    out = tmp_path / "o"
    out.mkdir()
    (out / ".notes.txt.tmp-999999").write_text("precious\n")  # the user's, in the issue
    (out / ".a.png.tmp-999999").write_text("an older tool's name\n")
    (out / ".zzz.png.pconv-tmp-999999-0123abcd").write_text("ours, but no output of this run\n")
    (out / ".a.png.pconv-tmp-999999-0123abcd").write_text("ours, a killed run's temp of a.png\n")
    report = tmp_path / "r.json"
    code, _, err = run(infer_args(images, masks, out, small_onnx, "--report", report), monkeypatch, capsys)
    assert code == 0, err
    assert (out / ".notes.txt.tmp-999999").read_text() == "precious\n"
    assert hidden(out) == [".a.png.tmp-999999", ".notes.txt.tmp-999999", ".zzz.png.pconv-tmp-999999-0123abcd"]
    assert json.loads(report.read_text())["temps_cleaned"] == 1


# 4, 5 ---------------------------------------------------------------------------------------------
def test_bad_output_and_report_paths_fail_before_any_work(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    save_pair(images, masks, "a")
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "rdir").mkdir()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    cases = {
        "--output under a file": (infer_args(images, masks, tmp_path / "file" / "o", small_onnx), "file is a file"),
        "--output a dangling link": (infer_args(images, masks, "dangling", small_onnx), "a dangling symbolic link"),
        "--output in /proc": (infer_args(images, masks, "/proc/pconv-x", small_onnx), "cannot create folder"),
        "--report a folder": (infer_args(images, masks, out, small_onnx, "--report", "rdir"), "is a folder"),
        "--report under a file": (infer_args(images, masks, out, small_onnx, "--report", "file/r.json"), "a file"),
        "--output == --images": (infer_args(images, masks, images, small_onnx), "is the same folder as --images"),
        "--output == --masks": (infer_args(images, masks, masks, small_onnx), "is the same folder as --masks"),
    }
    if os.path.isdir("/sys"):
        cases["--output in /sys"] = (infer_args(images, masks, "/sys/x", small_onnx), "cannot create folder /sys/x")
    before = sorted(os.listdir(tmp_path))
    for name, (args, fragment) in cases.items():
        code, stdout, err = run(args, monkeypatch, capsys)
        assert code == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and fragment in err, (name, err)
        assert stdout == "" and sorted(os.listdir(tmp_path)) == before, name  # no model loaded, nothing written


def test_output_nested_in_images_reruns_cleanly(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    save_pair(images, masks, "a")
    out = images / "out"  # discovery does not recurse, so outputs never become inputs
    code, stdout, err = run(infer_args(images, masks, out, small_onnx), monkeypatch, capsys)
    assert (code, err) == (0, "") and "1 inpainted" in stdout
    code, stdout, err = run(infer_args(images, masks, out, small_onnx), monkeypatch, capsys)
    assert (code, err) == (0, "") and "0 inpainted, 1 skipped" in stdout


# 6, 7 ---------------------------------------------------------------------------------------------
def test_colour_key_transparency_and_cmyk_profiles(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    rgb = PHOTO.copy()
    rgb[:20, :40] = (1, 2, 3)  # known, transparent by tRNS
    save_pair(images, masks, "keyed", rgb, transparency=(1, 2, 3))
    grey = PHOTO[..., 0].copy()
    grey[:20, :40] = 5
    save_pair(images, masks, "grey", grey, transparency=5)
    cmyk = np.dstack([PHOTO, np.zeros(HOLE.shape, np.uint8)])
    Image.fromarray(cmyk, "CMYK").save(images / "cmyk.jpg", icc_profile=neutral_cmyk_profile())
    Image.fromarray(HOLE.astype(np.uint8) * 255).save(masks / "cmyk.png")
    out = tmp_path / "out"
    code, _, err = run(infer_args(images, masks, out, small_onnx), monkeypatch, capsys)
    assert (code, err) == (0, "")
    for name, pixels, key in (("keyed", rgb, (rgb == (1, 2, 3)).all(axis=2)), ("grey", grey, grey == 5)):
        with Image.open(out / f"{name}.png") as im:
            result = np.asarray(im)
            assert im.mode == ("RGBA" if pixels.ndim == 3 else "LA")
        assert ((result[..., -1] == 0) == key).all(), name  # the transparent pixels stay transparent
        colour = result[..., :3] if pixels.ndim == 3 else result[..., 0]
        assert (colour[~HOLE] == pixels[~HOLE]).all(), name
    with Image.open(out / "cmyk.png") as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info  # converted to sRGB, no CMYK profile copied


# 8 ------------------------------------------------------------------------------------------------
def test_max_pixels_raises_past_pillows_limit_and_no_bomb_warning(small_onnx, tmp_path, monkeypatch, capsys):
    """Pillow's limit is lowered so a 320x256 photo is "over twice" it (the 196 MP case, cheaply); and a real
    100 MP (97 kB, all black) PNG is refused at the default limits without a DecompressionBombWarning."""
    images, masks = folders(tmp_path)
    save_pair(images, masks, "a")
    big = Image.fromarray(np.zeros((10_000, 10_000), np.uint8))
    big.save(images / "big.png", compress_level=9)
    big.save(masks / "big.png", compress_level=9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run(infer_args(images, masks, out, small_onnx, "--max-pixels", 100_000), monkeypatch, capsys)
    assert code == 1
    assert err.strip() == (
        f"failed: {images / 'big.png'}: image is 10000x10000 = 100,000,000 pixels, over the limit of 100,000 "
        "(--max-pixels)"
    )
    assert [w for w in caught if "DecompressionBomb" in type(w.message).__name__] == []
    assert (out / "a.png").is_file() and Image.MAX_IMAGE_PIXELS == 30_000


# 9, 10, 11 (names) --------------------------------------------------------------------------------
def test_odd_entries_are_reported_not_skipped(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    out = tmp_path / "out"
    save_pair(images, masks, "good")
    save_pair(images, masks, "back\\slash")  # a legal name on Linux
    save_pair(images, masks, "taken")
    (out / "taken.png").mkdir(parents=True)  # a folder where the output goes
    (images / "link.png").symlink_to(tmp_path / "gone.png")
    (images / "folder.png").mkdir()
    Image.fromarray(HOLE.astype(np.uint8) * 255).save(masks / "orphan.png")
    (images / "sub").mkdir()  # a plain subfolder: not an input
    report = tmp_path / "r.json"
    code, _, err = run(infer_args(images, masks, out, small_onnx, "--report", report), monkeypatch, capsys)
    assert code == 1
    expected = {
        "back\\slash.png": None,
        "good.png": None,
        "taken.png": f"output {out / 'taken.png'} exists and is a folder: remove it or choose another --output",
        "link.png": f"image is a dangling symbolic link (to {tmp_path / 'gone.png'})",
        "folder.png": "image is a folder, not a file",
    }
    data = json.loads(report.read_text())
    got = {os.path.basename(f["image"]): f["error"] for f in data["files"]}
    assert got == expected
    assert data["warnings"] == [f"mask {masks / 'orphan.png'} has no image in {images}"]
    lines = err.strip().splitlines()
    assert lines[0] == f"warning: mask {masks / 'orphan.png'} has no image in {images}"
    assert sorted(lines[1:]) == sorted(f"failed: {images / n}: {e}" for n, e in expected.items() if e)
    assert sorted(p.name for p in out.iterdir()) == ["back\\slash.png", "good.png", "taken.png"]
    assert (out / "taken.png").is_dir() and not list((out / "taken.png").iterdir())


# 11 -----------------------------------------------------------------------------------------------
def test_nan_weights_fail_their_images(tmp_path, monkeypatch, capsys):
    import torch
    from conftest import SMALL

    from pconv_deploy.model import PConvUNet, save_checkpoint

    model = PConvUNet(**SMALL).eval()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight")).fill_(float("nan"))
    ckpt = save_checkpoint(model, tmp_path / "nan.safetensors")
    images, masks = folders(tmp_path)
    save_pair(images, masks, "a")
    out = tmp_path / "out"
    code, _, err = run(infer_args(images, masks, out, ckpt), monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"failed: {images / 'a.png'}: ") and "NaN or infinite values" in err
    assert list(out.iterdir()) == []


def test_float_tiff_message_names_its_depth(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    Image.fromarray(PHOTO[..., 0].astype(np.float32) / 255).save(images / "f.tif")
    Image.fromarray(HOLE.astype(np.uint8) * 255).save(masks / "f.png")
    code, _, err = run(infer_args(images, masks, tmp_path / "out", small_onnx), monkeypatch, capsys)
    assert code == 1
    assert err.strip() == (
        f"failed: {images / 'f.tif'}: 32-bit float images are not supported (F TIFF): convert to 8 bits per channel"
    )


@pytest.mark.parametrize("convention", ["hole-white", "hole-black"])
def test_transparent_mask_layer_under_both_conventions(small_onnx, tmp_path, monkeypatch, capsys, convention):
    images, masks = folders(tmp_path)
    Image.fromarray(PHOTO).save(images / "a.png")
    paint = 255 if convention == "hole-white" else 0
    layer = np.dstack([np.full((*HOLE.shape, 3), paint, np.uint8), HOLE.astype(np.uint8) * 255])
    Image.fromarray(layer).save(masks / "a.png")
    out = tmp_path / "out"
    args = infer_args(images, masks, out, small_onnx, "--mask-convention", convention)
    code, _, err = run(args, monkeypatch, capsys)
    assert (code, err) == (0, "")
    result = np.asarray(Image.open(out / "a.png"))
    assert (result[~HOLE] == PHOTO[~HOLE]).all() and (result[HOLE] != PHOTO[HOLE]).any()


def test_many_orphan_masks_are_counted_not_listed(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    save_pair(images, masks, "a")
    for i in range(12):
        Image.fromarray(HOLE.astype(np.uint8) * 255).save(masks / f"orphan{i:02d}.png")
    report = tmp_path / "r.json"
    code, _, err = run(infer_args(images, masks, tmp_path / "out", small_onnx, "--report", report), monkeypatch, capsys)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 11 and all(line.startswith("warning: mask ") for line in lines[:10])
    assert lines[10] == "warning: and 2 more masks without an image (all in --report)"
    assert len(json.loads(report.read_text())["warnings"]) == 12


def test_a_newline_in_a_file_name_keeps_the_failure_on_one_line(small_onnx, tmp_path, monkeypatch, capsys):
    images, masks = folders(tmp_path)
    save_pair(images, masks, "good")
    save_pair(images, masks, "new\nline", hole=HOLE[:100])  # a mask of the wrong size: this one fails
    code, _, err = run(infer_args(images, masks, tmp_path / "out", small_onnx), monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"failed: {images}/new\\nline.png: mask ") and "is 320x100 but the image is 320x256" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]
