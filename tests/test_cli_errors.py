"""Every command, run as a careless or hostile user would: bad arguments and bad files.

Each case runs the real CLI in-process (``pconv_deploy.cli.main``, the console script) and must
end with exactly one ``error: ...`` line on stderr, no traceback, exit 1 (bad file contents) or
2 (unusable argument), and nothing written or changed anywhere in the working folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from helpers.cli import run_cli


@pytest.fixture
def bad(tmp_path, small_checkpoint, small_onnx, monkeypatch):
    """A working folder of bad files (and the good ones), as the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "zero.onnx").write_bytes(b"")
    (tmp_path / "zero.safetensors").write_bytes(b"")
    (tmp_path / "zero.engine").write_bytes(b"")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07not an onnx model at all" * 40)
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "garbage.engine").write_bytes(b"not an engine" * 10)
    (tmp_path / "file.txt").write_text("a regular file\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "masks").mkdir()
    (tmp_path / "good.onnx").write_bytes(small_onnx.read_bytes())
    (tmp_path / "good.safetensors").write_bytes(small_checkpoint.read_bytes())
    (tmp_path / "good.txt").write_bytes(small_onnx.read_bytes())  # an ONNX model under a wrong suffix
    (tmp_path / "m2.onnx").write_bytes(small_onnx.read_bytes())
    (tmp_path / "m2.parity").write_text("a file where the default parity folder goes\n")
    (tmp_path / "ev2" / "evaluation.md").mkdir(parents=True)  # a folder where a report file goes
    (tmp_path / "run2" / "last.safetensors").mkdir(parents=True)
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) with a digest of its contents."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            state[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = Path(dirpath, f)
            digest = f"link to {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            state[os.path.relpath(p, root)] = digest
    return state


G_ONNX, G_CKPT = "good.onnx", "good.safetensors"
INFER = ["infer", "--images", "images", "--masks", "masks"]
TRAIN_RUN = ["train", "--data", "builtin", "--output", "run"]
TRAIN_ONE_STEP = [*TRAIN_RUN, "--steps", "1"]
CASES = {
    # export: bad checkpoints, bad outputs, output == input
    "export-ckpt-missing": ["export", "-o", "o.onnx", "--checkpoint", "nope.safetensors"],
    "export-ckpt-dir": ["export", "-o", "o.onnx", "--checkpoint", "dir.safetensors"],
    "export-ckpt-zero": ["export", "-o", "o.onnx", "--checkpoint", "zero.safetensors"],
    "export-ckpt-garbage": ["export", "-o", "o.onnx", "--checkpoint", "garbage.safetensors"],
    "export-ckpt-is-onnx": ["export", "-o", "o.onnx", "--checkpoint", G_ONNX],
    "export-out-under-file": ["export", "-o", "file.txt/o.onnx", "--checkpoint", G_CKPT],
    "export-out-is-dir": ["export", "-o", "dir.onnx", "--checkpoint", G_CKPT],
    "export-out-is-input": ["export", "-o", G_CKPT, "--checkpoint", G_CKPT],
    "export-out-wrong-suffix": ["export", "-o", "o.txt", "--checkpoint", G_CKPT],
    "export-out-unwritable": ["export", "-o", "/proc/pconv/o.onnx", "--checkpoint", G_CKPT],
    "export-parity-dir-under-file": ["export", "-o", "o.onnx", "--checkpoint", G_CKPT, "--parity-dir", "file.txt/p"],
    "export-opset-too-high": ["export", "-o", "o.onnx", "--checkpoint", G_CKPT, "--opset", "99"],
    "export-default-parity-dir-is-file": ["export", "-o", "m2.onnx", "--checkpoint", G_CKPT],
    # check: bad models and checkpoints
    "check-default-save-dir-is-file": ["check", "m2.onnx", "--checkpoint", G_CKPT],
    "check-missing": ["check", "nope.onnx", "--checkpoint", G_CKPT],
    "check-dir": ["check", "dir.onnx", "--checkpoint", G_CKPT],
    "check-zero": ["check", "zero.onnx", "--checkpoint", G_CKPT],
    "check-garbage": ["check", "garbage.onnx", "--checkpoint", G_CKPT],
    "check-checkpoint-as-model": ["check", G_CKPT, "--checkpoint", G_CKPT],
    "check-wrong-suffix": ["check", "good.txt", "--checkpoint", G_CKPT],
    "check-ckpt-garbage": ["check", G_ONNX, "--checkpoint", "garbage.safetensors"],
    "check-ckpt-dir": ["check", G_ONNX, "--checkpoint", "dir.safetensors"],
    "check-save-dir-under-file": ["check", G_ONNX, "--checkpoint", G_CKPT, "--save-dir", "file.txt/p"],
    # build-engine: bad models, bad outputs (fails before TensorRT is needed)
    "build-missing": ["build-engine", "nope.onnx", "-o", "m.engine"],
    "build-dir": ["build-engine", "dir.onnx", "-o", "m.engine"],
    "build-zero": ["build-engine", "zero.onnx", "-o", "m.engine"],
    "build-garbage": ["build-engine", "garbage.onnx", "-o", "m.engine"],
    "build-out-is-input": ["build-engine", G_ONNX, "-o", G_ONNX],
    "build-out-under-file": ["build-engine", G_ONNX, "-o", "file.txt/m.engine"],
    "build-out-is-dir": ["build-engine", G_ONNX, "-o", "images"],
    "build-timing-cache-dir": ["build-engine", G_ONNX, "-o", "m.engine", "--timing-cache", "images"],
    # train: bad data, outputs and starting points
    "train-data-missing": ["train", "--data", "nope", "--output", "run", "--steps", "1"],
    "train-data-file": ["train", "--data", "file.txt", "--output", "run", "--steps", "1"],
    "train-data-no-images": ["train", "--data", "dir.onnx", "--output", "run", "--steps", "1"],
    "train-out-is-file": ["train", "--data", "builtin", "--output", "file.txt", "--steps", "1"],
    "train-out-under-file": ["train", "--data", "builtin", "--output", "file.txt/run", "--steps", "1"],
    "train-init-missing": [*TRAIN_ONE_STEP, "--init", "nope"],
    "train-init-garbage": [*TRAIN_ONE_STEP, "--init", "garbage.safetensors"],
    "train-vgg-zero": [*TRAIN_ONE_STEP, "--vgg-weights", "zero.safetensors"],
    "train-lr-negative": [*TRAIN_ONE_STEP, "--lr", "-1"],
    "train-vgg-is-onnx": [*TRAIN_ONE_STEP, "--vgg-weights", G_ONNX],
    "train-size": [*TRAIN_ONE_STEP, "--size", "100"],
    # evaluate: bad data, models, outputs
    "eval-data-missing": ["evaluate", "--data", "nope", "--checkpoint", G_CKPT, "--output", "ev"],
    "eval-ckpt-garbage": ["evaluate", "--data", "builtin", "--checkpoint", "garbage.safetensors", "--output", "ev"],
    "eval-model-garbage": ["evaluate", "--data", "builtin", "--model", "garbage.onnx", "--output", "ev"],
    "eval-model-dir": ["evaluate", "--data", "builtin", "--model", "dir.onnx", "--output", "ev"],
    "eval-out-is-file": ["evaluate", "--data", "builtin", "--checkpoint", G_CKPT, "--output", "file.txt"],
    "eval-out-under-file": ["evaluate", "--data", "builtin", "--checkpoint", G_CKPT, "--output", "file.txt/ev"],
    "eval-out-file-is-dir": ["evaluate", "--data", "builtin", "--checkpoint", G_CKPT, "--output", "ev2"],
    "train-run-file-is-dir": [
        "train",
        "--data",
        "builtin",
        "--output",
        "run2",
        "--steps",
        "1",
        "--layers",
        "5",
        "--width",
        "0.125",
        "--size",
        "64",
        "--batch-size",
        "2",
    ],
    "eval-both-models": ["evaluate", "--data", "builtin", "--checkpoint", G_CKPT, "--model", G_ONNX],
    # triton-repo: bad models, bad repositories
    "triton-missing": ["triton-repo", "nope.onnx", "--repo", "repo", "--cpu"],
    "triton-dir": ["triton-repo", "dir.onnx", "--repo", "repo", "--cpu"],
    "triton-zero": ["triton-repo", "zero.onnx", "--repo", "repo", "--cpu"],
    "triton-garbage": ["triton-repo", "garbage.onnx", "--repo", "repo", "--cpu"],
    "triton-garbage-engine": ["triton-repo", "garbage.engine", "--repo", "repo"],
    "triton-zero-engine": ["triton-repo", "zero.engine", "--repo", "repo"],
    "triton-wrong-suffix": ["triton-repo", "good.txt", "--repo", "repo", "--cpu"],
    "triton-checkpoint": ["triton-repo", G_CKPT, "--repo", "repo", "--cpu"],
    "triton-repo-is-file": ["triton-repo", G_ONNX, "--repo", "file.txt", "--cpu"],
    "triton-repo-under-file": ["triton-repo", G_ONNX, "--repo", "file.txt/repo", "--cpu"],
    "triton-bad-name": ["triton-repo", G_ONNX, "--repo", "repo", "--name", "../escape", "--cpu"],
    # info and init
    "info-missing": ["info", "nope.safetensors"],
    "info-garbage": ["info", "garbage.safetensors"],
    "info-dir": ["info", "dir.safetensors"],
    "init-out-is-dir": ["init", "dir.safetensors", "--layers", "5", "--width", "0.125"],
    "init-out-under-file": ["init", "file.txt/m.safetensors", "--layers", "5", "--width", "0.125"],
    "init-out-wrong-suffix": ["init", "m.onnx", "--layers", "5", "--width", "0.125"],
    # infer: argument paths (the per-file cases are in test_pipeline_inputs.py)
    "infer-model-garbage": [*INFER, "--output", "o", "--model", "garbage.onnx"],
    "infer-model-dir": [*INFER, "--output", "o", "--model", "dir.onnx"],
    "infer-model-zero": [*INFER, "--output", "o", "--model", "zero.onnx"],
    "infer-out-under-file": [
        *INFER,
        "--output",
        "file.txt/o",
        "--model",
        G_ONNX,
    ],
    "infer-out-is-images": [*INFER, "--output", "images", "--model", G_ONNX],
    "infer-report-is-dir": [
        *INFER,
        "--output",
        "o",
        "--model",
        G_ONNX,
        "--report",
        "images",
    ],
    "infer-report-under-file": [
        *INFER,
        "--output",
        "o",
        "--model",
        G_ONNX,
        "--report",
        "file.txt/r.json",
    ],
    "infer-out-is-masks": [*INFER, "--output", "masks", "--model", G_ONNX],
    "infer-out-dangling-link": [*INFER, "--output", "dangling", "--model", G_ONNX],
    "infer-images-are-masks": ["infer", "--images", "images", "--masks", "images", "--output", "o", "--model", G_ONNX],
    "infer-report-is-new-output": [*INFER, "--output", "o", "--model", G_ONNX, "--report", "o"],
    "infer-report-image-name": [*INFER, "--output", "o", "--model", G_ONNX, "--report", "o/a.png"],
    "infer-report-is-input": [
        *INFER,
        "--output",
        "o",
        "--model",
        G_ONNX,
        "--report",
        "images/a.png",
    ],
}


# Out-of-range numbers: typer's own usage error (exit 2, its usage box names the option), before any work.
USAGE_CASES = {
    "train-steps-0": [*TRAIN_RUN, "--steps", "0"],
    "train-batch-0": [*TRAIN_RUN, "--batch-size", "0"],
    "train-log-every-0": [*TRAIN_RUN, "--log-every", "0"],
    "train-sample-every-0": [*TRAIN_RUN, "--sample-every", "0"],
    "train-hole-bins-7": [*TRAIN_RUN, "--hole-bins", "7"],
    "eval-masks-per-bin-0": ["evaluate", "--data", "builtin", "--checkpoint", G_CKPT, "--masks-per-bin", "0"],
    "eval-size-0": ["evaluate", "--data", "builtin", "--checkpoint", G_CKPT, "--size", "0"],
    "eval-max-images-0": ["evaluate", "--data", "builtin", "--checkpoint", G_CKPT, "--max-images", "0"],
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_out_of_range_numbers_are_usage_errors(case, bad, monkeypatch, capsys):
    before = snapshot(bad)
    code, err = run_cli(USAGE_CASES[case], monkeypatch, capsys)
    option = next(a for a in reversed(USAGE_CASES[case]) if a.startswith("--"))
    assert code == 2 and "Traceback" not in err and option in err, err
    assert snapshot(bad) == before


@pytest.mark.parametrize("case", list(CASES))
def test_bad_arguments_one_line_nothing_written(case, bad, small_checkpoint, small_onnx, monkeypatch, capsys):
    before = snapshot(bad)
    good = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (small_checkpoint, small_onnx)}
    code, err = run_cli(CASES[case], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (1, 2), (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert snapshot(bad) == before, "something was written, changed or left behind"
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in good} == good


def _engine_beside(folder: Path, onnx_path: Path) -> Path:
    """An engine file (placeholder bytes: no TensorRT here) and the sidecar build-engine writes for it."""
    from helpers.engines_onnx import write_valid_sidecar

    engine = folder / "model.engine"
    engine.write_bytes(b"not a real engine")
    write_valid_sidecar(engine, onnx_path)
    return engine


def test_engine_fallback_validates_its_sidecar(small_onnx, tmp_path, monkeypatch, capsys):
    """infer --model X.engine without TensorRT: the sidecar's ONNX runs only from beside the engine, unchanged."""
    import json

    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in ("images", "masks", "eng", "other"):
        (tmp_path / name).mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "images" / "a.png")
    hole = np.zeros((64, 64), np.uint8)
    hole[20:30, 20:30] = 255
    Image.fromarray(hole).save(tmp_path / "masks" / "a.png")
    onnx_path = tmp_path / "eng" / "model.onnx"
    onnx_path.write_bytes(small_onnx.read_bytes())
    engine = _engine_beside(tmp_path / "eng", onnx_path)
    (tmp_path / "other" / "x.onnx").write_bytes(small_onnx.read_bytes())  # same bytes, another folder
    args = ["infer", "--images", "images", "--masks", "masks", "--output", "out", "--model", str(engine)]
    sidecar = engine.with_name("model.engine.json")
    good = json.loads(sidecar.read_text())
    hostile = {
        "another folder": ({**good, "onnx_file": "../other/x.onnx"}, "is not a file name in the engine's folder"),
        "absolute path": ({**good, "onnx_file": str(tmp_path / "other" / "x.onnx")}, "is not a file name"),
        "huge layers": (
            {**good, "metadata": {**good["metadata"], "pconv.layers": "30000000000"}},
            "pconv.layers must be a positive integer",
        ),
    }
    for case, (data, needle) in hostile.items():
        sidecar.write_text(json.dumps(data))
        before = snapshot(tmp_path)
        code, err = run_cli(args, monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and needle in lines[0], (case, err)
        assert snapshot(tmp_path) == before, case
    sidecar.write_text("[" * 100_000 + "]" * 100_000)
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "unreadable sidecar" in err, err
    sidecar.write_text(json.dumps(good))
    onnx_path.write_bytes(small_onnx.read_bytes() + b"\0")  # replaced beside the engine
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "has changed since the engine was built" in err, err
    onnx_path.write_bytes(small_onnx.read_bytes())
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 0 and (tmp_path / "out" / "a.png").is_file(), err


def test_triton_repo_refuses_a_model_inside_the_folder_it_replaces(small_onnx, tmp_path, monkeypatch, capsys):
    """--overwrite replaced repo/pconv with a new version folder and deleted the input model inside it."""
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["triton-repo", str(small_onnx), "--repo", "repo", "--cpu"], monkeypatch, capsys)
    assert code == 0, err
    before = snapshot(tmp_path)
    args = ["triton-repo", "repo/pconv/1/model.onnx", "--repo", "repo", "--cpu", "--version", "2", "--overwrite"]
    code, err = run_cli(args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "is inside repo/pconv" in lines[0], err
    assert snapshot(tmp_path) == before


def test_build_engine_checks_where_the_sidecar_goes_before_building(small_onnx, tmp_path, monkeypatch, capsys):
    """A folder where ENGINE.json goes was found only after the (minutes long) TensorRT build."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(small_onnx.read_bytes())
    (tmp_path / "m.engine.json").mkdir()
    before = snapshot(tmp_path)
    code, err = run_cli(["build-engine", "m.onnx", "-o", "m.engine"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "m.engine.json: is a folder" in lines[0], err
    assert snapshot(tmp_path) == before
