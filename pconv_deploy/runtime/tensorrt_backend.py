"""The ``tensorrt`` backend: run a serialised engine on an NVIDIA GPU with numpy in and out.

Needs only numpy, ``tensorrt`` and ``cuda-python`` (whose runtime bindings link the CUDA
runtime statically, so the GPU driver is the only system requirement); no torch, no onnx.
Everything here is imported lazily so that this module imports on any machine, and
`tensorrt_status()` says in one line why the backend cannot run here.

GPU-only code paths are kept to documented TensorRT 10/11 calls (``deserialize_cuda_engine``,
``create_execution_context``, ``set_optimization_profile_async``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); they are exercised only by
tests/test_tensorrt_gpu.py on a machine with a GPU.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pconv_deploy.engines.profiles import ShapeRange, format_shape, max_batch, select_profile
from pconv_deploy.engines.sidecar import check_compatible, read_sidecar
from pconv_deploy.errors import PConvError

INSTALL_HINT = "pip install 'pconv-deploy[gpu]' on a CUDA machine"
MIN_TENSORRT = 10  # strongly typed networks and shared optimization profiles (DESIGN.md section 7)


class TensorRTUnavailable(PConvError):
    """TensorRT, the CUDA bindings or a GPU is missing: the message says which and how to install."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.6"


def cuda_runtime() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def cuda_call(result: tuple) -> Any:
    """cuda-python returns (error, *values): raise on error, return the value(s)."""
    err, *values = result
    if int(err) != 0:
        cudart = cuda_runtime()
        message = cudart.cudaGetErrorString(err)[1].decode(errors="replace")
        raise PConvError(f"CUDA error {int(err)}: {message}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of one CUDA device (as the engine sidecar records them)."""
    prop = cuda_call(cuda_runtime().cudaGetDeviceProperties(device))
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(device, name.strip(), f"{prop.major}.{prop.minor}")


def tensorrt_status() -> str | None:
    """None when TensorRT can run here; otherwise one line saying what is missing and how to install it."""
    try:
        import tensorrt as trt
    except ImportError:
        return f"TensorRT is not installed: {INSTALL_HINT}"
    except Exception as e:  # a wheel without its libraries fails with OSError and friends
        return f"TensorRT does not load ({type(e).__name__}: {e}): {INSTALL_HINT}"
    major = str(trt.__version__).split(".")[0]
    if not major.isdigit() or int(major) < MIN_TENSORRT:
        return f"TensorRT {trt.__version__} is too old (pconv-deploy needs >= {MIN_TENSORRT}): {INSTALL_HINT}"
    try:
        cudart = cuda_runtime()
    except ImportError:
        return f"the CUDA Python bindings (cuda-python) are not installed: {INSTALL_HINT}"
    except Exception as e:
        return f"the CUDA Python bindings do not load ({type(e).__name__}: {e}): {INSTALL_HINT}"
    try:
        count = cuda_call(cudart.cudaGetDeviceCount())
    except Exception as e:  # no driver: an error code, or an exception from the bindings' loader
        return f"no usable CUDA GPU ({e}): TensorRT needs an NVIDIA GPU and driver; {INSTALL_HINT}"
    if count < 1:
        return f"no CUDA GPU found: TensorRT needs an NVIDIA GPU and driver; {INSTALL_HINT}"
    return None


def plan_batches(profiles: list[ShapeRange], batch: int, height: int, width: int) -> list[tuple[int, int, int]]:
    """[(start, stop, profile index)]: the whole batch if a profile takes it, else chunks of the
    largest batch a profile takes at this size. Raises when a chunk fits no profile."""

    def refuse(n: int) -> PConvError:
        shapes = "; ".join(str(p) for p in profiles)
        return PConvError(
            f"no optimization profile of this engine takes {format_shape((n, height, width))} "
            f"(profiles: {shapes}); rebuild with a larger --max-shape, or use smaller tiles"
        )

    fits = select_profile(profiles, batch, height, width) is not None
    chunk = batch if fits else max_batch(profiles, height, width)
    if chunk < 1:
        raise refuse(batch)
    plan = []
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        index = select_profile(profiles, stop - start, height, width)
        if index is None:
            raise refuse(stop - start)
        plan.append((start, stop, index))
    return plan


class _Slot:
    """One execution context with its own stream and device buffers: one call in flight at a time."""

    def __init__(self, engine: Any, device: int) -> None:
        self.device = device
        self.context = engine.create_execution_context()
        if self.context is None:
            raise PConvError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda_call(cuda_runtime().cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.profile: int | None = None

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                cuda_call(cuda_runtime().cudaFree(ptr))
            ptr, size = int(cuda_call(cuda_runtime().cudaMalloc(nbytes))), nbytes
            self.buffers[name] = (ptr, size)
        return ptr

    def run(self, profile: int, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        cudart = cuda_runtime()
        cuda_call(cudart.cudaSetDevice(self.device))  # the current device is per host thread
        stream = int(self.stream)
        if self.profile != profile:
            if not self.context.set_optimization_profile_async(profile, stream):
                raise PConvError(f"TensorRT refused optimization profile {profile}")
            self.profile = profile
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in (("image", image), ("mask", mask)):
            if not self.context.set_input_shape(name, array.shape):
                raise PConvError(f"TensorRT rejected input shape {array.shape} for {name!r}")
            ptr = self._buffer(name, array.nbytes)
            cuda_call(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        out = np.empty(tuple(self.context.get_tensor_shape("inpainted")), dtype=np.float32)
        out_ptr = self._buffer("inpainted", out.nbytes)
        self.context.set_tensor_address("inpainted", out_ptr)
        if not self.context.execute_async_v3(stream):
            raise PConvError("TensorRT execution failed (see the TensorRT log above)")
        cuda_call(cudart.cudaMemcpyAsync(out.ctypes.data, out_ptr, out.nbytes, d2h, self.stream))
        cuda_call(cudart.cudaStreamSynchronize(self.stream))  # also keeps image/mask alive until copied
        return out

    def close(self) -> None:
        cudart = cuda_runtime()
        for ptr, _ in self.buffers.values():
            cudart.cudaFree(ptr)
        self.buffers.clear()
        cudart.cudaStreamDestroy(self.stream)
        self.context = None


def _check_engine_io(engine: Any, trt: Any, n_profiles: int, where: str) -> None:
    """The engine must expose exactly the contract's tensors, float32, and the sidecar's profiles."""
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    expected = {"image": trt.TensorIOMode.INPUT, "mask": trt.TensorIOMode.INPUT, "inpainted": trt.TensorIOMode.OUTPUT}
    if names != set(expected):
        raise PConvError(f"{where}: model contract mismatch: engine has {sorted(names)}, expected {sorted(expected)}")
    for name, mode in expected.items():
        if engine.get_tensor_mode(name) != mode or engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise PConvError(f"{where}: model contract mismatch: {name!r} must be a float32 {mode.name.lower()}")
    if engine.num_optimization_profiles != n_profiles:
        raise PConvError(
            f"{where}: the engine has {engine.num_optimization_profiles} profiles, its sidecar lists {n_profiles}"
        )


class TensorRTBackend:
    """Runs padded NCHW float32 batches through a TensorRT engine.

    ``streams`` execution contexts, each with its own CUDA stream and buffers, let that many
    threads call `run` concurrently (TensorRT >= 10 lets contexts share a profile). The
    sidecar is validated before the engine is deserialised, so a mismatch is a clear
    message rather than a TensorRT crash.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0, streams: int = 1) -> None:
        problem = tensorrt_status()
        if problem:
            raise TensorRTUnavailable(problem)
        if streams < 1:
            raise PConvError(f"streams must be >= 1, got {streams}")
        import tensorrt as trt

        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise PConvError(f"{self.engine_path}: no such engine file")
        sidecar = read_sidecar(self.engine_path)
        cuda_call(cuda_runtime().cudaSetDevice(device))
        gpu = gpu_info(device)
        check_compatible(
            sidecar,
            self.engine_path,
            tensorrt_version=trt.__version__,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
        )
        self.sidecar = sidecar
        self.metadata: dict[str, str] = dict(sidecar["metadata"])
        self.multiple = int(self.metadata["pconv.multiple"])
        self.profiles = [ShapeRange.from_input_shapes(p) for p in sidecar["profiles"]]
        self.max_batch = max(p.max[0] for p in self.profiles)  # the runtime batches up to this

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if sidecar["version_compatible"]:
            self._runtime.engine_host_code_allowed = True  # version-compatible plans embed a lean runtime
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise PConvError(f"{self.engine_path}: TensorRT could not deserialise the engine (see its log above)")
        _check_engine_io(self._engine, trt, len(self.profiles), str(self.engine_path))
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._all = [_Slot(self._engine, device) for _ in range(streams)]
        for slot in self._all:
            self._slots.put(slot)

    def run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """image [N,3,H,W], mask [N,1,H,W] float32 (H, W multiples of `multiple`) -> inpainted [N,3,H,W]."""
        if image.ndim != 4 or mask.ndim != 4 or image.shape[1] != 3 or mask.shape[1] != 1:
            raise PConvError(f"expected image [N,3,H,W] and mask [N,1,H,W], got {image.shape} and {mask.shape}")
        n, _, h, w = image.shape
        if mask.shape[0] != n or mask.shape[2:] != (h, w):
            raise PConvError(f"image {image.shape} and mask {mask.shape} differ in batch or size")
        if h % self.multiple or w % self.multiple:
            raise PConvError(f"height and width must be multiples of {self.multiple}, got {h}x{w} (pad first)")
        image = np.ascontiguousarray(image, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.float32)
        plan = plan_batches(self.profiles, n, h, w)
        slot = self._slots.get()
        try:
            parts = [slot.run(profile, image[a:b], mask[a:b]) for a, b, profile in plan]
        finally:
            self._slots.put(slot)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        """Free the contexts, streams and buffers (also done when the process exits)."""
        for slot in self._all:
            slot.close()
        self._all = []
