"""The whole QAT flow in one command (``-qat-flow``), through the real command on real MNIST: the same files as
the manual commands, an interrupted phase resumed with ``-l``, and the refusals (one line, nothing written)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.conftest import (  # noqa: F401
    LENET,
    assert_refused,
    data_args,
    mnist_small,
    run_in_one_process,
    run_qatrun,
    snapshot,
)

REPO = Path(__file__).resolve().parents[2]
SAT = str(REPO / "configs" / "sat-w4a4.ini")
SOLVER = str(REPO / "configs" / "sat-solver.ini")
FOLDERS = ("weights_clamped", "weights_validation", "weights_quantized")  # LeNet.ini has a Validation set


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_flow_writes_what_the_manual_commands_write(tmp_path: Path, mnist_small: Path) -> None:
    data = [*data_args(mnist_small), "-seed", "5"]
    flow, manual = tmp_path / "flow", tmp_path / "manual"
    flow.mkdir(), manual.mkdir()
    out = _ok(run_qatrun([LENET, "-recipe", SAT, "-qat-flow", "-phase-epochs", "1,1", *data], flow))
    assert "Phase 1 of 2, clamp: 1 epochs" in out and "Phase 2 of 2, quantize: 1 epochs" in out
    assert "'weights_validation' moved to 'weights_clamped'" in out
    assert "0 of 200 predictions differ" in out and "Notice: learning for" not in out
    assert json.loads((flow / "qat_flow.json").read_text())["done"] == ["clamp", "quantize"]

    one = ["-learn-epoch", "1", "-set", "$EPOCHS=1"]
    _ok(run_qatrun([LENET, "-recipe", SAT, "-recipe-phase", "clamp", *one, *data], manual))
    (manual / "weights_validation").rename(manual / "weights_clamped")
    _ok(run_qatrun([LENET, "-recipe", SAT, *one, "-w", "weights_clamped", *data], manual))
    _ok(run_qatrun([LENET, "-recipe", SAT, "-test", "-qat-fuse", "-w", "weights_validation", *data], manual))
    for name in FOLDERS:
        files = snapshot(flow / name)
        assert len(files) >= 6 and files == snapshot(manual / name), name


def _interrupt_in_phase_2(folder: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "qatrun", *args]
    proc = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines, in_phase_2 = [], False
    for line in proc.stdout:
        lines.append(line)
        in_phase_2 = in_phase_2 or line.startswith("Phase 2 of 2")
        if in_phase_2 and line.startswith("Learning #epoch 1"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(command, proc.returncode, "".join(lines) + out, err)


def test_an_interrupted_phase_resumes_with_l(tmp_path: Path, mnist_small: Path) -> None:
    args = [LENET, "-recipe", SAT, "-qat-flow", "-phase-epochs", "1,3", *data_args(mnist_small)]
    proc = _interrupt_in_phase_2(tmp_path, args)
    assert_refused(proc, "interrupted at epoch 2", "continue with -l net_state")
    assert json.loads((tmp_path / "qat_flow.json").read_text())["done"] == ["clamp"]
    clamped = snapshot(tmp_path / "weights_clamped")
    out = _ok(run_qatrun([*args, "-l", "net_state"], tmp_path))
    assert "Phase 1 of 2, clamp: done before" in out and "Phase 2 of 2, quantize: 3 epochs" in out
    assert "Learning #epoch 2" in out and "Learning #epoch 1 " not in out
    assert "0 of 200 predictions differ" in out and (tmp_path / "weights_quantized").is_dir()
    assert snapshot(tmp_path / "weights_clamped") == clamped
    # a state of the other flow is refused
    other = _ok(run_qatrun([LENET, "-recipe", SAT], tmp_path))  # a summary writes nothing
    assert "Recipe" in other
    before = snapshot(tmp_path)
    proc = run_qatrun([LENET, "-recipe", SAT, "-qat-flow", "-phase-epochs", "1,2", *data_args(mnist_small),
                       "-l", "net_state"], tmp_path)
    assert_refused(proc, "records another flow", before=before, folder=tmp_path)


REFUSALS = [
    (["-qat-flow"], ["-qat-flow needs a -recipe FILE"]),
    (["-recipe", SOLVER, "-qat-flow"], ["none of the recipes names its phases", "sat-solver.ini"]),
    (["-recipe", SAT, "-qat-flow", "-phase-epochs", "1"], ["-phase-epochs: 1 value(s) for the 2 phases"]),
    (["-recipe", SAT, "-qat-flow", "-phase-epochs", "1,x"], ["-phase-epochs", "expected an integer"]),
    (["-recipe", SAT, "-qat-flow", "-learn-epoch", "2"], ["-learn-epoch does not apply"]),
    (["-recipe", SAT, "-qat-flow", "-l", "net_state"], ["no 'qat_flow.json' here"]),
    (["-recipe-phase", "clamp"], ["-recipe-phase chooses the phase of the -recipe files"]),
    (["-recipe", SAT, "-recipe-phase", "float", "-test"], ["sat-w4a4.ini: no phase 'float'"]),
    (["-phase-epochs", "1,1", "-learn-epoch", "1"], ["-phase-epochs sets the phases of -qat-flow"]),
    (["-recipe", "missing.ini", "-test"], ["missing.ini", "no such file"]),
    # mnist_small: 800 Learn images, 7 steps of 128 per epoch; the recipe's MinMax starts after 200
    (["-recipe", str(REPO / "configs" / "minmax-w8a8.ini"), "-qat-flow", "-phase-epochs", "1,2"],
     ["the quantized phase runs 14 steps (2 epochs)", "QWeight.Delay is 200 steps"]),
]
RECIPE_ERRORS = [
    ("[ElemWise]\nQAct=SAT\n", 1, "matches no layer"),
    ("[all]\nQWeight=SAT\nQWeight.Rnage=15\n", 3, "Rnage"),
    ("[Pool]\nQWeight=SAT\n", 2, "has no weights to quantize"),
]


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory, mnist_small: Path) -> list[tuple[Path, dict[str, str],
                                                                                      subprocess.CompletedProcess[str]]]:
    """Every refusal of this module, each in an empty folder of its own, run in one process."""
    runs, folders = [], []
    for i, (extra, _) in enumerate(REFUSALS):
        folders.append(tmp_path_factory.mktemp(f"refusal{i}"))
        runs.append(([LENET, *extra, *data_args(mnist_small)], folders[-1]))
    for i, (text, _, _) in enumerate(RECIPE_ERRORS):
        folders.append(tmp_path_factory.mktemp(f"recipe{i}"))
        (folders[-1] / "bad.ini").write_text(text)
        runs.append(([LENET, "-recipe", str(folders[-1] / "bad.ini"), "-learn-epoch", "1", *data_args(mnist_small)],
                     folders[-1]))
    befores = [snapshot(folder) for folder in folders]
    return list(zip(folders, befores, run_in_one_process(runs)))


@pytest.mark.parametrize(("index", "names"), list(enumerate(names for _, names in REFUSALS)))
def test_refusals(index: int, names: list[str], refused: list) -> None:
    folder, before, proc = refused[index]
    assert_refused(proc, *names, before=before, folder=folder)


@pytest.mark.parametrize(("index", "line", "message"), [(i, line, message) for i, (_, line, message)
                                                         in enumerate(RECIPE_ERRORS)])
def test_recipe_errors_name_the_file_and_line(index: int, line: int, message: str, refused: list) -> None:
    folder, before, proc = refused[len(REFUSALS) + index]
    error = assert_refused(proc, message, before=before, folder=folder)
    assert f"{folder / 'bad.ini'}:{line}:" in error


def test_schedule_notice_once(tmp_path: Path, mnist_small: Path) -> None:
    """LeNet.ini's cosine spans $EPOCHS=10 epochs: a 1-epoch run says so, once."""
    out = _ok(run_qatrun([LENET, "-learn-epoch", "1", *data_args(mnist_small), "-seed", "2"], tmp_path))
    assert out.count("Notice: learning for 1 epochs, but the learning-rate schedule spans 10 epochs") == 1
    shutil.rmtree(tmp_path / "weights_validation")
