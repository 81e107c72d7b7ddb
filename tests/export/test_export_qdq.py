"""The QDQ file: outputs equal to the fake-quantized network within float32 rounding, weights stored as
integer levels in the narrowest container at each layer's bits, activations as Clip -> Q -> DQ on the
quantizer's own grid."""

from __future__ import annotations

import copy
from pathlib import Path

import export_nets as nets
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import fx

from qatrun.export import ExportReport, LevelCheck, compare, export
from qatrun.export.check import qdq_layer_check
from qatrun.export.runtime import OnnxRunner
from qatrun.export.onnx_qdq import export_qdq
from qatrun.quant import QuantizedActivation, QuantizedWeightLayer, SATWeightQuantizer, SATWeightSpec


def initializers(path: Path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(path).graph.initializer}


def nodes_by_output(path: Path) -> dict[str, onnx.NodeProto]:
    return {node.output[0]: node for node in onnx.load(path).graph.node}


@pytest.mark.parametrize("kind", ["lenet", "residual", "lsq", "minmax", "fmp"])
def test_matches_fake_quantization(kind: str, tmp_path: Path) -> None:
    gm = nets.network(kind)
    x = nets.images(nets.SHAPES[kind], 48, seed=21)
    report = export("onnx-qdq", gm, None, tmp_path / "qdq.onnx", x)
    # float32 rounding of the dequantized weights and scales: a few ulps of the outputs, no level flip.
    assert report.ok and report.max_abs_diff <= 1e-5 * max(1.0, report.reference_max), report.summary()
    assert report.notes == []
    layers = report.layers
    # Layer by layer, a level may flip where qatrun's value is within float32 rounding of a tie (LeNet: 1).
    assert layers is not None and layers.ok and layers.flips <= 2
    assert layers.max_abs_diff <= 1e-5 * max(1.0, report.reference_max)
    activations = sum(isinstance(m, QuantizedActivation) for m in gm.modules())
    assert layers.levels == 48 * sum(
        intermediate(gm, x[:1], name).numel() for name, m in gm.named_modules() if isinstance(m, QuantizedActivation)
    ) and activations >= 2


# (network, layer) -> ONNX container of its weight levels
CONTAINERS = {
    ("lenet", "conv1"): TensorProto.INT16,  # SAT Default 8-bit: 2k - 255 in [-255, 255]
    ("lenet", "conv2"): TensorProto.INT8,  # SAT Default 4-bit: 2k - 15 in [-15, 15]
    ("residual", "b1_conv1"): TensorProto.INT4,  # SAT Symmetric 4-bit: [-7, 7]
    ("lsq", "conv2"): TensorProto.INT4,  # LSQ 4-bit: [-8, 7]
    ("lsq", "fc2"): TensorProto.INT8,  # LSQ 8-bit: [-128, 127]
    ("minmax", "conv1"): TensorProto.UINT8,  # MinMax per channel: codes q = levels + z, z per channel
    ("minmax", "conv2"): TensorProto.INT4,  # MinMax symmetric 4-bit: [-7, 7]
}


@pytest.mark.parametrize(("kind", "layer"), list(CONTAINERS))
def test_weights_are_dequantized_levels(kind: str, layer: str, tmp_path: Path) -> None:
    gm = nets.network(kind)
    path = tmp_path / "qdq.onnx"
    export_qdq(gm, path, nets.images(nets.SHAPES[kind], 2, seed=22))
    stored = initializers(path)[f"{layer}_wq"]
    assert stored.data_type == CONTAINERS[(kind, layer)]
    module = gm.get_submodule(layer)
    levels, rescale = module.integer_weights()
    dq = nodes_by_output(path)[f"{layer}_weight"]
    assert dq.op_type == "DequantizeLinear"
    zero = numpy_helper.to_array(initializers(path)[dq.input[2]]).astype(np.int64)
    zero = zero.reshape(-1, *[1] * (levels.dim() - 1)) if zero.ndim else zero
    assert np.array_equal(numpy_helper.to_array(stored).astype(np.int64) - zero, levels.numpy())
    scale = numpy_helper.to_array(initializers(path)[dq.input[1]])
    dequantized = levels.double().numpy() * scale.astype(np.float64).reshape(-1, *[1] * (levels.dim() - 1))
    fake = module.quantized_weight().detach().double().numpy()
    assert np.allclose(dequantized, fake, rtol=2e-7, atol=1e-7 * np.abs(fake).max())


def test_int4_is_packed(tmp_path: Path) -> None:
    path = tmp_path / "qdq.onnx"
    export_qdq(nets.network("lsq"), path, nets.images(nets.SHAPES["lsq"], 2, seed=23))
    stored = initializers(path)["conv2_wq"]
    assert len(stored.raw_data) == (8 * 6 * 9 + 1) // 2  # two 4-bit levels per byte


@pytest.mark.parametrize(("kind", "layer"), [("lenet", "bn1_act"), ("lenet", "fc1_act"), ("lsq", "fc1_act"),
                                             ("minmax", "bn2_act")])
def test_activation_grid(kind: str, layer: str, tmp_path: Path) -> None:
    """Clip to the grid's real range, then QuantizeLinear/DequantizeLinear with its scale and zero point."""
    gm = nets.network(kind)
    path = tmp_path / "qdq.onnx"
    export_qdq(gm, path, nets.images(nets.SHAPES[kind], 2, seed=24))
    nodes, inits = nodes_by_output(path), initializers(path)
    dq = nodes[layer]
    q = nodes[dq.input[0]]
    clip = nodes[q.input[0]]
    assert (dq.op_type, q.op_type, clip.op_type) == ("DequantizeLinear", "QuantizeLinear", "Clip")
    value = lambda name: numpy_helper.to_array(inits[name])  # noqa: E731
    quantizer = gm.get_submodule(layer).quantizer
    scale, zero = float(value(q.input[1])), int(value(q.input[2]))
    lo, hi = float(value(clip.input[1])), float(value(clip.input[2]))
    if hasattr(quantizer, "alpha"):  # SAT: alpha / R, levels [0, R] in uint8
        alpha, steps = float(quantizer.alpha.detach().abs()), quantizer.spec.range
        assert scale == pytest.approx(alpha / steps, rel=1e-7) and zero == 0
        assert (lo, hi) == (0.0, pytest.approx(alpha, rel=1e-6))
        assert inits[q.input[2]].data_type == TensorProto.UINT8
    elif hasattr(quantizer, "step") and quantizer.step.dim() == 0 and quantizer.step.is_floating_point():  # LSQ
        assert scale == pytest.approx(float(quantizer.step.detach()), rel=1e-7) and zero == 0
        assert hi == pytest.approx(scale * quantizer.spec.range, rel=1e-6)
    else:  # MinMax symmetric: levels [-127, 127] around 0, int8
        assert zero == 0 and inits[q.input[2]].data_type == TensorProto.INT8
        assert lo == pytest.approx(-127 * scale, rel=1e-6) and hi == pytest.approx(127 * scale, rel=1e-6)


def intermediate(gm: fx.GraphModule, x: torch.Tensor, name: str) -> torch.Tensor:
    """The value of node ``name`` when ``gm`` runs on ``x``."""
    found = {}

    class Capture(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            result = super().run_node(n)
            if n.name == name:
                found["value"] = result
            return result

    with torch.no_grad():
        Capture(gm).run(x)
    return found["value"]


def test_sub_8bit_levels_stay_inside_the_grid(tmp_path: Path) -> None:
    """Inputs 50 times too large: bn1's 4-bit SAT activations saturate at level R = 15 in the file too."""
    gm = nets.network("lenet")
    x = nets.images(nets.SHAPES["lenet"], 8, seed=25) * 50
    path = tmp_path / "qdq.onnx"
    export_qdq(gm, path, x)
    model = onnx.load(path)
    model.graph.output.append(onnx.helper.make_tensor_value_info("bn1_act", TensorProto.FLOAT, None))
    onnx.save(model, path)
    runner = OnnxRunner(path)
    inner = runner.run_numpy(runner.feed(x))[1]
    reference = intermediate(gm, x, "bn1_act").numpy()
    quantizer = gm.get_submodule("bn1_act").quantizer
    unit = float(quantizer.alpha.detach().abs()) / quantizer.spec.range
    levels = np.round(inner / unit)
    assert levels.max() == 15 and (levels == 15).mean() > 0.1  # saturated, on the 16-level grid
    assert np.allclose(inner, levels * unit, rtol=1e-6) and np.allclose(inner, reference, rtol=1e-6, atol=1e-6)


def test_clamp_phase_weights_are_float(tmp_path: Path) -> None:
    """A SAT quantizer with ApplyQuantization=0 has no grid: float weights, and a note saying so."""
    gm = copy.deepcopy(nets.network("lenet"))
    conv2 = gm.get_submodule("conv2")
    assert isinstance(conv2, QuantizedWeightLayer)
    conv2.weight_quantizer = SATWeightQuantizer(SATWeightSpec(range=15, apply_quantization=False), n_out=400)
    x = nets.images(nets.SHAPES["lenet"], 16, seed=26)
    report = export("onnx-qdq", gm, None, tmp_path / "qdq.onnx", x)
    assert report.ok, report.summary()
    assert report.notes == ["conv2: weights without a quantization grid written as float"]
    assert "conv2_wq" not in initializers(tmp_path / "qdq.onnx")
    assert isinstance(gm.get_submodule("bn2_act"), QuantizedActivation)


def test_level_flip_is_reported(tmp_path: Path) -> None:
    """A QDQ scale off by 5%: outputs beyond the tolerance, and flips that are not float32 ties."""
    gm = nets.network("lsq")
    x = nets.images(nets.SHAPES["lsq"], 16, seed=27)
    path = tmp_path / "qdq.onnx"
    writer = export_qdq(gm, path, x)
    model = onnx.load(path)
    scale = next(t for t in model.graph.initializer if t.name == "conv2_act_scale")
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.05), scale.name))
    onnx.save(model, path)
    runner = OnnxRunner(path)
    with torch.no_grad():
        reference = [gm(x).numpy()]
    assert compare("onnx-qdq", reference, runner.run_numpy(runner.feed(x)))[1] > 0
    layers = qdq_layer_check(gm, path, x, writer.activations)
    assert not layers.ok and layers.off_tie > 0 and layers.flips >= layers.off_tie


def test_ties_explain_output_differences() -> None:
    """Outputs beyond the tolerance pass when, layer by layer, every flip is a float32 tie."""
    report = ExportReport("onnx-qdq", Path("q.onnx"), 1, 4, 40, 0.3, 5, 1e-4, 3.0,
                          LevelCheck(levels=1000, flips=2, off_tie=0, max_abs_diff=1e-6, differing=0))
    assert report.ok and "2 of 1,000 activation levels flipped, 0 of them not at a float32 tie" in report.summary()
    report.layers.off_tie = 1  # type: ignore[union-attr]
    assert not report.ok
    report.layers = None
    assert not report.ok
