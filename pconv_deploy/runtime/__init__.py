"""Inference without torch or OpenCV: backends, memory-bounded batching, the folder pipeline.

Embedding in a service needs numpy + onnxruntime + Pillow only::

    from pconv_deploy.runtime import Inpainter
    inpainter = Inpainter.from_path("model.onnx", device="cpu")   # or an engine, or a checkpoint (torch)
    results = inpainter.inpaint([rgb_uint8], [hole_mask])   # hole_mask: True / nonzero = HOLE
"""

from pconv_deploy.contract import STRATEGIES
from pconv_deploy.runtime.backends import Backend, OnnxRuntimeBackend, load_backend
from pconv_deploy.runtime.inpainter import Inpainter, InpaintOptions

__all__ = ["STRATEGIES", "Backend", "InpaintOptions", "Inpainter", "OnnxRuntimeBackend", "load_backend"]
