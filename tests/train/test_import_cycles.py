"""No import cycle among the modules of cbir.train and cbir.heads (every import counts,
function-local ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

import cbir

SRC = Path(cbir.__file__).parent.parent
PACKAGES = ("cbir.train", "cbir.heads")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (SRC / "cbir").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        if not name.startswith(PACKAGES):
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in files and t.startswith(PACKAGES) and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_graph_sees_the_modules():
    graph = import_graph()
    assert "cbir.heads.learned" in graph["cbir.heads.transform"]  # a function-local import
    assert "cbir.train.loop" in graph["cbir.train.methods.supervised"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_train_and_heads():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])
