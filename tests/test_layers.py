"""The package's import graph: floors that only point down, and no cycles, package ``__init__`` included.

Every ``sae_sens`` module sits on a floor (``FLOORS``, keyed by its top-level name under
``sae_sens``). A module may import modules on its own floor or below, never above, and the graph of
imports between modules (module-level and function-level alike, ``TYPE_CHECKING`` blocks excepted)
has no cycle. The CLI and the demo application sit on the top floor, so nothing in the library can
import them.

A package is a module too: its ``__init__`` runs whenever anything under it is imported, so its
imports (its re-exports of its own submodules included) are edges like any other, and importing
``pkg.sub`` from outside ``pkg`` is an edge to ``pkg`` as well as to ``pkg.sub``. A circle such as
``cli/__init__ -> cli/app -> ... -> demo -> cli`` is therefore a cycle.

The test kit (``tests/support``: tiny real components, the OpenAI-compatible server, the two-pass
baseline, the in-process CLI runner) is not part of the library: nothing in ``sae_sens`` imports it or
anything else under ``tests``. The kit sits above the whole library and below the tests: it may import
any of ``sae_sens``, never a test module or a conftest, and has no cycle of its own. The test parses
the sources with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sae_sens"
KIT = ROOT / "tests" / "support"

# Floors, bottom to top. A new top-level module must be placed here (the test says so).
FLOORS: dict[str, int] = {
    # 0: plain helpers every floor may use
    "errors": 0, "hashing": 0, "schemas": 0, "progress": 0, "faults": 0, "jsonl": 0,
    # 1: the artifact store (the package root re-exports ``Store``)
    "__init__": 1, "store": 1, "files": 1, "folders": 1, "manifest": 1, "locking": 1, "runs": 1, "freshness": 1,
    # 2: model, SAE and corpus access, and the demo assets that resolve "demo:" ids
    "assets": 2, "hub": 2, "names": 2, "sae": 2, "model": 2, "corpus": 2, "devices": 2,
    # 3: the stages and what they share
    "stages": 3, "collect": 3, "generate": 3,
    "score": 3, "judge": 3, "label": 3, "report": 3, "export": 3,
    # 4: running many stages over many SAEs
    "pipeline": 4, "executors": 4,
    # 5: applications: the CLI and the demo
    "cli": 5, "demo": 5,
    "__main__": 6,
}
FLOOR_NAMES = {0: "helpers", 1: "store", 2: "model/SAE/corpus access", 3: "stages", 4: "pipeline/executors",
               5: "applications", 6: "entry point"}
# Top-level names the test kit and the tests are imported under; the library imports none of them.
TEST_NAMES = {"tests", "conftest", "testing", "openai_server", "gen_support", "collect_reference"}

# Edges left out of the cycle check while their removal is under way elsewhere. Each must still exist
# (the test says when one is gone, so the allowance goes with it).
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()  # none left: the demo is a CLI command now


def _module_name(path: Path, base: Path) -> str:
    """The dotted name of ``path`` when ``base`` (the folder above the top package) is on sys.path."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: Path, base: Path | None = None) -> dict[str, Path]:
    base = base or package.parent
    return {_module_name(p, base): p for p in sorted(package.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(module: str, path: Path) -> set[str]:
    """Every absolute dotted name ``module`` imports: ``import a.b`` gives ``a.b``, ``from a import b``
    gives ``a.b`` (a submodule or a name in ``a``; ``_imports`` tells which), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                found.update(f"{prefix}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return found


def _ancestors(module: str) -> list[str]:
    """``a.b.c`` -> [``a``, ``a.b``]: the packages whose ``__init__`` runs before ``a.b.c`` does."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The known modules that importing ``module`` runs directly: each import's most specific known
    module, and the packages above it that are not already running (``module``'s own packages are:
    they were imported before it)."""
    own = {module, *_ancestors(module)}
    found: set[str] = set()
    for name in _imported_names(module, path):
        target = name
        while target and target not in known:  # `from a import name`: the module is `a`
            target = target.rpartition(".")[0]
        if not target:
            continue
        found.add(target)
        found.update(p for p in _ancestors(target) if p in known and p not in own)
    found.discard(module)
    return found


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    mods = _modules(package)
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _floor(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in FLOORS:
        hint = " (the test kit lives in tests/support, outside the library)" if top in TEST_NAMES else ""
        pytest.fail(f"module {module} has no floor: add {top!r} to FLOORS in {Path(__file__).name}{hint}")
    return FLOORS[top]


def test_every_module_has_a_floor() -> None:
    for module in _modules(PACKAGE):
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


def _cycle_problem(package: Path, allowed: Collection[tuple[str, str]] = ()) -> str | None:
    """What is wrong with ``package``'s import graph as to cycles (``allowed`` edges left out), or None."""
    graph = _graph(package)
    gone = sorted(f"{a} -> {b}" for a, b in allowed if b not in graph.get(a, ()))
    if gone:
        return "allowed edges that no longer exist (remove them from ALLOWED_CYCLE_EDGES): " + ", ".join(gone)
    cycle = _find_cycle({m: {t for t in ts if (m, t) not in allowed} for m, ts in graph.items()})
    return None if cycle is None else "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle() -> None:
    problem = _cycle_problem(PACKAGE, ALLOWED_CYCLE_EDGES)
    assert problem is None, problem


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
    # importing cli.app runs cli/__init__ first: an edge to the package too
    assert _imports("sae_sens.corpus", src, known) == {"sae_sens.demo", "sae_sens.cli.app", "sae_sens.cli"}


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "sae_sens"


# A small package laid out like ours: the root re-exports the store, cli/__init__ re-exports its app,
# the app imports a sibling and (inside a function) the demo; the demo uses the store.
CLEAN_TREE = {
    "sae_sens/__init__.py": "from .store import Store\n",
    "sae_sens/store.py": "class Store: ...\n",
    "sae_sens/cli/__init__.py": "from .app import app, main\n",
    "sae_sens/cli/app.py": ("from . import output\nfrom ..store import Store\napp = None\n"
                            "def main():\n    from .. import demo\n"),
    "sae_sens/cli/output.py": "from sae_sens import Store\n",
    "sae_sens/demo.py": "from .store import Store\n",
}


def test_the_layer_test_fails_on_a_circle_through_a_package_init(tmp_path: Path) -> None:
    """A package's own re-exports and its submodules' sibling imports are no cycle; one bad import
    that comes back to ``cli`` (whose ``__init__`` imports ``cli.app``) is, though no module imports
    itself and no two submodules import each other."""
    clean = _write_tree(tmp_path / "clean", CLEAN_TREE)
    assert _cycle_problem(clean) is None

    bad = _write_tree(tmp_path / "bad", {**CLEAN_TREE, "sae_sens/demo.py": "from .cli import main\n"})
    assert _cycle_problem(bad) == "import cycle: sae_sens.cli -> sae_sens.cli.app -> sae_sens.demo -> sae_sens.cli"
    # the same circle entered through a submodule: importing cli.output from demo runs cli/__init__ first
    via_sub = _write_tree(tmp_path / "via_sub", {**CLEAN_TREE, "sae_sens/demo.py": "import sae_sens.cli.output\n"})
    assert _cycle_problem(via_sub) == "import cycle: sae_sens.cli -> sae_sens.cli.app -> sae_sens.demo -> sae_sens.cli"
    # a temporary allowance silences exactly its edge, and says when that edge is gone
    assert _cycle_problem(bad, {("sae_sens.demo", "sae_sens.cli")}) is None
    assert "no longer exist" in (_cycle_problem(clean, {("sae_sens.demo", "sae_sens.cli")}) or "")


def _in_kit(name: str) -> bool:
    return name == "tests.support" or name.startswith("tests.support.")


def test_the_library_never_imports_tests_or_the_test_kit() -> None:
    bad = sorted(f"{m} imports {name}" for m, p in _modules(PACKAGE).items()
                 for name in _imported_names(m, p) if name.split(".")[0] in TEST_NAMES)
    assert not bad, "the library imports test code:\n  " + "\n  ".join(bad)


def test_the_test_kit_sits_between_the_library_and_the_tests() -> None:
    kit = _modules(KIT, ROOT)
    assert {"tests.support.testing", "tests.support.collect_reference", "tests.support.openai_server",
            "tests.support.gen_support"} <= set(kit)
    bad = sorted(f"{m} imports {name}" for m, p in kit.items() for name in _imported_names(m, p)
                 if name.split(".")[0] in TEST_NAMES and not _in_kit(name))
    assert not bad, "the test kit imports tests (it sits below them):\n  " + "\n  ".join(bad)
    cycle = _find_cycle({m: _imports(m, p, set(kit)) for m, p in kit.items()})
    assert cycle is None, "import cycle in the test kit: " + " -> ".join(cycle or [])
