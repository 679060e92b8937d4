"""Every command's --help reads right in an 80-column terminal.

The commands and their options come from the registered typer app, so a command or option added
later is covered without editing this file. Each help string and docstring is compared word by word
with what the terminal shows: a word swallowed (rich markup eats "[...]"), cut ("--mask-conventi…")
or shortened ("..." in the command list) fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer.main

from pconv_deploy.cli import app

COLUMNS = 80
GROUP = typer.main.get_command(app)
# Brackets the help may show: the usage line's optional parts, typer's own markers, and number ranges.
ALLOWED_BRACKETS = re.compile(
    r"\[OPTIONS\]|\[ARGS\]|\[[A-Z][A-Z_]*\]|\[required\]|\[default: [^\[\]]*\]|\[[-0-9.e]*[<>]?=?x[<>]?=?[-0-9.e]*\]"
)
BOX = str.maketrans("", "", "│╭╮╰╯─")


def render(*args: str) -> str:
    """The help as an 80-column terminal shows it (the installed console script's code, in a subprocess)."""
    env = {**os.environ, "COLUMNS": str(COLUMNS), "TERM": "dumb"}
    env.pop("LINES", None)
    r = subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", *args, "--help"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def words(text: str) -> list[str]:
    """Whitespace-separated words, with a word the wrapper split at a hyphen joined again."""
    text = re.sub(r"(?<=\w)-\n\s*", "-", text.translate(BOX))
    return text.split()


def missing_words(expected: str, rendered: str) -> list[str]:
    """The words of `expected` not found, in order, among the rendered words (an empty list when all are)."""
    shown = words(rendered)
    at, lost = 0, []
    for word in words(expected):
        try:
            at = shown.index(word, at) + 1
        except ValueError:
            lost.append(word)
    return lost


def command_names() -> list[str]:
    return sorted(GROUP.commands)


def test_the_app_has_commands():
    assert {"infer", "export", "info", "build-engine", "train"} <= set(command_names())


@pytest.mark.parametrize("name", ["", *command_names()])
def test_help_at_80_columns_loses_nothing(name):
    command = GROUP.commands[name] if name else GROUP
    text = render(*([name] if name else []))
    problems, tokens = [], {t.strip(",") for t in text.split()}
    for line in text.splitlines():
        if len(line.rstrip()) > COLUMNS:
            problems.append(f"line wider than {COLUMNS}: {line!r}")
    if command.help and (lost := missing_words(command.help, text)):
        problems.append(f"docstring words lost: {lost}")
    for param in command.params:
        for flag in (*param.opts, *param.secondary_opts):
            if param.param_type_name == "option" and flag not in tokens:
                problems.append(f"option {flag} not shown in full")
        if getattr(param, "help", None) and (lost := missing_words(param.help, text)):
            problems.append(f"{param.name}: help words lost: {lost}")
    if "…" in text:
        problems.append("text cut with …")
    if "<bool>" in text:
        problems.append("<bool> shown for a flag")
    if stray := re.findall(r"[\[\]]", ALLOWED_BRACKETS.sub("", " ".join(words(text)))):
        problems.append(f"{len(stray)} brackets that are not a default, range or usage marker")
    if lower := re.findall(r"\{[a-z][a-z_-]*\}", text):
        problems.append(f"usage shows a lowercase placeholder: {lower}")
    assert not problems, f"pconv {name} --help at {COLUMNS} columns:\n" + "\n".join(problems) + "\n\n" + text


def test_command_list_shows_each_summary_whole():
    """`pconv --help` lists each command with its docstring's first sentence, not a cut one ending in '...'."""
    text = render()
    for name, command in GROUP.commands.items():
        first = command.help.split("\n\n")[0]
        sentence = first.split(". ")[0].rstrip(".") + "."
        assert not missing_words(sentence, text), f"{name}: {sentence!r} not shown whole in pconv --help"
    assert not re.search(r"\w\.\.\.\s*$", text, flags=re.M), text


def test_version_option_prints_the_package_version():
    from importlib.metadata import version

    r = subprocess.run([sys.executable, "-m", "pconv_deploy.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"pconv-deploy {version('pconv-deploy')}"


def test_info_without_a_checkpoint_describes_the_bundled_model():
    """Like export, check and infer, `pconv info` alone works on the bundled model."""
    from pconv_deploy.model.checkpoint import default_checkpoint

    r = subprocess.run([sys.executable, "-m", "pconv_deploy.cli", "info"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"checkpoint:   {default_checkpoint()}" in r.stdout
