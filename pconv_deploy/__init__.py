"""pconv-deploy: partial-convolution inpainting from PyTorch to ONNX, TensorRT and batched inference.

The torch-side names below are imported lazily, so ``import pconv_deploy.runtime``
works in an environment without torch (services embed only the runtime).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "PartialConv2d": "pconv_deploy.model",
    "PConvUNet": "pconv_deploy.model",
    "PConvConfig": "pconv_deploy.model",
    "composite": "pconv_deploy.model",
    "save_checkpoint": "pconv_deploy.model",
    "load_checkpoint": "pconv_deploy.model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pconv_deploy' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
