"""Plain reference implementations of the quantizer formulas, element by element, for exact tests.

Written from reference/n2d2.md §5 (SAT, LSQ) and the MinMax design note, with Python floats (float64)
and loops. Two things come from torch on purpose, so that comparisons can be exact (atol=0):

* the transcendental functions (``tanh``, ``cosh``), evaluated on the whole tensor as the code does:
  torch and libm may differ by one ulp there, which is not what these tests are about;
* the batch reductions of the learned-parameter gradients (``sum`` of per-element products), for the
  same reason (pairwise vs sequential summation). The per-element products are computed here.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def round_half_away(x: float) -> float:
    """C ``round``: nearest integer, ties away from zero."""
    whole = math.floor(abs(x))
    rounded = whole + 1 if abs(x) - whole >= 0.5 else whole
    return math.copysign(rounded, x)


def round_half_even(x: float) -> float:
    """``rint``: nearest integer, ties to even (Python's ``round``)."""
    return float(round(x))


def sequential_sum(values: list[float]) -> float:
    total = 0.0
    for value in values:
        total += value
    return total


# ----------------------------------------------------------------------------------------------------
# SAT weights (§5.1)


def sat_weight(
    w: torch.Tensor, steps: int, mode: str, quantize: bool, n_out: int | None, integer: bool
) -> tuple[np.ndarray, float, float, float]:
    """Returns ``(out, M, S, D)``: Wq/S (or the integer levels), the tanh max, the SAT scale, the denominator."""
    tanh = torch.tanh(w).reshape(-1).tolist()
    m = max(abs(v) for v in tanh)
    m = m if m > 0 else 1.0
    r = steps // 2
    levels, numerators = [], []
    for value in tanh:
        t = value / m
        if mode == "Asymmetric":
            a = (1 + 1 / (2 * r)) * t - 1 / (2 * r)
            n = round_half_even(r * a)
            levels.append(n * (1 / r) if quantize else a)
            numerators.append(n)
        elif mode == "Symmetric":
            n = round_half_even(r * t)
            levels.append(n * (1 / r) if quantize else t)
            numerators.append(n)
        else:
            u = (t + 1) / 2
            if mode == "FullRange":
                u = (1 + 0.9998 / steps) * u - 0.4999 / steps
            k = round_half_even(steps * u)
            levels.append(2 * (k * (1 / steps)) - 1 if quantize else t)
            numerators.append(2 * k - steps)
    denom = r if mode in ("Symmetric", "Asymmetric") else steps
    s = 1.0
    if n_out is not None and len(levels) > 1:
        mean = sequential_sum(levels) / len(levels)
        var = sequential_sum([(v - mean) * (v - mean) for v in levels]) / (len(levels) - 1)
        s = math.sqrt(n_out * var)
        s = s if s > 0 else 1.0
    out = numerators if integer else [v / s for v in levels]
    return np.array(out).reshape(tuple(w.shape)), m, s, denom


def sat_weight_grad(
    w: torch.Tensor, grad: torch.Tensor, steps: int, mode: str, quantize: bool, n_out: int | None, integer: bool
) -> np.ndarray:
    """dW = dWq (1/cosh W)^2 (1/(M S)) c, or with integer levels dW = dn (1/cosh W)^2 (D/M) c."""
    _, m, s, denom = sat_weight(w, steps, mode, quantize, n_out, integer)
    c = 1 + 0.9998 / steps if mode == "FullRange" else 1 + 1 / (2 * (steps // 2)) if mode == "Asymmetric" else 1.0
    factor = denom / m if integer else 1 / (m * s)
    cosh = torch.cosh(w).reshape(-1).tolist()
    out = []
    for g, ch in zip(grad.reshape(-1).tolist(), cosh):
        sech = 1 / ch
        out.append(g * (sech * sech) * factor * c)
    return np.array(out).reshape(tuple(w.shape))


# ----------------------------------------------------------------------------------------------------
# SAT activations (§5.2)


def sat_activation(
    x: torch.Tensor, alpha: float, steps: int, grad: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns ``(y, dx, dalpha)``."""
    a = abs(alpha)
    ys, dxs, products = [], [], []
    for v, g in zip(x.reshape(-1).tolist(), grad.reshape(-1).tolist()):
        q = min(max(v, 0.0), a) / a
        level = round_half_away(steps * q)
        ys.append(level / steps * a)
        dxs.append(g if 0 < v <= a else 0.0)
        products.append(g * (1.0 if v >= a else level / steps - q))
    dalpha = float(torch.tensor(products, dtype=torch.float64).reshape(x.shape).sum())
    return np.array(ys).reshape(tuple(x.shape)), np.array(dxs).reshape(tuple(x.shape)), dalpha


# ----------------------------------------------------------------------------------------------------
# LSQ (§5.3, §5.4)


def lsq_weight_bounds(steps: int) -> tuple[int, int]:
    return -((steps + 1) >> 1), (steps - 1) >> 1


def lsq(x: torch.Tensor, s: float, qn: int, qp: int, grad: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns ``(y, dx, ds)``."""
    ys, dxs, products = [], [], []
    for value, g in zip(x.reshape(-1).tolist(), grad.reshape(-1).tolist()):
        v = value / s
        ys.append(s * round_half_away(min(max(v, qn), qp)))
        dxs.append(g if qn < v < qp else 0.0)
        local = qn if v <= qn else qp if v >= qp else round_half_away(v) - v
        products.append(g * local)
    total = float(torch.tensor(products, dtype=torch.float64).reshape(x.shape).sum())
    ds = total * (1 / math.sqrt(x.numel() * qp))
    return np.array(ys).reshape(tuple(x.shape)), np.array(dxs).reshape(tuple(x.shape)), ds


# ----------------------------------------------------------------------------------------------------
# MinMax (qatrun/quant/minmax.py design note)

EPS = float(np.finfo(np.float64).eps)  # smallest scale


def minmax_params(lo: float, hi: float, steps: int, symmetric: bool) -> tuple[float, float, int, int]:
    if symmetric:
        r = steps // 2
        scale = max(max(abs(lo), abs(hi)) / r, EPS)
        return scale, 0.0, -r, r
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / steps, EPS)
    zero_point = min(max(round_half_even(-lo / scale), 0), steps)
    return scale, zero_point, 0, steps


def minmax(
    x: torch.Tensor, steps: int, symmetric: bool, grad: torch.Tensor, axis: int | None = None,
    lo: float | None = None, hi: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(y, dx)``; the range is per ``axis`` index (or the whole tensor, or ``lo``/``hi``)."""
    values = x.detach().numpy()
    g = grad.numpy()
    y = np.empty_like(values)
    dx = np.empty_like(values)
    index_sets = [(slice(None),) * values.ndim] if axis is None else [
        (slice(None),) * axis + (c,) for c in range(values.shape[axis])
    ]
    for where in index_sets:
        block = values[where]
        low = float(block.min()) if lo is None else lo
        high = float(block.max()) if hi is None else hi
        scale, zp, qmin, qmax = minmax_params(low, high, steps, symmetric)
        out_block = np.empty_like(block)
        grad_block = np.empty_like(block)
        for i, v in np.ndenumerate(block):
            level = min(max(round_half_even(v / scale) + zp, qmin), qmax)
            out_block[i] = (level - zp) * scale
            inside = (qmin - zp) * scale <= v <= (qmax - zp) * scale
            grad_block[i] = g[where][i] if inside else 0.0
        y[where] = out_block
        dx[where] = grad_block
    return y, dx
