"""Activation histograms and the clipping threshold chosen from them (N2D2's ``-act-clipping-mode``).

A histogram has equal-width bins over ``[lo, hi]``; bin ``i`` stands for its centre
``c_i = lo + (i + 1/2) w``. It spans ``[0, v]`` (unsigned values) or ``[-v, v]`` (signed),
``v = max(|min|, |max|)`` of all the calibration values, at least 0.1, with ``min(2^n 64, 65536)`` bins for
MSE and KL-Divergence and 65,536 for Quantile. A value falls in bin ``floor((clamp(x, lo, hi) - lo) / w +
1e-6)``, capped to the last bin (an unsigned histogram counts the negatives in bin 0).

The threshold ``t`` is searched on a linear grid from the top down, ``t = T0 (1 - k/1000)`` for
``k = 0..999``, ``T0 = max(|lo|, |hi|)``; a candidate replaces the best only when strictly better (ties keep
the larger ``t``). With ``p_i = count_i / N`` and n bits:

    MSE            integer grid [0, 2^n - 1] (histogram with lo >= 0) or [-2^(n-1), 2^(n-1) - 1], s = qmax / t
                   E(t) = sum_i p_i (c_i - clamp(round(c_i s), qmin, qmax) / s)^2      (round half away)
    KL-Divergence  a histogram Q of 2^n bins over [0, t] (or [-t, t]): bin j(i) holds every reference bin
                   whose centre, clamped into that range, falls in it (the mass beyond t lands in the last
                   bin); q_i = Q[j(i)] / sum_k Q[j(k)];  KL(t) = sum_{p_i > 0} p_i ln(p_i / q_i)
    Quantile       the centre of the first bin where the cumulative count reaches floor(q N)
    None           max(|min|, |max|) of the values (no histogram)

These are N2D2's formulas (``Histogram::calibrateMSE``, ``calibrateKLDivergence``, ``getQuantileValue``,
reference/n2d2-ptq-export.md §1.6-1.7), evaluated on bin centres; the KL form is N2D2's, not TensorRT's
entropy calibration (no 128-bin start, no smoothing). Where qatrun differs: N2D2 makes the histogram from
the first batch's range and enlarges it batch by batch with bins of the same width, so its bins depend on
the batch order and grow past the nominal count (16,384 became 16,755-20,898 on its LeNet); qatrun reads the
calibration set twice, the range first, so the histogram has exactly the nominal bins over the final range
and does not depend on the order. The errors are computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from qatrun.errors import RunError
from qatrun.options import CLIPPING_MODES, WEIGHT_CLIPPING_MODES
MIN_HALF_RANGE = 0.1  # a histogram spans at least [0, 0.1] (or [-0.1, 0.1])
MAX_BINS = 65536
QUANTILE_BINS = 65536
CANDIDATES = 1000
BIN_EPSILON = 1e-6  # N2D2's guard in the bin index, so that values on a bin edge fall in the upper bin


def initial_bins(mode: str, bits: int) -> int:
    """The bin count a histogram starts with: ``min(2^n 64, 65536)``, 65,536 for Quantile."""
    return QUANTILE_BINS if mode == "Quantile" else min(2**bits * 64, MAX_BINS)


@dataclass
class Histogram:
    """Equal-width bins over ``[lo, hi]`` (see the module note).

    Attributes:
        lo: lower edge (0 for an unsigned histogram).
        hi: upper edge.
        counts: (bins,) int64 counts.
    """

    lo: float
    hi: float
    counts: np.ndarray

    @classmethod
    def create(cls, lowest: float, highest: float, bins: int, signed: bool) -> Histogram:
        """An empty histogram for values seen in ``[lowest, highest]`` so far."""
        v = max(abs(lowest), abs(highest), MIN_HALF_RANGE)
        return cls(-v if signed else 0.0, v, np.zeros(bins, dtype=np.int64))

    @property
    def bins(self) -> int:
        return int(self.counts.size)

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    @property
    def signed(self) -> bool:
        """N2D2's rule: a histogram is unsigned iff ``lo >= 0``."""
        return self.lo < 0

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def centres(self) -> np.ndarray:
        """(bins,) float64 bin centres."""
        return self.lo + (np.arange(self.bins, dtype=np.float64) + 0.5) * self.width

    def fill(self, values: Tensor) -> None:
        """Adds values (any shape; clamped into ``[lo, hi]``, so an unsigned histogram counts negatives in bin 0)."""
        x = values.detach().double().reshape(-1).clamp(self.lo, self.hi)
        index = torch.floor((x - self.lo) / self.width + BIN_EPSILON).clamp(max=self.bins - 1).to(torch.int64)
        self.counts += torch.bincount(index, minlength=self.bins).cpu().numpy()[: self.bins]


def _candidates(h: Histogram) -> np.ndarray:
    """``T0 (1 - k/1000)``, largest first, ``T0 = max(|lo|, |hi|)``."""
    top = max(abs(h.lo), abs(h.hi))
    return top - np.arange(CANDIDATES, dtype=np.float64) * (top / CANDIDATES)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _argmin_first(errors: np.ndarray) -> int:
    """Index of the smallest error, the first (largest threshold) among those equal to it: candidates that
    map the bins alike have the same error in exact arithmetic, and only summation noise (about 1e-16
    relative) tells them apart here, so errors within 1e-12 of the smallest count as equal."""
    best = float(errors.min())
    return int(np.nonzero(errors <= best + abs(best) * 1e-12)[0][0])


def int_grid(steps: int, signed: bool) -> tuple[int, int]:
    """The grid the MSE search quantizes on, for ``R = steps`` (``2^n - 1``): ``[0, R]`` or
    ``[-(R+1)/2, (R-1)/2]``, that is ``[0, 2^n - 1]`` or ``[-2^(n-1), 2^(n-1) - 1]``."""
    return (-((steps + 1) // 2), steps // 2) if signed else (0, steps)


def mse_errors(h: Histogram, steps: int, thresholds: np.ndarray) -> np.ndarray:
    """E(t) of the module note for each threshold (float64)."""
    p = h.counts.astype(np.float64) / max(h.total, 1)
    keep = p > 0  # empty bins add nothing
    c, p = h.centres()[keep], p[keep]
    qmin, qmax = int_grid(steps, h.signed)
    errors = np.empty(thresholds.size)
    for start in range(0, thresholds.size, 64):  # (64, bins) at a time
        t = thresholds[start:start + 64, None]
        s = qmax / t
        q = np.clip(_round_half_away(c[None, :] * s), qmin, qmax) / s
        errors[start:start + 64] = ((c[None, :] - q) ** 2 * p[None, :]).sum(axis=1)
    return errors


def kl_divergences(h: Histogram, steps: int, thresholds: np.ndarray) -> np.ndarray:
    """KL(t) of the module note for each threshold (float64)."""
    counts = h.counts.astype(np.float64)
    total = counts.sum()
    c = h.centres()
    p = counts / total
    nonzero = p > 0
    levels = steps + 1
    out = np.empty(thresholds.size)
    for k, t in enumerate(thresholds):
        lo_q = -t if h.signed else 0.0
        width = (t - lo_q) / levels
        clamped = np.clip(c, lo_q, t)
        j = np.minimum(np.floor((clamped - lo_q) / width + BIN_EPSILON), levels - 1).astype(np.int64)
        quantized = np.bincount(j, weights=counts, minlength=levels)
        spread = quantized[j]  # each reference bin gets the whole count of its quantized bin
        q = spread / spread.sum()
        out[k] = float((p[nonzero] * np.log(p[nonzero] / q[nonzero])).sum())
    return out


def mse_threshold(h: Histogram, steps: int) -> float:
    """The MSE threshold (0 for an empty histogram)."""
    if h.total == 0:
        return 0.0
    t = _candidates(h)
    return float(t[_argmin_first(mse_errors(h, steps, t))])


def kl_threshold(h: Histogram, steps: int) -> float:
    """The KL-Divergence threshold (0 for an empty histogram)."""
    if h.total == 0:
        return 0.0
    t = _candidates(h)
    return float(t[_argmin_first(kl_divergences(h, steps, t))])


def quantile_threshold(h: Histogram, quantile: float) -> float:
    """The centre of the first bin where the cumulative count reaches ``floor(q N)`` (0 if empty)."""
    if h.total == 0:
        return 0.0
    k = math.floor(quantile * h.total)
    cumulative = np.cumsum(h.counts)
    reached = np.nonzero(cumulative >= k)[0]
    index = int(reached[0]) if reached.size else h.bins - 1
    return float(h.centres()[index])


def threshold(h: Histogram | None, mode: str, steps: int, max_abs: float, quantile: float = 0.9999) -> float:
    """The clipping threshold of one tensor.

    Args:
        h: its histogram (None with mode ``None``).
        mode: one of :data:`CLIPPING_MODES`.
        steps: the quantizer's number of steps R (``2^n - 1`` for n bits).
        max_abs: ``max(|min|, |max|)`` of its values, the threshold of mode ``None``.
        quantile: the fraction kept by ``Quantile``.
    """
    if mode == "None":
        return max_abs
    if h is None:
        raise RunError(f"clipping mode {mode} needs the histogram, and this calibration holds none for the tensor")
    if mode == "MSE":
        return mse_threshold(h, steps)
    if mode == "KL-Divergence":
        return kl_threshold(h, steps)
    if mode == "Quantile":
        return quantile_threshold(h, quantile)
    raise RunError(f"unknown clipping mode {mode!r}; expected one of {', '.join(CLIPPING_MODES)}")
