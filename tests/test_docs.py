"""The documentation holds together: the site builds with --strict, the README's links resolve, the CLI
reference is the CLI's own help, and no file refers to a document the repository does not have."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)
# Markdown files the code writes (not documents it refers to), and this file's own made-up examples.
OUTPUT_NAMES = {"evaluation.md"}
SELF = Path(__file__).resolve()
DOC_NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]*[A-Za-z0-9_]\.md)\b")  # README.md, docs/x.md, ../y.md


def mkdocs() -> str:
    exe = Path(sys.executable).with_name("mkdocs")
    if not exe.exists():
        pytest.skip("mkdocs is not installed (pip install '.[docs]')")
    return str(exe)


def test_site_builds_with_strict(tmp_path):
    """Broken links or anchors between pages, and nav entries without a page, fail the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(
        [mkdocs(), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The build above can fail: the same config over a copy of docs/ with one dead link."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    config = (ROOT / "mkdocs.yml").read_text()
    (tmp_path / "mkdocs.yml").write_text(config)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([mkdocs(), "build", "--strict"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "no-such-page.md" in r.stdout + r.stderr


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S)
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def broken_links(markdown: Path) -> list[str]:
    """Relative link targets of a Markdown file that do not exist, and anchors no heading makes."""
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading gives #{anchor}")
    return broken


def test_every_readme_link_resolves():
    assert LINK.findall(README.read_text()), "the README links nothing: the check would be empty"
    assert broken_links(README) == []


def test_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` here\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#some-code-here) [bad](a.md#nope) [gone](c.md) ![img](pic.png) [web](https://x.y)\n")
    assert broken_links(page) == ["a.md#nope: no heading gives #nope", "c.md: no such file", "pic.png: no such file"]


def repository_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.stdout.splitlines() if (ROOT / name).is_file()]


def dangling_document_references(files: list[Path], root: Path) -> list[str]:
    """`file:line: NAME.md` for every mention of a Markdown document that none of `files` is.

    A name with a folder must resolve from the repository root or from the mentioning file's folder;
    a bare name must be some file's name. URLs are skipped.
    """
    names = {f.name for f in files}
    paths = {f.resolve() for f in files}
    dangling = []
    for file in files:
        if file.resolve() == SELF:
            continue
        try:
            text = file.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary files (images, the bundled model) mention nothing
        for number, line in enumerate(text.splitlines(), 1):
            line = re.sub(r"[a-z]+://\S+", "", line)
            for name in DOC_NAME.findall(line):
                if name in OUTPUT_NAMES:
                    continue
                if "/" in name:
                    ok = (root / name).resolve() in paths or (file.parent / name).resolve() in paths
                else:
                    ok = name in names
                if not ok:
                    dangling.append(f"{file.relative_to(root)}:{number}: {name}")
    return dangling


def test_no_file_refers_to_a_document_the_repository_lacks():
    assert dangling_document_references(repository_files(), ROOT) == []


def test_reference_check_catches_a_missing_document(tmp_path):
    files = [tmp_path / "README.md", tmp_path / "docs" / "design.md", tmp_path / "code.py"]
    files[1].parent.mkdir()
    files[0].write_text("See [design](docs/design.md) and [ghost](docs/ghost.md).\n")
    files[1].write_text("Back to ../README.md; see https://example.org/OTHER.md\n")
    missing = "NOTES" + ".md"  # spelled in two parts, so this file does not name it
    files[2].write_text(f'"""The contract ({missing} section 2)."""\n')
    assert dangling_document_references(files, tmp_path) == ["README.md:1: docs/ghost.md", f"code.py:1: {missing}"]


def test_cli_reference_page_is_current():
    """docs/cli.md is what scripts/gen_cli_reference.py writes from today's CLI; regenerate it if this fails."""
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "scripts" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render_reference()
    assert "## pconv infer" in expected and "--mask-convention" in expected
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == expected, "docs/cli.md is out of date: run .venv/bin/python scripts/gen_cli_reference.py"


def test_readme_python_api_runs(small_onnx, tmp_path, monkeypatch):
    """The README's Python block, run as written (its model and photo paths pointed at a small model and photo)."""
    import numpy as np
    from PIL import Image

    block = README.read_text().split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    for folder in ("photos", "masks"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "photos" / "cat.jpg")
    hole = np.zeros((96, 128), np.uint8)
    hole[30:50, 40:90] = 255
    Image.fromarray(hole).save(tmp_path / "masks" / "cat.png")
    assert block.count("demo-out/pconv-demo.onnx") == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace("demo-out/pconv-demo.onnx", str(small_onnx)), "README.md", "exec"), namespace)
    result = np.asarray(Image.open(tmp_path / "cat-inpainted.png"))
    assert result.shape == (96, 128, 3) and (tmp_path / "out" / "cat.png").is_file()
    assert namespace["report"].count("ok") == 1
