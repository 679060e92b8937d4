"""Checkpoints as safetensors with the architecture in the header: a file alone rebuilds its model.

safetensors holds tensors and string metadata only, so loading an untrusted checkpoint
never runs code (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pconv_deploy.errors import PConvError, first_line
from pconv_deploy.files import atomic_write
from pconv_deploy.model.unet import PConvConfig, PConvUNet

FORMAT = "pconv-deploy.checkpoint/1"


class CheckpointError(PConvError, ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def default_checkpoint() -> Path:
    """The checkpoint bundled with the package (used when no --checkpoint is given)."""
    path = Path(__file__).resolve().parent.parent / "assets" / "pconv-demo.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: no bundled model in this installation; pass --checkpoint")
    return path


def save_checkpoint(model: PConvUNet, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write weights and BatchNorm statistics plus the config (and ``extra`` header strings) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), **(extra or {})}
    with atomic_write(path) as tmp:  # unique per-process temp name, fsynced, then renamed
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header strings of one of our checkpoints, read without its tensors (``pconv info`` shows the origin)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path}: not a pconv-deploy checkpoint (no '{FORMAT}' header)")
    return metadata


def read_config(path: str | Path) -> PConvConfig:
    """The architecture in a checkpoint's header: enough to rebuild the model before loading any tensor."""
    metadata = read_metadata(path)
    try:
        return PConvConfig(**json.loads(metadata["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config in header ({e})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> PConvUNet:
    """Rebuild the model from the header and load its tensors; returned in eval mode."""
    config = read_config(path)
    model = PConvUNet(**config.to_dict())
    state = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        for key in f.keys():
            state[key] = f.get_tensor(key)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else first_line(e)  # torch puts the offending key on the last line
        raise CheckpointError(f"{path}: tensors do not match the config in its header ({detail})") from None
    return model.to(device).eval()
