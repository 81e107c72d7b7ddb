"""Per-layer integerization against hand-worked values and plain fake-quantization formulas.

The hand-worked network (values computed on paper, written as literals):

    input p (1x3x3) = [[0, 51, 102], [153, 204, 255], [255, 0, 51]]        x = p/255
    conv 1->2, 2x2, weight levels J (unit 1/3: SAT Default R=3 levels (2k-3)/3), no bias
        J0 = [[3, -1], [1, -3]]      J1 = [[1, 1], [-1, 3]]
        acc0 = [[-510, -510], [510, 204]]   acc1 = [[510, 714], [102, 612]]      y = acc / 765
    BN, eps 0, var 4: gamma [-2, 3] -> f = [-1, 1.5]; beta [0.45, -0.25]; mean [0, 0.1]
        z0 = -y + 0.45 = [[1.1167, 1.1167], [-0.2167, 0.1833]]
        z1 = 1.5 (y - 0.1) - 0.25 = [[0.6, 1.0], [-0.2, 0.8]]
    SAT act alpha 1, R 15: k = round(15 clip(z, 0, 1))  ->  k0 = [[15, 15], [0, 3]], k1 = [[9, 15], [0, 12]]
    Integer form: channel 0 has f < 0 and is negated: J0' = [[-3, 1], [-1, 3]], b'0 = 0.45 * 765 = 344.25
        -> B0 = 344, s0 = 15/765 = 1/51, o0 = 0.25/51; channel 1: b'1 = (-0.25/1.5 - 0.1) 765 = -204,
        s1 = 1.5 * 15 / 765 = 1/34: (510 - 204)/34 = 9, (714 - 204)/34 = 15, (612 - 204)/34 = 12.
    Fc 8 -> 2, levels (unit 0.5) r0 = [1, 0, -1, 2, 0, 1, 0, -2], r1 = [-1, -1, 0, 0, 1, 1, 2, 0], bias
        [0.1, -0.05], input the levels above (unit 1/15): acc = [12, -6], y = acc/30 + b = [0.5, -0.25];
        b' = b * 30 = [3, -1.5] -> B = [3, -2] (rint), s = (1/30)/(2/7) = 7/60; SAT alpha 2, R 7:
        round(3.5 y) = [2, 0]. Without quantizer: logits in units of 1/30: acc + b' = [15, -7.5].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatrun.errors import RunError
from qatrun.fuse.integerize import (
    INPUT_GRID,
    N2D2_CORRECTION,
    ActQuant,
    BatchNormParams,
    FuseOptions,
    Grid,
    WeightQuant,
    add_layer,
    exact_layer,
    n2d2_conv_bn,
    n2d2_fc,
    sat_act,
)
from qatrun.fuse.intnet import IntAdd, IntConv2d, IntLinear
from qatrun.fuse.scaling import requantize

P = torch.tensor([[0, 51, 102], [153, 204, 255], [255, 0, 51]]).reshape(1, 1, 3, 3)
J = torch.tensor([[[[3, -1], [1, -3]]], [[[1, 1], [-1, 3]]]])
CONV = WeightQuant(J.float() / 3, J, torch.tensor(1 / 3, dtype=torch.float64), 3)
BN = BatchNormParams(torch.tensor([-2.0, 3.0]), torch.tensor([0.45, -0.25]), torch.tensor([0.0, 0.1]),
                     torch.tensor([4.0, 4.0]), 0.0)
ACT = sat_act(1.0, 15)
FC_LEVELS = torch.tensor([[1, 0, -1, 2, 0, 1, 0, -2], [-1, -1, 0, 0, 1, 1, 2, 0]])
FC = WeightQuant(FC_LEVELS.float() * 0.5, FC_LEVELS, torch.tensor(0.5, dtype=torch.float64), 3, method="LSQ")
FC_BIAS = torch.tensor([0.1, -0.05])
EXACT = FuseOptions()


def run_conv(layer, x=P):
    return requantize(IntConv2d(layer.weight, layer.bias, input_zero=0).forward(x), layer.requant)


def test_hand_worked_conv_bn_act_exact() -> None:
    layer = exact_layer(CONV, None, BN, ACT, INPUT_GRID, EXACT)
    assert layer.weight.tolist() == [[[[-3, 1], [-1, 3]]], [[[1, 1], [-1, 3]]]]
    assert layer.flipped.tolist() == [True, False]
    assert layer.bias.tolist() == [344, -204]
    assert layer.requant.scale.tolist() == pytest.approx([1 / 51, 1 / 34], rel=1e-7)
    assert layer.requant.offset.tolist() == pytest.approx([0.25 / 51, 0.0], abs=1e-6)  # float32 BN parameters
    acc = IntConv2d(layer.weight, layer.bias)(P)
    assert acc.tolist() == [[[[854, 854], [-166, 140]], [[306, 510], [-102, 408]]]]
    assert run_conv(layer).tolist() == [[[[15, 15], [0, 3]], [[9, 15], [0, 12]]]]
    assert (layer.out.unit, layer.out.lo, layer.out.hi) == (1 / 15, 0, 15)


def test_hand_worked_conv_bn_act_n2d2() -> None:
    # N2D2 (NONE): W' = s Wq, b' = s (beta/f - mu) 255, clip = s alpha 255 / f, scale = s f 15 / 255.
    layer = n2d2_conv_bn(CONV, None, BN, ACT, INPUT_GRID, FuseOptions(flavour="n2d2"))
    assert layer.weight.tolist() == np.float32([[[[-1, 1 / 3], [-1 / 3, 1]]], [[[1 / 3, 1 / 3], [-1 / 3, 1]]]]).tolist()
    assert layer.bias.tolist() == [np.float32(114.75), np.float32(-68.0)]
    assert layer.requant.clip.tolist() == [255.0, 170.0]
    assert layer.requant.scale.tolist() == [float(np.float32(1 / 17)), float(np.float32(22.5 / 255))]
    assert run_conv(layer).tolist() == [[[[15, 15], [0, 3]], [[9, 15], [0, 12]]]]


def test_hand_worked_fc_with_and_without_quantizer() -> None:
    grid = Grid(1 / 15, 0, 15, 0, 15, 1.0)
    levels = torch.tensor([[15, 15, 0, 3, 9, 15, 0, 12]])
    layer = exact_layer(FC, FC_BIAS, None, sat_act(2.0, 7), grid, EXACT)
    acc = IntLinear(layer.weight, layer.bias)(levels)
    assert layer.bias.tolist() == [3, -2] and acc.tolist() == [[15, -8]]
    assert layer.requant.scale.tolist() == pytest.approx([7 / 60, 7 / 60], rel=1e-12)
    assert requantize(acc, layer.requant).tolist() == [[2, 0]]
    logits = exact_layer(FC, FC_BIAS, None, None, grid, EXACT)
    out = requantize(IntLinear(logits.weight, logits.bias)(levels), logits.requant)
    assert logits.out is None and logits.out_unit == pytest.approx(1 / 30)
    assert out[0].tolist() == pytest.approx([15.0, -7.5], abs=1e-6)  # float32 biases


def test_n2d2_fc_formulas() -> None:
    # NONE: W' = Wq, scale = sf_out / sf_in; RINTF: W' = rint(levels K_w) with K_w = floor(R/2).
    w = WeightQuant(torch.tensor([[1.0, -1 / 3, 1 / 3]]) / 2, torch.tensor([[3, -1, 1]]),
                    torch.tensor(1 / 6, dtype=torch.float64), 3, scaling=2.0)
    grid = Grid(4 / 255, 0, 255, 0, 255, 4.0)
    act = sat_act(8.0, 255)
    none = n2d2_fc(w, None, act, grid, FuseOptions(flavour="n2d2"))
    assert none.weight.tolist() == np.float32([[0.5, -1 / 6, 1 / 6]]).tolist()
    assert none.requant.scale.tolist() == [0.5] and none.requant.clip.tolist() == [8 * 255 / 4]
    assert (none.requant.lo, none.requant.hi, none.has_bias) == (-128, 127, False)
    rintf = n2d2_fc(w, None, act, grid, FuseOptions(flavour="n2d2", weights_rounding="RINTF"))
    assert rintf.weight.tolist() == [[1.0, -0.0, 0.0]]  # rint(+-1/3), K_w = 1
    assert rintf.requant.scale.tolist() == [0.25]  # (sf_out / sf_in) / (S K_w)
    logits = n2d2_fc(w, torch.tensor([0.5]), None, grid, FuseOptions(flavour="n2d2"))
    assert logits.requant.clip is None and logits.requant.hi == 2**31 - 1
    assert logits.bias.tolist() == [0.5 * 255 / 4] and logits.requant.scale.tolist() == [4.0]  # R_in x logits


def test_n2d2_4bit_weights_special_case() -> None:
    # Range_w = 15 under RINTF: K_w = 15, corr = 2.0666..., R_in := 31 (reference/n2d2.md 6.2).
    k = torch.tensor([[[[0, 7], [8, 15]]]])
    w = WeightQuant((2 * k - 15).float() / 15, 2 * k - 15, torch.tensor(1 / 15, dtype=torch.float64), 15)
    bn = BatchNormParams(torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([1.0]), 0.0)
    grid = Grid(3 / 15, 0, 15, 0, 15, 3.0)
    rounding = "RINTF"
    layer = n2d2_conv_bn(w, None, bn, sat_act(6.0, 15), grid, FuseOptions("n2d2", "Floating-point", rounding,
                                                                        rounding, rounding))
    assert layer.weight.flatten().tolist() == [-15.0, -1.0, 1.0, 15.0]
    f, corr = 2.0, N2D2_CORRECTION
    assert layer.bias.tolist() == [float(np.float32(round((0.5 / f - 0.25) * (31 / 3.0) * 15 / corr)))]
    assert layer.requant.clip.tolist() == [float(round(np.float32(6.0 * 31 / (f * 3.0) * 15 / corr)))]
    assert layer.requant.scale.tolist() == [float(np.float32((3.0 / 31) * (15 / 6.0) * f / 15 * corr))]


def test_zero_variance_and_zero_gamma() -> None:
    bn = BatchNormParams(torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.3]), torch.tensor([0.0, 0.0]),
                         torch.tensor([0.0, 1.0]), 1e-5)
    # N2D2: var <= 1e-12 gives f = 0 and an output of 0; exact: f = 1/sqrt(eps) as the BatchNorm computes.
    n2d2 = n2d2_conv_bn(CONV, None, bn, ACT, INPUT_GRID, FuseOptions(flavour="n2d2"))
    assert n2d2.requant.scale[0] == 0 and n2d2.bias[0] == 0 and n2d2.requant.clip[0] == 0
    exact = exact_layer(CONV, None, bn, ACT, INPUT_GRID, EXACT)
    assert exact.requant.scale[0] == pytest.approx(15 / 765 / math.sqrt(1e-5))
    # gamma = 0: the channel outputs round(beta / unit) = round(0.3 * 15) = 5 whatever its input.
    out = run_conv(exact)
    assert out[0, 1].tolist() == [[5, 5], [5, 5]] and exact.weight[1].abs().sum() == 0


def test_unsigned_codes_compute_the_same_accumulator() -> None:
    k = torch.tensor([[[[0, 255], [128, 3]]], [[[200, 1], [77, 255]]]])
    mask = torch.tensor([[[[True, True], [False, True]]], [[[True, True], [True, True]]]])
    levels = (2 * k - 255) * mask
    w = WeightQuant(levels.float() / 255, levels, torch.tensor(1 / 255, dtype=torch.float64), 255, mask=mask)
    signed = exact_layer(w, None, BN, ACT, INPUT_GRID, EXACT)
    unsigned = exact_layer(w, None, BN, ACT, INPUT_GRID, FuseOptions(weight_codes="unsigned"))
    codes, step, zero, kept = unsigned.weight_codes
    assert (step, zero) == (2, 255) and int(codes.max()) <= 255 and int(codes.min()) >= 0
    assert torch.equal(codes[1], k[1]) and torch.equal(codes[0][mask[0]], (255 - k[0])[mask[0]])  # channel 0 flipped
    x = torch.randint(0, 256, (3, 1, 5, 5))
    plain = IntConv2d(signed.weight, signed.bias)(x)
    coded = IntConv2d(signed.weight, signed.bias, codes=unsigned.weight_codes)(x)
    assert torch.equal(plain, coded)
    assert "u8 w (2k-255)" in IntConv2d(signed.weight, signed.bias, codes=unsigned.weight_codes).describe()
    with pytest.raises(RunError, match="unsigned weight codes need SAT Default"):
        exact_layer(FC, None, None, ACT, INPUT_GRID, FuseOptions(weight_codes="unsigned"))


def test_weights_without_levels_are_refused() -> None:
    clamped = WeightQuant(torch.zeros(2, 3), None, torch.tensor(1.0, dtype=torch.float64), 255)
    with pytest.raises(RunError, match="ApplyQuantization=0"):
        exact_layer(clamped, None, None, ACT, INPUT_GRID, EXACT)


def test_options_are_validated() -> None:
    with pytest.raises(RunError, match="flavour must be one of exact, n2d2"):
        FuseOptions(flavour="N2D2")
    with pytest.raises(RunError, match="Double-shift"):
        FuseOptions(flavour="n2d2", rescaling="Double-shift")


def test_residual_sum_is_rescaled_to_the_first_branch() -> None:
    # x = 0.1 q1 + 0.25 (q2 - 2), Sum weights [1, 2], shifts [0.03, 0]: z = 0.1 q1 + 0.5 (q2 - 2) + 0.03,
    # then SAT alpha 3, R 30 (unit 0.1): k = round(z / 0.1) in [0, 30]:
    # (0, 2): 0.3 -> 0;  (7, 5): 22.3 -> 22;  (30, 12): 80.3 -> 30;  (3, 0): -6.7 -> 0;  (12, 4): 22.3 -> 22
    grids = [Grid(0.1, 0, 30), Grid(0.25, 0, 12, zero=2)]
    weights, shifts = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.03], [0.0]])
    q1, q2 = torch.tensor([[0, 7, 30, 3, 12]]), torch.tensor([[2, 5, 12, 0, 4]])
    for mode in ("Floating-point", "Fixed-point16", "Fixed-point32", "Single-shift", "Double-shift"):
        add = add_layer(grids, weights, shifts, sat_act(3.0, 30), FuseOptions(rescaling=mode))
        out = requantize(IntAdd(add.multipliers, add.zeros)(q1, q2), add.requant)
        assert out[0].tolist() == [0, 22, 30, 0, 22], mode
        assert add.requant.multiplier is None or float(add.multipliers.abs().sum()) * 12 < 2**31


def plain_fake_quant(x_levels, grid_in, levels, unit_w, bias, bn, act, relu=False):
    """The fake-quantized conv -> BN -> act in float64, element by element from the formulas."""
    x = (x_levels.double() - grid_in.zero) * grid_in.unit
    w = levels.double() * unit_w.reshape(-1, 1, 1, 1)
    y = torch.nn.functional.conv2d(x, w, bias.double())
    f = bn.gamma.double() / torch.sqrt(bn.var.double() + bn.eps)
    z = (y - bn.mean.double().reshape(-1, 1, 1)) * f.reshape(-1, 1, 1) + bn.beta.double().reshape(-1, 1, 1)
    if relu:
        z = z.clamp(min=0)
    v = z / act.unit
    rounded = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return (rounded + act.zero).clamp(act.lo, act.hi)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), zero=st.integers(0, 5), relu=st.booleans(),
       per_channel=st.booleans())
def test_exact_flavour_equals_plain_fake_quantization(seed: int, zero: int, relu: bool, per_channel: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    channels = 4
    levels = torch.randint(-7, 8, (channels, 2, 3, 3), generator=gen)
    unit_w = torch.rand(channels if per_channel else 1, generator=gen, dtype=torch.float64) * 0.2 + 0.01
    unit = unit_w if per_channel else unit_w.reshape(())
    w = WeightQuant((levels * unit_w.reshape(-1, 1, 1, 1)).float(), levels, unit, 15, method="MinMax")
    bias = torch.randn(channels, generator=gen)
    bn = BatchNormParams(torch.randn(channels, generator=gen) * 2, torch.randn(channels, generator=gen),
                         torch.randn(channels, generator=gen) * 0.1, torch.rand(channels, generator=gen) + 0.1, 1e-5)
    grid_in = Grid(0.05, 0, 15, zero)
    act = ActQuant(unit=0.02, lo=-3, hi=12, zero=3, rounding="half_away")
    x = torch.randint(0, 16, (2, 2, 6, 6), generator=gen)
    layer = exact_layer(w, bias, bn, act, grid_in, EXACT, relu)
    out = requantize(IntConv2d(layer.weight, layer.bias, input_zero=zero, input_span=15)(x), layer.requant)
    expected = plain_fake_quant(x, grid_in, levels, unit_w.expand(channels), bias, bn, act, relu)
    assert torch.equal(out.double(), expected)
