"""The two ways tests run the `pconv` command: as a user does (a subprocess), or in-process (fast)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def pconv(
    *args: object, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m pconv_deploy.cli ARGS` in a subprocess; ``env`` adds to (or overrides) this environment."""
    command = [sys.executable, "-m", "pconv_deploy.cli", *map(str, args)]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment, timeout=timeout)


def infer_args(images: Path, masks: Path, output: Path, *args: object) -> list[str]:
    """The arguments of `pconv infer` on a folder job (after the program name), as strings."""
    return ["infer", "--images", str(images), "--masks", str(masks), "--output", str(output), *map(str, args)]


def infer_command(images: Path, masks: Path, output: Path, *args: object) -> list[str]:
    """The argv of `pconv infer` on a folder job, for tests that run it as a background process."""
    return [sys.executable, "-m", "pconv_deploy.cli", *infer_args(images, masks, output, *args)]


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The console script in-process: its exit code and stderr. Any escaping exception fails the test."""
    from pconv_deploy.cli import main

    monkeypatch.setattr(sys, "argv", ["pconv", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - a traceback for the user
        pytest.fail(f"{args}: escaped as a traceback: {type(e).__name__}: {e}")
    return code, capsys.readouterr().err
