"""The training loop on real (tiny) models: it learns, resumes exactly, fine-tunes, runs under torchrun."""

import copy
import hashlib
import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import pconv

from pconv_deploy.errors import PConvError
from pconv_deploy.model import load_checkpoint
from pconv_deploy.train.data import CropDataset, image_paths
from pconv_deploy.train.loop import TrainConfig, train
from pconv_deploy.train.losses import InpaintingLoss
from pconv_deploy.train.vgg import load_vgg16

TINY = {"layers": 4, "width": 0.125, "size": 32, "batch_size": 2}  # H, W multiples of 16


@pytest.fixture(scope="module")
def one_image(tmp_path_factory) -> Path:
    """A folder holding one 32x32 photo: every crop is the whole image, so a tiny model can fit it."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("one")
    photo = Image.open(str(importlib.resources.files("skimage.data") / "astronaut.png")).convert("RGB")
    photo.resize((32, 32), Image.BICUBIC).save(folder / "astronaut.png")
    return folder


def config(data, output, **kw) -> TrainConfig:
    values = {**TINY, "steps": 4, "log_every": 1000, "sample_every": 1000, **kw}
    return TrainConfig(data=str(data), output=Path(output), **values)


def fixed_batch_loss(model, data: Path) -> float:
    """The loss on held-out crops and masks (a stream training never draws), batch statistics."""
    model = copy.deepcopy(model).train()
    images, masks = CropDataset(image_paths(data), 32, seed=123).batch(0, 8, stream=7)
    x, m = torch.from_numpy(images), torch.from_numpy(masks)
    with torch.no_grad():
        return InpaintingLoss(load_vgg16())(x, m, model(x, m))["total"].item()


def test_loss_goes_down_on_one_image(one_image, tmp_path):
    from pconv_deploy.model import PConvUNet

    torch.manual_seed(0)  # the loop's own initialisation for seed 0
    before = fixed_batch_loss(PConvUNet(4, 0.125), one_image)
    result = train(config(one_image, tmp_path / "run", steps=20, lr=3e-3), log=lambda s: None)
    after = fixed_batch_loss(load_checkpoint(tmp_path / "run" / "last.safetensors"), one_image)
    assert after < 0.7 * before, (before, after)  # measured: about 0.5
    totals = [r["total"] for r in result.history]
    assert len(totals) == 20 and np.mean(totals[-5:]) < 0.75 * np.mean(totals[:5])
    assert set(result.history[0]) >= {"valid", "hole", "perceptual", "style_out", "style_comp", "tv", "total"}


def test_resume_continues_with_identical_losses(one_image, tmp_path):
    straight = train(config(one_image, tmp_path / "a", steps=5), log=lambda s: None)
    first = train(config(one_image, tmp_path / "b", steps=3), log=lambda s: None)
    assert first.step == 3
    messages = []
    resumed = train(config(one_image, tmp_path / "b", steps=5), log=messages.append)
    assert resumed.start_step == 3 and any("resuming" in m for m in messages)
    history = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 1, 2, 3, 4]
    for a, b in zip(straight.history, history):
        for key in ("total", "valid", "hole", "perceptual", "style_out", "style_comp", "tv"):
            assert a[key] == b[key], (a["step"], key)
    assert straight.rank_digests == resumed.rank_digests  # bit-identical weights at step 5


def test_run_directory_outputs(one_image, tmp_path):
    from PIL import Image

    train(config(one_image, tmp_path / "run", steps=2, sample_every=2), log=lambda s: None)
    run = tmp_path / "run"
    assert {"last.safetensors", "state.pt", "history.jsonl", "loss_curve.png", "samples.png"} <= {
        p.name for p in run.iterdir()
    }
    grid = Image.open(run / "samples.png")
    assert grid.size == (4 * 32, 4 * 32)  # input | mask | output | truth, 4 rows
    assert Image.open(run / "loss_curve.png").size[0] > 100
    state = torch.load(run / "state.pt", weights_only=True)  # loads without unpickling code
    assert state["step"] == 2 and state["optimizer"]["param_groups"][0]["lr"] == 2e-4


def test_finetune_freezes_encoder_batchnorm_only(one_image, tmp_path):
    train(config(one_image, tmp_path / "base", steps=2), log=lambda s: None)
    base = tmp_path / "base" / "last.safetensors"
    train(config(one_image, tmp_path / "ft", steps=2, finetune=True, init=base), log=lambda s: None)
    before, after = (
        load_checkpoint(base).state_dict(),
        load_checkpoint(tmp_path / "ft" / "last.safetensors").state_dict(),
    )
    enc_bn = [k for k in before if k.startswith("encoder.") and ".bn." in k]
    dec_bn = [k for k in before if k.startswith("decoder.") and ".bn." in k and "num_batches" not in k]
    assert enc_bn and dec_bn
    for k in enc_bn:  # affine and running statistics untouched
        assert torch.equal(before[k], after[k]), k
    assert all(not torch.equal(before[k], after[k]) for k in dec_bn)
    assert not torch.equal(before["encoder.1.pconv.conv.weight"], after["encoder.1.pconv.conv.weight"])
    state = torch.load(tmp_path / "ft" / "state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == 5e-5  # the paper's fine-tuning rate by default
    with pytest.raises(PConvError, match="trained with finetune=True"):
        train(config(one_image, tmp_path / "ft", steps=3, finetune=False), log=lambda s: None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 1}, "trained with seed=0, not seed=1"),
        ({"size": 64}, "trained with size=32, not size=64"),
        ({"batch_size": 3}, "trained with batch_size=2, not batch_size=3"),
        ({"layers": 5}, "trained with layers=4, not layers=5"),
        ({"width": 0.25}, "trained with width=0.125, not width=0.25"),
    ],
)
def test_resume_refuses_a_different_recipe(one_image, tmp_path, change, message):
    run = tmp_path / "run"
    train(config(one_image, run, steps=2, lr=1e-3), log=lambda s: None)
    before = (run / "state.pt").read_bytes()
    with pytest.raises(PConvError, match=message) as info:
        train(config(one_image, run, steps=3, lr=1e-3, **change), log=lambda s: None)
    assert "\n" not in str(info.value) and str(run) in str(info.value)
    assert (run / "state.pt").read_bytes() == before  # nothing written


def test_resume_keeps_the_runs_lr_and_says_when_lr_overrides(one_image, tmp_path):
    run = tmp_path / "run"
    train(config(one_image, run, steps=2, lr=1e-3), log=lambda s: None)
    messages = []
    train(config(one_image, run, steps=3), log=messages.append)  # no --lr: the run's own 1e-3, not 2e-4
    assert torch.load(run / "state.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert not any("overrides" in m for m in messages)
    train(config(one_image, run, steps=4, lr=3e-4), log=messages.append)
    assert any(m.startswith("--lr 0.0003 overrides this run's learning rate 0.001") for m in messages)
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == 3e-4 and json.loads(state["settings"])["lr"] == 3e-4


def test_pixel_loss_trains_without_vgg_and_keeps_snapshots(one_image, tmp_path):
    run = tmp_path / "run"
    result = train(config(one_image, run, steps=4, loss="pixel", keep_every=2, sample_every=2), log=lambda s: None)
    assert all(r["perceptual"] == 0 and r["style_out"] == 0 and r["hole"] > 0 for r in result.history)
    for row in result.history:  # total = L_valid + 6 L_hole + 0.1 L_tv
        assert row["total"] == pytest.approx(row["valid"] + 6 * row["hole"] + 0.1 * row["tv"], rel=1e-5)
    snapshots = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snapshots == ["step-000002.safetensors", "step-000004.safetensors"]
    assert not [p for p in run.rglob("*") if ".pconv-tmp-" in p.name]  # atomic writes leave no temp files
    last, snap = load_checkpoint(run / "last.safetensors"), load_checkpoint(run / "snapshots" / snapshots[-1])
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), snap.state_dict().values()))


def test_cli_rejects_batch_one_at_the_bottleneck_size(one_image, tmp_path):
    args = "train --layers 4 --width 0.125 --size 16 --batch-size 1 --steps 1".split()
    r = pconv(*args, "--data", str(one_image), "--output", str(tmp_path / "r"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "batch size 1 at 16x16" in lines[0] and lines[0].startswith("error: --size 16")
    r = pconv("train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r"))
    expected = f"error: {tmp_path / 'nowhere'}: no such directory (use --data DIR or --data builtin)"
    assert r.returncode == 1 and r.stderr.strip() == expected


def parameter_sha256(checkpoint: Path) -> str:
    h = hashlib.sha256()
    for p in load_checkpoint(checkpoint).parameters():
        h.update(p.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_torchrun_two_processes_agree_on_weights(one_image, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    args = "train --layers 4 --width 0.125 --size 32 --batch-size 2 --steps 3 --sample-every 3".split()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "pconv_deploy.cli", *args]
    r = subprocess.run(
        [*cmd, "--data", str(one_image), "--output", str(tmp_path / "ddp")], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    digests = summary["rank_parameter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert digests[0] == parameter_sha256(tmp_path / "ddp" / "last.safetensors")  # what rank 0 saved
    # Rank 1's batches mattered: one process alone with the same seed ends elsewhere.
    single = train(config(one_image, tmp_path / "single", steps=3), log=lambda s: None)
    assert single.rank_digests[0] != digests[0]


def test_hole_mean_loss_ignores_the_raw_output_on_known_pixels(one_image, tmp_path):
    """--loss hole-mean: 1.5 L_hole_mean + 0.1 L_tv; compositing drops known pixels, so must the loss."""
    from pconv_deploy.train.loop import PIXEL_WEIGHTS

    loss = InpaintingLoss(None, PIXEL_WEIGHTS["hole-mean"])
    gen = torch.Generator().manual_seed(0)
    image, raw = torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)
    mask = (torch.rand(2, 1, 32, 32, generator=gen) > 0.3).float()
    other = raw + mask * torch.rand(2, 3, 32, 32, generator=gen)  # changed on known pixels only
    assert loss(image, mask, raw)["total"] == pytest.approx(loss(image, mask, other)["total"].item(), abs=1e-7)
    assert loss(image, mask, raw)["total"] != pytest.approx(loss(image, mask, raw + (1 - mask) * 0.1)["total"].item())
    result = train(config(one_image, tmp_path / "run", steps=2, loss="hole-mean"), log=lambda s: None)
    for row in result.history:
        assert row["valid"] > 0  # still reported
        assert row["total"] == pytest.approx(1.5 * row["hole_mean"] + 0.1 * row["tv"], rel=1e-5)
