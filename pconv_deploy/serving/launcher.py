"""`pconv serve` from the main environment: find the serve interpreter, run the server with it, relay signals.

PyTriton needs numpy<2 and the main environment has numpy>=2 (torch, onnx), so the Triton server
runs in a second environment. Its interpreter comes from configuration (:func:`serve_python`):
``$PCONV_SERVE_PYTHON``, else this interpreter if it has PyTriton, else, in a source checkout only,
``.venv-serve`` beside the project (``make serve-env``). This module imports neither PyTriton nor
numpy: it starts ``python -m pconv_deploy.serving.server`` with the :class:`ServeOptions` as JSON and
passes SIGINT/SIGTERM on.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pconv_deploy.errors import PConvError
from pconv_deploy.serving.options import ServeOptions

SERVE_ENV = ".venv-serve"
PYTHON_VARIABLE = "PCONV_SERVE_PYTHON"  # an interpreter with nvidia-pytriton, numpy<2 and this package
SERVER_MODULE = f"{__package__}.server"  # what the serve interpreter runs (python -m)
DISTRIBUTION = "pconv-deploy"  # the name in a checkout's pyproject.toml
STOP_SECONDS = 30.0  # after a forwarded signal, how long the server gets to stop before it is killed


def checkout_root() -> Path | None:
    """The source checkout this package runs from (its pyproject.toml names us), or None after a pip install."""
    root = Path(__file__).resolve().parents[2]  # site-packages after a pip install, the project in a checkout
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # none there (or unreadable): not our checkout
        return None
    # tomllib is 3.11+; the project's name line is enough to tell our pyproject.toml from another one
    return root if re.search(rf"""^name\s*=\s*["']{DISTRIBUTION}["']""", text, re.MULTILINE) else None


def serve_python() -> Path:
    """The interpreter to run the server with: $PCONV_SERVE_PYTHON, this one if it has PyTriton, or a
    checkout's .venv-serve; one line saying what to set when none is configured."""
    if os.environ.get(PYTHON_VARIABLE):
        path = Path(os.environ[PYTHON_VARIABLE])
        if not path.is_file():
            raise PConvError(f"${PYTHON_VARIABLE}={path}: no such interpreter")
        return path
    if importlib.util.find_spec("pytriton") is not None:
        return Path(sys.executable)
    root = checkout_root()
    if root is None:  # installed by pip, not a source checkout: nothing beside the package to fall back on
        raise PConvError(
            f"no serve environment: set ${PYTHON_VARIABLE} to the python of an environment with "
            f"'{DISTRIBUTION}[serve]' installed (PyTriton needs numpy<2, so not this one)"
        )
    candidate = root / SERVE_ENV / "bin" / "python"
    if candidate.is_file():
        return candidate
    raise PConvError(
        f"no serve environment: {candidate} is missing; run `make serve-env` in {root} "
        f"(or install '{DISTRIBUTION}[serve]' in a numpy<2 environment and set ${PYTHON_VARIABLE})"
    )


def server_command(python: Path, options: ServeOptions) -> list[str]:
    """``python -m pconv_deploy.serving.server OPTIONS_JSON``: the options cross as they are, defaults included."""
    return [str(python), "-m", SERVER_MODULE, options.to_json()]


def run_server(options: ServeOptions, *, python: Path | None = None) -> int:
    """Run the Triton server in the foreground until it exits; SIGINT/SIGTERM stop it cleanly. Returns its exit code.

    The server gets its own session, so a terminal's Ctrl-C reaches it once, through us; it also dies
    with this process (PR_SET_PDEATHSIG), so a killed ``pconv serve`` leaves no server behind.
    """
    if not options.model.is_file():
        raise PConvError(f"--model {options.model}: no such model file")
    command = server_command(python or serve_python(), options)
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
