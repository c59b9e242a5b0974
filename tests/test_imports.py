"""No import cycle in ``pipeline/``: every module imports only modules that do not import it
back, at any depth, counting imports inside functions (they run on the first call) and the
package ``__init__`` each import runs, but not ``if TYPE_CHECKING:`` imports (never run)."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.provenance import ROOT


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    skip: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(ast.walk(child))
    return skip


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over ``pipeline``, with the packages each import runs."""
    modules = {_module(p): p for p in (ROOT / "pipeline").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if node in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        runs = set()
        for t in targets:  # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = t.split(".")
            runs.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        graph[name] = {t for t in runs if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)) is not None:
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def test_pipeline_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "pipeline.runs" in graph["pipeline.tasks.editing"]  # a top-level import
    assert "pipeline.models" in graph["pipeline.config"]  # imported inside a function
