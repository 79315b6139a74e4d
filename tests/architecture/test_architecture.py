"""The shape of the code, checked: no import cycles, the layers contract, protocol names in one place."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from radprobe.protocols import registry

SRC = Path(__file__).resolve().parents[2] / "src" / "radprobe"
# Files that may spell out several protocol names: the registry itself, the trained options schemas
# (keyed by name), few-shot's inner protocols (what it is made of), and studies, which choose
# protocols rather than define them.
ALLOWED = {
    "protocols/registry.py",
    "finetune/options.py",
    "protocols/fewshot.py",
    "run/builtin.py",
    "run/paper_study.py",
    "demo.py",
}


def _cycles(adj: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(sorted(adj[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_modules_lazy_imports_included() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("radprobe")
    adj = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(adj) == []


def test_layers_contract_is_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed")
    res = subprocess.run([exe], cwd=SRC.parents[1], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "0 broken" in res.stdout


def _name_collections(tree: ast.AST) -> list[tuple[int, list[str]]]:
    names = set(registry.names())
    found = []
    for node in ast.walk(tree):
        items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else None
        if isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        if not items:
            continue
        hits = [e.value for e in items if isinstance(e, ast.Constant) and e.value in names]
        if len(hits) >= 3:  # pairs are dispatch inside a family (lora and dora share peft)
            found.append((node.lineno, hits))
    return found


def test_protocol_names_are_defined_once() -> None:
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in ALLOWED:
            continue
        found = _name_collections(ast.parse(path.read_text()))
        if found:
            offenders[rel] = found
    assert offenders == {}, "protocol names listed outside the registry: resolve them through it"


def test_registry_is_complete_and_each_family_has_its_runner() -> None:
    from radprobe.finetune.options import OPTION_TYPES

    assert len(registry.PROTOCOLS) == len(set(registry.PROTOCOLS)) == 16
    assert registry.names("trained") == list(OPTION_TYPES)
    for name, spec in registry.PROTOCOLS.items():
        assert spec.family in registry.FAMILIES
        assert (spec.runner is None) == (spec.family == "trained"), name
        assert registry.describe(name), name  # every protocol has options with defaults


def _radprobe(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "radprobe")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_cli_protocols_lists_the_registry() -> None:
    res = _radprobe("protocols", "--json")
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert [p["name"] for p in listed] == registry.names()
    knn = next(p for p in listed if p["name"] == "knn")
    assert knn["family"] == "frozen" and {o["name"] for o in knn["options"]} >= {"ks", "temperature"}
    lora = next(p for p in listed if p["name"] == "lora")
    assert next(o for o in lora["options"] if o["name"] == "rank")["default"] == 8


@pytest.mark.parametrize("path", ["eval", "study"])
def test_unknown_protocol_lists_every_registered_name(tmp_path: Path, path: str) -> None:
    if path == "eval":
        res = _radprobe(
            "eval",
            "-b",
            "test:vit-tiny",
            "-d",
            "synthetic:cls2d-binary",
            "-p",
            "bogus",
            "-o",
            str(tmp_path / "run"),
        )
    else:
        study = tmp_path / "s.yaml"
        study.write_text(
            "backbones: [test:vit-tiny]\ndatasets: [synthetic:cls2d-binary]\nprotocols: [bogus]\n"
        )
        res = _radprobe("study", "run", str(study), "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert all(n in line for n in registry.names()), line
    assert not (tmp_path / "run" / "results.db").exists()
