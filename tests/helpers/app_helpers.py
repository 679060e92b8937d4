"""Shared by the app tests: the real `pconv app` in a subprocess on loopback, multipart requests, the reference."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pconv_deploy.cli import app as cli_app

START_SECONDS = 90  # loading torch and a model on a loaded 2-core machine


class AppProcess:
    """``pconv app ... --port 0`` started as a user starts it; ``url`` from the line it prints."""

    def __init__(self, args: list[str], cwd: Path, tmpdir: Path) -> None:
        env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pconv_deploy.cli", "app", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + START_SECONDS
        self.url = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if line.startswith("pconv app: open "):
                self.url = line.split()[3].rstrip("/")
                return
        self.stop()
        raise RuntimeError(f"pconv app did not start: {self.lines} {self.proc.stderr.read()[-2000:]}")

    def stop(self) -> str:
        """SIGTERM, as Ctrl-C or a service manager stops it; returns its stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def multipart(fields: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, str]:
    """A multipart/form-data body: a (file name, bytes) value is a file part, a str a text field."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            filename, data = value
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode())
            out.write(b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post(url: str, fields: dict, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    """POST a form; (status, headers with lower-case names, body) for every status, 4xx included."""
    body, content_type = multipart(fields)
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def pconv_infer(image: Path, mask: Path, model: Path, out: Path) -> np.ndarray:
    """The reference: the real `pconv infer` (the CLI's own code path) on the same photo and mask file."""
    result = CliRunner().invoke(
        cli_app, ["infer", "--images", str(image), "--masks", str(mask), "--output", str(out), "--model", str(model)]
    )
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(out / f"{image.stem}.png"))
