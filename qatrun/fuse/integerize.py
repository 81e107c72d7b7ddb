"""Integer-only conversion of a quantized layer: Conv/Fc (+ BatchNorm) (+ activation quantizer).

The formula. A layer reads integers ``q`` that stand for real values ``x = (q - z_in) u_in`` (the previous
activation quantizer's levels; the network input ``x = p / 255`` gives ``p`` in [0, 255], ``u_in = 1/255``).
Its quantized weights are integer levels ``J`` times a unit ``u_w`` (SAT Default: ``Wq = (2k - R)/(R S)``,
``J = 2k - R``, ``u_w = 1/(R S)``; Symmetric: ``J = k``, ``u_w = 1/(r S)``; LSQ: ``u_w`` = its step).
So the convolution is exactly an integer accumulation::

    y   = sum Wq x + b = u_acc (acc + b/u_acc),   acc = sum J (q - z_in),   u_acc = u_in u_w
    BN  z = f (y - mu) + beta = F (acc + b'),     f = gamma / sqrt(var + eps),  F = f u_acc,
                                                  b' = (b + beta/f - mu) / u_acc     (accumulator units)
    act k = sat(round(z / u_out) + z_out) = sat(round(s acc + s b') + z_out),   s = F / u_out

(SAT: ``u_out = alpha/R``, levels [0, R]; ``round(R clip(z, 0, a)/a) = sat(round(R z/a), 0, R)`` because
rounding is monotone.) A channel with ``F < 0`` is negated, weights and bias (the *sign trick*), so every
scale is positive, as shift rescaling needs; a channel with ``f = 0`` outputs its constant level. Max-pool
commutes with this monotone map and passes integers; a residual Sum rescales every branch to the first
branch's unit (:func:`add_layer`); an Fc without activation quantizer (the logits) ends the integer path
with ``s acc + o`` in float64, unrounded, as nothing quantizes it in the trained network either.

Two flavours (``FuseOptions.flavour``):

* ``exact`` (qatrun's default) uses the integer levels themselves (``J = 2k - R``, one bit more than
  ``floor(R/2) Wq`` would take, or the unsigned code ``k`` with a zero-point correction
  ``sum (2k - R) q = 2 sum k q - R sum q``: ``weight_codes="unsigned"``), splits ``b'`` into an integer
  bias ``B = rint(b')`` and a sub-LSB offset ``o = s (b' - B)`` kept by the rescale, and saturates to the
  activation quantizer's own range (``[0, R]`` after an Fc too); under Floating-point32 rescaling the
  offset is rounded into ``B`` too (whole accumulator units, :mod:`qatrun.fuse.scaling`), leaving the
  zero point. With Floating-point rescaling the integer
  network then computes what the fake-quantized one computes, level for level, exactly where the fake
  network computes in float32 (a value within float32 rounding of a tie ``k + 1/2`` may go either way
  there; :mod:`qatrun.fuse.verify` tells those apart); the other rescaling modes err by at most the
  bound of :mod:`qatrun.fuse.scaling`. The round modes have nothing left to round
  (every weight and bias is an integer already) and are ignored.
* ``n2d2`` reproduces N2D2's ``DeepNetQAT`` (reference/n2d2.md §6.2) value for value, float32 storage
  included, so that ``weights_quantized/`` matches N2D2's files: ``W' = rho_w(Wq K_w)`` with
  ``K_w = floor(R/2)`` under ``-wt-round-mode RINTF`` (1 otherwise, and the ``K_w = 7 -> 15`` special
  case), ``b' = rho_b(...)``, ``clip = rho_c(...)``, ``scale`` in float32, the Fc scale ``S`` folded in,
  signed saturation after an Fc with a ``Linear`` activation (levels above ``2^(n-1) - 1`` are lost),
  16 fractional bits for both fixed-point modes.

Where qatrun differs from N2D2, and why (measured on golden/n2d2-lenet-8b): N2D2's RINTF weights
``rint(127 (2k-255)/255)`` only approximate the levels (conv1 outputs differ by one level on 172 of 4704
values, conv2/conv3 by up to 3-4), and its Fc outputs stop at 127 (the winning logit 255 -> 127); a
BatchNorm with ``var <= 1e-12`` gets ``f = 0`` (output 0) although ``gamma / sqrt(eps)`` is finite; a
Conv with ``ApplyScaling=1`` under RINTF rounds ``K_w L / S`` rather than levels. The exact flavour has
none of these, and handles a Conv or Fc followed directly by an activation quantizer (no BatchNorm),
residual sums and zero points, which N2D2 leaves unconverted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from qatrun.errors import RunError
from qatrun.options import FUSE_FLAVOURS, RESCALING_MODES, ROUND_MODES
from qatrun.fuse.fold import bn_factor
from qatrun.fuse.scaling import ROUNDINGS, Requant, approximate, with_mode

WEIGHT_CODES = ("signed", "unsigned")
INPUT_RANGE = 255  # N2D2's -qat-sat multiplies the input by 255: x in [0, 1] -> p in [0, 255]
N2D2_CORRECTION = 2.066666666666667  # DeepNetQAT's corr for Range_w in {14, 15} under RINTF
N2D2_MIN_VARIANCE = 1e-12  # N2D2: a BatchNorm with var <= this gets f = 0


@dataclass(frozen=True)
class FuseOptions:
    """How to integerize.

    Attributes:
        flavour: ``exact`` (qatrun's default) or ``n2d2`` (N2D2's files and outputs, inexactness included).
        rescaling: one of :data:`~qatrun.fuse.scaling.RESCALING_MODES` (``-act-rescaling-mode``).
        weights_rounding: ``NONE`` or ``RINTF`` (``-wt-round-mode``; n2d2 flavour only).
        biases_rounding: ``NONE`` or ``RINTF`` (``-b-round-mode``; n2d2 flavour only).
        clips_rounding: ``NONE`` or ``RINTF`` (``-c-round-mode``; n2d2 flavour only).
        weight_codes: exact flavour: ``signed`` levels ``2k - R``, or ``unsigned`` codes ``k`` with a
            zero-point correction (Default/FullRange SAT weights only).
    """

    flavour: str = "exact"
    rescaling: str = "Floating-point"
    weights_rounding: str = "NONE"
    biases_rounding: str = "NONE"
    clips_rounding: str = "NONE"
    weight_codes: str = "signed"

    def __post_init__(self) -> None:
        choices = {
            "flavour": FUSE_FLAVOURS, "rescaling": RESCALING_MODES, "weights_rounding": ROUND_MODES,
            "biases_rounding": ROUND_MODES, "clips_rounding": ROUND_MODES, "weight_codes": WEIGHT_CODES,
        }
        for name, valid in choices.items():
            value = getattr(self, name)
            if value not in valid:
                raise RunError(f"fusion {name} must be one of {', '.join(valid)}, found {value!r}")
        if self.flavour == "n2d2" and self.rescaling == "Floating-point32":
            raise RunError("the n2d2 flavour reproduces N2D2's rescaling modes; Floating-point32 (onnxruntime's "
                           "QLinearConv arithmetic) needs the exact flavour")
        if self.flavour == "n2d2" and self.rescaling == "Double-shift":
            raise RunError(
                "the n2d2 flavour cannot use Double-shift: N2D2 installs no rescaling after Conv+BatchNorm in "
                "that mode (its fused network outputs raw accumulators); use the exact flavour"
            )


@dataclass(frozen=True)
class WeightQuant:
    """A quantized layer's weights as fusion reads them.

    Attributes:
        fake: the fake-quantized weights the layer computes with (N2D2's cached ``Wq``, ``1/S`` included).
        levels: int64 integer levels J with ``fake = J * unit`` up to float rounding; None when the
            weights are not on a grid (SAT ``ApplyQuantization=0``).
        unit: float64 real value of one level, 0-dim or per output channel (C_out,).
        range: the quantizer's Range R.
        mode: SAT QuantMode (N2D2's K_w rules); ``Default`` for other methods.
        scaling: SAT scale S (1 without ApplyScaling), for N2D2's Fc formulas.
        method: ``SAT``, ``LSQ``, ``MinMax``.
        mask: bool connectivity of a masked (``Mapping``) convolution, else None.
    """

    fake: Tensor
    levels: Tensor | None
    unit: Tensor
    range: int
    mode: str = "Default"
    scaling: float = 1.0
    method: str = "SAT"
    mask: Tensor | None = None


@dataclass(frozen=True)
class ActQuant:
    """An activation quantizer's grid: ``level = sat(round(x / unit) + zero, lo, hi)``.

    Attributes:
        unit: real value of one level (SAT: ``|alpha| / R``; LSQ: the step).
        lo: lowest level.
        hi: highest level.
        zero: zero point (0 for SAT and LSQ).
        rounding: ``half_away`` (N2D2's CPU kernels) or ``half_even``.
        alpha: N2D2's alpha (the raw parameter; ``unit * range`` for other methods).
        range: N2D2's Range R.
    """

    unit: float
    lo: int
    hi: int
    zero: int = 0
    rounding: str = "half_away"
    alpha: float = 1.0
    range: int = 255

    def __post_init__(self) -> None:
        assert self.rounding in ROUNDINGS, self.rounding
        assert self.lo <= self.zero <= self.hi or self.lo == self.hi, (self.lo, self.zero, self.hi)
        if not self.unit > 0:
            raise RunError(f"an activation quantizer with step {self.unit} (alpha {self.alpha}) has no levels")


def sat_act(alpha: float, steps: int) -> ActQuant:
    """The grid of a SAT activation quantizer (``alpha`` as stored, its sign ignored as N2D2)."""
    return ActQuant(unit=abs(alpha) / steps, lo=0, hi=steps, alpha=alpha, range=steps)


@dataclass(frozen=True)
class BatchNormParams:
    """An inference BatchNorm: per-channel gamma, beta, running mean and variance, and eps."""

    gamma: Tensor
    beta: Tensor
    mean: Tensor
    var: Tensor
    eps: float

    @classmethod
    def from_module(cls, bn: torch.nn.modules.batchnorm._BatchNorm) -> BatchNormParams:
        """Reads an ``nn.BatchNorm1d/2d`` (gamma 1, beta 0 without affine parameters)."""
        if bn.running_mean is None or bn.running_var is None:
            raise RunError(f"cannot fuse {type(bn).__name__} without running statistics")
        ones = torch.ones_like(bn.running_mean)
        return cls(
            gamma=ones if bn.weight is None else bn.weight.detach().clone(),
            beta=torch.zeros_like(ones) if bn.bias is None else bn.bias.detach().clone(),
            mean=bn.running_mean.detach().clone(),
            var=bn.running_var.detach().clone(),
            eps=float(bn.eps),
        )


@dataclass(frozen=True)
class Grid:
    """How an integer tensor stands for real values: ``x = (q - zero) unit``, ``q`` in [lo, hi].

    ``range`` and ``alpha`` are N2D2's ``(R_in, alpha_in)`` state for the n2d2 flavour; ``integer`` is False
    for the averages N2D2 passes on after an average pooling.
    """

    unit: float
    lo: int
    hi: int
    zero: int = 0
    range: int = INPUT_RANGE
    alpha: float = 1.0
    integer: bool = True

    @classmethod
    def of(cls, act: ActQuant, lo: int | None = None) -> Grid:
        """The grid of an activation quantizer's output (``lo`` raised by a ReLU before it)."""
        return cls(act.unit, act.lo if lo is None else lo, act.hi, act.zero, act.range, act.alpha)


INPUT_GRID = Grid(unit=1 / INPUT_RANGE, lo=0, hi=INPUT_RANGE, range=INPUT_RANGE, alpha=1.0)


@dataclass(frozen=True)
class IntegerLayer:
    """The integer form of one Conv/Fc (+ BatchNorm) (+ activation quantizer).

    Attributes:
        weight: int64 integer weights (exact flavour), or N2D2's float32 values (n2d2 flavour: integers
            under RINTF, ``-0`` kept), same shape as the layer's.
        bias: (C,) float64 bias in accumulator units (integers, except n2d2 without bias rounding).
        requant: the rescale from the accumulator to the output levels.
        out: the output grid; None for an unquantized output (then ``out_unit`` is the value of 1.0).
        out_unit: real value of one output unit.
        flipped: (C,) bool, channels negated by the sign trick.
        has_bias: whether the fused layer has a bias (N2D2 writes ``<cell>_biases`` then).
        weight_codes: for ``unsigned`` codes: ``(codes, step, zero, mask)`` with
            ``weight = (step * codes - zero) * mask``.
    """

    weight: Tensor
    bias: Tensor
    requant: Requant
    out: Grid | None
    out_unit: float
    flipped: Tensor
    has_bias: bool = True
    weight_codes: tuple[Tensor, int, int, Tensor] | None = field(default=None)


def _per_channel(t: Tensor, channels: int) -> Tensor:
    t = t.double()
    return t.expand(channels).clone() if t.dim() == 0 else t.reshape(channels)


def _channel_view(t: Tensor, weight: Tensor) -> Tensor:
    """(C,) -> (C, 1, ..., 1) against a weight tensor (C, ...)."""
    return t.reshape(-1, *([1] * (weight.dim() - 1)))


def _rintf(x: Tensor) -> Tensor:
    """N2D2's ``rintf`` on the float32 value (half to even), returned as float32."""
    return torch.round(x.to(torch.float32))


def _bn_factor(bn: BatchNormParams, n2d2: bool) -> Tensor:
    """``f = gamma / sqrt(var + eps)`` in float64 (N2D2: 0 where ``var <= 1e-12``)."""
    return bn_factor(bn.var, bn.eps, bn.gamma, N2D2_MIN_VARIANCE if n2d2 else None)


# --------------------------------------------------------------------------------------------------
# exact flavour


def unsigned_codes(w: WeightQuant) -> tuple[int, int]:
    """``(step, zero)`` with ``J = step * k - zero`` for unsigned codes k in [0, R] (SAT Default/FullRange)."""
    if w.method != "SAT" or w.mode not in ("Default", "FullRange"):
        raise RunError(f"unsigned weight codes need SAT Default or FullRange weights, found {w.method} {w.mode}")
    return 2, w.range


def exact_layer(
    w: WeightQuant,
    bias: Tensor | None,
    bn: BatchNormParams | None,
    act: ActQuant | None,
    grid_in: Grid,
    options: FuseOptions,
    relu: bool = False,
) -> IntegerLayer:
    """The exact integer form of Conv/Fc -> [BatchNorm] -> [activation quantizer] (module note).

    Args:
        w: the layer's quantized weights (must have levels).
        bias: the layer's float bias (C,), or None.
        bn: the BatchNorm after it, or None.
        act: the activation quantizer closing the layer, or None (float output: the logits).
        grid_in: the input's grid.
        options: the flavour must be ``exact``.
        relu: a ReLU runs before the activation quantizer (raises the lowest level to the zero point).
    """
    assert options.flavour == "exact"
    if w.levels is None:
        raise RunError(f"{w.method} weights without levels (ApplyQuantization=0) have no integer form")
    channels = w.levels.shape[0]
    u_acc = grid_in.unit * _per_channel(w.unit, channels)  # (C,) real value of one accumulator unit
    b_real = torch.zeros(channels, dtype=torch.float64) if bias is None else bias.double()
    if bn is None:
        f = torch.ones(channels, dtype=torch.float64)
        shift_real = b_real
    else:
        f = _bn_factor(bn, n2d2=False)
        safe_f = torch.where(f == 0, torch.ones_like(f), f)
        shift_real = b_real + bn.beta.double() / safe_f - bn.mean.double()
    big_f = f * u_acc  # z = F (acc + b')
    b_acc = shift_real / u_acc
    dead = f == 0  # gamma = 0: the channel outputs beta whatever its input
    if act is None:
        return _unquantized(w.levels, big_f, b_acc, dead, bn, bias)
    sign = torch.where(big_f < 0, -1.0, 1.0).double()
    weight = w.levels * _channel_view(sign, w.levels).to(torch.int64)
    scale = big_f.abs() / act.unit
    b_flipped = sign * b_acc
    int_bias = torch.round(b_flipped)
    offset = scale * (b_flipped - int_bias) + act.zero
    if bn is not None and bool(dead.any()):
        weight[dead] = 0
        int_bias[dead] = 0
        scale[dead] = 0
        offset[dead] = bn.beta.double()[dead] / act.unit + act.zero
    lo = max(act.lo, act.zero) if relu else act.lo
    requant = Requant("Floating-point", scale, offset, lo, act.hi, rounding=act.rounding)
    requant = with_mode(requant, options.rescaling)
    if requant.bias is not None:  # Floating-point32: the offset's whole accumulator units join the bias
        int_bias = int_bias + requant.bias.double()
        requant = replace(requant, bias=None)
    codes = None
    if options.weight_codes == "unsigned":
        step, zero = unsigned_codes(w)
        mask = torch.ones_like(weight, dtype=torch.bool) if w.mask is None else w.mask.bool()
        codes = (_to_codes(weight, step, zero, mask), step, zero, mask)
    has_bias = bias is not None or bn is not None
    return IntegerLayer(weight, int_bias, requant, Grid.of(act, lo), act.unit, sign < 0, has_bias, codes)


def _to_codes(weight: Tensor, step: int, zero: int, mask: Tensor) -> Tensor:
    """Unsigned codes k with ``weight = (step k - zero) mask`` (an exact division, checked; 0 where masked)."""
    shifted = torch.where(mask, weight + zero, 0)
    assert bool((shifted % step == 0).all()), "weights are not of the form step * k - zero"
    return shifted // step


def _unquantized(
    levels: Tensor, big_f: Tensor, b_acc: Tensor, dead: Tensor, bn: BatchNormParams | None, bias: Tensor | None
) -> IntegerLayer:
    """A layer with no activation quantizer (the logits): ``y = F (acc + b')`` in units of ``max |F|``."""
    out_unit = float(big_f.abs().max()) if bool((big_f != 0).any()) else 1.0
    scale = big_f / out_unit
    int_bias = torch.round(b_acc)
    offset = scale * (b_acc - int_bias)
    weight = levels.clone()
    if bn is not None and bool(dead.any()):
        weight[dead] = 0
        int_bias[dead] = 0
        offset[dead] = bn.beta.double()[dead] / out_unit
    requant = Requant("None", scale, offset, lo=0, hi=0)
    flipped = torch.zeros(levels.shape[0], dtype=torch.bool)
    return IntegerLayer(weight, int_bias, requant, None, out_unit, flipped, bias is not None or bn is not None)


# --------------------------------------------------------------------------------------------------
# n2d2 flavour


def _n2d2_weight_factor(w: WeightQuant, options: FuseOptions) -> int:
    """K_w: 1 without weight rounding, else ``floor(Range/2)`` (at least 1)."""
    return 1 if options.weights_rounding == "NONE" else max(1, w.range // 2)


def _rho(x: Tensor, mode: str) -> Tensor:
    """Store as float32, then ``rintf`` under RINTF: N2D2's rounding of weights, biases and clips."""
    return _rintf(x) if mode == "RINTF" else x.to(torch.float32)


def _n2d2_bits(steps: int) -> int:
    """N2D2's activation bits ``rintf(log2(R))``."""
    return int(torch.round(torch.tensor(math.log2(steps), dtype=torch.float32)))


def _n2d2_requant(
    scale: Tensor, clip: Tensor | None, bits: int, signed: bool, options: FuseOptions, mode: str
) -> Requant:
    """N2D2's activation scaling: clip, float32 product, round half away, saturate to ``bits``."""
    if signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    offset = torch.zeros_like(scale, dtype=torch.float64)
    if bits == 0:  # N2D2 does not round at all then (R_out = 1)
        return Requant("None", scale.double(), offset, 0, 0, clip=clip)
    requant = Requant("Floating-point", scale.double(), offset, lo, hi, clip=clip, float32=True)
    if mode == "Floating-point":
        return requant
    multiplier, shift = approximate(requant.scale, mode, n2d2=True)  # type: ignore[misc]
    # N2D2's single-shift kernel applies no clip (reference/n2d2.md §6.2).
    kept_clip = None if mode == "Single-shift" else clip
    return Requant(mode, requant.scale, offset, lo, hi, clip=kept_clip, multiplier=multiplier, shift=shift)


def n2d2_conv_bn(
    w: WeightQuant, bias: Tensor | None, bn: BatchNormParams, act: ActQuant, grid_in: Grid, options: FuseOptions
) -> IntegerLayer:
    """N2D2's ``QuantizeAndfuseBatchNormWithConv`` (reference/n2d2.md §6.2), float32 storage included."""
    k_w = _n2d2_weight_factor(w, options)
    corr, r_in = 1.0, grid_in.range
    if w.mode == "Default" and options.weights_rounding == "RINTF" and k_w == 7:
        k_w, corr, r_in = 15, N2D2_CORRECTION, 31  # N2D2 assumes a 4-bit input here
    k_b = k_w
    alpha_in, alpha_out, r_out = grid_in.alpha, act.alpha, act.range
    f = _bn_factor(bn, n2d2=True)
    sign = torch.where(f < 0, -1.0, 1.0).double()
    safe_f = torch.where(f == 0, torch.ones_like(f), f)
    b = torch.zeros_like(f) if bias is None else bias.double()
    beta, mean = bn.beta.double(), bn.mean.double()

    # float32 as N2D2 stores them (RINTF values are integers, "-0" included, as in its files).
    weight = _rho(w.fake.double() * k_w, options.weights_rounding) * _channel_view(sign, w.fake).float()
    new_bias = sign * _rho(((beta + (b - mean) * f) / safe_f) * (r_in / alpha_in) * k_b / corr,
                           options.biases_rounding).double()
    clip = sign * _rho((alpha_out * r_in) / (safe_f * alpha_in) * k_w / corr, options.clips_rounding).double()
    scale = (sign * (alpha_in / r_in) * (r_out / alpha_out) * f / k_w * corr).to(torch.float32).double()
    dead = f == 0
    new_bias[dead], clip[dead], scale[dead] = 0.0, 0.0, 0.0
    requant = _n2d2_requant(scale, clip, _n2d2_bits(r_out), False, options, options.rescaling)
    out = Grid(act.unit, requant.lo, requant.hi, 0, r_out, alpha_out)
    return IntegerLayer(weight, new_bias, requant, out, act.unit, sign < 0, True)


def n2d2_fc(
    w: WeightQuant,
    bias: Tensor | None,
    act: ActQuant | None,
    grid_in: Grid,
    options: FuseOptions,
    signed: bool = True,
) -> IntegerLayer:
    """N2D2's ``QuantizeFC`` (reference/n2d2.md §6.2).

    Args:
        signed: the Fc's activation is ``Linear`` (N2D2 saturates its output as signed), not a ReLU.
    """
    quantized = options.weights_rounding == "RINTF"
    k_w = _n2d2_weight_factor(w, options)
    s = w.scaling if quantized else 1.0
    k_b = k_w * s
    sf_in = grid_in.range / grid_in.alpha
    sf_out = act.range / act.alpha if act is not None else float(grid_in.range)
    weight = _rho(w.fake.double() * k_w * s, options.weights_rounding)
    channels = w.fake.shape[0]
    new_bias = torch.zeros(channels, dtype=torch.float64)
    if bias is not None:
        new_bias = _rho(bias.double() * sf_in * k_b, options.biases_rounding).double()
    scale = torch.full((channels,), (sf_out / sf_in) / (s * k_w), dtype=torch.float32).double()
    clip = None
    if act is not None:
        clip_value = torch.full((channels,), max(act.alpha * sf_in * k_w * s, 0.0), dtype=torch.float64)
        clip = _rho(clip_value, options.clips_rounding).double()
    bits = _n2d2_bits(act.range) if act is not None else 32
    # N2D2 rescales an Fc in floating point whatever -act-rescaling-mode says.
    requant = _n2d2_requant(scale, clip, bits, signed, options, "Floating-point")
    if act is None:
        out, unit = None, 1 / sf_out
    else:
        unit = act.unit
        out = Grid(unit, requant.lo, requant.hi, 0, act.range, act.alpha)
    flipped = torch.zeros(channels, dtype=torch.bool)
    return IntegerLayer(weight, new_bias, requant, out, unit, flipped, bias is not None)


# --------------------------------------------------------------------------------------------------
# Residual Sum


@dataclass(frozen=True)
class IntegerAdd:
    """The integer form of an element-wise Sum followed by an activation quantizer.

    ``acc = sum_i m_i (q_i - z_i)`` (m_i per input and channel: float64 multipliers for Floating-point,
    integers on a common ``2^-shift`` scale for the integer modes), then ``requant``.

    Attributes:
        multipliers: (n_inputs, C) float64 (integer-valued for integer modes).
        zeros: the inputs' zero points.
        requant: the rescale to the output levels.
        out: the output grid.
        error: largest pre-rounding error (levels) of the integer branch multipliers (0 for Floating-point).
    """

    multipliers: Tensor
    zeros: tuple[int, ...]
    requant: Requant
    out: Grid
    error: float = 0.0


BRANCH_BITS = {"Fixed-point16": 16, "Fixed-point32": 32, "Single-shift": 16, "Double-shift": 16,
               "Floating-point32": 16}
INT8_BRANCH_ERROR = 0.25  # Floating-point32: int8 branch multipliers when they cost at most this (levels)


def _branch_multipliers(ratios: Tensor, spans: Tensor, bits: int, scale: float) -> tuple[int, Tensor, float]:
    """``(k, R, error)``: integer multipliers ``R = round(r 2^k)`` of about ``bits`` bits, and the
    largest pre-rounding error they cause, in output levels (``scale`` is ``u_1 / u_out``).

    k gives the largest multiplier the mode's bits, but keeps the accumulator ``sum_i R_i |q_i - z_i|`` below
    2^31 so that its product with a 32-bit rescale multiplier stays inside int64. ``bits == 8``: every
    ``|R| <= 127`` (int8 weights for onnxruntime).
    """
    largest = float(ratios.abs().max())
    total = float((ratios.abs() * spans[:, None]).sum(dim=0).max())
    k = 0
    if largest > 0 and total > 0:
        k_bits = (bits - 2) - math.floor(math.log2(largest))
        k_fit = math.floor(math.log2(2.0**31 / total)) - 1
        k = max(0, min(k_bits, k_fit))
    integer_ratios = torch.round(ratios * 2.0**k)
    if bits == 8 and k > 0 and float(integer_ratios.abs().max()) > 127:  # rounded up out of int8
        k -= 1
        integer_ratios = torch.round(ratios * 2.0**k)
    error = float(((ratios - integer_ratios / 2.0**k).abs() * spans[:, None]).sum(dim=0).max()) * scale
    return k, integer_ratios, error


def add_layer(
    grids: list[Grid],
    weights: Tensor,
    shifts: Tensor,
    act: ActQuant,
    options: FuseOptions,
    relu: bool = False,
) -> IntegerAdd:
    """Sum_i w_i x_i + s_i followed by an activation quantizer, on integer inputs.

    Every branch is brought to the first branch's unit ``u_1`` (N2D2's "parent 0"):
    ``sum w_i x_i + s_i = u_1 sum_i (w_i u_i / u_1)(q_i - z_i) + sum s_i``, then ``s = u_1 / u_out``.
    The n2d2 flavour adds N2D2's clip ``alpha_out u_1`` (float32, no offset) before scaling.

    Args:
        grids: the inputs' grids.
        weights: (n_inputs, C) ElemWise coefficients w_i.
        shifts: (n_inputs, C) ElemWise shifts s_i (real values).
        act: the activation quantizer after the Sum.
        options: flavour and rescaling mode.
        relu: a ReLU runs before the quantizer.
    """
    unit_ref = grids[0].unit
    ratios = torch.stack([weights[i].double() * g.unit / unit_ref for i, g in enumerate(grids)])  # (n, C)
    channels = ratios.shape[1]
    scale = torch.full((channels,), unit_ref / act.unit, dtype=torch.float64)
    offset = shifts.double().sum(dim=0) / act.unit + act.zero
    lo = max(act.lo, act.zero) if relu else act.lo
    zeros = tuple(g.zero for g in grids)
    if options.flavour == "n2d2":
        clip = torch.full((channels,), act.alpha / unit_ref, dtype=torch.float32).double()
        requant = _n2d2_requant(scale.to(torch.float32).double(), clip, _n2d2_bits(act.range), False, options,
                                options.rescaling)
        return IntegerAdd(ratios, zeros, requant, Grid.of(act, requant.lo), 0.0)
    requant = Requant("Floating-point", scale, offset, lo, act.hi, rounding=act.rounding)
    if options.rescaling == "Floating-point":
        return IntegerAdd(ratios, zeros, requant, Grid.of(act, lo))
    # Integer modes: branch multipliers R_i = round(r_i 2^k) on one scale 2^-k, then the rescale.
    # Floating-point32 takes int8 multipliers when they cost at most a quarter level, so that onnxruntime
    # runs the Sum as one uint8 x int8 QLinearConv (qatrun.export.onnx_int), else 16-bit ones.
    spans = torch.tensor([max(abs(g.lo - g.zero), abs(g.hi - g.zero)) for g in grids], dtype=torch.float64)
    k, integer_ratios, error = _branch_multipliers(ratios, spans, BRANCH_BITS[options.rescaling], float(scale[0]))
    if options.rescaling == "Floating-point32":
        k8, ratios8, error8 = _branch_multipliers(ratios, spans, 8, float(scale[0]))
        if error8 <= INT8_BRANCH_ERROR:
            k, integer_ratios, error = k8, ratios8, error8
    requant = with_mode(Requant("Floating-point", scale / 2.0**k, offset, lo, act.hi, rounding=act.rounding),
                        options.rescaling)
    return IntegerAdd(integer_ratios, zeros, requant, Grid.of(act, lo), error)
