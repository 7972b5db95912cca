"""The package's import graph runs one way: no circles, no import from a lower layer to a higher one.

Every module under ``emdtree/`` is parsed (not imported) and each import in it,
at module level or inside a function, becomes an arrow; imports under
``if TYPE_CHECKING:`` name types only and are left out. Each module belongs to
one layer of :data:`LAYERS` (the longest prefix of its name in
:data:`LAYER_OF`); a module may import modules of its own layer and of the
layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import emdtree

ROOT = Path(emdtree.__file__).parent

# lowest first
LAYERS = (
    "kernels",   # Numba and CUDA kernels on flat arrays: no emdtree type
    "trees",     # the Tree, its layout, builders, Newick, LCA tables, file helpers
    "engine",    # input semantics, plans, drivers, tiers, dispatch: no public function
    "api",       # the NumPy-level public functions
    "services",  # framework adapters, metrics, pairwise and 1-D distances, I/O, datasets, and the
                 # public modules emdtree.torch, .jax, .tensorflow, .metrics, .io that are their doors
    "entry",     # the package itself: emdtree/__init__.py
    "cli",       # the command line
)

# module name (or package prefix) -> layer; the longest matching prefix wins
LAYER_OF = {
    "emdtree": "entry",
    "emdtree.__main__": "cli",
    "emdtree.torch": "services",
    "emdtree.jax": "services",
    "emdtree.tensorflow": "services",
    "emdtree.metrics": "services",
    "emdtree.io": "services",
    "emdtree.datasets": "services",
    "emdtree._api": "api",
    # the kernels
    "emdtree.kernels": "kernels",
    # the trees
    "emdtree.trees": "trees",
    "emdtree.trees.tree": "trees",
    "emdtree.trees.hierarchy": "trees",
    "emdtree.trees.builders": "trees",
    "emdtree.trees.newick": "trees",
    "emdtree.trees.layout": "trees",
    "emdtree.trees.files": "trees",
    # the engine
    "emdtree.engine": "engine",
    "emdtree.engine.inputs": "engine",
    "emdtree.engine.normalize": "engine",
    "emdtree.engine.labels": "engine",
    "emdtree.engine.driver": "engine",
    "emdtree.engine.tiers": "engine",
    "emdtree.engine.threads": "engine",
    "emdtree.engine.dispatch": "engine",
    "emdtree.engine.cuda": "engine",
    "emdtree.evaluation.exactsum": "engine",
    "emdtree.engine.compile_notice": "engine",
    # what the public modules are made of
    "emdtree.frameworks": "services",
    "emdtree.frameworks.losses": "services",
    "emdtree.frameworks.torch_func": "services",
    "emdtree.frameworks.jax_native": "services",
    "emdtree.frameworks.tf_native": "services",
    "emdtree.evaluation": "services",
    "emdtree.evaluation.chunks": "services",
    "emdtree.evaluation.dask": "services",
    "emdtree.evaluation.inputs": "services",
    "emdtree.distances": "services",
    "emdtree.distances.pairwise": "services",
    "emdtree.distances.rows": "services",
    "emdtree.distances.sparse_rows": "services",
    "emdtree.distances.pairwise_dask": "services",
    "emdtree.distances.line": "services",
    "emdtree.distances.sinkhorn": "services",
    "emdtree.distances.unifrac": "services",
    "emdtree.formats": "services",
    "emdtree.formats.lazy_tables": "services",
    "emdtree.formats.qiime": "services",
    "emdtree.cli": "cli",
    "emdtree.cli.commands": "cli",
    "emdtree.cli.scaleout": "cli",
    "emdtree.cli.demo": "cli",
    "emdtree.cli.info": "cli",
}

# the public face that no engine module may reach back to
PUBLIC = ("emdtree", "emdtree._api", "emdtree.torch", "emdtree.jax", "emdtree.tensorflow", "emdtree.metrics",
          "emdtree.io")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """The dotted names that one module imports, with their line numbers."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - node.level + 1]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        # "from x import y" names the module x.y when there is one, else x (resolved in _graph)
        self.found += [(f"{stem}.{alias.name}", node.lineno) for alias in node.names]

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("emdtree.x"), or import_module(".x", __name__) in a package
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            target = node.args[0].value
            if isinstance(target, str) and target.startswith("."):
                target = self.package + target
            if isinstance(target, str):
                self.found.append((target, node.lineno))
        self.generic_visit(node)


def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, for the modules of emdtree only."""
    files = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        arrows: dict[str, int] = {}
        for name, line in visitor.found:
            if not (name == "emdtree" or name.startswith("emdtree.")):
                continue
            while name not in files:
                name = name.rpartition(".")[0]
            if name != module:
                arrows.setdefault(name, line)
        graph[module] = arrows
    return graph


def _circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> str | None:
    name = module
    while name:
        if name in LAYER_OF:
            return LAYER_OF[name]
        name = name.rpartition(".")[0]
    return None


GRAPH = _graph()


def test_the_graph_sees_the_package():
    assert "emdtree._api" in GRAPH["emdtree"] or any(m.endswith("api") for m in GRAPH["emdtree"])
    assert len(GRAPH) > 30


def test_no_import_circles():
    circles = _circles(GRAPH)
    described = []
    for component in circles:
        ties = [f"{a} -> {b} (line {GRAPH[a][b]})" for a in component for b in GRAPH[a] if b in component]
        described.append(" <-> ".join(component) + ": " + "; ".join(ties))
    assert not circles, "import circles:\n" + "\n".join(described)


def test_every_module_has_a_layer():
    missing = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not missing, f"modules with no layer in tests/test_structure.py LAYER_OF: {missing}"


def test_imports_run_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for a, arrows in GRAPH.items():
        for b, line in arrows.items():
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and rank[lb] > rank[la]:
                upward.append(f"{a} ({la}) -> {b} ({lb}), line {line}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_the_engine_does_not_call_back_into_the_public_api():
    back = [f"{a} -> {b} (line {line})" for a, arrows in GRAPH.items()
            if layer_of(a) in ("kernels", "trees", "engine") and a not in PUBLIC
            for b, line in arrows.items() if b in PUBLIC]
    assert not back, "internal modules importing the public API:\n" + "\n".join(sorted(back))


@pytest.mark.parametrize("source, circle", [
    ("a:b\nb:a", ["a", "b"]),
    ("a:b\nb:c\nc:a\nd:a", ["a", "b", "c"]),
])
def test_circles_are_found(source, circle):
    graph = {line.split(":")[0]: {line.split(":")[1]: 1} for line in source.splitlines()}
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, {})
    assert _circles(graph) == [circle]


def test_imports_are_read_as_the_interpreter_resolves_them():
    source = ("from . import _x\nfrom ._y import z\nimport emdtree.a.b\nfrom typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from ._hidden import T\n"
              "def f():\n    from .. import top\n    importlib.import_module('.lazy', __name__)\n")
    visitor = _Imports("emdtree.sub.mod", False)
    visitor.visit(ast.parse(source))
    names = {name for name, _ in visitor.found}
    assert names >= {"emdtree.sub._x", "emdtree.sub._y.z", "emdtree.a.b", "emdtree.top", "emdtree.sub.lazy"}
    assert not any("_hidden" in n for n in names)
