"""The runtime on numpy arrays: backends, the Inpainter API, strategies, torch-free import.

Real ONNX Runtime sessions on the session's small model (multiple 32); no mocks.
"""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data
from helpers.engines_onnx import write_valid_sidecar
from helpers.images import strokes

from pconv_deploy.errors import PConvError
from pconv_deploy.runtime import Inpainter, InpaintOptions, load_backend
from pconv_deploy.runtime.inpainter import align_window, hole_windows
from pconv_deploy.runtime.tiles import plan_windows


@pytest.fixture(scope="module")
def onnx_inpainter(small_onnx):
    return Inpainter.from_path(small_onnx, InpaintOptions(batch_size=2))


def test_onnx_backend_contract(small_onnx):
    backend = load_backend(small_onnx)
    assert backend.name == "onnxruntime-cpu"  # no GPU here; get_providers() decides, not the request
    assert backend.multiple == 32
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    out = backend.run(np.random.rand(3, 3, 64, 96).astype(np.float32), np.ones((3, 1, 64, 96), np.float32))
    assert out.shape == (3, 3, 64, 96) and out.dtype == np.float32


@pytest.mark.parametrize("strategy", ["crop", "resize", "full"])
def test_known_pixels_identical_any_shape(onnx_inpainter, strategy):
    onnx_inpainter.strategy = strategy
    coffee = skimage.data.coffee()
    rgba = np.dstack([coffee, np.linspace(0, 255, coffee.shape[1], dtype=np.uint8)[None].repeat(400, 0)])
    images = [skimage.data.chelsea(), skimage.data.camera(), rgba, skimage.data.astronaut()[:37, :45]]
    masks = [strokes(*im.shape[:2], seed=i) for i, im in enumerate(images)]
    masks.append(np.zeros((20, 30), bool))
    images.append(np.full((20, 30, 3), 7, np.uint8))  # no hole: returned unchanged
    outs = onnx_inpainter.inpaint(images, [m.astype(np.uint8) * 255 for m in masks])
    for image, mask, out in zip(images, masks, outs):
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out[~mask], image[~mask])
        if image.ndim == 3 and image.shape[2] == 4:
            assert np.array_equal(out[..., 3], image[..., 3])  # alpha kept, also inside holes
        if mask.any():
            assert (out[mask] != image[mask]).any()
    onnx_inpainter.strategy = "crop"


def test_crop_windows_cover_holes_once_and_aligned():
    hole = np.zeros((900, 1300), bool)
    hole[10:40, 10:30] = True  # touches the corner region
    hole[500:520, 1200:1290] = True
    hole[480:500, 1100:1150] = True  # near the previous one: same window
    windows = hole_windows(hole, margin=64, multiple=32)
    assert len(windows) == 2
    covered = np.zeros_like(hole, int)
    for y0, y1, x0, x1 in windows:
        covered[y0:y1, x0:x1] += 1
        assert (y1 - y0) % 32 == 0 and (x1 - x0) % 32 == 0
    assert covered.max() == 1 and covered[hole].min() == 1
    assert align_window((5, 20, 0, 10), (16, 100), 32) == (0, 16, 0, 32)  # image smaller than the multiple


def test_scattered_holes_get_overlapping_windows_each_pixel_filled_once():
    """A diagonal stroke and a dot by its window's corner: two overlapping windows, not one bigger one."""
    hole = np.zeros((1400, 1400), bool)
    for i in range(800):
        hole[100 + i : 104 + i, 100 + i : 110 + i] = True  # window about 0..1110 on both axes
    hole[1050:1070, 1050:1070] = True  # its window (986..1134) overlaps the stroke's at a corner
    plans = plan_windows(hole, margin=64, multiple=32, split=False)  # whole holes (splitting: test_tiles.py)
    assert len(plans) == 2 and any(paste is not None for _, paste in plans)
    filled = np.zeros(hole.shape, int)
    for (y0, y1, x0, x1), paste in plans:
        region = hole[y0:y1, x0:x1] if paste is None else paste
        assert not (region & ~hole[y0:y1, x0:x1]).any()  # only hole pixels are pasted
        filled[y0:y1, x0:x1] += region
    assert np.array_equal(filled, hole.astype(int))  # every hole pixel exactly once
    dot_window = next(w for w, paste in plans if paste is None or paste.sum() < 1000)
    assert (dot_window[1] - dot_window[0]) * (dot_window[3] - dot_window[2]) < 300 * 300


def test_large_photo_crop_is_bounded_and_native(onnx_inpainter):
    """> 2000 px: crop infers a small window at native size; resize keeps the network input bounded."""
    big = cv2.resize(skimage.data.astronaut(), (2600, 2100), interpolation=cv2.INTER_CUBIC)
    hole = np.zeros(big.shape[:2], bool)
    hole[1000:1040, 1500:1600] = True
    job = onnx_inpainter.plan(big, hole)
    [tile] = job.tiles
    assert not tile.resized and max(tile.rgb.shape[:2]) <= 512
    resize = Inpainter(onnx_inpainter.backend, InpaintOptions(strategy="resize", max_side=512))
    [tile] = resize.plan(big, hole).tiles
    assert tile.resized and max(tile.rgb.shape[:2]) == 512
    out = resize.inpaint([big], [hole])[0]
    assert np.array_equal(out[~hole], big[~hole]) and (out[hole] != big[hole]).any()


def test_torch_and_onnxruntime_agree(small_checkpoint, small_onnx):
    images = [skimage.data.chelsea(), skimage.data.astronaut()[:200, :333]]
    masks = [strokes(*im.shape[:2], seed=7 + i) for i, im in enumerate(images)]
    ort = Inpainter.from_path(small_onnx, backend="onnxruntime")
    ref = Inpainter.from_path(small_checkpoint, backend="auto")
    assert ref.backend.name == "torch" and ref.multiple == ort.multiple
    for a, b in zip(ort.inpaint(images, masks), ref.inpaint(images, masks)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    m = (np.random.default_rng(1).random((2, 1, 64, 64)) > 0.3).astype(np.float32)
    assert np.abs(ort.backend.run(x, m) - ref.backend.run(x, m)).max() <= 1e-4


def test_engine_falls_back_to_sidecar_onnx(small_onnx, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    (tmp_path / "model.onnx").write_bytes(small_onnx.read_bytes())
    write_valid_sidecar(engine, tmp_path / "model.onnx")
    said = []
    backend = load_backend(engine, "auto", on_fallback=said.append)
    assert backend.name == "onnxruntime-cpu"
    assert len(said) == 1 and said[0].startswith("TensorRT unavailable (") and "CPU on model.onnx" in said[0]
    with pytest.raises(PConvError, match="model.engine"):
        load_backend(engine, "tensorrt")
    (tmp_path / "model.engine.json").unlink()
    with pytest.raises(PConvError, match="no sidecar"):
        load_backend(engine, "auto", on_fallback=said.append)


def test_backend_errors_are_clear(small_onnx, small_checkpoint, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    cases = [
        (bad, "auto", "ONNX Runtime cannot load"),
        (small_onnx, "torch", "needs a checkpoint"),
        (small_onnx, "tensorrt", "build-engine"),
        (small_checkpoint, "onnxruntime", "pconv export"),
        (tmp_path / "x.bin", "auto", "no such model"),
        (small_onnx, "cuda", "unknown backend"),
    ]
    for path, backend, message in cases:
        with pytest.raises(PConvError, match=message):
            load_backend(path, backend)
    with pytest.raises(PConvError, match="mask 0 has shape"):
        Inpainter.from_path(small_onnx).inpaint([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 9), bool)])
    with pytest.raises(PConvError, match="uint8"):
        Inpainter.from_path(small_onnx).inpaint([np.zeros((8, 8, 3), np.uint16)], [np.ones((8, 8), bool)])


def test_device_choice(small_onnx, small_checkpoint, tmp_path):
    """cpu | cuda | cuda:N for every backend; a CUDA request never ends up on the CPU."""
    from pconv_deploy.runtime.backends import OnnxRuntimeBackend, parse_device

    assert parse_device("auto") == ("auto", None) and parse_device("cuda:1") == ("cuda", 1)
    for bad in ("gpu", "cpu:0", "cuda:x", "cuda:-1"):
        with pytest.raises(PConvError, match="unknown device"):
            parse_device(bad)
    cpu = OnnxRuntimeBackend(small_onnx, "cpu", threads=1)
    assert cpu.name == "onnxruntime-cpu" and cpu.session.get_providers() == ["CPUExecutionProvider"]
    assert cpu.session.get_session_options().intra_op_num_threads == 1
    for path in (small_onnx, small_checkpoint):
        try:
            backend = load_backend(path, device="cuda:1")
        except PConvError as e:  # no second GPU (none at all here): one line naming the request
            assert "cuda:1" in str(e) and "\n" not in str(e)
        else:  # a machine with two GPUs: it must really run on the second one
            assert backend.name in ("onnxruntime-cuda", "torch") and "cpu" not in getattr(backend, "device", "cuda:1")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    (tmp_path / "model.onnx").write_bytes(small_onnx.read_bytes())
    write_valid_sidecar(engine, tmp_path / "model.onnx")
    said = []
    backend = load_backend(engine, "auto", device="cpu", on_fallback=said.append)
    assert backend.name == "onnxruntime-cpu" and "--device cpu was requested" in said[0]


ARENA_PROBE = """
import resource, sys
import numpy as np
from pconv_deploy.runtime import load_backend
from pconv_deploy.runtime.memory import current_rss

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

rng = np.random.default_rng(0)
inputs = {n: (rng.random((1, 3, n, n), dtype=np.float32), np.ones((1, 1, n, n), np.float32)) for n in (256, 768)}
backend = load_backend(sys.argv[1], "onnxruntime", "cpu")
call = lambda size: backend.run(*inputs[size])  # the same input arrays every time: only the backend allocates
for _ in range(2):
    call(768)
before = faults()
for _ in range(3):
    call(768)
kept = faults() - before
held = current_rss()
call(256)  # another shape: its buffers and the 768 ones go back at its end
given_back = held - current_rss()
backend.keep_bytes = 0  # the Inpainter's budget leaves nothing to keep: every call gives back
call(768)
before = faults()
for _ in range(3):
    call(768)
print(kept, given_back, faults() - before)
"""


def test_onnxruntime_keeps_buffers_between_equal_calls_only(small_onnx):
    """Equal calls reuse the CPU arena (no page faults); a call of another shape gives its memory back.

    Without the arena every call maps and zeroes its activations again (~30,000 faults a call here,
    45,000-95,000 for the full-width model at 512x512: about a fifth of the folder job's time). In a
    fresh process: the RSS of a long pytest run hides what one backend gives back.
    """
    probe = subprocess.run([sys.executable, "-c", ARENA_PROBE, str(small_onnx)], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    kept, given_back, faulted = map(int, probe.stdout.split())
    assert given_back > 50 * 2**20
    assert kept < 2000 < faulted  # ~0 against ~8,000 a call (the output's copy may fault a little)


def test_inpainter_keeps_within_its_memory_budget(small_onnx):
    from pconv_deploy.runtime.inpainter import KEEP_SHARE

    backend = load_backend(small_onnx, "onnxruntime", "cpu")
    inpainter = Inpainter(backend, InpaintOptions(memory_limit=8 * 2**30))
    assert backend.keep_bytes == inpainter.inference_budget // KEEP_SHARE > 0
    Inpainter(backend, InpaintOptions(memory_limit=None))
    assert backend.keep_bytes is None


def test_pad_batch_is_numpy_symmetric_padding(small_onnx):
    """pad_batch writes in place what np.pad's "symmetric" mode gives (holes zeroed first), bit for bit."""
    from pconv_deploy.runtime.tiles import Tile

    inpainter = Inpainter(load_backend(small_onnx, "onnxruntime", "cpu"))
    rng = np.random.default_rng(5)
    for h, w in ((64, 96), (50, 70), (33, 64)):
        tiles = [Tile((0, h, 0, w), rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.random((h, w)) > 0.7)]
        ph, pw = tiles[0].padded_shape(inpainter.multiple)
        image, mask = inpainter.pad_batch(tiles, (ph, pw))
        known = ~tiles[0].hole
        pad = ((0, ph - h), (0, pw - w))
        expected = np.pad(tiles[0].rgb * known[..., None], (*pad, (0, 0)), mode="symmetric")
        assert np.array_equal(image[0], expected.transpose(2, 0, 1) * np.float32(1 / 255))
        assert np.array_equal(mask[0, 0], np.pad(known, pad, mode="symmetric").astype(np.float32))


def test_fills_are_returned_in_tile_order_and_finish_takes_one_per_tile(small_onnx):
    """run_tiles returns each tile's own fill even when batching regroups tiles of several sizes."""
    from pconv_deploy.runtime.tiles import Job

    inpainter = Inpainter(load_backend(small_onnx, "onnxruntime", "cpu"), InpaintOptions(batch_size=2, strategy="full"))
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((64, 64), (96, 64), (64, 64), (96, 64))]
    holes = [rng.random(image.shape[:2]) > 0.8 for image in images]
    jobs = [inpainter.plan(image, hole) for image, hole in zip(images, holes)]
    tiles = [tile for job in jobs for tile in job.tiles]  # sizes a, b, a, b: two batches, each regrouped
    fills = inpainter.run_tiles(tiles)
    for job, fill in zip(jobs, fills):
        [alone] = inpainter.run_tiles(job.tiles)
        assert np.array_equal(fill, alone)
    with pytest.raises(ValueError, match="1 fills for 0 tiles"):
        Job(images[0], holes[0]).finish(fills[:1])
