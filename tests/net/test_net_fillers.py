"""Fillers: the distributions of reference/n2d2.md section 2.4 (seeded, large samples), and the fans
N2D2 uses for Conv, grouped Conv, Fc and bias tensors."""

from __future__ import annotations

import math

import pytest
import torch

from qatrun.net.fillers import DEFAULT_FILLER, Filler, sample, variance_n

N = 200_000  # samples: the standard error of a mean is std / 447


def draw(name: str, fan_in: int = 30, fan_out: int = 60, **params: object) -> torch.Tensor:
    torch.manual_seed(1)
    return sample(Filler(name, tuple(params.items())), (N,), fan_in, fan_out)


def test_constant() -> None:
    assert torch.equal(draw("ConstantFiller", Value=0.25), torch.full((N,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.5, 0.05), (-2.0, 3.0)])
def test_normal(mean: float, std: float) -> None:
    x = draw("NormalFiller", Mean=mean, StdDev=std)
    assert abs(float(x.mean()) - mean) < 5 * std / math.sqrt(N)
    assert abs(float(x.std()) / std - 1) < 0.01


def test_normal_defaults_to_unit_variance() -> None:
    x = draw("NormalFiller")
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.01


def test_default_filler_is_normal_005() -> None:
    assert DEFAULT_FILLER == Filler("NormalFiller", (("Mean", 0.0), ("StdDev", 0.05)))


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-3.0, -1.0)])
def test_uniform(low: float, high: float) -> None:
    x = draw("UniformFiller", Min=low, Max=high)
    assert low <= float(x.min()) < low + 0.001 and high - 0.001 < float(x.max()) <= high
    assert abs(float(x.mean()) - (low + high) / 2) < 0.01 * (high - low)
    assert abs(float(x.var()) / ((high - low) ** 2 / 12) - 1) < 0.02


@pytest.mark.parametrize("norm, n", [("FanIn", 30), ("FanOut", 60), ("Average", 45)])
def test_xavier_uniform(norm: str, n: float) -> None:
    x = draw("XavierFiller", VarianceNorm=norm, Distribution="Uniform", Scaling=2.0)
    bound = 2.0 * math.sqrt(3.0 / n)
    assert float(x.abs().max()) <= bound and float(x.abs().max()) > 0.999 * bound
    assert abs(float(x.var()) / (4.0 / n) - 1) < 0.02  # Var U(-b, b) = b^2 / 3 = Scaling^2 / n


@pytest.mark.parametrize("norm, n", [("FanIn", 30), ("FanOut", 60), ("Average", 45)])
def test_xavier_normal(norm: str, n: float) -> None:
    x = draw("XavierFiller", VarianceNorm=norm, Distribution="Normal", Scaling=1.0)
    assert abs(float(x.mean())) < 5 * math.sqrt(1 / n) / math.sqrt(N)
    assert abs(float(x.std()) / math.sqrt(1.0 / n) - 1) < 0.01


@pytest.mark.parametrize("norm, n, mean_norm", [("FanIn", 30, 0.0), ("FanOut", 60, 3.0), ("Average", 45, -1.5)])
def test_he(norm: str, n: float, mean_norm: float) -> None:
    x = draw("HeFiller", VarianceNorm=norm, MeanNorm=mean_norm, Scaling=0.5)
    std = 0.5 * math.sqrt(2.0 / n)
    assert abs(float(x.mean()) - 0.5 * mean_norm / n) < 5 * std / math.sqrt(N)
    assert abs(float(x.std()) / std - 1) < 0.01


def test_variance_n() -> None:
    assert (variance_n("FanIn", 9, 16), variance_n("FanOut", 9, 16), variance_n("Average", 9, 16)) == (9, 16, 12.5)


def _bound(weight: torch.Tensor) -> float:
    return float(weight.detach().abs().max())


# Xavier uniform with Scaling 1: |w| <= sqrt(3 / fan); with ~thousands of samples the max is within 2%.
@pytest.mark.parametrize(
    "keys, shape, attribute, fan",
    [
        # Conv 3x3, 8 -> 32: fan-in 9·8, fan-out 9·32
        ("KernelDims=3 3\nNbOutputs=32\nWeightsFiller.VarianceNorm=FanIn", (8, 6, 6), "weight", 9 * 8),
        ("KernelDims=3 3\nNbOutputs=32\nWeightsFiller.VarianceNorm=FanOut", (8, 6, 6), "weight", 9 * 32),
        # grouped: fan-in counts the channels of one group, fan-out all outputs
        ("KernelDims=3 3\nNbOutputs=32\nMapping.NbGroups=4\nWeightsFiller.VarianceNorm=FanIn", (8, 6, 6),
         "weight", 9 * 2),
        ("KernelDims=3 3\nNbOutputs=32\nMapping.NbGroups=4\nWeightsFiller.VarianceNorm=FanOut", (8, 6, 6),
         "weight", 9 * 32),
    ],
)
def test_conv_fans(build_net, keys, shape, attribute, fan) -> None:
    text = f"[c]\nInput=sp\nType=Conv\nWeightsFiller=XavierFiller\n{keys}\n"
    _, gm = build_net(text, shape)
    bound = math.sqrt(3.0 / fan)
    assert 0.95 * bound < _bound(getattr(gm.c, attribute)) <= bound


def test_fc_fans(build_net) -> None:
    text = "[f]\nInput=sp\nType=Fc\nNbOutputs=500\nWeightsFiller=XavierFiller\nWeightsFiller.VarianceNorm=FanOut\n"
    _, gm = build_net(text, (2, 5, 5))
    bound = math.sqrt(3.0 / 500)
    assert 0.99 * bound < _bound(gm.f.weight) <= bound
    text = text.replace("FanOut", "FanIn")
    _, gm = build_net(text, (2, 5, 5))
    bound = math.sqrt(3.0 / 50)
    assert 0.99 * bound < _bound(gm.f.weight) <= bound


def test_bias_fan_in_is_the_number_of_outputs(build_net) -> None:
    text = "[f]\nInput=sp\nType=Fc\nNbOutputs=2000\nBiasFiller=XavierFiller\n"
    _, gm = build_net(text, (1, 1, 1))
    bound = math.sqrt(3.0 / 2000)
    assert 0.99 * bound < _bound(gm.f.bias) <= bound


def test_default_fillers_of_weights_and_biases(build_net) -> None:
    _, gm = build_net("[f]\nInput=sp\nType=Fc\nNbOutputs=400\n", (1, 10, 10))
    assert abs(float(gm.f.weight.detach().std()) / 0.05 - 1) < 0.01
    assert abs(float(gm.f.bias.detach().std()) / 0.05 - 1) < 0.15


def test_constant_bias_and_seeded_reproducibility(build_net) -> None:
    text = "[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=4\nBiasFiller=ConstantFiller\nBiasFiller.Value=0.5\n"
    _, first = build_net(text, (2, 5, 5))
    _, second = build_net(text, (2, 5, 5))
    assert torch.equal(first.c.bias, torch.full((4,), 0.5))
    assert torch.equal(first.c.weight, second.c.weight)
