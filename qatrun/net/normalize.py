"""Cells that normalise across channels: Normalize and LRN (reference/n2d2.md section 2.2).

``Normalize`` (``Norm=L1|L2``) divides each position's channel vector by its norm, as N2D2's
``NormalizeCell``: ``y[c] = x[c] / ||x[:, h, w]||`` with ``||v||_1 = sum |v_c|`` or
``||v||_2 = sqrt(sum v_c^2)``. A vector of norm 0 (all zero, a ReLU output where nothing fired) gives 0
rather than N2D2's division by zero. On an Fc output the vector is the whole output.

``LRN`` is the local response normalisation of AlexNet, as cuDNN computes it for N2D2's CUDA model:
``y[c] = x[c] / (K + Alpha / N * sum_{c' in window(c)} x[c']^2) ^ Beta`` over a window of ``N`` channels
centred on ``c`` (``torch.nn.LocalResponseNorm`` is the same function). Its parameters come from the
``ConfigSection``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qatrun.ini import REQUIRED, Key
from qatrun.net.cells import NB_OUTPUTS, Built, CellType, Context, register

NORM = Key("Norm", "enum", REQUIRED, "the norm each channel vector is divided by", ("L1", "L2"))
LRN_PARAMS = (
    Key("N", "int", 5, "channels in the window"),
    Key("Alpha", "float", 1e-4, "scale of the sum of squares (divided by N)"),
    Key("Beta", "float", 0.75, "exponent"),
    Key("K", "float", 2.0, "additive constant"),
)


def channel_normalize(x: Tensor, norm: str) -> Tensor:
    """``x`` divided by the L1 or L2 norm over dimension 1 (channels), 0 where the norm is 0.

    Args:
        x: (N, C, H, W) or (N, C).
        norm: ``L1`` or ``L2``.
    """
    size = x.abs().sum(dim=1, keepdim=True) if norm == "L1" else x.square().sum(dim=1, keepdim=True).sqrt()
    return torch.where(size > 0, x / torch.where(size > 0, size, torch.ones_like(size)), torch.zeros_like(x))


class Normalize(nn.Module):
    """N2D2's Normalize cell (see :func:`channel_normalize`)."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return channel_normalize(x, self.norm)

    def extra_repr(self) -> str:
        return f"norm={self.norm}"


def build_normalize(ctx: Context) -> Built:
    """Normalize: every channel vector to unit L1 or L2 norm."""
    ctx.nb_outputs(equal_to_channels=True)
    return Built(Normalize(ctx.read(NORM)), ctx.shape)


def build_lrn(ctx: Context) -> Built:
    """LRN across channels."""
    ctx.nb_outputs(equal_to_channels=True)
    size, alpha, beta, k = (ctx.param(key) for key in LRN_PARAMS)
    if size < 1:
        raise ctx.params.error("N", f"expected a positive window, found {size}")
    params = {key.name: value for key, value in zip(LRN_PARAMS, (size, alpha, beta, k))}
    return Built(nn.LocalResponseNorm(size, alpha, beta, k), ctx.shape, params=params)


register(CellType("Normalize", build_normalize, (NB_OUTPUTS, NORM), spatial=False, output="same"))
register(CellType("LRN", build_lrn, (NB_OUTPUTS,), LRN_PARAMS))
