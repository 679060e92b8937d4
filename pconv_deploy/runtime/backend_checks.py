"""What every backend checks about its device and its model file: names, the size multiple, the device string.

Shared by the ONNX Runtime, OpenVINO and TensorRT backends (no engine imported here).
"""

from __future__ import annotations

import re
from pathlib import Path

from pconv_deploy.contract import INPUT_NAMES, OUTPUT
from pconv_deploy.errors import PConvError


def parse_device(device: str) -> tuple[str, int | None]:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> (kind, GPU index or None)."""
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", device.strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise PConvError(f"unknown device {device!r}: choose auto, cpu, cuda or cuda:N")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def check_io_names(path: Path, inputs: list[str], outputs: list[str]) -> None:
    """The model takes ``image`` and ``mask`` and returns ``inpainted``, or one line saying what it has."""
    if set(INPUT_NAMES) - set(inputs) or OUTPUT not in outputs:
        raise PConvError(
            f"{path}: not a pconv model (inputs {sorted(inputs)}, outputs {outputs}; "
            f"expected inputs {list(INPUT_NAMES)} and output '{OUTPUT}')"
        )


def model_multiple(metadata: dict[str, str], image_shape: list, path: Path) -> int:
    """``pconv.multiple`` from the metadata; for older exports, the ``32*h`` dim names the exporter writes."""
    if "pconv.multiple" in metadata:
        try:
            value = int(metadata["pconv.multiple"])
        except ValueError:
            value = 0
        if value < 1:
            raise PConvError(f"{path}: invalid pconv.multiple metadata {metadata['pconv.multiple']!r}")
        return value
    found = {int(m.group(1)) for d in image_shape[2:] if isinstance(d, str) for m in [re.match(r"(\d+)\*", d)] if m}
    if len(found) == 1:
        return found.pop()
    raise PConvError(
        f"{path}: cannot tell the required size multiple (no 'pconv.multiple' metadata and no 'K*h' input dims); "
        "re-export it with `pconv export`"
    )
