"""The integer-only network as modules that run: integer tensors in, exact accumulation, rescale, levels out.

Between layers, tensors are int64 levels. The accumulating layers (``IntConv2d``, ``IntLinear``,
``IntAdd``) compute in float64 on values that are integers: every product and partial sum of integers
below 2^53 in magnitude is exact in float64 whatever the summation order, so the result is the exact
integer accumulator, on CPU and GPU alike (torch has no integer convolution on GPU, and its CPU int64
convolution is an order of magnitude slower). Each layer checks at construction that its accumulator
bound ``max_c sum |W_c| max|q - z| + |b_c|`` stays below 2^53 (a bound of 2^31 is reported as an int32
accumulator, as hardware would need). ``Rescale`` turns the accumulator into the next levels
(:func:`qatrun.fuse.scaling.requantize`).

N2D2's flavour keeps N2D2's float32 weights and biases (integers under RINTF); its accumulators are
then float sums, as in N2D2, and its rescale works in float32.

Every module has ``describe()`` for the network summary, e.g. ``int9 w / int32 acc`` and ``u8 out``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qatrun.errors import RunError
from qatrun.fuse.integerize import Grid
from qatrun.fuse.scaling import Requant, requantize
from qatrun.net.fmp import FractionalMaxPool, pool_regions

EXACT_LIMIT = 2.0**53
INPUT_TOLERANCE = 1e-3  # |x * 255 - p| allowed for an input read as p / 255 in float32


def bits_label(lo: float, hi: float) -> str:
    """``u8`` for [0, 255], ``int9`` for [-255, 255]: the narrowest integer type holding [lo, hi]."""
    if lo >= 0:
        return f"u{max(1, math.ceil(math.log2(hi + 1)))}"
    magnitude = max(-lo, hi + 1)
    return f"int{math.ceil(math.log2(magnitude)) + 1}"


def storage_dtype(lo: int, hi: int) -> torch.dtype:
    """The smallest torch integer dtype holding [lo, hi]."""
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return torch.int64


def _is_integral(t: Tensor) -> bool:
    return bool((t == torch.round(t)).all()) if t.is_floating_point() else True


def _store(weight: Tensor) -> Tensor:
    """Integer weights in the smallest integer dtype; non-integer (N2D2) float weights as they are."""
    if weight.is_floating_point():
        return weight.clone()
    lo, hi = int(weight.min()), int(weight.max())
    return weight.to(storage_dtype(min(lo, 0), max(hi, 0)))


class _Accumulating(nn.Module):
    """Weights, bias and the input zero point of IntConv2d / IntLinear, and their bounds."""

    weight: Tensor
    bias: Tensor
    codes: Tensor | None
    mask: Tensor | None

    def _setup(
        self,
        weight: Tensor,
        bias: Tensor,
        input_zero: int,
        input_span: int,
        codes: tuple[Tensor, int, int, Tensor] | None,
        name: str,
    ) -> None:
        self.register_buffer("weight", _store(weight))
        self.register_buffer("bias", bias.double().clone())
        self.input_zero = int(input_zero)
        self.code_step = self.code_zero = 0
        if codes is not None:
            code_values, self.code_step, self.code_zero, mask = codes
            self.register_buffer("codes", _store(code_values))
            self.register_buffer("mask", mask.to(torch.uint8))
        else:
            self.codes = self.mask = None
        per_channel = weight.double().abs().reshape(weight.shape[0], -1).sum(dim=1)
        self.acc_bound = float((per_channel * input_span + bias.double().abs()).max()) if weight.numel() else 0.0
        if codes is not None:  # the two partial sums are bounded separately
            code_sum = code_values.double().abs().reshape(weight.shape[0], -1).sum(dim=1) * self.code_step
            mask_sum = mask.double().reshape(weight.shape[0], -1).sum(dim=1) * self.code_zero
            self.acc_bound = max(self.acc_bound, float(((code_sum + mask_sum) * input_span).max()))
        if self.acc_bound >= EXACT_LIMIT:
            raise RunError(f"{name}: accumulator bound {self.acc_bound:.3g} exceeds 2^53, float64 would not be exact")

    def _centred(self, x: Tensor) -> Tensor:
        # Real zero is the level z: subtracting it first makes zero padding pad with real zeros.
        return (x - self.input_zero).double() if self.input_zero else x.double()

    def describe(self) -> str:
        """``int9 w / int32 acc`` (``f32 w / f32 acc`` for N2D2's unrounded weights)."""
        if self.codes is not None:
            weights = f"{bits_label(0, float(self.codes.max()))} w ({self.code_step}k-{self.code_zero})"
        elif self.weight.is_floating_point() and not _is_integral(self.weight):
            return "f32 w / f32 acc"
        else:
            w = self.weight.double()
            weights = f"{bits_label(min(float(w.min()), 0), max(float(w.max()), 0))} w"
        acc = "int32" if self.acc_bound < 2.0**31 else "int64"
        return f"{weights} / {acc} acc"


class IntConv2d(_Accumulating):
    """Integer convolution: ``acc = conv(q - z_in, W) + b`` (exact, float64 holding integers).

    Args:
        weight: (O, C/groups, kH, kW) integer weights (int64; or N2D2's float32 values).
        bias: (O,) bias in accumulator units.
        stride, padding, dilation, groups: as ``nn.Conv2d`` (zero padding).
        input_zero: the input's zero point.
        input_span: ``max |q - z_in|`` of the input levels, for the accumulator bound.
        codes: unsigned weight codes ``(k, step, zero, mask)``: ``acc = step conv(x, k) - zero conv(x, mask)``.
        name: for error messages.
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        input_zero: int = 0,
        input_span: int = 255,
        codes: tuple[Tensor, int, int, Tensor] | None = None,
        name: str = "conv",
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self._setup(weight, bias, input_zero, input_span, codes, name)

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight.double(), None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) int levels -> (N, O, H', W') float64 integers
        x = self._centred(x)
        if self.codes is not None:
            acc = self.code_step * self._conv(x, self.codes) - self.code_zero * self._conv(x, self.mask)
        else:
            acc = self._conv(x, self.weight)
        return acc + self.bias.reshape(-1, 1, 1)

    def magnitude(self, x: Tensor) -> Tensor:
        """``conv(|q - z_in|, |W|) + |b|``: the size of the terms summed into each accumulator."""
        return self._conv(self._centred(x).abs(), self.weight.double().abs()) + self.bias.abs().reshape(-1, 1, 1)


class IntLinear(_Accumulating):
    """Integer fully connected layer: ``acc = (q - z_in) W^T + b`` (exact, float64 holding integers).

    Args:
        weight: (O, I) integer weights.
        bias: (O,) bias in accumulator units.
        input_zero: the input's zero point.
        input_span: ``max |q - z_in|``.
        codes: unsigned weight codes, as :class:`IntConv2d`.
        name: for error messages.
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        input_zero: int = 0,
        input_span: int = 255,
        codes: tuple[Tensor, int, int, Tensor] | None = None,
        name: str = "fc",
    ) -> None:
        super().__init__()
        self._setup(weight, bias, input_zero, input_span, codes, name)

    def forward(self, x: Tensor) -> Tensor:  # (N, I) int levels -> (N, O) float64 integers
        x = self._centred(x)
        if self.codes is not None:
            acc = self.code_step * F.linear(x, self.codes.double()) - self.code_zero * F.linear(x, self.mask.double())
        else:
            acc = F.linear(x, self.weight.double())
        return acc + self.bias

    def magnitude(self, x: Tensor) -> Tensor:
        """``|q - z_in| |W|^T + |b|``: the size of the terms summed into each accumulator."""
        return F.linear(self._centred(x).abs(), self.weight.double().abs()) + self.bias.abs()


class Rescale(nn.Module):
    """Accumulator -> levels: ``sat(round(clip(acc) * s + o))`` in the layer's rescaling mode.

    The parameters live in buffers (they follow ``.to(device)``); :attr:`params` rebuilds the
    :class:`~qatrun.fuse.scaling.Requant`.
    """

    def __init__(self, requant: Requant) -> None:
        super().__init__()
        self.mode, self.lo, self.hi = requant.mode, requant.lo, requant.hi
        self.rounding, self.float32 = requant.rounding, requant.float32
        self.register_buffer("scale", requant.scale.clone())
        self.register_buffer("offset", requant.offset.clone())
        for name in ("clip", "multiplier", "shift", "bias"):
            value = getattr(requant, name)
            self.register_buffer(name, None if value is None else value.clone())

    @property
    def params(self) -> Requant:
        """The rescale parameters."""
        return Requant(
            self.mode, self.scale, self.offset, self.lo, self.hi, self.clip, self.rounding, self.float32,
            self.multiplier, self.shift, self.bias,
        )

    def forward(self, acc: Tensor) -> Tensor:
        return requantize(acc, self.params)

    def describe(self) -> str:
        """``u8 out`` plus the mode (``Fixed-point16``), ``f64 out`` for unquantized logits."""
        if self.mode == "None":
            return "f64 out"
        return f"{bits_label(self.lo, self.hi)} out, {self.mode}"


class IntInput(nn.Module):
    """The network input ``x = p / 255`` in [0, 1] -> the integers ``p`` in [0, 255] (N2D2's ``x 255``).

    Raises:
        RunError: (in forward) an input off the 1/255 grid or outside [0, 1]: the integer network assumes
            images in [0, 1] made of 8-bit pixels, as N2D2's -qat-sat does.
    """

    def __init__(self, steps: int = 255) -> None:
        super().__init__()
        self.steps = steps

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) float -> int64
        p = x.double() * self.steps
        levels = torch.round(p)
        off_grid = float((p - levels).abs().max()) if p.numel() else 0.0
        if off_grid > INPUT_TOLERANCE or (p.numel() and (float(levels.min()) < 0 or float(levels.max()) > self.steps)):
            raise RunError(
                f"the integer network needs inputs p/{self.steps} with integer p in [0, {self.steps}] "
                f"(found values off that grid by up to {off_grid:.3g}/{self.steps}, range "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}]); N2D2's -qat-sat makes the same assumption: "
                "remove mean/std normalisation before fusing"
            )
        return levels.to(torch.int64)

    def describe(self) -> str:
        """``u8 in (x * 255)``."""
        return f"{bits_label(0, self.steps)} in (x * {self.steps})"


class IntMaxPool2d(nn.Module):
    """Max-pooling of integer levels (exact in float64; max commutes with the monotone rescales)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding
        self.dilation, self.ceil_mode = pool.dilation, pool.ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.max_pool2d(x.double(), self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return pooled.to(x.dtype)

    def describe(self) -> str:
        """``max``."""
        return "max"


class IntFractionalMaxPool(nn.Module):
    """Fractional max-pooling of integer levels over the fixed regions of the FMP cell (exact, as max-pooling)."""

    def __init__(self, pool: FractionalMaxPool) -> None:
        super().__init__()
        self.register_buffer("rows", pool.rows.clone())
        self.register_buffer("cols", pool.cols.clone())

    def forward(self, x: Tensor) -> Tensor:
        return pool_regions(x.double(), self.rows, self.cols).to(x.dtype)

    def describe(self) -> str:
        """``fractional max``."""
        return "fractional max"


class IntAdd(nn.Module):
    """Element-wise sum of integer tensors brought to one unit: ``acc = sum_i m_i (q_i - z_i)``.

    Args:
        multipliers: (n_inputs, C) per-input, per-channel multipliers (integers in the integer modes).
        zeros: the inputs' zero points.
    """

    def __init__(self, multipliers: Tensor, zeros: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("multipliers", multipliers.double().clone())
        self.zeros = tuple(zeros)

    def forward(self, *inputs: Tensor) -> Tensor:
        view = (-1,) + (1,) * (inputs[0].dim() - 2)  # (C,) -> (C, 1, 1) for images
        terms = [self.multipliers[i].view(view) * (x - z).double() for i, (x, z) in enumerate(zip(inputs, self.zeros))]
        return torch.stack(terms).sum(dim=0)

    def magnitude(self, *inputs: Tensor) -> Tensor:
        """``sum_i |m_i| |q_i - z_i|``: the size of the terms summed into each accumulator."""
        view = (-1,) + (1,) * (inputs[0].dim() - 2)
        terms = [self.multipliers[i].abs().view(view) * (x - z).double().abs()
                 for i, (x, z) in enumerate(zip(inputs, self.zeros))]
        return torch.stack(terms).sum(dim=0)

    def describe(self) -> str:
        """``sum of 2 (integer multipliers)``."""
        kind = "integer" if _is_integral(self.multipliers) else "float"
        return f"sum of {len(self.zeros)} ({kind} multipliers)"


class IntAvgPool2d(nn.Module):
    """Average pooling of integer levels.

    Exact flavour: the window *sum* of ``q - z`` (an integer), whose unit is the input unit divided by
    the window size, so the next layer absorbs the division into its rescale exactly. n2d2 flavour: the
    average itself (a float, as N2D2 computes it).

    Raises:
        RunError: a divisor that varies with the position (``ceil_mode``, ``count_include_pad=False``
            with padding, ``divisor_override``).
    """

    def __init__(self, pool: nn.AvgPool2d, input_zero: int, window_sum: bool, name: str = "pool") -> None:
        super().__init__()
        kernel = _pair(pool.kernel_size)
        padding = _pair(pool.padding)
        if pool.ceil_mode or pool.divisor_override or (any(padding) and not pool.count_include_pad):
            raise RunError(f"{name}: average pooling with a position-dependent divisor has no integer form")
        self.kernel_size, self.stride, self.padding = kernel, _pair(pool.stride or kernel), padding
        self.window = kernel[0] * kernel[1]
        self.input_zero, self.window_sum = int(input_zero), window_sum

    def output_grid(self, grid: Grid) -> Grid:
        """The grid of the output: unit / window for the sum, unchanged for the average."""
        if not self.window_sum:
            return replace(grid, integer=False)
        return Grid(grid.unit / self.window, (grid.lo - grid.zero) * self.window, (grid.hi - grid.zero) * self.window,
                    0, grid.range, grid.alpha)

    def forward(self, x: Tensor) -> Tensor:
        if self.window_sum:
            centred = (x - self.input_zero).double()
            total = F.avg_pool2d(centred, self.kernel_size, self.stride, self.padding, divisor_override=1)
            return total.to(torch.int64)
        return F.avg_pool2d(x.double(), self.kernel_size, self.stride, self.padding)

    def describe(self) -> str:
        """``sum of 4`` / ``average of 4``."""
        return f"{'sum' if self.window_sum else 'average'} of {self.window}"


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
