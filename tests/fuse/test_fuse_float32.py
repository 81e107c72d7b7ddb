"""Floating-point32 rescaling (onnxruntime's QLinearConv requantization): the arithmetic against a plain
numpy reference, the split of the offset into a zero point and an integer bias, the error bound, the Sum's
branch multipliers, and the command line accepting the mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qatrun.cli import build_parser
from qatrun.errors import QatrunError, RunError
from qatrun.fuse import FuseOptions
from qatrun.fuse.integerize import Grid, add_layer, sat_act
from qatrun.fuse.scaling import Requant, error_bound_lsb, mode_bound_lsb, requantize, with_mode

MODE = "Floating-point32"


def reference(acc: np.ndarray, bias: np.ndarray, m: np.ndarray, zero: int, lo: int, hi: int) -> np.ndarray:
    """``clip(rint(float32(acc + B) * m) + z, lo, hi)`` with numpy: one float32 conversion, one float32
    product, ``np.rint`` rounds half to even."""
    v = (acc + bias).astype(np.float32) * m.astype(np.float32)
    return np.clip(np.rint(v).astype(np.int64) + zero, lo, hi)


def fp32(scale: list[float], zero: float, lo: int, hi: int, bias: list[int] | None = None) -> Requant:
    t = torch.tensor(scale, dtype=torch.float64)
    b = None if bias is None else torch.tensor(bias, dtype=torch.int64)
    return Requant(MODE, t.float().double(), torch.full_like(t, zero), lo, hi, rounding="half_even", bias=b)


# (accumulator, scale, zero point, lo, hi, expected level) worked by hand
CASES = [
    (5, 0.5, 0, 0, 255, 2),  # 2.5 -> 2: ties to even
    (7, 0.5, 0, 0, 255, 4),  # 3.5 -> 4
    (-5, 0.5, 0, -128, 127, -2),  # -2.5 -> -2
    (-3, 0.5, 10, 0, 255, 8),  # -1.5 -> -2, + 10
    (2**24 + 1, 2.0**-20, 0, 0, 255, 16),  # float32(2^24 + 1) = 2^24: 16.0, not 16.000000954 -> still 16
    (2**24 + 3, 2.0**-1, 0, 0, 2**30, 2**23 + 2),  # float32(2^24 + 3) = 2^24 + 4 (tie to even): 2^23 + 2
    (1000, 0.1, 0, 0, 15, 15),  # saturates
    (-1000, 0.1, 3, 0, 15, 0),
]


@pytest.mark.parametrize(("acc", "scale", "zero", "lo", "hi", "expected"), CASES)
def test_worked_cases(acc: int, scale: float, zero: int, lo: int, hi: int, expected: int) -> None:
    p = fp32([scale], zero, lo, hi)
    assert int(requantize(torch.tensor([[float(acc)]], dtype=torch.float64), p)) == expected


def test_against_numpy_on_ties_and_wide_accumulators() -> None:
    """Random per-channel scales, many of them powers of two (exact ties), accumulators beyond 2^24."""
    gen = np.random.default_rng(3)
    channels = 12
    m = np.where(np.arange(channels) % 2 == 0, 2.0 ** -gen.integers(0, 8, channels), gen.uniform(1e-4, 0.2, channels))
    m = m.astype(np.float32)
    bias = gen.integers(-2**25, 2**25, channels) * (np.arange(channels) % 3 == 0)
    acc = gen.integers(-3000, 3000, (500, channels))
    acc[:50] += gen.integers(2**24, 2**26, (50, channels))  # float32 conversion rounds there
    p = fp32(m.astype(np.float64).tolist(), 4, 0, 255, bias.tolist())
    got = requantize(torch.from_numpy(acc).double(), p).numpy()
    expected = reference(acc, bias, m, 4, 0, 255)
    assert np.array_equal(got, expected)
    v = (acc + bias).astype(np.float32) * m
    assert int((v - np.floor(v) == 0.5).sum()) > 100  # the ties are there


def test_with_mode_splits_the_offset() -> None:
    """o = 3.3 at s = 0.25: zero point 3, bias round(0.3 / 0.25) = 1; s = 0.1 rounds to float32."""
    exact = Requant("Floating-point", torch.tensor([0.25, 0.1], dtype=torch.float64),
                    torch.tensor([3.3, 3.04], dtype=torch.float64), 0, 15)
    p = with_mode(exact, MODE)
    assert p.offset.tolist() == [3.0, 3.0] and p.bias is not None and p.bias.tolist() == [1, 0]
    assert p.scale.tolist() == [0.25, float(np.float32(0.1))] and p.rounding == "half_even"
    no_offset = with_mode(Requant("Floating-point", torch.tensor([0.3], dtype=torch.float64),
                                  torch.zeros(1, dtype=torch.float64), 0, 15), MODE)
    assert no_offset.bias is None and no_offset.offset.tolist() == [0.0]


def test_error_bound() -> None:
    assert mode_bound_lsb(MODE, 255) == 1 and mode_bound_lsb(MODE, 15) == 1
    assert error_bound_lsb(fp32([0.9, 0.01], 0, 0, 255)) == 1
    assert error_bound_lsb(fp32([3.0], 0, 0, 255)) == 2  # s/2 = 1.5 levels from the integer bias


def test_measured_error_within_the_bound() -> None:
    """Against the exact float64 rescale with its sub-unit offset, on every accumulator that matters."""
    scale = torch.tensor([0.37, 0.9, 0.013], dtype=torch.float64)
    exact = Requant("Floating-point", scale, scale * torch.tensor([0.49, -0.3, 0.5], dtype=torch.float64), 0, 255,
                    rounding="half_away")
    approx = with_mode(exact, MODE)
    acc = torch.arange(-100, 20000, dtype=torch.float64).reshape(-1, 1).expand(-1, 3)
    diff = (requantize(acc, approx) - requantize(acc, exact)).abs()
    assert int(diff.max()) == 1 <= error_bound_lsb(approx)  # it does err: ties and the dropped offset


def test_sum_takes_int8_multipliers_where_cheap() -> None:
    """Branch ratios 1 and 0.7 (units 1 and 0.7) on 4-bit inputs: R = 64 and round(44.8) = 45 on 2^-6,
    error 15 |0.7 - 45/64| = 0.047 levels; on 8-bit inputs 255 |0.7 - 45/64| = 0.8 > 1/4: 16-bit R."""
    act = sat_act(alpha=15.0, steps=15)  # unit 1
    small = [Grid(1.0, 0, 15), Grid(0.7, 0, 15)]
    ones = torch.ones(2, 4, dtype=torch.float64)
    add = add_layer(small, ones, torch.zeros(2, 4), act, FuseOptions(rescaling=MODE))
    assert add.multipliers[:, 0].tolist() == [64.0, 45.0] and float(add.requant.scale[0]) == 2.0**-6
    assert add.error == pytest.approx(15 * abs(0.7 - 45 / 64))
    wide = [Grid(1.0, 0, 255), Grid(0.7, 0, 255)]
    add = add_layer(wide, ones, torch.zeros(2, 4), sat_act(255.0, 255), FuseOptions(rescaling=MODE))
    assert add.multipliers[:, 0].tolist() == [16384.0, 11469.0]  # 2^14, round(0.7 * 2^14 = 11468.8)


def test_int8_multipliers_never_round_out_of_int8() -> None:
    """A ratio of 1.999: 2^6 * 1.999 = 127.94 would round to 128; one bit less keeps it in int8."""
    grids = [Grid(1.999, 0, 15), Grid(1.0, 0, 15)]
    add = add_layer(grids, torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1), sat_act(15.0, 15),
                    FuseOptions(rescaling=MODE))
    assert add.multipliers[:, 0].tolist() == [64.0, 32.0]  # round(1.999 * 32) = 64, round(1 * 32) = 32


def test_n2d2_flavour_refuses_the_mode() -> None:
    with pytest.raises(RunError, match="Floating-point32"):
        FuseOptions(flavour="n2d2", rescaling=MODE)


def test_command_line_accepts_the_mode() -> None:
    args = build_parser().parse_args(["net.ini", "-qat-fuse", "-act-rescaling-mode", MODE])
    assert args.act_rescaling_mode == MODE
    with pytest.raises(QatrunError, match="invalid choice: 'Floating-point64'"):
        build_parser().parse_args(["net.ini", "-act-rescaling-mode", "Floating-point64"])


def test_huge_products_saturate() -> None:
    """v = 2^40 * 2^30 is far beyond int64: it still saturates to hi (and -v to lo)."""
    p = fp32([2.0**30], 0, 0, 15)
    acc = torch.tensor([[2.0**40], [-(2.0**40)]], dtype=torch.float64)
    assert requantize(acc, p)[:, 0].tolist() == [15, 0]
