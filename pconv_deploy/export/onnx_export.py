"""PyTorch model -> one self-contained ONNX file honouring the model contract (DESIGN.md section 2).

Contract: inputs ``image`` [N,3,H,W] float32 RGB in [0,1] and ``mask`` [N,1,H,W] float32
(1 = known); output ``inpainted`` [N,3,H,W] float32, composited and clamped. N, H, W are
dynamic; H and W are multiples of 2^layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pconv_deploy.model.unet import PConvUNet, composite


class DeployModel(nn.Module):
    """The exported graph: prediction, compositing of known pixels, clamp to [0, 1]."""

    def __init__(self, model: PConvUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.clamp(composite(image, mask, self.model(image, mask)), 0.0, 1.0)


def export_onnx(model: PConvUNet, path: str | Path, opset: int = 20) -> Path:
    """Export with dynamic batch and size; one file, no external data."""
    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mult = model.config.multiple
    # Example sizes of 2 and 3 multiples: a factor of 1 would be specialised by torch.export.
    example = (torch.rand(2, 3, 2 * mult, 3 * mult), (torch.rand(2, 1, 2 * mult, 3 * mult) > 0.5).float())
    batch, h, w = Dim("batch", min=1, max=4096), Dim("h", min=1, max=256), Dim("w", min=1, max=256)
    dims = {0: batch, 2: mult * h, 3: mult * w}
    torch.onnx.export(
        DeployModel(model.eval()),
        example,
        str(path),
        input_names=["image", "mask"],
        output_names=["inpainted"],
        dynamic_shapes={"image": dims, "mask": dims},
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    return path
