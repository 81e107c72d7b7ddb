"""Requantization: from an integer accumulator to the integer levels of the next activation.

After fusion every layer ends with a per-channel rescale of its accumulator ``acc`` (N2D2's activation
``Scaling`` objects, reference/n2d2.md §6.2)::

    v = clip(acc) * s + o          clip (optional): N2D2's min(max(acc, 0), c) in accumulator units
    y = saturate(round(v), lo, hi)

``s`` is the per-channel float scale, ``o`` an offset in output levels (qatrun's exact flavour keeps there
the part of the bias below one accumulator unit, and an output zero point). Each rescaling mode is a
different way of computing ``round(v)``:

================ ============================================ ========================================
mode             computes                                     max error of v before rounding (rho)
================ ============================================ ========================================
Floating-point   ``round(acc * s + o)`` in float (64 or 32)   float rounding only: 0 levels
Fixed-point16    ``(a M + O) >> n``, M in [2^14, 2^15)        relative 2^-15 of s
Fixed-point32    ``(a M + O) >> n``, M in [2^30, 2^31)        relative 2^-31 of s
Single-shift     ``(a + O) >> n``, s ~ 2^-n                   relative 1/3 of s
Double-shift     ``(a (2^(n-m) + 1) + O) >> n``,              relative 1/7 of s
                 s ~ 2^-m + 2^-n
Floating-point32 ``rne(f32(acc + B) * f32(s)) + z``           s/2 (the integer bias B), and relative
                                                              2^-22 of v (float32 roundings)
================ ============================================ ========================================

with ``a = round(clip(acc))`` the accumulator as an integer, ``O = round(o 2^n) + 2^(n-1)`` (the offset and
the rounding half-up), all in int64. Every integer mode is ``s ~ M / 2^n`` with a constraint on ``M``, so
one code path runs them all; the shift modes are the multiplier-free cases (``M = 1``, ``M = 2^k + 1``).
M and n are chosen per channel to minimise ``|s - M/2^n|``: for the fixed-point modes the shift that puts
M in its top binade (relative error at most 2^-(N-1)), for the shift modes the nearest value of the form
(a power of two lies within 1/3 of any s, a sum of two within 1/7).

``Floating-point32`` is onnxruntime's ``QLinearConv`` requantization, so that the integer-only ONNX file can
run every layer as one ``QLinearConv`` (uint8 x int8, int32 accumulator; :mod:`qatrun.export.onnx_int`)::

    y = sat(rne(f32(acc + B) * m) + z, lo, hi),   m = f32(s),   B = rne((o - z) / s),   z = rne(o) in [lo, hi]

``f32(.)`` rounds to the nearest float32 (ties to even), as onnxruntime's int32 -> float32 conversion does;
the product is one float32 multiplication (x_scale = y_scale = 1 makes onnxruntime's
``x_scale * w_scale / y_scale`` equal ``m`` exactly); ``rne`` rounds half to even whatever the activation
quantizer's rule; ``z`` is the output zero point (one value per tensor in the file). ``B``, the offset as a
whole number of accumulator units, is the integer bias: the exact flavour adds it to the layer's bias
(:func:`qatrun.fuse.integerize.exact_layer`), a Sum keeps it here (``Requant.bias``). Measured against
onnxruntime 1.31.1 (optimizations off and all on, with ties, negative accumulators and ``|acc| >= 2^24``):
identical. Its error against the exact ``round(acc s + o)``: the sub-unit part of the offset dropped from
``B``, at most ``s/2``, and three float32 roundings (the accumulator, ``m``, the product), relative
``(1 + 2^-24)^3 - 1 < 2^-22`` of ``|v|``; rounding ties to even where the quantizer rounds them away adds
nothing more than the ``+ 1`` below. So 1 LSB wherever ``s <= 1``.

Error bound in output levels (LSB). With the output saturated to [lo, hi], only accumulators with
``|v| <= max(|lo|, |hi|) + 1`` can differ, so the error of v is at most ``rho (max(|lo|,|hi|) + 1 + |o|)``
plus the offset's rounding ``2^-(n+1)``; a pre-rounding error e changes the rounded level by at most
``floor(e) + 1``. :func:`error_bound_lsb` computes this per channel from the actual M, n;
:func:`mode_bound_lsb` gives the worst case over all scales ``s <= 1`` (so ``|o| <= 1/2``), the documented
bound: 0 for Floating-point, 1 for Floating-point32, Fixed-point16 and Fixed-point32, 87 for Single-shift
and 38 for Double-shift at 8-bit outputs. (Fixed-point32 errs in practice only when v falls within 2^-23 of a rounding tie.)

Where qatrun differs from N2D2: N2D2 gives both fixed-point modes 16 fractional bits (``M = round(s 2^16)``,
so an 8-bit layer with s ~ 0.002 gets a 7-bit multiplier and errs by one or two levels); its Single-shift
applies no clip, and it installs no rescaling at all for Double-shift after Conv+BatchNorm. qatrun's
``n2d2`` flavour reproduces the first (``FixedPoint(n2d2=True)`` in :func:`approximate`); qatrun picks the
shift per channel so that both fixed-point modes use all their bits, and implements the shift modes as
above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from qatrun.options import RESCALING_MODES
from qatrun.quant.rounding import round_half_away

FLOAT_MODES = ("Floating-point", "Floating-point32")  # no integer multiplier
ROUNDINGS = ("half_away", "half_even")

# Worst relative error |s - M/2^n| / s of each integer mode (see the module note).
RELATIVE_ERROR = {
    "Floating-point": 0.0,
    "Fixed-point16": 2.0**-15,
    "Fixed-point32": 2.0**-31,
    "Single-shift": 1 / 3,
    "Double-shift": 1 / 7,
    "Floating-point32": 2.0**-22,  # three float32 roundings, (1 + 2^-24)^3 - 1 < 2^-22 (of |v|, not of s)
}
FIXED_BITS = {"Fixed-point16": 16, "Fixed-point32": 32}
N2D2_FIXED_SHIFT = 16  # N2D2's fixed-point modes: always 16 fractional bits
MAX_PRODUCT = 2**62  # |a M + O| must stay inside int64


def round_levels(x: Tensor, rounding: str) -> Tensor:
    """Rounds to integers with the activation quantizer's rule (``half_away`` or ``half_even``)."""
    assert rounding in ROUNDINGS, rounding
    return round_half_away(x) if rounding == "half_away" else torch.round(x)


@dataclass(frozen=True)
class Requant:
    """Per-channel requantization parameters: ``y = sat(round(clip(acc) * scale + offset))``.

    Attributes:
        mode: one of :data:`RESCALING_MODES`, or ``"None"`` for an output that is not quantized (the
            last layer's logits): ``y = acc * scale + offset``, no rounding, no saturation.
        scale: (C,) float64 exact scales s (the float32 values, held in float64, for N2D2's flavour).
        offset: (C,) float64 offsets o, in output levels.
        lo: lowest output level (saturation).
        hi: highest output level.
        clip: (C,) N2D2's accumulator clip ``min(max(acc, 0), clip)`` before scaling, or None.
        rounding: ``half_away`` or ``half_even``, for Floating-point (integer modes round half up,
            which agrees with both on the outputs kept after saturation at ``lo >= 0``; Floating-point32
            rounds half to even).
        float32: compute Floating-point in float32 as N2D2 does (acc, clip and scale rounded to float32).
        multiplier: (C,) int64 M of the integer modes (``scale ~ M / 2^shift``), else None.
        shift: (C,) int64 n of the integer modes, else None.
        bias: Floating-point32: (C,) int64 B added to the accumulator before its float32 conversion
            (``offset`` is then the integer zero point z), or None for no bias.
    """

    mode: str
    scale: Tensor
    offset: Tensor
    lo: int
    hi: int
    clip: Tensor | None = None
    rounding: str = "half_away"
    float32: bool = False
    multiplier: Tensor | None = None
    shift: Tensor | None = None
    bias: Tensor | None = None

    def __post_init__(self) -> None:
        assert self.mode in RESCALING_MODES + ("None",), self.mode
        assert self.rounding in ROUNDINGS, self.rounding
        assert self.scale.shape == self.offset.shape and self.scale.dim() == 1, (self.scale.shape, self.offset.shape)
        assert (self.multiplier is None) == (self.shift is None)
        assert (self.multiplier is None) == (self.mode in FLOAT_MODES + ("None",)), self.mode
        assert self.bias is None or self.mode == "Floating-point32", self.mode

    @property
    def integer(self) -> bool:
        """True for the modes that multiply integers (fixed-point and shifts)."""
        return self.multiplier is not None

    @property
    def quantized(self) -> bool:
        """False for the unquantized ``"None"`` mode (float output)."""
        return self.mode != "None"

    def integer_offset(self) -> Tensor:
        """``O = round(o 2^n) + 2^(n-1)`` (int64): the offset and the half-up rounding, for integer modes."""
        assert self.shift is not None
        scaled = torch.round(self.offset * torch.pow(2.0, self.shift.double())).to(torch.int64)
        half = torch.where(self.shift > 0, torch.bitwise_left_shift(torch.ones_like(self.shift), self.shift - 1), 0)
        return scaled + half


def _per_channel(p: Tensor, like: Tensor) -> Tensor:
    """(C,) -> (C, 1, ..., 1) against an (N, C, ...) tensor."""
    return p.reshape(-1, *([1] * (like.dim() - 2)))


def requantize(acc: Tensor, p: Requant) -> Tensor:
    """Applies the rescale to an accumulator (N, C, ...).

    Returns:
        int64 levels in [lo, hi]; float64 values for the unquantized mode ``"None"``.
    """
    if p.clip is not None:
        # N2D2's Clip(v, c) = min(max(v, 0), c) for c > 0 (its sign trick keeps every clip positive).
        acc = torch.minimum(acc.clamp(min=0), _per_channel(p.clip.to(acc.dtype), acc))
    if not p.quantized:
        return acc.double() * _per_channel(p.scale, acc) + _per_channel(p.offset, acc)
    if p.mode == "Floating-point32":
        a = acc.double() if p.bias is None else acc.double() + _per_channel(p.bias.double(), acc)  # exact integers
        v = a.to(torch.float32) * _per_channel(p.scale.to(torch.float32), acc)  # one float32 product
        reach = max(abs(p.lo), abs(p.hi)) + int(p.offset.abs().max()) + 1 if p.offset.numel() else 1
        v = v.clamp(-reach, reach)  # saturates alike, and keeps huge products inside int64 below
        y = torch.round(v).to(torch.int64) + _per_channel(p.offset.to(torch.int64), acc)
    elif p.integer:
        assert p.multiplier is not None and p.shift is not None
        a = round_half_away(acc.double()).to(torch.int64)
        m, n, o = (_per_channel(t, acc) for t in (p.multiplier, p.shift, p.integer_offset()))
        y = torch.bitwise_right_shift(a * m + o, n)  # arithmetic shift: floor division by 2^n
    else:
        dtype = torch.float32 if p.float32 else torch.float64
        v = acc.to(dtype) * _per_channel(p.scale.to(dtype), acc) + _per_channel(p.offset.to(dtype), acc)
        y = round_levels(v, p.rounding).to(torch.int64)
    return y.clamp(p.lo, p.hi)


# --------------------------------------------------------------------------------------------------
# Choosing M and n


def _fixed_point(scale: float, bits: int) -> tuple[int, int]:
    """M in [2^(bits-2), 2^(bits-1)) and n >= 0 with M / 2^n nearest to ``scale`` (> 0)."""
    n = (bits - 2) - math.floor(math.log2(scale))
    if n < 0:  # a scale of 2^(bits-2) or more: an integer multiplier, no shift
        return round(scale), 0
    m = round(scale * 2.0**n)
    if m >= 2 ** (bits - 1):  # rounded up into the next binade
        m, n = m >> 1, n - 1
    return m, n


def _single_shift(scale: float) -> tuple[int, int]:
    """``2^-n`` (or an integer power of two) nearest to ``scale`` (> 0), as ``(M, n)``."""
    e = math.floor(math.log2(scale))  # scale in [2^e, 2^(e+1))
    best = min((e, e + 1), key=lambda k: abs(scale - 2.0**k))
    return (1, -best) if best <= 0 else (2**best, 0)


def _double_shift(scale: float) -> tuple[int, int]:
    """``2^-m + 2^-n`` (n > m) or a single power of two nearest to ``scale`` (> 0), as ``(M, n)``."""
    candidates = [_single_shift(scale)]
    e = math.floor(math.log2(scale))
    for high in (e - 1, e, e + 1):
        for gap in range(1, 25):  # M = 2^gap + 1 < 2^25 keeps a M inside int64 for 32-bit accumulators
            low = high - gap
            n = max(0, -low)
            m = 2 ** (high + n) + 2 ** (low + n)
            if high + n >= 0 and low + n >= 0:
                candidates.append((m, n))
    return min(candidates, key=lambda mn: abs(scale - mn[0] / 2.0 ** mn[1]))


def approximate(scale: Tensor, mode: str, n2d2: bool = False) -> tuple[Tensor, Tensor] | None:
    """The integer multiplier and shift ``(M, n)`` approximating each positive scale, per mode.

    Args:
        scale: (C,) non-negative scales (a zero scale gives ``M = 0``).
        mode: one of :data:`RESCALING_MODES`.
        n2d2: N2D2's fixed point: ``M = round(s 2^16)``, ``n = 16`` for both fixed-point modes.

    Returns:
        ``(M, n)`` as (C,) int64 tensors, or None for Floating-point and Floating-point32.
    """
    assert mode in RESCALING_MODES, mode
    if mode in FLOAT_MODES:
        return None
    pairs = []
    for s in scale.double().tolist():
        assert s >= 0, f"integer rescaling needs non-negative scales, found {s}"
        if s == 0:
            pairs.append((0, 0))
        elif n2d2 and mode in FIXED_BITS:
            pairs.append((round(s * 2.0**N2D2_FIXED_SHIFT), N2D2_FIXED_SHIFT))
        elif mode in FIXED_BITS:
            pairs.append(_fixed_point(s, FIXED_BITS[mode]))
        elif mode == "Single-shift":
            pairs.append(_single_shift(s))
        else:
            pairs.append(_double_shift(s))
    m, n = zip(*pairs) if pairs else ((), ())
    return torch.tensor(m, dtype=torch.int64), torch.tensor(n, dtype=torch.int64)


def with_mode(p: Requant, mode: str, n2d2: bool = False) -> Requant:
    """``p`` computed with another rescaling mode (its float scale approximated by ``(M, n)``, or, for
    Floating-point32, rounded to float32 with the offset split into a zero point and an integer bias)."""
    if not p.quantized:
        return p
    if mode == "Floating-point32":
        assert p.clip is None and p.mode == "Floating-point", (p.mode, "Floating-point32 starts from exact scales")
        zero = torch.round(p.offset).clamp(p.lo, p.hi)
        safe = torch.where(p.scale > 0, p.scale, 1.0)
        bias = torch.where(p.scale > 0, torch.round((p.offset - zero) / safe), 0.0).to(torch.int64)
        return replace(p, mode=mode, scale=p.scale.to(torch.float32).double(), offset=zero, rounding="half_even",
                       float32=False, bias=bias if bool(bias.any()) else None)
    mn = approximate(p.scale, mode, n2d2)
    multiplier, shift = (None, None) if mn is None else mn
    return replace(p, mode=mode, multiplier=multiplier, shift=shift)


# --------------------------------------------------------------------------------------------------
# Error bounds


def pre_rounding_error(p: Requant) -> float:
    """Largest ``|v_mode - v_exact|`` before rounding, over every integer accumulator that can matter
    (``|acc s| <= max(|lo|, |hi|) + 1 + |o|``; beyond, both saturate), from the actual M and n (for
    Floating-point32: the dropped sub-unit offset ``s/2`` and the float32 roundings, module note)."""
    if p.mode == "Floating-point32":
        reach = max(abs(p.lo), abs(p.hi)) + 1 + p.offset.abs() + p.scale / 2
        error = p.scale / 2 + RELATIVE_ERROR[p.mode] * reach
        return float(error.max()) if error.numel() else 0.0
    if not p.integer:
        return 0.0
    assert p.multiplier is not None and p.shift is not None
    two_n = torch.pow(2.0, p.shift.double())
    scale_error = (p.scale - p.multiplier.double() / two_n).abs()
    offset_error = (p.offset - torch.round(p.offset * two_n) / two_n).abs()
    reach = max(abs(p.lo), abs(p.hi)) + 1 + p.offset.abs()
    acc_max = torch.where(p.scale > 0, reach / p.scale.clamp(min=1e-300), 0.0)  # a zero scale is exact (M = 0)
    error = acc_max * scale_error + offset_error
    return float(error.max()) if error.numel() else 0.0


def error_bound_lsb(p: Requant, extra: float = 0.0) -> int:
    """Largest difference, in output levels, between ``requantize(acc, p)`` and the exact
    ``sat(round(acc * s + o))`` over every integer accumulator: ``floor(e) + 1`` for a pre-rounding
    error e > 0 (:func:`pre_rounding_error`, plus ``extra`` from upstream approximations), else 0.

    0 for Floating-point (float64 rounding is far below a level) and for unquantized outputs; at least 1
    for Floating-point32 (its ties go to even).
    """
    error = pre_rounding_error(p) + extra
    return 0 if error == 0 else math.floor(error) + 1


def mode_bound_lsb(mode: str, hi: int) -> int:
    """The documented worst case of a mode for outputs in [0, hi] and scales ``s <= 1``, 0 for Floating-point.

    ``floor(rho (hi + 3/2) + d) + 1``: ``|o| <= s/2 <= 1/2``, and d the offset's rounding, ``2^-15`` for the
    fixed-point modes (``n >= 14`` when ``s <= 1``), 1/2 for the shift modes (``n`` may be 0) and for
    Floating-point32 (its integer bias). Every
    layer of a network whose consecutive activation grids are alike has ``s <= 1``; otherwise
    :func:`error_bound_lsb` gives the bound.
    """
    rho = RELATIVE_ERROR[mode]
    if rho == 0:
        return 0
    offset_rounding = 2.0**-15 if mode in FIXED_BITS else 0.5
    if mode == "Floating-point32":
        return math.floor(rho * (hi + 2) + offset_rounding) + 1
    return math.floor(rho * (hi + 1.5) + offset_rounding) + 1


def product_fits(p: Requant, acc_bound: float) -> bool:
    """Whether ``|a M + O|`` stays below 2^62 for accumulators up to ``acc_bound`` in magnitude."""
    if not p.integer:
        return True
    assert p.multiplier is not None
    if p.multiplier.numel() == 0:
        return True
    largest = acc_bound * float(p.multiplier.abs().max()) + float(p.integer_offset().abs().max())
    return largest < MAX_PRODUCT
