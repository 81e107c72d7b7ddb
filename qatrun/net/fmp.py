"""FMP cell: fractional max-pooling (Graham, "Fractional Max-Pooling", 2014; reference/n2d2.md section 2.2).

A Pool shrinks a map by an integer factor; FMP shrinks it by a ratio ``ScalingRatio`` = alpha >= 1 that
need not be one, by pooling over regions whose sizes vary between floor(alpha) and ceil(alpha). Along one
axis of ``n`` input positions the output has ``m = max(1, floor(n / alpha + 1/2))`` positions, and the true
ratio ``a = n / m`` sets boundaries ``0 = b_0 < b_1 < ... < b_m = n``:

* pseudo-random (``PseudoRandom=1``, the default): ``b_i = floor(a (i + u)) - floor(a u)`` for one draw
  ``u`` in [0, 1) (since ``a m = n``, ``b_m = n`` exactly);
* random (``PseudoRandom=0``): the increments ``b_{i+1} - b_i`` are ``m`` values ``floor(a)`` or
  ``floor(a) + 1``, as many of the larger as make them sum to ``n``, in a random order.

Output ``i`` is the maximum over rows ``[b_i, b_{i+1} - 1]`` (``Overlapping=0``) or ``[b_i, b_{i+1}]``
(``Overlapping=1``, the default: neighbouring regions share their edge row; the last region stops at the
last row). Rows and columns draw their boundaries independently; one draw serves a whole batch and every
channel, as N2D2 draws once per pass.

Learning draws new regions for every batch: the randomness is the point of the method (it regularizes
like a data augmentation). Testing, fusion and the exports use one fixed set, so a trained network gives
one answer and its integer form computes the same function: the pseudo-random boundaries whose offset
``a u`` is 1/2, ``b_i = floor(a i + 1/2)`` (``a i`` rounded half up), the one arrangement symmetric about
the centre of the map. (Another offset shifts every region of every layer the same way. Measured on a small
MNIST network after two epochs: validation 92.9% with fresh draws, 91.0% with the centred regions, 82.2%
with the offset ``a u = 0.72`` that ``u = 1/2`` gives at ``a = 26/18``.)

Each region is written as a row of input indices, padded to the longest region by repeating its last
index (a maximum does not change when an element is repeated), so a pass is an ``index_select`` and a
maximum over the region axis: the same two steps the integer network and the ONNX files (Gather,
ReduceMax) use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qatrun.ini import REQUIRED, Key
from qatrun.net import mapping, pool
from qatrun.net.cells import NB_OUTPUTS, Built, CellType, Context, register

SCALING_RATIO = Key("ScalingRatio", "float", REQUIRED, "the factor each side shrinks by (>= 1, may be fractional)")
FMP_PARAMS = (
    Key("Overlapping", "bool", True, "neighbouring pooling regions share their edge row and column"),
    Key("PseudoRandom", "bool", True, "pseudo-random region boundaries (else a random order of region sizes)"),
)


def output_size(size: int, ratio: float) -> int:
    """The number of output positions along an axis of ``size`` inputs: ``size / ratio`` rounded half up."""
    return max(1, math.floor(size / ratio + 0.5))


def pseudo_random_bounds(size_in: int, size_out: int, u: float) -> list[int]:
    """``b_0 .. b_m`` of the pseudo-random sequence (``b_0 = 0``, ``b_m = size_in``)."""
    ratio = size_in / size_out
    bounds = [math.floor(ratio * (i + u)) - math.floor(ratio * u) for i in range(size_out)]
    return [*bounds, size_in]  # the exact end, free of the float product's rounding


def centred_bounds(size_in: int, size_out: int) -> list[int]:
    """``b_i = floor(a i + 1/2)`` with ``a = size_in / size_out``, in integers: the fixed regions."""
    return [(2 * i * size_in + size_out) // (2 * size_out) for i in range(size_out + 1)]


def random_bounds(size_in: int, size_out: int, generator: torch.Generator | None = None) -> list[int]:
    """``b_0 .. b_m`` from a random order of the region sizes floor(a) and floor(a) + 1."""
    small = size_in // size_out
    sizes = torch.full((size_out,), small, dtype=torch.long)
    sizes[: size_in - small * size_out] += 1
    sizes = sizes[torch.randperm(size_out, generator=generator)]
    return [0, *torch.cumsum(sizes, 0).tolist()]


def region_indices(bounds: list[int], size_in: int, overlapping: bool) -> Tensor:
    """(m, L) input indices of each region, padded by repeating each region's last index.

    Args:
        bounds: ``b_0 .. b_m``.
        size_in: the number of input positions.
        overlapping: regions include their upper boundary (clipped to the last position).
    """
    rows = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        last = min(stop, size_in - 1) if overlapping else stop - 1
        rows.append(list(range(start, last + 1)))
    longest = max(len(r) for r in rows)
    return torch.tensor([r + [r[-1]] * (longest - len(r)) for r in rows], dtype=torch.long)


def pool_regions(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The maximum of ``x`` (N, C, H, W) over the regions ``rows`` (m, L) x ``cols`` (k, L')."""
    y = x.index_select(2, rows.flatten())  # (N, C, m L, W)
    y = y.unflatten(2, tuple(rows.shape)).amax(3)  # (N, C, m, W)
    y = y.index_select(3, cols.flatten())  # (N, C, m, k L')
    return y.unflatten(3, tuple(cols.shape)).amax(4)  # (N, C, m, k)


class FractionalMaxPool(nn.Module):
    """N2D2's FMP cell (see the module note): random regions while learning, fixed ones otherwise.

    Args:
        in_hw: the input (H, W).
        out_hw: the output (H, W).
        overlapping: regions share their edges.
        pseudo_random: pseudo-random boundaries (else a random order of region sizes) while learning.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int], overlapping: bool, pseudo_random: bool) -> None:
        super().__init__()
        self.in_hw, self.out_hw = in_hw, out_hw
        self.overlapping, self.pseudo_random = overlapping, pseudo_random
        rows, cols = (
            region_indices(centred_bounds(n, m), n, overlapping) for n, m in zip(in_hw, out_hw)
        )
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def draw(self, size_in: int, size_out: int) -> Tensor:
        """The indices of one random draw of regions along one axis."""
        if self.pseudo_random:
            bounds = pseudo_random_bounds(size_in, size_out, torch.rand(()).item())
        else:
            bounds = random_bounds(size_in, size_out)
        return region_indices(bounds, size_in, self.overlapping)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return pool_regions(x, self.rows, self.cols)
        rows, cols = (self.draw(n, m).to(x.device) for n, m in zip(self.in_hw, self.out_hw))
        return pool_regions(x, rows, cols)

    def extra_repr(self) -> str:
        return (f"{self.in_hw[0]}x{self.in_hw[1]} -> {self.out_hw[0]}x{self.out_hw[1]}, "
                f"overlapping={self.overlapping}, pseudo_random={self.pseudo_random}")


def build_fmp(ctx: Context) -> Built:
    """Builds an FMP cell (channel-wise, like Pool)."""
    outputs = ctx.nb_outputs()
    ratio = ctx.read(SCALING_RATIO)
    if not ratio >= 1.0:
        raise ctx.error(SCALING_RATIO.name, f"expected a ratio of at least 1, found {ratio}")
    pool.check_channel_wise(ctx, outputs)
    overlapping, pseudo_random = (ctx.param(key) for key in FMP_PARAMS)
    _, height, width = ctx.shape
    out_hw = (output_size(height, ratio), output_size(width, ratio))
    module = FractionalMaxPool((height, width), out_hw, overlapping, pseudo_random)
    params = {key.name: value for key, value in zip(FMP_PARAMS, (overlapping, pseudo_random))}
    return Built(module, (outputs, *out_hw), params=params)


FMP_KEYS = (NB_OUTPUTS, SCALING_RATIO, *mapping.MAPPING_KEYS.values())

register(CellType("FMP", build_fmp, FMP_KEYS, FMP_PARAMS, inputs="concat", activation=""))
