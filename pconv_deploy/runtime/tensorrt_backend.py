"""The ``tensorrt`` backend: run a serialised engine on an NVIDIA GPU with numpy in and out.

Needs only numpy, TensorRT (the full ``tensorrt``, or the ~100 MB lean runtime ``tensorrt_lean``
for engines built ``--version-compatible``) and ``cuda-python``; no torch, no onnx. All TensorRT
and CUDA calls go through `pconv_deploy.engines.trt_api`; this module holds the runtime's own
logic: the sidecar checks, the engine's I/O contract, profile choice, batch splitting and the
pool of execution contexts.

Order of the checks, so each failure is one clear line before anything can crash: TensorRT module
-> engine file -> sidecar (format, contract, TensorRT version, lean runtime rules) -> the CUDA
device (``no CUDA GPU`` here) and the sidecar's GPU -> deserialisation -> the engine's tensors.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pconv_deploy.contract import CHANNELS, IMAGE, INPUT_NAMES, MASK, OUTPUT_NAMES
from pconv_deploy.engines.profiles import ShapeRange, format_shape, max_batch, select_profile
from pconv_deploy.engines.sidecar import Sidecar
from pconv_deploy.engines.trt_api import (
    EngineContext,
    LoadedEngine,
    Readiness,
    TensorRTUnavailable,
    deserialise_engine,
    import_tensorrt,
    tensorrt_readiness,
    use_device,
)
from pconv_deploy.errors import PConvError

__all__ = ["Readiness", "TensorRTBackend", "TensorRTUnavailable", "plan_batches", "tensorrt_readiness"]


def plan_batches(profiles: Sequence[ShapeRange], shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """[(start, stop, profile index)] for a (batch, height, width) batch: the whole batch if a profile
    takes it, else chunks of the largest batch a profile takes at this size. Raises when a chunk fits no profile."""
    batch, height, width = shape

    def refuse(n: int) -> PConvError:
        shapes = "; ".join(str(p) for p in profiles)
        return PConvError(
            f"no optimization profile of this engine takes {format_shape((n, height, width))} "
            f"(profiles: {shapes}); rebuild with a larger --max-shape, or use smaller tiles"
        )

    fits = select_profile(profiles, shape) is not None
    chunk = batch if fits else max_batch(profiles, height, width)
    if chunk < 1:
        raise refuse(batch)
    plan = []
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        index = select_profile(profiles, (stop - start, height, width))
        if index is None:
            raise refuse(stop - start)
        plan.append((start, stop, index))
    return plan


def check_engine_io(io: dict[str, tuple[str, bool]], n_engine_profiles: int, n_profiles: int, *, where: str) -> None:
    """The engine must expose exactly the contract's tensors, float32, and the sidecar's profiles."""
    expected = {**{name: "INPUT" for name in INPUT_NAMES}, **{name: "OUTPUT" for name in OUTPUT_NAMES}}
    if set(io) != set(expected):
        raise PConvError(f"{where}: model contract mismatch: engine has {sorted(io)}, expected {sorted(expected)}")
    for name, mode in expected.items():
        if io[name] != (mode, True):
            raise PConvError(f"{where}: model contract mismatch: {name!r} must be a float32 {mode.lower()}")
    if n_engine_profiles != n_profiles:
        raise PConvError(f"{where}: the engine has {n_engine_profiles} profiles, its sidecar lists {n_profiles}")


class TensorRTBackend:
    """Runs padded NCHW float32 batches through a TensorRT engine on CUDA device ``device``.

    ``streams`` execution contexts, each with its own CUDA stream and buffers, let that many
    threads call `run` concurrently (TensorRT >= 10 lets contexts share a profile); each call
    makes ``device`` current on its thread first. The sidecar is validated before the engine is
    deserialised, so a mismatch is a clear message rather than a TensorRT crash.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0, streams: int = 1) -> None:
        if streams < 1:
            raise PConvError(f"streams must be >= 1, got {streams}")
        trt = import_tensorrt()  # tensorrt, else tensorrt_lean
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise PConvError(f"{self.engine_path}: no such engine file")
        self.sidecar = Sidecar.read(self.engine_path)  # read and checked once; everything below uses it
        self.sidecar.check_runtime(self.engine_path, tensorrt_version=trt.version, lean=trt.lean)
        self.device, self.tensorrt = device, trt
        self.metadata: dict[str, str] = dict(self.sidecar.metadata)
        self.multiple = self.sidecar.multiple
        self.profiles = self.sidecar.profiles
        self.max_batch = max(p.max[0] for p in self.profiles)  # the runtime batches up to this

        self._loaded = self._deserialise()
        where = str(self.engine_path)
        check_engine_io(self._loaded.io_tensors(trt), self._loaded.profiles, len(self.profiles), where=where)
        self._free: queue.Queue[EngineContext] = queue.Queue()
        self._contexts = [EngineContext(self._loaded, device) for _ in range(streams)]
        for pooled in self._contexts:
            self._free.put(pooled)

    def _deserialise(self) -> LoadedEngine:
        """The GPU starts here: the device (no CUDA GPU -> one line), its match with the sidecar, then TensorRT."""
        gpu = use_device(self.device)
        self.sidecar.check_gpu(self.engine_path, gpu_name=gpu.name, compute_capability=gpu.compute_capability)
        try:
            return deserialise_engine(
                self.tensorrt, self.engine_path.read_bytes(), host_code_allowed=self.sidecar.version_compatible
            )
        except PConvError as e:
            raise PConvError(f"{self.engine_path}: {e}") from None

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """image [N,3,H,W], mask [N,1,H,W] float32 (H, W multiples of `multiple`) -> inpainted [N,3,H,W]."""
        c_image, c_mask = CHANNELS[IMAGE], CHANNELS[MASK]
        if image.ndim != 4 or mask.ndim != 4 or image.shape[1] != c_image or mask.shape[1] != c_mask:
            raise PConvError(
                f"expected image [N,{c_image},H,W] and mask [N,{c_mask},H,W], got {image.shape} and {mask.shape}"
            )
        n, _, h, w = image.shape
        if mask.shape[0] != n or mask.shape[2:] != (h, w):
            raise PConvError(f"image {image.shape} and mask {mask.shape} differ in batch or size")
        if h % self.multiple or w % self.multiple:
            raise PConvError(f"height and width must be multiples of {self.multiple}, got {h}x{w} (pad first)")
        image = np.ascontiguousarray(image, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.float32)
        plan = plan_batches(self.profiles, (n, h, w))
        pooled = self._free.get()
        try:
            parts = [pooled.run(profile, image[a:b], mask[a:b]) for a, b, profile in plan]
        finally:
            self._free.put(pooled)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        """Free the contexts, streams and buffers (also done when the process exits)."""
        for pooled in self._contexts:
            pooled.close()
        self._contexts = []
