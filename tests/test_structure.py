"""The house rules that keep the package easy to change, checked on its source (issue 13).

- No import cycle between pconv_deploy's modules, nor between its subpackages, counting lazy
  imports inside functions too (a lazy import only hides a cycle; the two modules still cannot be
  understood apart).
  Imports under ``if TYPE_CHECKING:`` run never and are not counted.
- No function longer than 80 lines.
- The runtime imports neither torch nor cv2 at module level (services embed it without them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pconv_deploy"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(path, name, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None; plain depth-first search."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    known = {"pconv_deploy.x": tmp_path / "x.py", "pconv_deploy.y": tmp_path / "y.py"}
    known["pconv_deploy.x"].write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pconv_deploy.y\n"
        "def f():\n    from . import y\n"
    )
    assert imported_modules(known["pconv_deploy.x"], "pconv_deploy.x", known) == {"pconv_deploy.y"}
    known["pconv_deploy.x"].write_text("import typing\nif typing.TYPE_CHECKING:\n    import pconv_deploy.y\n")
    assert imported_modules(known["pconv_deploy.x"], "pconv_deploy.x", known) == set()


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 20  # the walk really saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    """model, export, engines, runtime, train, ...: data flows one way between them, too."""
    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        graph.setdefault(unit(name), set()).update(unit(t) for t in targets if unit(t) != unit(name))
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between subpackages: " + " -> ".join(cycle)


def long_functions(limit: int) -> list[str]:
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{name}.{node.name}: {length} lines")
    return found


def test_no_function_longer_than_80_lines():
    assert long_functions(MAX_FUNCTION_LINES) == []


def test_the_length_check_can_fail():
    assert long_functions(5), "every function in the package is 5 lines or fewer? the walk saw nothing"


@pytest.mark.parametrize("module", ["pconv_deploy.runtime"])
def test_runtime_modules_do_not_import_torch_or_cv2_at_top_level(module):
    top_level = set()
    for name, path in modules().items():
        if name == module or name.startswith(module + "."):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Import):
                    top_level.update((name, a.name.split(".")[0]) for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    top_level.add((name, node.module.split(".")[0]))
    assert not {(n, m) for n, m in top_level if m in ("torch", "cv2")}
