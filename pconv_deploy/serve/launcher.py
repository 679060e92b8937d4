"""`pconv serve` from the main environment: find the serve environment, run the server in it, relay signals.

PyTriton needs numpy<2 and the main environment has numpy>=2 (torch, onnx), so the Triton server
runs in a second virtual environment, ``.venv-serve`` beside the project (``make serve-env``; ``make
install``, ``make test`` and ``make demo`` build it too). This module imports neither PyTriton nor
numpy: it starts ``python -m pconv_deploy.serve.server`` there and passes SIGINT/SIGTERM on.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pconv_deploy.contract import ENGINE_SUFFIXES, ONNX_SUFFIX
from pconv_deploy.errors import PConvError

SERVE_ENV = ".venv-serve"
PYTHON_VARIABLE = "PCONV_SERVE_PYTHON"  # an interpreter with nvidia-pytriton, numpy<2 and this package
STOP_SECONDS = 30.0  # after a forwarded signal, how long the server gets to stop before it is killed
# Largest N*H*W of one request: 16 MP (4 x 2048^2, 16 x 1024^2) is 256 MiB of float32 image + mask and already
# gigabytes of activations in the network; `pconv infer --server` sends batch x max-side^2 (4 x 1024^2 by default).
MAX_PIXELS = 16 * 1024 * 1024


def project_root() -> Path:
    """The folder holding pyproject.toml for a source (editable) install."""
    return Path(__file__).resolve().parents[2]


def serve_python() -> Path:
    """The interpreter to run the server with: $PCONV_SERVE_PYTHON, this one if it has PyTriton, or .venv-serve."""
    if os.environ.get(PYTHON_VARIABLE):
        path = Path(os.environ[PYTHON_VARIABLE])
        if not path.is_file():
            raise PConvError(f"${PYTHON_VARIABLE}={path}: no such interpreter")
        return path
    if importlib.util.find_spec("pytriton") is not None:
        return Path(sys.executable)
    root = project_root()
    candidate = root / SERVE_ENV / "bin" / "python"
    if candidate.is_file():
        return candidate
    if not (root / "pyproject.toml").is_file():  # installed by pip, not a source checkout: no .venv-serve beside it
        raise PConvError(
            f"no serve environment: set ${PYTHON_VARIABLE} to the python of an environment with "
            "'pconv-deploy[serve]' installed (PyTriton needs numpy<2, so not this one)"
        )
    raise PConvError(
        f"no serve environment: {candidate} is missing; run `make serve-env` in {root} "
        f"(or install 'pconv-deploy[serve]' in a numpy<2 environment and set ${PYTHON_VARIABLE})"
    )


def server_command(python: Path, model: Path, **options: object) -> list[str]:
    """``python -m pconv_deploy.serve.server --model MODEL --http-port ...`` (option names as in the CLI)."""
    command = [str(python), "-m", "pconv_deploy.serve.server", "--model", str(Path(model).resolve())]
    for key, value in options.items():
        if value is not None:
            command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def run_server(model: Path, python: Path | None = None, **options: object) -> int:
    """Run the Triton server in the foreground until it exits; SIGINT/SIGTERM stop it cleanly. Returns its exit code.

    The server gets its own session, so a terminal's Ctrl-C reaches it once, through us; it also dies
    with this process (PR_SET_PDEATHSIG), so a killed ``pconv serve`` leaves no server behind.
    """
    model = Path(model)
    if not model.is_file():
        raise PConvError(f"--model {model}: no such model file")
    if model.suffix.lower() not in (ONNX_SUFFIX, *ENGINE_SUFFIXES):
        raise PConvError(
            f"--model {model}: pconv serve serves an exported model ({ONNX_SUFFIX}, or an engine "
            f"{'/'.join(ENGINE_SUFFIXES)}); "
            f"for a checkpoint run `pconv export --checkpoint {model} --output model.onnx` first"
        )
    command = server_command(python or serve_python(), model, **options)
    child = subprocess.Popen(command, start_new_session=True)
    asked: list[float] = []  # when each stop signal came

    def relay(signum: int, _frame: object) -> None:
        asked.append(time.monotonic())
        if len(asked) == 1:
            child.send_signal(signum)
        else:  # asked twice: stop now (tritonserver dies with its parent)
            child.kill()

    previous = {s: signal.signal(s, relay) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0] > STOP_SECONDS:
                    child.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:
            child.kill()
            child.wait()
