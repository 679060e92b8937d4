"""`pconv doctor`: what this machine can actually run (torch, ONNX Runtime providers, TensorRT, GPUs).

"Available" is not "works": onnxruntime-gpu lists CUDAExecutionProvider even where the CUDA
libraries are missing, then silently runs on the CPU. So every provider is tried on a tiny
model, and reported as working only if the session really uses it and computes the right
answer. Needs neither torch nor onnx (torch is reported if present).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import platform
import shutil
import subprocess
import sys
import warnings

from pconv_deploy.errors import first_line

# y = x + x, float32 [1], opset 13, IR 7: old enough for any onnxruntime >= 1.8. Made with
#   onnx.helper.make_model(make_graph([make_node("Add", ["x", "x"], ["y"])], "doctor", [x], [y]),
#                          opset_imports=[make_opsetid("", 13)], ir_version=7, producer_name="")
# and kept as bytes so that the runtime-only install (no onnx package) can run the check.
TINY_MODEL = (
    b'\x08\x07\x12\x00::\n\x0e\n\x01x\n\x01x\x12\x01y"\x03Add\x12\x06doctorZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12'
    b"\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# Providers whose "works" needs a word: they accept a session without running its nodes themselves.
NOTES = {"AzureExecutionProvider": " (for remote endpoints; a local model's nodes run on the CPU provider)"}


def provider_status(provider: str) -> str:
    """'works', or why not: a session on the tiny model must use `provider` first and add correctly."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the failures are reported here, in one line
    noise = io.StringIO()  # onnxruntime prints "EP Error ... Falling back" banners and warns; we say it in one line
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(TINY_MODEL, options, providers=[provider])
            (y,) = session.run(None, {"x": np.array([2.0], dtype=np.float32)})
    except Exception as e:
        return f"fails: {first_line(e)[:160]}"
    used = session.get_providers()
    if not used or used[0] != provider:
        return f"not usable (the session fell back to {', '.join(used)})"
    if y.tolist() != [4.0]:
        return f"wrong result ({y.tolist()} for 2 + 2)"
    return "works" + NOTES.get(provider, "")


def _torch() -> str:
    if importlib.util.find_spec("torch") is None:
        return "not installed (only export and training need it)"
    try:
        import torch
    except Exception as e:
        return f"installed but fails to import ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"{torch.__version__}, CUDA {torch.version.cuda}: {names}"
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    return f"{torch.__version__} ({build}), no CUDA device"


def _gpus() -> list[str]:
    """One line per GPU from nvidia-smi, or one line saying why there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ["none found (nvidia-smi is not on PATH: no NVIDIA driver)"]
    for fields in ("index,name,compute_cap,driver_version,memory.total", "index,name,driver_version,memory.total"):
        try:
            r = subprocess.run(
                [smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return [f"nvidia-smi failed ({e})"]
        if r.returncode == 0:
            lines = [line.strip() for line in r.stdout.splitlines() if line.strip()]
            return lines or ["none found (nvidia-smi lists no GPU)"]
    message = (r.stderr or r.stdout).strip().splitlines()
    return [f"nvidia-smi failed: {message[0] if message else f'exit {r.returncode}'}"]


def _tensorrt_rows() -> tuple[list[tuple[str, str]], bool]:
    """Which TensorRT module is here (full or lean), whether it can run plans, and the CUDA bindings."""
    from pconv_deploy.engines.trt_api import tensorrt_readiness

    readiness = tensorrt_readiness()
    if readiness.module is None:
        found = f"not usable: {readiness.reason}"
    else:
        kind = "lean runtime: runs version-compatible engines only, cannot build" if readiness.lean else "full"
        found = f"{readiness.module} {readiness.version} ({kind})"
    rows = [("tensorrt", found)]
    if readiness.module is not None:
        plans = "yes" if readiness.usable else "no"
        rows.append(("  runs plans", f"{plans}: {readiness.reason}"))
    rows.append(("polygraphy", _version("polygraphy") or "not installed"))
    rows.append(("cuda-python", _version("cuda-python") or _version("cuda-bindings") or "not installed"))
    return rows, readiness.usable


def collect() -> list[tuple[str, str]]:
    """(label, finding) pairs, in the order printed."""
    from pconv_deploy import __version__

    rows = [
        ("pconv-deploy", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("numpy", _version("numpy") or "not installed"),
        ("torch", _torch()),
        ("onnx", _version("onnx") or "not installed (only export needs it)"),
    ]
    working = []
    try:
        import onnxruntime as ort
    except Exception as e:
        rows.append(("onnxruntime", f"fails to import ({type(e).__name__}: {e})"))
    else:
        dists = [d for d in ("onnxruntime", "onnxruntime-gpu") if _version(d)]
        rows.append(("onnxruntime", f"{ort.__version__} ({' + '.join(dists) or 'unknown distribution'})"))
        if len(dists) > 1:
            rows.append(("", "warning: onnxruntime and onnxruntime-gpu are both installed; keep only one"))
        for provider in ort.get_available_providers():
            status = provider_status(provider)
            rows.append((f"  {provider}", status))
            if status == "works":
                working.append(provider)
    trt_rows, trt_usable = _tensorrt_rows()
    rows += trt_rows
    for i, line in enumerate(_gpus()):
        rows.append(("GPUs" if i == 0 else "", line))
    if trt_usable:
        auto = "tensorrt for .engine files; ONNX Runtime for .onnx"
    else:
        ort_choice = next((p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in working), None)
        auto = f"onnxruntime with {ort_choice}" if ort_choice else "nothing works: install onnxruntime"
    rows.append(("backend auto", auto))
    return rows


def report() -> str:
    rows = collect()
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}".rstrip() for label, value in rows)
