"""N2D2's FMP cell (fractional max-pooling) against plain references: region boundaries, the pooling itself
as loops over the regions, torch's max-pooling where the ratio is an integer, learning's draws, the INI."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch.nn import functional as F

from qatrun import ini, net
from qatrun.errors import ConfigError
from qatrun.net.fmp import (
    FractionalMaxPool,
    centred_bounds,
    output_size,
    pool_regions,
    pseudo_random_bounds,
    random_bounds,
    region_indices,
)

SIZES = [(n, m) for n in (1, 2, 5, 7, 11, 17, 26, 32) for m in range(1, n + 1)]


def naive(x: torch.Tensor, row_bounds: list[int], col_bounds: list[int], overlapping: bool) -> torch.Tensor:
    """Loops over the regions of the module note: output (i, j) is the max of rows [b_i, b_i+1 - 1] (or to
    b_i+1, clipped to the last row) and the same columns."""
    h, w = x.shape[2:]
    out = torch.empty(*x.shape[:2], len(row_bounds) - 1, len(col_bounds) - 1, dtype=x.dtype)

    def span(bounds: list[int], k: int, size: int) -> range:
        last = min(bounds[k + 1], size - 1) if overlapping else bounds[k + 1] - 1
        return range(bounds[k], last + 1)

    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            rows, cols = span(row_bounds, i, h), span(col_bounds, j, w)
            out[:, :, i, j] = x[:, :, rows.start:rows.stop, cols.start:cols.stop].amax(dim=(2, 3))
    return out


@pytest.mark.parametrize(("n", "m"), SIZES)
@pytest.mark.parametrize("u", [0.0, 0.5, 0.999999])
def test_pseudo_random_bounds_partition_the_axis(n: int, m: int, u: float) -> None:
    bounds = pseudo_random_bounds(n, m, u)
    steps = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == m + 1
    assert set(steps) <= {n // m, math.ceil(n / m)}, steps  # region sizes floor(a) or ceil(a)
    assert min(steps) >= 1


@pytest.mark.parametrize(("n", "m"), SIZES)
def test_the_fixed_regions_are_centred(n: int, m: int) -> None:
    bounds = centred_bounds(n, m)
    assert bounds == [math.floor(Fraction(i * n, m) + Fraction(1, 2)) for i in range(m + 1)]  # a i rounded half up
    if not any(Fraction(i * n, m).denominator == 2 for i in range(m + 1)):  # no a i halfway between integers:
        assert [n - b for b in reversed(bounds)] == bounds  # symmetric about the centre of the map
        assert bounds == pseudo_random_bounds(n, m, m / (2 * n))  # the pseudo-random draw of offset a u = 1/2


@pytest.mark.parametrize(("n", "m"), SIZES)
def test_random_bounds_use_each_size_as_often_as_the_sum_needs(n: int, m: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + m)
    steps = [b - a for a, b in zip(*(lambda b: (b[:-1], b[1:]))(random_bounds(n, m, gen)))]
    assert sum(steps) == n and len(steps) == m
    assert sorted(steps) == [n // m] * (m - n % m) + [n // m + 1] * (n % m)


def test_random_bounds_are_shuffled() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = {tuple(random_bounds(26, 18, gen)) for _ in range(20)}
    assert len(draws) > 10


@pytest.mark.parametrize("overlapping", [False, True])
@pytest.mark.parametrize(("h", "w", "oh", "ow"), [(26, 26, 18, 18), (17, 11, 12, 8), (5, 7, 4, 4), (9, 9, 1, 1)])
def test_pooling_equals_loops_over_the_regions(h: int, w: int, oh: int, ow: int, overlapping: bool) -> None:
    x = torch.randn(3, 4, h, w, generator=torch.Generator().manual_seed(h * w))
    for u in (0.1, 0.5, 0.9):
        rb, cb = pseudo_random_bounds(h, oh, u), pseudo_random_bounds(w, ow, u)
        got = pool_regions(x, region_indices(rb, h, overlapping), region_indices(cb, w, overlapping))
        assert torch.equal(got, naive(x, rb, cb, overlapping))


def test_a_ratio_of_two_without_overlap_is_max_pooling() -> None:
    x = torch.randn(2, 3, 12, 16)
    module = FractionalMaxPool((12, 16), (6, 8), overlapping=False, pseudo_random=True).eval()
    assert torch.equal(module(x), F.max_pool2d(x, 2))
    # ... and a ratio of one is the identity
    assert torch.equal(FractionalMaxPool((12, 16), (12, 16), False, True).eval()(x), x)


def test_overlapping_regions_with_a_ratio_of_two_are_a_3x3_window_of_stride_2() -> None:
    x = torch.randn(2, 3, 12, 12)
    module = FractionalMaxPool((12, 12), (6, 6), overlapping=True, pseudo_random=True).eval()
    reference = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-math.inf), 3, 2)  # the last region stops at the edge
    assert torch.equal(module(x), reference)


def test_testing_uses_the_fixed_regions_and_learning_draws_new_ones() -> None:
    module = FractionalMaxPool((26, 26), (18, 18), overlapping=True, pseudo_random=True)
    x = torch.randn(2, 3, 26, 26)
    module.eval()
    fixed = naive(x, centred_bounds(26, 18), centred_bounds(26, 18), True)
    assert torch.equal(module(x), fixed) and torch.equal(module(x), fixed)
    module.train()
    torch.manual_seed(3)
    u_rows, u_cols = torch.rand(()).item(), torch.rand(()).item()
    torch.manual_seed(3)
    learned = module(x)
    assert torch.equal(learned, naive(x, pseudo_random_bounds(26, 18, u_rows), pseudo_random_bounds(26, 18, u_cols),
                                      True))
    outputs = {module(x).sum().item() for _ in range(10)}
    assert len(outputs) > 1


def test_gradient_reaches_each_region_maximum_once() -> None:
    x = torch.randn(1, 1, 11, 11, requires_grad=True)
    module = FractionalMaxPool((11, 11), (7, 7), overlapping=False, pseudo_random=False).eval()
    module(x).sum().backward()
    # Disjoint regions tile the input: one maximum each, gradient 1 there and 0 elsewhere.
    assert x.grad is not None and x.grad.sum().item() == 49 and set(x.grad.unique().tolist()) == {0.0, 1.0}


FMP_INI = """
[sp]
SizeX=28
SizeY=28
NbChannels=3

[conv]
Input=sp
Type=Conv
KernelDims=3 3
NbOutputs=4

[fmp]
Input=conv
Type=FMP
NbOutputs=4
ScalingRatio={ratio}
{mapping}
{config}

[fmp.config]
{params}

[fc]
Input=fmp
Type=Fc
NbOutputs=10

[fc.Target]
"""


def build(ratio: str = "1.414", mapping: str = "Mapping.Size=1", params: str = "Overlapping=1",
          config: str = "ConfigSection=fmp.config") -> torch.fx.GraphModule:
    text = FMP_INI.format(ratio=ratio, mapping=mapping, params=params, config=config)
    return net.build(ini.loads(text, path="fmp.ini"), (3, 28, 28))


@pytest.mark.parametrize(("ratio", "side"), [("1.414", 18), ("2", 13), ("1", 26), ("1.6", 16), ("30", 1)])
def test_ini_fmp_output_size(ratio: str, side: int) -> None:
    gm = build(ratio)
    module = gm.get_submodule("fmp")
    assert isinstance(module, FractionalMaxPool)
    assert module.out_hw == (side, side) == (output_size(26, float(ratio)),) * 2
    assert gm.get_submodule("fc").in_features == 4 * side * side


def test_ini_fmp_parameters() -> None:
    module = build(params="Overlapping=0\nPseudoRandom=0").get_submodule("fmp")
    assert (module.overlapping, module.pseudo_random) == (False, False)
    module = build(config="").get_submodule("fmp")  # N2D2's defaults
    assert (module.overlapping, module.pseudo_random) == (True, True)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"ratio": "0.5"}, "fmp.ini:17: [fmp] ScalingRatio: expected a ratio of at least 1, found 0.5"),
    ({"mapping": ""}, "fmp.ini:13: [fmp] without Mapping keys N2D2 pools every output over all 4 channels; "
                      "qatrun pools channel-wise only: write Mapping.Size=1"),
    ({"params": "Overlap=1"}, "fmp.ini:22: [fmp.config] Overlap: Unknown parameter: Overlap (a FMP cell takes "
                              "Overlapping, PseudoRandom)"),
])
def test_ini_fmp_errors(kwargs: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(**kwargs)
    assert str(err.value).startswith(expected), str(err.value)
