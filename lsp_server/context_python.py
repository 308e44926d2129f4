"""Python definitions for project context: the names imported or used near the cursor, resolved to their
`class` / `def` / assignment in the open documents or the workspace's files, read with `ast` (nothing runs).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

MAX_DEF_LINES = 40  # a longer definition is shown as its outline (signatures, one-line docstrings)
FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]+)", re.M)
IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n#;]+)", re.M)
NAME = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class Wanted:
    """A name to define: `name` from module `module` (None: any module that defines it)."""

    module: str | None
    name: str


def wanted_names(text: str, near: set[str], near_text: str) -> list[Wanted]:
    """The imported names used near the cursor (`from m import X`, `import m` + `m.X`), in import order."""
    out: list[Wanted] = []
    for m in FROM_IMPORT.finditer(text):
        for part in m.group(2).strip("()").replace("\n", " ").split(","):
            bits = part.split()
            if not bits or bits[0] == "*":
                continue
            alias = bits[-1] if len(bits) == 3 and bits[1] == "as" else bits[0]
            if alias in near:
                out.append(Wanted(m.group(1), bits[0]))
    for m in IMPORT.finditer(text):
        for part in m.group(1).split(","):
            bits = part.split()
            if not bits:
                continue
            module, alias = bits[0], bits[-1] if len(bits) == 3 and bits[1] == "as" else bits[0]
            for attr in re.findall(rf"\b{re.escape(alias)}\.(\w+)", near_text):
                out.append(Wanted(module, attr))
    return list(dict.fromkeys(out))


def module_paths(module: str, doc_dir: Path | None, folders: list[Path]) -> list[Path]:
    """Where a module's source may be: relative to the document for `.m`, else under the document's folder
    and each workspace folder (and its `src/`)."""
    dots = len(module) - len(module.lstrip("."))
    parts = [p for p in module.lstrip(".").split(".") if p]
    if dots:
        if doc_dir is None:
            return []
        base = doc_dir
        for _ in range(dots - 1):
            base = base.parent
        roots = [base]
    else:
        roots = [*([doc_dir] if doc_dir else []), *folders, *(f / "src" for f in folders)]
    out = []
    for root in dict.fromkeys(roots):
        here = root.joinpath(*parts)
        out += [here.with_name(here.name + ".py"), here / "__init__.py"] if parts else [root / "__init__.py"]
    return out


def parse(text: str) -> ast.Module | None:
    """The module's syntax tree, or None when it does not parse (a file being edited)."""
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def definitions(tree: ast.Module, lines: list[str], names: set[str]) -> list[tuple[str, int, int, str, str]]:
    """(name, first line, end line (exclusive), text, outline or "") of each top-level definition of one of
    `names`; the outline is the shorter form for a budget the whole text does not fit."""
    out = []
    for node in tree.body:
        for name in _defined(node):
            if name in names:
                first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno]) - 1
                end = node.end_lineno or node.lineno
                short = outline(node, lines) if isinstance(node, (ast.ClassDef, ast.FunctionDef)) else ""
                text = short if end - first > MAX_DEF_LINES and short else "".join(lines[first:end])
                out.append((name, first, end, text, short if short != text else ""))
    return out


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def outline(node: ast.ClassDef | ast.FunctionDef, lines: list[str]) -> str:
    """A long definition's header and, for a class, each member's signature and docstring's first line."""
    out = _header(node, lines)
    if isinstance(node, ast.FunctionDef):
        return out + _indent_of(node, lines) + "    ...\n"
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += _header(item, lines)
            doc = ast.get_docstring(item)
            pad = _indent_of(item, lines) + "    "
            out += f'{pad}"""{doc.splitlines()[0]}"""\n' if doc else ""
            out += f"{pad}...\n"
        elif isinstance(item, (ast.Assign, ast.AnnAssign)) and (item.end_lineno or 0) - item.lineno < 3:
            out += "".join(lines[item.lineno - 1 : item.end_lineno])
    return out


def _header(node, lines: list[str]) -> str:
    """The decorators and the signature lines of a class or function (up to its body)."""
    first = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
    stop = node.body[0].lineno - 1  # the body's first line (a docstring's too)
    return "".join(lines[first : max(stop, node.lineno)])


def _indent_of(node, lines: list[str]) -> str:
    line = lines[node.lineno - 1]
    return line[: len(line) - len(line.lstrip())]
