"""How `pconv serve` finds its interpreter (pconv_deploy.serving.launcher), from a checkout and after a pip install.

Each case runs the real lookup in a child process on a copy of the package placed as pip places it
(``site/pconv_deploy``), or as a checkout holds it (``root/pyproject.toml`` beside ``root/pconv_deploy``);
this interpreter has no PyTriton, so only the configuration decides. No server is started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pconv_deploy.serving import launcher

PACKAGE = Path(launcher.__file__).resolve().parents[1]
LOOKUP = """
import sys
sys.path.insert(0, sys.argv[1])
from pconv_deploy.serving import launcher
assert launcher.__file__.startswith(sys.argv[1]), launcher.__file__
try:
    print(launcher.serve_python())
except launcher.PConvError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""


def place_package(parent: Path) -> Path:
    """A copy of the package at ``parent/pconv_deploy`` (code only: no model weights, images or caches)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.safetensors", "*.onnx", "*.png", "*.jpg")
    shutil.copytree(PACKAGE, parent / PACKAGE.name, ignore=ignore)
    return parent


def lookup(parent: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != launcher.PYTHON_VARIABLE} | env
    return subprocess.run(
        [sys.executable, "-c", LOOKUP, str(parent)], capture_output=True, text=True, env=environ, timeout=60
    )


@pytest.fixture(scope="module")
def no_pytriton():
    import importlib.util

    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("this interpreter has PyTriton: it would serve itself")


def test_after_a_pip_install_nothing_configured_is_one_line(tmp_path, no_pytriton):
    site = place_package(tmp_path / "lib" / "site-packages")
    r = lookup(site)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.strip() == (
        "error: no serve environment: set $PCONV_SERVE_PYTHON to the python of an environment with "
        "'pconv-deploy[serve]' installed (PyTriton needs numpy<2, so not this one)"
    )


def test_a_pyproject_of_another_project_is_not_a_checkout(tmp_path, no_pytriton):
    """A package installed into a folder that holds some other project's pyproject.toml (a vendored
    target, ``pip install --target .``) never goes looking for a .venv-serve there."""
    root = place_package(tmp_path)
    (root / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    (root / ".venv-serve" / "bin").mkdir(parents=True)
    (root / ".venv-serve" / "bin" / "python").write_text("")
    r = lookup(root)
    assert r.returncode == 1 and r.stderr.startswith("error: no serve environment: set $PCONV_SERVE_PYTHON"), r.stderr


def test_a_checkout_uses_its_venv_serve_or_says_how_to_make_it(tmp_path, no_pytriton):
    root = place_package(tmp_path / "checkout")
    (root / "pyproject.toml").write_text('[project]\nname = "pconv-deploy"\n')
    r = lookup(root)
    python = root / ".venv-serve" / "bin" / "python"
    assert r.returncode == 1 and r.stderr.strip() == (
        f"error: no serve environment: {python} is missing; run `make serve-env` in {root} "
        "(or install 'pconv-deploy[serve]' in a numpy<2 environment and set $PCONV_SERVE_PYTHON)"
    ), r.stderr
    python.parent.mkdir(parents=True)
    python.write_text("")
    r = lookup(root)
    assert r.returncode == 0 and r.stdout.strip() == str(python), r.stderr


def test_the_variable_wins_and_a_wrong_one_is_one_line(tmp_path, no_pytriton):
    site = place_package(tmp_path / "site")
    r = lookup(site, PCONV_SERVE_PYTHON=sys.executable)
    assert r.returncode == 0 and r.stdout.strip() == sys.executable, r.stderr
    r = lookup(site, PCONV_SERVE_PYTHON=str(tmp_path / "nope" / "python"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: $PCONV_SERVE_PYTHON={tmp_path}/nope/python: no such interpreter"


def test_this_checkout_is_found():
    """The tests run from a checkout (make test): the lookup must see it, or `make serve-env` is never offered."""
    root = launcher.checkout_root()
    assert root is not None and (root / "pyproject.toml").is_file() and (root / "pconv_deploy").is_dir()


def test_pconv_serve_with_a_wrong_variable_is_one_line(tmp_path, small_onnx):
    env = {**os.environ, launcher.PYTHON_VARIABLE: str(tmp_path / "nope" / "python")}
    r = subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", "serve", "--model", str(small_onnx)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: ${launcher.PYTHON_VARIABLE}={tmp_path}/nope/python: no such interpreter"
