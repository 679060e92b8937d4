"""Training runs that crash, diverge or meet bad files: what is left on disk, and how resume decides.

Real tiny runs (3 layers, width 0.0625, 32x32 crops, pixel loss: no VGG), real files, real kills.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import pconv as run_pconv

from pconv_deploy.errors import PConvError
from pconv_deploy.model import load_checkpoint
from pconv_deploy.train.loop import TrainConfig, train

TINY = {"layers": 3, "width": 0.0625, "size": 32, "batch_size": 2, "loss": "pixel"}
CLI_TINY = "--layers 3 --width 0.0625 --size 32 --batch-size 2 --loss pixel".split()
QUIET = {"log_every": 1000, "sample_every": 1000}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A folder with one 40x40 noise image."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photo")
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    return folder


def config(data, output, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), output=Path(output), **{**TINY, "steps": 2, **QUIET, **kw})


def pconv(*args, cwd=None):
    return run_pconv(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})


def one_line_error(r, code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temp_names(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".pconv-tmp-" in p.name]


# --- 1. crash-consistent saves: a kill at every write boundary ---------------------------------------

DRIVER = textwrap.dedent(
    """
    import json, os, sys, traceback
    from pathlib import Path

    import PIL.Image, PIL.ImageDraw, PIL.ImageFont  # noqa: heavy imports before forking; no torch op runs here
    import torch
    from pconv_deploy.train.loop import TrainConfig, train
    import pconv_deploy.train.plots, pconv_deploy.progress, pconv_deploy.model.checkpoint  # noqa

    data, base, tiny = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])

    def child(k):
        calls = []

        def hook(name, real):
            def wrapper(*args, **kwargs):
                calls.append([name, os.path.basename(str(args[1])) if name == "replace" else ""])
                if len(calls) == k:
                    os._exit(77)  # as kill -9 would: no cleanup, no flush
                return real(*args, **kwargs)
            return wrapper

        os.replace, os.fsync = hook("replace", os.replace), hook("fsync", os.fsync)
        train(TrainConfig(data=data, output=base / f"k{k}", **tiny), log=lambda s: None)
        (base / "calls.json").write_text(json.dumps(calls))

    k = 0
    while True:
        k += 1
        pid = os.fork()
        if pid == 0:
            try:
                child(k)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(3)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            break
        assert code == 77, (k, code)
    """
)


def test_a_kill_at_every_write_of_a_save_resumes_from_the_last_complete_save(photo, tmp_path):
    """Kill (os._exit) at the k-th fsync or rename of a 2-step run saving every step, for every k."""
    tiny = {**TINY, "steps": 2, "log_every": 1000, "sample_every": 1}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, str(photo), str(tmp_path), json.dumps(tiny)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    calls = json.loads((tmp_path / "calls.json").read_text())
    assert sum(c == ["replace", "state.pt"] for c in calls) == 2 and len(calls) > 20
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed runs: bit-identical results need the same reduction order
    try:
        check_every_kill(photo, tmp_path, calls)
    finally:
        torch.set_num_threads(threads)


def check_every_kill(photo: Path, tmp_path: Path, calls: list) -> None:
    reference = train(config(photo, tmp_path / "ref", steps=2, sample_every=1, keep_every=1), log=lambda s: None)
    saved = {s: weights(load_checkpoint(tmp_path / "ref" / "snapshots" / f"step-{s:06d}.safetensors")) for s in (1, 2)}
    from pconv_deploy.train.state import load_state

    for k in range(1, len(calls) + 1):  # the k-th call did not happen
        run = tmp_path / f"k{k}"
        expected = sum(c == ["replace", "state.pt"] for c in calls[: k - 1])
        leftovers = temp_names(run) if run.exists() else []
        assert all(name.count(".pconv-tmp-") == 1 for name in leftovers), (k, leftovers)  # no doubled temp names
        if expected:
            model, _, step, _ = load_state(run)
            assert step == expected and same_weights(weights(model), saved[expected]), (k, calls[k - 1])
        result = train(config(photo, run, steps=2), log=lambda s: None)
        assert result.start_step == expected, (k, calls[k - 1])
        assert result.rank_digests == reference.rank_digests, k  # bit-identical to the uninterrupted run
        assert not temp_names(run), k  # the killed run's temp files were cleaned
        assert same_weights(weights(load_checkpoint(run / "last.safetensors")), saved[2]), k


def test_a_folder_without_state_is_refused_not_restarted_from_step_0(photo, tmp_path):
    run = tmp_path / "run"
    train(config(photo, run, steps=2, sample_every=1, keep_every=1), log=lambda s: None)
    (run / "state.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(PConvError) as info:
        train(config(photo, run, steps=4), log=lambda s: None)
    message = str(info.value)
    assert "\n" not in message and str(run / "state.pt") in message and "--init" in message
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing overwritten
    r = pconv("train", "--data", photo, "--output", run, "--steps", 4, *CLI_TINY)
    assert "state.pt: missing" in one_line_error(r)


def test_a_folder_without_its_checkpoint_resumes_from_state_and_rewrites_it(photo, tmp_path):
    """A kill after state.pt, before last.safetensors and the snapshot: both come back from state.pt."""
    run = tmp_path / "run"
    straight = train(config(photo, tmp_path / "straight", steps=3), log=lambda s: None)
    train(config(photo, run, steps=2, keep_every=2), log=lambda s: None)
    snapshot = run / "snapshots" / "step-000002.safetensors"
    saved = weights(load_checkpoint(snapshot))
    (run / "last.safetensors").unlink()
    snapshot.unlink()
    messages = []
    result = train(config(photo, run, steps=3, keep_every=2), log=messages.append)
    assert result.start_step == 2 and result.rank_digests == straight.rank_digests
    assert any("last.safetensors: rewritten from state.pt (step 2)" in m for m in messages)
    assert same_weights(weights(load_checkpoint(snapshot)), saved)


def test_an_older_versions_pair_resumes_when_its_steps_agree(photo, tmp_path):
    """state.pt without weights (the format before crash-consistent saves) + last.safetensors."""
    run = tmp_path / "run"
    straight = train(config(photo, tmp_path / "straight", steps=3), log=lambda s: None)
    train(config(photo, run, steps=2), log=lambda s: None)
    state = torch.load(run / "state.pt", weights_only=True)
    torch.save({k: state[k] for k in ("optimizer", "step", "settings")}, run / "state.pt")
    result = train(config(photo, run, steps=3), log=lambda s: None)
    assert result.start_step == 2 and result.rank_digests == straight.rank_digests
    torch.save({k: state[k] for k in ("optimizer", "settings")} | {"step": 1}, run / "state.pt")  # pair disagrees
    with pytest.raises(PConvError, match="last.safetensors is at step 3 but state.pt at step 1"):
        train(config(photo, run, steps=4), log=lambda s: None)


# --- 2. divergence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["inf", "nan", "-1", "0", "2"])
def test_cli_refuses_a_learning_rate_no_run_survives(photo, tmp_path, lr):
    r = pconv("train", "--data", photo, "--output", tmp_path / "run", "--steps", 1, "--lr", lr, *CLI_TINY)
    assert "--lr must be a number in (0, 1]" in one_line_error(r, code=2)
    assert not (tmp_path / "run").exists()


def overflow_the_output(run: Path) -> None:
    """Set the last layer's bias to 3e38 in the run's saved weights: finite, but the output overflows."""
    from pconv_deploy.model.checkpoint import read_metadata, save_checkpoint

    meta = read_metadata(run / "last.safetensors")
    model = load_checkpoint(run / "last.safetensors")
    with torch.no_grad():
        model.decoder[-1].pconv.conv.bias.fill_(3e38)
    save_checkpoint(model, run / "last.safetensors", extra={k: meta[k] for k in ("step", "settings")})
    state = torch.load(run / "state.pt", weights_only=True)
    if "model" in state:  # the weights resume reads
        torch.save({**state, "model": model.state_dict()}, run / "state.pt")


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_save(photo, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", photo, "--output", run, *CLI_TINY, "--sample-every", 1]
    assert pconv(*args, "--steps", 2).returncode == 0
    overflow_the_output(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "config.json"}
    line = one_line_error(pconv(*args, "--steps", 4))
    assert line.startswith("error: step 3: the loss is inf") and f"{run / 'state.pt'} keeps step 2" in line
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert {k: v for k, v in after.items() if k != "config.json"} == before  # no save, no history row
    assert json.loads(after["config.json"])["steps"] == 4


def test_non_finite_weights_after_a_step_stop_the_run(photo, tmp_path):
    """A finite loss, but an optimizer state that makes the update NaN (as a flipped bit would)."""
    from pconv_deploy.train import distributed
    from pconv_deploy.train.loop import set_up, train_step

    run_dir = tmp_path / "run"
    train(config(photo, run_dir, steps=1), log=lambda s: None)
    d = distributed.setup()
    run = set_up(config(photo, run_dir, steps=3), d, log=lambda s: None)
    param = next(iter(run.model.parameters()))
    run.optimizer.state[param]["exp_avg"].fill_(float("inf"))
    with pytest.raises(PConvError, match=r"^step 2: the optimizer step made weights NaN or infinite.*keeps step 1"):
        train_step(run, 1)


# --- 3. images: bounded before decoding; unusable files skipped and counted ------------------------


def bad_images(folder: Path) -> set[Path]:
    """Every kind of unusable file, beside which training must go on."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    Image.new("RGB", (30000, 1), (255, 0, 0)).save(folder / "thin.png")  # a few hundred bytes
    (folder / "noise.png").write_bytes(np.random.default_rng(1).bytes(500))
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(folder / "cut.jpg", quality=95)
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "text.tif").write_text("not an image")
    (folder / "bomb.png").write_bytes(png_header(10000, 10000))  # 100 MP declared in 57 bytes
    return {folder / n for n in ("thin.png", "noise.png", "empty.jpg", "cut.jpg", "text.tif", "bomb.png")}


def png_header(width: int, height: int) -> bytes:
    """A PNG with only its signature, IHDR (RGB, 8 bit) and IEND: Pillow opens it and reports the size."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_unusable_images_are_skipped_and_counted(tmp_path):
    from PIL import Image

    from pconv_deploy.train.data import CropDataset, image_paths

    bad = bad_images(tmp_path / "data")
    Image.new("RGB", (48, 40), (10, 200, 30)).save(tmp_path / "data" / "good.png")
    dataset = CropDataset(image_paths(tmp_path / "data"), 32, seed=0)
    reported = []
    dataset.on_skip = reported.append
    for step in range(6):
        images, _ = dataset.batch(step, 8)
        assert np.allclose(images * 255, np.array([10, 200, 30])[None, :, None, None], atol=0.5)
    assert set(dataset.skipped) == bad and len(reported) == len(bad)
    assert "thin.png: 30000x1 is more elongated than 16:1" in dataset.skipped[tmp_path / "data" / "thin.png"]
    assert "10000x10000 = 100,000,000 pixels, over the limit" in dataset.skipped[tmp_path / "data" / "bomb.png"]
    assert all(line.startswith(f"skipping {tmp_path / 'data'}") for line in reported)


MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from pconv_deploy.train.data import CropDataset
    from pconv_deploy.errors import PConvError
    try:
        CropDataset([Path(sys.argv[1]), Path(sys.argv[2])], 64).batch(0, 8)
    except PConvError:
        pass
    # VmHWM: ru_maxrss would carry the parent's peak over fork+exec
    status = dict(line.split(':', 1) for line in open('/proc/self/status'))
    print(int(status['VmHWM'].split()[0]) // 1024)
    """
)


def test_an_elongated_png_is_refused_on_its_header(tmp_path):
    """30000x1 (a few hundred bytes) used to be upscaled to 64 pixels high for every crop: 2.6 GB."""
    from PIL import Image

    thin = tmp_path / "thin.png"
    Image.new("RGB", (30000, 1), (255, 0, 0)).save(thin)
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (0, 0, 0)).save(good)
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(thin), str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) < 400, r.stdout  # MB; measured 54 (2,642 before the header check)


def test_cli_train_goes_on_past_unusable_images_and_reports_them(tmp_path):
    from PIL import Image

    bad = bad_images(tmp_path / "data")
    Image.new("RGB", (48, 40), (10, 200, 30)).save(tmp_path / "data" / "good.png")
    r = pconv("train", "--data", tmp_path / "data", "--output", tmp_path / "run", "--steps", 3, *CLI_TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["skipped_images"] == len(bad) and set(summary["skipped"]) == {str(p) for p in bad}
    assert f"skipped {len(bad)} unusable image(s)" in r.stdout
    assert sum(line.startswith("skipping ") for line in r.stdout.splitlines()) == len(bad)


def test_a_folder_of_only_unusable_images_is_one_line_and_leaves_nothing(tmp_path):
    bad_images(tmp_path / "data")
    r = pconv("train", "--data", tmp_path / "data", "--output", tmp_path / "run", "--steps", 1, *CLI_TINY)
    assert "none of the 6 images is usable" in one_line_error(r)
    assert not (tmp_path / "run").exists()


# --- 4. failed starts and stale temp files ----------------------------------------------------------


def test_a_run_that_fails_before_its_first_save_leaves_no_files(photo, tmp_path):
    init = tmp_path / "init.safetensors"
    train(config(photo, tmp_path / "base", steps=1), log=lambda s: None)
    model = load_checkpoint(tmp_path / "base" / "last.safetensors")
    with torch.no_grad():
        model.decoder[-1].pconv.conv.bias.fill_(3e38)  # finite, but the output overflows to inf
    from pconv_deploy.model.checkpoint import save_checkpoint

    save_checkpoint(model, init)
    (tmp_path / "existing").mkdir()
    for output in (tmp_path / "new", tmp_path / "existing"):
        r = pconv("train", "--data", photo, "--output", output, "--init", init, "--steps", 2, *CLI_TINY)
        assert one_line_error(r).startswith("error: step 1: the loss is inf; training stopped (no save was made)")
    assert not (tmp_path / "new").exists() and list((tmp_path / "existing").iterdir()) == []


def test_stale_temp_files_of_killed_runs_are_removed_on_the_next_start(photo, tmp_path):
    run = tmp_path / "run"
    train(config(photo, run, steps=1, keep_every=1), log=lambda s: None)
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = [
        run / f".state.pt.pconv-tmp-{dead}-0123abcd",
        run / f"..last.safetensors.pconv-tmp-{dead}-0123abcd.pconv-tmp-{dead}-89abcdef",  # an older version's
        run / "snapshots" / f".step-000002.safetensors.pconv-tmp-{dead}-deadbeef",
    ]
    mine = run / ".notes.tmp-1"  # not one of ours: kept
    for path in [*stale, mine]:
        path.write_bytes(b"partial")
    train(config(photo, run, steps=2), log=lambda s: None)
    assert not any(p.exists() for p in stale) and mine.exists()


# --- 5. bad options and damaged run files: one line -------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--size", "0"], "--size must be between 1 and 2048, got 0"),
        (["--size", "-32"], "--size must be between 1 and 2048"),
        (["--size", "100000"], "--size must be between 1 and 2048"),
        (["--seed", "-1"], "--seed must be between 0 and 2^63 - 1"),
        (["--seed", str(2**64)], "--seed must be between 0 and 2^63 - 1"),
        (["--loss", "vgg"], "--loss must be 'paper' or one of"),
        (["--batch-size", "1000000"], "--batch-size x --size^2 must be at most 134,217,728 pixels"),
    ],
)
def test_cli_bad_options_are_one_line_usage_errors(photo, tmp_path, option, message):
    r = pconv("train", "--data", photo, "--output", tmp_path / "run", "--steps", 1, *CLI_TINY, *option)
    assert message in one_line_error(r, code=2)
    assert not (tmp_path / "run").exists()


def test_damaged_history_lines_are_ignored_with_one_line(photo, tmp_path):
    run = tmp_path / "run"
    train(config(photo, run, steps=2), log=lambda s: None)
    lines = (run / "history.jsonl").read_bytes().splitlines()
    damaged = [lines[0], b"\xff\xfe{not utf-8", b"[1, 2]", b"5", b'{"step": "x"}', b'{"no": "step"}', lines[1], b""]
    (run / "history.jsonl").write_bytes(b"\n".join(damaged))
    r = pconv("train", "--data", photo, "--output", run, "--steps", 3, *CLI_TINY)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{run / 'history.jsonl'}: ignored 5 line(s) that are not a JSON object with an integer step" in r.stdout
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]


def damage(run: Path, how: str) -> None:
    path = run / "state.pt"
    state = torch.load(path, weights_only=True)
    first = next(iter(state["optimizer"]["state"]))
    edits = {
        "bytes": lambda: path.write_bytes(np.random.default_rng(0).bytes(4000)),
        "truncated": lambda: path.write_bytes(path.read_bytes()[:3000]),
        "list": lambda: torch.save([1, 2, 3], path),
        "step-text": lambda: torch.save({**state, "step": "two"}, path),
        "step-negative": lambda: torch.save({**state, "step": -2}, path),
        "settings": lambda: torch.save({**state, "settings": "{lr: "}, path),
        "lr": lambda: torch.save({**state, "settings": json.dumps({"lr": float("nan")})}, path),
        "no-optimizer": lambda: torch.save({k: v for k, v in state.items() if k != "optimizer"}, path),
        "config": lambda: torch.save({**state, "config": json.dumps({"layers": 99})}, path),
        "weights-shape": lambda: torch.save(
            {**state, "model": {**state["model"], "encoder.0.pconv.conv.weight": torch.zeros(2)}}, path
        ),
        "weights-nan": lambda: torch.save(
            {
                **state,
                "model": {k: v * float("nan") if v.is_floating_point() else v for k, v in state["model"].items()},
            },
            path,
        ),
        "adam-shape": lambda: torch.save(
            {
                **state,
                "optimizer": {
                    **state["optimizer"],
                    "state": {first: {**state["optimizer"]["state"][first], "exp_avg": torch.zeros(3)}},
                },
            },
            path,
        ),
        "adam-text": lambda: torch.save(
            {
                **state,
                "optimizer": {
                    **state["optimizer"],
                    "state": {first: {**state["optimizer"]["state"][first], "exp_avg_sq": "x"}},
                },
            },
            path,
        ),
        "adam-step-0": lambda: torch.save(
            {
                **state,
                "optimizer": {
                    **state["optimizer"],
                    "state": {first: {**state["optimizer"]["state"][first], "step": torch.tensor(0.0)}},
                },
            },
            path,
        ),
    }
    edits[how]()


@pytest.mark.parametrize(
    "how",
    [
        "bytes",
        "truncated",
        "list",
        "step-text",
        "step-negative",
        "settings",
        "lr",
        "no-optimizer",
        "config",
        "weights-shape",
        "weights-nan",
        "adam-shape",
        "adam-text",
        "adam-step-0",
    ],
)
def test_a_hand_edited_state_is_one_line_naming_it_and_nothing_is_written(photo, tmp_path, how):
    run = tmp_path / "run"
    train(config(photo, run, steps=2), log=lambda s: None)
    damage(run, how)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = pconv("train", "--data", photo, "--output", run, "--steps", 3, *CLI_TINY)
    assert one_line_error(r).startswith(f"error: {run / 'state.pt'}: "), how
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_state_that_is_not_a_regular_file_is_refused(photo, tmp_path):
    run = tmp_path / "run"
    train(config(photo, run, steps=1), log=lambda s: None)
    (run / "state.pt").unlink()
    os.mkfifo(run / "state.pt")  # torch.load would wait on it forever
    with pytest.raises(PConvError, match="state.pt: not a regular file"):
        train(config(photo, run, steps=2), log=lambda s: None)


# --- beyond the list ---------------------------------------------------------------------------------


def test_a_second_train_on_a_running_runs_folder_is_refused(photo, tmp_path):
    """Both would resume from the same save and write into one folder; the second is refused."""
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "pconv_deploy.cli", "train", "--data", photo, "--output", run, *CLI_TINY]
    first = subprocess.Popen([*map(str, args), "--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / "history.jsonl").is_file() or not (run / "history.jsonl").read_text():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        r = pconv("train", "--data", photo, "--output", run, "--steps", 3, *CLI_TINY)
        assert one_line_error(r) == f"error: {run}: another pconv train is running in this folder"
    finally:
        first.kill()
        first.wait()
    r = pconv("train", "--data", photo, "--output", run, "--steps", 1, *CLI_TINY)  # killed: the lock is gone
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_snapshots_file_is_refused_before_training(photo, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "snapshots").write_text("mine")
    r = pconv("train", "--data", photo, "--output", run, "--steps", 2, "--keep-every", 1, *CLI_TINY)
    assert "snapshots: not a folder" in one_line_error(r)
    assert sorted(p.name for p in run.iterdir()) == ["snapshots"]


def test_16_bit_grey_images_keep_their_tones(tmp_path):
    """Pillow's convert('RGB') clips 16-bit grey to white; training keeps the top 8 bits."""
    from PIL import Image

    from pconv_deploy.train.data import load_rgb

    tones = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40
    Image.fromarray(tones).save(tmp_path / "grey16.png")
    rgb = load_rgb(tmp_path / "grey16.png")
    assert rgb.shape == (40, 40, 3) and np.array_equal(rgb[..., 1], (tones // 256).astype(np.uint8))


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs (needs root, as on the CI machine; skipped elsewhere)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_save(photo, small_disk):
    """torch.save reports a full disk as a RuntimeError, not an OSError: it was a traceback."""
    run = small_disk / "run"
    args = ["train", "--data", photo, "--output", run, *CLI_TINY, "--sample-every", 1]
    assert pconv(*args, "--steps", 2).returncode == 0
    before = (run / "state.pt").read_bytes()
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 60 * 1024))  # room for config and history, not a save
    line = one_line_error(pconv(*args, "--steps", 4))
    assert line.startswith(f"error: {run}: cannot save step 3 (") and line.endswith("last complete save: step 2")
    assert (run / "state.pt").read_bytes() == before and not temp_names(run)
