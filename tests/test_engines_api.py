"""Every TensorRT and CUDA name the code uses exists in the installed ``tensorrt_lean`` / ``cuda.bindings.runtime``.

- A static walk of engines/trt_api.py and engines/build.py: each attribute reached from a TensorRT or
  CUDA object (``module.Logger.WARNING``, ``context.set_input_shape``, ``cudart.cudaMemcpyAsync``, ...)
  must exist on the real module or class. (The calls' arity and argument types are checked where they
  run, in test_engines_backend.py, against the same modules.)
- The real cuda-python calls on this machine: their return tuples have the documented length, the
  error codes are the real enum's, and `check` turns them into one-line messages.
- The validators in engines_real_api.py can fail (a swapped or misspelt call is caught).
- Layering: the runtime reaches TensorRT and CUDA only through the adapter; engines/ never imports
  runtime/; the runtime never imports the builder.
"""

import ast
import sys
from pathlib import Path

import helpers.engines_real_api as engines_real_api
import pytest
import tensorrt_lean as trt
from cuda.bindings import runtime as cudart
from helpers.engines_real_api import ROOTS, check_cuda_call, check_trt_call, cuda_returns, used_names

from pconv_deploy.engines.trt_api import CudaError, TensorRTUnavailable, check, import_tensorrt


@pytest.mark.parametrize("relative", sorted(ROOTS))
def test_every_tensorrt_and_cuda_name_used_exists(relative):
    names = used_names(relative)
    assert len(names) >= (30 if relative.endswith("trt_api.py") else 1)  # the walk really saw the calls
    missing = []
    for text, obj, chain in names:
        for attr in chain:
            if not hasattr(obj, attr):
                missing.append(text)
                break
            obj = getattr(obj, attr)
    assert missing == []


def test_the_name_walk_catches_a_misspelling(tmp_path, monkeypatch):
    source = (engines_real_api.PACKAGE / "engines/trt_api.py").read_text()
    source = source.replace("set_input_shape(", "set_input_shapes(")
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "trt_api.py").write_text(source)
    monkeypatch.setattr(engines_real_api, "PACKAGE", tmp_path)
    names = used_names("engines/trt_api.py")
    assert any(text == "context.set_input_shapes" for text, _, _ in names)
    assert not hasattr(trt.IExecutionContext, "set_input_shapes")


def test_real_cuda_calls_return_the_documented_tuples_here():
    """On this machine (no driver): the real calls, their real error, the documented tuple length."""
    results = {
        "cudaGetDeviceCount": ((), cudart.cudaGetDeviceCount()),
        "cudaSetDevice": ((0,), cudart.cudaSetDevice(0)),
        "cudaGetDeviceProperties": ((0,), cudart.cudaGetDeviceProperties(0)),
        "cudaStreamCreate": ((), cudart.cudaStreamCreate()),
        "cudaMalloc": ((16,), cudart.cudaMalloc(16)),
    }
    errors = {result[0] for _, result in results.values()}
    if errors == {cudart.cudaError_t.cudaSuccess}:
        pytest.skip("a CUDA device answers here: the no-GPU tuples are not what it returns")
    for name, (args, result) in results.items():
        assert len(result) == cuda_returns(getattr(cudart, name)), name
        check_cuda_call(name, args, {}, result)
    assert errors <= {cudart.cudaError_t.cudaErrorInsufficientDriver, cudart.cudaError_t.cudaErrorNoDevice}


def test_check_turns_real_error_codes_into_one_line():
    e = cudart.cudaError_t
    assert check((e.cudaSuccess, 7), "cudaGetDeviceCount") == 7
    assert check((e.cudaSuccess,), "cudaSetDevice") is None
    for code in (e.cudaErrorNoDevice, e.cudaErrorInsufficientDriver):
        with pytest.raises(TensorRTUnavailable) as raised:
            check((code, None), "cudaGetDeviceCount")
        name = cudart.cudaGetErrorName(code)[1].decode()
        message = str(raised.value)
        assert message.startswith(f"no CUDA GPU (cudaGetDeviceCount: {name}, ") and "\n" not in message
    with pytest.raises(CudaError, match=r"^CUDA error in cudaMemcpyAsync: cudaErrorInvalidValue \(invalid argument\)$"):
        check((e.cudaErrorInvalidValue,), "cudaMemcpyAsync")


def test_the_call_validators_can_fail():
    ctx = trt.IExecutionContext
    check_trt_call(ctx.set_tensor_address, ("image", 4096), {})
    with pytest.raises(AssertionError, match="fits no overload"):
        check_trt_call(ctx.set_tensor_address, (4096, "image"), {})  # swapped
    with pytest.raises(AssertionError, match="fits no overload"):
        check_trt_call(ctx.set_input_shape, ("image",), {})  # an argument short
    with pytest.raises(AssertionError, match="fits no overload"):
        check_trt_call(ctx.execute_async_v3, (True,), {})  # bool is not a stream handle
    with pytest.raises(AssertionError, match="fits no overload"):
        check_trt_call(trt.Runtime.deserialize_cuda_engine, ("model.engine",), {})  # a path, not bytes
    kind, ok = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, (cudart.cudaError_t.cudaSuccess,)
    check_cuda_call("cudaMemcpyAsync", (1, 2, 64, kind, 0), {}, ok)
    with pytest.raises(AssertionError, match="kind"):
        check_cuda_call("cudaMemcpyAsync", (1, 2, kind, 64, 0), {}, ok)  # count and kind swapped
    with pytest.raises(TypeError):
        check_cuda_call("cudaMemcpyAsync", (1, 2, 64, kind), {}, ok)  # no stream
    with pytest.raises(AssertionError, match="returned"):
        check_cuda_call("cudaMalloc", (64,), {}, ok)  # cudaMalloc returns (err, devPtr)


def test_import_prefers_the_full_tensorrt_then_the_lean_runtime(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    found = import_tensorrt()
    assert (found.name, found.version, found.lean, found.module) == ("tensorrt_lean", trt.__version__, True, trt)
    with pytest.raises(TensorRTUnavailable, match=r"^building an engine needs the full TensorRT \(only tensorrt_lean"):
        import_tensorrt(builder=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)  # where the full module is present it wins
    assert import_tensorrt(builder=True).name == "tensorrt"
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    with pytest.raises(TensorRTUnavailable, match=r"^TensorRT is not installed: pip install"):
        import_tensorrt()


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_layering_runtime_uses_engines_never_the_reverse():
    package = engines_real_api.PACKAGE
    for path in (package / "engines").glob("*.py"):
        assert not {m for m in imports_of(path) if m.startswith("pconv_deploy.runtime")}, path.name
    backend = package / "runtime" / "tensorrt_backend.py"
    imported = imports_of(backend)
    assert "pconv_deploy.engines.build" not in imported  # the runtime never imports the builder
    assert not {m for m in imported if m.split(".")[0] in ("tensorrt", "tensorrt_lean", "cuda", "torch", "onnx")}
    source = backend.read_text()
    for receiver in ("cudart.", "context.", "engine.", ".execute_async_v3", ".deserialize_cuda_engine"):
        assert receiver not in source, f"the backend calls TensorRT/CUDA directly ({receiver}); use trt_api"
