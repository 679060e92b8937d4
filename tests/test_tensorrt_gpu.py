"""TensorRT on a real GPU: build small FP32 and FP16 engines, run them, compare with ONNX Runtime.

Marked ``gpu`` and skipped, with the reason, unless `tensorrt_readiness()` finds TensorRT, the
CUDA bindings and a CUDA device (and, to build, the full ``tensorrt``). On this project's CPU
machines only the harness tests run: the same Polygraphy comparison with ONNX Runtime in place of
TensorRT, which must pass for the model against itself and must FAIL for a deliberately wrong
runner (`Shifted`) just beyond each threshold, so a passing GPU comparison means something.

Accuracy bar (docs/design.md section 6): FP32 engine within 1e-3 of ONNX Runtime FP32 (TF32 is
off in Polygraphy's config); FP16 engine PSNR >= 40 dB against ONNX Runtime FP32.
"""

import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from polygraphy.backend.base import BaseRunner

from pconv_deploy.engines.trt_api import tensorrt_readiness

READINESS = tensorrt_readiness()
CAN_BUILD = READINESS.usable and importlib.util.find_spec("tensorrt") is not None
SHAPES = {"min_shapes": ["1x64x64"], "opt_shapes": ["2x128x128"], "max_shapes": ["4x256x256"]}  # multiple 32
FP32_ATOL, FP16_PSNR = 1e-3, 40.0


def feeds(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Photo-like images and binary masks (1 = known): blocks, all-hole, no-hole, sparse single pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for n, h, w, kind in [
        (1, 64, 64, "blocks"),
        (2, 128, 96, "blocks"),
        (1, 64, 64, "all-hole"),
        (2, 128, 128, "none"),
        (4, 256, 256, "sparse"),
    ]:
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        image = np.stack([np.sin(6 * x + c) * 0.4 + 0.5 + 0.1 * y for c in range(3)])[None].repeat(n, 0)
        image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)
        mask = np.ones((n, 1, h, w), np.float32)
        if kind == "blocks":
            for b in range(n):
                top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
                mask[b, :, top : top + h // 3, left : left + w // 3] = 0
        elif kind == "all-hole":
            mask[:] = 0
        elif kind == "sparse":
            mask[:] = (rng.random(mask.shape) > 0.97).astype(np.float32)
        out.append({"image": image, "mask": mask})
    return out


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def compare(runner, fp32_onnx, precision: str) -> bool:
    """Polygraphy: `runner` against ONNX Runtime CPU on the FP32 graph, over `feeds()`."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, PsnrCompareFunc, SimpleCompareFunc

    reference = OnnxrtRunner(SessionFromOnnx(str(fp32_onnx), providers=["cpu"]), name="onnxrt-fp32")
    results = Comparator.run([runner, reference], data_loader=feeds())
    if precision == "fp16":
        func = PsnrCompareFunc(psnr_threshold=FP16_PSNR)
    else:
        func = SimpleCompareFunc(atol=FP32_ATOL, rtol=FP32_ATOL)
    return bool(Comparator.compare_accuracy(results, compare_func=func))


class Shifted(BaseRunner):
    """A deliberately wrong runner: another runner's outputs plus a constant (a biased engine)."""

    def __init__(self, inner, shift: float):
        super().__init__(name=f"{inner.name}+{shift:g}")
        self.inner, self.shift = inner, shift

    def activate_impl(self):
        self.inner.activate()

    def get_input_metadata_impl(self):
        return self.inner.get_input_metadata(use_numpy_dtypes=False)

    def infer_impl(self, feed_dict):
        outputs = self.inner.infer(feed_dict)
        self.inference_time = self.inner.last_inference_time()
        return {name: out + np.float32(self.shift) for name, out in outputs.items()}

    def deactivate_impl(self):
        self.inner.deactivate()


# Shifts inside and outside each bar: FP32 |a-b| <= 1e-3 + 1e-3 |b| (|b| <= 1); FP16 Polygraphy PSNR
# 20 log10(peak of the output) - 10 log10(shift^2) against 40 dB: 0.001 passes, 0.02 (<= 34 dB) fails.
HARNESS_CASES = [
    ("fp32", 0.0, True),
    ("fp32", 2e-4, True),
    ("fp32", 3e-3, False),
    ("fp16", 0.0, True),
    ("fp16", 0.001, True),
    ("fp16", 0.02, False),
]


@pytest.mark.parametrize(("precision", "shift", "passes"), HARNESS_CASES)
def test_comparison_harness_on_cpu_passes_and_fails(small_onnx, precision, shift, passes):
    """Runs everywhere: the comparison used below, with ONNX Runtime standing in for TensorRT."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    runner = OnnxrtRunner(SessionFromOnnx(str(small_onnx), providers=["cpu"]), name=f"stand-in-{precision}")
    assert compare(Shifted(runner, shift) if shift else runner, small_onnx, precision) is passes


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory, request):
    """Copies of the session's FP32 and FP16 exports in one folder (engines go beside them); GPU machines only."""
    if not READINESS.usable:
        pytest.skip(f"no CUDA GPU usable by TensorRT: {READINESS.reason}")
    if not CAN_BUILD:
        pytest.skip(f"building engines needs the full tensorrt; found {READINESS.module} {READINESS.version}")
    folder = tmp_path_factory.mktemp("gpu-onnx")
    models = {}
    for precision, fixture in (("fp32", "small_onnx"), ("fp16", "small_onnx_fp16")):
        models[precision] = folder / f"small-{precision}.onnx"
        models[precision].write_bytes(request.getfixturevalue(fixture).read_bytes())
    return models


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def engine(request, onnx_models, tmp_path_factory):
    from pconv_deploy.engines.build import build_engine, plan_build

    precision, folder = request.param, onnx_models["fp32"].parent
    plan = plan_build(
        onnx_models[precision],
        folder / f"small-{precision}.engine",
        fp16=precision == "fp16",
        timing_cache=folder / "timing.cache",
        **SHAPES,
    )
    build_engine(plan)
    return precision, plan.output


@pytest.mark.gpu
def test_sidecar_describes_the_build(engine, onnx_models):
    import tensorrt as trt
    from helpers.reference import sha256_of as file_sha256

    from pconv_deploy.engines.profiles import ShapeRange
    from pconv_deploy.engines.sidecar import Sidecar
    from pconv_deploy.engines.trt_api import use_device

    precision, path = engine
    sidecar = Sidecar.read(path)
    gpu = use_device(0)
    assert (sidecar.precision, sidecar.tensorrt_version) == (precision, trt.__version__)
    assert (sidecar.gpu_name, sidecar.compute_capability) == (gpu.name, gpu.compute_capability)
    assert sidecar.onnx_file == f"small-{precision}.onnx"
    assert sidecar.onnx_sha256 == file_sha256(onnx_models[precision])
    assert sidecar.metadata["pconv.precision"] == precision
    assert sidecar.profiles == (ShapeRange((1, 64, 64), (2, 128, 128), (4, 256, 256)),)
    assert json.loads(path.with_name(path.name + ".json").read_text())["profiles"][0]["image"] == [
        [1, 3, 64, 64],
        [2, 3, 128, 128],
        [4, 3, 256, 256],
    ]
    assert (path.parent / "timing.cache").stat().st_size > 0


@pytest.mark.gpu
def test_polygraphy_trt_runner_matches_onnxruntime(engine, onnx_models):
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    precision, path = engine
    runner = TrtRunner(EngineFromBytes(path.read_bytes()), name=f"trt-{precision}")
    assert compare(runner, onnx_models["fp32"], precision)
    wrong = Shifted(
        TrtRunner(EngineFromBytes(path.read_bytes()), name=f"trt-{precision}"), 3e-3 if precision == "fp32" else 0.02
    )
    assert not compare(wrong, onnx_models["fp32"], precision)  # the same comparison catches a biased engine


@pytest.mark.gpu
def test_backend_matches_onnxruntime_with_several_streams(engine, onnx_models):
    from pconv_deploy.runtime.backends import OnnxRuntimeBackend
    from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend

    precision, path = engine
    backend, reference = TensorRTBackend(path, streams=2), OnnxRuntimeBackend(onnx_models["fp32"], device="cpu")
    assert (backend.name, backend.multiple, backend.max_batch) == ("tensorrt", 32, 4)
    cases = feeds(1)
    cases.append({k: np.concatenate([v, v]) for k, v in cases[-1].items()})  # batch 8 > max 4: split by the backend
    with ThreadPoolExecutor(3) as pool:
        outputs = list(pool.map(lambda f: backend.run(f["image"], f["mask"]), cases))
    for feed, out in zip(cases, outputs):
        expected = reference.run(feed["image"], feed["mask"])
        assert out.shape == expected.shape and out.dtype == np.float32 and np.isfinite(out).all()
        if precision == "fp32":
            np.testing.assert_allclose(out, expected, atol=FP32_ATOL)
        else:
            assert psnr(expected, out) >= FP16_PSNR
        known = feed["mask"].astype(bool).repeat(3, 1)
        np.testing.assert_array_equal(out[known], feed["image"][known])  # composited inside the graph
    backend.close()


@pytest.mark.gpu
def test_mismatched_sidecar_is_refused(engine, tmp_path):
    from pconv_deploy.engines.sidecar import SidecarError
    from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend

    _, path = engine
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    data = json.loads(path.with_name(path.name + ".json").read_text())
    data["gpu_name"] = "Some Other GPU"
    (tmp_path / f"{path.name}.json").write_text(json.dumps(data))
    with pytest.raises(SidecarError, match="this GPU is"):
        TensorRTBackend(copy)


@pytest.mark.gpu
def test_cli_build_engine_fp16(onnx_models, tmp_path):
    engine = tmp_path / "cli.engine"
    args = ["build-engine", str(onnx_models["fp16"]), "-o", str(engine), "--fp16", "--min-shape", "1x64x64"]
    args += ["--opt-shape", "1x128x128", "--max-shape", "2x256x256", "--workspace", "2"]
    r = subprocess.run([sys.executable, "-m", "pconv_deploy.cli", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert engine.stat().st_size > 0 and json.loads((tmp_path / "cli.engine.json").read_text())["precision"] == "fp16"
    assert "profile 0: min 1x64x64, opt 1x128x128, max 2x256x256" in r.stdout
