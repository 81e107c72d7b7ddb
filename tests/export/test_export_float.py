"""The float ONNX file (torch's exporter, or qatrun's writer as the fallback): the float network within 1e-5."""

from __future__ import annotations

from pathlib import Path

import export_nets as nets
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qatrun.export import export
from qatrun.net import layers
from qatrun.export.onnx_float import float_network
from qatrun.export.runtime import OnnxRunner
from qatrun.quant import QuantizedActivation, QuantizedWeightLayer


@pytest.mark.parametrize("kind", ["lenet", "residual", "fmp"])
def test_matches_float_network(kind: str, tmp_path: Path) -> None:
    gm = nets.network(kind)
    x = nets.images(nets.SHAPES[kind], 32, seed=31)
    report = export("onnx", gm, None, tmp_path / "float.onnx", x)
    assert report.ok and report.max_abs_diff < 1e-5, report.summary()
    assert report.notes == []
    model = onnx.load(tmp_path / "float.onnx")
    assert model.opset_import[0].version == 13
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "Round"}
    # The batch dimension is dynamic: another batch size runs.
    (out,) = OnnxRunner(tmp_path / "float.onnx").run_numpy(x[:3].numpy())
    with torch.no_grad():
        assert np.abs(out - float_network(gm)(x[:3]).numpy()).max() < 1e-5


def test_float_network_has_no_quantizer() -> None:
    gm = nets.network("lenet")
    floats = float_network(gm)
    assert not any(isinstance(m, (QuantizedWeightLayer, QuantizedActivation)) for m in floats.modules())
    assert any(isinstance(m, QuantizedWeightLayer) for m in gm.modules())  # the original is untouched
    assert floats.get_submodule("conv1").weight is not gm.get_submodule("conv1").weight


@pytest.mark.parametrize("kind", ["lenet", "residual", "minmax", "fmp"])
def test_writer_fallback(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When torch's exporter fails, qatrun's own writer writes the same float network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter refuses this graph")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    x = nets.images(nets.SHAPES[kind], 32, seed=32)
    report = export("onnx", nets.network(kind), None, tmp_path / "float.onnx", x)
    assert report.ok and report.max_abs_diff < 1e-5, report.summary()
    assert len(report.notes) == 1 and "RuntimeError: exporter refuses this graph" in report.notes[0]


class Zoo(torch.nn.Module):
    """The other modules qatrun's networks are made of, for qatrun's own writer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.pad = nn.ZeroPad2d((1, 0, 2, -1))
        self.conv = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.rect = layers.Rectifier(0.1, 2.0)
        self.deconv = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.maxpool = nn.MaxPool2d(2)
        self.sum = layers.ElemWise("EuclideanSum", torch.rand(2, 4), torch.rand(2, 4))
        self.absum = layers.ElemWise("AbsSum", torch.rand(2, 4), torch.zeros(2, 4))
        self.prod = layers.ElemWise("Prod", torch.ones(2, 4), torch.zeros(2, 4))
        self.max = layers.ElemWise("Max", torch.ones(2, 4), torch.zeros(2, 4))
        self.acts = nn.ModuleList([nn.Hardtanh(-0.5, 0.5), nn.Sigmoid(), nn.SiLU(), nn.Softplus(),
                                   layers.ScaledTanh(0.66, 1.7), nn.LeakyReLU(0.2), nn.Tanh()])
        self.scale = layers.Scaling(0.5)
        self.bn = nn.BatchNorm2d(4).eval()
        self.permute = layers.Permute((0, 1, 3, 2))
        self.reshape = layers.Reshape((4, 1, 49))
        self.fc = nn.Linear(196, 6)
        self.softmax = layers.Softmax(group_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rect(self.conv(self.pad(x)))  # (N, 4, 7, 7)
        z = self.pool(self.deconv(y))  # (N, 4, 7, 7)
        a = self.sum(y, z) + self.absum(y, z)
        b = self.max(self.prod(y, z), a)
        for act in self.acts:
            b = act(b)
        c = self.permute(self.bn(self.scale(b)))
        d = self.reshape(c)
        return self.softmax(self.fc(torch.flatten(d, 1)))


def test_writer_covers_the_other_modules(tmp_path: Path) -> None:
    from qatrun.export.onnx_qdq import QdqWriter

    class Leaves(torch.fx.Tracer):  # every module one node, as in qatrun's graphs
        def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
            return True

    root = Zoo()
    net = torch.fx.GraphModule(root, Leaves().trace(root)).eval()
    x = torch.rand(5, 2, 6, 6)
    QdqWriter(net, x, quantized=False).write(tmp_path / "zoo.onnx")
    (out,) = OnnxRunner(tmp_path / "zoo.onnx").run_numpy(x.numpy())
    with torch.no_grad():
        assert np.abs(out - net(x).numpy()).max() < 1e-5
