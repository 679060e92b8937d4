"""The house rules that keep the package easy to change, checked on its source (issue 13).

- No import cycle between pconv_deploy's modules, nor between its subpackages, counting lazy
  imports inside functions too (a lazy import only hides a cycle; the two modules still cannot be
  understood apart).
  Imports under ``if TYPE_CHECKING:`` run never and are not counted.
- No function longer than 80 lines.
- No function with more than three positional parameters (self/cls not counted): the rest are
  keyword-only. Typer commands (``@app.command``) are exempt: their parameters are CLI options.
- The runtime imports neither torch nor cv2 at module level (services embed it without them).
"""

from __future__ import annotations

import ast
import typing
from enum import Enum
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


# Layers, lowest first: a module imports only from its own layer or lower ones (data flows
# checkpoint -> model -> ONNX -> engine -> runtime -> pipeline -> CLI, never back up).
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "pconv_deploy",
        "pconv_deploy.errors",
        "pconv_deploy.files",
        "pconv_deploy.progress",
        "pconv_deploy.contract",
        "pconv_deploy.masks",
    ),
    ("pconv_deploy.model",),
    ("pconv_deploy.export",),
    ("pconv_deploy.engines",),
    ("pconv_deploy.runtime",),
    ("pconv_deploy.serving", "pconv_deploy.serve", "pconv_deploy.triton", "pconv_deploy.train"),
    ("pconv_deploy.bench", "pconv_deploy.app", "pconv_deploy.doctor", "pconv_deploy.infer"),
    ("pconv_deploy.paths", "pconv_deploy.cli"),
)
MAX_MODULE_LINES = 400
# Modules allowed past MAX_MODULE_LINES, each with the reason it reads better whole.
LONG_MODULES: dict[str, str] = {}


def layer_of(name: str) -> int:
    unit = ".".join(name.split(".")[:2])
    for index, members in enumerate(LAYERS):
        if unit in members:
            return index
    raise AssertionError(f"{unit} is in no layer of tests/test_structure.py LAYERS: place it")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_no_upward_import():
    assert upward_imports(import_graph()) == []


def test_the_upward_check_can_fail():
    assert upward_imports({"pconv_deploy.model.unet": {"pconv_deploy.runtime.backends"}}) == [
        "pconv_deploy.model.unet -> pconv_deploy.runtime.backends"
    ]


def long_modules(limit: int) -> list[str]:
    return [
        f"{n}: {len(p.read_text().splitlines())} lines"
        for n, p in modules().items()
        if len(p.read_text().splitlines()) > limit and n not in LONG_MODULES
    ]


def test_no_module_longer_than_400_lines():
    assert long_modules(MAX_MODULE_LINES) == []
    assert long_modules(20), "every module is 20 lines or fewer? the walk saw nothing"


# The vocabulary: each word list is spelled once, in contract.py; everything else imports it.
VOCABULARY = (
    "BACKENDS",
    "STRATEGIES",
    "MASK_CONVENTIONS",
    "OUTPUT_FORMATS",
    "PRECISIONS",
    "INFERENCE_PRECISIONS",
    "IMPORT_FORMATS",
    "IMAGE_SUFFIXES",
)


def vocabulary() -> dict[str, tuple[str, ...]]:
    import pconv_deploy.contract as contract

    return {name: getattr(contract, name) for name in VOCABULARY}


def respelled_words(words: dict[str, tuple[str, ...]]) -> list[str]:
    """Literal collections (tuple, list, set, an Enum's values) outside contract.py that spell a vocabulary list
    again (all of it, or all but one word): a second copy that can drift from the first. A test of a few words
    (``backend in ("auto", "onnxruntime")``) and a mapping keyed by the words are not copies."""
    found = []
    for name, path in modules().items():
        if name == "pconv_deploy.contract":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                items = node.elts
            elif isinstance(node, ast.ClassDef):
                items = [s.value for s in node.body if isinstance(s, ast.Assign)]
            else:
                continue
            strings = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
            for vocab, values in words.items():
                if len(strings & set(values)) >= max(2, len(values) - 1):
                    found.append(f"{name} line {node.lineno}: {vocab} words {sorted(strings & set(values))}")
    return found


def test_every_vocabulary_list_is_spelled_once():
    assert respelled_words(vocabulary()) == []


def test_the_respelling_check_can_fail():
    assert respelled_words({"X": ("onnx", "engine")}) == [], "no module spells 'onnx' and 'engine' together"
    assert respelled_words({"X": ("valid", "hole", "tv")}), "train.loop.TERMS names the loss terms: the walk saw none"


def enum_in(annotation: object) -> type[Enum] | None:
    """The Enum a typer option's annotation names (``X``, ``X | None``, ``Annotated[X, ...]``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return annotation
    return next((e for a in typing.get_args(annotation) if (e := enum_in(a)) is not None), None)


def cli_choices() -> dict[tuple[str, str], tuple[str, ...]]:
    """(command, option) -> the choices `pconv COMMAND` offers, for every option with a fixed set."""
    import typer

    from pconv_deploy.cli import app

    found = {}
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            enum = enum_in(param.type_descriptor.annotation)
            if enum is not None:
                found[(name, param.opts[0])] = tuple(member.value for member in enum)
    return found


CLI_VOCABULARY = {  # option -> the vocabulary list its choices must be, on every command that has it
    "--backend": "BACKENDS",
    "--strategy": "STRATEGIES",
    "--mask-convention": "MASK_CONVENTIONS",
    "--output-format": "OUTPUT_FORMATS",
    "--precision": "PRECISIONS",
    "--inference-precision": "INFERENCE_PRECISIONS",
}


def test_cli_choices_are_the_vocabulary():
    words, choices = vocabulary(), cli_choices()
    checked = 0
    for (command, option), offered in choices.items():
        if option in CLI_VOCABULARY:
            assert set(offered) == set(words[CLI_VOCABULARY[option]]), f"pconv {command} {option}"
            checked += 1
    assert checked >= len(CLI_VOCABULARY), sorted(choices)
    assert set(choices[("import-checkpoint", "--format")]) == {"auto", *words["IMPORT_FORMATS"]}


# Keyword-only arguments past the third: a call `f(a, b, c, d)` cannot say which is which, and a later
# parameter added in between would silently shift the rest (issue 23). Typer commands are exempt: their
# parameters are CLI options, which typer always passes by name.
MAX_POSITIONAL = 3


def is_cli_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with ``@app.command`` or ``@app.command(...)``."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "command" and ast.unparse(target.value) == "app":
            return True
    return False


def too_many_positional(source: str, where: str, limit: int = MAX_POSITIONAL) -> list[str]:
    """Functions in ``source`` with more than ``limit`` positional parameters (self/cls not counted)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not is_cli_command(node):
            names = [a.arg for a in node.args.posonlyargs + node.args.args]
            if names[:1] in (["self"], ["cls"]):
                names = names[1:]
            if len(names) > limit:
                found.append(f"{where}.{node.name} line {node.lineno}: {', '.join(names)}")
    return sorted(found)


def test_keyword_only_past_the_third_parameter():
    found = [f for name, path in modules().items() for f in too_many_positional(path.read_text(), name)]
    assert found == [], "put `*` after the third parameter:\n" + "\n".join(found)


def test_the_keyword_only_check_can_fail():
    source = (
        "class A:\n"
        "    def ok(self, a, b, c, *, d): ...\n"
        "    def bad(self, a, b, c, d): ...\n"
        "@app.command()\n"
        "def cmd(a, b, c, d): ...\n"
        "@other.command\n"
        "def not_cli(a, b, c, d): ...\n"
        "def worse(a, b, /, c, d=1, *args): ...\n"
    )
    assert too_many_positional(source, "m") == [
        "m.bad line 3: a, b, c, d",
        "m.not_cli line 7: a, b, c, d",
        "m.worse line 8: a, b, c, d",
    ]
