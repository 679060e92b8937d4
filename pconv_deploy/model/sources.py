"""Reading another project's checkpoint file without trusting it (``pconv import-checkpoint``'s first step).

Loading never runs code: ``torch.load(weights_only=True)`` (or safetensors); a pickle that asks for
anything else is refused with the name it asked for. Memory is bounded by what the file holds, not by
what it declares:

- a torch zip's records are checked from its central directory before torch reads any: uncompressed
  sizes against ``MAX_SOURCE_BYTES`` and compressed records against ``MAX_DEFLATE_RATIO`` (``torch.save``
  stores records uncompressed, so a deflated 4 GiB record in a 4 MB file is refused before torch would
  allocate it); archives of stored records are memory-mapped, so optimizer states are never read;
- every tensor's declaration is checked before any arithmetic touches it (``check_tensors``): dense
  (not sparse, meta or quantized), at most ``MAX_TENSOR_ELEMENTS``, and no more elements than its storage
  holds (a stride-0 view of one float declaring 2^31 elements would cost 8 GiB once computed on).
"""

from __future__ import annotations

import stat
import warnings
import zipfile
from pathlib import Path

import torch

from pconv_deploy.errors import PConvError, first_line

MAX_SOURCE_BYTES = 8 << 30  # a torch zip's records, uncompressed, all together (the paper's model + Adam: ~0.5 GB)
MAX_DEFLATE_RATIO = 16  # float weights deflate by ~1.1x; a record that inflates more is not torch.save's
MAX_TENSOR_ELEMENTS = 1 << 28  # the largest layer of the paper's network at width 4 has 75M weights

# Training-log objects that mmengine (mmagic 1.x) pickles beside the weights ('message_hub': HistoryBuffer
# objects holding numpy arrays). They are loaded as inert placeholders, never as their real classes (which
# are neither imported nor needed), so those checkpoints import; any other name is refused.
INERT_GLOBALS = frozenset(
    {
        "mmengine.logging.history_buffer.HistoryBuffer",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
    }
)


class ImportCheckpointError(PConvError, ValueError):
    """A source checkpoint that cannot be imported; the message names the file and the problem."""


class _Inert:
    """Stands in for a training-log object: takes any constructor arguments and state, keeps nothing."""

    def __new__(cls, *args: object, **kwargs: object) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _not_regular(path: Path) -> str | None:
    """Why ``path`` cannot be read as a checkpoint file (None when it is a regular file); never opens it."""
    try:
        mode = path.stat().st_mode  # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        return f"dangling symbolic link (to {path.readlink()})" if path.is_symlink() else "no such file"
    except OSError as e:
        return f"cannot read ({e.strerror or first_line(e)})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a checkpoint file"
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None
        return f"not a regular file ({kind or 'a socket or other special file'})"
    return None


def read_source(path: str | Path) -> dict:
    """The checkpoint's top-level object, loaded without running code (weights-only unpickler or safetensors)."""
    path = Path(path)
    if problem := _not_regular(path):
        raise ImportCheckpointError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ImportCheckpointError(f"{path}: cannot read ({e.strerror or first_line(e)})") from None
    if not head:
        raise ImportCheckpointError(f"{path}: empty file (0 bytes)")
    if head[8:9] == b"{":  # safetensors: 8-byte little-endian header length, then a JSON header
        return _read_safetensors(path)
    mmap = _check_zip_records(path) if head[:4] == b"PK\x03\x04" else False
    try:
        obj = _torch_load(path, (), mmap)
    except Exception as e:  # pickle, zip and torch errors have no common base class
        asked = _unsafe_globals(path) if "GLOBAL" in str(e) else []
        if not asked or not set(asked) <= INERT_GLOBALS:
            raise ImportCheckpointError(_load_failure(path, e, asked)) from None
        try:  # only mmengine's training logs: load them as inert placeholders
            obj = _torch_load(path, asked, mmap)
        except Exception as e2:
            raise ImportCheckpointError(_load_failure(path, e2, asked)) from None
    if not isinstance(obj, dict):
        raise ImportCheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict or state dict")
    return obj


def _check_zip_records(path: Path) -> bool:
    """Refuse records that would inflate beyond the limits; True when every record is stored (mmap-able)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False  # not readable as a zip: torch.load names the problem
    total = inflated = deflated = 0
    for info in infos:
        total += info.file_size
        if info.compress_type != zipfile.ZIP_STORED:
            inflated, deflated = inflated + info.file_size, deflated + info.compress_size
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATE_RATIO * max(
            info.compress_size, 1 << 16
        ):
            raise ImportCheckpointError(
                f"{path}: record {info.filename} is compressed {info.file_size / max(info.compress_size, 1):.0f}:1 "
                f"({_size(info.compress_size)} inflating to {_size(info.file_size)}); torch.save stores its "
                "records uncompressed, so this is not a checkpoint it wrote"
            )
        if total > MAX_SOURCE_BYTES:
            raise ImportCheckpointError(
                f"{path}: its records hold {_size(total)} or more uncompressed (record {info.filename}), "
                f"over the {_size(MAX_SOURCE_BYTES)} limit for a checkpoint"
            )
    if inflated > MAX_DEFLATE_RATIO * deflated + (1 << 20):  # many small records, each under the per-record floor
        raise ImportCheckpointError(
            f"{path}: its compressed records inflate {inflated / max(deflated, 1):.0f}:1 in all "
            f"({_size(deflated)} to {_size(inflated)}); torch.save stores its records uncompressed"
        )
    return deflated == 0


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from pconv_deploy.model.checkpoint import FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            ours = (f.metadata() or {}).get("format") == FORMAT
        if ours:  # re-importing would replace its config with defaults
            raise ImportCheckpointError(f"{path}: already a pconv-deploy checkpoint; use it as it is")
        return load_file(str(path))  # offsets are checked against the file's size: memory <= the file
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        if isinstance(e, ImportCheckpointError):
            raise
        raise ImportCheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def _torch_load(path: Path, inert: tuple[str, ...] | list[str], mmap: bool) -> object:
    """``torch.load(weights_only=True)``, with the given INERT_GLOBALS names mapped to ``_Inert``."""
    with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise next to our one-line verdict
        warnings.simplefilter("ignore")
        with torch.serialization.safe_globals([(_Inert, name) for name in inert]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _unsafe_globals(path: Path) -> list[str]:
    """The non-allowlisted names a checkpoint's pickle asks for, read from its opcodes without running them."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a bare pickle (not torch's zip container) has no such listing
        return []


def _load_failure(path: Path, e: Exception, asked: list[str]) -> str:
    """One line for why ``torch.load(weights_only=True)`` refused or failed."""
    import re

    text = str(e)
    global_name = re.search(r"GLOBAL (\S+)", text)
    if global_name:
        names = ", ".join(n for n in asked if n not in INERT_GLOBALS) or global_name.group(1)
        return (
            f"{path}: refused: its pickle asks for {names}, which is neither a tensor nor plain data "
            "(loading it would run code; nothing was run)"
        )
    if "central directory" in text or "zip archive" in text or isinstance(e, EOFError):
        return f"{path}: truncated or corrupt PyTorch checkpoint ({first_line(e)})"
    return f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {first_line(e)})"


def check_tensors(state: dict, path: Path) -> None:
    """Every entry of a state dict: a string key and a dense tensor no larger than its storage. Reads no data."""
    for key, value in state.items():
        if not isinstance(key, str):
            raise ImportCheckpointError(f"{path}: state dict key {key!r} is not a string")
        where = f"{path}: {key}"
        if value.layout != torch.strided:
            raise ImportCheckpointError(f"{where} is a sparse tensor ({value.layout}); expected dense weights")
        if value.is_meta:
            raise ImportCheckpointError(f"{where} is a meta tensor (a shape without data); expected weights")
        if value.is_quantized:
            raise ImportCheckpointError(f"{where} is a quantized tensor ({value.dtype}); import the float checkpoint")
        count = value.numel()
        if count > MAX_TENSOR_ELEMENTS:
            raise ImportCheckpointError(
                f"{where} declares {count} elements (shape {list(value.shape)}), more than any layer of the network"
            )
        if count * value.element_size() > value.untyped_storage().nbytes():
            raise ImportCheckpointError(
                f"{where} declares {count} elements over {value.untyped_storage().nbytes()} bytes of storage "
                f"(overlapping strides {list(value.stride())}); expected one value per element"
            )


REAL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_values(value: torch.Tensor, key: str, path: Path, *, variance: bool = False) -> torch.Tensor:
    """A real floating-point tensor with finite values (non-negative for a variance), as float64."""
    if value.dtype not in REAL_FLOATS:
        dtype = str(value.dtype).replace("torch.", "")
        raise ImportCheckpointError(f"{path}: {key} is {dtype}; expected real floating-point weights")
    value = value.double()
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise ImportCheckpointError(f"{path}: {key} has {bad} non-finite values (NaN or Inf); the checkpoint is broken")
    if variance and bool((value < 0).any()):
        raise ImportCheckpointError(f"{path}: {key} has negative values; a BatchNorm running variance cannot")
    return value


def check_batch_count(value: torch.Tensor, key: str, path: Path) -> torch.Tensor:
    """BatchNorm's ``num_batches_tracked``: one non-negative integer, as a 0-dim int64 tensor."""
    if value.dim() != 0 and list(value.shape) != [1]:
        raise ImportCheckpointError(f"{path}: {key} has shape {list(value.shape)}, expected [] (a batch count)")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ImportCheckpointError(f"{path}: {key} is {str(value.dtype).replace('torch.', '')}; expected an integer")
    if int(value.reshape(())) < 0:
        raise ImportCheckpointError(f"{path}: {key} is negative ({int(value.reshape(()))}); expected a batch count")
    return value.reshape(()).to(torch.int64)
