"""The import rules of design.md section 2: a walk over every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qatrun"

# package -> the qatrun packages it may import (besides itself); "errors" and "ini" are layer 0.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "options": set(),
    "ini": {"errors"},
    "data": {"errors", "ini"},
    "net": {"errors", "ini"},
    "quant": {"errors", "ini"},
    "train": {"errors", "ini"},
    "fuse": {"errors", "ini", "quant", "net"},
    "export": {"errors", "ini", "fuse", "quant", "net"},
    "pipeline": {"errors", "ini", "data", "net", "quant", "train", "fuse", "export"},
    "cli": {"errors", "pipeline"},
    "__main__": {"cli"},
    "__init__": set(),
}
STDLIB_ONLY = {"errors", "options", "ini"}
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
