"""Write docs/cli.md, the CLI reference, from the registered typer app.

Each command's page section is its `--help` exactly as an 80-column terminal shows it, so the reference
cannot say something the CLI does not. tests/test_docs.py fails when the committed page differs from
what this script writes; after changing a command, run:

    .venv/bin/python scripts/gen_cli_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from pconv_deploy.cli import app

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
WIDTH = 80

HEADER = """# CLI reference

Every `pconv` command with its `--help`, as an {width}-column terminal shows it. This page is generated
from the CLI by `scripts/gen_cli_reference.py` (a test fails when it is out of date), so it lists every
option with its default. Task-oriented guides: [Getting started](getting-started.md),
[Inference](inference.md), [Export and checks](export-and-checks.md), [TensorRT and GPUs](tensorrt-and-gpus.md),
[Serving](serving.md), [Training and evaluation](training-and-evaluation.md).

Errors are one line on stderr naming the file and the problem (exit 1); usage errors exit 2.
Every command checks its file and folder arguments before loading a model or doing any work
(`pconv_deploy/paths.py`): an output under a file, a folder where a file goes (or the reverse),
a dangling link, an unwritable place, an output equal to an input, a wrong suffix
(`export -o x.txt`, `check model.safetensors`) or an empty file is one line, exit 2, and nothing
is created. A missing optional module (torch, onnx, cv2, tensorrt, tritonclient) is one line naming
the extra that installs it. Without `--model`/`--checkpoint`, `info`, `export`, `check` and `infer`
use the bundled demo model.
"""


def help_text(*args: str) -> str:
    """`pconv ARGS --help` at WIDTH columns, rendered in-process by the real typer app."""
    result = CliRunner().invoke(
        app, [*args, "--help"], prog_name="pconv", terminal_width=WIDTH, env={"COLUMNS": str(WIDTH)}
    )
    if result.exit_code != 0:
        raise RuntimeError(f"pconv {' '.join(args)} --help exited {result.exit_code}: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def render_reference() -> str:
    """The whole page: `pconv --help`, then one section per command in the order `pconv --help` lists them."""
    group = typer.main.get_command(app)
    parts = [HEADER.format(width=WIDTH), "## pconv", "", "```text", help_text(), "```", ""]
    for name in group.commands:
        parts += [f"## pconv {name}", "", "```text", help_text(name), "```", ""]
    return "\n".join(parts)


def main() -> int:
    PAGE.write_text(render_reference())
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
