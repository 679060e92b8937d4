"""The real TensorRT and CUDA APIs, for tests on machines without a GPU.

- Signatures: pybind ``__doc__`` signatures of the installed ``tensorrt_lean`` (with overloads), and
  cuda-python's ``inspect.signature`` plus the Parameters/Returns sections of its docstrings.
  `check_trt_call` / `check_cuda_call` hold one recorded call to them: names, arity, keyword names,
  argument types (so swapping a ``str`` and an ``int`` fails) and the number of returned values.
- `SimulatedGpu`: what a GPU would answer, built from the real classes. TensorRT objects are
  ``create_autospec(real_class, instance=True, spec_set=True)`` (a misspelt method or attribute raises),
  CUDA functions ``create_autospec(real_function)`` (a wrong arity raises), with host memory playing
  the device's: copies really move bytes (so swapped pointers give wrong pixels) and the "engine"
  computes the contract graph ``image * mask + 0.5 * (1 - mask)`` from the bound addresses.
  Every call is recorded and checked against the signatures above.
"""

from __future__ import annotations

import ast
import ctypes
import inspect
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import tensorrt_lean as trt
from cuda.bindings import runtime as cudart

from pconv_deploy.contract import IMAGE, INPUT_NAMES, MASK, OUTPUT

TRT_PREFIX = "tensorrt_lean_bindings.tensorrt_lean."
REAL_RUNTIME = trt.Runtime  # kept: the tests put the simulated class in its place
SUCCESS = cudart.cudaError_t.cudaSuccess

# ---------------------------------------------------------------- the names our code uses (a static walk)

PACKAGE = Path(__file__).resolve().parents[2] / "pconv_deploy"
# Receiver expressions in our code -> the real object they stand for.
ROOTS = {
    "engines/trt_api.py": {
        "module": trt,
        "trt.module": trt,
        "cudart": cudart,
        "cuda_runtime()": cudart,
        "engine": trt.ICudaEngine,
        "loaded.engine": trt.ICudaEngine,
        "context": trt.IExecutionContext,
        "runtime": trt.Runtime,
        "prop": cudart.cudaDeviceProp,
    },
    "engines/build.py": {"trt": trt},
}


def dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        return ".".join([node.func.id + "()", *reversed(parts)])  # cuda_runtime().cudaX
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def used_names(relative: str) -> list[tuple[str, object, list[str]]]:
    """(expression, real object, attribute chain after the root) for every outermost attribute on a root."""
    roots, found = ROOTS[relative], []
    tree = ast.parse((PACKAGE / relative).read_text())
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        text = dotted(node)
        for root in sorted(roots, key=len, reverse=True):
            if text and text.startswith(root + ".") and text != root:
                found.append((text, roots[root], text[len(root) + 1 :].split(".")))
                break
    return found


def used_calls(relative: str) -> set[str]:
    """``Class.method`` / ``cudaX`` for every TensorRT or CUDA function the file calls (not enums or properties)."""
    calls = set()
    for _, obj, chain in used_names(relative):
        owner = obj
        for attr in chain[:-1]:
            owner = getattr(owner, attr, None)
        member = getattr(owner, chain[-1], None)
        if isinstance(member, mock.NonCallableMock):
            continue  # a class the test replaced (tensorrt_lean.Runtime): a constructor, not a method
        if callable(member) and not isinstance(member, type) and not hasattr(member, "__members__"):
            prefix = "" if owner is cudart else f"{getattr(owner, '__name__', type(owner).__name__)}."
            calls.add(prefix + chain[-1])
    return calls


# ---------------------------------------------------------------- pybind signatures (TensorRT)


def split_top_level(text: str) -> list[str]:
    """Split a parameter list on the commas outside brackets (defaults look like ``<Enum.X: 0>``)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([<{":
            depth += 1
        elif ch in ")]>}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str
    has_default: bool


SIGNATURE = re.compile(r"^(?:\d+\. )?(\w*)\((.*)\) -> (.+)$")


def pybind_overloads(func) -> list[list[Param]]:
    """Each overload's parameters (``self`` included) from a pybind11 docstring."""
    overloads = []
    for line in (func.__doc__ or "").splitlines():
        m = SIGNATURE.match(line.strip())
        if not m or "*args" in m.group(2):
            continue
        params = []
        for part in split_top_level(m.group(2)):
            head, _, default = part.partition(" = ")
            name, _, annotation = head.partition(": ")
            params.append(Param(name.strip(), annotation.strip(), bool(default)))
        overloads.append(params)
    assert overloads, f"no pybind signature in {func!r}'s __doc__"
    return overloads


def _resolve_trt(dotted: str):
    obj = trt
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def accepts(annotation: str, value) -> bool:
    """Would pybind11 take ``value`` for a parameter annotated ``annotation``? (strict: no bool for int)"""
    if annotation == "str":
        return isinstance(value, str)
    if annotation in ("typing.SupportsInt", "int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation in ("typing.SupportsFloat", "float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in ("tuple", "list"):
        return isinstance(value, tuple if annotation == "tuple" else list)
    if annotation in ("typing_extensions.Buffer", "collections.abc.Buffer", "buffer"):
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    if annotation.startswith(TRT_PREFIX):
        return isinstance(value, _resolve_trt(annotation[len(TRT_PREFIX) :]))
    raise AssertionError(f"annotation {annotation!r} not understood: teach accepts() about it")


def bind_problem(params: list[Param], args: tuple, kwargs: dict) -> str | None:
    """None if the call fits these parameters, else why not."""
    if len(args) > len(params):
        return f"{len(args)} positional arguments for {len(params)} parameters"
    given = dict(zip((p.name for p in params), args))
    for name, value in kwargs.items():
        if name in given or name not in {p.name for p in params}:
            return f"unexpected or repeated keyword {name!r}"
        given[name] = value
    for p in params:
        if p.name not in given:
            if not p.has_default:
                return f"missing argument {p.name!r}"
        elif not accepts(p.annotation, given[p.name]):
            return f"{p.name}={given[p.name]!r} is not a {p.annotation}"
    return None


def check_trt_call(func, args: tuple, kwargs: dict, *, has_self: bool = True) -> None:
    """Raise AssertionError unless ``func(*args, **kwargs)`` (self excluded) matches one overload."""
    problems = []
    for params in pybind_overloads(func):
        problem = bind_problem(params[1:] if has_self else params, args, kwargs)
        if problem is None:
            return
        problems.append(problem)
    raise AssertionError(f"{func.__name__}{args!r} {kwargs!r} fits no overload: {problems}")


def check_recorded_trt_calls(fake, real_class) -> int:
    """Check every call recorded on an autospec'd TensorRT object; returns how many."""
    for name, args, kwargs in fake.mock_calls:
        check_trt_call(getattr(real_class, name), args, kwargs)
    return len(fake.mock_calls)


# ---------------------------------------------------------------- cuda-python signatures


def numpy_section(doc: str, title: str) -> list[tuple[str, str]]:
    """[(name, type)] of a numpydoc section ('Parameters' or 'Returns'): the unindented entry lines."""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == title and lines[i + 1].startswith("---"))
    except StopIteration:
        return []
    entries = []
    for i in range(start + 2, len(lines)):
        if i + 1 < len(lines) and lines[i + 1].startswith("---"):
            break  # the next section's title
        line = lines[i]
        if line.strip() and not line.startswith(" "):
            name, _, kind = line.partition(" : ")
            entries.append((name.strip(), kind.strip()))
    return entries


def cuda_returns(func) -> int:
    """How many values a cuda-python call returns: its docstring's Returns entries (cudaError_t first)."""
    entries = numpy_section(func.__doc__, "Returns")
    assert entries and entries[0][0].startswith("cudaError_t"), f"{func.__name__}: no cudaError_t in Returns"
    return len(entries)


def cuda_accepts(kind: str, value) -> bool:
    if kind in ("Any", ""):
        return True
    if kind in ("int", "size_t", "unsigned int"):
        return isinstance(value, int) and not isinstance(value, bool)
    names = re.findall(r"~\.(\w+)", kind)
    if names == ["cudaMemcpyKind"]:
        return isinstance(value, cudart.cudaMemcpyKind)
    if set(names) == {"CUstream", "cudaStream_t"}:
        return isinstance(value, cudart.cudaStream_t) or (isinstance(value, int) and not isinstance(value, bool))
    if names == ["cudaError_t"]:
        return isinstance(value, cudart.cudaError_t)
    raise AssertionError(f"cuda-python parameter type {kind!r} not understood: teach cuda_accepts() about it")


def check_cuda_call(name: str, args: tuple, kwargs: dict, result: tuple) -> None:
    """Signature (inspect), argument types (docstring Parameters) and result length (docstring Returns)."""
    real = getattr(cudart, name)
    bound = inspect.signature(real).bind(*args, **kwargs)
    kinds = dict(numpy_section(real.__doc__, "Parameters"))
    for param, value in bound.arguments.items():
        assert cuda_accepts(kinds.get(param, "Any"), value), f"{name}: {param}={value!r} is not a {kinds[param]}"
    assert isinstance(result, tuple) and len(result) == cuda_returns(real), f"{name} returned {result!r}"
    assert isinstance(result[0], cudart.cudaError_t)


# ---------------------------------------------------------------- the simulated GPU


class NotSimulated(AttributeError):
    pass


class CudaNamespace:
    """Stands where ``cuda.bindings.runtime`` does: only the simulated calls, and the real enums."""

    cudaError_t = cudart.cudaError_t  # noqa: N815 - the real names
    cudaMemcpyKind = cudart.cudaMemcpyKind  # noqa: N815

    def __getattr__(self, name: str):
        real = "exists in cuda.bindings.runtime but is not simulated" if hasattr(cudart, name) else "does not exist"
        raise NotSimulated(f"{name} {real}")


@dataclass
class SimulatedGpu:
    """One or more GPUs with host memory; TensorRT runtime objects autospec'd from tensorrt_lean."""

    devices: list[tuple[bytes, tuple[int, int]]] = field(default_factory=lambda: [(b"NVIDIA L4", (8, 9))])
    profiles: list = field(default_factory=list)  # ShapeRange list the fake engine was "built" with
    tensors: tuple[str, ...] = (IMAGE, MASK, OUTPUT)

    def __post_init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.streams: set[int] = set()
        self.malloc_devices: list[int] = []  # the current device at each cudaMalloc
        self.calls: list[tuple[str, tuple, dict, tuple]] = []
        self.runs: list[tuple[int, int, int]] = []  # (profile, batch, device) per execute_async_v3
        self.deserialised: list[bytes] = []
        self.contexts: list = []
        self._current = threading.local()
        self._lock = threading.Lock()
        self.cuda = self._cuda_namespace()
        self.runtime = mock.create_autospec(REAL_RUNTIME, instance=True, spec_set=True)
        self._checked(self.runtime, REAL_RUNTIME, {"deserialize_cuda_engine": self._deserialise})
        self.runtime_class = mock.create_autospec(REAL_RUNTIME, spec_set=True)
        self.runtime_class.return_value = self.runtime
        self.engine = self._engine()

    # -- CUDA
    def device(self) -> int:
        return getattr(self._current, "device", 0)  # CUDA's default device per thread

    def _cuda_namespace(self) -> CudaNamespace:
        ns = CudaNamespace()
        impls = {
            "cudaGetDeviceCount": lambda: (SUCCESS, len(self.devices)),
            "cudaSetDevice": self._set_device,
            "cudaGetDeviceProperties": self._properties,
            "cudaGetErrorName": cudart.cudaGetErrorName,  # pure host functions: the real ones
            "cudaGetErrorString": cudart.cudaGetErrorString,
            "cudaStreamCreate": self._stream_create,
            "cudaStreamSynchronize": lambda stream: self._stream_op(stream),
            "cudaStreamDestroy": lambda stream: self._stream_op(stream, destroy=True),
            "cudaMalloc": self._malloc,
            "cudaFree": self._free,
            "cudaMemcpyAsync": self._memcpy,
        }
        for name, impl in impls.items():
            fake = mock.create_autospec(getattr(cudart, name), side_effect=self._recorded(name, impl))
            object.__setattr__(ns, name, fake)
        return ns

    def _recorded(self, name, impl):
        def call(*args, **kwargs):
            result = impl(*args, **kwargs)
            with self._lock:
                self.calls.append((name, args, kwargs, result))
            check_cuda_call(name, args, kwargs, result)
            return result

        return call

    def _set_device(self, device):
        if not 0 <= device < len(self.devices):
            return (cudart.cudaError_t.cudaErrorInvalidDevice,)
        self._current.device = device
        return (SUCCESS,)

    def _properties(self, device):
        if not 0 <= device < len(self.devices):
            return (cudart.cudaError_t.cudaErrorInvalidDevice, None)
        name, (major, minor) = self.devices[device]
        prop = cudart.cudaDeviceProp()
        prop.name, prop.major, prop.minor = name.ljust(256, b"\0"), major, minor
        return SUCCESS, prop

    def _stream_create(self):
        with self._lock:
            handle = 0x5000 + 0x10 * len(self.streams) + 0x10 * len(self.calls)
            self.streams.add(handle)
        return SUCCESS, cudart.cudaStream_t(init_value=handle)

    def _stream_op(self, stream, destroy=False):
        handle = int(stream)
        if handle not in self.streams:
            return (cudart.cudaError_t.cudaErrorInvalidResourceHandle,)
        if destroy:
            self.streams.discard(handle)
        return (SUCCESS,)

    def _malloc(self, size):
        buffer = np.zeros(max(size, 1), np.uint8)
        with self._lock:
            self.memory[buffer.ctypes.data] = buffer
            self.malloc_devices.append(self.device())
        return SUCCESS, buffer.ctypes.data

    def _free(self, ptr):
        with self._lock:
            if self.memory.pop(int(ptr), None) is None:
                return (cudart.cudaError_t.cudaErrorInvalidValue,)
        return (SUCCESS,)

    def _fits(self, ptr: int, count: int) -> bool:
        buffer = self.memory.get(int(ptr))
        return buffer is not None and count <= buffer.nbytes

    def _memcpy(self, dst, src, count, kind, stream):
        h2d = kind == cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        device_ptr, host_ptr = (dst, src) if h2d else (src, dst)
        if int(stream) not in self.streams or not self._fits(device_ptr, count) or int(host_ptr) in self.memory:
            return (cudart.cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), count)
        return (SUCCESS,)

    # -- TensorRT
    @staticmethod
    def _checked(fake, real_class, impls: dict) -> None:
        """Give each method its behaviour, validating every call against the real signature as it happens."""
        for name, impl in impls.items():

            def call(*args, _name=name, _impl=impl, **kwargs):
                check_trt_call(getattr(real_class, _name), args, kwargs)
                return _impl(*args, **kwargs)

            getattr(fake, name).side_effect = call

    def _deserialise(self, serialized_engine):
        self.deserialised.append(bytes(serialized_engine))
        return self.engine

    def _engine(self):
        engine = mock.create_autospec(trt.ICudaEngine, instance=True, spec_set=True)
        engine.num_io_tensors = len(self.tensors)
        engine.num_optimization_profiles = len(self.profiles)
        self._checked(
            engine,
            trt.ICudaEngine,
            {
                "get_tensor_name": lambda index: self.tensors[index],
                "get_tensor_mode": lambda name: trt.TensorIOMode.OUTPUT if name == OUTPUT else trt.TensorIOMode.INPUT,
                "get_tensor_dtype": lambda name: trt.DataType.FLOAT,
                "create_execution_context": self._context,
            },
        )
        return engine

    def _context(self, *args, **kwargs):
        context = mock.create_autospec(trt.IExecutionContext, instance=True, spec_set=True)
        state = {"profile": 0, "shapes": {}, "addresses": {}}
        self._checked(
            context,
            trt.IExecutionContext,
            {
                "set_optimization_profile_async": lambda index, stream: self._set_profile(state, index, stream),
                "set_input_shape": lambda name, shape: self._set_shape(state, name, shape),
                "get_tensor_shape": lambda name: trt.Dims(self._shape_of(state, name)),
                "set_tensor_address": lambda name, memory: self._set_address(state, name, memory),
                "execute_async_v3": lambda stream: self._execute(state, stream),
            },
        )
        self.contexts.append(context)
        return context

    def _set_profile(self, state, index, stream):
        if int(stream) not in self.streams or not 0 <= index < len(self.profiles):
            return False
        state["profile"] = index
        return True

    def _set_shape(self, state, name, shape):
        if name not in INPUT_NAMES or len(shape) != 4:
            return False
        n, _, h, w = shape
        state["shapes"][name] = tuple(shape)
        return self.profiles[state["profile"]].contains(n, h, w)

    def _shape_of(self, state, name):
        if name == OUTPUT:
            n, _, h, w = state["shapes"][IMAGE]
            return (n, 3, h, w)
        return state["shapes"][name]

    def _set_address(self, state, name, memory):
        if name not in self.tensors or int(memory) not in self.memory:
            return False
        state["addresses"][name] = int(memory)
        return True

    def _array(self, state, name):
        shape = self._shape_of(state, name)
        return self.memory[state["addresses"][name]][: int(np.prod(shape)) * 4].view(np.float32).reshape(shape)

    def _execute(self, state, stream):
        if int(stream) not in self.streams or set(state["addresses"]) != set(self.tensors):
            return False
        image, mask = self._array(state, IMAGE), self._array(state, MASK)
        self._array(state, OUTPUT)[...] = image * mask + 0.5 * (1 - mask)
        with self._lock:
            self.runs.append((state["profile"], image.shape[0], self.device()))
        return True

    # -- the audit
    def called(self) -> set[str]:
        """Names of every TensorRT and CUDA function called so far, as `used_calls` spells them."""
        names = {f"Runtime.{c[0]}" for c in self.runtime.mock_calls}
        names |= {f"ICudaEngine.{c[0]}" for c in self.engine.mock_calls}
        names |= {f"IExecutionContext.{c[0]}" for ctx in self.contexts for c in ctx.mock_calls}
        return names | {name for name, *_ in self.calls}

    def check_all_calls(self) -> int:
        """Hold every recorded TensorRT call to tensorrt_lean's signatures; returns how many calls were checked."""
        n = check_recorded_trt_calls(self.runtime, REAL_RUNTIME)
        n += check_recorded_trt_calls(self.engine, trt.ICudaEngine)
        for context in self.contexts:
            n += check_recorded_trt_calls(context, trt.IExecutionContext)
        for name, args, kwargs in self.runtime_class.mock_calls:
            if name == "":  # Runtime(logger) itself; calls on the instance were checked above
                check_trt_call(REAL_RUNTIME.__init__, args, kwargs)
                n += 1
        return n + len(self.calls)
