"""``-calib`` from the command line on the MNIST that ships with qatrun (a subset, to stay fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qatrun
from tests.faults.conftest import LENET, QAT, assert_refused, data_args, mnist_small, run_qatrun, snapshot  # noqa: F401


@pytest.fixture(scope="module")
def float_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet's initial float weights (the calibration's quality is not what these tests check)."""
    folder = tmp_path_factory.mktemp("lenet-weights") / "weights"
    qatrun.load(LENET, seed=1).save_weights(folder)
    return folder


def _thresholds(folder: Path) -> list[float]:
    return [p["threshold"] for p in json.loads((folder / "calibration" / "calibration.json").read_text())["points"]]


def test_calib_quantizes_tests_fuses_and_reloads(tmp_path: Path, mnist_small: Path, float_weights: Path) -> None:
    args = [LENET, *data_args(mnist_small), "-seed", "1", "-w", str(float_weights)]
    proc = run_qatrun([*args, "-calib", "100", "-nbbits", "4", "-test", "-qat-fuse",
                       "-act-rescaling-mode", "Single-shift"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Quantized from 100 stimuli of Validation (4 bits, MSE, per layer):" in out
    assert "Integer network verified" in out and ": OK." in out
    assert "Final recognition rate:" in out
    folder = tmp_path / "calibration"
    assert {"calibration.json", "histograms.npz", "thresholds.dat", "conv1.png", "fc2.png"} <= {
        p.name for p in folder.iterdir()}
    assert (tmp_path / "weights_quantized").is_dir()
    record = (tmp_path / "LeNet.ini.resolved").read_text()
    assert "; calibration: ptq on 100 stimuli of Validation, 4 bits, MSE" in record

    first = _thresholds(tmp_path)
    proc = run_qatrun([*args, "-calib-reload", "-nbbits", "4", "-test"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Reusing the calibration of 'calibration'" in proc.stdout
    assert _thresholds(tmp_path) == first


def test_calib_refusals(tmp_path: Path, mnist_small: Path, float_weights: Path) -> None:
    data = data_args(mnist_small)
    before = snapshot(tmp_path)
    cases = [
        ([LENET, *data, "-calib", "10"], "-calib needs trained weights: give -w FOLDER"),
        ([LENET, *data, "-calib", "10", "-w", str(float_weights), "-learn-epoch", "1"], "learn them first"),
        ([QAT, *data, "-calib", "10", "-w", str(float_weights)], "-learn or -learn-epoch"),
        ([LENET, *data, "-calib-reload", "-w", str(float_weights)], "no calibration in calibration/"),
        ([LENET, *data, "-calib", "10", "-nbbits", "9"], "-nbbits"),
        ([LENET, *data, "-calib", "10", "-act-clipping-mode", "KL"], "-act-clipping-mode"),
        ([LENET, *data, "-calib", "10", "-act-quantile-value", "1.5"], "-act-quantile-value"),
    ]
    for args, message in cases:
        assert_refused(run_qatrun(args, tmp_path), message, before=before, folder=tmp_path)


def test_calib_before_qat_learning_sets_the_alphas(tmp_path: Path, mnist_small: Path) -> None:
    proc = run_qatrun([QAT, *data_args(mnist_small), "-seed", "1", "-calib", "64", "-learn", "128",
                       "-set", "$EPOCHS=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # LeNet-QAT has no Validation partition: a QAT start reads learning data, never the test data
    assert "Activation quantizers started from 64 stimuli of Learn" in proc.stdout
    assert "Notice: no Validation partition: the quantizers start from the first Learn stimuli" in proc.stdout
    assert "alpha 6 -> alpha" in proc.stdout  # the INI's QAct.Alpha
    assert "; calibration: qat on 64 stimuli of Learn" in (tmp_path / "LeNet-QAT.ini.resolved").read_text()
