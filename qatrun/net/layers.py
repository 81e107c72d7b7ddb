"""Small layers that torch lacks, each the exact forward of an N2D2 cell or activation.

Every module here is thin: the arithmetic is a pure tensor function beside it, so tests compare the
function against the formula of reference/n2d2.md section 2 and the module only holds the constants.

Where qatrun differs from N2D2:

* ``MappedConv2d`` keeps a full ``(O, C, kH, kW)`` weight and multiplies it by a 0/1 ``mask`` buffer in
  forward, where N2D2 skips unconnected kernels; the masked entries get a zero gradient, so the trained
  network is the same. Parameter counts (``net.summarize``) count only the connected kernels.
* ``LogisticWithLoss`` is a sigmoid whose backward is the identity. N2D2's output cell sets
  ``diff = target - output`` and the activation passes it straight through, which is the gradient of binary
  cross-entropy on the logits; with the straight-through backward a squared-error loss on the sigmoid
  output gives that same gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ELEMWISE_OPS = ("Sum", "AbsSum", "EuclideanSum", "Prod", "Max")
RESIZE_MODES = ("Bilinear", "BilinearTF", "NearestNeighbor")


class MappedConv2d(nn.Conv2d):
    """A convolution where output ``o`` sees input channel ``c`` only if ``mask[o, c] == 1``.

    The partial connection table of N2D2's ``Mapping(<input>)=`` matrices (LeNet-5's conv2, for one).

    Args:
        in_channels: input channels C.
        out_channels: outputs O.
        kernel_size: ``(kH, kW)``.
        connectivity: ``(O, C)`` 0/1 tensor; stored expanded to the weight's shape as buffer ``mask``.
        stride: ``(sH, sW)``.
        padding: ``(pH, pW)``.
        dilation: ``(dH, dW)``.
        bias: whether the cell has biases.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        connectivity: Tensor,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias
        )
        assert connectivity.shape == (out_channels, in_channels), connectivity.shape
        mask = connectivity.to(self.weight.dtype)[:, :, None, None].expand_as(self.weight).contiguous()
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def elemwise(op: str, inputs: list[Tensor], weights: Tensor, shifts: Tensor) -> Tensor:
    """N2D2's ElemWise cell (docs/ini/layers.rst).

    ``Sum``: sum_i w_i T_i + s_i; ``AbsSum``: sum_i w_i |T_i|; ``EuclideanSum``: sqrt(sum_i (w_i T_i + s_i)^2);
    ``Prod``: prod_i T_i; ``Max``: max_i T_i.

    Args:
        op: one of ``ELEMWISE_OPS``.
        inputs: tensors of one shape, (N, C, H, W) or (N, C).
        weights: (n_inputs, C) coefficients w_i per input and channel.
        shifts: (n_inputs, C) shifts s_i per input and channel.
    """
    view = (-1,) + (1,) * (inputs[0].dim() - 2)  # (C,) -> (C, 1, 1) for images
    w = [weights[i].view(view) for i in range(len(inputs))]
    s = [shifts[i].view(view) for i in range(len(inputs))]
    if op == "Sum":
        return sum(w[i] * t + s[i] for i, t in enumerate(inputs))
    if op == "AbsSum":
        return sum(w[i] * t.abs() for i, t in enumerate(inputs))
    if op == "EuclideanSum":
        return torch.sqrt(sum((w[i] * t + s[i]) ** 2 for i, t in enumerate(inputs)))
    if op == "Prod":
        return math.prod(inputs[1:], start=inputs[0])
    if op == "Max":
        return torch.stack(inputs).amax(dim=0)
    raise AssertionError(op)


class ElemWise(nn.Module):
    """Element-wise combination of several inputs; the coefficients are constants, as in N2D2.

    Args:
        op: one of ``ELEMWISE_OPS``.
        weights: (n_inputs, C) coefficients.
        shifts: (n_inputs, C) shifts.
    """

    def __init__(self, op: str, weights: Tensor, shifts: Tensor) -> None:
        super().__init__()
        assert op in ELEMWISE_OPS, op
        self.op = op
        self.register_buffer("weights", weights.clone())
        self.register_buffer("shifts", shifts.clone())

    def forward(self, *inputs: Tensor) -> Tensor:
        return elemwise(self.op, list(inputs), self.weights, self.shifts)

    def extra_repr(self) -> str:
        return f"op={self.op}, inputs={self.weights.shape[0]}"


class Softmax(nn.Module):
    """N2D2's Softmax cell over channels, optionally by groups of ``group_size`` channels.

    With ``with_loss`` the cell passes the logits through: the loss (cross-entropy) applies the softmax,
    which is what N2D2's ``WithLoss=1`` gradient amounts to.

    Args:
        with_loss: pass the input through.
        group_size: 0 for one softmax over all channels, else the size of each channel group.
    """

    def __init__(self, with_loss: bool = False, group_size: int = 0) -> None:
        super().__init__()
        self.with_loss = with_loss
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        if self.with_loss:
            return x
        if self.group_size == 0:
            return torch.softmax(x, dim=1)
        n, c = x.shape[:2]
        grouped = x.reshape(n, c // self.group_size, self.group_size, *x.shape[2:])  # (N, G, g, ...)
        return torch.softmax(grouped, dim=2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"with_loss={self.with_loss}, group_size={self.group_size}"


class Scaling(nn.Module):
    """y = factor * x (N2D2's Scaling cell)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Reshape(nn.Module):
    """Reshapes each sample to ``shape`` = (C, H, W), keeping the batch dimension."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Permute(nn.Module):
    """Permutes the dimensions of an (N, C, H, W) tensor; ``perm[0]`` must be 0 (the batch)."""

    def __init__(self, perm: tuple[int, int, int, int]) -> None:
        super().__init__()
        assert perm[0] == 0, perm
        self.perm = tuple(perm)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.perm).contiguous()

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


def resize_bilinear_asymmetric(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TensorFlow's legacy bilinear resize (N2D2 ``BilinearTF``): source = dest * in / out, no half-pixel.

    Args:
        x: (N, C, H, W).
        size: (H_out, W_out).
    """

    def axis(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    y0, y1, fy = axis(x.shape[2], size[0])
    x0, x1, fx = axis(x.shape[3], size[1])
    rows = x[:, :, y0] * (1 - fy)[:, None] + x[:, :, y1] * fy[:, None]  # (N, C, H_out, W)
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


class Resize(nn.Module):
    """N2D2's Resize cell.

    Args:
        size: (H_out, W_out).
        mode: one of ``RESIZE_MODES``.
        align_corners: for ``Bilinear`` (N2D2's ``AlignCorners`` parameter, default 1).
    """

    def __init__(self, size: tuple[int, int], mode: str, align_corners: bool) -> None:
        super().__init__()
        assert mode in RESIZE_MODES, mode
        self.size = tuple(size)
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "Bilinear":
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=self.align_corners)
        if self.mode == "BilinearTF":
            return resize_bilinear_asymmetric(x, self.size)
        return F.interpolate(x, size=self.size, mode="nearest")

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}, align_corners={self.align_corners}"


def rectifier(x: Tensor, leak_slope: float, clipping: float) -> Tensor:
    """N2D2 ``Rectifier``: x if x > 0 else leak_slope * x, then min(., clipping) when clipping > 0."""
    y = torch.where(x > 0, x, x * leak_slope)
    return y.clamp(max=clipping) if clipping > 0 else y


class Rectifier(nn.Module):
    """Leaky and clipped ReLU (the cases ``nn.ReLU``/``nn.LeakyReLU``/``nn.Hardtanh`` do not cover alone)."""

    def __init__(self, leak_slope: float, clipping: float) -> None:
        super().__init__()
        self.leak_slope = leak_slope
        self.clipping = clipping

    def forward(self, x: Tensor) -> Tensor:
        return rectifier(x, self.leak_slope, self.clipping)

    def extra_repr(self) -> str:
        return f"leak_slope={self.leak_slope}, clipping={self.clipping}"


class ScaledTanh(nn.Module):
    """y = scale * tanh(alpha * x): N2D2 ``Tanh`` (scale 1) and ``TanhLeCun`` (1.7159 tanh(2x/3))."""

    def __init__(self, alpha: float, scale: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * torch.tanh(self.alpha * x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, scale={self.scale}"


class _SigmoidStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad  # N2D2 passes target - output through unchanged (see the module note)


class LogisticWithLoss(nn.Module):
    """Sigmoid forward, identity backward (N2D2 ``LogisticWithLoss``)."""

    def forward(self, x: Tensor) -> Tensor:
        return _SigmoidStraightThrough.apply(x)


class RunningStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm that normalises with its running statistics in training too.

    N2D2 with ``MovingAverageMomentum=0`` never updates the running statistics and uses them in every
    mode; plain ``nn.BatchNorm2d(momentum=0)`` would still normalise a training batch by its own statistics.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
