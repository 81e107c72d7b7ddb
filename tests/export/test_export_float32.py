"""The fast integer-only ONNX file (Floating-point32 rescaling): onnxruntime's QLinearConv computes the
mode's arithmetic (against a plain reference, optimizations off and on); the files of the test networks are
bit-identical to their integer networks with optimizations off and on, and take the QLinearConv form
where the module note says they do; rescales at ties, zero points, biases beyond 2^24."""

from __future__ import annotations

from pathlib import Path

import export_nets as nets
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx

from qatrun.export import export
from qatrun.export.onnx_int import export_int, weight_slices
from qatrun.export.runtime import OnnxRunner
from qatrun.fuse import FuseOptions
from qatrun.fuse.intnet import IntConv2d, IntInput, IntLinear, Rescale
from qatrun.fuse.scaling import Requant

MODE = "Floating-point32"
FAST = FuseOptions(rescaling=MODE)
LEVEL = {False: ort.GraphOptimizationLevel.ORT_DISABLE_ALL, True: ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def qlinearconv(x: np.ndarray, w: np.ndarray, b: np.ndarray, m: np.ndarray, zero: int, optimize: bool) -> np.ndarray:
    """One QLinearConv (3x3, pad 1) with x_scale = y_scale = 1 and w_scale = m, run in onnxruntime."""
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (np.array(1.0, np.float32), "one"), (np.array(0, np.uint8), "xz"), (w, "w"), (m, "m"),
        (np.zeros(len(m), np.int8), "wz"), (np.array(zero, np.uint8), "yz"), (b, "b"))]
    node = helper.make_node("QLinearConv", ["x", "one", "xz", "w", "m", "wz", "one", "yz", "b"], ["y"],
                            kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVEL[optimize]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("optimize", [False, True])
def test_qlinearconv_requantizes_as_the_mode(optimize: bool) -> None:
    """``clip(rint(float32(acc + B) * m) + z, 0, 255)``, acc the exact convolution: ties to even, negative
    accumulators, and ``|acc + B| >= 2^24`` (the int32 -> float32 conversion rounds). The weights stay
    within the export's slice bound, |w| <= 32767 // (2 * 255): on x86 without VNNI onnxruntime sums pairs
    of uint8 x int8 products in saturating int16 (vpmaddubsw), so full-range weights differ there."""
    gen = np.random.default_rng(5)
    x = gen.integers(0, 256, (2, 7, 6, 6)).astype(np.uint8)
    w = gen.integers(-64, 65, (24, 7, 3, 3)).astype(np.int8)
    m = np.where(np.arange(24) < 12, 2.0 ** -gen.integers(1, 9, 24), 2.0 ** -gen.integers(17, 24, 24) * 1.37)
    m = m.astype(np.float32)
    b = np.where(np.arange(24) < 12, gen.integers(-3000, 3000, 24), gen.integers(-2**30, 2**30, 24)).astype(np.int32)
    acc = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1)
    acc = acc.to(torch.int64).numpy() + b.reshape(-1, 1, 1).astype(np.int64)
    v = acc.astype(np.float32) * m.reshape(-1, 1, 1)
    expected = np.clip(np.rint(v) + 9, 0, 255).astype(np.uint8)
    assert int((v - np.floor(v) == 0.5).sum()) > 100 and int((np.abs(acc) >= 2**24).sum()) > 100
    assert np.array_equal(qlinearconv(x, w, b, m, 9, optimize), expected)


@pytest.mark.parametrize("kind", ["lenet", "residual", "lsq", "minmax"])
def test_bit_identical_with_optimizations_off_and_on(kind: str, tmp_path: Path) -> None:
    gm, int_gm = nets.network(kind), nets.integer_network(kind, FAST)
    x = nets.images(nets.SHAPES[kind], 40, seed=21)
    report = export("onnx-int", gm, int_gm, tmp_path / "int.onnx", x)  # its check: optimizations off
    assert report.ok and report.differing == 0, report.summary()
    runner = OnnxRunner(tmp_path / "int.onnx", optimize=True)
    (out,) = runner.run_numpy(runner.feed(x))
    assert np.array_equal(out, int_gm(x).numpy())


# Which form each test network's layers take (module note): every Conv/Fc with a quantized output and every
# Sum on uint8 levels is a QLinearConv; the 8-bit first convolutions on 8-bit pixels are sliced over 4
# copies of the input; only the unquantized logits (and MinMax's signed layers) keep MatMulInteger/ConvInteger.
FORMS = {
    "lenet": {"QLinearConv": 4, "ConvInteger": 0, "MatMulInteger": 3},  # conv1-3, fc1; fc2's logits
    "residual": {"QLinearConv": 8, "ConvInteger": 0, "ReduceSum": 1},  # 5 convs, 2 sums, a quantized pool
    "minmax": {"QLinearConv": 1, "ConvInteger": 1},  # int8 outputs: conv2 and the sum keep the general form
}


@pytest.mark.parametrize("kind", list(FORMS))
def test_layers_take_the_qlinearconv_form(kind: str, tmp_path: Path) -> None:
    x = nets.images(nets.SHAPES[kind], 4, seed=22)
    export_int(nets.integer_network(kind, FAST), tmp_path / "int.onnx", x)
    ops = [node.op_type for node in onnx.load(tmp_path / "int.onnx").graph.node]
    assert {op: ops.count(op) for op in FORMS[kind]} == FORMS[kind]
    assert not {"Conv", "Gemm", "MatMul", "DequantizeLinear"} & set(ops)


def test_default_mode_keeps_its_graph(tmp_path: Path) -> None:
    x = nets.images(nets.SHAPES["lenet"], 4, seed=23)
    export_int(nets.integer_network("lenet"), tmp_path / "int.onnx", x)
    ops = {node.op_type for node in onnx.load(tmp_path / "int.onnx").graph.node}
    assert "QLinearConv" not in ops and "QuantizeLinear" not in ops and "ConvInteger" in ops


# ------------------------------------------------------------------------------------------------
# One rescale on accumulators chosen to hit its corner cases: acc = p - 128 + B for every pixel p


def rescale_network(requant: Requant, bias: torch.Tensor, weight: int = 1) -> fx.GraphModule:
    graph = fx.Graph()
    x = graph.placeholder("x")
    flat = graph.call_function(torch.flatten, (graph.call_module("input_int", (x,)), 1))
    graph.output(graph.call_module("fc_act", (graph.call_module("fc", (flat,)),)))
    root = {
        "input_int": IntInput(),
        "fc": IntLinear(weight * torch.eye(16, dtype=torch.int64), bias, input_zero=128, input_span=128),
        "fc_act": Rescale(requant),
    }
    return fx.GraphModule(root, graph)


PIXELS = np.arange(256).reshape(16, 16)  # every pixel value once; image k holds 16k .. 16k + 15
HALVES = torch.full((16,), 0.5, dtype=torch.float64)


def fp32(scale: torch.Tensor, zero: int, lo: int, hi: int, bias: torch.Tensor | None = None) -> Requant:
    return Requant(MODE, scale.float().double(), torch.full((16,), float(zero), dtype=torch.float64), lo, hi,
                   rounding="half_even", bias=bias)


CASES = {  # name: (requant, the layer's bias, QLinearConv expected): acc = p - 128 + bias
    "ties-u8": (fp32(HALVES, 100, 0, 255), torch.zeros(16, dtype=torch.float64), True),
    "ties-u4": (fp32(HALVES, 3, 0, 15), torch.arange(16, dtype=torch.float64) - 8, True),
    "wide-bias": (fp32(torch.full((16,), 2.0**-20, dtype=torch.float64), 0, 0, 255),
                  torch.full((16,), 2.0**24 + 2**21 + 1), True),
    "requant-bias": (fp32(HALVES, 0, 0, 255, torch.arange(16, dtype=torch.int64) * 7), torch.zeros(16), True),
    "signed": (fp32(HALVES, 0, -100, 100), torch.zeros(16, dtype=torch.float64), False),
}
# acc = 320 (p - 128): |w| = 320 needs 5 slices of 64 on 8-bit pixels, one more than the fast form takes,
# so MatMulInteger and the float32 operators ending in QuantizeLinear; scale 2^-7: 2.5 (p - 128), ties
WIDE = fp32(torch.full((16,), 2.0**-7, dtype=torch.float64), 7, 0, 255)


@pytest.mark.parametrize("case", [*CASES, "ties-u8-general-form"])
def test_rescale_corner_cases(case: str, tmp_path: Path) -> None:
    weight = 320 if case == "ties-u8-general-form" else 1
    requant, bias, fused = CASES.get(case, (WIDE, torch.zeros(16, dtype=torch.float64), False))
    x = torch.from_numpy(PIXELS / 255).float().reshape(16, 1, 4, 4)
    export_int(rescale_network(requant, bias, weight), tmp_path / "r.onnx", x)
    ops = {node.op_type for node in onnx.load(tmp_path / "r.onnx").graph.node}
    assert ("QLinearConv" in ops) == fused
    if weight > 1:
        assert "QuantizeLinear" in ops and "MatMulInteger" in ops
    # The plain reference: acc = weight (p - 128) + bias, then the mode's arithmetic in numpy.
    total = weight * (PIXELS - 128) + bias.numpy().astype(np.int64)
    if requant.bias is not None:
        total = total + requant.bias.numpy()
    v = total.astype(np.float32) * requant.scale.numpy().astype(np.float32)
    expected = np.clip(np.rint(v) + requant.offset.numpy().astype(np.int64), requant.lo, requant.hi)
    for optimize in (False, True):
        runner = OnnxRunner(tmp_path / "r.onnx", optimize=optimize)
        (out,) = runner.run_numpy(runner.feed(x))
        assert np.array_equal(out, expected), (optimize, out - expected)


def test_symmetric_slices_keep_every_product_below_2_to_the_14() -> None:
    """8-bit pixels (255) allow |w| <= 32767 // 510 = 64: -255 is 4 slices of at most 64 in magnitude."""
    w = np.array([[-255, -128, -65, 64, 255]])
    slices = weight_slices(w, 64)
    assert len(slices) == 4 and np.array_equal(sum(slices), w)
    assert all(np.abs(s).max() <= 64 for s in slices)
    assert len(weight_slices(np.array([[-128]]), 127)) == 2  # -128 is not within +-127


def test_padding_with_a_zero_point(tmp_path: Path) -> None:
    """QLinearConv pads with x_zero_point, as IntConv2d pads with real zeros (levels equal to the zero point):
    a 3x3 convolution, padding 1, input zero point 100, against the plain convolution of ``p - 100``."""
    gen = torch.Generator().manual_seed(8)
    weight = torch.randint(-7, 8, (5, 2, 3, 3), generator=gen)
    bias = torch.randint(-50, 50, (5,), generator=gen).double()
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("act", (graph.call_module("conv", (graph.call_module("input_int", (x,)),)),)))
    requant = fp32(torch.full((16,), 0.125, dtype=torch.float64), 4, 0, 15)
    root = {
        "input_int": IntInput(),
        "conv": IntConv2d(weight, bias, padding=(1, 1), input_zero=100, input_span=155),
        "act": Rescale(Requant(MODE, requant.scale[:5], requant.offset[:5], 0, 15, rounding="half_even")),
    }
    int_gm = fx.GraphModule(root, graph)
    pixels = torch.randint(0, 256, (3, 2, 6, 6), generator=gen)
    export_int(int_gm, tmp_path / "pad.onnx", pixels / 255)
    assert "QLinearConv" in {node.op_type for node in onnx.load(tmp_path / "pad.onnx").graph.node}
    acc = torch.nn.functional.conv2d((pixels - 100).double(), weight.double(), padding=1) + bias.view(-1, 1, 1)
    v = acc.numpy().astype(np.float32) * np.float32(0.125)
    expected = np.clip(np.rint(v) + 4, 0, 15)
    for optimize in (False, True):
        runner = OnnxRunner(tmp_path / "pad.onnx", optimize=optimize)
        (out,) = runner.run_numpy(runner.feed(pixels / 255))
        assert np.array_equal(out, expected), optimize
