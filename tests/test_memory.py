"""Memory bounded by design: the estimate bounds a real peak, batches fit the budget, a too-large file fails alone."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.images import CoordinateBackend, coordinate_image, holes
from PIL import Image

from pconv_deploy.errors import PConvError
from pconv_deploy.runtime import Inpainter, InpaintOptions
from pconv_deploy.runtime.memory import (
    CALL_OVERHEAD,
    INFERENCE_SHARE,
    activation_bytes_per_pixel,
    current_rss,
    parse_memory,
)
from pconv_deploy.runtime.pipeline import FolderOptions, run_folder

MEASURE = """
import sys, numpy as np
from pconv_deploy.runtime.backends import OnnxRuntimeBackend
backend = OnnxRuntimeBackend(sys.argv[1], "cpu")
n, h, w = map(int, sys.argv[2:5])
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
x = np.random.rand(n, 3, h, w).astype(np.float32)
m = (np.random.rand(n, 1, h, w) > 0.1).astype(np.float32)
backend.run(x[:1, :, :64, :64].copy(), m[:1, :, :64, :64].copy())  # first-call set-up is not the call's memory
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
before = status("VmRSS:")
backend.run(x, m)
print(status("VmHWM:") - before)
"""


def test_parse_memory():
    assert parse_memory("6GiB") == 6 * 2**30
    assert parse_memory("6G") == 6 * 10**9
    assert parse_memory("512 MiB") == 512 * 2**20
    assert parse_memory("1.5gib") == int(1.5 * 2**30)
    assert parse_memory("4000000000") == 4 * 10**9
    for bad in ("", "6 parsecs", "-1G", "0", "GiB"):
        with pytest.raises(PConvError, match="invalid memory size"):
            parse_memory(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak reset via /proc/self/clear_refs is Linux-only")
@pytest.mark.parametrize("shape", [(1, 1024, 1024), (2, 512, 768)])
def test_estimate_bounds_a_measured_call(small_onnx, shape):
    """One ONNX Runtime call's measured peak stays under the estimate, and the estimate is not wildly loose."""
    n, h, w = shape
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(small_onnx), *map(str, shape)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    measured = int(r.stdout.strip())
    metadata = {"pconv.layers": "5", "pconv.width": "0.125", "pconv.precision": "fp32"}  # the test model's
    estimate = CALL_OVERHEAD + activation_bytes_per_pixel(metadata) * n * h * w
    assert measured <= estimate, f"measured {measured / 2**20:.0f} MiB > estimate {estimate / 2**20:.0f} MiB"
    assert measured >= estimate / 3, f"estimate {estimate / 2**20:.0f} MiB, measured only {measured / 2**20:.0f} MiB"


def test_estimate_grows_with_width_and_assumes_the_worst_without_metadata():
    sizes = [activation_bytes_per_pixel({"pconv.layers": "7", "pconv.width": str(w)}) for w in (0.125, 0.25, 0.5, 1)]
    assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[0]
    assert activation_bytes_per_pixel({}) == activation_bytes_per_pixel({"pconv.layers": "8", "pconv.width": "1"})


class CountingBackend(CoordinateBackend):
    """The coordinate backend, recording each call's batch size; 235 MB a 224x256 image (RSS jitter is far less)."""

    bytes_per_pixel = 4096

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def run(self, image, mask):
        self.batches.append(len(image))
        return super().run(image, mask)


def limit_for_pixels(pixels: int, backend) -> int:
    """A whole-process limit whose call budget holds ``pixels`` padded pixels, and a third of an image more."""
    call = CALL_OVERHEAD + backend.bytes_per_pixel * (pixels + 224 * 256 // 3)
    return current_rss() + int(call / INFERENCE_SHARE)


def test_batches_are_formed_against_the_budget():
    backend = CountingBackend()
    images = [coordinate_image(10 * k) for k in range(6)]
    masks = [holes(k) for k in range(6)]
    unbounded = Inpainter(backend, InpaintOptions(batch_size=4, strategy="full", memory_limit=None))
    unbounded.inpaint(images, masks)
    assert backend.batches == [4, 2]
    backend.batches.clear()
    limit = limit_for_pixels(2 * 224 * 256, backend)
    two_images = Inpainter(backend, InpaintOptions(batch_size=4, strategy="full", memory_limit=limit))
    two_images.inpaint(images, masks)
    assert backend.batches == [2, 2, 2]


def test_too_large_alone_fails_that_file_and_the_rest_runs(tmp_path):
    backend = CountingBackend()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    big = np.tile(coordinate_image(0), (2, 2, 1))  # 448 x 512: 4x the pixels of the others
    Image.fromarray(big).save(tmp_path / "images" / "big.png")
    Image.fromarray(np.tile(holes(0), (2, 2)).astype(np.uint8) * 255).save(tmp_path / "masks" / "big.png")
    for k in range(2):
        Image.fromarray(coordinate_image(k)).save(tmp_path / "images" / f"small{k}.png")
        Image.fromarray(holes(k).astype(np.uint8) * 255).save(tmp_path / "masks" / f"small{k}.png")
    limit = limit_for_pixels(2 * 224 * 256, backend)
    inpainter = Inpainter(backend, InpaintOptions(strategy="full", memory_limit=limit))
    folder = FolderOptions(images=tmp_path / "images", masks=tmp_path / "masks", output=tmp_path / "out")
    report = run_folder(inpainter, folder, progress=False)
    by_name = {f.image.rsplit("/", 1)[1]: f for f in report.files}
    assert by_name["small0.png"].status == by_name["small1.png"].status == "ok"
    assert by_name["big.png"].status == "failed"
    error = by_name["big.png"].error
    assert error.startswith("inference at 512x448 needs about ") and "--memory-limit" in error and "\n" not in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small0.png", "small1.png"]
    assert report.memory_limit_bytes == limit and report.peak_memory_bytes > 0


def test_report_has_peak_memory_and_limit(small_onnx, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(coordinate_image(0)).save(images / "a.png")
    Image.fromarray(holes(0).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    code = textwrap.dedent(
        f"""
        import sys
        sys.argv = ["pconv", "infer", "--images", {str(images)!r}, "--masks", {str(tmp_path / "mask.png")!r},
                    "--output", {str(tmp_path / "out")!r}, "--model", {str(small_onnx)!r},
                    "--memory-limit", "3GiB", "--report", {str(tmp_path / "r.json")!r}]
        from pconv_deploy.cli import main
        main()
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["memory_limit_bytes"] == 3 * 2**30
    assert 20 * 2**20 < report["peak_memory_bytes"] < 3 * 2**30
    assert report["bytes_per_pixel"] == activation_bytes_per_pixel({"pconv.layers": "5", "pconv.width": "0.125"})
