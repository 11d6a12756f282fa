"""The import picture of ``cola/``: every arrow runs one way. Read from the source (imports inside functions count),
so a late ``from cola.data import ...`` inside a metric is caught as well as a top-level one."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

COLA = Path(__file__).resolve().parents[2] / "cola"

# the units that must not look up: each may import only these units of cola (besides itself)
ALLOWED = {
    "dicts": set(),
    "boxes": set(),
    "avqa_types": set(),
    "peft": {"dicts"},
    "models": {"dicts", "peft"},
    "metrics": {"avqa_types", "boxes", "dicts"},
    "data": {"avqa_types", "boxes", "dicts", "io", "metrics"},
}


def _unit(path: Path) -> str:
    """``cola/peft/layers.py`` -> ``peft``; ``cola/harness.py`` -> ``harness``."""
    rel = path.relative_to(COLA).parts
    return rel[0] if len(rel) > 1 else Path(rel[0]).stem


def import_graph() -> dict[str, set[str]]:
    """{unit: the other units of cola it imports}, from every ``import cola.X`` / ``from cola.X import``."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in COLA.rglob("*.py"):
        src = _unit(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cola"):
                parts = node.module.split(".")
                names = [a.name for a in node.names] if len(parts) == 1 else [parts[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("cola.")]
            graph[src].update(n for n in names if n != src)
    return dict(graph)


def test_the_graph_is_read():
    graph = import_graph()
    assert {"peft", "models", "metrics", "data", "tasks", "harness"} <= set(graph)
    assert {"peft", "models", "data", "sweep"} <= graph["harness"]


def test_the_lower_layers_import_only_what_lies_below():
    graph = import_graph()
    wrong = {u: sorted(graph.get(u, set()) - ok) for u, ok in ALLOWED.items() if graph.get(u, set()) - ok}
    assert not wrong, f"imports that run back up: {wrong}"


def test_no_cycle_between_units():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            assert state.get(v) != 1, f"import cycle: {' -> '.join([*path, u, v])}"
            if v not in state:
                visit(v, [*path, u])
        state[u] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])
