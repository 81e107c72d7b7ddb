"""The import rules of design.md section 2: a walk over every module's imports.

Two checks. Between packages, each import of a qatrun package must be allowed by ``ALLOWED``. Inside the
whole of ``qatrun``, module by module (``qatrun.net.graph`` -> ``qatrun.net.cells``), the imports must form
no circle: the module graph is built from the source with ``ast``, and a circle anywhere is reported with
the file and line of each import in it.

What counts as an edge of the module graph:

* every ``import`` statement, wherever it stands: an import inside a function runs when the function
  does, so it is a dependency all the same (deferring it is how a circle hides);
* except the statements under ``if TYPE_CHECKING:``, which never execute (annotations only);
* ``from package import name`` goes to the submodule ``package.name`` when there is one, else to the
  package's ``__init__``; relative imports are resolved against the importing module's package;
* importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, but those implicit parent imports
  are not edges: a package's ``__init__`` that re-exports its submodules would otherwise close a circle
  with each of them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qatrun"

# package -> the qatrun packages it may import (besides itself). Layer 0: "errors", "options" (the choices
# offered) and "ini"; then data, net and quant; train (which wires solvers and weights folders onto a built,
# quantized network); fuse and export; "network", the public API composing them; the command over it, which
# reaches the API through ``import qatrun`` alone.
_BASE = {"errors", "options", "files"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "options": set(),
    "files": set(),
    "ini": {"errors"},
    "data": _BASE | {"ini"},
    "net": _BASE | {"ini"},
    "quant": _BASE | {"ini"},
    "train": _BASE | {"ini", "net", "quant"},
    "fuse": _BASE | {"ini", "quant", "net"},
    "export": _BASE | {"ini", "fuse", "quant", "net"},
    "calib": _BASE | {"ini", "quant", "net", "fuse"},
    "recipe": _BASE | {"ini", "net"},
    "network": _BASE | {"ini", "data", "net", "quant", "train", "fuse", "export", "calib", "recipe"},
    "cli": _BASE,
    "__main__": {"cli"},
    "__init__": _BASE | {"ini", "data", "net", "quant", "train", "fuse", "export", "calib", "recipe", "network"},
}
STDLIB_ONLY = {"errors", "options", "files", "ini"}
THIRD_PARTY_SEEN = {"torch", "numpy", "onnx", "onnxruntime", "onnx2torch", "tqdm", "matplotlib"}


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: stays inside its own package by construction
                if node.level > 1:
                    found.append((node.lineno, "qatrun.<relative-parent>"))
                continue
            module = node.module or ""
            if module == "qatrun":
                found += [(node.lineno, f"qatrun.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_package_has_a_rule() -> None:
    assert {_package_of(p) for p in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    own = _package_of(path)
    for line, name in _imports(path):
        parts = name.split(".")
        if parts[0] == "qatrun" and len(parts) > 1:
            target = parts[1]
            assert target != "<relative-parent>", f"{path}:{line}: relative import out of the package"
            if target in ("__version__", "__main__") or target == own:
                continue
            assert target in ALLOWED[own], f"{path}:{line}: {own} may not import qatrun.{target}"
        elif own in STDLIB_ONLY:
            assert parts[0] not in THIRD_PARTY_SEEN, f"{path}:{line}: {own} must use the standard library only"


def test_rule_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from qatrun.net import build\nimport torch\n")
    assert _imports(bad) == [(1, "qatrun.net"), (2, "torch")]


# --------------------------------------------------------------------------------------------------
# No import circle, module by module


@dataclass(frozen=True)
class Edge:
    """One import of one module by another: where it is written."""

    source: str
    target: str
    path: Path
    line: int


def _module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``root`` (a package ``__init__`` is its package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or \
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _executed_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at module level, in functions and classes, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the body only types annotations
            continue
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda node: node.lineno)


def _module_edges(root: Path) -> list[Edge]:
    """The import edges between the modules under ``root``, as described in the module docstring."""
    modules = _module_names(root)
    edges = []
    for source, path in modules.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in _executed_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # ``import a.b.name``: the module is a.b
                    target = target.rpartition(".")[0]
                if target and target != source:
                    edges.append(Edge(source, target, path, node.lineno))
    return edges


def find_circles(root: Path) -> list[str]:
    """One description per import circle among the modules under ``root``, ``[]`` when there is none.

    A circle is a strongly connected component of the module graph (Tarjan's algorithm); it is shown as
    one cycle through it, each step with the file and line of its import.
    """
    edges = _module_edges(root)
    out: dict[str, list[Edge]] = {}
    for edge in edges:
        out.setdefault(edge.source, []).append(edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(module: str) -> None:  # recursion depth is bounded by the number of modules
        index[module] = low[module] = len(index)
        stack.append(module)
        for edge in out.get(module, []):
            if edge.target not in index:
                visit(edge.target)
                low[module] = min(low[module], low[edge.target])
            elif edge.target in stack:
                low[module] = min(low[module], index[edge.target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(_module_names(root)):
        if module not in index:
            visit(module)
    return [_describe(component, out) for component in sorted(components)]


def _describe(component: list[str], out: dict[str, list[Edge]]) -> str:
    """The shortest cycle from the component's first module back to it, as ``a (a.py:3) -> b (b.py:8) -> a``."""
    members, start = set(component), component[0]
    reached: dict[str, Edge] = {}  # module -> the edge it was first reached by (breadth first)
    frontier = [start]
    while start not in reached:  # a strongly connected component always leads back to its start
        following = []
        for module in frontier:
            for edge in out[module]:
                if edge.target in members and edge.target not in reached:
                    reached[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    path = [reached[start]]
    while path[-1].source != start:
        path.append(reached[path[-1].source])
    steps = [f"{edge.source} ({edge.path.name}:{edge.line})" for edge in reversed(path)]
    return " -> ".join([*steps, start])


def test_no_import_circle() -> None:
    circles = find_circles(ROOT)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_circle_can_be_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.a import run\n")
    (package / "a.py").write_text("from pkg import b\n\n\ndef run():\n    return b.helper()\n")
    # An import inside a function closes the circle all the same; one under TYPE_CHECKING does not.
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.c import Thing\n\n\n"
        "def helper():\n    from .a import run\n    return run\n"
    )
    (package / "c.py").write_text("from pkg.b import helper\n")
    assert find_circles(tmp_path / "pkg") == ["pkg.a (a.py:1) -> pkg.b (b.py:8) -> pkg.a"]
    (package / "b.py").write_text("def helper():\n    return None\n")
    assert find_circles(tmp_path / "pkg") == []
