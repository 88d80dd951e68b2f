"""The package's shape: imports point down only (no import circle, lazy imports included).

A newcomer reads ``streamcl run`` -> ``cli`` -> ``config`` -> ``runner`` -> ``build`` ->
``registry`` -> a strategy and its plugins; each module may import only modules below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "streamcl"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, modules: set) -> set:
    """streamcl modules that ``path`` imports anywhere (module level or inside functions)."""
    out = set()
    me = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            # A package's own __init__ re-exporting its submodules is not an import "up".
            if n and n != me and not (path.name == "__init__.py" and n.startswith(me + ".")):
                out.add(n)
    return out


def graph() -> dict:
    files = [p for p in PKG.rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def cycles(g: dict) -> list:
    """Every back edge of a depth-first walk, as the circle it closes."""
    found, state = [], {}

    def visit(node: str, stack: list) -> None:
        state[node] = "open"
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circle():
    assert [" -> ".join(c) for c in cycles(graph())] == []


def test_core_layers_point_down():
    g = graph()
    order = ["streamcl.cli", "streamcl.runner", "streamcl.report", "streamcl.pretrain", "streamcl.build",
             "streamcl.config", "streamcl.registry"]
    for i, upper in enumerate(order):
        for lower in order[i + 1:]:
            assert upper not in _reach(g, lower), f"{lower} imports {upper}, which sits above it"


def _reach(g: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        for m in g.get(n, ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen
