"""The `pconv` command: a thin layer over the Python API.

Each command module parses its options, calls the API and prints: ``models`` (init, info,
import-checkpoint), ``export`` (export, check, build-engine), ``train`` (train, evaluate), ``infer``,
``serving`` (triton-repo, serve, app) and ``tools`` (doctor, bench); ``base`` holds the app and what they
share. Every command turns a PConvError into one line on stderr (exit 1); typer turns usage errors into
exit 2. Heavy modules (torch, onnx) are imported inside the commands.
"""

from __future__ import annotations

import sys

import typer

# The command modules register their commands on import, in the order `pconv --help` lists them.
# isort: off
from pconv_deploy.cli import models, export, infer, serving, train, tools  # noqa: F401

# isort: on
from pconv_deploy.cli.base import app
from pconv_deploy.errors import PConvError, first_line

__all__ = ["app", "main"]

OPTIONAL_MODULES = {  # module -> the extra that installs it
    "torch": "torch",
    "onnx": "torch",
    "onnxscript": "torch",
    "safetensors": "torch",
    "polygraphy": "torch",
    "cv2": "train",
    "skimage": "train",
    "tensorrt": "gpu",
    "tritonclient": "client",
    "fastapi": "app",
    "starlette": "app",
    "uvicorn": "app",
    "python_multipart": "app",
}


def main() -> None:
    """Console-script entry point: PConvError -> one line and exit 1, never a traceback."""
    try:
        app()  # standalone: typer prints usage errors itself and exits 2
    except PConvError as e:
        typer.echo(f"error: {first_line(e)}", err=True)  # one line, even when a library's message has more
        sys.exit(e.exit_code)  # UsageError: 2, like typer's usage errors
    except ModuleNotFoundError as e:
        extra = OPTIONAL_MODULES.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        typer.echo(f"error: this command needs {e.name} (pip install 'pconv-deploy[{extra}]')", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
