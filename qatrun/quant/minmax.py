"""MinMax: the affine scheme of Jacob et al., with observed ranges and no learned parameter.

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (CVPR); the scheme of TensorFlow's ``FakeQuantWithMinMaxVars``, MindSpore's ``FakeQuantWithMinMax``,
MNN and PyTorch's ``FakeQuantize``. ``R = Range`` steps, observed range ``[lo, hi]``::

    asymmetric  lo = min(lo, 0), hi = max(hi, 0)                 (0 must be exactly representable)
                scale = (hi - lo) / R,  z = clamp(round(-lo / scale), 0, R),  levels q in [0, R]
                y = (clamp(round(x / scale) + z, 0, R) - z) scale
    symmetric   r = floor(R/2),  scale = max(|lo|, |hi|) / r,  z = 0,  levels q in [-r, r]
                y = clamp(round(x / scale), -r, r) scale
    backward    dx = g 1[(qmin - z) scale <= x <= (qmax - z) scale]   (straight-through inside the grid)

Weights use the current tensor's range (per tensor, or per output channel with ``PerChannel=1``).
Activations keep a running range, per tensor: ``Update=Maximum`` keeps the extremes seen so far,
``Update=MovingAverage`` does ``running = (1 - Momentum) running + Momentum batch`` (the first batch sets
it). ``Delay=N``: the first N training steps pass values through unchanged (the activation range is still
observed), a pure function of the step counter (:func:`minmax_active`). ``round`` is half to even, as
``torch.fake_quantize_per_tensor_affine``.

N2D2 has no MinMax quantizer; the keys are qatrun's own (design.md §4). The scale is at least the
dtype's machine epsilon, as in PyTorch's observers, so a zero range (all values 0) maps everything to
about 0. In evaluation, an activation quantizer that never saw a training batch quantizes with the range
of the current batch, without storing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from qatrun.errors import ConfigError, DataError
from qatrun.ini import Key
from qatrun.quant.kernels import EAGER, Kernels
from qatrun.quant.rounding import round_half_even
from qatrun.quant.spec import RANGE, QuantSpec, bits

UPDATES = ("Maximum", "MovingAverage")

SYMMETRIC = Key("Symmetric", "bool", False, "1: signed levels -r..r around 0 (r = floor(Range/2)); 0: affine")
PER_CHANNEL = Key("PerChannel", "bool", False, "1: one range per output channel")
DELAY = Key("Delay", "int", 0, "training steps that pass values through before quantization starts")
UPDATE = Key("Update", "enum", "MovingAverage", "how the activation range follows the batches", choices=UPDATES)
MOMENTUM = Key("Momentum", "float", 0.01, "weight of the new batch in the MovingAverage range")


@dataclass(frozen=True)
class MinMaxSpec(QuantSpec):
    """Settings shared by MinMax weights and activations.

    Attributes:
        range: number of steps R.
        symmetric: signed levels ``-r..r`` with zero point 0, else affine ``0..R``.
        delay: training steps before quantization starts.
    """

    symmetric: bool = False
    delay: int = 0

    METHOD: ClassVar[str] = "MinMax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.symmetric and self.range < 2:
            raise ConfigError("Symmetric=1 needs Range >= 2 (levels -floor(R/2)..floor(R/2))", key="Range")
        if self.delay < 0:
            raise ConfigError(f"Delay must be >= 0, found {self.delay}", key="Delay")


@dataclass(frozen=True)
class MinMaxWeightSpec(MinMaxSpec):
    """``QWeight=MinMax`` settings.

    Attributes:
        per_channel: one range per output channel.
    """

    per_channel: bool = False

    ROLE: ClassVar[str] = "w"
    KEYS: ClassVar[tuple[tuple[str, Key], ...]] = (
        ("range", RANGE), ("symmetric", SYMMETRIC), ("per_channel", PER_CHANNEL), ("delay", DELAY),
    )


@dataclass(frozen=True)
class MinMaxActSpec(MinMaxSpec):
    """``QAct=MinMax`` settings.

    Attributes:
        update: ``Maximum`` or ``MovingAverage``.
        momentum: weight of the new batch in the moving average, in (0, 1].
    """

    update: str = "MovingAverage"
    momentum: float = 0.01

    ROLE: ClassVar[str] = "a"
    KEYS: ClassVar[tuple[tuple[str, Key], ...]] = (
        ("range", RANGE), ("symmetric", SYMMETRIC), ("update", UPDATE), ("momentum", MOMENTUM), ("delay", DELAY),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update not in UPDATES:
            raise ConfigError(f"expected one of {', '.join(UPDATES)}, found {self.update!r}", key="Update")
        if not 0 < self.momentum <= 1:
            raise ConfigError(f"Momentum must be in (0, 1], found {self.momentum}", key="Momentum")


# --------------------------------------------------------------------------------------------------
# Pure tensor functions


def minmax_active(step: int, delay: int) -> bool:
    """Whether the quantizer quantizes at training step ``step`` (0-based): ``step >= delay``."""
    return step >= delay


def minmax_qparams(lo: Tensor, hi: Tensor, steps: int, symmetric: bool) -> tuple[Tensor, Tensor, int, int]:
    """Scale, zero point and level bounds for an observed range.

    Args:
        lo: observed minimum (any broadcastable shape).
        hi: observed maximum, same shape.
        steps: R.
        symmetric: signed symmetric levels.

    Returns:
        ``(scale, zero_point, qmin, qmax)``; ``zero_point`` holds integers (as floats).
    """
    if symmetric:
        half = steps // 2
        scale = torch.maximum(lo.abs(), hi.abs()) / half
        scale = scale.clamp(min=torch.finfo(scale.dtype).eps)
        return scale, torch.zeros_like(scale), -half, half
    lo = lo.clamp(max=0)
    hi = hi.clamp(min=0)
    scale = ((hi - lo) / steps).clamp(min=torch.finfo(lo.dtype).eps)
    zero_point = round_half_even(-lo / scale).clamp(0, steps)
    return scale, zero_point, 0, steps


def minmax_forward(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Affine fake quantization ``(clamp(round(x / scale) + z, qmin, qmax) - z) scale``."""
    level = (round_half_even(x / scale) + zero_point).clamp(qmin, qmax)
    return (level - zero_point) * scale


class MinMaxFunction(torch.autograd.Function):
    """``apply(x, scale, zero_point, qmin, qmax) -> y`` with a straight-through gradient inside the grid."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int
    ) -> Tensor:
        lo = (qmin - zero_point) * scale
        hi = (qmax - zero_point) * scale
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return minmax_forward(x, scale, zero_point, qmin, qmax)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


def minmax_quantize(x: Tensor, lo: Tensor, hi: Tensor, steps: int, symmetric: bool) -> Tensor:
    """Fake-quantizes ``x`` on the grid of the range ``[lo, hi]`` (constants: no gradient to them)."""
    scale, zero_point, qmin, qmax = minmax_qparams(lo.detach(), hi.detach(), steps, symmetric)
    return MinMaxFunction.apply(x, scale, zero_point, qmin, qmax)


def channel_range(x: Tensor, axis: int | None) -> tuple[Tensor, Tensor]:
    """``(min, max)`` of ``x``: over everything (``axis`` None, 0-dim results) or per index of ``axis``
    (results shaped to broadcast against ``x``)."""
    if axis is None:
        return x.detach().min(), x.detach().max()
    moved = x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return moved.min(dim=1).values.reshape(shape), moved.max(dim=1).values.reshape(shape)


# --------------------------------------------------------------------------------------------------
# Modules


class _MinMaxQuantizer(nn.Module):
    """Counts training steps in the ``step`` buffer for ``Delay``.

    ``kernels`` is held for the quantizer interface only: MinMax's few operations have no fused kernels.
    """

    PARAMETER_MIN: ClassVar[Mapping[str, float]] = {}

    def __init__(self, spec: MinMaxSpec, kernels: Kernels) -> None:
        super().__init__()
        self.spec = spec
        self.kernels = kernels
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def _active_then_count(self) -> bool:
        active = minmax_active(int(self.step), self.spec.delay)
        if self.training:
            self.step += 1
        return active

    def describe(self) -> str:
        """``MinMax w8`` / ``MinMax a8``."""
        return f"MinMax {self.spec.ROLE}{bits(self.spec)}"

    def n2d2_files(self, cell_name: str) -> dict[str, Tensor]:
        """MinMax has no N2D2 counterpart: its state lives in the checkpoint only."""
        return {}

    def load_n2d2_file(self, stem: str, tensor: Tensor) -> None:
        """No N2D2 file belongs to a MinMax quantizer."""
        raise DataError(f"{stem}: a MinMax quantizer has no N2D2 file")


class MinMaxWeightQuantizer(_MinMaxQuantizer):
    """MinMax on a layer's weights, from their current range.

    Args:
        spec: the ``QWeight`` settings.
        n_out: unused (the layer interface of weight quantizers).
        channel_axis: the weight axis of the output channels (for ``PerChannel=1``).
        kernels: unused (no fused kernels).
    """

    integer: ClassVar[bool] = False

    def __init__(
        self, spec: MinMaxWeightSpec, *, n_out: int = 0, channel_axis: int = 0, kernels: Kernels = EAGER
    ) -> None:
        super().__init__(spec, kernels)
        self.channel_axis = channel_axis if spec.per_channel else None

    def forward(self, w: Tensor) -> Tensor:
        if not self._active_then_count():
            return w
        lo, hi = channel_range(w, self.channel_axis)
        return minmax_quantize(w, lo, hi, self.spec.range, self.spec.symmetric)

    def integer_forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Integer levels ``q - z`` and the rescale (scale, per channel or 0-dim): ``Wq = levels * scale``."""
        lo, hi = channel_range(w, self.channel_axis)
        scale, zero_point, qmin, qmax = minmax_qparams(lo, hi, self.spec.range, self.spec.symmetric)
        level = (round_half_even(w.detach() / scale) + zero_point).clamp(qmin, qmax)
        return level - zero_point, scale


class MinMaxActivationQuantizer(_MinMaxQuantizer):
    """MinMax on activations, with a running per-tensor range (buffers ``running_min``, ``running_max``).

    Args:
        spec: the ``QAct`` settings.
        kernels: unused (no fused kernels).
    """

    def __init__(self, spec: MinMaxActSpec, *, kernels: Kernels = EAGER) -> None:
        super().__init__(spec, kernels)
        self.register_buffer("running_min", torch.zeros(()))
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("observed", torch.tensor(False))

    def _observe(self, x: Tensor) -> None:
        lo, hi = channel_range(x, None)
        spec = self.spec
        if not bool(self.observed):
            self.running_min.copy_(lo)
            self.running_max.copy_(hi)
            self.observed.fill_(True)
        elif spec.update == "Maximum":
            self.running_min.copy_(torch.minimum(self.running_min, lo.to(self.running_min.dtype)))
            self.running_max.copy_(torch.maximum(self.running_max, hi.to(self.running_max.dtype)))
        else:
            self.running_min.mul_(1 - spec.momentum).add_(spec.momentum * lo)
            self.running_max.mul_(1 - spec.momentum).add_(spec.momentum * hi)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self._observe(x)
        if not self._active_then_count():
            return x
        if bool(self.observed):
            lo, hi = self.running_min.to(x.dtype), self.running_max.to(x.dtype)
        else:
            lo, hi = channel_range(x, None)
        return minmax_quantize(x, lo, hi, self.spec.range, self.spec.symmetric)

    def extra_repr(self) -> str:
        return f"{self.spec}"
