"""The integer-only ONNX file: bit-identical to int_gm in onnxruntime (optimizations off) on SAT, residual,
LSQ and MinMax networks, in every rescaling mode; the check catches a one-level change; the rounding of
the rescale (ties, negative accumulators, floor shifts) reproduced on accumulators built to hit them."""

from __future__ import annotations

from pathlib import Path

import export_nets as nets
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import fx

from qatrun.errors import RunError
from qatrun.export import compare, export
from qatrun.export.onnx_int import export_int, weight_slices
from qatrun.export.runtime import OnnxRunner
from qatrun.fuse import FuseOptions, RESCALING_MODES
from qatrun.fuse.intnet import IntInput, IntLinear, Rescale
from qatrun.fuse.scaling import Requant, with_mode

FLOAT_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose", "BatchNormalization", "QuantizeLinear", "DequantizeLinear"}


def run_file(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    runner = OnnxRunner(path)
    return runner.run_numpy(runner.feed(x))


@pytest.mark.parametrize("kind", ["lenet", "residual", "lsq", "minmax", "fmp"])
def test_bit_identical(kind: str, tmp_path: Path) -> None:
    gm, int_gm = nets.network(kind), nets.integer_network(kind)
    x = nets.images(nets.SHAPES[kind], 48, seed=11)
    report = export("onnx-int", gm, int_gm, tmp_path / "int.onnx", x)
    assert report.ok and report.differing == 0 and report.max_abs_diff == 0, report.summary()
    assert report.elements == 48 * 10 and report.file_bytes == (tmp_path / "int.onnx").stat().st_size
    # The same arrays, independently of the report: values and dtype class.
    expected = int_gm(x).numpy()
    (out,) = run_file(tmp_path / "int.onnx", x)
    assert out.dtype == expected.dtype and np.array_equal(out, expected)
    # Integer-only: no float convolution, matrix product or quantization operator anywhere.
    ops = {node.op_type for node in onnx.load(tmp_path / "int.onnx").graph.node}
    assert not ops & FLOAT_OPS, ops & FLOAT_OPS
    assert "ConvInteger" in ops or "MatMulInteger" in ops


def test_lenet_predictions_follow_the_fake_network(tmp_path: Path) -> None:
    """The integer file classifies as the fake-quantized LeNet it came from (exact flavour)."""
    x = nets.images(nets.SHAPES["lenet"], 48, seed=12)
    export_int(nets.integer_network("lenet"), tmp_path / "int.onnx", x)
    (out,) = run_file(tmp_path / "int.onnx", x)
    assert torch.equal(torch.from_numpy(out).argmax(1), nets.network("lenet")(x).argmax(1))


@pytest.mark.parametrize(("kind", "layer"), [("lenet", "bn2_act"), ("residual", "b1_sum_act"), ("lsq", "conv2_act")])
def test_one_level_change_fails(kind: str, layer: str, tmp_path: Path) -> None:
    """Adding one output level to one channel of one inner rescale makes the check fail."""
    x = nets.images(nets.SHAPES[kind], 48, seed=13)
    path = tmp_path / "int.onnx"
    export_int(nets.integer_network(kind), path, x)
    model = onnx.load(path)
    offset = next(t for t in model.graph.initializer if t.name == f"{layer}_o")
    values = numpy_helper.to_array(offset).copy()
    values.reshape(-1)[0] += 1.0
    offset.CopyFrom(numpy_helper.from_array(values, offset.name))
    onnx.save(model, path)
    reference = [nets.integer_network(kind)(x).numpy()]
    _, differing, max_diff, _, _ = compare("onnx-int", reference, run_file(path, x))
    assert differing > 0 and max_diff > 0


def test_compare_counts_a_single_lsb() -> None:
    levels = np.arange(20, dtype=np.int64).reshape(2, 10)
    bumped = levels.copy()
    bumped[1, 3] += 1
    assert compare("onnx-int", [levels], [levels])[1] == 0
    assert compare("onnx-int", [levels], [bumped])[:3] == (20, 1, 1.0)
    logits = np.linspace(-3, 3, 20).reshape(2, 10)
    nudged = logits.copy()
    nudged[0, 0] = np.nextafter(nudged[0, 0], 0)
    assert compare("onnx-int", [logits], [nudged])[1] == 1


@pytest.mark.parametrize("mode", [m for m in RESCALING_MODES if m != "Floating-point"])
def test_rescaling_modes(mode: str, tmp_path: Path) -> None:
    options = FuseOptions(rescaling=mode)
    x = nets.images(nets.SHAPES["residual"], 32, seed=14)
    report = export("onnx-int", nets.network("residual"), nets.integer_network("residual", options),
                    tmp_path / "int.onnx", x)
    assert report.ok, report.summary()


@pytest.mark.parametrize("options", [
    FuseOptions(weight_codes="unsigned"),
    FuseOptions(flavour="n2d2", weights_rounding="RINTF"),
    FuseOptions(flavour="n2d2", weights_rounding="RINTF", biases_rounding="RINTF", rescaling="Fixed-point16"),
], ids=["unsigned-codes", "n2d2-float-bias", "n2d2-fixed16"])
def test_lenet_flavours(options: FuseOptions, tmp_path: Path) -> None:
    x = nets.images(nets.SHAPES["lenet"], 32, seed=15)
    report = export("onnx-int", nets.network("lenet"), nets.integer_network("lenet", options), tmp_path / "i.onnx", x)
    assert report.ok, report.summary()


def test_uint8_input(tmp_path: Path) -> None:
    x = nets.images(nets.SHAPES["lsq"], 16, seed=16)
    report = export("onnx-int", nets.network("lsq"), nets.integer_network("lsq"), tmp_path / "u8.onnx", x,
                    input_kind="uint8")
    assert report.ok, report.summary()
    graph_input = onnx.load(tmp_path / "u8.onnx").graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    pixels = torch.round(x * 255).to(torch.uint8).numpy()
    (out,) = OnnxRunner(tmp_path / "u8.onnx").run_numpy(pixels)
    assert np.array_equal(out, nets.integer_network("lsq")(x).numpy())


# ------------------------------------------------------------------------------------------------
# The rescale on accumulators chosen to hit its corner cases


def rescale_network(requant: Requant, bias: torch.Tensor) -> fx.GraphModule:
    """x (N, 1, 4, 4) -> p in [0, 255] -> acc = (p - 128) + bias (identity weights) -> Rescale."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    p = graph.call_module("input_int", (x,))
    flat = graph.call_function(torch.flatten, (p, 1))
    acc = graph.call_module("fc", (flat,))
    graph.output(graph.call_module("fc_act", (acc,)))
    root = {
        "input_int": IntInput(),
        "fc": IntLinear(torch.eye(16, dtype=torch.int64), bias, input_zero=128, input_span=128),
        "fc_act": Rescale(requant),
    }
    return fx.GraphModule(root, graph)


def ramp() -> torch.Tensor:
    """Every pixel value 0..255 once (16 images of 16 pixels)."""
    return (torch.arange(256, dtype=torch.float32) / 255).reshape(16, 1, 4, 4)


HALF = torch.full((16,), 0.5, dtype=torch.float64)  # odd accumulators land on ties k + 1/2
ZERO = torch.zeros(16, dtype=torch.float64)
SCALES = torch.linspace(0.03, 0.9, 16, dtype=torch.float64)
TIES = torch.arange(16, dtype=torch.float64) * 37 + 0.5
BELOW_TIES = torch.from_numpy(np.nextafter(TIES.numpy(), 0))
BELOW_TIES_F32 = torch.from_numpy(np.nextafter(TIES.float().numpy(), np.float32(0)).astype(np.float64))
CASES = {
    "ties-half-away-signed": (Requant("Floating-point", HALF, ZERO, -128, 127), ZERO),
    "ties-half-away-unsigned": (Requant("Floating-point", HALF, ZERO, 0, 63), ZERO),
    "ties-half-even": (Requant("Floating-point", HALF, ZERO, -128, 127, rounding="half_even"), ZERO),
    "offset-saturate": (Requant("Floating-point", SCALES, ZERO + 0.37, -7, 7), torch.arange(16.0) - 8),
    "float32": (Requant("Floating-point", SCALES.float().double(), ZERO, -128, 127, float32=True), ZERO),
    "clip": (Requant("Floating-point", SCALES, ZERO, 0, 255, clip=torch.full((16,), 60.5, dtype=torch.float64)),
             ZERO + 0.25),
    "unquantized": (Requant("None", SCALES, ZERO + 0.1, 0, 0), ZERO + 3),
    **{mode: (with_mode(Requant("Floating-point", SCALES, ZERO + 0.25, -100, 100), mode), ZERO + 1)
       for mode in RESCALING_MODES if mode != "Floating-point"},
    # v = offset exactly (scale 0): just below every tie k + 1/2 (-> k), and on it (-> k + 1), f64 and f32
    "below-ties": (Requant("Floating-point", ZERO, BELOW_TIES, 0, 1000), ZERO),
    "on-ties": (Requant("Floating-point", ZERO, ZERO + TIES, 0, 1000), ZERO),
    "below-ties-f32": (Requant("Floating-point", ZERO, BELOW_TIES_F32, 0, 1000, float32=True), ZERO),
    "fixed-float-bias": (with_mode(Requant("Floating-point", SCALES, ZERO, -100, 100), "Fixed-point16"),
                         ZERO + 0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rescale_corner_cases(case: str, tmp_path: Path) -> None:
    requant, bias = CASES[case]
    int_gm = rescale_network(requant, bias)
    x = ramp()
    expected = int_gm(x)
    export_int(int_gm, tmp_path / "r.onnx", x)
    (out,) = run_file(tmp_path / "r.onnx", x)
    assert np.array_equal(out, expected.numpy()), (out - expected.numpy())
    if case.startswith("below-ties"):
        assert torch.equal(expected, (TIES - 0.5).to(torch.int64).expand(16, -1))
    if case == "on-ties":
        assert torch.equal(expected, (TIES + 0.5).to(torch.int64).expand(16, -1))
    if case.startswith("ties"):  # the ties are really there: a rule that rounds them otherwise would differ
        acc = (torch.arange(256) - 128).double().reshape(16, 16) * 0.5
        assert int((acc - acc.floor() == 0.5).sum()) == 128


def test_weight_slices() -> None:
    w = np.array([[-255, -129, -128, 0, 127, 128, 255, 300]])
    slices = weight_slices(w)
    assert len(slices) == 3 and np.array_equal(sum(slices), w)
    assert all(s.min() >= -128 and s.max() <= 127 for s in slices)
    assert len(weight_slices(np.array([[-128, 127]]))) == 1


# ------------------------------------------------------------------------------------------------
# Errors


def test_errors(tmp_path: Path) -> None:
    gm = nets.network("lsq")
    x = nets.images(nets.SHAPES["lsq"], 4, seed=17)
    with pytest.raises(RunError, match="needs the integer network"):
        export("onnx-int", gm, None, tmp_path / "i.onnx", x)
    with pytest.raises(RunError, match="unknown export kind 'onnx-int8'.*onnx, onnx-qdq, onnx-int"):
        export("onnx-int8", gm, None, tmp_path / "i.onnx", x)
    with pytest.raises(RunError, match="pool: the n2d2 flavour's float average pooling"):
        int_gm = nets.integer_network("residual", FuseOptions(flavour="n2d2", weights_rounding="RINTF"))
        export_int(int_gm, tmp_path / "i.onnx", nets.images(nets.SHAPES["residual"], 2, seed=1))
    with pytest.raises(RunError, match="conv1: its weights are not integers"):
        export_int(nets.integer_network("lenet", FuseOptions(flavour="n2d2")), tmp_path / "i.onnx",
                   nets.images(nets.SHAPES["lenet"], 2, seed=1))
