"""The folder job survives kills and streams: real subprocesses, real signals, real memory."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import skimage.data
from helpers.cli import infer_command
from helpers.images import save, save_mask
from PIL import Image


def make_folder(root, count, size, mask_hole):
    """``count`` crops of the astronaut (h, w = size) and one shared mask file."""
    images = root / "images"
    images.mkdir(parents=True)
    photo = skimage.data.astronaut()
    h, w = size
    for i in range(count):
        y, x = (i * 7) % (512 - h), (i * 13) % (512 - w)
        save(images / f"img{i:03d}.png", photo[y : y + h, x : x + w])
    hole = np.zeros((h, w), bool)
    hole[mask_hole] = True
    return images, save_mask(root / "mask.png", hole)


def wait_for_outputs(proc, out, count, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.is_dir() and sum(not p.name.startswith(".") for p in out.iterdir()) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"infer ended before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("no outputs appeared")


def check_complete_pngs(out, size):
    """Every visible output decodes completely at the right size: no partial file under a final name."""
    state = {}
    for p in out.iterdir():
        if not p.name.startswith("."):
            with Image.open(p) as im:
                im.load()
                assert im.size == size[::-1], p.name
            st = p.stat()
            state[p.name] = (st.st_ino, st.st_mtime_ns)
    return state


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_without_redoing(sig, small_onnx, tmp_path):
    # Enough work (~seconds) that the signal lands mid-run even on a fast, idle machine.
    count, size = 150, (256, 320)
    images, mask = make_folder(tmp_path, count, size, np.s_[40:90, 50:120])
    out = tmp_path / "out"
    cmd = infer_command(
        images, mask, out, "--model", small_onnx, "--batch-size", 1, "--workers", 1, "--strategy", "full"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_outputs(proc, out, 3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:  # a clean stop: message, exit 130, its own temp files gone
        assert proc.returncode == 130, stderr
        assert "interrupted:" in stderr and "run the same command again to finish" in stderr
        assert "Traceback" not in stderr
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    else:
        assert proc.returncode == -signal.SIGKILL
    finished = check_complete_pngs(out, size)
    assert 3 <= len(finished) < count

    r = subprocess.run([*cmd, "--report", tmp_path / "report.json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{count - len(finished)} inpainted, {len(finished)} skipped" in r.stdout
    after = check_complete_pngs(out, size)
    assert len(after) == count
    assert {name: after[name] for name in finished} == finished  # finished files were not rewritten
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # stray temps cleaned
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["ok"] == count - len(finished) and report["totals"]["skipped"] == len(finished)


PEAK_RSS = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB, of the one child
"""


def test_peak_memory_flat_over_folder_size(small_onnx, tmp_path):
    """Streaming: 300 images peak within a few MB of 50 images (holding them all would add over 30 MB)."""
    peaks = {}
    for count in (50, 300):
        images, mask = make_folder(tmp_path / str(count), count, (80, 96), np.s_[20:50, 30:70])
        cmd = infer_command(images, mask, tmp_path / f"out{count}", "--model", small_onnx, "--batch-size", 4)
        r = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        peaks[count] = int(r.stdout.strip()) / 1024  # MiB
        assert len(os.listdir(tmp_path / f"out{count}")) == count
    growth = peaks[300] - peaks[50]
    assert growth < 12, f"peak RSS {peaks[50]:.0f} MiB at 50 images, {peaks[300]:.0f} MiB at 300"


def test_padding_and_cropping_overlap_the_backend_call(small_onnx, tmp_path):
    """Only the backend call runs on the inference thread: the next batch is padded while a call runs.

    Before, padding and cropping ran on the inference thread between calls (~30 ms an image at 512x512,
    a tenth of a BF16 or INT8 call): the model waited for them.
    """
    import threading

    from pconv_deploy.runtime import Inpainter, InpaintOptions, load_backend
    from pconv_deploy.runtime.pipeline import FolderOptions, run_folder

    images, mask = make_folder(tmp_path, 8, (256, 256), (slice(40, 90), slice(30, 120)))
    backend = load_backend(small_onnx, "onnxruntime", "cpu")
    calls, pads = [], []
    real_run = backend.run

    def timed_run(image, mask):
        start = time.perf_counter()
        out = real_run(image, mask)
        calls.append((start, time.perf_counter(), threading.current_thread().name))
        return out

    backend.run = timed_run
    inpainter = Inpainter(backend, InpaintOptions(batch_size=1, strategy="full"))
    real_pad = inpainter.pad_batch

    def timed_pad(tiles, shape):
        pads.append((time.perf_counter(), threading.current_thread().name))
        return real_pad(tiles, shape)

    inpainter.pad_batch = timed_pad
    report = run_folder(inpainter, FolderOptions(images=images, masks=mask, output=tmp_path / "out"), progress=False)
    assert report.count("ok") == 8 and len(calls) == 8 and len(pads) == 8
    assert all(name.startswith("pconv-infer") for *_, name in calls)
    assert not any(name.startswith("pconv-infer") for _, name in pads)
    overlapped = sum(any(start < t < end for t, _ in pads) for start, end, _ in calls)
    assert overlapped >= 1  # (usually all but the last call)
