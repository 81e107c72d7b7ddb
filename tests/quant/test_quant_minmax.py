"""MinMax weights and activations: exact forward and backward against the plain reference, ranges, delay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import quant_reference as ref

from qatrun.errors import ConfigError
from qatrun.quant.minmax import (
    MinMaxActivationQuantizer,
    MinMaxActSpec,
    MinMaxWeightQuantizer,
    MinMaxWeightSpec,
    minmax_active,
)


def _data(shape: tuple[int, ...], seed: int, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + offset


# (range, symmetric, per channel, offset of the data: all positive data must still represent 0)
WEIGHT_CASES = [
    (steps, symmetric, per_channel, offset)
    for steps in (2, 15, 255)
    for symmetric in (False, True)
    for per_channel in (False, True)
    for offset in (0.0, 3.0)
]


@pytest.mark.parametrize("steps,symmetric,per_channel,offset", WEIGHT_CASES)
def test_weights_match_reference_exactly(steps, symmetric, per_channel, offset):
    w = _data((4, 3, 2, 2), seed=steps, offset=offset).requires_grad_()
    grad = _data(w.shape, seed=5)
    quantizer = MinMaxWeightQuantizer(
        MinMaxWeightSpec(range=steps, symmetric=symmetric, per_channel=per_channel), channel_axis=0
    )
    y = quantizer(w)
    y.backward(grad)
    expected_y, expected_dx = ref.minmax(w.detach(), steps, symmetric, grad, axis=0 if per_channel else None)
    assert np.array_equal(y.detach().numpy(), expected_y)
    assert np.array_equal(w.grad.numpy(), expected_dx)


def test_per_channel_on_the_second_axis_for_transposed_convolutions():
    w = _data((3, 4, 2, 2), seed=1)
    grad = torch.ones_like(w)
    quantizer = MinMaxWeightQuantizer(MinMaxWeightSpec(range=15, per_channel=True), channel_axis=1)
    expected_y, _ = ref.minmax(w, 15, False, grad, axis=1)
    assert np.array_equal(quantizer(w).numpy(), expected_y)


@pytest.mark.parametrize("steps,symmetric", [(255, False), (15, True)])
def test_activations_use_the_running_range(steps, symmetric):
    quantizer = MinMaxActivationQuantizer(MinMaxActSpec(range=steps, symmetric=symmetric, momentum=0.5)).double()
    first, second = _data((2, 8), seed=1), _data((2, 8), seed=2) * 3
    quantizer(first)
    x = second.clone().requires_grad_()
    y = quantizer(x)
    lo = 0.5 * float(first.min()) + 0.5 * float(second.min())
    hi = 0.5 * float(first.max()) + 0.5 * float(second.max())
    assert float(quantizer.running_min) == pytest.approx(lo, rel=1e-15)
    grad = _data(x.shape, seed=3)
    y.backward(grad)
    expected_y, expected_dx = ref.minmax(
        second, steps, symmetric, grad, lo=float(quantizer.running_min), hi=float(quantizer.running_max)
    )
    assert np.array_equal(y.detach().numpy(), expected_y)
    assert np.array_equal(x.grad.numpy(), expected_dx)  # values beyond the running range get no gradient
    assert (x.grad == 0).any()


def test_maximum_update_keeps_the_extremes():
    quantizer = MinMaxActivationQuantizer(MinMaxActSpec(update="Maximum")).double()
    quantizer(torch.tensor([-1.0, 2.0], dtype=torch.float64))
    quantizer(torch.tensor([-0.5, 5.0], dtype=torch.float64))
    assert (float(quantizer.running_min), float(quantizer.running_max)) == (-1.0, 5.0)


def test_eval_does_not_update_the_range():
    quantizer = MinMaxActivationQuantizer(MinMaxActSpec(update="Maximum")).double()
    quantizer(torch.tensor([0.0, 2.0], dtype=torch.float64))
    quantizer.eval()
    y = quantizer(torch.tensor([0.0, 4.0], dtype=torch.float64))
    assert float(quantizer.running_max) == 2.0 and float(y[1]) == 2.0


@pytest.mark.parametrize("step,delay,active", [(0, 0, True), (0, 2, False), (1, 2, False), (2, 2, True)])
def test_delay_is_a_function_of_the_step(step, delay, active):
    assert minmax_active(step, delay) is active


def test_delay_passes_values_through_then_quantizes():
    quantizer = MinMaxWeightQuantizer(MinMaxWeightSpec(range=3, delay=2))
    w = torch.tensor([0.0, 0.1, 1.0])
    assert torch.equal(quantizer(w), w) and torch.equal(quantizer(w), w)
    assert not torch.equal(quantizer(w), w)
    assert int(quantizer.step) == 3


def test_zero_range_stays_finite():
    quantizer = MinMaxWeightQuantizer(MinMaxWeightSpec(symmetric=True))
    assert torch.equal(quantizer(torch.zeros(3)), torch.zeros(3))


@pytest.mark.parametrize(
    "cls,spec,message",
    [
        (MinMaxWeightSpec, dict(range=1, symmetric=True), "Range >= 2"),
        (MinMaxWeightSpec, dict(delay=-1), "Delay"),
        (MinMaxActSpec, dict(momentum=0.0), "Momentum"),
        (MinMaxActSpec, dict(update="Average"), "expected one of"),
    ],
)
def test_spec_rejects_bad_settings(cls, spec, message):
    with pytest.raises(ConfigError, match=message):
        cls(**spec)
