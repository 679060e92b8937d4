"""`pconv doctor` on this machine: CPU provider working, the lean TensorRT runtime found but no GPU to run plans."""

import re
import shutil
import subprocess
import sys

import onnx
import pytest

from pconv_deploy import doctor
from pconv_deploy.engines.trt_api import tensorrt_readiness

READINESS = tensorrt_readiness()


def test_tiny_model_is_the_documented_graph():
    model = onnx.load_from_string(doctor.TINY_MODEL)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Add"]
    assert (model.ir_version, model.opset_import[0].version) == (7, 13)


def test_provider_status(capfd):
    assert doctor.provider_status("CPUExecutionProvider") == "works"
    # onnxruntime falls back to the CPU instead of failing: reported, not taken for "works"
    assert (
        doctor.provider_status("NoSuchExecutionProvider")
        == "not usable (the session fell back to CPUExecutionProvider)"
    )
    assert capfd.readouterr() == ("", "")  # and quietly


@pytest.mark.skipif(READINESS.usable or shutil.which("nvidia-smi"), reason="checks a machine without GPU")
def test_doctor_on_this_machine():
    r = subprocess.run([sys.executable, "-m", "pconv_deploy.cli", "doctor"], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (0, "")
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.stdout.splitlines() if line[:1] != " ")
    providers = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.stdout.splitlines() if line[:2] == "  "
    )
    assert providers["CPUExecutionProvider"] == "works"
    if READINESS.module is None:
        assert rows["tensorrt"] == f"not usable: {READINESS.reason}"
    else:  # which module, and whether it can run plans
        kind = "lean runtime: runs version-compatible engines only, cannot build" if READINESS.lean else "full"
        assert rows["tensorrt"] == f"{READINESS.module} {READINESS.version} ({kind})"
        assert providers["runs plans"] == f"no: {READINESS.reason}"
        assert providers["runs plans"].startswith("no: no CUDA GPU (cudaGetDeviceCount: cudaError")
    assert READINESS.reason.endswith("pip install 'pconv-deploy[gpu]' on a CUDA machine")
    assert rows["GPUs"] == "none found (nvidia-smi is not on PATH: no NVIDIA driver)"
    assert rows["backend auto"] == "onnxruntime with CPUExecutionProvider"
    assert rows["torch"].endswith("no CUDA device")  # torch is in this venv; its CUDA state is said
