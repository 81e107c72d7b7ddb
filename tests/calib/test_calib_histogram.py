"""The clipping thresholds against plain references: loops written from the formulas, on known histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qatrun.calib.histogram import (
    Histogram,
    initial_bins,
    kl_threshold,
    mse_threshold,
    quantile_threshold,
    threshold,
)
from qatrun.errors import RunError


def _centres(h: Histogram) -> list[float]:
    w = (h.hi - h.lo) / h.bins
    return [h.lo + (i + 0.5) * w for i in range(h.bins)]


def _candidates(h: Histogram) -> list[float]:
    top = max(abs(h.lo), abs(h.hi))
    return [top - k * (top / 1000) for k in range(1000)]


def _round_away(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)


def reference_mse(h: Histogram, steps: int) -> float:
    qmin, qmax = (-((steps + 1) // 2), steps // 2) if h.lo < 0 else (0, steps)
    total = float(h.counts.sum())
    best, best_t = math.inf, 0.0
    for t in _candidates(h):
        s = qmax / t
        error = 0.0
        for c, n in zip(_centres(h), h.counts.tolist()):
            q = min(max(_round_away(c * s), qmin), qmax) / s
            error += n / total * (c - q) ** 2
        if error < best * (1 - 1e-12):  # strictly better, beyond float noise between summation orders
            best, best_t = error, t
    return best_t


def reference_kl(h: Histogram, steps: int) -> float:
    total = float(h.counts.sum())
    levels = steps + 1
    best, best_t = math.inf, 0.0
    for t in _candidates(h):
        lo_q = -t if h.lo < 0 else 0.0
        width = (t - lo_q) / levels
        bins = [min(int(math.floor((min(max(c, lo_q), t) - lo_q) / width + 1e-6)), levels - 1) for c in _centres(h)]
        quantized = [0.0] * levels
        for j, n in zip(bins, h.counts.tolist()):
            quantized[j] += n
        spread = [quantized[j] for j in bins]
        norm = sum(spread)
        kl = sum(n / total * math.log((n / total) / (q / norm)) for n, q in zip(h.counts.tolist(), spread) if n > 0)
        if kl < best * (1 - 1e-12) or best == math.inf:
            best, best_t = kl, t
    return best_t


def _laplace_histogram(bins: int, signed: bool, seed: int) -> Histogram:
    """A ReLU-like (or two-sided) heavy-tailed histogram with a few far outliers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(20000).exponential_(1.0, generator=g)  # |Laplace(0, 1)|
    if signed:
        x = x * (torch.randint(0, 2, (20000,), generator=g) * 2 - 1)
    x = torch.cat([x, torch.tensor([12.0, 15.0] if not signed else [-14.0, 15.0])])
    h = Histogram.create(float(x.min()), float(x.max()), bins, signed)
    h.fill(x)
    return h


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("steps", [15, 255])
def test_mse_threshold_is_the_plain_loop(signed: bool, steps: int) -> None:
    h = _laplace_histogram(64, signed, seed=1)
    assert mse_threshold(h, steps) == pytest.approx(reference_mse(h, steps), rel=0, abs=1e-12)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("steps", [3, 15])
def test_kl_threshold_is_the_plain_loop(signed: bool, steps: int) -> None:
    h = _laplace_histogram(48, signed, seed=2)
    assert kl_threshold(h, steps) == pytest.approx(reference_kl(h, steps), rel=0, abs=1e-12)


def test_clipping_cuts_the_outliers_and_more_bits_clip_less() -> None:
    h = _laplace_histogram(1024, False, seed=3)
    t4, t8 = mse_threshold(h, 15), mse_threshold(h, 255)
    assert t4 < t8 < 15.0  # outliers at 12 and 15 are clipped; 8 bits afford a wider range than 4
    assert kl_threshold(h, 15) < 15.0


def test_mse_of_a_single_spike_keeps_it_exactly_on_the_grid() -> None:
    # All mass at the centre 0.75 of bin 1 of [0, 1] (2 bins): with R = 3, t = 1 gives s = 3 and
    # 0.75 * 3 = 2.25 -> 2, error (0.75 - 2/3)^2; t = 0.75 (k = 250) puts it on the top level, error 0, and
    # no larger candidate reaches 0 because 0.75 * 3 / t must be the integer 3 (or 2: t = 1.125 > T0).
    h = Histogram(0.0, 1.0, np.array([0, 10], dtype=np.int64))
    assert mse_threshold(h, 3) == pytest.approx(0.75, abs=1e-12)


def test_quantile_is_the_first_bin_reaching_the_fraction() -> None:
    h = Histogram(0.0, 10.0, np.ones(100, dtype=np.int64))  # 100 stimuli, one per bin of width 0.1
    assert quantile_threshold(h, 0.5) == pytest.approx(4.95)  # floor(50): the 50th bin, index 49
    assert quantile_threshold(h, 0.999) == pytest.approx(9.85)  # floor(99.9) = 99: index 98
    assert quantile_threshold(h, 1.0) == pytest.approx(9.95)


def test_none_is_max_abs_and_empty_histograms_give_0() -> None:
    assert threshold(None, "None", 255, 7.5) == 7.5
    empty = Histogram.create(0.0, 1.0, 16, signed=False)
    assert mse_threshold(empty, 255) == 0.0 and kl_threshold(empty, 255) == 0.0
    with pytest.raises(RunError, match="needs the histogram"):
        threshold(None, "MSE", 255, 1.0)


def test_fill_bins_edges_clamps_and_counts_negatives_in_bin_0_when_unsigned() -> None:
    h = Histogram.create(0.0, 1.0, 4, signed=False)  # [0, 1], width 0.25
    h.fill(torch.tensor([-3.0, 0.0, 0.25, 0.4999, 0.5, 0.99, 1.0, 7.0]))
    assert h.counts.tolist() == [2, 2, 1, 3]  # 0.25 lands in bin 1 (edge goes up); 1.0 and 7.0 in the last
    signed = Histogram.create(-0.05, 0.02, 10, signed=True)
    assert (signed.lo, signed.hi) == (-0.1, 0.1)  # at least [-0.1, 0.1]


def test_bin_counts_follow_n2d2() -> None:
    assert initial_bins("MSE", 8) == 16384 and initial_bins("KL-Divergence", 4) == 1024
    assert initial_bins("Quantile", 4) == 65536 and initial_bins("MSE", 12) == 65536
