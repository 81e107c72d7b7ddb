"""Verification at rounding ties, on a hand-made residual network of 1x1 images (one pixel p / 255).

conv1 (SAT 4-bit, level 15: Wq = 1) -> bn1 -> SAT a4 (alpha 6) -> a;  conv2 (the same) on a -> bn2 -> SAT a4
(alpha 6) -> b;  a + b -> SAT a4 (alpha 12) -> Fc (SAT 8-bit, Wq = +1 and -1, biases -4 and 4) -> logits.

bn1's beta puts pixel 200 at 2.4e-7 below the tie 7.5 of bn1_act, where float32 rounds up; the sum's units
(0.4 + 0.4 -> 0.8) make every odd q_a + q_b an exact tie; bn2 has a gain of half a level per accumulator unit
(q_a = 8 gives 4.25), so a bias off by one moves bn2 levels. At pixel 200 float32 takes q_a = 8, q_b = 4,
sum 6, class 0; the exact network q_a = 7, q_b = 0, sum 3.5 -> 4, class 1. Expected levels are computed
here in plain decimal or integer arithmetic. Last, the exact rounding itself, on rationals: ties, their
neighbours 1e-30 away, saturation, zero points.
"""

from __future__ import annotations

from decimal import Decimal, getcontext
from fractions import Fraction

import fuse_golden
import pytest
import torch
from torch import Tensor, fx, nn

from qatrun.fuse import integerize, verify
from qatrun.fuse.verify import _exact_level
from qatrun.quant import (
    QuantConv2d,
    QuantizedActivation,
    QuantLinear,
    SATActivationQuantizer,
    SATActSpec,
    SATWeightQuantizer,
    SATWeightSpec,
)

PIXEL = 200
BETA1 = 1.699361801147461  # a float32: bn1 puts PIXEL at 7.5 - 2.4e-7 levels (search in float32 neighbours)
BN1 = {"weight": 1.7, "bias": BETA1, "running_mean": 0.1, "running_var": 0.8}
BN2 = {"weight": 7.5, "bias": 0.2, "running_mean": 3.0, "running_var": 1.0}  # v = 7.5 (q_a - 7.5) + 1/2
EPS = 1e-5


def _sat_conv(steps: int) -> QuantConv2d:
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)  # tanh(1)/max|tanh| = 1: the top level, J = R
    return QuantConv2d.from_float(conv, SATWeightQuantizer(SATWeightSpec(range=steps), n_out=1))


def _bn(values: dict[str, float]) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(1, eps=EPS)
    with torch.no_grad():
        for name, value in values.items():
            getattr(bn, name).fill_(value)
    return bn


def _act(alpha: float) -> QuantizedActivation:
    return QuantizedActivation(nn.Identity(), SATActivationQuantizer(SATActSpec(range=15, alpha=alpha)))


class TieNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.bn1_act = _sat_conv(15), _bn(BN1), _act(6.0)
        self.conv2, self.bn2, self.bn2_act = _sat_conv(15), _bn(BN2), _act(6.0)
        self.sum_act = _act(12.0)
        fc = nn.Linear(1, 2)
        with torch.no_grad():
            fc.weight.copy_(torch.tensor([[2.0], [-2.0]]))  # t = +1 and -1: levels 255 and -255, Wq = +1 and -1
            fc.bias.copy_(torch.tensor([-4.0, 4.0]))  # class 0 when the sum's value 0.8 q exceeds 4
        self.fc = QuantLinear.from_float(fc, SATWeightQuantizer(SATWeightSpec(range=255), n_out=2))

    def forward(self, x: Tensor) -> Tensor:
        a = self.bn1_act(self.bn1(self.conv1(x)))
        b = self.bn2_act(self.bn2(self.conv2(a)))
        return self.fc(torch.flatten(self.sum_act(a + b), 1))


@pytest.fixture(scope="module")
def net() -> fx.GraphModule:
    return fuse_golden.trace(TieNet().eval()).eval()


def pixels() -> Tensor:
    return torch.arange(256, dtype=torch.float32).reshape(256, 1, 1, 1) / 255


def integer_levels(int_gm: fx.GraphModule, names: tuple[str, ...]) -> dict[str, Tensor]:
    """The levels each named Rescale outputs on every pixel."""
    found: dict[str, Tensor] = {}
    handles = [int_gm.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: found.__setitem__(name, out.flatten())) for name in names]
    with torch.no_grad():
        int_gm(pixels())
    for handle in handles:
        handle.remove()
    return found


def bn1_exact(p: int) -> Decimal:
    """bn1's value at pixel p, in bn1_act levels (unit 6/15), to 60 digits: the plain reference."""
    getcontext().prec = 60
    d = {name: Decimal(float(torch.tensor(value, dtype=torch.float32))) for name, value in BN1.items()}
    z = d["weight"] * (Decimal(p) / 255 - d["running_mean"]) / (d["running_var"] + Decimal(EPS)).sqrt() + d["bias"]
    return z / (Decimal(6) / 15)


def test_float32_tie_differs_from_the_integer_network_and_is_explained(net: fx.GraphModule) -> None:
    exact = bn1_exact(PIXEL)
    assert Decimal("7.5") - Decimal("3e-7") < exact < Decimal("7.5")  # below the tie: level 7
    with torch.no_grad():
        fake_value = float(net.bn1_act(net.bn1(net.conv1(pixels()[PIXEL:PIXEL + 1]))))
    assert round(fake_value / 6.0 * 15, 4) == 8.0  # the premise: float32 rounds it up

    int_gm, report = integerize(net)
    assert float(report.layers[0].definition.weights.unit) == float(Fraction(1, 15))  # not float32(1/15)
    levels = integer_levels(int_gm, ("bn1_act", "bn2_act", "sum_act"))
    assert int(levels["bn1_act"][PIXEL]) == 7
    half_up = [int((bn1_exact(p) + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR")) for p in range(256)]
    assert levels["bn1_act"].tolist() == [min(max(level, 0), 15) for level in half_up]

    result = verify(net, int_gm, report, [pixels()])
    checks = {layer.name: layer for layer in result.layers}
    assert result.ok, str(result)
    assert result.differing_predictions == 0 and result.f32_differing_predictions == 1, str(result)
    assert checks["bn1_act"].f32_local_differing == 1 and checks["bn1_act"].f32_off_tie == 0
    assert checks["bn1_act"].local_differing == 0 and checks["bn1_act"].unexplained == 0
    assert all(layer.differing == 0 and layer.unexplained == 0 for layer in result.layers), str(result)
    assert "1 of 256 predictions differ" in str(result) and "0 of 256 predictions differ" in str(result)


def test_exact_ties_round_half_away_from_zero(net: fx.GraphModule) -> None:
    int_gm, report = integerize(net)
    levels = integer_levels(int_gm, ("bn1_act", "bn2_act", "sum_act"))
    q = (levels["bn1_act"] + levels["bn2_act"]).tolist()
    assert any(total % 2 for total in q)  # odd sums: (q_a + q_b) / 2 is a tie
    assert levels["sum_act"].tolist() == [min((total + 1) // 2, 15) for total in q]
    result = verify(net, int_gm, report, [pixels()])
    sum_check = next(layer for layer in result.layers if layer.name == "sum_act")
    assert sum_check.ties >= 1 and sum_check.unexplained == 0 and result.ok, str(result)


def test_a_bias_off_by_one_fails(net: fx.GraphModule) -> None:
    int_gm, report = integerize(net)
    with torch.no_grad():
        int_gm.conv2.bias += 1.0  # one accumulator unit: half a bn2 level
    result = verify(net, int_gm, report, [pixels()])
    check = next(layer for layer in result.layers if layer.name == "bn2_act")
    assert not result.ok and check.unexplained > 0 and "FAILED" in str(result)


def test_float32_spacing_fails(net: fx.GraphModule) -> None:
    """The integer network as it was with the quantizer's float32(1/15): PIXEL crosses the tie, a fault."""
    int_gm, report = integerize(net)
    with torch.no_grad():
        int_gm.bn1_act.scale *= float(torch.tensor(1 / 15, dtype=torch.float32)) * 15
    assert int(integer_levels(int_gm, ("bn1_act",))["bn1_act"][PIXEL]) == 8
    result = verify(net, int_gm, report, [pixels()])
    check = next(layer for layer in result.layers if layer.name == "bn1_act")
    assert not result.ok and check.unexplained == 1 and check.ties >= 1, str(result)


@pytest.mark.parametrize(
    ("x", "approx", "rounding", "zero", "lo", "hi", "level"),
    [
        (Fraction(5, 2), 2.5, "half_away", 0, 0, 15, 3),
        (Fraction(-5, 2), -2.5, "half_away", 0, -10, 10, -3),
        (Fraction(5, 2), 2.5, "half_even", 0, 0, 15, 2),
        (Fraction(7, 2), 3.5, "half_even", 0, 0, 15, 4),
        (Fraction(5, 2) - Fraction(1, 10**30), 2.5, "half_away", 0, 0, 15, 2),  # below the tie, float says tie
        (Fraction(5, 2) + Fraction(1, 10**30), 2.5, "half_even", 0, 0, 15, 3),
        (Fraction(7), 0.0, "half_away", 0, 0, 15, 7),  # a far-off start
        (Fraction(100), 15.0, "half_away", 0, 0, 15, 15),  # saturated
        (Fraction(-3), 0.0, "half_away", 0, 0, 15, 0),
        (Fraction(1, 2), 0.5, "half_away", 3, 0, 255, 4),  # zero point: round(x / u) + z
        (Fraction(-1, 2), -0.5, "half_away", 3, 0, 255, 2),
    ],
)
def test_exact_level(x: Fraction, approx: float, rounding: str, zero: int, lo: int, hi: int, level: int) -> None:
    def compare(t: Fraction) -> int:
        return (x > t) - (x < t)

    assert _exact_level(compare, approx, rounding, zero, lo, hi) == level
