"""Every word of the vocabulary (contract.py) reaches every layer that offers it: a word added to a list
must work in the Python API, not only appear in `--help` (tests/test_structure.py checks the CLI's choices)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pconv_deploy import contract
from pconv_deploy.errors import PConvError


@pytest.mark.parametrize("backend", contract.BACKENDS)
def test_every_backend_is_known_to_load_backend(backend, small_onnx, small_checkpoint):
    from pconv_deploy.runtime import load_backend

    model = small_checkpoint if backend == "torch" else small_onnx
    try:
        load_backend(model, backend, "cpu")
    except PConvError as e:  # not installed or no GPU here: said so, never "unknown"
        assert "unknown backend" not in str(e), e


@pytest.mark.parametrize("precision", contract.INFERENCE_PRECISIONS)
def test_every_inference_precision_is_known_to_load_backend(precision, small_onnx):
    from pconv_deploy.runtime import load_backend

    try:
        load_backend(small_onnx, "openvino", "cpu", precision=precision)
    except PConvError as e:  # a CPU without bf16/f16, or OpenVINO missing: said so, never "unknown"
        assert "unknown inference precision" not in str(e), e


@pytest.mark.parametrize("strategy", contract.STRATEGIES)
def test_every_strategy_inpaints(strategy, small_onnx):
    from pconv_deploy.runtime import Inpainter, InpaintOptions, load_backend

    inpainter = Inpainter(
        load_backend(small_onnx, "onnxruntime", "cpu"), InpaintOptions(strategy=strategy, memory_limit=None)
    )
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    hole = np.zeros((70, 90), bool)  # the API's masks: True = hole
    hole[20:30, 40:60] = True
    (out,) = inpainter.inpaint([image], [hole])
    assert out.shape == image.shape and np.array_equal(out[~hole], image[~hole]) and not np.array_equal(out, image)


@pytest.mark.parametrize("convention", contract.MASK_CONVENTIONS)
def test_every_mask_convention_reads_a_mask(convention, tmp_path):
    from pconv_deploy.runtime.images import read_mask

    pixels = np.zeros((8, 8), np.uint8)
    pixels[2:4, 2:4] = 255
    Image.fromarray(pixels).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", convention)
    assert set(np.unique(mask)) == {0, 1}


@pytest.mark.parametrize("output_format", contract.OUTPUT_FORMATS)
def test_every_output_format_is_an_output_setting(output_format):
    from pconv_deploy.runtime.outputs import OutputSettings

    assert OutputSettings(output_format).format == output_format


@pytest.mark.parametrize("precision", contract.PRECISIONS)
def test_every_precision_exports_checks_and_builds(precision, tmp_path):
    from pconv_deploy.engines.build import check_precision
    from pconv_deploy.export import ExportOptions
    from pconv_deploy.export.options import resolve_precision
    from pconv_deploy.export.parity import MAX_HOLE_L1_INCREASE, MIN_PSNR

    assert resolve_precision(precision) == precision  # pconv export --precision
    calibration = tmp_path if precision == "int8" else None  # a folder: the options read nothing
    paths = {"checkpoint": tmp_path / "m.safetensors", "output": tmp_path / "m.onnx"}
    assert ExportOptions(**paths, precision=precision, calibration=calibration).precision == precision  # the API
    assert precision == "fp32" or (precision in MIN_PSNR and precision in MAX_HOLE_L1_INCREASE)  # pconv check
    if precision != "int8":  # an INT8 graph is also checked for TensorRT's kind of Q/DQ (test_quantize.py)
        assert check_precision(tmp_path / "m.onnx", precision, precision, fp16=False) == precision  # build-engine


def test_every_import_format_has_a_reader():
    from pconv_deploy.model.importers import SOURCE_FORMATS

    assert tuple(SOURCE_FORMATS) == contract.IMPORT_FORMATS


def test_every_image_suffix_is_written_and_read(tmp_path):
    from pconv_deploy.runtime.outputs import SUFFIX_FORMATS

    assert set(SUFFIX_FORMATS) == set(contract.IMAGE_SUFFIXES)
