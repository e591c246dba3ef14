"""The package's modules import one another without a circle: not at import time, not under
``TYPE_CHECKING``, not through an import inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import flask_status

PACKAGE = Path(flask_status.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .engine import ...
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import config, details
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("flask_status."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("flask_status.")
            )
    return found


def test_no_module_imports_itself_back() -> None:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    graph = {name: imports_of(path) & modules.keys() - {name} for name, path in modules.items()}
    circles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        for imported in sorted(graph[name]):
            if imported in trail:
                circles.append([*trail[trail.index(imported) :], imported])
            elif imported not in done:
                visit(imported, [*trail, imported])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
    assert graph["route"] and graph["extension"] >= {"route"}  # the test reads real imports
