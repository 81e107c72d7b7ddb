"""LSQ: learned step size quantization of weights and activations.

Esser et al. 2020, "Learned Step Size Quantization" (ICLR). One learned step s per layer and role,
``R = Range``::

    weights      Qn = -((R+1) >> 1),  Qp = (R-1) >> 1         R=255: [-128, 127],  R=15: [-8, 7]
    activations  Qn = 0,              Qp = R                  unsigned
    v = x / s,   y = s round(clamp(v, Qn, Qp))
    dx = g 1[Qn < v < Qp]                                      (strict at both ends, as N2D2)
    ds = g_s sum g (Qn if v <= Qn, Qp if v >= Qp, round(v) - v otherwise)
    g_s = 1 / sqrt(N Qp),  N = number of weights / number of activation values in the batch
    init (SetOptInitStepSize=1): s = 2 mean|x| / sqrt(Qp) at the first forward, else s = StepSize

Exactly as N2D2's CPU kernels (reference/n2d2.md §5.3, §5.4): ``round`` is half away from zero in the
forward and in the step gradient (its CUDA kernels use ``rint``; qatrun follows the CPU, on every device).

Where qatrun differs from N2D2:

* A step size loaded from ``<cell>_alphaW_LSQ`` (weights) is kept. N2D2 re-initialises it from the
  weights at the first forward whenever ``SetOptInitStepSize=1``, silently ignoring the file (a sentinel
  bug, §5.3). For activations both agree: a loaded step size is kept.
* With gradient accumulation N2D2's CPU kernel scales the accumulated part of ds twice; qatrun's gradient
  is the plain sum (autograd accumulates it).
* Weights need Range >= 3: below, ``Qp = 0`` and the step gradient scale ``1/sqrt(N Qp)`` is infinite.
* ``StepOptInitStepSize`` (the documentation's spelling) is accepted for ``SetOptInitStepSize``.

One definition per direction: :func:`lsq_forward` and :func:`lsq_backward` are the formulas above (the
backward without ``g_s``, which :class:`LSQFunction` applies). The autograd function hands them to the run's
:class:`~qatrun.quant.kernels.Kernels`, which computes them as they are (eager), compiled by
``torch.compile`` (GPU), or by their restatement in ``native.cpp`` (CPU training steps; the same values to
the bit, tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from qatrun.errors import ConfigError, DataError
from qatrun.ini import Key
from qatrun.quant.kernels import EAGER, Kernels
from qatrun.quant.rounding import round_half_away
from qatrun.quant.spec import RANGE, QuantSpec, bits

# The smallest step size an update leaves. An update can take the step below 0 (a large step gradient at a
# high learning rate); N2D2 trains on with it (its levels then mirror, Qn and Qp swapping roles). qatrun keeps
# it positive, as its files and the integer network need: the step's solver clamps it after each update
# (``PARAMETER_MIN``, read by ``qatrun.train.solver_triples``).
MIN_STEP = 1e-8

STEP_SIZE = Key("StepSize", "float", 100.0, "initial step size when SetOptInitStepSize=0")
OPT_INIT = Key(
    "SetOptInitStepSize", "bool", True, "initialise the step size to 2 mean|x| / sqrt(Qp) at the first forward",
    aliases=("StepOptInitStepSize",),
)


@dataclass(frozen=True)
class LSQSpec(QuantSpec):
    """``QWeight=LSQ`` / ``QAct=LSQ`` settings (use :class:`LSQWeightSpec` or :class:`LSQActSpec`).

    Attributes:
        range: number of steps R.
        step_size: initial step size when ``opt_init`` is False.
        opt_init: initialise the step from the data at the first forward.
    """

    step_size: float = 100.0
    opt_init: bool = True

    METHOD: ClassVar[str] = "LSQ"
    KEYS: ClassVar[tuple[tuple[str, Key], ...]] = (("range", RANGE), ("step_size", STEP_SIZE), ("opt_init", OPT_INIT))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.step_size > 0:
            raise ConfigError(f"StepSize must be > 0, found {self.step_size}", key="StepSize")

    @property
    def bounds(self) -> tuple[int, int]:
        """``(Qn, Qp)``, the integer range of the levels."""
        raise NotImplementedError


@dataclass(frozen=True)
class LSQWeightSpec(LSQSpec):
    """``QWeight=LSQ`` settings: signed levels ``[Qn, Qp]``."""

    ROLE: ClassVar[str] = "w"
    MIN_RANGE: ClassVar[int] = 3

    @property
    def bounds(self) -> tuple[int, int]:
        return lsq_weight_bounds(self.range)


@dataclass(frozen=True)
class LSQActSpec(LSQSpec):
    """``QAct=LSQ`` settings: unsigned levels ``[0, R]``."""

    ROLE: ClassVar[str] = "a"

    @property
    def bounds(self) -> tuple[int, int]:
        return 0, self.range


def lsq_weight_bounds(steps: int) -> tuple[int, int]:
    """N2D2's signed weight range: ``Qn = -((R+1) >> 1)``, ``Qp = (R-1) >> 1``."""
    return -((steps + 1) >> 1), (steps - 1) >> 1


def lsq_init_step(x: Tensor, qp: int) -> Tensor:
    """The LSQ paper's initial step ``2 mean|x| / sqrt(Qp)``."""
    return 2 * x.detach().abs().mean() / math.sqrt(qp)


def lsq_levels(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """The integer levels ``round(clamp(x / s, Qn, Qp))`` (half away from zero), as floats."""
    return round_half_away((x / step).clamp(qn, qp))


def lsq_forward(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """LSQ forward ``y = s round(clamp(x / s, Qn, Qp))``: the definition (and native.cpp's)."""
    return step * lsq_levels(x, step, qn, qp)


def lsq_backward(x: Tensor, step: Tensor, grad: Tensor, qn: int, qp: int) -> tuple[Tensor, Tensor]:
    """LSQ gradients ``(dx, sum g dy/ds)``, the step gradient before its scale ``g_s``: the definition
    (native.cpp's sums the step gradient in another order)."""
    v = x / step
    level = round_half_away(v.clamp(qn, qp))
    grad_x = torch.where((v > qn) & (v < qp), grad, 0.0)
    # round(v) - v inside; at or beyond the ends the level is Qn or Qp.
    local = torch.where(v <= qn, float(qn), torch.where(v >= qp, float(qp), level - v))
    return grad_x, (grad * local).sum()


class LSQFunction(torch.autograd.Function):
    """``apply(x, step, qn, qp, kernels=EAGER) -> y``: LSQ fake quantization with the scaled step gradient;
    ``kernels`` computes :func:`lsq_forward` and :func:`lsq_backward`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, step: Tensor, qn: int, qp: int, kernels: Kernels = EAGER
    ) -> Tensor:
        ctx.save_for_backward(x, step)
        ctx.bounds = (qn, qp)
        ctx.kernels = kernels
        return kernels.run(lsq_forward, x, step, qn, qp)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, step = ctx.saved_tensors
        qn, qp = ctx.bounds
        grad_x, total = ctx.kernels.run(lsq_backward, x, step, grad.contiguous(), qn, qp)
        grad_scale = 1 / math.sqrt(x.numel() * qp)
        return grad_x, (total * grad_scale).reshape(step.shape), None, None, None


def lsq_quantize(x: Tensor, step: Tensor, qn: int, qp: int, kernels: Kernels = EAGER) -> Tensor:
    """LSQ fake-quantized ``x``, differentiable in x and in the step as N2D2.

    A training step (gradient required) runs on ``kernels``; everything else on the eager definition.
    """
    return LSQFunction.apply(x, step, qn, qp, kernels.for_step(x, step))


class _LSQQuantizer(nn.Module):
    """A learned step ``step`` (0-dim parameter) and whether it holds a value yet (``initialized``)."""

    FILE_SUFFIX: ClassVar[str] = ""
    PARAMETER_MIN: ClassVar[Mapping[str, float]] = {"step": MIN_STEP}  # lower bounds the solver keeps

    def __init__(self, spec: LSQSpec, kernels: Kernels) -> None:
        super().__init__()
        self.spec = spec
        self.kernels = kernels
        self.step = nn.Parameter(torch.tensor(float(spec.step_size)))
        # Persistent, so a reloaded checkpoint keeps its learned step instead of re-initialising it.
        self.register_buffer("initialized", torch.tensor(not spec.opt_init))

    def forward(self, x: Tensor) -> Tensor:
        qn, qp = self.spec.bounds
        if not bool(self.initialized):
            with torch.no_grad():
                self.step.copy_(lsq_init_step(x, qp))
                self.initialized.fill_(True)
        return lsq_quantize(x, self.step.to(x.dtype), qn, qp, self.kernels)

    def describe(self) -> str:
        """``LSQ w4`` / ``LSQ a8``."""
        return f"LSQ {self.spec.ROLE}{bits(self.spec)}"

    def n2d2_files(self, cell_name: str) -> dict[str, Tensor]:
        """``{<cell><suffix>: step}`` (one number)."""
        return {cell_name + self.FILE_SUFFIX: self.step.detach().reshape(1)}

    def load_n2d2_file(self, stem: str, tensor: Tensor) -> None:
        """Sets the step size from N2D2's file and keeps it (no initialisation from the data).

        Raises:
            DataError: another file, or not exactly one positive number.
        """
        if not stem.endswith(self.FILE_SUFFIX):
            raise DataError(f"{stem}: an LSQ {self.spec.role_name} quantizer reads only *{self.FILE_SUFFIX} files")
        if tensor.numel() != 1 or not float(tensor.reshape(())) > 0:
            raise DataError(f"{stem}: expected 1 positive value (the LSQ step size), found {tensor.tolist()}")
        with torch.no_grad():
            self.step.copy_(tensor.reshape(()))
            self.initialized.fill_(True)

    def extra_repr(self) -> str:
        qn, qp = self.spec.bounds
        return f"range={self.spec.range}, levels=[{qn}, {qp}]"


class LSQWeightQuantizer(_LSQQuantizer):
    """LSQ for a layer's weights (N2D2 file ``<cell>_alphaW_LSQ``).

    Args:
        spec: the ``QWeight`` settings.
        n_out: unused (the layer interface of weight quantizers).
        channel_axis: unused (LSQ is per tensor).
        kernels: the training step's kernels (:func:`qatrun.quant.select_kernels`).
    """

    FILE_SUFFIX: ClassVar[str] = "_alphaW_LSQ"
    integer: ClassVar[bool] = False

    def __init__(
        self, spec: LSQWeightSpec, *, n_out: int = 0, channel_axis: int = 0, kernels: Kernels = EAGER
    ) -> None:
        super().__init__(spec, kernels)

    def integer_forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Integer levels in ``[Qn, Qp]`` and the rescale ``s`` (no gradient): ``Wq = levels * s``."""
        self(w)  # initialises the step on first use, as a forward would
        step = self.step.detach().to(w.dtype)
        return lsq_levels(w.detach(), step, *self.spec.bounds), step


class LSQActivationQuantizer(_LSQQuantizer):
    """LSQ for activations (N2D2 file ``<cell>_QAct_LSQ_StepSize``).

    Args:
        spec: the ``QAct`` settings.
        kernels: the training step's kernels (:func:`qatrun.quant.select_kernels`).
    """

    FILE_SUFFIX: ClassVar[str] = "_QAct_LSQ_StepSize"

    def __init__(self, spec: LSQActSpec, *, kernels: Kernels = EAGER) -> None:
        super().__init__(spec, kernels)
