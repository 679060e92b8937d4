"""The tensorrt backend on a CPU machine, against the real ``tensorrt_lean`` and ``cuda.bindings.runtime``.

- With only ``tensorrt_lean`` and no GPU (this machine): an engine path gets through the module, the
  sidecar and its TensorRT checks to the deserialisation step, which says "no CUDA GPU" in one line;
  the CLI says it in one line; ``auto`` falls back to the sidecar's ONNX with ONNX Runtime.
- On a simulated GPU built from the real classes (tests/helpers/engines_real_api.py: autospec'd TensorRT
  objects, autospec'd CUDA functions, host memory as device memory): the backend's logic — sidecar
  refusal *before* deserialising, lean-runtime rules, the engine's I/O contract, profile selection,
  batch splitting, copies, the device index, several threads — and every TensorRT and CUDA call it
  made, checked against the real signatures and return tuples.
"""

import importlib.util
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorrt_lean
from helpers.engines_onnx import contract_metadata, write_contract_onnx
from helpers.engines_real_api import REAL_RUNTIME, SimulatedGpu, check_trt_call, used_calls
from helpers.reference import sha256_of as file_sha256
from PIL import Image

from pconv_deploy.engines import trt_api
from pconv_deploy.engines.profiles import ShapeRange
from pconv_deploy.engines.sidecar import Sidecar, SidecarError
from pconv_deploy.errors import PConvError
from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend, TensorRTUnavailable, tensorrt_readiness

LEAN = tensorrt_lean.__version__  # 11.4.0.106 here
HINT = "pip install 'pconv-deploy[gpu]' on a CUDA machine"
NO_GPU = (
    "no CUDA GPU (cudaGetDeviceCount: cudaErrorInsufficientDriver, CUDA driver version is insufficient for CUDA "
    f"runtime version): TensorRT needs an NVIDIA GPU and driver; {HINT}"
)
READINESS = tensorrt_readiness()
only_lean_no_gpu = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None or READINESS.usable or READINESS.reason != NO_GPU,
    reason=f"tests a machine with only tensorrt_lean and no CUDA driver (here: {READINESS.reason})",
)
PROFILES = [
    ShapeRange((1, 32, 32), (2, 64, 64), (4, 128, 128)),
    ShapeRange((1, 256, 256), (1, 256, 256), (1, 512, 512)),
]


def engine_with_sidecar(
    folder: Path, gpu=("NVIDIA L4", "8.9"), trt_version="11.1.0.10", version_compatible=True, **metadata
) -> Path:
    """model.engine (placeholder bytes) + model.engine.json naming model.onnx beside it, a runnable contract graph."""
    onnx_path = write_contract_onnx(folder / "model.onnx", contract_metadata(**metadata))
    engine = folder / "model.engine"
    engine.write_bytes(b"placeholder engine")
    Sidecar.new(
        onnx_path=onnx_path,
        onnx_sha256=file_sha256(onnx_path),
        engine_path=engine,
        metadata=contract_metadata(**metadata),
        profiles=PROFILES,
        tensorrt_version=trt_version,
        gpu_name=gpu[0],
        compute_capability=gpu[1],
        version_compatible=version_compatible,
    ).write(engine)
    return engine


# ---------------------------------------------------------------- the real modules, no GPU (this machine)


@only_lean_no_gpu
def test_lean_only_engine_reaches_deserialisation_and_says_no_cuda_gpu(tmp_path, monkeypatch):
    engine = engine_with_sidecar(tmp_path)
    reached = []
    step = TensorRTBackend._deserialise
    monkeypatch.setattr(TensorRTBackend, "_deserialise", lambda self: reached.append(self.tensorrt.name) or step(self))
    with pytest.raises(TensorRTUnavailable) as e:
        TensorRTBackend(engine)
    assert reached == ["tensorrt_lean"]  # module found, sidecar and its TensorRT rules passed
    assert str(e.value) == NO_GPU and "\n" not in str(e.value)


@only_lean_no_gpu
def test_lean_runtime_refuses_an_engine_that_is_not_version_compatible(tmp_path):
    engine = engine_with_sidecar(tmp_path, version_compatible=False)
    with pytest.raises(SidecarError, match=r"the lean runtime \(tensorrt_lean\) runs only version-compatible engines"):
        TensorRTBackend(engine)


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


@only_lean_no_gpu
def test_cli_tensorrt_backend_without_gpu_is_one_line(tmp_path):
    engine = engine_with_sidecar(tmp_path)
    images, masks = write_images(tmp_path)
    r = infer(engine, images, masks, tmp_path / "out", "tensorrt")
    assert r.returncode == 1
    assert r.stderr == f"error: {engine}: {NO_GPU}\n"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@only_lean_no_gpu
def test_auto_falls_back_to_the_sidecars_onnx_and_says_so(tmp_path):
    from pconv_deploy.runtime.backends import load_backend

    engine = engine_with_sidecar(tmp_path)
    said = []
    backend = load_backend(engine, "auto", on_fallback=said.append)
    assert backend.name == "onnxruntime-cpu" and backend.multiple == 32
    assert said == [f"TensorRT unavailable ({NO_GPU}): using ONNX Runtime CPU on model.onnx"]
    image, mask = np.full((1, 3, 32, 32), 0.8, np.float32), np.zeros((1, 1, 32, 32), np.float32)
    np.testing.assert_allclose(backend.run(image, mask), 0.5)  # the sidecar's ONNX really runs

    images, masks = write_images(tmp_path)  # and through the CLI, on stderr
    r = infer(engine, images, masks, tmp_path / "out", "auto")
    assert r.returncode == 0, r.stderr
    assert f"TensorRT unavailable ({NO_GPU}): using ONNX Runtime CPU on model.onnx" in r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "out" / "a.png").is_file()


def test_runtime_module_needs_neither_torch_nor_onnx(tmp_path):
    engine = engine_with_sidecar(tmp_path)
    code = f"""
import sys
sys.modules["torch"] = None; sys.modules["onnx"] = None  # any import of them now fails
from pconv_deploy.runtime.tensorrt_backend import TensorRTBackend, tensorrt_readiness
from pconv_deploy.engines.sidecar import Sidecar
assert Sidecar.read({str(engine)!r}).metadata["pconv.multiple"] == "32"
print(tensorrt_readiness().usable)
try:
    TensorRTBackend({str(engine)!r})
except Exception as e:
    print(type(e).__name__)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    usable = READINESS.usable
    assert r.stdout.splitlines() == [str(usable), "SidecarError" if usable else "TensorRTUnavailable"]


# ---------------------------------------------------------------- a simulated GPU built from the real classes


@pytest.fixture
def gpu(monkeypatch):
    """The simulated GPU in place: cuda-python calls and tensorrt_lean.Runtime; the full tensorrt hidden."""
    sim = SimulatedGpu(profiles=PROFILES)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # the lean runtime, as in a small deployment
    monkeypatch.setattr(trt_api, "cuda_runtime", lambda: sim.cuda)
    monkeypatch.setattr(tensorrt_lean, "Runtime", sim.runtime_class)
    return sim


def contract_output(image, mask):
    return image * mask + 0.5 * (1 - mask)


def test_run_selects_profiles_splits_batches_and_copies_back(gpu, tmp_path):
    backend = TensorRTBackend(engine_with_sidecar(tmp_path), streams=2)
    assert gpu.deserialised == [b"placeholder engine"]
    assert gpu.runtime.engine_host_code_allowed is True  # version-compatible: the plan's lean runtime is trusted
    check_trt_call(REAL_RUNTIME.engine_host_code_allowed.fset, (True,), {})  # a settable bool
    assert (backend.name, backend.multiple, backend.max_batch) == ("tensorrt", 32, 4)
    assert backend.metadata == contract_metadata()
    rng = np.random.default_rng(0)

    def check(n, h, w):
        image = rng.random((n, 3, h, w), dtype=np.float32)
        mask = (rng.random((n, 1, h, w)) > 0.5).astype(np.float32)
        np.testing.assert_array_equal(backend.run(image, mask), contract_output(image, mask))

    check(3, 64, 96)
    check(1, 512, 256)  # only the second profile holds 512
    check(10, 32, 32)  # more than any profile's max batch: split 4 + 4 + 2
    assert [(p, n) for p, n, _ in gpu.runs] == [(0, 3), (1, 1), (0, 4), (0, 4), (0, 2)]
    check(2, 512, 512)  # the 512 profile takes batch 1: split 1 + 1
    assert [(p, n) for p, n, _ in gpu.runs[-2:]] == [(1, 1), (1, 1)]
    with pytest.raises(PConvError, match=r"no optimization profile of this engine takes 1x1024x512"):
        backend.run(np.zeros((1, 3, 1024, 512), np.float32), np.zeros((1, 1, 1024, 512), np.float32))
    with pytest.raises(PConvError, match="multiples of 32, got 48x64"):
        backend.run(np.zeros((1, 3, 48, 64), np.float32), np.zeros((1, 1, 48, 64), np.float32))
    with pytest.raises(PConvError, match=r"expected image \[N,3,H,W\] and mask \[N,1,H,W\]"):
        backend.run(np.zeros((1, 1, 32, 32), np.float32), np.zeros((1, 1, 32, 32), np.float32))

    def job(seed):  # several threads share the two contexts; each call gets its own
        r = np.random.default_rng(seed)
        image, mask = r.random((2, 3, 64, 64), dtype=np.float32), (r.random((2, 1, 64, 64)) > 0.5).astype(np.float32)
        return np.array_equal(backend.run(image, mask), contract_output(image, mask))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(12)))
    assert len(backend._contexts) == 2 and backend._free.qsize() == 2  # every context returned
    backend.close()
    assert gpu.memory == {} and gpu.streams == set()  # every device buffer and stream freed
    assert gpu.check_all_calls() > 150  # every TensorRT and CUDA call held to the real signatures
    # and no call the adapter makes escaped that check (the error-name lookups run on real errors only)
    assert used_calls("engines/trt_api.py") - gpu.called() == {"cudaGetErrorName", "cudaGetErrorString"}


def test_the_backend_and_triton_repo_share_one_read_of_the_sidecar(gpu, tmp_path, monkeypatch):
    """Each reads ``<engine>.json`` once and parses its profiles once (`Sidecar.read`), and both get the same ones."""
    from pconv_deploy.serving.options import RepositoryOptions
    from pconv_deploy.serving.repository import write_triton_repo

    engine = engine_with_sidecar(tmp_path)
    reads, parsed = [], []
    read, parse = Sidecar.read.__func__, ShapeRange.from_input_shapes.__func__
    monkeypatch.setattr(Sidecar, "read", classmethod(lambda cls, path: reads.append(read(cls, path)) or reads[-1]))
    monkeypatch.setattr(
        ShapeRange,
        "from_input_shapes",
        classmethod(lambda cls, *a, **k: parsed.append(parse(cls, *a, **k)) or parsed[-1]),
    )
    backend = TensorRTBackend(engine)
    assert (len(reads), parsed) == (1, PROFILES)  # one read, each profile parsed once
    assert backend.profiles is reads[0].profiles and backend.profiles == tuple(PROFILES)
    assert backend.metadata == reads[0].metadata and backend.multiple == reads[0].multiple == 32
    with pytest.raises(PConvError, match=r"model.engine: its profiles accept batches up to 1, not --max-batch-size 2"):
        write_triton_repo(RepositoryOptions(model=engine, repo=tmp_path / "repo", max_batch_size=2))
    assert (len(reads), parsed) == (2, PROFILES * 2)  # triton-repo: one read too
    assert reads[1] == reads[0]  # the same profiles (batches up to 4 and 1: Triton may send 1) and contract
    folder = write_triton_repo(RepositoryOptions(model=engine, repo=tmp_path / "repo", max_batch_size=1))
    assert (folder / "config.pbtxt").read_text().count('string_value: "32"') == 1  # pconv.multiple, from that read
    backend.close()


def test_the_device_index_is_used_on_every_thread_and_checked_against_the_sidecar(gpu, tmp_path):
    gpu.devices = [(b"NVIDIA L4", (8, 9)), (b"NVIDIA A100-SXM4-80GB", (8, 0))]
    engine = engine_with_sidecar(tmp_path, gpu=("NVIDIA A100-SXM4-80GB", "8.0"))
    with pytest.raises(SidecarError, match=r"built for NVIDIA A100-SXM4-80GB .* this GPU is NVIDIA L4"):
        TensorRTBackend(engine, device=0)
    with pytest.raises(TensorRTUnavailable, match=r"there is no CUDA device 2: this machine has 2 \(cuda:0..1\)"):
        TensorRTBackend(engine, device=2)
    assert gpu.deserialised == []
    backend = TensorRTBackend(engine, device=1, streams=2)
    image, mask = np.ones((1, 3, 32, 32), np.float32), np.ones((1, 1, 32, 32), np.float32)
    with ThreadPoolExecutor(3) as pool:  # fresh threads start on CUDA's default device 0
        list(pool.map(lambda _: backend.run(image, mask), range(6)))
    assert len(gpu.runs) == 6 and {device for _, _, device in gpu.runs} == {1}
    assert gpu.malloc_devices and set(gpu.malloc_devices) == {1}  # buffers live on that device too
    backend.close()
    gpu.check_all_calls()


def test_mismatches_are_refused_before_deserialising(gpu, tmp_path):
    engine = engine_with_sidecar(tmp_path, trt_version="11.5.0.1")  # newer than this lean runtime
    with pytest.raises(
        SidecarError,
        match=rf"built version-compatible with TensorRT 11.5.0.1, which runs on "
        rf"TensorRT 11.5 and later; this is tensorrt_lean {LEAN}",
    ):
        TensorRTBackend(engine)
    engine = engine_with_sidecar(tmp_path, version_compatible=False, trt_version=LEAN)
    with pytest.raises(SidecarError, match=r"runs only version-compatible engines"):
        TensorRTBackend(engine)
    (tmp_path / "model.engine.json").unlink()
    with pytest.raises(SidecarError, match=r"no sidecar beside engine"):
        TensorRTBackend(engine)
    assert gpu.deserialised == [] and gpu.calls == []  # neither TensorRT nor CUDA saw a mismatched file


def test_engine_tensors_must_be_the_contract(gpu, tmp_path):
    gpu.tensors = ("input", "mask", "inpainted")
    with pytest.raises(PConvError, match=r"model contract mismatch: engine has \['inpainted', 'input', 'mask'\]"):
        TensorRTBackend(engine_with_sidecar(tmp_path))
    gpu.tensors = ("image", "mask", "inpainted")
    gpu.engine.get_tensor_dtype.side_effect = lambda name: tensorrt_lean.DataType.HALF
    with pytest.raises(PConvError, match=r"'image' must be a float32 input"):
        TensorRTBackend(engine_with_sidecar(tmp_path))
    gpu.check_all_calls()


def test_a_failed_deserialisation_is_one_line(gpu, tmp_path):
    SimulatedGpu._checked(gpu.runtime, REAL_RUNTIME, {"deserialize_cuda_engine": lambda data: None})  # a bad plan
    engine = engine_with_sidecar(tmp_path)
    with pytest.raises(PConvError) as e:
        TensorRTBackend(engine)
    assert str(e.value) == f"{engine}: TensorRT could not deserialise the engine (see its log above)"


def test_readiness(gpu, monkeypatch):
    ready = tensorrt_readiness()
    assert ready.usable and (ready.module, ready.version, ready.gpus, ready.lean) == ("tensorrt_lean", LEAN, 1, True)
    assert ready.reason == f"tensorrt_lean {LEAN} on 1 CUDA GPU(s): runs version-compatible engines only"
    gpu.devices = []
    assert tensorrt_readiness().reason == f"no CUDA GPU found: TensorRT needs an NVIDIA GPU and driver; {HINT}"
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    assert tensorrt_readiness() == trt_api.Readiness(False, f"TensorRT is not installed: {HINT}")
