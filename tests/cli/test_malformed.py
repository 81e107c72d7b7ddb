"""Malformed INI files through the real command: exit 2, one line `error: path:line: ...`, no traceback.

Each case is a small network with one mistake; the line holding the mistake carries the comment
`; <-- here`, so the expected line number is read from the text itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAD = """\
[database]
Type=MNIST_IDX_Database
[sp]
SizeX=28
SizeY=28
BatchSize=16
"""

CONV = """\
[conv1]
Input=sp
Type=Conv
KernelWidth=5
KernelHeight=5
NbOutputs=6
ActivationFunction=Rectifier
"""

TAIL = """\
[pool1]
Input=conv1
Type=Pool
PoolWidth=2
PoolHeight=2
Stride=2
Pooling=Max
NbOutputs=6
Mapping.Size=1
[fc1]
Input=pool1
Type=Fc
NbOutputs=10
[softmax]
Input=fc1
Type=Softmax
NbOutputs=10
WithLoss=1
[softmax.Target]
"""

VALID = HEAD + CONV + TAIL


def _edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


# (case id, INI text, regular expression the message must match after "path:line: ")
CASES: list[tuple[str, str, str]] = [
    ("int-rejects-float", _edit("NbOutputs=6\nAct", "NbOutputs=16.0 ; <-- here\nAct"), r"NbOutputs.*16\.0"),
    ("int-rejects-word", _edit("NbOutputs=6\nAct", "NbOutputs=six ; <-- here\nAct"), r"NbOutputs.*six"),
    ("bool-is-0-or-1", _edit("WithLoss=1", "WithLoss=true ; <-- here"), r"WithLoss.*true"),
    ("enum-exact-case", _edit("Pooling=Max", "Pooling=max ; <-- here"), r"Pooling.*max"),
    ("unknown-cell-type", _edit("Type=Conv", "Type=Convolution ; <-- here"), r"Convolution"),
    ("unknown-input", _edit("Input=conv1", "Input=conv9 ; <-- here"), r"conv9"),
    ("misspelt-key", _edit("KernelHeight=5\n", "KernelHeight=5\nKernelWidht=5 ; <-- here\n"), r"KernelWidht.*KernelWidth"),
    ("missing-equals", _edit("KernelHeight=5\n", "KernelHeight=5\nNoBias ; <-- here\n"), r"NoBias"),
    ("unclosed-quote", _edit("Type=Conv", 'Type="Conv ; <-- here'), r"[Qq]uot|[Mm]alformed"),
    ("duplicate-section", VALID + "[conv1] ; <-- here\nInput=sp\n", r"conv1.*already exists"),
    ("missing-base", _edit("[conv1]", "[conv1] Conv_def ; <-- here"), r"Conv_def.*does not exist"),
    ("expr-import", _edit("NbOutputs=6\nAct", "NbOutputs=$(__import__('os').system('touch PWNED')) ; <-- here\nAct"),
     r"not allowed"),
    ("expr-open", _edit("NbOutputs=6\nAct", "NbOutputs=$(open('PWNED', 'w')) ; <-- here\nAct"), r"not allowed"),
    ("expr-dunder", _edit("NbOutputs=6\nAct", "NbOutputs=$(().__class__.__bases__) ; <-- here\nAct"), r"not allowed"),
    ("expr-lambda", _edit("NbOutputs=6\nAct", "NbOutputs=$((lambda: 6)()) ; <-- here\nAct"), r"not allowed"),
    ("expr-huge", _edit("NbOutputs=6\nAct", "NbOutputs=$(10**10**10) ; <-- here\nAct"), r"not allowed|too large"),
    ("expr-syntax", _edit("NbOutputs=6\nAct", "NbOutputs=$(6 +) ; <-- here\nAct"), r"expression"),
    ("reference-cycle", _edit("NbOutputs=10\n[softmax]", "NbOutputs=[fc1]NbOutputs ; <-- here\n[softmax]"), r"cycl|circular"),
    ("reference-missing-key", _edit("NbOutputs=10\n[softmax]", "NbOutputs=[conv1]Outputs ; <-- here\n[softmax]"),
     r"Outputs.*not found"),
    ("no-target", VALID.replace("[softmax.Target]\n", "").replace("[softmax]\n", "[softmax] ; <-- here\n"),
     r"[Tt]arget"),
    ("unknown-database", _edit("Type=MNIST_IDX_Database", "Type=MNIST_Database ; <-- here"), r"MNIST_Database"),
    ("sp-missing-size", _edit("[sp]\nSizeX=28\n", "[sp] ; <-- here\n"), r"SizeX"),
    ("bn-channel-mismatch", _edit("[pool1]", "[bn1]\nInput=conv1\nType=BatchNorm\nNbOutputs=7 ; <-- here\n[pool1]"),
     r"NbOutputs.*7|7.*6"),
    ("kernel-too-large", _edit("KernelWidth=5", "KernelWidth=40 ; <-- here"), r"output|size|larger"),
    ("unknown-quantizer", _edit("ActivationFunction=Rectifier", "ActivationFunction=Rectifier\nQWeight=SATT ; <-- here"),
     r"SATT.*SAT"),
    ("unknown-quantizer-key",
     _edit("ActivationFunction=Rectifier", "ActivationFunction=Rectifier\nQWeight=SAT\nQWeight.Rang=15 ; <-- here"),
     r"QWeight\.Rang"),
    ("qact-without-activation", _edit("NbOutputs=10\n[softmax]", "NbOutputs=10\nQAct=SAT ; <-- here\n[softmax]"),
     r"ActivationFunction"),
    ("cell-parameter-in-layer", _edit("ActivationFunction=Rectifier", "ActivationFunction=Rectifier\nNoBias=1 ; <-- here"),
     r"ConfigSection"),
    ("missing-config-section", _edit("ActivationFunction=Rectifier",
                                     "ActivationFunction=Rectifier\nConfigSection=common.config ; <-- here"),
     r"common\.config"),
    ("bad-solver-value", _edit("ActivationFunction=Rectifier",
                               "ActivationFunction=Rectifier\nConfigSection=cfg\n[cfg]\nSolvers.LearningRate=fast ; <-- here"),
     r"LearningRate.*fast"),
    ("bad-lr-policy", _edit("ActivationFunction=Rectifier",
                            "ActivationFunction=Rectifier\nConfigSection=cfg\n[cfg]\nSolvers.LearningRatePolicy=Bogus ; <-- here"),
     r"Bogus"),
    ("unknown-activation", _edit("ActivationFunction=Rectifier", "ActivationFunction=Relu ; <-- here"), r"Relu"),
    ("unknown-activation-param",
     _edit("ActivationFunction=Rectifier", "ActivationFunction=Rectifier\nActivationFunction.Slope=0.1 ; <-- here"),
     r"Slope"),
    ("mapping-wrong-size", _edit("ActivationFunction=Rectifier",
                                 "ActivationFunction=Rectifier\nMapping(sp)=1 0 1 ; <-- here"), r"Mapping"),
    ("missing-template", _edit("[pool1]", "[blk@no-such-file.ini.tpl] ; <-- here\nX=1\n[pool1]"), r"no-such-file"),
    ("fc-missing-outputs", _edit("NbOutputs=10\n[softmax]", "\n[softmax]").replace("[fc1]", "[fc1] ; <-- here"),
     r"NbOutputs"),
    ("pool-missing-pooling", _edit("Pooling=Max\n", "").replace("[pool1]", "[pool1] ; <-- here"), r"Pooling"),
    ("validation-out-of-range", _edit("Type=MNIST_IDX_Database", "Type=MNIST_IDX_Database\nValidation=1.5 ; <-- here"),
     r"Validation.*1\.5"),
    ("unknown-transformation", _edit("BatchSize=16\n", "BatchSize=16\n[sp.Transformation-1]\nType=BlurTransformation ; <-- here\n"),
     r"BlurTransformation"),
    ("negative-batch", _edit("BatchSize=16", "BatchSize=-16 ; <-- here"), r"BatchSize"),
]


def _expected_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if "<-- here" in line]
    return lines[0] if lines else 0


# One process runs the command on every case in turn (``qatrun.cli.main``, as ``python -m qatrun`` calls it),
# its output captured per call: the same code path and messages as 30 separate processes, one torch import.
_DRIVER = """
import contextlib, io, json, sys
from qatrun.cli import main
results = {}
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([path])
    results[path] = {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, object]]]:
    folder = tmp_path_factory.mktemp("malformed")
    paths = []
    for case, text, _ in CASES:
        (folder / f"{case}.ini").write_text(text)
        paths.append(str(folder / f"{case}.ini"))
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *paths], cwd=folder, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return folder, json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("case,text,pattern", CASES, ids=[c[0] for c in CASES])
def test_malformed_ini_is_one_line_exit_2(outcomes: tuple[Path, dict[str, dict[str, object]]], case: str, text: str,
                                          pattern: str) -> None:
    folder, results = outcomes
    ini = folder / f"{case}.ini"
    result = results[str(ini)]
    stderr, stdout = str(result["stderr"]), str(result["stdout"])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert result["status"] == 2, stderr + stdout
    assert "Traceback" not in stderr
    assert len(errors) == 1, stderr
    line = _expected_line(text)
    prefix = f"error: {ini}:{line}:" if line else f"error: {ini}"
    assert errors[0].startswith(prefix), errors[0]
    assert re.search(pattern, errors[0]), errors[0]
    assert not (folder / "PWNED").exists()


def test_one_case_in_a_process_of_its_own(tmp_path: Path) -> None:
    """``python -m qatrun`` itself: the exit status and the one line, as the driver above gets them."""
    ini = tmp_path / "bad.ini"
    ini.write_text(CASES[0][1])
    proc = subprocess.run([sys.executable, "-m", "qatrun", str(ini)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(CASES[0][2], errors[0]), errors[0]


def test_there_are_at_least_30_cases() -> None:
    assert len(CASES) >= 30
