"""The float ONNX file (torch's exporter, or qatrun's writer as the fallback): the float network within 1e-5."""

from __future__ import annotations

from pathlib import Path

import export_nets as nets
import numpy as np
import onnx
import pytest
import torch

from qatrun.export import export
from qatrun.export.onnx_float import float_network
from qatrun.export.runtime import OnnxRunner
from qatrun.quant import QuantizedActivation, QuantizedWeightLayer


@pytest.mark.parametrize("kind", ["lenet", "residual"])
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


@pytest.mark.parametrize("kind", ["lenet", "residual", "minmax"])
def test_writer_fallback(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When torch's exporter fails, qatrun's own writer writes the same float network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter refuses this graph")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    x = nets.images(nets.SHAPES[kind], 32, seed=32)
    report = export("onnx", nets.network(kind), None, tmp_path / "float.onnx", x)
    assert report.ok and report.max_abs_diff < 1e-5, report.summary()
    assert len(report.notes) == 1 and "RuntimeError: exporter refuses this graph" in report.notes[0]
