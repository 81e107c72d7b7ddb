"""The fault suite: the real command on real (small) data, one fault per case.

Every case asserts the same four things (:func:`assert_refused`): the exit status, one ``error:`` line that
names the offending file, option or value, no Python traceback, and what was on disk before the run is still
there, byte for byte, wherever nothing should change (:func:`snapshot`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from qatrun.data.formats import write_mnist_subset

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "qatrun" / "data" / "mnist"
MODELS = REPO / "models"
LENET = str(MODELS / "LeNet.ini")
QAT = str(MODELS / "LeNet-QAT.ini")
QAT_CLAMP = str(MODELS / "LeNet-QAT-clamp.ini")


def run_qatrun(args: Sequence[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """``python -m qatrun ARGS`` in ``cwd`` (text output, no standard input)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "qatrun", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


_DRIVER = """
import contextlib, io, json, os, sys
from qatrun.cli import main
results = []
for run in json.loads(sys.argv[1]):
    os.chdir(run["cwd"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(run["args"])
    results.append({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def run_in_one_process(runs: Sequence[tuple[Sequence[str], Path]]) -> list[subprocess.CompletedProcess[str]]:
    """``qatrun ARGS`` in ``cwd`` for each run, one after the other in one Python process (``qatrun.cli.main``,
    what ``python -m qatrun`` calls, its output captured per run): one torch import for many refusals. For
    runs that end before learning; signals, locks and environments need a process of their own
    (:func:`run_qatrun`)."""
    import json

    plan = [{"args": list(args), "cwd": str(cwd)} for args, cwd in runs]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(plan)], capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    return [subprocess.CompletedProcess(["qatrun", *run["args"]], r["status"], r["stdout"], r["stderr"])
            for run, r in zip(plan, results)]


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (folders as ``<dir>``)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_refused(proc: subprocess.CompletedProcess[str], *names: str, status: int = 2,
                   before: dict[str, str] | None = None, folder: Path | None = None) -> str:
    """The run failed as a user error: ``status``, exactly one ``error:`` line on stderr naming every one of
    ``names``, no traceback; and, given ``before`` (a :func:`snapshot` of ``folder``), nothing on disk changed.

    Returns:
        The error line.
    """
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == status, f"exit {proc.returncode}, expected {status}\n{out[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for name in names:
        assert name in errors[0], f"{name!r} not in {errors[0]!r}"
    if before is not None:
        assert folder is not None
        assert snapshot(folder) == before, "files changed on disk"
    return errors[0]


@pytest.fixture(scope="session")
def mnist_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Genuine MNIST cut to its first 1,000 training and 200 test images (seconds per epoch)."""
    return write_mnist_subset(SHIPPED, tmp_path_factory.mktemp("mnist-small"), 1000, 200)


def copy_run(source: Path, tmp_path: Path) -> Path:
    """A private copy of a run folder made by a fixture, for one case to change."""
    return Path(shutil.copytree(source, tmp_path / "run"))


def data_args(folder: Path) -> list[str]:
    """The options that point the LeNet INIs at ``folder``."""
    return ["-set", f"[database]DataPath={folder}"]
