"""The OpenVINO backend against the real OpenVINO: parity with ONNX Runtime per precision, clear refusals.

Reference: ONNX Runtime on the same file (FP32: every parity check of the project uses it). Thresholds:
f32 max |diff| <= 2e-5 (two float32 engines, different summation orders); bf16 and f16 PSNR >= 40 dB
against FP32 (8 and 11 mantissa bits in every activation: 70-80 dB measured on the demo model);
INT8 file: OpenVINO vs ONNX Runtime on the same Q/DQ file PSNR >= 35 dB (both quantise activations,
with their own rounding), and against the FP32 file PSNR >= 30 dB.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.cli import infer_args, pconv

pytest.importorskip("openvino")

from pconv_deploy.errors import PConvError  # noqa: E402
from pconv_deploy.runtime import Inpainter, InpaintOptions  # noqa: E402
from pconv_deploy.runtime.backends import load_backend  # noqa: E402
from pconv_deploy.runtime.openvino_backend import OpenVinoBackend, onnx_metadata  # noqa: E402


def inputs(n: int = 2, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random((n, 3, size, size), dtype=np.float32)
    mask = np.ones((n, 1, size, size), np.float32)
    mask[:, :, 10:40, 12:50] = 0.0
    mask[1:, :, 45:60, 3:20] = 0.0
    return image, mask


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(1 / max(mse, 1e-20))


@pytest.fixture(scope="module")
def small_int8(small_onnx, tmp_path_factory):
    """The small model as a static INT8 Q/DQ file (ONNX Runtime's quantizer, feature convolutions only)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(small_onnx))
    weights = {t.name: t for t in proto.graph.initializer}
    feature_convs = [
        n.name
        for n in proto.graph.node
        if n.op_type == "Conv" and weights.get(n.input[1]) and weights[n.input[1]].dims[1] > 4
    ]
    assert len(feature_convs) >= 4

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([dict(zip(("image", "mask"), inputs(1, 64, seed))) for seed in range(4)])

        def get_next(self):
            return next(self.batches, None)

    out = tmp_path_factory.mktemp("int8") / "small-int8.onnx"
    quantize_static(
        str(small_onnx),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        nodes_to_quantize=feature_convs,
    )
    return out


def test_f32_matches_onnxruntime_and_says_what_runs(small_onnx):
    image, mask = inputs()
    reference = load_backend(small_onnx, "onnxruntime", "cpu").run(image, mask)
    backend = load_backend(small_onnx, "openvino", "cpu", threads=1)
    assert isinstance(backend, OpenVinoBackend)
    assert backend.name == "openvino-cpu-f32" and backend.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # the default is f32 although OpenVINO's own default on a BF16 CPU would be bf16
    assert str(backend.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert backend.multiple == 32 and backend.metadata["pconv.layers"] == "5"
    out = backend.run(image, mask)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.abs(out - reference).max() <= 2e-5
    assert np.array_equal(out * mask, image * mask)  # known pixels composited back exactly
    out2 = backend.run(*inputs(1, 96, seed=3))  # a new shape on the same compiled model
    assert out2.shape == (1, 3, 96, 96)


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_reduced_precision_is_asked_for_and_close(small_onnx, precision):
    import openvino as ov

    from pconv_deploy.runtime.openvino_backend import cpu_capabilities

    if {"bf16": "BF16", "f16": "FP16"}[precision] not in cpu_capabilities(ov.Core()):
        pytest.skip(f"this CPU has no {precision} in OpenVINO")
    image, mask = inputs()
    reference = load_backend(small_onnx, "onnxruntime", "cpu").run(image, mask)
    backend = load_backend(small_onnx, "auto", "cpu", precision=precision)  # asking for it picks OpenVINO
    assert backend.name == f"openvino-cpu-{precision}"
    out = backend.run(image, mask)
    assert 40 <= psnr(out, reference) < 140  # close, and really computed in lower precision
    # f16 rounds even the graph's own compositing (known pixels within f16's step); the runtime pastes
    # only hole pixels, so through the Inpainter known pixels stay byte-identical in every precision
    assert np.abs(out * mask - image * mask).max() <= 2**-10
    rgb = (image[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    hole = mask[0, 0] == 0
    [filled] = Inpainter(backend, InpaintOptions(strategy="full")).inpaint([rgb], [hole])
    assert np.array_equal(filled[~hole], rgb[~hole]) and not np.array_equal(filled[hole], rgb[hole])


def test_int8_file_on_openvino(small_onnx, small_int8):
    assert onnx_metadata(small_int8)["pconv.layers"] == "5"  # the quantizer kept the contract
    image, mask = inputs()
    fp32 = load_backend(small_onnx, "onnxruntime", "cpu").run(image, mask)
    ort_int8 = load_backend(small_int8, "onnxruntime", "cpu").run(image, mask)
    ov_int8 = load_backend(small_int8, "openvino", "cpu").run(image, mask)
    assert psnr(ov_int8, ort_int8) >= 35
    assert psnr(ov_int8, fp32) >= 30 and psnr(ov_int8, fp32) < 100  # quantised, not silently FP32
    assert np.array_equal(ov_int8 * mask, image * mask)


def test_auto_never_lowers_precision(small_onnx, tmp_path):
    """auto on the CPU: an FP32 file stays FP32 on ONNX Runtime; an INT8 file goes to OpenVINO (f32 hint)."""
    assert load_backend(small_onnx, "auto", "cpu").name == "onnxruntime-cpu"
    int8 = tmp_path / "int8.onnx"
    int8.write_bytes(with_metadata(small_onnx.read_bytes(), "pconv.precision", "int8"))
    backend = load_backend(int8, "auto", "cpu")
    assert backend.name == "openvino-cpu-f32"


def with_metadata(model: bytes, key: str, value: str) -> bytes:
    import onnx

    proto = onnx.load_from_string(model)
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
    return proto.SerializeToString()


def test_onnx_metadata_matches_onnx(small_onnx, tmp_path):
    import onnx

    expected = {p.key: p.value for p in onnx.load(str(small_onnx)).metadata_props}
    assert onnx_metadata(small_onnx) == expected and "pconv.multiple" in expected
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(small_onnx.read_bytes()[:1000])
    assert onnx_metadata(broken) == {}


def test_refusals_are_one_line(small_onnx, small_checkpoint):
    with pytest.raises(PConvError, match="needs --backend openvino"):
        load_backend(small_onnx, "onnxruntime", "cpu", precision="bf16")
    with pytest.raises(PConvError, match="runs on the CPU only"):
        load_backend(small_onnx, "openvino", "cuda")
    with pytest.raises(PConvError, match="unknown inference precision"):
        load_backend(small_onnx, "openvino", "cpu", precision="int4")
    with pytest.raises(PConvError, match="not a checkpoint"):
        load_backend(small_checkpoint, "auto", "cpu", precision="bf16")


def run_child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_unsupported_precision_and_missing_openvino(small_onnx):
    # oneDNN limited to AVX2: OpenVINO no longer offers FP16 on this CPU, and says so
    limited = run_child(
        f"""
        from pconv_deploy.errors import PConvError
        from pconv_deploy.runtime.backends import load_backend
        try:
            load_backend({str(small_onnx)!r}, "openvino", "cpu", precision="f16")
        except PConvError as e:
            print("ERROR", e)
        """,
        {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    )
    assert limited.returncode == 0, limited.stderr
    assert "cannot run f16 in OpenVINO" in limited.stdout and "--inference-precision f32" in limited.stdout
    missing = run_child(
        f"""
        import sys
        sys.modules["openvino"] = None
        from pconv_deploy.errors import PConvError
        from pconv_deploy.runtime.backends import load_backend
        assert load_backend({str(small_onnx)!r}, "auto", "cpu").name == "onnxruntime-cpu"
        try:
            load_backend({str(small_onnx)!r}, "openvino", "cpu")
        except PConvError as e:
            print("ERROR", e)
        """
    )
    assert missing.returncode == 0, missing.stderr
    [line] = missing.stdout.splitlines()
    assert "needs OpenVINO" in line and "pconv-deploy[openvino]" in line


def test_torch_free_openvino_inpainting(small_onnx):
    r = run_child(
        f"""
        import sys
        sys.modules["torch"] = None
        import numpy as np
        from pconv_deploy.runtime import Inpainter
        inpainter = Inpainter.from_path({str(small_onnx)!r}, backend="openvino", device="cpu", precision="bf16")
        image = np.full((70, 90, 3), 100, np.uint8)
        hole = np.zeros((70, 90), bool)
        hole[20:30, 10:50] = True
        [out] = inpainter.inpaint([image], [hole])
        assert (out[~hole] == 100).all()
        print(inpainter.backend.name, sorted(m for m in sys.modules if m.startswith("torch") and sys.modules[m]))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["openvino-cpu-bf16", "[]"]


def test_inpainter_full_strategy_on_openvino(small_onnx):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    hole = np.zeros((80, 100), bool)
    hole[30:50, 20:70] = True
    full = InpaintOptions(strategy="full")
    ours = Inpainter.from_path(small_onnx, full, backend="openvino", device="cpu").inpaint([image], [hole])
    ort = Inpainter.from_path(small_onnx, full, backend="onnxruntime", device="cpu").inpaint([image], [hole])
    assert np.abs(ours[0].astype(int) - ort[0]).max() <= 1 and np.array_equal(ours[0][~hole], image[~hole])


def test_pconv_infer_options(small_onnx, tmp_path):
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(images / "a.png")
    hole = np.zeros((64, 80), np.uint8)
    hole[20:40, 10:30] = 255
    Image.fromarray(hole).save(masks / "a.png")

    def infer(*extra: str) -> subprocess.CompletedProcess:
        return pconv(*infer_args(images, masks, tmp_path / "out", "--model", small_onnx, "--overwrite", *extra))

    r = infer("--backend", "openvino", "--inference-precision", "bf16", "--threads", "1")
    assert r.returncode == 0 and "1 inpainted" in r.stdout and "openvino-cpu-bf16" in r.stdout, r.stderr
    r = infer("--backend", "onnxruntime", "--inference-precision", "bf16")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "needs --backend openvino" in r.stderr
    r = infer("--inference-precision", "int8")
    assert r.returncode == 2
