"""The two rounding rules N2D2's quantizer kernels use.

N2D2's CPU kernels round SAT weights with ``rintf`` (half to even) but SAT activations and LSQ with
``std::round`` (half away from zero); its CUDA kernels use ``rintf`` everywhere (reference/n2d2.md §5).
qatrun follows the CPU kernels, the ones that produced the golden data, on every device, so a network
computes the same on CPU and GPU. ``torch.round`` is half to even; :func:`round_half_away` is C's
``round``, computed exactly (``floor(x + 0.5)`` is not: ``0.49999997 + 0.5`` rounds up to ``1.0`` in
float32).
"""

from __future__ import annotations

import torch
from torch import Tensor


def round_half_even(x: Tensor) -> Tensor:
    """``rintf``: round to nearest, ties to even (``torch.round``)."""
    return torch.round(x)


def round_half_away(x: Tensor) -> Tensor:
    """C ``round``: round to nearest, ties away from zero, exact for every float."""
    magnitude = x.abs()
    whole = torch.floor(magnitude)
    # magnitude - whole is exact (both share the exponent range of magnitude), so the tie test is exact. The
    # steps run in place on the two temporaries (a new activation-sized tensor costs page faults on the CPU);
    # ge_ writes the test as 1.0 / 0.0 in the float dtype.
    up = magnitude.sub_(whole).ge_(0.5)
    return whole.add_(up).copysign_(x)
