"""The tensorrt backend on a CPU machine.

- Without TensorRT: a one-line reason with the install hint, from the backend and through `pconv infer`;
  `auto` falls back to the sidecar's ONNX with ONNX Runtime and says so.
- The runtime module needs neither torch nor onnx.
- With stand-ins for ``tensorrt`` and ``cuda.bindings.runtime`` (host memory playing the GPU's):
  the backend's own logic — status checks, sidecar refusal *before* deserialising, the engine's
  I/O contract, profile selection, batch splitting, buffers and copies; and `build_engine`'s
  arguments to Polygraphy's loaders and its atomic writes. What TensorRT itself does is tested
  only on a GPU (test_tensorrt_gpu.py).
"""

import ctypes
import json
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from engines_onnx import contract_metadata, write_contract_onnx
from PIL import Image
from reference import sha256_of as file_sha256

from pconv_deploy.engines.profiles import ShapeRange
from pconv_deploy.engines.sidecar import SidecarError, make_sidecar, write_sidecar
from pconv_deploy.errors import PConvError
from pconv_deploy.runtime import tensorrt_backend
from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend, TensorRTUnavailable, tensorrt_status

NO_TENSORRT = "TensorRT is not installed: pip install 'pconv-deploy[gpu]' on a CUDA machine"
tensorrt_absent = pytest.mark.skipif(
    tensorrt_status() != NO_TENSORRT, reason="tests the machine without TensorRT (this one has it)"
)
PROFILES = [
    ShapeRange((1, 32, 32), (2, 64, 64), (4, 128, 128)),
    ShapeRange((1, 256, 256), (1, 256, 256), (1, 512, 512)),
]


def engine_with_sidecar(folder: Path, gpu=("NVIDIA L4", "8.9"), trt_version="10.9.0.34", **metadata) -> Path:
    """model.engine (placeholder bytes) + model.engine.json naming onnx/model.onnx, a runnable contract graph."""
    onnx_path = write_contract_onnx(folder / "onnx" / "model.onnx", contract_metadata(**metadata))
    engine = folder / "model.engine"
    engine.write_bytes(b"placeholder engine")
    sidecar = make_sidecar(
        onnx_path=onnx_path,
        onnx_sha256=file_sha256(onnx_path),
        engine_path=engine,
        metadata=contract_metadata(**metadata),
        profiles=PROFILES,
        tensorrt_version=trt_version,
        gpu_name=gpu[0],
        compute_capability=gpu[1],
        version_compatible=False,
    )
    write_sidecar(engine, sidecar)
    return engine


# ---------------------------------------------------------------- without TensorRT (this machine)


@tensorrt_absent
def test_backend_without_tensorrt_says_what_to_install(tmp_path):
    engine = engine_with_sidecar(tmp_path)
    with pytest.raises(TensorRTUnavailable) as e:
        TensorRTBackend(engine)
    assert str(e.value) == NO_TENSORRT
    assert isinstance(e.value, PConvError)


def write_images(folder: Path) -> tuple[Path, Path]:
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(folder / "images" / "a.png")
    hole = np.zeros((40, 50), np.uint8)
    hole[10:20, 10:30] = 255  # white = hole on disk
    Image.fromarray(hole).save(folder / "masks" / "a.png")
    return folder / "images", folder / "masks"


def infer(engine: Path, images: Path, masks: Path, output: Path, backend: str):
    args = ["infer", "--model", str(engine), "--images", str(images), "--masks", str(masks), "--output", str(output)]
    return subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", *args, "--backend", backend], capture_output=True, text=True
    )


@tensorrt_absent
def test_cli_tensorrt_backend_without_tensorrt_is_one_line(tmp_path):
    engine = engine_with_sidecar(tmp_path)
    images, masks = write_images(tmp_path)
    r = infer(engine, images, masks, tmp_path / "out", "tensorrt")
    assert r.returncode == 1
    assert r.stderr == f"error: {engine}: {NO_TENSORRT}\n"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@tensorrt_absent
def test_auto_falls_back_to_the_sidecars_onnx_and_says_so(tmp_path):
    from pconv_deploy.runtime.backends import load_backend

    engine = engine_with_sidecar(tmp_path)
    said = []
    backend = load_backend(engine, "auto", on_fallback=said.append)
    assert backend.name == "onnxruntime-cpu" and backend.multiple == 32
    assert said == [f"TensorRT unavailable ({NO_TENSORRT}): using ONNX Runtime CPU on model.onnx"]
    image, mask = np.full((1, 3, 32, 32), 0.8, np.float32), np.zeros((1, 1, 32, 32), np.float32)
    np.testing.assert_allclose(backend.run(image, mask), 0.5)  # the sidecar's ONNX really runs

    images, masks = write_images(tmp_path)  # and through the CLI, on stderr
    r = infer(engine, images, masks, tmp_path / "out", "auto")
    assert r.returncode == 0, r.stderr
    assert f"TensorRT unavailable ({NO_TENSORRT}): using ONNX Runtime CPU on model.onnx" in r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "out" / "a.png").is_file()


def test_runtime_module_needs_neither_torch_nor_onnx(tmp_path):
    engine = engine_with_sidecar(tmp_path)
    code = f"""
import sys
sys.modules["torch"] = None; sys.modules["onnx"] = None  # any import of them now fails
from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend, tensorrt_status
from pconv_deploy.engines.sidecar import read_sidecar
assert read_sidecar({str(engine)!r})["metadata"]["pconv.multiple"] == "32"
print(tensorrt_status())
try:
    TensorRTBackend({str(engine)!r})
except Exception as e:
    print(type(e).__name__)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    status = tensorrt_status()
    assert r.stdout.splitlines() == [str(status), "TensorRTUnavailable" if status else "SidecarError"]


# ---------------------------------------------------------------- stand-ins for tensorrt and cuda-python


class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime's calls used by the backend; 'device' memory is host memory."""

    class cudaMemcpyKind:  # noqa: N801 - the real enum's name
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self, devices=1, name=b"NVIDIA L4", cc=(8, 9)):
        super().__init__("cuda.bindings.runtime")
        self.devices, self.name, self.cc = devices, name, cc
        self.memory: dict[int, np.ndarray] = {}

    def cudaGetDeviceCount(self):  # noqa: N802
        return (0, self.devices) if self.devices >= 0 else (100, 0)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return 0, SimpleNamespace(name=self.name + b"\0" * 8, major=self.cc[0], minor=self.cc[1])

    def cudaGetErrorString(self, err):  # noqa: N802
        return 0, b"no CUDA-capable device is detected"

    def cudaSetDevice(self, device):  # noqa: N802
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        return 0, 77

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return (0,)

    def cudaMalloc(self, nbytes):  # noqa: N802
        buffer = np.zeros(nbytes, np.uint8)
        self.memory[buffer.ctypes.data] = buffer
        return 0, buffer.ctypes.data

    def cudaFree(self, ptr):  # noqa: N802
        del self.memory[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        ctypes.memmove(dst, src, nbytes)
        return (0,)


class FakeContext:
    """Computes the contract graph (image * mask + 0.5 * (1 - mask)) from the bound addresses."""

    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.profile = engine, {}, {}, 0

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        profile = PROFILES[self.profile]
        self.shapes[name] = tuple(shape)
        return profile.contains(shape[0], shape[2], shape[3])

    def get_tensor_shape(self, name):
        n, _, h, w = self.shapes["image"]
        return (n, 3, h, w)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def _array(self, name, shape):
        buffer = self.engine.cudart.memory[self.addresses[name]]
        return buffer[: int(np.prod(shape)) * 4].view(np.float32).reshape(shape)

    def execute_async_v3(self, stream):
        image, mask = self._array("image", self.shapes["image"]), self._array("mask", self.shapes["mask"])
        self._array("inpainted", self.get_tensor_shape("inpainted"))[...] = image * mask + 0.5 * (1 - mask)
        self.engine.runs.append((self.profile, self.shapes["image"][0]))
        return True


def fake_tensorrt(cudart, version="10.9.0.34", tensors=("image", "mask", "inpainted"), deserialised=None):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = SimpleNamespace(INPUT=SimpleNamespace(name="INPUT"), OUTPUT=SimpleNamespace(name="OUTPUT"))
    trt.DataType = SimpleNamespace(FLOAT="float32")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})

    class Engine:
        num_io_tensors, num_optimization_profiles = len(tensors), len(PROFILES)

        def __init__(self):
            self.cudart, self.runs = cudart, []

        def get_tensor_name(self, i):
            return tensors[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.OUTPUT if name == "inpainted" else trt.TensorIOMode.INPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def create_execution_context(self):
            return FakeContext(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            deserialised.append(data)
            return Engine()

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    """Install the stand-ins; returns (cudart, deserialised engine bytes)."""
    cudart, deserialised = FakeCudart(), []
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart, deserialised=deserialised))
    return cudart, deserialised


def test_status_reasons(fake_gpu, monkeypatch):
    cudart, _ = fake_gpu
    assert tensorrt_status() is None
    cudart.devices = 0
    assert tensorrt_status() == (
        "no CUDA GPU found: TensorRT needs an NVIDIA GPU and driver; pip install 'pconv-deploy[gpu]' on a CUDA machine"
    )
    cudart.devices = -1  # the driver reports an error
    assert tensorrt_status().startswith("no usable CUDA GPU (CUDA error 100: no CUDA-capable device is detected)")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart, version="8.6.1"))
    assert tensorrt_status() == (
        "TensorRT 8.6.1 is too old (pconv-deploy needs >= 10): pip install 'pconv-deploy[gpu]' on a CUDA machine"
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart))
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda", None)
    assert tensorrt_status() == (
        "the CUDA Python bindings (cuda-python) are not installed: pip install 'pconv-deploy[gpu]' on a CUDA machine"
    )


def test_mismatches_are_refused_before_deserialising(fake_gpu, tmp_path):
    cudart, deserialised = fake_gpu
    engine = engine_with_sidecar(tmp_path, gpu=("NVIDIA A100-SXM4-80GB", "8.0"))
    with pytest.raises(SidecarError, match=r"built for NVIDIA A100-SXM4-80GB \(compute capability 8.0\), this GPU is "
                                           r"NVIDIA L4 \(compute capability 8.9\)"):  # fmt: skip
        TensorRTBackend(engine)
    engine = engine_with_sidecar(tmp_path, trt_version="10.8.0.43")
    with pytest.raises(SidecarError, match=r"built with TensorRT 10.8.0.43, this is TensorRT 10.9.0.34"):
        TensorRTBackend(engine)
    (tmp_path / "model.engine.json").unlink()
    with pytest.raises(SidecarError, match=r"no sidecar beside engine"):
        TensorRTBackend(engine)
    assert deserialised == []  # TensorRT never saw a mismatched file


def test_engine_tensors_must_be_the_contract(fake_gpu, tmp_path, monkeypatch):
    cudart, deserialised = fake_gpu
    trt = fake_tensorrt(cudart, tensors=("input", "mask", "inpainted"), deserialised=deserialised)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(PConvError, match=r"model contract mismatch: engine has \['inpainted', 'input', 'mask'\]"):
        TensorRTBackend(engine_with_sidecar(tmp_path))


def test_run_selects_profiles_splits_batches_and_copies_back(fake_gpu, tmp_path):
    cudart, deserialised = fake_gpu
    backend = TensorRTBackend(engine_with_sidecar(tmp_path), streams=2)
    assert deserialised == [b"placeholder engine"]
    assert (backend.name, backend.multiple, backend.max_batch) == ("tensorrt", 32, 4)
    assert backend.metadata == contract_metadata()
    engine = backend._all[0].context.engine
    rng = np.random.default_rng(0)

    def check(n, h, w):
        image = rng.random((n, 3, h, w), dtype=np.float32)
        mask = (rng.random((n, 1, h, w)) > 0.5).astype(np.float32)
        np.testing.assert_array_equal(backend.run(image, mask), image * mask + 0.5 * (1 - mask))

    check(3, 64, 96)
    check(1, 512, 256)  # only the second profile holds 512
    check(10, 32, 32)  # more than any profile's max batch: split 4 + 4 + 2
    assert engine.runs == [(0, 3), (1, 1), (0, 4), (0, 4), (0, 2)]
    check(2, 512, 512)  # the 512 profile takes batch 1: split 1 + 1
    assert engine.runs[-2:] == [(1, 1), (1, 1)]
    with pytest.raises(PConvError, match=r"no optimization profile of this engine takes 1x1024x512"):
        backend.run(np.zeros((1, 3, 1024, 512), np.float32), np.zeros((1, 1, 1024, 512), np.float32))
    with pytest.raises(PConvError, match="multiples of 32, got 48x64"):
        backend.run(np.zeros((1, 3, 48, 64), np.float32), np.zeros((1, 1, 48, 64), np.float32))
    with pytest.raises(PConvError, match=r"expected image \[N,3,H,W\] and mask \[N,1,H,W\]"):
        backend.run(np.zeros((1, 1, 32, 32), np.float32), np.zeros((1, 1, 32, 32), np.float32))

    def job(seed):  # several threads share the two contexts; each call gets its own slot
        r = np.random.default_rng(seed)
        image, mask = r.random((2, 3, 64, 64), dtype=np.float32), (r.random((2, 1, 64, 64)) > 0.5).astype(np.float32)
        return np.array_equal(backend.run(image, mask), image * mask + 0.5 * (1 - mask))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(12)))
    assert len(backend._all) == 2 and backend._slots.qsize() == 2  # every slot returned
    backend.close()
    assert cudart.memory == {}  # every device buffer freed


def test_fake_module_matches_what_the_backend_imports():
    """Guard for the stand-ins: the backend reaches cuda-python only through `_cudart()`."""
    source = Path(tensorrt_backend.__file__).read_text()
    assert source.count("from cuda.bindings import runtime as cudart") == 1
    assert "import torch" not in source and "import onnx" not in source
    assert json.loads(json.dumps(PROFILES[0].input_shapes()))  # what the sidecar stores is plain JSON


# ---------------------------------------------------------------- the build's wiring, Polygraphy's loaders recorded


@pytest.fixture
def recorded_loaders(fake_gpu, monkeypatch):
    """Polygraphy's real CreateConfig and Profile; the loaders that need TensorRT record their arguments."""
    import polygraphy.backend.trt as ptrt
    from polygraphy.exception import PolygraphyException

    calls = {"fail": False}
    sys.modules["tensorrt"].MemoryPoolType = SimpleNamespace(WORKSPACE="workspace-pool")

    def network(path, strongly_typed=None):
        calls["network"] = (path, strongly_typed)
        return "network"

    def engine_from_network(network, config=None, save_timing_cache=None):
        calls["engine"] = (network, config, save_timing_cache)
        if calls["fail"]:
            return lambda: (_ for _ in ()).throw(PolygraphyException("Could not parse the network\nmore detail"))
        return lambda: "engine"

    def save_engine(engine, path):
        calls["saved"] = path
        return lambda: Path(path).write_bytes(b"serialised " + engine.encode())

    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", network)
    monkeypatch.setattr(ptrt, "EngineFromNetwork", engine_from_network)
    monkeypatch.setattr(ptrt, "SaveEngine", save_engine)
    return calls


def test_build_wiring(recorded_loaders, tmp_path):
    from pconv_deploy.engines.build import build_engine, plan_build
    from pconv_deploy.engines.sidecar import read_sidecar

    onnx_path = write_contract_onnx(tmp_path / "m.onnx", contract_metadata(precision="fp16"))
    plan = plan_build(onnx_path, tmp_path / "out" / "m.engine", fp16=True, min_shapes=["1x32x32"],
                      opt_shapes=["2x64x64"], max_shapes=["4x128x128"], timing_cache=tmp_path / "t.cache",
                      workspace_gib=2, version_compatible=True)  # fmt: skip
    sidecar = build_engine(plan)
    calls = recorded_loaders
    assert calls["network"] == (str(onnx_path), True)  # strongly typed: the graph's types decide the precision
    network, config, cache = calls["engine"]
    assert (network, cache) == ("network", str(tmp_path / "t.cache"))
    assert (config.timing_cache_path, config.version_compatible) == (str(tmp_path / "t.cache"), True)
    assert config.memory_pool_limits == {"workspace-pool": 2 * 2**30}
    assert not config.fp16  # no precision flag: TensorRT 11 has none
    (profile,) = config.profiles
    assert [list(profile[name]) for name in ("image", "mask")] == [
        [[1, 3, 32, 32], [2, 3, 64, 64], [4, 3, 128, 128]],
        [[1, 1, 32, 32], [2, 1, 64, 64], [4, 1, 128, 128]],
    ]
    assert calls["saved"] == str(tmp_path / "out" / ".m.engine.tmp")
    assert (tmp_path / "out" / "m.engine").read_bytes() == b"serialised engine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.engine", "m.engine.json"]
    assert read_sidecar(tmp_path / "out" / "m.engine") == sidecar
    assert (sidecar["gpu_name"], sidecar["compute_capability"], sidecar["tensorrt_version"]) == (
        "NVIDIA L4", "8.9", "10.9.0.34")  # fmt: skip
    assert (sidecar["precision"], sidecar["onnx_file"], sidecar["version_compatible"]) == ("fp16", "../m.onnx", True)


def test_failed_build_leaves_the_previous_engine_alone(recorded_loaders, tmp_path):
    from pconv_deploy.engines.build import BuildError, build_engine, plan_build

    onnx_path = write_contract_onnx(tmp_path / "m.onnx")
    plan = plan_build(onnx_path, tmp_path / "m.engine")
    build_engine(plan)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    recorded_loaders["fail"] = True
    with pytest.raises(BuildError) as e:
        build_engine(plan)
    assert str(e.value) == f"{onnx_path}: TensorRT build failed: Could not parse the network"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, old pair intact
