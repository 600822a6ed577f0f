"""Imports of the gsmile package: every module imports on its own, and the import graph has
no cycles.

Two different checks, because they catch different things:

* **Each module imported alone**, in a fresh interpreter per module (a single interpreter
  importing them one after the other would hide order dependence: a module that only
  works when another one was imported first is already in ``sys.modules`` by then).
* **The import graph, read statically** with :mod:`ast` (whether a cycle happens to work
  depends on which module is imported first, so running imports cannot prove there is
  none). Two graphs:

  - ``test_no_import_cycles_at_module_level``: imports executed when a module is imported
    (module body, class bodies, ``if``/``try``/``with`` blocks at module level; not
    ``if TYPE_CHECKING:`` blocks, not function bodies). A cycle here is a real
    partially-initialised-module hazard.
  - ``test_no_import_cycles_even_lazily``: the same plus imports inside functions
    (deferred imports). A cycle here works at run time but means two modules depend on
    each other; it is how the explainer <-> metrics cycle was hidden.

An edge ``A -> B`` is written when A imports B explicitly: ``import gsmile.x``,
``from gsmile.x import y`` / ``from .x import y`` (an edge to ``gsmile.x``; to
``gsmile.x.y`` instead when ``y`` is a submodule). Importing a submodule also runs its
parent packages' ``__init__``, but a package importing its own submodules is the normal
pattern, so those implicit parent edges are not added.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import gsmile

PACKAGE = "gsmile"
ROOT = Path(gsmile.__file__).resolve().parent
#: optional third-party dependencies (extras of pyproject.toml) -> the extra that provides them;
#: a module whose import fails only because one of these is missing is skipped, with the reason.
OPTIONAL = {"fastapi": "serve", "uvicorn": "serve", "httpx": "serve/api", "pydantic": "serve",
            "sentence_transformers": "api", "playwright": "browser", "llama_cpp": "server", "diffusers": "images",
            "PIL": "images"}


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package at ``root`` (packages included) -> its source file.
    (pkgutil only lists the files; nothing is imported.)"""
    found = {PACKAGE: root / "__init__.py"}
    stack = [(root, PACKAGE)]
    while stack:
        folder, prefix = stack.pop()
        for info in pkgutil.iter_modules([str(folder)], prefix=prefix + "."):
            path = folder / info.name.rsplit(".", 1)[1]
            if info.ispkg:
                found[info.name] = path / "__init__.py"
                stack.append((path, info.name))
            else:
                found[info.name] = path.with_suffix(".py")
    return dict(sorted(found.items()))


MODULES = all_modules()


def test_the_walk_finds_every_source_file():
    # pkgutil.walk_packages skips a folder without __init__.py: make sure none is missed.
    on_disk = {p.resolve() for p in ROOT.rglob("*.py")}
    assert on_disk == {p.resolve() for p in MODULES.values()}, sorted(map(str, on_disk ^ set(MODULES.values())))
    assert {"gsmile", "gsmile.explainer", "gsmile.backends", "gsmile.server"} <= set(MODULES)


# ------------------------------------------------------------------ static graph
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, lazy: bool):
    """(node, in_function) for every import node; function bodies only when ``lazy``;
    ``if TYPE_CHECKING:`` bodies never (their ``else`` runs)."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if lazy:
                    yield from walk(child, True)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), in_function)
            else:
                yield from walk(child, in_function)

    yield from walk(tree, False)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import, modules) -> set[str]:
    """The gsmile modules an import node imports explicitly."""
    targets: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                targets.add(alias.name)
        return targets
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
        return targets
    for alias in node.names:
        if f"{source}.{alias.name}" in modules:
            targets.add(f"{source}.{alias.name}")  # from pkg import submodule
        else:
            targets.add(source)  # a name defined in source (or *)
    return targets


def import_graph(lazy: bool, modules: dict[str, Path] = MODULES) -> dict[str, dict[str, list[int]]]:
    """module -> {imported gsmile module -> line numbers of the imports}."""
    graph: dict[str, dict[str, list[int]]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, list[int]] = {}
        for node, _ in _imports(tree, lazy):
            for target in _resolve(module, path.name == "__init__.py", node, modules):
                if target != module and target in modules:
                    edges.setdefault(target, []).append(node.lineno)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one
    cycle through its modules found by a search inside the component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sorted(components):
        members, start = set(comp), comp[0]
        # shortest path back to start inside the component (BFS)
        prev = {start: None}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path, v = [], found
        while v is not None:
            path.append(v)
            v = prev[v]
        cycles.append(path[::-1] + [start] + ([f"(component: {', '.join(comp)})"] if len(comp) > len(path) else []))
    return cycles


def describe(cycles, graph) -> str:
    lines = []
    for cycle in cycles:
        hops = [m for m in cycle if not m.startswith("(")]
        steps = []
        for a, b in zip(hops, hops[1:]):
            steps.append(f"{a} -> {b} (line {', '.join(map(str, graph[a][b]))})")
        lines.append("; ".join(steps) + (" " + cycle[-1] if cycle[-1].startswith("(") else ""))
    return "\n".join(lines)


FAKE_PACKAGE = {
    "__init__.py": "from .core import run\n",
    "core.py": (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import util\n"  # an edge to the submodule only
        "from .sub import helper\n"  # a name of a package: an edge to the package
        "if TYPE_CHECKING:\n"
        "    from .report import Report\n"  # never runs: no edge
        "try:\n"
        "    import gsmile.sub.deep\n"  # module level, inside try: an edge
        "except ImportError:\n"
        "    pass\n"
        "class C:\n"
        "    from .util import x\n"  # a class body runs at import time: an edge
        "def run():\n"
        "    from .report import render\n"  # lazy: an edge of the lazy graph only
    ),
    "util.py": "x = 1\n",
    "report.py": "from .core import run\nrender = run\n",
    "sub/__init__.py": "from .deep import helper\n",
    "sub/deep.py": "from ..util import x\ndef helper():\n    from .. import core\n",
}


def test_the_graph_reader_resolves_imports(tmp_path):
    for name, text in FAKE_PACKAGE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = all_modules(tmp_path)
    assert set(modules) == {"gsmile", "gsmile.core", "gsmile.util", "gsmile.report", "gsmile.sub", "gsmile.sub.deep"}
    eager = {m: sorted(e) for m, e in import_graph(False, modules).items()}
    assert eager == {
        "gsmile": ["gsmile.core"],
        "gsmile.core": ["gsmile.sub", "gsmile.sub.deep", "gsmile.util"],
        "gsmile.report": ["gsmile.core"],
        "gsmile.sub": ["gsmile.sub.deep"],
        "gsmile.sub.deep": ["gsmile.util"],
        "gsmile.util": [],
    }
    lazy = import_graph(True, modules)
    assert sorted(lazy["gsmile.core"]) == ["gsmile.report", "gsmile.sub", "gsmile.sub.deep", "gsmile.util"]
    assert sorted(lazy["gsmile.sub.deep"]) == ["gsmile.core", "gsmile.util"]
    assert find_cycles(import_graph(False, modules)) == []
    cycles = find_cycles(lazy)
    assert [c[0] for c in cycles] == ["gsmile.core"]  # one component: core, report, sub, sub.deep
    assert "gsmile.core -> gsmile.report (line 14); gsmile.report -> gsmile.core (line 1)" in describe(cycles, lazy)
    assert "component: gsmile.core, gsmile.report, gsmile.sub, gsmile.sub.deep" in describe(cycles, lazy)
    # a made-up cycle is found and described
    fake = {"a": {"b": [1]}, "b": {"c": [2]}, "c": {"a": [3]}, "d": {"a": [4]}}
    assert find_cycles(fake) == [["a", "b", "c", "a"]]
    assert describe(find_cycles(fake), fake) == "a -> b (line 1); b -> c (line 2); c -> a (line 3)"


def test_no_import_cycles_at_module_level():
    """Imports that run when a module is imported: no cycle at all."""
    graph = import_graph(lazy=False)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles at module level:\n" + describe(cycles, graph)


def test_no_import_cycles_even_lazily():
    """Module-level imports plus imports inside functions: no two modules depend on each
    other even through a deferred import (e.g. explainer -> metrics at module level and
    metrics -> explainer inside a function)."""
    graph = import_graph(lazy=True)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles counting imports inside functions:\n" + describe(cycles, graph)


# -------------------------------------------------------------- real imports
def _import_alone(module: str) -> tuple[str, int, str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::SyntaxWarning"}
    code = f"import importlib; importlib.import_module({module!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    return module, r.returncode, r.stderr


@pytest.fixture(scope="module")
def imported_alone():
    """Each module imported in an interpreter of its own (a few at a time)."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return {m: (rc, err) for m, rc, err in pool.map(_import_alone, MODULES)}


@pytest.mark.parametrize("module", list(MODULES))
def test_each_module_imports_alone(imported_alone, module):
    rc, err = imported_alone[module]
    if rc != 0:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        missing = next((dep for dep in OPTIONAL if f"No module named '{dep}'" in last), None)
        if missing is not None and _not_installed(missing):
            pytest.skip(f"{module} needs the optional dependency {missing} (extra {OPTIONAL[missing]!r}), not installed")
        pytest.fail(f"python -c 'import {module}' failed (exit {rc}):\n{err}")


def _not_installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_import_gsmile_alone_is_light():
    """``import gsmile`` works in a fresh interpreter and loads no heavy optional stack
    (torch, transformers, fastapi, matplotlib, diffusers, PIL are imported only when used)."""
    code = ("import sys, gsmile; heavy = [m for m in ('torch', 'transformers', 'fastapi', 'matplotlib', "
            "'sentence_transformers', 'diffusers', 'PIL') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
