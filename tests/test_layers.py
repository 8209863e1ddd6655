"""The package's import graph: floors that only point down, and no cycles.

Every ``sae_sens`` module sits on a floor (``FLOORS``, keyed by its top-level name under
``sae_sens``). A module may import modules on its own floor or below, never above, and the graph of
imports between modules (module-level and function-level alike, ``TYPE_CHECKING`` blocks excepted)
has no cycle. The CLI and the demo application sit on the top floor, so nothing in the library can
import them. The test parses the sources with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sae_sens"

# Floors, bottom to top. A new top-level module must be placed here (the test says so).
FLOORS: dict[str, int] = {
    # 0: plain helpers every floor may use
    "errors": 0, "hashing": 0, "schemas": 0, "progress": 0,
    # 1: the artifact store (the package root re-exports ``Store``)
    "__init__": 1, "store": 1, "locking": 1, "runs": 1,
    # 2: model, SAE and corpus access, and the demo assets that resolve "demo:" ids
    "assets": 2, "hub": 2, "names": 2, "sae": 2, "model": 2, "corpus": 2, "devices": 2,
    # 3: the stages and what they share
    "stages": 3, "collect": 3, "collect_reference": 3, "saebench_examples": 3, "generate": 3,
    "score": 3, "judge": 3, "label": 3, "report": 3, "export": 3,
    # 4: running many stages over many SAEs
    "pipeline": 4, "executors": 4,
    # 5: applications: the CLI, the demo, and the tiny real components tests and benchmarks build
    "cli": 5, "demo": 5, "testing": 5,
    "__main__": 6,
}
FLOOR_NAMES = {0: "helpers", 1: "store", 2: "model/SAE/corpus access", 3: "stages", 4: "pipeline/executors",
               5: "applications", 6: "entry point"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``sae_sens`` modules that ``module`` imports (resolved to the most specific known module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "sae_sens" and (target := resolve(alias.name)):
                        found.add(target)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                if prefix.split(".")[0] != "sae_sens":
                    continue
                for alias in child.names:  # `from . import demo` imports a module, not a name
                    target = resolve(f"{prefix}.{alias.name}") if f"{prefix}.{alias.name}" in known else None
                    target = target or resolve(prefix)
                    if target:
                        found.add(target)
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _floor(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in FLOORS:
        pytest.fail(f"module {module} has no floor: add {top!r} to FLOORS in {Path(__file__).name}")
    return FLOORS[top]


def test_every_module_has_a_floor() -> None:
    for module in _modules():
        _floor(module)


def test_imports_only_point_down() -> None:
    bad = [f"{m} (floor {_floor(m)}, {FLOOR_NAMES[_floor(m)]}) imports {t} (floor {_floor(t)}, {FLOOR_NAMES[_floor(t)]})"
           for m, targets in sorted(_graph().items()) for t in sorted(targets) if _floor(t) > _floor(m)]
    assert not bad, "imports that point up:\n  " + "\n  ".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        color[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if color.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if color.get(nxt) is None and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        color[node] = 2
        return None

    for node in sorted(graph):
        if color.get(node) is None and (cycle := dfs(node)):
            return cycle
    return None


def _without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its own submodules is not a cycle with them."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


def test_no_import_cycle() -> None:
    cycle = _find_cycle(_without_package_reexports(_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_cycles_and_upward_imports(tmp_path: Path) -> None:
    """The checks can fail: a crafted graph with a cycle and an upward edge is caught."""
    graph = {"sae_sens.corpus": {"sae_sens.demo"}, "sae_sens.demo": {"sae_sens.cli"},
             "sae_sens.cli": {"sae_sens.corpus"}}
    assert _find_cycle(graph) == ["sae_sens.cli", "sae_sens.corpus", "sae_sens.demo", "sae_sens.cli"]
    assert _floor("sae_sens.corpus") < _floor("sae_sens.demo")
    src = tmp_path / "sae_sens" / "corpus.py"
    src.parent.mkdir()
    src.write_text("def f():\n    from . import demo\n    from .cli.app import main\n")
    (tmp_path / "sae_sens" / "demo.py").write_text("")
    known = {"sae_sens", "sae_sens.corpus", "sae_sens.demo", "sae_sens.cli", "sae_sens.cli.app"}
    assert _imports("sae_sens.corpus", src, known) == {"sae_sens.demo", "sae_sens.cli.app"}
