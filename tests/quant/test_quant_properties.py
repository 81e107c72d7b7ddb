"""Properties of every quantizer: outputs lie on the grid and inside the range, and quantizing is idempotent."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatrun.quant.lsq import lsq_quantize, lsq_weight_bounds
from qatrun.quant.minmax import minmax_quantize
from qatrun.quant.sat import QUANT_MODES, sat_activation, sat_levels, sat_normalize

EPS = torch.finfo(torch.float64).eps
FAST = settings(max_examples=60, deadline=None)

values = st.lists(st.floats(-20, 20, allow_nan=False, width=64), min_size=1, max_size=40).map(
    lambda xs: torch.tensor(xs, dtype=torch.float64)
)
steps = st.sampled_from([1, 2, 3, 7, 15, 16, 255])


def _on_integers(x: torch.Tensor, tol: float = 1e-9) -> bool:
    return bool(((x - x.round()).abs() <= tol).all())


@FAST
@given(values, steps, st.sampled_from(QUANT_MODES))
def test_sat_weight_levels(w, steps, mode):
    if mode in ("Symmetric", "Asymmetric") and steps < 2:
        steps = 2
    t, _ = sat_normalize(w)
    wq, n, denom = sat_levels(t, steps, mode, True)
    assert torch.isfinite(wq).all()
    assert _on_integers(wq * denom) and torch.equal(n, (wq * denom).round())
    low, high = {"Symmetric": (-denom, denom), "Asymmetric": (-denom - 1, denom)}.get(mode, (-steps, steps))
    assert n.min() >= low and n.max() <= high
    if mode in ("Default", "FullRange"):
        assert torch.all((n + steps) % 2 == 0)  # levels 2k - R
    # Idempotent: levels, fed back as normalised weights (through the inverse of Asymmetric's affine
    # map), come out unchanged.
    back = wq if mode != "Asymmetric" else (wq + 1 / (2 * denom)) / (1 + 1 / (2 * denom))
    again, _, _ = sat_levels(back, steps, mode, True)
    assert torch.equal(again, wq)


@FAST
@given(values, steps, st.floats(0.01, 10) | st.floats(-10, -0.01))
def test_sat_activation(x, steps, alpha):
    a = torch.tensor(alpha, dtype=torch.float64)
    y = sat_activation(x, a, steps)
    assert y.min() >= 0 and y.max() <= abs(alpha)
    assert _on_integers(y / abs(alpha) * steps)
    assert torch.equal(sat_activation(y, a, steps), y)


@FAST
@given(values, steps.filter(lambda r: r >= 3), st.floats(0.001, 5), st.booleans())
def test_lsq(x, steps, step, signed):
    qn, qp = lsq_weight_bounds(steps) if signed else (0, steps)
    s = torch.tensor(step, dtype=torch.float64)
    y = lsq_quantize(x, s, qn, qp)
    levels = y / s
    assert _on_integers(levels) and levels.min() >= qn - 1e-9 and levels.max() <= qp + 1e-9
    assert torch.equal(lsq_quantize(y, s, qn, qp), y)


@FAST
@given(values, steps.filter(lambda r: r >= 2), st.booleans(), st.floats(-5, 0), st.floats(0, 5))
def test_minmax(x, steps, symmetric, lo, hi):
    low, high = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    y = minmax_quantize(x, low, high, steps, symmetric)
    if symmetric:
        r = steps // 2
        scale = max(max(abs(lo), abs(hi)) / r, EPS)
        assert _on_integers(y / scale) and (y / scale).abs().max() <= r + 1e-9
    else:
        scale = max((hi - lo) / steps, EPS)
        assert _on_integers(y / scale)
        # The grid [-z scale, (R - z) scale] starts within half a step of min(lo, 0) (the nudged zero point).
        assert y.min() >= min(lo, 0) - scale / 2 - 1e-12 and y.max() <= min(lo, 0) + (steps + 0.5) * scale + 1e-12
    assert torch.equal(minmax_quantize(y, low, high, steps, symmetric), y)
