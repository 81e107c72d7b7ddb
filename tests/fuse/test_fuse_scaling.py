"""Rescaling modes: the chosen multipliers and shifts, the integer arithmetic, and the error bounds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatrun.fuse.scaling import (
    RESCALING_MODES,
    Requant,
    approximate,
    error_bound_lsb,
    mode_bound_lsb,
    requantize,
    round_half_away,
    with_mode,
)

INTEGER_MODES = RESCALING_MODES[1:]

# (mode, scale, n2d2, (M, n)) worked by hand: M / 2^n approximates the scale.
APPROXIMATIONS = [
    ("Fixed-point16", 0.75, False, (24576, 15)),  # 0.75 * 2^15, M in [2^14, 2^15)
    ("Fixed-point16", 0.002, False, (16777, 23)),  # 2^-9 <= s < 2^-8: n = 14 + 9; round(16777.216)
    ("Fixed-point16", 3.0, False, (24576, 13)),
    ("Fixed-point16", 0.99999, False, (16384, 14)),  # round(32767.67) = 2^15 leaves the binade: halve
    ("Fixed-point16", 40000.0, False, (40000, 0)),  # s >= 2^14: an integer multiplier
    ("Fixed-point32", 0.75, False, (1610612736, 31)),
    ("Fixed-point16", 0.002, True, (131, 16)),  # N2D2: round(s 2^16), 16 fractional bits
    ("Fixed-point32", 0.002, True, (131, 16)),
    ("Single-shift", 0.3, False, (1, 2)),  # 0.25 (error 0.05) beats 0.5 (0.2)
    ("Single-shift", 0.4, False, (1, 1)),  # 0.5 (0.1) beats 0.25 (0.15)
    ("Single-shift", 5.0, False, (4, 0)),
    ("Double-shift", 0.75, False, (3, 2)),  # 2^-1 + 2^-2
    ("Double-shift", 0.3, False, (5, 4)),  # 2^-2 + 2^-4 = 0.3125 beats 2^-2 + 2^-5 = 0.28125
    ("Fixed-point16", 0.0, False, (0, 0)),
]


@pytest.mark.parametrize(("mode", "scale", "n2d2", "expected"), APPROXIMATIONS)
def test_approximations(mode: str, scale: float, n2d2: bool, expected: tuple[int, int]) -> None:
    m, n = approximate(torch.tensor([scale], dtype=torch.float64), mode, n2d2)
    assert (int(m[0]), int(n[0])) == expected


def test_floating_point_has_no_multiplier() -> None:
    assert approximate(torch.tensor([0.5]), "Floating-point") is None


def requant(mode: str = "Floating-point", scale=(0.5,), offset=(0.0,), lo=-10, hi=10, **kw) -> Requant:
    p = Requant("Floating-point", torch.tensor(scale, dtype=torch.float64), torch.tensor(offset, dtype=torch.float64),
                lo, hi, **kw)
    return with_mode(p, mode)


def test_rounding_rules() -> None:
    acc = torch.tensor([[1.0, 3.0, 5.0, -1.0, -3.0]])
    assert requantize(acc, requant(rounding="half_away")).tolist() == [[1, 2, 3, -1, -2]]
    assert requantize(acc, requant(rounding="half_even")).tolist() == [[0, 2, 2, 0, -2]]
    assert round_half_away(torch.tensor([0.49999997, -2.5, 2.5], dtype=torch.float32)).tolist() == [0.0, -3.0, 3.0]


def test_integer_arithmetic_rounds_half_up() -> None:
    # s = 0.75 = 3 / 2^2 exactly: y = (3 a + 2) >> 2 = floor(0.75 a + 0.5)
    p = requant("Double-shift", scale=(0.75,))
    assert (int(p.multiplier[0]), int(p.shift[0]), int(p.integer_offset()[0])) == (3, 2, 2)
    assert requantize(torch.tensor([[1.0, 2.0, 3.0, -1.0, -2.0]]), p).tolist() == [[1, 2, 2, -1, -1]]


def test_offset_and_saturation() -> None:
    p = requant(scale=(1.0,), offset=(0.25,), lo=0, hi=3)
    assert requantize(torch.tensor([[-5.0, 0.0, 1.0, 2.0, 9.0]]), p).tolist() == [[0, 0, 1, 2, 3]]
    fixed = requant("Fixed-point16", scale=(1.0,), offset=(0.25,), lo=0, hi=3)
    assert requantize(torch.tensor([[-5.0, 0.0, 1.0, 2.0, 9.0]]), fixed).tolist() == [[0, 0, 1, 2, 3]]


def test_n2d2_clip_before_scaling() -> None:
    p = Requant("Floating-point", torch.tensor([1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                0, 255, clip=torch.tensor([4.0], dtype=torch.float64), float32=True)
    assert requantize(torch.tensor([[-3.0, 2.0, 2.5, 9.0]]), p).tolist() == [[0, 2, 3, 4]]


def test_per_channel_parameters_broadcast() -> None:
    p = requant(scale=(1.0, 0.5), offset=(0.0, 1.0))
    acc = torch.tensor([[[[2.0]], [[2.0]]]])  # (N, C, H, W)
    assert requantize(acc, p).flatten().tolist() == [2, 2]


def test_unquantized_output_is_affine() -> None:
    p = Requant("None", torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), 0, 0)
    assert requantize(torch.tensor([[1.0, -3.0]]), p).tolist() == [[2.5, -5.5]]
    assert error_bound_lsb(p) == 0


@pytest.mark.parametrize(("mode", "bound"), [("Floating-point", 0), ("Fixed-point16", 1), ("Fixed-point32", 1),
                                             ("Single-shift", 87), ("Double-shift", 38)])
def test_documented_bounds_for_8bit_outputs(mode: str, bound: int) -> None:
    assert mode_bound_lsb(mode, 255) == bound


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(INTEGER_MODES),
    scales=st.lists(st.floats(1e-5, 4.0), min_size=1, max_size=4),
    offset_fraction=st.floats(-0.5, 0.5),
    hi=st.sampled_from([1, 15, 255]),
    seed=st.integers(0, 2**31 - 1),
)
def test_measured_error_within_bounds(mode: str, scales: list[float], offset_fraction: float, hi: int,
                                      seed: int) -> None:
    scale = torch.tensor(scales, dtype=torch.float64)
    exact = Requant("Floating-point", scale, scale * offset_fraction, 0, hi)
    approx = with_mode(exact, mode)
    # Random integer accumulators over the range that reaches every output level, and beyond.
    reach = ((hi + 2) / scale).ceil()
    gen = torch.Generator().manual_seed(seed)
    unit = torch.rand(2000, len(scales), generator=gen, dtype=torch.float64)
    acc = torch.round((unit * 2.4 - 1.2) * reach)  # (2000, C)
    measured = int((requantize(acc, approx) - requantize(acc, exact)).abs().max())
    bound = error_bound_lsb(approx)
    assert measured <= bound
    if max(scales) <= 1:
        assert bound <= mode_bound_lsb(mode, hi)
    if mode == "Fixed-point32":
        assert measured == 0  # 31-bit multipliers: an error needs v within 2^-23 of a tie


def test_relative_error_constants_hold() -> None:
    # Worst cases of the shift modes over a fine sweep of scales: 1/3 and 1/7.
    scales = torch.pow(2.0, torch.linspace(-12, 3, 20001, dtype=torch.float64))
    for mode, rho in (("Single-shift", 1 / 3), ("Double-shift", 1 / 7), ("Fixed-point16", 2.0**-15)):
        m, n = approximate(scales, mode)
        worst = float(((m.double() / torch.pow(2.0, n.double()) - scales).abs() / scales).max())
        assert worst <= rho + 1e-12 and worst > rho * 0.9, (mode, worst)
    assert math.isclose(1 / 3, 0.25 / 0.75)
