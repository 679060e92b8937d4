"""Memory bounded by design: how much one backend call may use, from the model's shape and the machine.

The folder job forms batches against a budget in bytes, not only a batch size: a batch of four
12 MP images with the demo model needs about 10 GiB, a batch of four 512 px crops about 0.4 GiB.
One call's memory is estimated as ``CALL_OVERHEAD + bytes_per_pixel * padded pixels``, with the
bytes per pixel from the model's metadata (:func:`activation_bytes_per_pixel`): the peak of the
U-Net is at its busiest decoder level (the last, at full resolution, for every width), where the
upsampled features, their concatenation with the skip and the convolution's output are alive
together, plus full-resolution temporaries (normalisation, mask path, composite) that do not
depend on the width. The two constants are fitted as an upper envelope of peaks measured with
ONNX Runtime on the CPU (arena off) at widths 0.125-1.0, fp32 and fp16 (fp16 is not smaller on the
CPU); ``tests/test_memory.py`` checks the bound against a fresh measurement.

The limit is for the whole process (``--memory-limit``; default what the process holds plus 80% of
MemAvailable). A fifth of what is left after loading the model is kept for the images being
decoded, composited and encoded; the rest is for backend calls.
"""

from __future__ import annotations

import re
import resource
import sys

from pconv_deploy.contract import ENCODER_CHANNELS, encoder_channels
from pconv_deploy.errors import PConvError

FIXED_BYTES_PER_PIXEL = 160  # full-resolution temporaries that do not grow with the width (measured)
BYTES_PER_FEATURE = 3.2  # per analytic feature float at the busiest level (fitted: ORT frees some early)
CALL_OVERHEAD = 128 * 2**20  # per call, whatever its size: thread workspaces, allocator slack (measured)
SAFETY = 1.1  # margin over the measured envelope
DEFAULT_FRACTION = 0.8  # of MemAvailable, when no --memory-limit is given
INFERENCE_SHARE = 0.8  # of the limit left after loading: backend calls; the rest: images in flight

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """'6GiB', '6G' (decimal), '512MiB', '4000000000' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise PConvError(f"invalid memory size {text!r}: expected e.g. 6GiB, 800MiB or 4G")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def activation_bytes_per_pixel(metadata: dict[str, str]) -> int:
    """Upper bound of one backend call's memory per padded input pixel, from ``pconv.*`` metadata.

    Missing keys (old exports) assume the paper's full model (8 layers, width 1): too big, never too small.
    """
    try:
        layers = int(metadata.get("pconv.layers", 8))
        width = float(metadata.get("pconv.width", 1.0))
    except ValueError:
        layers, width = 8, 1.0
    enc = encoder_channels(max(1, min(layers, len(ENCODER_CHANNELS))), width)
    skips = [3, *enc[:-1]]
    features, in_ch = 0.0, enc[-1]
    for i in reversed(range(len(enc))):  # decoder level i works at 1 / 4**i of the input pixels
        out_ch = 3 if i == 0 else skips[i]
        concat = in_ch + skips[i] + 2  # features and the two mask groups
        waiting = sum((enc[j] + 1) / 4 ** (j + 1) for j in range(i - 1))  # encoder outputs kept for later levels
        features = max(features, (2 * concat + out_ch) / 4**i + waiting)
        in_ch = out_ch
    return int(SAFETY * (FIXED_BYTES_PER_PIXEL + BYTES_PER_FEATURE * features))


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), in bytes; None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident memory of this process now (Linux /proc/self/statm; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def default_memory_limit() -> int | None:
    """The whole-process limit when none is given: what this process holds plus 80% of MemAvailable."""
    available = available_memory()
    return None if available is None else current_rss() + int(DEFAULT_FRACTION * available)


def inference_budget(limit: int | None) -> int | None:
    """Bytes that backend calls may use under a whole-process ``limit`` (None: unbounded)."""
    if limit is None:
        return None
    return max(0, int(INFERENCE_SHARE * (limit - current_rss())))


def call_pixels(budget: int, bytes_per_pixel: int) -> int:
    """Padded pixels one call may hold within ``budget`` bytes (0 when not even the overhead fits)."""
    return max(0, (budget - CALL_OVERHEAD) // bytes_per_pixel)
