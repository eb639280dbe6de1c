"""The package's layering, read from the source with :mod:`ast`.

- No import cycle between flask_pgtq's modules, counting every import that
  runs (module level or inside a function), not those under
  ``if TYPE_CHECKING:``.
- Flask is imported only by the Flask glue: the extension, the CLI, the
  dashboard, the testing helpers and development mode.
- ``import flask_pgtq.worker`` (and the rest of the core) does not import
  Flask, checked in a fresh interpreter.

Run as a script to print the import graph's cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "flask_pgtq"

#: Modules allowed to import Flask (or werkzeug, Flask's own toolkit).
FLASK_GLUE = {"extension", "cli", "dashboard", "testing", "devdb"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path) -> list[str]:
    """Absolute names of what *path* imports when it runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (
        module_name(path).split(".")
        if path.name == "__init__.py"
        else (module_name(path).split(".")[:-1])
    )
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                prefix = ".".join(["flask_pgtq", *base])
                target = f"{prefix}.{node.module}" if node.module else prefix
                found.append(target.rstrip("."))
                if node.module is None:
                    found.extend(f"{prefix}.{alias.name}".rstrip(".") for alias in node.names)
            else:
                found.append(node.module or "")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    """flask_pgtq's modules and the flask_pgtq modules each imports."""
    modules = {
        "flask_pgtq" + ("." + module_name(p) if module_name(p) else ""): p
        for p in PACKAGE.rglob("*.py")
    }
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in runtime_imports(path):
            # "from . import x" names a module; "from .x import y" names x.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "flask_pgtq":
                targets.add(target)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                strong(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            strong(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_flask_only_in_the_flask_glue() -> None:
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        top = module_name(path).split(".")[0]
        if top in FLASK_GLUE:
            continue
        used = {
            name for name in runtime_imports(path) if name.split(".")[0] in ("flask", "werkzeug")
        }
        if used:
            offenders[module_name(path)] = sorted(used)
    assert offenders == {}


def test_the_core_imports_without_flask() -> None:
    code = (
        "import sys\n"
        "import flask_pgtq.worker, flask_pgtq.queue, flask_pgtq.runner, flask_pgtq.isolation\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


if __name__ == "__main__":
    for group in cycles(graph()):
        print(" <-> ".join(group))
