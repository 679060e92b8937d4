"""The runtime-only install: `pconv infer` with an ONNX model runs with neither torch nor OpenCV.

`pip install pconv-deploy` (no extras) brings numpy, onnxruntime, Pillow, typer and rich. In the
child process below any `import torch` or `import cv2` fails, as it would in such an environment.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
from helpers.cli import infer_args
from PIL import Image

BLOCKED = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
sys.modules["cv2"] = None
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED + textwrap.dedent(code)], capture_output=True, text=True)


def test_pconv_infer_without_torch_and_cv2(small_onnx, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        "rgb": rng.integers(0, 256, (150, 220, 3), dtype=np.uint8),
        "grey": rng.integers(0, 256, (96, 130), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (120, 100, 4), dtype=np.uint8),
    }
    holes = {}
    for name, array in arrays.items():
        Image.fromarray(array).save(images / f"{name}.png")
        hole = np.zeros(array.shape[:2], bool)
        hole[20:50, 30:70] = True
        hole[70:80, 5:90] = True
        holes[name] = hole
        Image.fromarray(hole.astype(np.uint8) * 255).save(masks / f"{name}.png")
    for strategy in ("crop", "resize", "full"):
        out, report = tmp_path / f"out-{strategy}", tmp_path / f"{strategy}.json"
        args = infer_args(
            images, masks, out, "--model", small_onnx, "--strategy", strategy, "--max-side", 64, "--report", report
        )
        r = run_blocked(
            f"""
            sys.argv = ["pconv", *{[str(a) for a in args]!r}]
            from pconv_deploy.cli import main
            try:
                main()
            except SystemExit as e:
                assert not e.code, e.code
            loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "cv2"))
            assert not loaded, loaded
            print("clean")
            """
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == "clean" and "3 inpainted, 0 skipped" in r.stdout, r.stdout
        assert json.loads(report.read_text())["totals"]["ok"] == 3
        for name, array in arrays.items():
            result = np.asarray(Image.open(out / f"{name}.png"))
            hole = holes[name]
            assert result.shape == array.shape
            assert np.array_equal(result[~hole], array[~hole])
            assert (result[hole] != array[hole]).any()


def test_inpainter_without_torch_and_cv2(small_onnx):
    r = run_blocked(
        f"""
        import numpy as np
        from pconv_deploy.runtime import Inpainter
        inpainter = Inpainter.from_path({str(small_onnx)!r}, device="cpu", threads=1)
        image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
        hole = np.zeros((70, 90), bool); hole[20:40, 30:60] = True
        for strategy in ("crop", "resize", "full"):
            inpainter.strategy = strategy
            out = inpainter.inpaint([image], [hole])[0]
            assert np.array_equal(out[~hole], image[~hole]) and (out[hole] != image[hole]).any()
        print("ok", inpainter.backend.name)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok onnxruntime-cpu"
