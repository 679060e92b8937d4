"""Checkpoints as safetensors with the architecture in the header: a file alone rebuilds its model.

safetensors holds tensors and string metadata only, so loading an untrusted checkpoint
never runs code (no pickle).
"""

from __future__ import annotations

import json
import math
import re
import stat
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
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), **(extra or {})}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:  # unique per-process temp name, fsynced, then renamed; removed on failure
            save_file(tensors, str(tmp), metadata=metadata)
    except (OSError, SafetensorError) as e:  # a full disk, /proc, a read-only mount: one line, nothing left
        raise CheckpointError(f"{path}: cannot write ({_write_failure(e)})") from None
    return path


def _write_failure(e: Exception) -> str:
    """The OS's reason, without the temp file's name (safetensors wraps it as 'I/O error: ... (os error N)')."""
    if isinstance(e, OSError):
        return e.strerror or first_line(e)
    found = re.search(r"I/O error: (.*?) \(os error", str(e))
    return found.group(1) if found else first_line(e)


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` is no checkpoint file to open (None for a regular file); a FIFO or device is never opened."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "no such checkpoint file" if not path.is_symlink() else "a dangling symbolic link"
    if stat.S_ISDIR(mode):
        return "is a folder, not a checkpoint file"
    return None if stat.S_ISREG(mode) else "not a regular file (a device, FIFO or socket)"


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header strings of one of our checkpoints, read without its tensors (``pconv info`` shows the origin)."""
    path = Path(path)
    if problem := not_a_regular_file(path):
        raise CheckpointError(f"{path}: {problem}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path}: not a pconv-deploy checkpoint (no '{FORMAT}' header)")
    return metadata


def read_config(path: str | Path) -> PConvConfig:
    """The architecture in a checkpoint's header: enough to rebuild the model before loading any tensor."""
    metadata = read_metadata(path)
    try:
        config = json.loads(metadata["config"])
    except (ValueError, RecursionError) as e:  # RecursionError: a deeply nested header
        raise CheckpointError(f"{path}: invalid model config in header (not JSON: {first_line(e)})") from None
    try:
        return PConvConfig(**_config_fields(config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config in header ({first_line(e)})") from None


CONFIG_TYPES = {"layers": (int,), "width": (int, float), "input_norm": (str,), "output_activation": (str,)}


def _config_fields(config: object) -> dict:
    """The header's config, with each field's JSON type checked (``layers: 3.5`` or ``true`` is no level count)."""
    if not isinstance(config, dict):
        raise ValueError(f"expected an object with {', '.join(CONFIG_TYPES)}, got {type(config).__name__}")
    for key, value in config.items():
        types = CONFIG_TYPES.get(key)
        if types is None:
            raise ValueError(f"unknown field {key!r}")
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{key} must be {'an integer' if types == (int,) else types[-1].__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be finite, got {value!r}")
    return config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> PConvUNet:
    """Rebuild the model from the header and load its tensors; returned in eval mode."""
    config = read_config(path)
    model = PConvUNet(**config.to_dict())
    expected = model.state_dict()
    state = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                state[key] = _checked(f.get_tensor(key), expected.get(key), key, path=path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable tensors ({first_line(e)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else first_line(e)  # torch puts the offending key on the last line
        raise CheckpointError(f"{path}: tensors do not match the config in its header ({detail})") from None
    return model.to(device).eval()


def _checked(value: torch.Tensor, expected: torch.Tensor | None, key: str, *, path: Path) -> torch.Tensor:
    """A tensor of the model's dtype kind (load_state_dict would silently cast bool, int or complex weights)."""
    if expected is None or tuple(value.shape) != tuple(expected.shape):
        return value  # load_state_dict names the unexpected key or the shape
    if expected.is_floating_point() != value.is_floating_point() or value.is_complex():
        dtype = str(value.dtype).replace("torch.", "")
        raise CheckpointError(f"{path}: {key} is {dtype}, expected {str(expected.dtype).replace('torch.', '')}")
    return value
