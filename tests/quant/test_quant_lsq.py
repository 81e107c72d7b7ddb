"""LSQ weights and activations: exact forward and backward against the plain reference, initialisation, files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import quant_reference as ref

from qatrun.errors import ConfigError, DataError
from qatrun.quant.lsq import (
    MIN_STEP,
    LSQActivationQuantizer,
    LSQActSpec,
    LSQWeightQuantizer,
    LSQWeightSpec,
    lsq_quantize,
    lsq_weight_bounds,
)


@pytest.mark.parametrize("steps,bounds", [(255, (-128, 127)), (15, (-8, 7)), (3, (-2, 1)), (4, (-2, 1))])
def test_weight_bounds_follow_n2d2(steps, bounds):
    assert lsq_weight_bounds(steps) == bounds == ref.lsq_weight_bounds(steps)


def _data(shape: tuple[int, ...], seed: int, scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# (role, range, step size)
LSQ_CASES = [
    (role, steps, step)
    for role in ("w", "a")
    for steps in (3, 15, 255)
    for step in (0.01, 0.1, 0.7)
]


@pytest.mark.parametrize("role,steps,step", LSQ_CASES)
def test_lsq_forward_and_backward_match_reference_exactly(role, steps, step):
    qn, qp = ref.lsq_weight_bounds(steps) if role == "w" else (0, steps)
    x = _data((4, 3, 2, 2), seed=steps, scale=0.5).requires_grad_()
    with torch.no_grad():  # ties (half away from zero), ends and beyond
        x.view(-1)[:6] = torch.tensor([0.5 * step, -2.5 * step, qp * step, qn * step, 0.0, 1e3], dtype=torch.float64)
    s = torch.tensor(step, dtype=torch.float64, requires_grad=True)
    grad = _data(x.shape, seed=11, scale=1.0)
    y = lsq_quantize(x, s, qn, qp)
    y.backward(grad)
    expected_y, expected_dx, expected_ds = ref.lsq(x.detach(), step, qn, qp, grad)
    assert np.array_equal(y.detach().numpy(), expected_y)
    assert np.array_equal(x.grad.numpy(), expected_dx)
    assert float(s.grad) == expected_ds


def test_lsq_rounds_ties_away_from_zero():
    y = lsq_quantize(torch.tensor([0.5, -0.5, 1.5, -2.5]), torch.tensor(1.0), -8, 7)
    assert y.tolist() == [1.0, -1.0, 2.0, -3.0]


def test_weight_step_initialises_from_the_first_weights():
    w = _data((6, 5), seed=1, scale=0.2)
    quantizer = LSQWeightQuantizer(LSQWeightSpec(range=15)).double()
    quantizer(w)
    assert float(quantizer.step.detach()) == float(2 * w.abs().mean() / math.sqrt(7))
    quantizer(w * 10)  # only the first forward initialises
    assert float(quantizer.step.detach()) == float(2 * w.abs().mean() / math.sqrt(7))


def test_activation_step_initialises_from_the_first_batch_unless_loaded():
    x = _data((2, 3, 4, 4), seed=2, scale=1.0).abs()
    quantizer = LSQActivationQuantizer(LSQActSpec(range=255)).double()
    quantizer(x)
    assert float(quantizer.step.detach()) == float(2 * x.abs().mean() / math.sqrt(255))
    loaded = LSQActivationQuantizer(LSQActSpec(range=255)).double()
    loaded.load_n2d2_file("relu1_QAct_LSQ_StepSize", torch.tensor([0.25]))
    loaded(x)
    assert float(loaded.step.detach()) == 0.25


def test_weight_step_from_file_is_kept_unlike_n2d2():
    quantizer = LSQWeightQuantizer(LSQWeightSpec(range=15))
    quantizer.load_n2d2_file("conv1_alphaW_LSQ", torch.tensor([0.125]))
    quantizer(torch.ones(3, 3))
    assert float(quantizer.step.detach()) == 0.125


def test_fixed_initial_step_without_opt_init():
    quantizer = LSQWeightQuantizer(LSQWeightSpec(range=15, step_size=0.5, opt_init=False))
    quantizer(torch.ones(3, 3))
    assert float(quantizer.step.detach()) == 0.5


def test_files_and_description():
    weights = LSQWeightQuantizer(LSQWeightSpec(range=15))
    acts = LSQActivationQuantizer(LSQActSpec(range=255))
    assert weights.describe() == "LSQ w4" and acts.describe() == "LSQ a8"
    assert list(weights.n2d2_files("conv1")) == ["conv1_alphaW_LSQ"]
    assert list(acts.n2d2_files("conv1")) == ["conv1_QAct_LSQ_StepSize"]
    with pytest.raises(DataError, match="_alphaW_LSQ"):
        weights.load_n2d2_file("conv1_QAct_LSQ_StepSize", torch.tensor([1.0]))
    with pytest.raises(DataError, match="positive"):
        acts.load_n2d2_file("conv1_QAct_LSQ_StepSize", torch.tensor([0.0]))


def test_integer_levels_times_step_are_the_fake_quantized_weights():
    w = _data((4, 4), seed=3, scale=0.3)
    quantizer = LSQWeightQuantizer(LSQWeightSpec(range=15)).double()
    levels, step = quantizer.integer_forward(w)
    assert levels.min() >= -8 and levels.max() <= 7
    assert torch.equal(levels * step, quantizer(w).detach())


@pytest.mark.parametrize(
    "cls,spec,message",
    [
        (LSQWeightSpec, dict(range=2), "Range >= 3"),
        (LSQActSpec, dict(range=0), "Range >= 1"),
        (LSQActSpec, dict(step_size=0.0), "StepSize must be > 0"),
    ],
)
def test_spec_rejects_bad_settings(cls, spec, message):
    with pytest.raises(ConfigError, match=message):
        cls(**spec)


LSQ_NET = """
[database]
Type=MNIST_IDX_Database

[env]
SizeX=28
SizeY=28
BatchSize=4

[conv1]
Input=env
Type=Conv
KernelDims=3 3
NbOutputs=2
ActivationFunction=Rectifier
QWeight=LSQ
QWeight.Range=15
QWeightSolver=SGD
QWeightSolver.LearningRate=0.1
QAct=LSQ
QAct.Range=15
QActSolver=SGD
QActSolver.LearningRate=0.1
QActSolver.Clamping=-5:5
ConfigSection=conv.config

[conv.config]
Solvers.Clamping=-0.5:0.5

[conv1.Target]
"""


def test_an_update_keeps_the_step_positive_so_its_file_loads_back(tmp_path):
    import qatrun
    from qatrun import train

    (tmp_path / "net.ini").write_text(LSQ_NET)
    network = qatrun.load(tmp_path / "net.ini", strict=False, kernels="eager")
    configs = {name: config for name, _, config in network.solvers}
    # The steps' solvers clamp at MIN_STEP from below, inside the INI's Clamping (its upper bound kept);
    # the layer's own weights keep the INI's bounds.
    assert (configs["conv1.QWeight.step"].clamp_min, configs["conv1.QWeight.step"].clamp_max) == (MIN_STEP, None)
    assert (configs["conv1.QAct.step"].clamp_min, configs["conv1.QAct.step"].clamp_max) == (MIN_STEP, 5.0)
    assert (configs["conv1.weight"].clamp_min, configs["conv1.weight"].clamp_max) == (-0.5, 0.5)
    gm = network.gm.train()
    gm(torch.rand(4, 1, 28, 28))  # initialises the steps
    optimizer = train.N2D2Optimizer(train.group_by_solver(network.solvers), 4)
    quantizers = [gm.get_submodule("conv1").weight_quantizer, gm.get_submodule("conv1_act").quantizer]
    for quantizer in quantizers:
        quantizer.step.grad = torch.tensor(1e6)  # an update far larger than the step
    optimizer.step()
    for quantizer in quantizers:
        assert float(quantizer.step.detach()) == float(torch.tensor(MIN_STEP))
        (name, value), = quantizer.n2d2_files("conv1").items()
        type(quantizer)(quantizer.spec).load_n2d2_file(name, value)  # what training wrote, the loader takes
