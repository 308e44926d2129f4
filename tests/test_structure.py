"""The code's shape: no import cycle among the project's modules, no function over 60 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lsp_server", "inference", "tokenizer")
MAX_FUNCTION_LINES = 60
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported(tree: ast.AST, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules a module imports (at module level or inside functions)."""
    package = name if known[name].name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: imported(ast.parse(path.read_text(encoding="utf-8")), name, known)
        for name, path in known.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_the_project_imports():
    graph = import_graph()
    assert "inference.engine" in graph["lsp_server.models"]  # an import inside a function counts
    assert "tokenizer" in graph["inference.loader"] or "tokenizer.codegen" in graph["inference.loader"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`file:line name (n lines)` for each function or method longer than `limit` lines."""
    out = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = node.end_lineno - first + 1
                if n > limit:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_functions_are_short(limit):
    assert long_functions(limit) == []


def test_the_length_check_counts_decorators_and_bodies():
    found = long_functions(20)  # the project has functions over 20 lines: the check must see them
    assert found and all(int(f.rsplit("(", 1)[1].split()[0]) > 20 for f in found)


def walk_rows() -> list[tuple[str, list[tuple[str, int | None]]]]:
    """(file, [(function, row of its file or None)]) of each row of ARCHITECTURE.md's keystroke walk."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## One keystroke, file by file", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            calls = re.findall(r"`([A-Za-z_][\w.]*)`(?: \((\d)\))?", cells[2])
            rows.append(
                (cells[1].strip("`"), [(n.rpartition(".")[2], int(k) if k else None) for n, k in calls])
            )
    return rows


def defined_in(file: str) -> set[str]:
    tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, DEFINITIONS)}


def test_the_keystroke_walk_matches_the_code():
    rows = walk_rows()
    assert 5 <= len(rows) <= 8, [f for f, _ in rows]
    files = [f for f, _ in rows]
    for file, calls in rows:
        assert calls, file
        for name, row in calls:  # defined in its row's file, or in the file of the row it names
            where = files[row - 1] if row else file
            assert name in defined_in(where), f"{name} is not defined in {where}"
