"""The install story of the README, for real: `python -m build` makes an sdist and a wheel (the wheel from
the sdist, so the sdist is complete), and the wheel installed into a fresh venv with no extras runs
`pconv infer` on an ONNX model, without torch.

The fresh venv takes the core dependencies (numpy, onnxruntime, Pillow, zlib-ng, typer, rich) from pip's
cache or PyPI, as a user's `pip install` would; the test skips, saying so, only when no package index
can be reached.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NO_INDEX = ("Could not find a version that satisfies", "Failed to establish a new connection", "No matching dist")


def run(*args: object, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def source_tree(into: Path) -> Path:
    """The files a clone has (tracked, plus new ones not ignored), so the build never writes into the repository."""
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in listed.stdout.splitlines():
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="python -m build needs the build package (pip install '.[dev]')")
    src = source_tree(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools) comes from this venv, so the build works offline.
    r = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_wheel_and_sdist_carry_the_package_and_its_metadata(dist):
    (wheel,) = dist.glob("pconv_deploy-*.whl")
    (sdist,) = dist.glob("pconv_deploy-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pconv_deploy/assets/pconv-demo.safetensors" in names  # the bundled model travels with the wheel
    assert "pconv_deploy/runtime/__init__.py" in names
    assert not any(n.startswith(("tests/", "scripts/", "docs/")) for n in names)
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in metadata  # the SPDX form, not the deprecated license table
    assert "License-File: LICENSE" in metadata and any(n.endswith("licenses/LICENSE") for n in names)
    entry_points = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "pconv = pconv_deploy.cli:main" in entry_points
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "pconv_deploy/cli/__init__.py"} <= members


def test_wheel_without_extras_runs_pconv_infer_on_an_onnx_model(dist, small_onnx, tmp_path):
    (wheel,) = dist.glob("pconv_deploy-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    bin_dir = env_dir / "bin"
    r = run(bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, timeout=600)
    if r.returncode != 0 and any(s in r.stdout + r.stderr for s in NO_INDEX):
        pytest.skip(f"no package index for the core dependencies: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = run(bin_dir / "python", "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('cv2'))")
    assert r.stdout.split() == ["None", "None"], "the core install pulled in torch or OpenCV"

    r = run(bin_dir / "pconv", "--version")
    assert r.returncode == 0 and r.stdout.strip() == "pconv-deploy 0.1.0", r.stdout + r.stderr

    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir(), masks.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    hole = np.zeros((70, 90), dtype=np.uint8)
    hole[20:40, 30:60] = 255  # white = hole
    Image.fromarray(photo).save(images / "p.png")
    Image.fromarray(hole).save(masks / "p.png")
    r = run(bin_dir / "pconv", "infer", "--images", images, "--masks", masks, "--output", out, "--model", small_onnx)
    assert r.returncode == 0, r.stdout + r.stderr
    result = np.asarray(Image.open(out / "p.png"))
    assert result.shape == photo.shape
    known = hole == 0
    assert np.array_equal(result[known], photo[known])  # known pixels byte-identical
    assert not np.array_equal(result[~known], photo[~known])  # the hole was filled
