"""The package's import graph stays clean: no cycles, no import that runs up a layer, and no
private name taken from another module.

Every module under ``src/vessel_lens`` is parsed (nothing is imported), and each ``import`` /
``from ... import`` of a ``vessel_lens`` module counts, deferred ones inside functions included
(a deferred import still ties the two modules together; only ``if TYPE_CHECKING:`` blocks, which
never run, are left out).

The layers, lowest first; a module may import from its own layer and the ones below:

0. the foundation: ``errors``, ``outputs``, ``write_errors``, ``devices``, ``threads``,
   ``interrupts``, ``distributed``, ``_lazy``
1. ``data``
2. ``models``
3. ``training``
4. ``interpret``
5. ``viz``
6. the runs: the module that carries out one command and writes its folder
   (``training.trainer``, ``training.evaluate``, ``training.predict``,
   ``interpret.jacobian.run``, ``interpret.fields.run``, ``interpret.fields.stats_run``,
   ``viz.report``). A run may draw its figures with ``viz``; the library code below it never
   does.
7. the commands and the app: ``demo``, ``app``, ``cli``, ``__main__`` and the package root

A private module or package (``_name``) belongs to the package that holds it: only modules
inside that package import it. A private name (``_name``) inside a module is that module's own.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import vessel_lens

PACKAGE = Path(vessel_lens.__file__).parent

LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "errors",
        "outputs",
        "write_errors",
        "devices",
        "threads",
        "interrupts",
        "distributed",
        "_lazy",
    ),
    ("data",),
    ("models",),
    ("training",),
    ("interpret",),
    ("viz",),
    (
        "training.trainer",
        "training.evaluate",
        "training.predict",
        "interpret.jacobian.run",
        "interpret.fields.run",
        "interpret.fields.stats_run",
        "viz.report",
    ),
    ("demo", "app", "cli", "__main__", ""),
)
"""Modules of ``vessel_lens`` per layer, lowest first, named relative to the package (``""``:
the package root); a module belongs to the layer of the longest name that it is or lies in."""


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    names: tuple[str, ...]
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def edges(root: Path) -> list[Edge]:
    """The imports of package modules by package modules, resolved to the module they load
    (``from a import b`` is an import of ``a.b`` when ``a.b`` is a module)."""
    known = modules(root)
    top = root.name
    found = []
    for importer, path in known.items():
        is_package = path.name == "__init__.py"
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == top:
                        found.append(Edge(importer, alias.name, (), node.lineno))
                continue
            base = node.module or ""
            if node.level:
                anchor = importer.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != top:
                continue
            plain = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    found.append(Edge(importer, submodule, (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Edge(importer, base, tuple(plain), node.lineno))
    return found


def layer(module: str) -> int:
    relative = module.partition(".")[2]
    best, found = -1, None
    for number, names in enumerate(LAYERS):
        for name in names:
            inside = relative == name or relative.startswith(name + ".") or name == ""
            if inside and len(name) > best:
                best, found = len(name), number
    if found is None:
        raise AssertionError(f"{module}: in no layer; add it to LAYERS")
    return found


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def owner_of_private(module: str) -> str | None:
    """The package that a private module belongs to (None for a public module path)."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if _private(part):
            return ".".join(parts[:index])
    return None


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems(root: Path) -> dict[str, list[str]]:
    """Cycles, upward imports and private imports in the package at ``root``."""
    found = edges(root)
    graph: dict[str, set[str]] = {}
    for edge in found:
        if edge.importer != edge.imported:
            graph.setdefault(edge.importer, set()).add(edge.imported)
    upward, private = [], []
    for edge in found:
        where = f"{edge.importer}:{edge.line} imports {edge.imported}"
        if layer(edge.imported) > layer(edge.importer):
            upward.append(where)
        owner = owner_of_private(edge.imported)
        if owner is not None and not _inside(edge.importer, owner):
            private.append(f"{where} (private to {owner})")
        hidden = [name for name in edge.names if _private(name)]
        if hidden and edge.imported != edge.importer:
            private.append(f"{where} names {', '.join(hidden)}")
    return {
        "cycles": [" -> ".join(c) for c in cycles(graph)],
        "upward": upward,
        "private": private,
    }


@pytest.mark.parametrize("kind", ["cycles", "upward", "private"])
def test_the_import_graph_has_none(kind):
    assert problems(PACKAGE)[kind] == []


def test_every_top_level_name_has_a_layer():
    for name in modules(PACKAGE):
        layer(name)


def _plant(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_planted_violation_of_each_kind_is_found(tmp_path):
    root = _plant(
        tmp_path / "vessel_lens",
        {
            "__init__.py": "",
            "errors.py": "",
            "data/__init__.py": "",
            "data/a.py": "def f():\n    from vessel_lens.data import b\n",
            "data/b.py": "from vessel_lens.data.a import f\n",
            "models/__init__.py": "",
            "models/net.py": "from vessel_lens.viz.plot import draw\n",
            "viz/__init__.py": "",
            "viz/plot.py": (
                "from vessel_lens.interpret._core import tape\n"
                "from vessel_lens.data.a import _helper\n"
                "def draw():\n    pass\n"
            ),
            "interpret/__init__.py": "",
            "interpret/_core/__init__.py": "",
            "interpret/_core/tape.py": "",
            "interpret/fields/__init__.py": "",
            "interpret/fields/maps.py": "from vessel_lens.interpret._core import tape\n",
        },
    )
    found = problems(root)
    assert found["cycles"] == ["vessel_lens.data.a -> vessel_lens.data.b"]
    assert found["upward"] == ["vessel_lens.models.net:1 imports vessel_lens.viz.plot"]
    assert found["private"] == [
        "vessel_lens.viz.plot:1 imports vessel_lens.interpret._core.tape "
        "(private to vessel_lens.interpret)",
        "vessel_lens.viz.plot:2 imports vessel_lens.data.a names _helper",
    ]


def test_imports_under_type_checking_do_not_count(tmp_path):
    root = _plant(
        tmp_path / "vessel_lens",
        {
            "__init__.py": "",
            "data/__init__.py": "",
            "data/a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from vessel_lens.viz.plot import draw\n"
            ),
            "viz/__init__.py": "",
            "viz/plot.py": "from vessel_lens.data import a\n",
        },
    )
    assert problems(root) == {"cycles": [], "upward": [], "private": []}


def test_viz_imports_neither_training_nor_the_commands():
    """Figures and the report see models through ``models.inference``, never the training
    loop, and never the command line above them."""
    crossing = [
        f"{edge.importer}:{edge.line} imports {edge.imported}"
        for edge in edges(PACKAGE)
        if _inside(edge.importer, "vessel_lens.viz")
        and any(_inside(edge.imported, f"vessel_lens.{p}") for p in ("training", "cli", "app"))
    ]
    assert crossing == []
