"""SAT: DoReFa weights with scale-adjusted training, and CG-PACT activations (N2D2's default recipe).

Weights (Zhou et al. 2016, "DoReFa-Net"; Jin et al. 2020, "Towards Efficient Training for Neural Network
Quantization", SAT), per tensor, ``R = Range``, ``r = floor(R/2)``::

    t  = tanh(W) / M,  M = max|tanh(W)|                      in [-1, 1]
    Default    Wq = 2 rint(R (t+1)/2) / R - 1                R+1 levels (2k - R)/R
    FullRange  u = (1 + 0.9998/R)(t+1)/2 - 0.4999/R
               Wq = 2 rint(R u) / R - 1                      R+1 levels, end bins as wide as the others
    Symmetric  Wq = rint(r t) / r                            2r+1 levels k/r
    Asymmetric a = (1 + 1/2r) t - 1/2r,  Wq = rint(r a) / r  2r+2 levels k/r, k = -r-1..r
    ApplyQuantization=0 (the "clamp" phase): Wq = t (Asymmetric: a), no rounding
    ApplyScaling=1: Wq /= S,  S = sqrt(n_out Var(Wq)),  Var unbiased, n_out = C_out kH kW (Conv), N_out (Fc)

    backward (straight-through rint; M and S constants):
        dW = dWq (1/cosh W)^2 / (M S) c,   c = 1 | 1 + 0.9998/R (FullRange) | 1 + 1/2r (Asymmetric)

Activations (Choi et al. 2018, PACT, with SAT's gradient calibration), one learned alpha per layer::

    a = |alpha|,  q = clip(x, 0, a) / a,  y = round(R q) / R a
    dx = g 1[0 < x <= a]
    dalpha = sum g (1 if x >= a else round(R q)/R - q)      (no sign(alpha) factor, as N2D2)

Exactly as N2D2's CPU kernels (reference/n2d2.md §5.1, §5.2), including their float order: Default mode
computes ``q = 0.5 (t+1)`` first and multiplies by the reciprocal ``1/R``; the backward uses ``1/cosh``;
S is taken from sequential float sums and a correctly rounded sqrt. Rounding: ``rint`` (half to even) for
weights, ``round`` (half away from zero) for activations: the CPU kernels' choice, which reproduces the
golden data (every fused weight of golden/n2d2-lenet-8b and every bn1 level N2D2 logged). N2D2's CUDA
kernels round activations half to even; qatrun rounds the same on every device.

Where qatrun differs from N2D2:

* ``QWeight.Mode=Integer`` (in N2D2's documentation, absent from its code): the layer computes with the
  integer levels ``n`` (``2k - R`` for Default/FullRange, ``k`` for Symmetric/Asymmetric) and multiplies
  its output by ``1 / (D S)`` (``D = R`` or ``r``), so what is trained is already the integer network.
  The gradient reaching W is the same up to float rounding.
* A tensor whose weights are all zero gives ``M = 0`` and a constant one gives ``Var = 0``: N2D2 divides by
  zero (NaN/inf weights); qatrun uses 1 for M or S there, so the layer stays finite.
* N2D2's FullRange backward applies ``c = 1 + 0.9998/R`` even in the clamp phase, whose forward is plain
  ``t``; qatrun keeps that (it is what N2D2 trains with).

One definition per direction: :func:`sat_weight_forward`, :func:`sat_weight_backward`,
:func:`sat_act_forward` and :func:`sat_act_backward` are the formulas above. The autograd functions hand
them to the run's :class:`~qatrun.quant.kernels.Kernels`, which computes them as they are (eager), compiled
by ``torch.compile`` (GPU), or by their restatement in ``native.cpp`` (CPU training steps; the same values
to the bit, tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from qatrun.errors import ConfigError, DataError
from qatrun.ini import Key
from qatrun.quant.kernels import EAGER, Kernels
from qatrun.quant.rounding import round_half_away, round_half_even
from qatrun.quant.spec import RANGE, QuantSpec, bits

QUANT_MODES = ("Default", "Symmetric", "Asymmetric", "FullRange")

QUANT_MODE = Key("QuantMode", "enum", "Default", "SAT weight level set", choices=QUANT_MODES)
WEIGHT_MODE = Key(
    "Mode", "enum", "Default", "Integer: compute with integer weight levels and a per-layer float rescale",
    choices=("Default", "Integer"),
)
APPLY_QUANTIZATION = Key("ApplyQuantization", "bool", True, "0: clamp phase (tanh-normalised weights, no rounding)")
APPLY_SCALING = Key("ApplyScaling", "bool", False, "divide the weights by the SAT scale sqrt(n_out Var(Wq))")
ALPHA = Key("Alpha", "float", 1.0, "initial clip value alpha of the activations (N2D2's code default 1.0)")


@dataclass(frozen=True)
class SATWeightSpec(QuantSpec):
    """``QWeight=SAT`` settings.

    Attributes:
        range: number of steps R.
        quant_mode: ``Default``, ``Symmetric``, ``Asymmetric`` or ``FullRange``.
        apply_quantization: False for the clamp phase (no rounding).
        apply_scaling: divide by the SAT scale S.
        integer: ``QWeight.Mode=Integer``: compute with integer levels and a float rescale.
    """

    quant_mode: str = "Default"
    apply_quantization: bool = True
    apply_scaling: bool = False
    integer: bool = False

    METHOD: ClassVar[str] = "SAT"
    ROLE: ClassVar[str] = "w"
    KEYS: ClassVar[tuple[tuple[str, Key], ...]] = (
        ("range", RANGE),
        ("quant_mode", QUANT_MODE),
        ("apply_quantization", APPLY_QUANTIZATION),
        ("apply_scaling", APPLY_SCALING),
        ("integer", WEIGHT_MODE),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant_mode not in QUANT_MODES:
            raise ConfigError(f"expected one of {', '.join(QUANT_MODES)}, found {self.quant_mode!r}", key="QuantMode")
        if self.quant_mode in ("Symmetric", "Asymmetric") and self.range < 2:
            raise ConfigError(f"QuantMode={self.quant_mode} needs Range >= 2 (levels k/floor(R/2))", key="Range")
        if self.integer and not self.apply_quantization:
            raise ConfigError("Mode=Integer needs ApplyQuantization=1 (the clamp phase has no levels)", key="Mode")

    @classmethod
    def convert(cls, field: str, value: Any) -> Any:
        """Turns the value read for ``field`` into the field's value (``Mode`` -> ``integer``)."""
        return value == "Integer" if field == "integer" else value


@dataclass(frozen=True)
class SATActSpec(QuantSpec):
    """``QAct=SAT`` settings.

    Attributes:
        range: number of steps R.
        alpha: initial clip value (learned; its sign is ignored).
    """

    alpha: float = 1.0

    METHOD: ClassVar[str] = "SAT"
    ROLE: ClassVar[str] = "a"
    KEYS: ClassVar[tuple[tuple[str, Key], ...]] = (("range", RANGE), ("alpha", ALPHA))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha == 0:
            raise ConfigError("Alpha must not be 0 (the clip value is |Alpha|)", key="Alpha")


# --------------------------------------------------------------------------------------------------
# Weights: pure tensor functions


def sat_normalize(w: Tensor) -> tuple[Tensor, Tensor]:
    """DoReFa normalisation ``t = tanh(W) / M``, ``M = max|tanh(W)|`` over the whole tensor.

    Returns:
        ``(t, M)``; M is 1 where every weight is 0 (N2D2 would divide by zero).
    """
    tanh = torch.tanh(w)
    m = tanh.abs().max()
    m = torch.where(m > 0, m, torch.ones_like(m))
    return tanh / m, m


def sat_denominator(steps: int, mode: str) -> int:
    """D in ``Wq = n / D``: R for Default and FullRange, ``r = floor(R/2)`` for Symmetric and Asymmetric."""
    return steps // 2 if mode in ("Symmetric", "Asymmetric") else steps


def sat_levels(t: Tensor, steps: int, mode: str, quantize: bool) -> tuple[Tensor, Tensor | None, int]:
    """Maps normalised weights to SAT levels, as N2D2's kernels compute them.

    Args:
        t: normalised weights in [-1, 1].
        steps: R, the Range.
        mode: one of :data:`QUANT_MODES`.
        quantize: False for the clamp phase.

    Returns:
        ``(Wq, n, D)``: the float levels, the integer numerators (``Wq = n / D`` up to float rounding;
        None in the clamp phase) and the denominator D.
    """
    half = steps // 2
    if mode == "Asymmetric":
        a = (1 + 1 / (2 * half)) * t - 1 / (2 * half)
        if not quantize:
            return a, None, half
        n = round_half_even(half * a)
        return n * (1 / half), n, half
    if not quantize:
        return t, None, sat_denominator(steps, mode)
    if mode == "Symmetric":
        n = round_half_even(half * t)
        return n * (1 / half), n, half
    u = 0.5 * (t + 1)
    if mode == "FullRange":
        u = (1 + 0.9998 / steps) * u - 0.4999 / steps
    k = round_half_even(steps * u)
    return 2 * (k * (1 / steps)) - 1, 2 * k - steps, steps


def sat_scale(wq: Tensor, n_out: int) -> Tensor:
    """SAT scale ``S = sqrt(n_out * Var(Wq))`` with the unbiased variance, as N2D2's CPU kernel computes it.

    The kernel (``apply_scaling``) takes the mean and the variance as sequential sums in the weights'
    precision (``std::accumulate``) and a correctly rounded ``sqrt``. torch's reductions are pairwise (or
    accumulate float32 in float64) and its CPU ``sqrt`` may be one ulp off, either of which changes the
    float32 S visibly (fc1 of the golden network: 2.5716105 sequential, 2.5716221 pairwise), so on the CPU
    the scalar is computed with numpy. On a GPU, where N2D2 itself uses a parallel reduction, and inside a
    compiled graph, torch's float64 reductions are used instead of copying the weights to the host.

    Returns:
        S as a 0-dim tensor of ``wq``'s dtype; 1 where the variance is 0 or undefined (one element).
    """
    count = wq.numel()
    if count < 2:
        return torch.ones((), dtype=wq.dtype, device=wq.device)
    flat = wq.detach().reshape(-1)
    # A compiled graph (the GPU's kernels; the tests compile it on the CPU too) cannot leave for numpy.
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        values = flat.numpy()
        kind = values.dtype.type
        # np.cumsum adds strictly left to right in the array's dtype; numpy scalars keep that dtype.
        mean = np.cumsum(values)[-1] / kind(count)
        centred = values - mean
        var = np.cumsum(centred * centred)[-1] / kind(count - 1)
        s = torch.as_tensor(np.sqrt(kind(n_out) * var), dtype=wq.dtype)
    else:
        wide = flat.to(torch.float64)
        s = torch.sqrt(n_out * wide.var(unbiased=True)).to(wq.dtype)
    return torch.where(s > 0, s, torch.ones_like(s))


def sat_gradient_factor(steps: int, mode: str) -> float:
    """The constant c of the SAT weight backward: 1, ``1 + 0.9998/R`` (FullRange), ``1 + 1/2r`` (Asymmetric)."""
    if mode == "FullRange":
        return 1 + 0.9998 / steps
    if mode == "Asymmetric":
        return 1 + 1 / (2 * (steps // 2))
    return 1.0


def sat_weight_forward(
    w: Tensor, steps: int, mode: str, quantize: bool, n_out: int, integer: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The SAT weight forward: the definition (native.cpp's ``sat_weight_forward`` computes the same bits).

    Args:
        w: the latent weights (one tensor: SAT is per tensor).
        steps: R, the Range.
        mode: one of :data:`QUANT_MODES`.
        quantize: False for the clamp phase.
        n_out: the SAT scale's n_out; 0 for no scaling (S = 1).
        integer: return the integer numerators n instead of ``Wq / S``.

    Returns:
        ``(out, factor, S)``: ``Wq / S`` (or n), the backward's factor ``1 / (M S)`` (``D / M`` for n, since
        ``d(n)/d(t) = D S d(Wq/S)/d(t)``), and S.
    """
    t, m = sat_normalize(w)
    wq, n, denom = sat_levels(t, steps, mode, quantize)
    s = sat_scale(wq, n_out) if n_out > 0 else torch.ones((), dtype=w.dtype, device=w.device)
    if integer:
        assert n is not None, "integer levels need ApplyQuantization=1"
        return n, torch.full_like(m, denom) / m, s  # not denom / m: torch computes that as denom * (1/m)
    return wq / s, 1 / (m * s), s


def sat_weight_backward(w: Tensor, grad: Tensor, factor: Tensor, c: float) -> Tensor:
    """The SAT weight gradient ``g (1/cosh W)^2 factor c``: the definition (and native.cpp's)."""
    # In place on one temporary, each step the same operation as written out (1/x is torch's reciprocal;
    # c = 1 is skipped: x * 1.0 == x).
    grad_w = torch.cosh(w).reciprocal_()
    grad_w = grad_w.mul_(grad_w).mul_(grad).mul_(factor)
    if c != 1.0:
        grad_w.mul_(c)
    return grad_w


class SATWeightFunction(torch.autograd.Function):
    """SAT weight quantization with N2D2's straight-through backward (M and S detached).

    ``apply(w, steps, mode, quantize, n_out, integer, kernels=EAGER) -> (out, S)``: ``out`` is ``Wq / S``
    (``n_out`` is None: no scaling, S = 1) or, with ``integer``, the integer levels n. S carries no gradient.
    ``kernels`` computes :func:`sat_weight_forward` and :func:`sat_weight_backward`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, w: Tensor, steps: int, mode: str, quantize: bool, n_out: int | None, integer: bool,
        kernels: Kernels = EAGER,
    ) -> tuple[Tensor, Tensor]:
        out, factor, s = kernels.run(sat_weight_forward, w, steps, mode, quantize, n_out or 0, integer)
        ctx.save_for_backward(w, factor)
        ctx.c = sat_gradient_factor(steps, mode)
        ctx.kernels = kernels
        ctx.mark_non_differentiable(s)
        return out, s

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_s: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        w, factor = ctx.saved_tensors
        grad_w = ctx.kernels.run(sat_weight_backward, w, grad.contiguous(), factor, ctx.c)
        return grad_w, None, None, None, None, None, None


def sat_weight(
    w: Tensor, steps: int, mode: str = "Default", quantize: bool = True, n_out: int | None = None
) -> Tensor:
    """SAT fake-quantized weights ``Wq / S`` (S = 1 when ``n_out`` is None), differentiable as N2D2."""
    out, _ = SATWeightFunction.apply(w, steps, mode, quantize, n_out, False)
    return out


# --------------------------------------------------------------------------------------------------
# Activations: pure tensor functions


def sat_act_levels(x: Tensor, a: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``(q, level)``: ``q = clip(x, 0, a) / a`` and ``level = round(R q)`` (half away from zero)."""
    # In-place steps on the function's own temporaries (same operations, same values): on the CPU each new
    # activation-sized tensor costs its page faults.
    q = torch.minimum(x.clamp(min=0), a)
    q.div_(a)
    return q, round_half_away(steps * q)


def sat_act_forward(x: Tensor, alpha: Tensor, steps: int) -> Tensor:
    """CG-PACT forward ``y = round(R q) / R a``, ``a = |alpha|``: the definition (and native.cpp's)."""
    a = alpha.abs()
    _, level = sat_act_levels(x, a, steps)
    return level.div_(steps).mul_(a)


def sat_act_backward(x: Tensor, alpha: Tensor, grad: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """CG-PACT gradients ``(dx, dalpha)`` from the input and the output gradient (the levels recomputed):
    the definition (native.cpp's sums dalpha in another order)."""
    a = alpha.abs()
    q, level = sat_act_levels(x, a, steps)
    grad_x = torch.where(x.gt(0).logical_and_(x <= a), grad, 0.0)
    # d y / d a: 1 where clipped at a, the rounding residue round(Rq)/R - q inside (0 below 0, q = 0).
    local = level.div_(steps).sub_(q).masked_fill_(x >= a, 1.0)
    return grad_x, (grad * local).sum()


class SATActivationFunction(torch.autograd.Function):
    """``apply(x, alpha, steps, kernels=EAGER) -> y``: SAT/PACT activation quantization with N2D2's alpha
    gradient; ``kernels`` computes :func:`sat_act_forward` and :func:`sat_act_backward`.

    Saves only ``x`` and ``alpha`` for the backward, which recomputes the levels.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, alpha: Tensor, steps: int, kernels: Kernels = EAGER
    ) -> Tensor:
        ctx.save_for_backward(x, alpha)
        ctx.steps = steps
        ctx.kernels = kernels
        return kernels.run(sat_act_forward, x, alpha, steps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        grad_x, grad_alpha = ctx.kernels.run(sat_act_backward, x, alpha, grad.contiguous(), ctx.steps)
        return grad_x, grad_alpha.reshape(alpha.shape).to(alpha.dtype), None, None


def sat_activation(x: Tensor, alpha: Tensor, steps: int, kernels: Kernels = EAGER) -> Tensor:
    """SAT fake-quantized activations, differentiable in x and alpha as N2D2.

    A training step (gradient required) runs on ``kernels``; everything else on the eager definition.
    """
    return SATActivationFunction.apply(x, alpha, steps, kernels.for_step(x, alpha))


# --------------------------------------------------------------------------------------------------
# Modules


class SATWeightQuantizer(nn.Module):
    """Quantizes a layer's latent weights at every forward (train and eval). No learnable parameter.

    Args:
        spec: the ``QWeight`` settings.
        n_out: the layer's n_out for the SAT scale (C_out kH kW for a convolution, N_out for Fc).
        channel_axis: the weight axis of the output channels (unused: SAT is per tensor).
        kernels: the training step's kernels (:func:`qatrun.quant.select_kernels`).
    """

    PARAMETER_MIN: ClassVar[Mapping[str, float]] = {}

    def __init__(self, spec: SATWeightSpec, *, n_out: int, channel_axis: int = 0, kernels: Kernels = EAGER) -> None:
        super().__init__()
        self.spec = spec
        self.n_out = n_out
        self.kernels = kernels

    @property
    def integer(self) -> bool:
        """True when the layer computes with integer levels (``QWeight.Mode=Integer``)."""
        return self.spec.integer

    def _apply_sat(self, w: Tensor, integer: bool) -> tuple[Tensor, Tensor]:
        spec = self.spec
        n_out = self.n_out if spec.apply_scaling else None
        return SATWeightFunction.apply(w, spec.range, spec.quant_mode, spec.apply_quantization, n_out, integer,
                                       self.kernels.for_step(w))

    def forward(self, w: Tensor) -> Tensor:
        """Fake-quantized weights ``Wq / S`` (same shape as ``w``)."""
        out, _ = self._apply_sat(w, False)
        return out

    def integer_forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Integer levels n (float tensor, differentiable) and the rescale ``1 / (D S)``, ``Wq/S = n / (D S)``."""
        assert self.spec.apply_quantization, "integer levels need ApplyQuantization=1"
        levels, s = self._apply_sat(w, True)
        return levels, 1 / (sat_denominator(self.spec.range, self.spec.quant_mode) * s)

    def scale(self, w: Tensor) -> Tensor:
        """The SAT scale S of ``w`` (1 without ``ApplyScaling``)."""
        with torch.no_grad():
            _, s = self._apply_sat(w, False)
        return s

    def describe(self) -> str:
        """``SAT w8``, ``SAT w4 int``, ``SAT w clamp``."""
        if not self.spec.apply_quantization:
            return "SAT w clamp"
        return f"SAT w{bits(self.spec)}" + (" int" if self.spec.integer else "")

    def n2d2_files(self, cell_name: str) -> dict[str, Tensor]:
        """N2D2's SAT cell quantizer exports nothing."""
        return {}

    def load_n2d2_file(self, stem: str, tensor: Tensor) -> None:
        """No file belongs to a SAT weight quantizer."""
        raise DataError(f"{stem}: a SAT weight quantizer has no saved state")

    def extra_repr(self) -> str:
        return f"{self.spec}, n_out={self.n_out}"


ALPHA_SUFFIX = "_QAct_SAT_Alpha"


class SATActivationQuantizer(nn.Module):
    """CG-PACT activation quantizer holding the learned clip ``alpha`` (a 0-dim parameter).

    Args:
        spec: the ``QAct`` settings.
        kernels: the training step's kernels (:func:`qatrun.quant.select_kernels`).
    """

    PARAMETER_MIN: ClassVar[Mapping[str, float]] = {}

    def __init__(self, spec: SATActSpec, *, kernels: Kernels = EAGER) -> None:
        super().__init__()
        self.spec = spec
        self.alpha = nn.Parameter(torch.tensor(float(spec.alpha)))
        self.kernels = kernels

    def forward(self, x: Tensor) -> Tensor:
        return sat_activation(x, self.alpha.to(x.dtype), self.spec.range, self.kernels)

    def describe(self) -> str:
        """``SAT a8``."""
        return f"SAT a{bits(self.spec)}"

    def n2d2_files(self, cell_name: str) -> dict[str, Tensor]:
        """``{<cell>_QAct_SAT_Alpha: alpha}`` (one number)."""
        return {cell_name + ALPHA_SUFFIX: self.alpha.detach().reshape(1)}

    def load_n2d2_file(self, stem: str, tensor: Tensor) -> None:
        """Sets alpha from ``<cell>_QAct_SAT_Alpha``.

        Raises:
            DataError: another file, or not exactly one number.
        """
        if not stem.endswith(ALPHA_SUFFIX):
            raise DataError(f"{stem}: a SAT activation quantizer reads only *{ALPHA_SUFFIX} files")
        if tensor.numel() != 1:
            raise DataError(f"{stem}: expected 1 value (the SAT alpha), found {tensor.numel()}")
        with torch.no_grad():
            self.alpha.copy_(tensor.reshape(()))

    def extra_repr(self) -> str:
        return f"range={self.spec.range}"
