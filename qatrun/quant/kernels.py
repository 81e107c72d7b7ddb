"""Fused element-wise kernels for the training step of the activation quantizers.

Why. An activation quantizer sits where the float network has its ReLU, on tensors of millions of
elements. Written as PyTorch operations, SAT's forward and backward (LSQ's alike) are a dozen passes over
memory (clip, divide, scale, floor, compare, add, multiply; then two compares, the gradient mask, the
residue, the alpha product and its sum), each with its own temporary: 17 ms for a 128x16x32x32 tensor on two
CPU cores, where the ReLU it replaces takes 1.1 ms forward and backward. That made a ResNet-20 QAT step twice
the float step. Compiled by ``torch.compile`` (Inductor: C++/OpenMP loops on the CPU, Triton on CUDA), the
same operations become one loop for the forward (read x, write y) and one for the backward (read x and the
incoming gradient, write the input gradient, accumulate the alpha gradient).

What is computed. The quantizer's formulas (:mod:`qatrun.quant.sat`, :mod:`qatrun.quant.lsq`) with the
divisions by the clip (or step) and by the Range replaced by multiplications with reciprocals computed once:
two divisions per element made the compiled forward compute-bound (2M elements: 0.62 ms with divisions,
0.23 ms without; backward 0.92 -> 0.51 ms). So ``q = clip(x) (1/a)`` may differ from the eager
``clip(x) / a`` in its last bit, and the level with it only where ``R q`` lies within that bit of a rounding
tie; ``y = level (a/R)`` likewise in its last bit. SAT's input-gradient mask depends on ``x`` and ``a`` alone
and is identical (LSQ's compares ``x (1/s)`` with the ends: it may differ within a rounding of an end); the
alpha (step) gradient is the same sum in another order, over the residues of the levels computed here. These are the
training step's values; evaluation, testing, fusion and every exported network use the eager functions,
which compute N2D2's own float order (``tests/quant/test_quant_kernels.py`` checks both relations). The
backward recomputes the levels from ``x`` instead of saving them: two fewer activation-sized tensors per
quantizer kept between forward and backward.

The SAT weight quantizer's training step is compiled the same way (:class:`qatrun.quant.sat.FusedSATWeightFunction`,
one call forward, one backward, per layer). Weight tensors are small, so this saves no memory traffic; it
saves operations. Standalone, a dozen eager operations on a small tensor cost about what one compiled call
costs (its guards and wrappers, ~20 us); inside a training step, right after the convolutions have filled
the caches with activations, each eager operation costs five to ten times its standalone time, and LeNet's
five SAT weight quantizers (85 operations) took 1.7 ms of a 9 ms step.

When. Only the training step uses the compiled kernels (input that requires a gradient): evaluation, test
and fusion run the eager code, with no compilation delay. ``QATRUN_KERNELS`` chooses:

* ``auto`` (default): compiled where ``torch.compile`` works, eager otherwise. The first compilation
  takes seconds (cached on disk by Inductor); a failure (no C++ compiler, no Triton) is reported once as a
  warning and the process goes on eager;
* ``compiled``: compiled, a failure is an error;
* ``eager``: never compiled (the unit tests' setting, where a compilation costs more than it saves).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from qatrun.errors import RunError
from qatrun.quant.rounding import round_half_away

MODES = ("auto", "compiled", "eager")
ENV = "QATRUN_KERNELS"
RECOMPILE_LIMIT = 256


# --------------------------------------------------------------------------------------------------
# The math, as plain tensor functions (what gets compiled)


def sat_act_forward(x: Tensor, alpha: Tensor, steps: int) -> Tensor:
    """SAT activation ``y = round(R (clip(x, 0, a) (1/a))) (a/R)``, ``a = |alpha|`` (the backward's levels,
    operation for operation)."""
    a = alpha.abs()
    level = round_half_away((torch.minimum(x.clamp(min=0), a) * (1 / a)) * steps)
    return level * (a / steps)


def sat_act_backward(x: Tensor, alpha: Tensor, grad: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """SAT activation gradients ``(dx, dalpha)`` from the input ``x`` and the output gradient."""
    a = alpha.abs()
    q = torch.minimum(x.clamp(min=0), a) * (1 / a)
    level = round_half_away(q * steps)
    grad_x = torch.where(torch.logical_and(x > 0, x <= a), grad, 0.0)
    local = torch.where(x >= a, 1.0, level * (1.0 / steps) - q)
    return grad_x, (grad * local).sum()


def lsq_forward(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """LSQ ``y = s round(clamp(x (1/s), Qn, Qp))``."""
    return step * round_half_away((x * (1 / step)).clamp(qn, qp))


def lsq_backward(x: Tensor, step: Tensor, grad: Tensor, qn: int, qp: int) -> tuple[Tensor, Tensor]:
    """LSQ gradients ``(dx, sum g dy/ds)`` (the step gradient before LSQ's gradient scale)."""
    v = x * (1 / step)
    level = round_half_away(v.clamp(qn, qp))
    grad_x = torch.where(torch.logical_and(v > qn, v < qp), grad, 0.0)
    local = torch.where(v <= qn, float(qn), torch.where(v >= qp, float(qp), level - v))
    return grad_x, (grad * local).sum()


# --------------------------------------------------------------------------------------------------
# Choosing and compiling


class _Kernels:
    """The compiled versions of the kernels, built on first use; eager after a failure in ``auto`` mode."""

    def __init__(self) -> None:
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._failed = False

    def mode(self) -> str:
        value = os.environ.get(ENV, "auto").strip() or "auto"
        if value not in MODES:
            raise RunError(f"{ENV}={value}: expected one of {', '.join(MODES)}")
        return value

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, compiled unless the mode is ``eager`` or compilation failed in ``auto``."""
        mode = self.mode()
        if mode == "eager" or (self._failed and mode == "auto"):
            return fn(*args)
        compiled = self._compiled.get(fn.__name__)
        if compiled is None:
            # One specialisation per dtype and per constant argument (Range, QuantMode...): a network has a
            # few, a process that trains several networks (the tests) more than dynamo's default of 8.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            compiled = self._compiled[fn.__name__] = torch.compile(fn, dynamic=True, fullgraph=True)
        try:
            return compiled(*args)
        except Exception as error:  # noqa: BLE001 - any backend failure (no C++ compiler, no Triton)
            if mode == "compiled":
                raise RunError(f"{ENV}=compiled: torch.compile failed: {type(error).__name__}: {error}") from error
            self._failed = True
            warnings.warn(
                f"qatrun: fused quantizer kernels unavailable ({type(error).__name__}: {error}); running the "
                f"eager kernels (set {ENV}=eager to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args)


KERNELS = _Kernels()


def fused_enabled() -> bool:
    """True unless ``QATRUN_KERNELS=eager`` (the training step then tries the compiled kernels)."""
    return KERNELS.mode() != "eager"


class FusedSATActivation(torch.autograd.Function):
    """``apply(x, alpha, steps) -> y``: :class:`qatrun.quant.sat.SATActivationFunction` on fused kernels.

    Saves only ``x`` and ``alpha`` for the backward, which recomputes the levels. The scalars (``|alpha|``,
    its reciprocal) are computed inside the compiled functions: each eager operation on a 0-dim tensor costs
    about as much as a kernel on a small activation.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, steps: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        ctx.steps = steps
        return KERNELS.run(sat_act_forward, x, alpha, steps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        grad_x, grad_alpha = KERNELS.run(sat_act_backward, x, alpha, grad.contiguous(), ctx.steps)
        return grad_x, grad_alpha, None


class FusedLSQ(torch.autograd.Function):
    """``apply(x, step, qn, qp) -> y``: :class:`qatrun.quant.lsq.LSQFunction` on fused kernels."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, step)
        ctx.bounds = (qn, qp)
        return KERNELS.run(lsq_forward, x, step, qn, qp)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, step = ctx.saved_tensors
        qn, qp = ctx.bounds
        grad_x, total = KERNELS.run(lsq_backward, x, step, grad.contiguous(), qn, qp)
        return grad_x, (total * (1 / math.sqrt(x.numel() * qp))).reshape(step.shape), None, None
