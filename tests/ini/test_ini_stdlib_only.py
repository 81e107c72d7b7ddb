"""``qatrun.ini`` is layer 0: it imports only the standard library (design.md section 2)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import qatrun.ini

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
for blocked in ("torch", "numpy", "onnx", "onnxruntime", "onnx2torch", "tqdm", "matplotlib", "hypothesis"):
    sys.modules[blocked] = None  # any import of these now raises ImportError
import importlib
for name in {modules!r}:
    importlib.import_module(name)
from qatrun.ini import loads
loads("[a]\\nX=$(1+1)").section("a").raw("X")
outside = sorted(
    name for name, module in sys.modules.items()
    if module is not None and name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] not in ("qatrun", "__main__")
)
print("non-stdlib:", outside)
"""


def test_every_ini_module_imports_with_third_party_packages_blocked():
    modules = ["qatrun.ini"] + [
        f"qatrun.ini.{info.name}" for info in pkgutil.iter_modules(qatrun.ini.__path__)
    ]
    assert len(modules) >= 8
    result = subprocess.run(
        # -S: no site-packages at all, so only the standard library and this checkout can be imported.
        [sys.executable, "-S", "-c", _PROBE.format(modules=modules)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "non-stdlib: []"
