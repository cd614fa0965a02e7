"""Imports flow one way: the import graph of ``qcore/`` and ``plugins/`` (installed as ``qcore_plugins``) has no cycle.

Every ``import`` / ``from ... import`` statement counts, wherever it is (module level, inside a function or a
method, under ``try``), except those guarded by ``if TYPE_CHECKING:`` (they never run).  Package
``__init__.py`` files are left aside as *nodes*: they re-export names and necessarily import their
submodules.  An import of a name re-exported by a package (``from qcore import Quantizer``) is followed to
the module that defines it, so a package ``__init__`` cannot hide a cycle; ``import qcore`` alone (a
package) adds no edge.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: source folder -> import name of the package it holds
PACKAGES = {"qcore": "qcore", "plugins": "qcore_plugins"}


def _modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py file of the two packages (packages map to their __init__)."""
    mods = {}
    for folder, pkg in PACKAGES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _is_package(mods, name) -> bool:
    path = mods.get(name)
    return path is not None and path.name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node not under ``if TYPE_CHECKING:`` (its ``else`` branch does count)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _reexports(mods, trees, pkg: str) -> dict[str, str]:
    """Names a package ``__init__`` imports from its own modules: name -> defining module (followed transitively)."""
    out = {}
    tree = trees.get(pkg)
    if tree is None:
        return out
    for node in _imports(tree):
        if isinstance(node, ast.ImportFrom):
            src = _absolute(pkg, True, node)
            for alias in node.names:
                target = f"{src}.{alias.name}"
                if target in mods:
                    out[alias.asname or alias.name] = target
                elif src in mods:
                    if _is_package(mods, src):
                        out[alias.asname or alias.name] = _reexports(mods, trees, src).get(alias.name, src)
                    else:
                        out[alias.asname or alias.name] = src
    return out


def _targets(mods, trees, module: str, node) -> set[str]:
    """Modules of the two packages an import statement loads (for edges; packages resolved through re-exports)."""
    found = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            # `import a.b.c` loads a, a.b and a.b.c; only the modules count as nodes
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found.add(".".join(parts[:i]))
        return found
    src = _absolute(module, _is_package(mods, module), node)
    found.add(src)
    for alias in node.names:
        sub = f"{src}.{alias.name}"
        if sub in mods:
            found.add(sub)
        elif _is_package(mods, src):
            defining = _reexports(mods, trees, src).get(alias.name)
            if defining:
                found.add(defining)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: {module it imports}}`` over the non-``__init__`` modules of qcore and qcore_plugins."""
    mods = _modules()
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in mods.items()}
    graph = {}
    for name, tree in trees.items():
        if _is_package(mods, name):
            continue
        edges = set()
        for node in _imports(tree):
            for t in _targets(mods, trees, name, node):
                if t in mods and not _is_package(mods, t) and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def _where(module: str, target: str) -> str:
    """``file:line`` of the first statement of ``module`` importing ``target`` (for the failure message)."""
    mods = _modules()
    trees = {n: ast.parse(p.read_text()) for n, p in mods.items()}
    for node in _imports(trees[module]):
        if target in _targets(mods, trees, module, node):
            return f"{mods[module].relative_to(ROOT)}:{node.lineno}"
    return str(mods[module].relative_to(ROOT))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through them."""
    index, low, on, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    cycles = []
    for comp in comps:
        # one concrete cycle inside the component: breadth-first path from its first member back to itself
        members = set(comp)
        start = comp[0]
        prev = {start: None}
        queue = [start]
        end = None
        while queue and end is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & members):
                if w == start:
                    end = v
                    break
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [end]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        cycles.append(list(reversed(path)) + [start])
    return cycles


def test_the_graph_sees_the_packages():
    graph = import_graph()
    # the layers the test is about are in the graph, with their real edges
    assert "qcore.api" in graph and "qcore.plugin.manager" in graph["qcore.api"]
    assert "qcore_plugins.schemes.linear" in graph
    assert "qcore.quantization.quantizer" in graph


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_imports_and_init_files_are_left_out():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nelse:\n    import y\ndef f():\n    import z\n")
    names = {a.name for n in _imports(tree) for a in getattr(n, "names", [])}
    assert names == {"TYPE_CHECKING", "y", "z"}


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    if cycles:
        lines = []
        for cyc in cycles:
            steps = [f"    {a} -> {b}  ({_where(a, b)})" for a, b in zip(cyc, cyc[1:])]
            lines.append("import cycle: " + " -> ".join(cyc) + "\n" + "\n".join(steps)
                         + "\n    break it by moving what both need into a module below them, or import under TYPE_CHECKING")
        pytest.fail("imports must flow one way (a layer imports only from layers below it):\n" + "\n".join(lines))


def test_no_core_module_imports_the_builtin_plugins():
    """``qcore/`` reaches plugins only through the registry (docs/contracts.md §1): no module of it imports
    ``qcore_plugins`` (its schemes, kernels or compiled extensions), wherever the import statement is."""
    mods = _modules()
    offenders = []
    for name, path in mods.items():
        if not name.startswith("qcore.") and name != "qcore":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in _imports(tree):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [_absolute(name, _is_package(mods, name), node)]
            if any(t == "qcore_plugins" or t.startswith("qcore_plugins.") for t in targets):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "qcore/ imports the built-in plugin package at " + ", ".join(offenders)
