"""The data package's modules import each other without cycles, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import radprobe.data

PACKAGE = "radprobe.data"
ROOT = Path(radprobe.data.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module of the package that ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` imports the submodule when ``sub`` is one.
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out.update(subs or ({node.module} & modules))
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: _imports(p, set(files)) - {m} for m, p in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_data_modules_have_no_import_cycle() -> None:
    graph = _graph()
    assert graph.get("radprobe.data.dataset")
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_presets_import_formats_not_the_dispatcher() -> None:
    graph = _graph()
    presets = [m for m in graph if m.startswith(f"{PACKAGE}.presets")]
    assert any(any(n.startswith(f"{PACKAGE}.formats") for n in graph[m]) for m in presets)
    for m in presets:
        assert not graph[m] & {f"{PACKAGE}.index", f"{PACKAGE}.sources", f"{PACKAGE}.dataset"}, m
