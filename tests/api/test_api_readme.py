"""The README's Python example, run as written: load the QAT LeNet, learn one epoch on the shipped MNIST,
fuse, verify, export the integer ONNX file and test it in onnxruntime."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_example(heading: str = "## Python") -> str:
    """The first ```python block of the README section that starts with ``heading``."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(f"\n{heading}\n"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block under {heading!r}"
    return match.group(1)


def test_the_example_is_there() -> None:
    code = readme_example()
    for call in ("qatrun.load(", ".learn(", ".fuse(", ".verify(", ".export(", "qatrun.test_onnx("):
        assert call in code, call


def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    # From a folder that has the repository's models/ (the README runs from the repository root), so that
    # the run's files land in tmp_path.
    (tmp_path / "models").symlink_to(REPO / "models")
    (tmp_path / "example.py").write_text(readme_example())
    # As a user runs it: the default kernels (native where they build), not the unit tests' eager ones.
    env = {key: value for key, value in os.environ.items() if key != "QATRUN_KERNELS"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    rate = float(re.search(r"fake-quantized: ([\d.]+)%", out).group(1))
    onnx_rate = float(re.search(r"integer ONNX in onnxruntime: ([\d.]+)%", out).group(1))
    assert rate > 90.0, out[-2000:]  # one epoch of the W4A4 LeNet from random weights
    assert abs(onnx_rate - rate) < 1.0, out[-2000:]
    assert "OK." in out and " 0 of 10000 predictions differ" in out
    assert (tmp_path / "run" / "weights").is_dir()
    assert (tmp_path / "run" / "LeNet-QAT-int.onnx").is_file()
