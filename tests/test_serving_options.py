"""The options of `pconv serve` and `pconv triton-repo` (pconv_deploy.serving.options): validated once, one
line per bad value, defaults shared with the CLI, and the serve options crossing to the server process as JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from pconv_deploy.cli import app
from pconv_deploy.errors import PConvError
from pconv_deploy.serving.options import KIND_CPU, MAX_PIXELS, RepositoryOptions, ServeOptions, field_defaults


def cli_defaults(command: str) -> dict[str, object]:
    click_command = typer.main.get_command(app).commands[command]
    return {p.name: p.default for p in click_command.params if p.name not in ("model", "repo", "cpu")}


@pytest.mark.parametrize(("command", "options"), [("serve", ServeOptions), ("triton-repo", RepositoryOptions)])
def test_the_cli_defaults_are_the_options_defaults(command, options):
    declared = cli_defaults(command)
    defaults = field_defaults(options)
    assert declared and declared == {name: defaults[name] for name in declared}
    assert ServeOptions(model=Path("m.onnx")).max_pixels == MAX_PIXELS == 16 * 1024 * 1024


BAD_SERVE = [
    ({"name": 'a" b'}, "--name 'a\" b': a model name is 1-64 characters of A-Z a-z 0-9 _ . - (no leading dot)"),
    ({"name": 5}, "--name '5': a model name is 1-64 characters"),
    ({"http_port": 0}, "--http-port 0: must be an integer 1 to 65535"),
    ({"grpc_port": 65536}, "--grpc-port 65536: must be an integer 1 to 65535"),
    ({"metrics_port": True}, "--metrics-port True: must be an integer 1 to 65535"),
    ({"grpc_port": 8000}, "--http-port, --grpc-port and --metrics-port must differ, got [8000, 8000, 8002]"),
    ({"max_batch_size": 0}, "--max-batch-size 0: must be an integer at least 1"),
    ({"instances": 2.5}, "--instances 2.5: must be an integer at least 1"),
    ({"max_pixels": -1}, "--max-pixels -1: must be an integer at least 1"),
    ({"queue_delay_us": -1}, "queue_delay_us -1: must be an integer at least 0"),
    ({"host": ""}, "--host '': must be an address to bind, e.g. 127.0.0.1"),
    ({"start_seconds": 0}, "start_seconds 0: must be a positive number of seconds"),
    ({"model": Path("weights.safetensors")}, "--model weights.safetensors: pconv serve serves an exported model"),
]


@pytest.mark.parametrize(("change", "expected"), BAD_SERVE)
def test_bad_serve_options_are_one_line(change, expected):
    with pytest.raises(PConvError) as raised:
        ServeOptions(**{"model": Path("model.onnx"), **change})
    message = str(raised.value)
    assert message.startswith(expected) and "\n" not in message, message


def test_options_are_frozen_and_keyword_only():
    options = ServeOptions(model=Path("model.onnx"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.http_port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        ServeOptions(Path("model.onnx"))  # type: ignore[misc]


def test_serve_options_cross_as_json_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = ServeOptions(
        model=Path("m.engine"),
        name="inpaint",
        host="::1",
        http_port=9000,
        grpc_port=9001,
        metrics_port=9002,
        max_batch_size=3,
        queue_delay_us=0,
        instances=2,
        max_pixels=4096,
        start_seconds=12.5,
    )
    back = ServeOptions.from_json(options.to_json())
    assert back == dataclasses.replace(options, model=tmp_path / "m.engine")  # absolute: the server may run elsewhere
    assert set(json.loads(options.to_json())) == {f.name for f in dataclasses.fields(ServeOptions)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json", "serve options: not JSON"),
        ("[1]", "serve options: expected a JSON object"),
        ('{"model": "m.onnx", "http-port": 1}', "serve options: unknown fields ['http-port']"),
        ('{"name": "x"}', "serve options: no model"),
        ('{"model": "m.onnx", "max_batch_size": 0}', "--max-batch-size 0: must be an integer at least 1"),
    ],
)
def test_the_server_reads_back_only_serve_options(text, expected):
    with pytest.raises(PConvError, match=f"^{expected.replace('[', '.').replace(']', '.')}"):
        ServeOptions.from_json(text)


def test_the_server_process_refuses_bad_options_in_one_line(tmp_path):
    """What the launcher starts (python -m pconv_deploy.serving.server OPTIONS_JSON) validates what it reads."""
    from pconv_deploy.serving.launcher import SERVER_MODULE

    bad = json.dumps({"model": str(tmp_path / "m.onnx"), "grpc_port": 8000})
    for args, expected in [
        ([bad], "error: --http-port, --grpc-port and --metrics-port must differ, got [8000, 8000, 8002]"),
        ([], f"error: usage: python -m {SERVER_MODULE} OPTIONS_JSON"),
    ]:
        r = subprocess.run([sys.executable, "-m", SERVER_MODULE, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.strip() == expected, r.stderr


def test_pconv_serve_refuses_bad_options_before_looking_for_a_server(tmp_path):
    model = tmp_path / "model.onnx"  # never read: the options are refused first
    env = {"PCONV_SERVE_PYTHON": str(tmp_path / "no-python")}
    args = ["serve", "--model", str(model), "--http-port", "9000", "--metrics-port", "9000"]
    r = subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert r.returncode == 1
    assert r.stderr.strip() == "error: --http-port, --grpc-port and --metrics-port must differ, got [8001, 9000, 9000]"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"kind": "KIND_TPU"}, "invalid instance kind 'KIND_TPU': KIND_GPU or KIND_CPU"),
        ({"version": 0}, "--version 0: must be an integer at least 1"),
        ({"max_batch_size": 0}, "--max-batch-size 0: must be an integer at least 1"),
        ({"instances": -2}, "--instances -2: must be an integer at least 1"),
        ({"name": "../escape"}, "--name '../escape': a model name is 1-64 characters"),
    ],
)
def test_bad_repository_options_are_one_line(change, expected):
    with pytest.raises(PConvError) as raised:
        RepositoryOptions(**{"model": "m.onnx", "repo": "repo", **change})
    assert str(raised.value).startswith(expected)


def test_repository_options_take_strings_as_paths():
    options = RepositoryOptions(model="m.onnx", repo="r", kind=KIND_CPU)
    assert options.model == Path("m.onnx") and options.repo == Path("r") and options.kind == "KIND_CPU"
