"""The architecture in docs/design.md, checked against the code's imports.

Every ``import`` and ``from ... import`` in ``controller/`` and ``backends/``
counts, including those under ``TYPE_CHECKING`` and inside functions: a
layer may only import the layers below it, the package graph has no cycle
and is at most seven layers deep, and no two modules import each other.
"""

from __future__ import annotations

import ast
import functools
from typing import TYPE_CHECKING

from tests.conftest import ROOT

if TYPE_CHECKING:
    from pathlib import Path

# Lowest first; units of equal rank (dispatch, observability) must not import
# each other either.
RANK = {
    "backends": 0,
    "controller": 0,  # the package face: __version__
    "controller.errors": 0,
    "controller.config": 1,
    "controller.engine": 2,
    "controller.dispatch": 3,
    "controller.observability": 3,
    "controller.http": 4,
    "controller.cli": 5,
    "controller.__main__": 6,
}
MAX_LAYERS = 7


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The layer a module belongs to: its subpackage, or itself at the top."""
    parts = module.split(".")
    if parts[0] == "backends":
        return "backends"
    if len(parts) >= 2 and f"controller.{parts[1]}" in RANK:
        return f"controller.{parts[1]}"
    return module


def imported(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in out if m.split(".")[0] in ("controller", "backends")}


@functools.cache
def module_graph() -> dict[str, set[str]]:
    files = [*ROOT.joinpath("controller").rglob("*.py")]
    files += ROOT.joinpath("backends").rglob("*.py")
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # "from controller.http import app" names a module; keep real modules.
        graph[name] = {m for m in imported(path, name) if m in modules} - {name}
    return graph


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        unit = unit_of(module)
        graph.setdefault(unit, set()).update(
            t for m in targets if (t := unit_of(m)) != unit
        )
    return graph


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each node's floor: 1 + the highest floor it imports (acyclic graphs)."""
    floor: dict[str, int] = {}

    def visit(node: str, path: tuple[str, ...]) -> int:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node not in floor:
            below = [visit(n, (*path, node)) for n in graph.get(node, ())]
            floor[node] = 1 + max(below, default=0)
        return floor[node]

    for node in graph:
        visit(node, ())
    return floor


def test_every_unit_has_a_layer() -> None:
    assert set(unit_graph()) <= set(RANK), set(unit_graph()) - set(RANK)


def test_layers_only_import_downwards() -> None:
    upward = [
        f"{unit} -> {target}"
        for unit, targets in unit_graph().items()
        for target in targets
        if RANK[target] >= RANK[unit]
    ]
    assert upward == []


def test_the_package_graph_has_no_cycle_and_at_most_seven_layers() -> None:
    floors = layers(unit_graph())
    assert max(floors.values()) <= MAX_LAYERS, floors


def test_no_two_modules_import_each_other() -> None:
    layers(module_graph())  # asserts on the first cycle it meets


def test_the_engine_knows_no_http_and_reload_no_app() -> None:
    graph = module_graph()
    engine = [m for m in graph if m.startswith("controller.engine")]
    for module in engine:
        assert not any(t.startswith("controller.http") for t in graph[module])
        assert not any(t.startswith("controller.observability") for t in graph[module])
