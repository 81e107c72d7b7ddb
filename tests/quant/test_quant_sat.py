"""SAT weights and activations: exact forward and backward against the plain reference, and N2D2's golden data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import quant_reference as ref

from qatrun.errors import ConfigError, DataError
from qatrun.quant.sat import (
    QUANT_MODES,
    SATActivationQuantizer,
    SATActSpec,
    SATWeightFunction,
    SATWeightQuantizer,
    SATWeightSpec,
    sat_activation,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "n2d2-lenet-8b"  # N2D2's numbers, shipped


def _weights(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.3
    w.view(-1)[0] = 0.0  # an unconnected-style zero weight: t = 0 sits on a rounding tie for odd R
    return w


# (range, mode, quantize, n_out or None for no scaling, integer levels)
SAT_WEIGHT_CASES = [
    (steps, mode, quantize, n_out, integer)
    for steps in (1, 2, 3, 15, 255)
    for mode in QUANT_MODES
    for quantize in (True, False)
    for n_out in (None, 12)
    for integer in (False, True)
    if not (mode in ("Symmetric", "Asymmetric") and steps < 2)
    and not (integer and not quantize)
]


@pytest.mark.parametrize("steps,mode,quantize,n_out,integer", SAT_WEIGHT_CASES)
def test_sat_weight_forward_and_backward_match_reference_exactly(steps, mode, quantize, n_out, integer):
    w = _weights((3, 2, 2, 2), seed=steps).requires_grad_()
    grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out, s = SATWeightFunction.apply(w, steps, mode, quantize, n_out, integer)
    out.backward(grad)
    expected, _, expected_s, _ = ref.sat_weight(w.detach(), steps, mode, quantize, n_out, integer)
    expected_grad = ref.sat_weight_grad(w.detach(), grad, steps, mode, quantize, n_out, integer)
    assert np.array_equal(out.detach().numpy(), expected)
    assert float(s) == expected_s
    assert np.array_equal(w.grad.numpy(), expected_grad)


def test_sat_default_range_1_maps_a_zero_weight_to_minus_one():
    # rint(0.5) = 0 (half to even, N2D2's rintf): the tie goes down, to the level -1 (reference §5).
    w = torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64)
    out, _ = SATWeightFunction.apply(w, 1, "Default", True, None, False)
    assert out.tolist() == [-1.0, 1.0, -1.0]


def test_sat_scale_and_tanh_max_carry_no_gradient():
    # With M and S detached, the gradient of sum(Wq) is elementwise: changing one weight's incoming
    # gradient changes that weight's gradient only.
    w = _weights((4, 3), seed=1).requires_grad_()
    quantizer = SATWeightQuantizer(SATWeightSpec(range=15, apply_scaling=True), n_out=4)
    grad = torch.zeros(4, 3, dtype=torch.float64)
    grad[1, 2] = 1.0
    quantizer(w).backward(grad)
    assert torch.count_nonzero(w.grad) == 1


def test_sat_integer_mode_equals_default_mode_up_to_rounding():
    w = _weights((5, 3, 3, 3), seed=3)
    spec = SATWeightSpec(range=15, apply_scaling=True)
    default = SATWeightQuantizer(spec, n_out=45)(w)
    levels, rescale = SATWeightQuantizer(SATWeightSpec(range=15, apply_scaling=True, integer=True), n_out=45)\
        .integer_forward(w)
    assert torch.all(levels == levels.round()) and levels.abs().max() <= 15
    assert torch.all(levels.remainder(2) == 1)  # Default levels 2k - R are odd for odd R
    torch.testing.assert_close(levels * rescale, default, rtol=1e-15, atol=0)


def test_sat_all_zero_weights_stay_finite():
    out, s = SATWeightFunction.apply(torch.zeros(4, 4, dtype=torch.float64), 15, "Default", True, 16, False)
    assert torch.isfinite(out).all() and float(s) == 1.0


@pytest.mark.parametrize(
    "spec,message",
    [
        (dict(range=0), "Range >= 1"),
        (dict(range=1, quant_mode="Symmetric"), "Range >= 2"),
        (dict(quant_mode="Asym"), "expected one of"),
        (dict(integer=True, apply_quantization=False), "ApplyQuantization=1"),
    ],
)
def test_sat_weight_spec_rejects_bad_settings(spec, message):
    with pytest.raises(ConfigError, match=message):
        SATWeightSpec(**spec)


# ----------------------------------------------------------------------------------------------------
# Activations

SAT_ACT_CASES = [(steps, alpha) for steps in (1, 3, 15, 255) for alpha in (1.0, 6.0, -2.5)]


@pytest.mark.parametrize("steps,alpha", SAT_ACT_CASES)
def test_sat_activation_forward_and_backward_match_reference_exactly(steps, alpha):
    generator = torch.Generator().manual_seed(steps)
    x = (torch.randn(4, 3, 5, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    with torch.no_grad():  # exact ties, ends and out-of-range values
        a = abs(alpha)
        x.view(-1)[:6] = torch.tensor([0.0, a, 1.5 * a / steps, 0.5 * a / steps, -1.0, 2 * a], dtype=torch.float64)
    a_param = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    y = sat_activation(x, a_param, steps)
    y.backward(grad)
    expected_y, expected_dx, expected_dalpha = ref.sat_activation(x.detach(), alpha, steps, grad)
    assert np.array_equal(y.detach().numpy(), expected_y)
    assert np.array_equal(x.grad.numpy(), expected_dx)
    assert float(a_param.grad) == expected_dalpha


def test_sat_activation_rounds_ties_away_from_zero():
    # N2D2's CPU kernel uses round(): R q = 0.5 and 1.5 go to 1 and 2 (torch.round would give 0 and 2).
    y = sat_activation(torch.tensor([0.5, 1.5, 2.5]), torch.tensor(3.0), 3)
    assert y.tolist() == [1.0, 2.0, 3.0]


def test_sat_activation_module_files_round_trip():
    quantizer = SATActivationQuantizer(SATActSpec(range=15, alpha=6.0))
    assert quantizer.describe() == "SAT a4"
    files = quantizer.n2d2_files("bn1")
    assert list(files) == ["bn1_QAct_SAT_Alpha"] and files["bn1_QAct_SAT_Alpha"].tolist() == [6.0]
    quantizer.load_n2d2_file("bn1_QAct_SAT_Alpha", torch.tensor([5.5]))
    assert float(quantizer.alpha.detach()) == 5.5
    with pytest.raises(DataError, match="expected 1 value"):
        quantizer.load_n2d2_file("bn1_QAct_SAT_Alpha", torch.tensor([1.0, 2.0]))
    with pytest.raises(DataError, match="_QAct_SAT_Alpha"):
        quantizer.load_n2d2_file("bn1_QAct_LSQ_StepSize", torch.tensor([1.0]))


# ----------------------------------------------------------------------------------------------------
# Golden data: what N2D2 itself computed (golden/n2d2-lenet-8b/README.md)


def _golden_weights(cell: str) -> torch.Tensor:
    # N2D2 reads the text into float32.
    return torch.tensor(np.loadtxt(GOLDEN / "weights_8b_SAT" / f"{cell}_weights.syntxt").astype(np.float32))


def _printed(values: torch.Tensor) -> list[str]:
    """As N2D2's ostream prints with the default precision: 6 significant digits (%g)."""
    return ["%.6g" % value for value in values.reshape(-1).tolist()]


@pytest.mark.parametrize("cell", ["conv1", "conv2", "conv3"])
def test_golden_conv_weights_are_the_sat_levels_n2d2_fused(cell):
    latent = _golden_weights(cell)
    w = latent.reshape(latent.shape[0], -1, 5, 5)
    quantizer = SATWeightQuantizer(SATWeightSpec(range=255), n_out=w.shape[0] * 25)
    wq = quantizer(w)
    # Levels L = (2k - 255)/255 with k in 0..255.
    k = (wq.double() * 255 + 255) / 2
    assert torch.all((k - k.round()).abs() < 1e-3) and k.min() >= 0 and k.max() <= 255
    expected = (GOLDEN / "fused_NONE" / f"{cell}_weights.syntxt").read_text().split()
    assert _printed(wq) == expected


@pytest.mark.parametrize("cell,n_out,scale", [("fc1", 84, "2.5716105"), ("fc2", 10, "0.7690127")])
def test_golden_fc_weights_are_levels_over_the_sequential_sat_scale(cell, n_out, scale):
    w = _golden_weights(cell)
    quantizer = SATWeightQuantizer(SATWeightSpec(range=255, apply_scaling=True), n_out=n_out)
    wq = quantizer(w)
    digits = len(scale.replace(".", "").lstrip("0"))  # as many as the README gives
    assert "%.*g" % (digits, float(quantizer.scale(w))) == scale
    expected = (GOLDEN / "fused_NONE" / f"{cell}_weights.syntxt").read_text().split()
    assert _printed(wq) == expected


def test_golden_fc1_needs_the_sequential_sum():
    # The same levels divided by a pairwise-summed S (torch.var) do not print as N2D2's file: the test
    # above can fail, and the sequential float32 sums are what makes it pass.
    w = _golden_weights("fc1")
    levels = SATWeightQuantizer(SATWeightSpec(range=255), n_out=84)(w)
    pairwise = torch.sqrt(84 * levels.var())
    expected = (GOLDEN / "fused_NONE" / "fc1_weights.syntxt").read_text().split()
    assert _printed(levels / pairwise) != expected


def _dat(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(np.array(path.read_text().split(), dtype=np.float64).reshape(shape))


def _param(name: str) -> torch.Tensor:
    return torch.tensor(np.loadtxt(GOLDEN / "weights_8b_SAT" / f"{name}.syntxt").astype(np.float32))


@pytest.mark.parametrize("stimulus", [0, 1])
def test_golden_bn1_activation_levels(stimulus):
    """conv1 (SAT weights) -> bn1 -> SAT activation reproduces every level N2D2 logged for bn1."""
    logged = GOLDEN / "outputs" / "fakequant" / f"stimulus{stimulus}"
    pixels = torch.round(_dat(logged / "env.dat", (1, 1, 32, 32)) * 255)  # env = p / 255, p integer
    x = pixels.float() / 255
    wq = SATWeightQuantizer(SATWeightSpec(range=255), n_out=150)(_golden_weights("conv1").reshape(6, 1, 5, 5))
    conv = F.conv2d(x, wq)
    bn = F.batch_norm(conv, _param("bn1_means"), _param("bn1_variances"), _param("bn1_scales"),
                      _param("bn1_biases"), training=False, eps=1e-5)
    alpha = float((GOLDEN / "weights_8b_SAT" / "bn1_QAct_SAT_Alpha.syntxt").read_text())
    y = sat_activation(bn, torch.tensor(alpha, dtype=torch.float32), 255)
    step = np.float32(alpha) / 255
    levels = (y[0].double() / float(step)).round()
    expected = (_dat(logged / "bn1.dat", (6, 28, 28)) / float(step)).round()
    assert torch.equal(levels, expected)


def test_sat_scale_off_the_numpy_path_is_the_same_scale():
    # Devices other than the CPU (and dtypes numpy lacks) take torch's float64 reductions instead.
    from qatrun.quant.sat import sat_scale

    wq = _weights((6, 7), seed=4)
    s_numpy = float(sat_scale(wq, 6))
    s_torch = float(sat_scale(wq.to(torch.bfloat16), 6))
    assert s_torch == pytest.approx(s_numpy, rel=1e-2)
