"""Small layers, output-size formulas and mappings against plain references and torch itself."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from qatrun.net import geometry, mapping
from qatrun.net.elemwise import coefficients
from qatrun.net.layers import MappedConv2d, elemwise, resize_bilinear_asymmetric

A = torch.tensor([[-1.5, 2.0], [0.5, -3.0]], dtype=torch.float64).reshape(1, 2, 2, 1)
B = torch.tensor([[4.0, -0.5], [1.0, 2.0]], dtype=torch.float64).reshape(1, 2, 2, 1)
W = torch.tensor([[2.0, 2.0], [-1.0, -1.0]], dtype=torch.float64)  # (inputs, channels)
S = torch.tensor([[0.5, 0.5], [0.25, 0.25]], dtype=torch.float64)


def per_value(op: str) -> torch.Tensor:
    """ElemWise written value by value from the formulas (weights 2, -1; shifts 0.5, 0.25)."""
    out = torch.empty_like(A)
    for i, (a, b) in enumerate(zip(A.flatten().tolist(), B.flatten().tolist())):
        out.view(-1)[i] = {
            "Sum": 2 * a + 0.5 + (-1) * b + 0.25,
            "AbsSum": 2 * abs(a) + (-1) * abs(b),
            "EuclideanSum": math.sqrt((2 * a + 0.5) ** 2 + (-b + 0.25) ** 2),
            "Prod": a * b,
            "Max": max(a, b),
        }[op]
    return out


@pytest.mark.parametrize("op", ["Sum", "AbsSum", "EuclideanSum", "Prod", "Max"])
def test_elemwise_operations(op: str) -> None:
    torch.testing.assert_close(elemwise(op, [A, B], W, S), per_value(op), atol=0, rtol=0)


def test_elemwise_per_channel_coefficients() -> None:
    weights = torch.tensor([[1.0, 10.0], [100.0, 1000.0]], dtype=torch.float64)
    out = elemwise("Sum", [A, B], weights, torch.zeros(2, 2, dtype=torch.float64))
    expected = A * torch.tensor([1.0, 10.0]).view(2, 1, 1) + B * torch.tensor([100.0, 1000.0]).view(2, 1, 1)
    torch.testing.assert_close(out, expected.double(), atol=0, rtol=0)


def test_elemwise_on_flat_tensors() -> None:
    out = elemwise("Sum", [A.reshape(2, 2), B.reshape(2, 2)], W, S)
    torch.testing.assert_close(out, per_value("Sum").reshape(2, 2), atol=0, rtol=0)


@pytest.mark.parametrize(
    "values, mode, expected",
    [
        ((2.0,), "PerLayer", [[2, 2, 2], [2, 2, 2]]),
        ((2.0,), "PerInput", [[2, 2, 2], [2, 2, 2]]),
        ((2.0, 3.0), "PerInput", [[2, 2, 2], [3, 3, 3]]),
        ((1.0, 2.0, 3.0), "PerChannel", [[1, 2, 3], [1, 2, 3]]),
        ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), "PerChannel", [[1, 2, 3], [4, 5, 6]]),
        ((2.0, 3.0), "PerLayer", None),
        ((2.0, 3.0), "PerChannel", None),
    ],
)
def test_coefficient_layouts(values, mode, expected) -> None:
    table = coefficients(values, mode, inputs=2, channels=3)
    assert (table.tolist() if table is not None else None) == expected


def test_bilinear_tf_against_the_definition() -> None:
    x = torch.arange(12.0, dtype=torch.float64).reshape(1, 1, 3, 4)
    out = resize_bilinear_asymmetric(x, (5, 3))
    expected = torch.empty(1, 1, 5, 3, dtype=torch.float64)
    for i in range(5):
        for j in range(3):
            sy, sx = i * 3 / 5, j * 4 / 3  # source = destination * in / out, no half-pixel offset
            y0, x0 = math.floor(sy), math.floor(sx)
            y1, x1 = min(y0 + 1, 2), min(x0 + 1, 3)
            fy, fx = sy - y0, sx - x0
            top = x[0, 0, y0, x0] * (1 - fx) + x[0, 0, y0, x1] * fx
            bottom = x[0, 0, y1, x0] * (1 - fx) + x[0, 0, y1, x1] * fx
            expected[0, 0, i, j] = top * (1 - fy) + bottom * fy
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_mapped_conv_equals_a_convolution_with_zeroed_weights() -> None:
    torch.manual_seed(0)
    connectivity = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    conv = MappedConv2d(3, 2, (3, 3), connectivity).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    zeroed = conv.weight.detach().clone()
    zeroed[0, 1] = 0
    zeroed[1, 0] = 0
    zeroed[1, 2] = 0
    torch.testing.assert_close(conv(x), F.conv2d(x, zeroed, conv.bias), atol=0, rtol=0)
    conv(x).sum().backward()
    assert float(conv.weight.grad[0, 1].abs().sum()) == 0 and float(conv.weight.grad[0, 0].abs().sum()) > 0


# Output-size formulas: N2D2's formula must give the size torch computes (whenever torch accepts it).
sizes = st.integers(1, 40)
small = st.integers(1, 5)


@settings(max_examples=60, deadline=None)
@given(size=sizes, kernel=small, stride=small, padding=st.integers(0, 3), dilation=st.integers(1, 3))
def test_conv_out_matches_torch(size: int, kernel: int, stride: int, padding: int, dilation: int) -> None:
    out = geometry.conv_out(size, kernel, stride, padding, dilation)
    if out < 1:
        assert size + 2 * padding < dilation * (kernel - 1) + 1
        return
    x = torch.zeros(1, 1, size, 1)
    y = F.conv2d(x, torch.zeros(1, 1, kernel, 1), stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1))
    assert y.shape[2] == out


@settings(max_examples=60, deadline=None)
@given(size=sizes, kernel=small, stride=small, padding=st.integers(0, 2))
def test_pool_out_matches_torch(size: int, kernel: int, stride: int, padding: int) -> None:
    out = geometry.pool_out(size, kernel, stride, padding)
    if out < 1 or 2 * padding > kernel:
        return
    y = F.max_pool2d(torch.zeros(1, 1, size, 1), (kernel, 1), (stride, 1), (padding, 0))
    assert y.shape[2] == out


@settings(max_examples=60, deadline=None)
@given(size=sizes, kernel=small, stride=small, padding=st.integers(0, 2), dilation=st.integers(1, 2))
def test_deconv_out_matches_torch(size: int, kernel: int, stride: int, padding: int, dilation: int) -> None:
    out = geometry.deconv_out(size, kernel, stride, padding, dilation)
    if out < 1:
        return
    y = F.conv_transpose2d(torch.zeros(1, 1, size, 1), torch.zeros(1, 1, kernel, 1), stride=(stride, 1),
                           padding=(padding, 0), dilation=(dilation, 1))
    assert y.shape[2] == out


@settings(max_examples=60, deadline=None)
@given(size=sizes, kernel=small, stride=small, sub=small)
def test_subsampling_is_a_larger_stride(size: int, kernel: int, stride: int, sub: int) -> None:
    out = geometry.conv_out(size, kernel, stride, 0, 1)
    if out >= 1:
        assert geometry.subsample_out(out, sub) == geometry.conv_out(size, kernel, stride * sub, 0, 1)


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 6), per_out=st.integers(1, 4), per_in=st.integers(1, 4))
def test_groups_are_recognised(groups: int, per_out: int, per_in: int) -> None:
    matrix = mapping.grouped(groups * per_out, groups * per_in, groups)  # (O, C)
    assert int(matrix.sum()) == groups * per_out * per_in
    assert mapping.groups_of(matrix) == groups


@settings(max_examples=40, deadline=None)
@given(channels=st.integers(1, 12))
def test_canvas_size_one_is_the_identity(channels: int) -> None:
    m = mapping.canvas(channels, channels, (1, 1), (1, 1), (0, 0), 0)
    assert torch.equal(m, torch.eye(channels, dtype=torch.bool))


def test_canvas_pattern() -> None:
    # 4 channels, 6 outputs, 2x1 blocks stepping by (2, 1): output 2i, 2i + 1 see channel i (mod 4)
    m = mapping.canvas(4, 6, (2, 1), (2, 1), (0, 0), 3)  # (C, O)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    for i in range(3):
        expected[i, 2 * i] = expected[i, 2 * i + 1] = True
    assert torch.equal(m, expected)
    # offsets and wrap-around: 6 iterations (= max(O, C)) from output 5, channel 3
    m = mapping.canvas(4, 6, (1, 1), (1, 1), (5, 3), 0)
    assert [(c, o) for c, o in m.nonzero().tolist()] == sorted(
        ((3 + i) % 4, (5 + i) % 6) for i in range(6)
    )
