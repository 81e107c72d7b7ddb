"""Recognition rate and N2D2's confusion-matrix metrics (``include/utils/ConfusionMatrix.hpp``).

Design note
-----------
For each class k, over a confusion matrix M (rows: target class, columns: estimated class; N samples)::

    TP = M[k,k]   FN = sum_j M[k,j] - TP   FP = sum_i M[i,k] - TP   TN = N - TP - FN - FP

    Sensitivity = TP/(TP+FN)   Specificity = TN/(TN+FP)   Precision = TP/(TP+FP)
    NegativePredictiveValue = TN/(TN+FN)   MissRate = FN/(FN+TP)   FallOut = FP/(FP+TN)
    FalseDiscoveryRate = FP/(FP+TP)   FalseOmissionRate = FN/(FN+TN)   IU = TP/(TP+FP+FN)
    Accuracy = (TP+TN)/N   F1Score = 2TP/(2TP+FP+FN)
    Informedness = Sensitivity + Specificity - 1   Markedness = Precision + NegativePredictiveValue - 1

each macro-averaged over the classes (a ratio with a zero denominator counts as 0). This reproduces N2D2's
printed test metrics of golden/n2d2-lenet-8b: e.g. Accuracy 99.864 % = 1 - 2 * 68 errors / (10 classes * 10 000),
and F1-score 99.3186 % is the mean of the per-class F1 scores, not the F1 of the mean precision and sensitivity.
The recognition rate is the top-1 accuracy trace(M)/N. Percentages are printed as N2D2's ``ostream`` does,
with 6 significant digits (``99.32%``, ``99.3155%``).

The matrix is accumulated on the device (``torch.bincount``), so testing costs no per-batch synchronisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from qatrun.options import METRICS



def confusion_update(matrix: torch.Tensor, targets: torch.Tensor, estimated: torch.Tensor) -> None:
    """Adds a batch to a C x C int64 matrix in place (rows: target, columns: estimated); no host sync."""
    classes = matrix.shape[0]
    matrix += torch.bincount(targets * classes + estimated, minlength=classes * classes).view(classes, classes)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def per_class(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of :data:`METRICS` for each class (float64 tensors of length C)."""
    m = matrix.to(torch.float64)
    total = m.sum()
    tp = m.diagonal()
    fn = m.sum(dim=1) - tp
    fp = m.sum(dim=0) - tp
    tn = total - tp - fn - fp
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    npv = _ratio(tn, tn + fn)
    return {
        "Sensitivity": sensitivity,
        "Specificity": specificity,
        "Precision": precision,
        "NegativePredictiveValue": npv,
        "MissRate": _ratio(fn, fn + tp),
        "FallOut": _ratio(fp, fp + tn),
        "FalseDiscoveryRate": _ratio(fp, fp + tp),
        "FalseOmissionRate": _ratio(fn, fn + tn),
        "IU": _ratio(tp, tp + fp + fn),
        "Accuracy": _ratio(tp + tn, total.expand_as(tp)),
        "F1Score": _ratio(2 * tp, 2 * tp + fp + fn),
        "Informedness": sensitivity + specificity - 1,
        "Markedness": precision + npv - 1,
    }


def percent(value: float) -> str:
    """A fraction as N2D2 prints a percentage: 6 significant digits (``0.9932`` -> ``99.32``)."""
    return format(100.0 * value, ".6g")


@dataclass(frozen=True)
class Metrics:
    """The outcome of a test or validation pass.

    Attributes:
        matrix: C x C int64 confusion matrix on the CPU (rows: target class, columns: estimated class).
    """

    matrix: torch.Tensor

    @property
    def count(self) -> int:
        """Number of samples."""
        return int(self.matrix.sum())

    @property
    def recognition_rate(self) -> float:
        """Top-1 accuracy, a fraction."""
        return float(self.matrix.diagonal().sum()) / max(self.count, 1)

    def score(self, metric: str) -> float:
        """A macro-averaged metric of :data:`METRICS`, as a fraction."""
        return float(per_class(self.matrix)[metric].mean())

    def metric_lines(self) -> list[str]:
        """N2D2's two indented lines of confusion metrics."""
        s = {name: percent(self.score(name)) for name in METRICS}
        return [
            f"    Sensitivity: {s['Sensitivity']}% / Specificity: {s['Specificity']}% / Precision: "
            f"{s['Precision']}%",
            f"    Accuracy: {s['Accuracy']}% / F1-score: {s['F1Score']}% / Informedness: {s['Informedness']}%",
        ]

    def test_lines(self) -> list[str]:
        """N2D2's end-of-test report: the recognition rate line and the two metric lines."""
        rate = self.recognition_rate
        head = f"Final recognition rate: {percent(rate)}%    (error rate: {percent(1.0 - rate)}%)"
        return [head, *self.metric_lines()]


def write_confusion(path: str | os.PathLike[str], matrix: torch.Tensor) -> None:
    """``ConfusionMatrix_<set>.dat``: one line per target class, the counts per estimated class."""
    rows = matrix.to(torch.int64).tolist()
    Path(path).write_text("".join(" ".join(str(v) for v in row) + "\n" for row in rows))
