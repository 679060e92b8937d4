"""PyTorch side: the partial convolution, the U-Net, checkpoints (ours, and imports of other projects')."""

from pconv_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from pconv_deploy.model.importers import import_checkpoint
from pconv_deploy.model.pconv import PartialConv2d
from pconv_deploy.model.unet import PConvConfig, PConvUNet, composite, feature_macs, parameter_count

__all__ = [
    "PConvConfig",
    "PConvUNet",
    "PartialConv2d",
    "composite",
    "feature_macs",
    "import_checkpoint",
    "load_checkpoint",
    "parameter_count",
    "save_checkpoint",
]
