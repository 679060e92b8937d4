import re
from pathlib import Path

import pytest
import typer.main
from helpers.cli import pconv as run_pconv

from pconv_deploy.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"


def pconv(*args):
    return run_pconv(*args, env={"COLUMNS": "200"})  # help text is wrapped to the terminal


def registered_commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(group.commands)


def readme_cli_commands() -> set[str]:
    """The commands of the README's "All commands" block (the lines that start with `pconv NAME`)."""
    text = README.read_text()
    block = text.split("## All commands", 1)[1].split("```", 2)[1]
    return set(re.findall(r"^pconv ([a-z][a-z-]*)", block, flags=re.M))


def test_readme_cli_block_lists_exactly_the_registered_commands():
    commands = registered_commands()
    assert {"init", "info", "export", "check", "infer", "build-engine"} <= commands
    assert readme_cli_commands() == commands


def test_help_lists_every_registered_command():
    r = pconv("--help")
    assert r.returncode == 0
    commands = r.stdout.split("\nCommands:\n", 1)[1]
    listed = set(re.findall(r"^  ([a-z][a-z-]*)  ", commands, flags=re.M))  # one line per command
    assert listed == registered_commands()


@pytest.mark.parametrize("command", sorted(registered_commands()))
def test_every_command_has_help_that_names_its_options(command):
    group = typer.main.get_command(app)
    params = [p for p in group.commands[command].params if p.param_type_name == "option"]
    r = pconv(command, "--help")
    assert r.returncode == 0, r.stderr
    for p in params:
        flag = max(p.opts, key=len)
        assert flag in r.stdout, f"pconv {command} --help does not show {flag}"


def test_init_and_info(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert pconv("init", str(ckpt), "--layers", "7", "--width", "0.25").returncode == 0
    r = pconv("info", str(ckpt), "--size", "256x256")
    assert r.returncode == 0, r.stderr
    assert "layers:       7" in r.stdout
    from safetensors import safe_open

    with safe_open(str(ckpt), "np") as f:  # weights and BN affine, not the running statistics
        n = sum(f.get_tensor(k).size for k in f.keys() if "running" not in k and "num_batches" not in k)
    assert f"parameters:   {n:,}" in r.stdout


def test_errors_are_one_line(tmp_path):
    r = pconv("info", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {tmp_path / 'nope.safetensors'}: no such checkpoint file"
    r = pconv("init", str(tmp_path / "x.safetensors"), "--layers", "12")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "x.safetensors").exists()
