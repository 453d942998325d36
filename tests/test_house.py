"""The house rules, checked: nothing imports in a circle (modules or stages), ``training/`` imports
no method, no module passes 400 lines, experiments stay out of the package, and the README's
"Where things live" names every top-level entry of the package and nothing that is not there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "costfilter"


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """Package modules ``module`` imports, at module level or inside functions (a lazy import is
    still a dependency); imports under ``if TYPE_CHECKING:`` are for annotations only."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = (".".join(package[: len(package) - child.level + 1] + ([child.module] if child.module else []))
                        if child.level else child.module or "")
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.add(target if target in MODULES else base)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def _stage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_walker_finds_what_it_should():
    # the oracle is checked on graphs whose answer is known, and on imports known to exist
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert "costfilter.methods.base" in GRAPH["costfilter.methods.memory"]
    assert "costfilter.training.bank" in GRAPH["costfilter.methods.memory.fit"]
    assert "costfilter.fitting" in GRAPH["costfilter.api"]
    assert "costfilter.api" not in GRAPH["costfilter.fitting"]  # annotation only (TYPE_CHECKING)


def test_no_module_imports_in_a_circle():
    assert _cycles(GRAPH) == []


def test_no_stage_imports_in_a_circle():
    stages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        stages.setdefault(_stage(module), set()).update(_stage(t) for t in targets if _stage(t) != _stage(module))
    assert _cycles(stages) == []


def test_training_imports_no_method():
    shared = [m for m in GRAPH if m.startswith("costfilter.training")]
    assert shared
    for module in shared:
        assert not [t for t in GRAPH[module] if t.startswith("costfilter.methods")], module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_passes_400_lines(module):
    assert len(MODULES[module].read_text().splitlines()) <= 400


def test_experiments_and_harnesses_stay_out_of_the_package():
    assert not (PACKAGE / "bench").exists() and not (PACKAGE / "serve" / "process.py").exists()
    assert (ROOT / "benchmarks" / "__init__.py").is_file()
    for module, path in MODULES.items():
        assert "benchmarks" not in GRAPH[module] and "import benchmarks" not in path.read_text(), module
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.packages\.find\]\s*where = \["src"\]', text)


def test_where_things_live_matches_the_tree():
    section = (ROOT / "docs" / "concepts" / "architecture.md").read_text()
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    named = {m for row in rows for m in re.findall(r"`([a-z_]+(?:\.py|/))`", row.split("|")[2])}
    present = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert named == present
