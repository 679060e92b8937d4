"""The models `pconv bench` measures: a checkpoint, our exports, the comparison variants, an engine.

Exports are kept in ``WORK/<key>/``, the key hashing the checkpoint, the export code and torch's
version: a second run on the same model reuses them (each file is written atomically).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pconv_deploy.bench.spec import CONFIGS, BenchSettings, check_sizes


def default_work_dir() -> Path:
    """Where exports are kept between runs: $XDG_CACHE_HOME/pconv-deploy/bench (~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pconv-deploy" / "bench"


def backend_unavailable(backend: str, files: dict[str, str]) -> str | None:
    """Why a configuration cannot run here, or None."""
    runtime_backend = CONFIGS[backend][0]
    if runtime_backend == "openvino" and importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'pconv-deploy[openvino]')"
    if runtime_backend == "tensorrt":
        from pconv_deploy.runtime.backends import tensorrt_unavailable

        return tensorrt_unavailable() or (None if files.get("engine") else "no engine was built")
    return None


def prepare_models(settings: BenchSettings, work: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Checkpoint + the exports the chosen configurations run + the comparison variants; file key -> path."""
    from pconv_deploy.model import save_checkpoint
    from pconv_deploy.model.checkpoint import read_config

    if settings.model is not None:
        checkpoint = settings.model
        check_sizes(settings, read_config(checkpoint).multiple)
    else:
        check_sizes(settings, 2**settings.layers)
        checkpoint = work / f"random-{settings.layers}-{settings.width}.safetensors"
        if not checkpoint.is_file():
            save_checkpoint(random_model(settings.layers, settings.width), checkpoint)
    wanted = {"ours"} | {CONFIGS[b][1] for b in settings.backends if CONFIGS[b][1].startswith("ours")}
    if "tensorrt" in settings.backends:
        wanted.add("ours_fp16")
    if settings.compare_size:
        wanted |= {"plain", "naive"}
    files = export_files(checkpoint, wanted, work, say=say)
    if "tensorrt" in settings.backends and backend_unavailable("tensorrt", {"engine": "?"}) is None:
        files["engine"] = str(build_engine(settings, Path(files["ours_fp16"]), Path(files["ours"]).parent, say=say))
    return files


def prepare_quality(settings: BenchSettings, work: Path, say: Callable[[str], None]) -> dict[str, str]:
    """The bundled model in every precision the chosen configurations run: the quality column's models."""
    from pconv_deploy.model.checkpoint import default_checkpoint

    wanted = {"ours"} | {CONFIGS[b][1] for b in settings.backends if CONFIGS[b][1].startswith("ours")}
    return export_files(default_checkpoint(), wanted, work, say=say)


def export_files(checkpoint: Path, wanted: set[str], work: Path, *, say: Callable[[str], None]) -> dict[str, str]:
    """``checkpoint`` and its ``wanted`` exports in ``work/<export key>/`` (made when missing); key -> path."""
    from pconv_deploy.model import load_checkpoint

    folder = work / export_key(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"checkpoint": str(checkpoint)}
    model = None
    for name in sorted(wanted):
        path = folder / f"{name}.onnx"
        if not path.is_file():
            model = model or load_checkpoint(checkpoint)
            export(model, name, path, say=say, checkpoint=checkpoint, work=work)
        files[name] = str(path)
    return files


CALIBRATION_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")
HELD_OUT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # never calibrate: they score the quality


def photo_folders(work: Path) -> tuple[Path, Path]:
    """scikit-image's bundled colour photos as PNG files: (calibration folder, held-out folder)."""
    import skimage.data
    from PIL import Image

    folders = (work / "photos" / "calibration", work / "photos" / "held-out")
    for folder, names in zip(folders, (CALIBRATION_PHOTOS, HELD_OUT_PHOTOS)):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not (folder / f"{name}.png").is_file():
                pixels = getattr(skimage.data, name)()
                pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # stereo_motorcycle: (left, right, disp)
                Image.fromarray(pixels).convert("RGB").save(folder / f"{name}.png")
    return folders


def export_key(checkpoint: Path) -> str:
    """Checkpoint bytes + the source of every module that shapes the exported graphs + torch's version."""
    import torch

    from pconv_deploy.contract import file_sha256
    from pconv_deploy.export import calibration, graph, onnx_export, quantize, variants
    from pconv_deploy.model import pconv, unet

    digest = hashlib.sha256(file_sha256(checkpoint).encode())
    for module in (graph, onnx_export, variants, quantize, calibration, pconv, unet):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def export(model: Any, name: str, path: Path, *, say: Callable[[str], None], checkpoint: Path, work: Path) -> None:
    """One of our exports ("ours", "ours_fp16", "ours_int8": calibrated on the calibration photos) or a
    comparison variant ("plain", "naive")."""
    import torch

    from pconv_deploy.export.calibration import calibration_set
    from pconv_deploy.export.onnx_export import ExportOptions, export_checkpoint, export_onnx
    from pconv_deploy.export.variants import export_variant

    t0 = time.perf_counter()
    torch.manual_seed(0)
    if name == "ours_int8":
        size = max(256, model.config.multiple)
        calibration = calibration_set(photo_folders(work)[0], len(CALIBRATION_PHOTOS), size)
        export_checkpoint(
            ExportOptions(checkpoint=checkpoint, output=path, precision="int8", calibration=calibration, check=False)
        )
    elif name.startswith("ours"):
        export_onnx(model, path, fp16=name == "ours_fp16")
    else:
        export_variant(model, name, path)
    say(f"exported {name} in {time.perf_counter() - t0:.0f} s")


def random_model(layers: int, width: float, seed: int = 0):  # -> PConvUNet
    """A random model whose BatchNorm statistics look trained (nonzero shifts), so folded biases are
    nonzero as in a real checkpoint: the exporter drops all-zero biases, which changes ORT's fusions."""
    import torch

    from pconv_deploy.model import PConvUNet

    torch.manual_seed(seed)
    model = PConvUNet(layers, width)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def build_engine(settings: BenchSettings, onnx_fp16: Path, work: Path, *, say: Callable[[str], None]) -> Path:
    from pconv_deploy.engines.build import build_engine as build
    from pconv_deploy.engines.build import plan_build

    lo, hi, big = min(settings.sizes), max(settings.sizes), max(settings.batch_sizes)
    plan = plan_build(
        onnx_fp16,
        work / "ours_fp16.engine",
        fp16=True,
        min_shapes=[f"1x{lo}x{lo}"],
        opt_shapes=[f"{big}x{hi}x{hi}"],
        max_shapes=[f"{big}x{hi}x{hi}"],
    )
    t0 = time.perf_counter()
    build(plan)
    say(f"built a TensorRT FP16 engine in {time.perf_counter() - t0:.0f} s")
    return plan.output
