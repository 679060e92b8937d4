"""Evaluation: metrics, compositing, the Telea baseline, the ONNX path through the runtime, the CLI table."""

import re
import subprocess
import sys

import numpy as np
import pytest

from pconv_deploy.masks import HOLE_BINS
from pconv_deploy.train.evaluate import (
    EvaluateOptions,
    checkpoint_predictor,
    evaluate,
    hole_bias,
    hole_l1,
    l1_percent,
    make_samples,
    psnr,
    score,
    ssim,
    telea_predictor,
)


def photos(size=64, count=2):
    from pconv_deploy.train.data import center_crop, image_paths, load_rgb

    return [np.ascontiguousarray(center_crop(load_rgb(p), size)) for p in image_paths("builtin")[:count]]


def test_metrics_against_formulas():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    noisy = np.clip(truth.astype(int) + rng.integers(-20, 21, truth.shape), 0, 255).astype(np.uint8)
    diff = noisy.astype(float) - truth.astype(float)
    assert l1_percent(noisy, truth) == pytest.approx(np.abs(diff).mean() / 255 * 100)
    assert psnr(noisy, truth) == pytest.approx(10 * np.log10(255**2 / (diff**2).mean()))
    assert ssim(truth, truth) == pytest.approx(1.0)
    assert 0 < ssim(noisy, truth) < 0.99


def test_hole_l1_and_colour_bias_count_only_hole_pixels():
    truth = np.full((4, 4, 3), 100, np.uint8)
    out = truth.copy()
    hole = np.zeros((4, 4), bool)
    hole[0, :2] = True  # two hole pixels
    out[0, 0] = (110, 100, 70)  # errors +10, 0, -30
    out[0, 1] = (100, 120, 100)  # errors 0, +20, 0
    out[3, 3] = (0, 0, 0)  # a known pixel: must not count
    assert hole_l1(out, truth, hole) == pytest.approx((10 + 30 + 20) / 6)
    np.testing.assert_allclose(hole_bias(out, truth, hole), [5.0, 10.0, -15.0])
    assert l1_percent(out, truth) > 0  # the whole-image metric does see the known pixel


def test_samples_cover_every_bin_and_are_seeded():
    images = photos(64, 2)
    a, b = make_samples(images, 2, seed=3), make_samples(images, 2, seed=3)
    assert len(a) == 2 * len(HOLE_BINS) * 2
    for s in a:
        lo, hi = HOLE_BINS[s.bin_index]
        assert lo < s.hole.mean() <= hi and s.hole.dtype == bool
    assert all(np.array_equal(x.hole, y.hole) for x, y in zip(a, b))


def test_outputs_are_composited_and_telea_beats_a_grey_fill(small_checkpoint):
    images = photos(64, 2)
    samples = make_samples(images, 1, seed=0)
    predict, multiple = checkpoint_predictor(small_checkpoint)
    assert 64 % multiple == 0
    outs = predict([s.image for s in samples], [s.hole for s in samples])
    telea = telea_predictor()([s.image for s in samples], [s.hole for s in samples])
    for s, out, t in zip(samples, outs, telea):
        known = ~s.hole
        assert np.array_equal(out[known], s.image[known]) and np.array_equal(t[known], s.image[known])

    def grey(imgs, holes):
        return [np.where(h[..., None], np.uint8(128), img) for img, h in zip(imgs, holes)]

    telea_scores = score("Telea", telea_predictor(), samples)
    grey_scores = score("grey", grey, samples)
    assert [s.bin_index for s in telea_scores] == list(range(len(HOLE_BINS)))
    for t, g in zip(telea_scores, grey_scores):
        assert t.l1_percent < g.l1_percent and t.psnr > g.psnr
    # Bigger holes, bigger error: the bins measure what they claim.
    assert telea_scores[-1].l1_percent > telea_scores[0].l1_percent


def test_onnx_through_the_runtime_matches_the_checkpoint(small_checkpoint, small_onnx, tmp_path):
    kwargs = {"data": "builtin", "masks_per_bin": 1, "size": 64, "max_images": 2}
    torch_report = evaluate(EvaluateOptions(output=tmp_path / "t", checkpoint=small_checkpoint, **kwargs))
    onnx_report = evaluate(EvaluateOptions(output=tmp_path / "o", model=small_onnx, **kwargs))
    pconv_t = [s for s in torch_report.scores if s.method == "PConv"]
    pconv_o = [s for s in onnx_report.scores if s.method == "PConv (runtime)"]
    assert len(pconv_t) == len(pconv_o) == len(HOLE_BINS)
    for t, o in zip(pconv_t, pconv_o):  # uint8 rounding of nearly equal floats: tiny differences only
        assert abs(t.l1_percent - o.l1_percent) < 0.05 and abs(t.psnr - o.psnr) < 0.2
    telea_t = [s for s in torch_report.scores if s.method == "Telea"]
    telea_o = [s for s in onnx_report.scores if s.method == "Telea"]
    assert telea_t == telea_o


def test_cli_prints_the_table_with_telea(small_checkpoint, tmp_path):
    out = tmp_path / "eval"
    args = ["--checkpoint", str(small_checkpoint), "--data", "builtin", "--output", str(out)]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pconv_deploy.cli",
            "evaluate",
            *args,
            "--masks-per-bin",
            "1",
            "--size",
            "64",
            "--max-images",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    header = (
        "| hole ratio | n | PConv hole L1 | PConv L1 (%) | PConv PSNR (dB) | PConv SSIM "
        "| Telea hole L1 | Telea L1 (%) | Telea PSNR (dB) | Telea SSIM |"
    )
    assert header in r.stdout
    for label in ("(0.01, 0.1]", "(0.1, 0.2]", "(0.5, 0.6]"):
        assert f"| {label} | 2 |" in r.stdout
    assert header in (out / "evaluation.md").read_text()
    from PIL import Image

    assert Image.open(out / "evaluation.png").size == (800, 1200)


def test_cli_errors_are_one_line(small_checkpoint, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "pconv_deploy.cli", "evaluate", "--output", str(tmp_path), *args],
            capture_output=True,
            text=True,
        )

    r = run("--data", "builtin")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: give exactly one of --checkpoint")
    r = run("--data", "builtin", "--checkpoint", str(small_checkpoint), "--size", "48")
    assert r.returncode == 1 and r.stderr.strip().endswith(
        "must be a multiple of 32 for " + str(small_checkpoint) + " (2^layers)"
    )


def unusable_images(folder):
    """A few-hundred-byte 30000x1 PNG (upscaled to the crop size it took 1.4 GB), noise, a cut JPEG, an empty file."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    Image.new("RGB", (30000, 1), (255, 0, 0)).save(folder / "thin.png")
    (folder / "noise.png").write_bytes(np.random.default_rng(1).bytes(500))
    Image.new("RGB", (64, 64), (0, 0, 255)).save(folder / "cut.jpg", quality=95)
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    return {str(folder / n) for n in ("thin.png", "noise.png", "cut.jpg", "empty.png")}


def test_cli_skips_unusable_images_and_lists_them(small_checkpoint, tmp_path):
    import json

    from PIL import Image

    bad = unusable_images(tmp_path / "data")
    for i, image in enumerate(photos(64, 2)):
        Image.fromarray(image).save(tmp_path / "data" / f"good{i}.png")
    args = ["--checkpoint", small_checkpoint, "--data", tmp_path / "data", "--output", tmp_path / "ev"]
    r = subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", "evaluate", *map(str, args), "--masks-per-bin", "1", "--size", "64"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| (0.01, 0.1] | 2 |" in r.stdout  # the two good images, each once per bin
    assert sum(line.startswith("skipped ") for line in r.stdout.splitlines()) == len(bad)
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert set(report["skipped"]) == bad and "4 unusable image(s) skipped" in report["note"]
    assert "30000x1 is more elongated than 16:1" in report["skipped"][str(tmp_path / "data" / "thin.png")]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--seed", "-1"], "--seed must be between 0 and 2^63 - 1, got -1", 2),
        (["--masks-per-bin", "100000"], "--masks-per-bin must be between 1 and 100", 2),
        (["--size", "100000"], "--size must be between 1 and 2048, got 100000", 2),  # would upscale to 30 GB
        (["--data", "DATA"], "none of the 4 images is usable", 1),
    ],
)
def test_cli_bad_values_are_one_line_and_write_nothing(small_checkpoint, tmp_path, args, message, code):
    unusable_images(tmp_path / "data")
    args = [str(tmp_path / "data") if a == "DATA" else a for a in args]
    base = ["--checkpoint", str(small_checkpoint), "--output", str(tmp_path / "ev")]
    data = [] if "--data" in args else ["--data", "builtin"]
    r = subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", "evaluate", *base, *data, *args], capture_output=True, text=True
    )
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "ev").exists() or not list((tmp_path / "ev").iterdir())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "m.onnx"}, "give exactly one of --checkpoint"),
        ({"checkpoint": None}, "give exactly one of --checkpoint"),
        ({"size": 0}, "--size must be between 1 and 2048, got 0"),
        ({"masks_per_bin": 101}, "--masks-per-bin must be between 1 and 100, got 101"),
        ({"seed": 2**63}, "--seed must be between 0 and 2^63 - 1"),
        ({"max_images": 0}, "--max-images must be 1 or more, got 0"),
        ({"batch_size": 0}, "batch size must be 1 or more, got 0"),
    ],
)
def test_options_refuse_bad_values_before_reading_anything(tmp_path, change, message):
    """The options are checked when built (the CLI builds them first): no file named in them exists here."""
    from pconv_deploy.errors import UsageError

    good = {"data": tmp_path / "no-data", "output": tmp_path / "ev", "checkpoint": tmp_path / "no.safetensors"}
    assert EvaluateOptions(**good).checkpoint == tmp_path / "no.safetensors"
    with pytest.raises(UsageError, match=re.escape(message)):
        EvaluateOptions(**{**good, **change})
    assert not (tmp_path / "ev").exists()
