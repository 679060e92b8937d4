"""Shared fixtures: one small checkpoint and its ONNX export per test session (exports take ~10-20 s)."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SMALL = {"layers": 5, "width": 0.125, "input_norm": "imagenet"}  # H, W multiples of 32


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A small model with non-trivial BatchNorm statistics, saved as a checkpoint."""
    import torch

    from pconv_deploy.model import PConvUNet, save_checkpoint

    torch.manual_seed(0)
    model = PConvUNet(**SMALL).train()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64), (torch.rand(4, 1, 64, 64) > 0.4).float())
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("ckpt") / "small.safetensors")


@pytest.fixture(scope="session")
def small_onnx(small_checkpoint, tmp_path_factory) -> Path:
    """The small checkpoint exported to FP32 ONNX."""
    from pconv_deploy.export.onnx_export import export_onnx
    from pconv_deploy.model import load_checkpoint

    return export_onnx(load_checkpoint(small_checkpoint), tmp_path_factory.mktemp("onnx") / "small.onnx")


@pytest.fixture(scope="session")
def small_onnx_fp16(small_checkpoint, tmp_path_factory) -> Path:
    """The small checkpoint exported to FP16 ONNX (float32 I/O), parity-checked on the way."""
    from pconv_deploy.export import ExportOptions, export_checkpoint

    output = tmp_path_factory.mktemp("onnx16") / "small-fp16.onnx"
    return export_checkpoint(ExportOptions(checkpoint=small_checkpoint, output=output, precision="fp16")).path


@pytest.fixture(scope="session")
def serve_env() -> Path:
    """The serve interpreter; `make serve-env` makes it if it is missing (skip only if that fails)."""
    from pconv_deploy.errors import PConvError
    from pconv_deploy.serving import launcher

    try:
        return launcher.serve_python()
    except PConvError as missing:
        root = launcher.checkout_root()
        if root is None:
            pytest.skip(f"no serve environment ({missing}) and no checkout to run `make serve-env` in")
        make = subprocess.run(["make", "-C", str(root), "serve-env"], capture_output=True, text=True, timeout=900)
        try:
            return launcher.serve_python()
        except PConvError:
            pytest.skip(f"no serve environment ({missing}) and `make serve-env` failed: {make.stderr[-300:]}")


@pytest.fixture
def recorded_build(monkeypatch):
    """The build with TensorRT's engine builder autospec'd from Polygraphy's loader and a simulated GPU."""
    from types import SimpleNamespace
    from unittest import mock

    import polygraphy.backend.trt as ptrt
    import tensorrt_lean
    from helpers.engines_real_api import SimulatedGpu
    from polygraphy.exception import PolygraphyException

    from pconv_deploy.engines import trt_api

    sim = SimulatedGpu()
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_lean)  # import_tensorrt(builder=True) finds "tensorrt"
    monkeypatch.setattr(trt_api, "cuda_runtime", lambda: sim.cuda)
    state = {"fail": False}

    def engine_bytes(network, config=None, save_timing_cache=None):
        if state["fail"]:
            return lambda: (_ for _ in ()).throw(PolygraphyException("Could not parse the network\nmore detail"))
        return lambda: b"serialised engine"

    loader = mock.create_autospec(ptrt.EngineBytesFromNetwork, side_effect=engine_bytes)
    monkeypatch.setattr(ptrt, "EngineBytesFromNetwork", loader)
    return SimpleNamespace(loader=loader, state=state, gpu=sim)
