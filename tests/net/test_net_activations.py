"""Activation functions against the plain formulas of reference/n2d2.md section 2.5, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qatrun.net.activations import FUNCTIONS, LECUN_ALPHA, LECUN_SCALE, make_activation

X = torch.linspace(-6, 6, 1201, dtype=torch.float64)


def plain(name: str, p: dict[str, float], x: float) -> float:
    """The formula for one value, written from the reference with the math module."""
    if name == "Linear":
        c = p["Clipping"]
        return min(max(x, -c), c) if c else x
    if name == "Rectifier":
        y = x if x > 0 else p["LeakSlope"] * x
        return min(y, p["Clipping"]) if p["Clipping"] > 0 else y
    if name in ("Logistic", "LogisticWithLoss"):
        return 1 / (1 + math.exp(-x))
    if name == "Saturation":
        return min(max(x, -p["Threshold"]), p["Threshold"])
    if name == "Softplus":
        return math.log(1 + math.exp(x))
    if name == "Swish":
        return x / (1 + math.exp(-x))
    if name == "Tanh":
        return math.tanh(p["Alpha"] * x)
    if name == "TanhLeCun":
        return 1.7159 * math.tanh(2 * x / 3)
    raise AssertionError(name)


CASES = [
    ("Linear", {"Clipping": 0.0}),
    ("Linear", {"Clipping": 2.5}),
    ("Rectifier", {"LeakSlope": 0.0, "Clipping": 0.0}),
    ("Rectifier", {"LeakSlope": 0.1, "Clipping": 0.0}),
    ("Rectifier", {"LeakSlope": 0.0, "Clipping": 6.0}),
    ("Rectifier", {"LeakSlope": 0.2, "Clipping": 3.0}),
    ("Logistic", {}),
    ("LogisticWithLoss", {}),
    ("Saturation", {"Threshold": 1.0}),
    ("Saturation", {"Threshold": 0.5}),
    ("Softplus", {}),
    ("Swish", {}),
    ("Tanh", {"Alpha": 1.0}),
    ("Tanh", {"Alpha": 0.5}),
    ("TanhLeCun", {}),
]

# Functions made of comparisons and products are exact; transcendental ones are within a few ulp.
EXACT = {"Linear", "Rectifier", "Saturation"}


@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_against_formula(name: str, params: dict[str, float]) -> None:
    module = make_activation(name, params).double()
    expected = torch.tensor([plain(name, params, float(x)) for x in X], dtype=torch.float64)
    tolerance = 0 if name in EXACT else 1e-14
    torch.testing.assert_close(module(X), expected, atol=tolerance, rtol=tolerance)


def test_every_function_is_tested() -> None:
    assert {name for name, _ in CASES} == set(FUNCTIONS)


def test_torch_modules_where_torch_has_them() -> None:
    assert isinstance(make_activation("Linear", {"Clipping": 0.0}), nn.Identity)
    assert isinstance(make_activation("Rectifier", {"LeakSlope": 0.0, "Clipping": 0.0}), nn.ReLU)
    assert isinstance(make_activation("Tanh", {"Alpha": 1.0}), nn.Tanh)
    assert LECUN_SCALE == 1.7159 and LECUN_ALPHA == 2 / 3


def test_logistic_with_loss_backward_is_the_identity() -> None:
    x = X.clone().requires_grad_()
    make_activation("LogisticWithLoss", {})(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(X))


def test_activation_parameters_from_the_section(build_net) -> None:
    text = "[c]\nInput=sp\nType=Conv\nKernelDims=1 1\nNbOutputs=1\nActivationFunction=Rectifier\n" \
           "ActivationFunction.LeakSlope=0.125\nActivationFunction.Clipping=1.5\n"
    _, gm = build_net(text, (1, 1, 1))
    x = torch.tensor([-4.0, 0.5, 4.0]).reshape(3, 1, 1, 1)
    assert torch.equal(gm.c_act(x), torch.tensor([-0.5, 0.5, 1.5]).reshape(3, 1, 1, 1))
    assert gm.cells["c"].activation == "Rectifier"
