"""The one adapter between pconv-deploy and the TensorRT and CUDA Python APIs (docs/design.md section 7).

Every call the runtime and the builder make into ``tensorrt`` / ``tensorrt_lean`` and into
cuda-python's ``cuda.bindings.runtime`` is in this file, so that the CPU tests can hold each of
them to the real modules (tests/test_engines_api.py: names, arity, argument types and return
tuples, against the installed ``tensorrt_lean`` and ``cuda-bindings``).

Where the calls come from (TensorRT 10.x and 11.x documentation):

- Module choice: the full ``tensorrt`` when present, else ``tensorrt_lean`` ("Runtime libraries"
  in How TensorRT Works: the lean runtime only runs version-compatible plans).
- Runtime: ``Logger(min_severity)``, ``Runtime(logger)``, ``Runtime.engine_host_code_allowed``
  (Version Compatibility: a plan carrying a lean runtime is trusted host code),
  ``Runtime.deserialize_cuda_engine(serialized_engine)``; on the engine, the name-based I/O API of
  TensorRT 10 (Migrating 8.x to 10.x, "name-based engine API"): ``num_io_tensors``,
  ``get_tensor_name(index)``, ``get_tensor_mode(name)``, ``get_tensor_dtype(name)``,
  ``num_optimization_profiles``, ``create_execution_context()``; on the context
  ``set_optimization_profile_async(profile_index, stream_handle)``, ``set_input_shape(name, shape)``,
  ``get_tensor_shape(name)``, ``set_tensor_address(name, memory)``, ``execute_async_v3(stream_handle)``
  (Python API reference, IExecutionContext). One context per stream/thread (How TensorRT Works,
  "Threading"). None of these was removed in 11.x (Migrating 10.x to 11.x, removed Python APIs).
- CUDA (cuda-python, CUDA Runtime API): every call returns ``(cudaError_t, *values)``;
  ``cudaGetDeviceCount``, ``cudaSetDevice`` (the current device is per host thread),
  ``cudaGetDeviceProperties``, ``cudaStreamCreate``, ``cudaMalloc``, ``cudaMemcpyAsync(dst, src,
  count, kind, stream)``, ``cudaStreamSynchronize``, ``cudaFree``, ``cudaStreamDestroy``,
  ``cudaGetErrorName`` / ``cudaGetErrorString``.

Without a driver, cudaGetDeviceCount answers ``cudaErrorInsufficientDriver`` (or NoDevice): that is
the "no CUDA GPU" line. The device is always checked through CUDA *before* TensorRT is asked for a
Runtime: ``tensorrt_lean.Runtime(logger)`` without a driver returns a null object whose first use
kills the process (seen here, 11.4.0.106).

Only numpy and the standard library at import time; TensorRT and cuda-python are imported lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pconv_deploy.contract import CHANNELS, INPUT_NAMES, OUTPUT
from pconv_deploy.errors import PConvError, first_line

INSTALL_HINT = "pip install 'pconv-deploy[gpu]' on a CUDA machine"
MIN_TENSORRT = 10  # strongly typed networks, name-based I/O, shared optimization profiles
MODULES = ("tensorrt", "tensorrt_lean")  # full first: it runs every plan; the lean one only version-compatible ones
# cudaError_t names that mean "there is no usable GPU here" rather than a bug.
NO_GPU_ERRORS = (
    "cudaErrorNoDevice",
    "cudaErrorInsufficientDriver",
    "cudaErrorStubLibrary",
    "cudaErrorSystemDriverMismatch",
    "cudaErrorDevicesUnavailable",
)


class TensorRTUnavailable(PConvError):
    """TensorRT, the CUDA bindings or a GPU is missing: the message says which and how to install."""


class CudaError(PConvError):
    """A CUDA runtime call failed on a machine that has a GPU."""


@dataclass(frozen=True)
class TensorRT:
    """The TensorRT module found: the full one or the lean runtime."""

    module: Any
    name: str  # "tensorrt" or "tensorrt_lean"
    version: str

    @property
    def lean(self) -> bool:
        """The lean runtime runs only version-compatible engines and cannot build."""
        return self.name == "tensorrt_lean"


def import_tensorrt(*, builder: bool = False) -> TensorRT:
    """``tensorrt`` if present, else ``tensorrt_lean`` (unless ``builder``: only the full one builds)."""
    problems = []
    for name in MODULES[:1] if builder else MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        except Exception as e:  # a wheel without its libraries fails with OSError and friends
            problems.append(f"{name} does not load ({type(e).__name__}: {first_line(e)})")
            continue
        version = str(module.__version__)
        major = version.split(".")[0]
        if not major.isdigit() or int(major) < MIN_TENSORRT:
            problems.append(f"{name} {version} is too old (pconv-deploy needs >= {MIN_TENSORRT})")
            continue
        return TensorRT(module, name, version)
    if problems:
        raise TensorRTUnavailable(f"{'; '.join(problems)}: {INSTALL_HINT}")
    if builder and _importable("tensorrt_lean"):
        raise TensorRTUnavailable(
            "building an engine needs the full TensorRT (only tensorrt_lean is installed, which runs engines): "
            + INSTALL_HINT
        )
    raise TensorRTUnavailable(f"TensorRT is not installed: {INSTALL_HINT}")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def cuda_runtime() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            raise TensorRTUnavailable(
                f"the CUDA Python bindings (cuda-python) are not installed: {INSTALL_HINT}"
            ) from None
    return cudart


def check(result: tuple, call: str) -> Any:
    """cuda-python returns ``(cudaError_t, *values)``: raise on an error, else the value (or values, or None)."""
    err, *values = result
    cudart = cuda_runtime()
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1].decode(errors="replace")
        text = cudart.cudaGetErrorString(err)[1].decode(errors="replace")
        if name in NO_GPU_ERRORS:
            raise TensorRTUnavailable(
                f"no CUDA GPU ({call}: {name}, {text}): TensorRT needs an NVIDIA GPU and driver; {INSTALL_HINT}"
            )
        raise CudaError(f"CUDA error in {call}: {name} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.6"


def gpu_count() -> int:
    """Number of CUDA devices; raises TensorRTUnavailable (one line) when there is no driver or device."""
    count = int(check(cuda_runtime().cudaGetDeviceCount(), "cudaGetDeviceCount"))
    if count < 1:
        raise TensorRTUnavailable(f"no CUDA GPU found: TensorRT needs an NVIDIA GPU and driver; {INSTALL_HINT}")
    return count


def use_device(device: int) -> GpuInfo:
    """Make ``device`` current for this host thread and describe it (as the engine sidecar records GPUs)."""
    count = gpu_count()
    if not 0 <= device < count:
        raise TensorRTUnavailable(f"there is no CUDA device {device}: this machine has {count} (cuda:0..{count - 1})")
    cudart = cuda_runtime()
    check(cudart.cudaSetDevice(device), "cudaSetDevice")
    prop = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    raw = prop.name
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return GpuInfo(device, name.strip(), f"{prop.major}.{prop.minor}")


@dataclass(frozen=True)
class Readiness:
    """Whether TensorRT can run engines here, and if not, why (one line)."""

    usable: bool
    reason: str  # why not; or what will run them
    module: str | None = None  # "tensorrt" / "tensorrt_lean"
    version: str | None = None
    gpus: int = 0

    @property
    def lean(self) -> bool:
        return self.module == "tensorrt_lean"


def tensorrt_readiness() -> Readiness:
    """Find TensorRT (full or lean), cuda-python and a GPU, without creating any TensorRT object."""
    try:
        trt = import_tensorrt()
    except TensorRTUnavailable as e:
        return Readiness(False, str(e))
    try:
        gpus = gpu_count()
    except TensorRTUnavailable as e:
        return Readiness(False, str(e), trt.name, trt.version)
    except Exception as e:  # the bindings' loader can raise instead of returning an error code
        reason = f"no usable CUDA GPU ({type(e).__name__}: {first_line(e)}): {INSTALL_HINT}"
        return Readiness(False, reason, trt.name, trt.version)
    plans = "version-compatible engines only" if trt.lean else "any engine built by this version"
    return Readiness(True, f"{trt.name} {trt.version} on {gpus} CUDA GPU(s): runs {plans}", trt.name, trt.version, gpus)


# ---------------------------------------------------------------- GPU only from here on


@dataclass
class LoadedEngine:
    """A deserialised engine with the logger and runtime it needs alive (TensorRT object lifetimes)."""

    logger: Any
    runtime: Any
    engine: Any

    def io_tensors(self, trt: TensorRT) -> dict[str, tuple[str, bool]]:
        """{name: (mode "INPUT"/"OUTPUT", is float32)} of every I/O tensor."""
        engine, out = self.engine, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            out[name] = (mode.name, engine.get_tensor_dtype(name) == trt.module.DataType.FLOAT)
        return out

    @property
    def profiles(self) -> int:
        return int(self.engine.num_optimization_profiles)


def deserialise_engine(trt: TensorRT, data: bytes, *, host_code_allowed: bool) -> LoadedEngine:
    """Runtime + deserialise. Call `use_device` first: without a GPU TensorRT's Runtime is not safe to use."""
    module = trt.module
    logger = module.Logger(module.Logger.WARNING)
    runtime = module.Runtime(logger)
    if host_code_allowed:
        runtime.engine_host_code_allowed = True  # a version-compatible plan embeds its lean runtime
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise PConvError("TensorRT could not deserialise the engine (see its log above)")
    return LoadedEngine(logger, runtime, engine)


class EngineContext:
    """One execution context with its own CUDA stream and device buffers: one call in flight at a time."""

    def __init__(self, loaded: LoadedEngine, device: int) -> None:
        self.device = device
        self.context = loaded.engine.create_execution_context()
        if self.context is None:
            raise PConvError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = check(cuda_runtime().cudaStreamCreate(), "cudaStreamCreate")
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.profile: int | None = None

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if nbytes > size:
            cudart = cuda_runtime()
            if ptr:
                check(cudart.cudaFree(ptr), "cudaFree")
            ptr, size = int(check(cudart.cudaMalloc(nbytes), "cudaMalloc")), nbytes
            self.buffers[name] = (ptr, size)
        return ptr

    def _bind(self, name: str, ptr: int) -> None:
        context = self.context
        if not context.set_tensor_address(name, ptr):
            raise PConvError(f"TensorRT refused the device address of {name!r}")

    def run(self, profile: int, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Copy in, execute on this context's stream, copy out, synchronise."""
        cudart, context = cuda_runtime(), self.context
        check(cudart.cudaSetDevice(self.device), "cudaSetDevice")  # the current device is per host thread
        stream = int(self.stream)
        if self.profile != profile:
            if not context.set_optimization_profile_async(profile, stream):
                raise PConvError(f"TensorRT refused optimization profile {profile}")
            self.profile = profile
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in zip(INPUT_NAMES, (image, mask)):
            if not context.set_input_shape(name, array.shape):
                raise PConvError(f"TensorRT rejected input shape {array.shape} for {name!r}")
            ptr = self._buffer(name, array.nbytes)
            check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self.stream), "cudaMemcpyAsync")
            self._bind(name, ptr)
        out = np.empty(tuple(context.get_tensor_shape(OUTPUT)), dtype=np.float32)
        if out.ndim != 4 or out.shape[1] != CHANNELS[OUTPUT]:
            raise PConvError(f"TensorRT reports output shape {out.shape}, expected [N, {CHANNELS[OUTPUT]}, H, W]")
        out_ptr = self._buffer(OUTPUT, out.nbytes)
        self._bind(OUTPUT, out_ptr)
        if not context.execute_async_v3(stream):
            raise PConvError("TensorRT execution failed (see the TensorRT log above)")
        check(cudart.cudaMemcpyAsync(out.ctypes.data, out_ptr, out.nbytes, d2h, self.stream), "cudaMemcpyAsync")
        check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")  # keeps inputs alive until copied
        return out

    def close(self) -> None:
        """Free buffers and the stream; errors are ignored (the process may be exiting)."""
        cudart = cuda_runtime()
        cudart.cudaSetDevice(self.device)  # close() may run on another thread than the one that allocated
        for ptr, _ in self.buffers.values():
            cudart.cudaFree(ptr)
        self.buffers.clear()
        cudart.cudaStreamDestroy(self.stream)
        self.context = None
