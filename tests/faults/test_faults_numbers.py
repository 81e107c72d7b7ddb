"""Faults of numbers: a run that diverges, and ``nan`` / ``inf`` going into or out of weights folders.

A diverging run is LeNet with a learning rate of 1e30 and no weight clamping: its loss is ``nan`` within a
few steps. What was saved before must stay as it was; nothing non-finite is ever read, written, fused or
exported.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

import qatrun
from qatrun.errors import DataError, RunError
from qatrun.train import read_values
from tests.faults.conftest import LENET, QAT, assert_refused, copy_run, data_args, run_qatrun, snapshot


def _sets(mnist_small: Path) -> list[str]:
    """The ``-set`` values of :func:`data_args`, for ``qatrun.load``."""
    return data_args(mnist_small)[1::2]

DIVERGE = ["-set", "[common.config]WeightsSolver.LearningRate=1e30", "-set", "[common.config]Solvers.Clamping="]
DIVERGE_QAT = ["-set", "$LR=1e30"]


@pytest.fixture(scope="module")
def trained(mnist_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where LeNet learnt one epoch of ``mnist_small``: ``weights_validation/`` and the rest."""
    folder = tmp_path_factory.mktemp("trained")
    proc = run_qatrun([LENET, *data_args(mnist_small), "-learn-epoch", "1", "-seed", "3"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def _all_finite(folder: Path) -> None:
    for path in folder.rglob("*.syntxt"):
        read_values(path)  # raises on nan / inf


# ---------------------------------------------------------------------------------------------- divergence


def test_nan_loss_stops_and_keeps_the_best_weights(trained: Path, mnist_small: Path, tmp_path: Path) -> None:
    work = copy_run(trained, tmp_path)
    before = snapshot(work / "weights_validation")
    proc = run_qatrun([LENET, *data_args(mnist_small), *DIVERGE, "-learn-epoch", "1", "-seed", "3"], work)
    line = assert_refused(proc, "loss is nan", "epoch 1", "step ", before=before, folder=work / "weights_validation")
    assert "BEST validation" not in proc.stdout, line
    assert not (work / "weights").exists()


def test_nan_loss_with_learn_saves_no_validation(mnist_small: Path, tmp_path: Path) -> None:
    # -learn with a validation every batch: the check runs before each log point's save
    proc = run_qatrun([LENET, *data_args(mnist_small), *DIVERGE, "-learn", "1000", "-log", "128", "-seed", "3"],
                      tmp_path)
    assert_refused(proc, "loss is nan", "epoch 1", "step ")
    if (tmp_path / "weights_validation").exists():
        _all_finite(tmp_path / "weights_validation")
    assert "Traceback" not in proc.stderr


def test_diverging_qat_writes_no_inf_into_weights(mnist_small: Path, tmp_path: Path) -> None:
    # No Validation partition: weights/ is written at each -log point, BatchNorm variances included
    args = [QAT, *data_args(mnist_small), *DIVERGE_QAT, "-set", "[database]Validation=0", "-learn", "1000",
            "-log", "128", "-seed", "3"]
    proc = run_qatrun(args, tmp_path)
    line = assert_refused(proc)
    assert "nan" in line or "inf" in line, line
    if (tmp_path / "weights").exists():
        _all_finite(tmp_path / "weights")


# ---------------------------------------------------------------------------------------------- -w folders


@pytest.mark.parametrize(("ini", "stem", "token", "where"), [
    (LENET, "conv1_weights.syntxt", "nan", "first"),
    (LENET, "fc1_weights.syntxt", "inf", "last"),
    (LENET, "fc2_weights.syntxt", "-inf", "middle"),
    (QAT, "bn2_variances.syntxt", "inf", "middle"),
])
def test_w_with_a_non_finite_value(ini: str, stem: str, token: str, where: str, mnist_small: Path,
                                   tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    qatrun.load(ini, _sets(mnist_small), seed=1).save_weights(folder)
    path = folder / stem
    lines = path.read_text().splitlines(keepends=True)
    row = {"first": 0, "middle": len(lines) // 2, "last": len(lines) - 1}[where]
    values = lines[row].split()
    values[-1] = token
    lines[row] = " ".join(values) + ("\n" if lines[row].endswith("\n") else "")
    path.write_text("".join(lines))
    index = sum(len(line.split()) for line in lines[:row]) + len(values) - 1
    before = snapshot(folder)
    work = tmp_path / "run"
    work.mkdir()
    proc = run_qatrun([ini, *data_args(mnist_small), "-test", "-w", str(folder)], work)
    assert_refused(proc, f"{path}:{row + 1}", f"value {index}", token, before=before, folder=folder)


@pytest.mark.parametrize("content", ["empty", "foreign"])
def test_w_folder_without_a_file_of_the_network(content: str, mnist_small: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    if content == "foreign":
        (folder / "other_weights.syntxt").write_text("1 2 3 \n")
    proc = run_qatrun([LENET, *data_args(mnist_small), "-test", "-w", str(folder)], tmp_path)
    assert_refused(proc, str(folder), "no file of this network")
    assert "Weights imported" not in proc.stdout


def test_w_folder_missing_one_file_is_a_notice(trained: Path, mnist_small: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(trained / "weights_validation", folder)
    (folder / "fc2_weights.syntxt").unlink()
    proc = run_qatrun([LENET, *data_args(mnist_small), "-test", "-w", str(folder)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Notice: Could not open synaptic file" in proc.stderr
    assert "Final recognition rate" in proc.stdout


def test_read_values_names_line_and_index(tmp_path: Path) -> None:
    path = tmp_path / "x_weights.syntxt"
    path.write_text("1 2 \n3 nan \n")
    with pytest.raises(DataError, match=r"x_weights.syntxt:2: value 3 is nan"):
        read_values(path)


# ---------------------------------------------------------------------------------------------- writing


def _poisoned(ini: str, mnist_small: Path, where: str) -> qatrun.Network:
    network = qatrun.load(ini, _sets(mnist_small), seed=1)
    tensor = dict([*network.gm.named_parameters(), *network.gm.named_buffers()])[where]
    with torch.no_grad():
        tensor.view(-1)[1] = math.nan if "var" not in where else math.inf
    return network


def test_save_weights_refuses_inf_variance(mnist_small: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    qatrun.load(QAT, _sets(mnist_small), seed=1).save_weights(folder)
    before = snapshot(tmp_path)
    network = _poisoned(QAT, mnist_small, _name_like(QAT, mnist_small, "running_var"))
    with pytest.raises(DataError, match=r"cannot save the weights folder .*weights: bn\d variances holds inf "
                                         r"at index 1"):
        network.save_weights(folder)
    assert snapshot(tmp_path) == before


def _name_like(ini: str, mnist_small: Path, part: str) -> str:
    network = qatrun.load(ini, _sets(mnist_small), seed=1)
    return next(n for n, _ in [*network.gm.named_parameters(), *network.gm.named_buffers()] if part in n)


def test_fusion_refuses_nan_before_writing(mnist_small: Path, tmp_path: Path) -> None:
    name = _name_like(QAT, mnist_small, "weight")
    network = _poisoned(QAT, mnist_small, name)
    with pytest.raises(RunError, match=rf"cannot fuse: {name} holds nan at index 1"):
        network.fuse().save(tmp_path / "weights_quantized")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_nan_before_writing(mnist_small: Path, tmp_path: Path) -> None:
    name = _name_like(LENET, mnist_small, "weight")
    network = _poisoned(LENET, mnist_small, name)
    with pytest.raises(RunError, match=rf"cannot export onnx: {name} holds nan"):
        network.export("onnx", tmp_path / "LeNet.onnx", torch.zeros(2, 1, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_fold_batchnorm_refuses_inf(mnist_small: Path) -> None:
    ini = QAT
    name = _name_like(ini, mnist_small, "running_var")
    network = _poisoned(ini, mnist_small, name)
    with pytest.raises(RunError, match=rf"cannot fold BatchNorm: {name} holds inf"):
        network.fold_batchnorm()
