"""Confusion metrics on a hand-computed matrix, N2D2's console lines, the golden LeNet numbers."""

from __future__ import annotations

from fractions import Fraction as F
from pathlib import Path

import pytest
import torch

from qatrun.train.metrics import METRICS, Metrics, confusion_update, per_class, percent, write_confusion

# rows: target class, columns: estimated class
MATRIX = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
# by hand, per class (TP, FN, FP, TN) = (5, 1, 2, 8), (3, 3, 1, 9), (4, 0, 1, 11)
BY_HAND = {
    "Sensitivity": (F(5, 6), F(3, 6), F(4, 4)),
    "Specificity": (F(8, 10), F(9, 10), F(11, 12)),
    "Precision": (F(5, 7), F(3, 4), F(4, 5)),
    "NegativePredictiveValue": (F(8, 9), F(9, 12), F(11, 11)),
    "MissRate": (F(1, 6), F(3, 6), F(0, 4)),
    "FallOut": (F(2, 10), F(1, 10), F(1, 12)),
    "FalseDiscoveryRate": (F(2, 7), F(1, 4), F(1, 5)),
    "FalseOmissionRate": (F(1, 9), F(3, 12), F(0, 11)),
    "IU": (F(5, 8), F(3, 7), F(4, 5)),
    "Accuracy": (F(13, 16), F(12, 16), F(15, 16)),
    "F1Score": (F(10, 13), F(6, 10), F(8, 9)),
    "Informedness": (F(5, 6) + F(8, 10) - 1, F(3, 6) + F(9, 10) - 1, F(4, 4) + F(11, 12) - 1),
    "Markedness": (F(5, 7) + F(8, 9) - 1, F(3, 4) + F(9, 12) - 1, F(4, 5) + F(11, 11) - 1),
}


def test_table_covers_every_metric() -> None:
    assert set(BY_HAND) == set(METRICS)


@pytest.mark.parametrize("name", METRICS)
def test_metric_matches_hand_computation(name: str) -> None:
    got = per_class(MATRIX)[name].tolist()
    assert got == pytest.approx([float(f) for f in BY_HAND[name]], rel=1e-15, abs=1e-15)
    assert Metrics(MATRIX).score(name) == pytest.approx(float(sum(BY_HAND[name]) / 3), rel=1e-15)


def test_console_lines_exact() -> None:
    # rate 12/16; Sensitivity 14/18; Specificity 157/180; Precision 317/420; Accuracy 40/48;
    # F1 2642/3510; Informedness 0.65
    assert Metrics(MATRIX).test_lines() == [
        "Final recognition rate: 75%    (error rate: 25%)",
        "    Sensitivity: 77.7778% / Specificity: 87.2222% / Precision: 75.4762%",
        "    Accuracy: 83.3333% / F1-score: 75.2707% / Informedness: 65%",
    ]


def test_golden_lenet_rate_and_accuracy_format() -> None:
    """N2D2 printed 99.32% / 0.68% and Accuracy 99.864% for 68 errors out of 10 000 on 10 classes."""
    m = torch.zeros(10, 10, dtype=torch.int64)
    m.diagonal().fill_(1000)
    gen = torch.Generator().manual_seed(0)
    for _ in range(68):  # move one sample of a class to a wrong estimate
        t, e = torch.randint(10, (2,), generator=gen).tolist()
        e = (t + 1 + e % 9) % 10
        m[t, t] -= 1
        m[t, e] += 1
    metrics = Metrics(m)
    assert metrics.test_lines()[0] == "Final recognition rate: 99.32%    (error rate: 0.68%)"
    assert percent(metrics.score("Accuracy")) == "99.864"


def test_confusion_update_accumulates_and_writes(tmp_path: Path) -> None:
    matrix = torch.zeros(3, 3, dtype=torch.int64)
    targets = torch.tensor([0] * 6 + [1] * 6 + [2] * 4)
    estimated = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    confusion_update(matrix, targets[:7], estimated[:7])
    confusion_update(matrix, targets[7:], estimated[7:])
    assert torch.equal(matrix, MATRIX)
    write_confusion(tmp_path / "c.dat", matrix)
    assert (tmp_path / "c.dat").read_text() == "5 1 0\n2 3 1\n0 0 4\n"


def test_empty_classes_count_as_zero() -> None:
    m = torch.tensor([[2, 0], [0, 0]])
    assert per_class(m)["Sensitivity"].tolist() == [1.0, 0.0]
    assert Metrics(m).recognition_rate == 1.0
