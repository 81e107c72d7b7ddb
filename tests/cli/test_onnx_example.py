"""The ONNX example of models/: scripts/export_resnet20_onnx.py and the two SAT phases that import its file.

Fast checks only (no learning): the script writes an ONNX file onnxruntime agrees with, with plain node
names; both INIs build strictly (every key read), list the imported layers under their node-output names
with the intended quantizers; the phase-2 network fuses to integers that predict as it does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

import qatrun
from qatrun import fuse

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "export_resnet20_onnx.py"
CLAMP = REPO / "models" / "ResNet20-onnx-W4A4-clamp.ini"
W4A4 = REPO / "models" / "ResNet20-onnx-W4A4.ini"


@pytest.fixture
def cifar_data(cifar10: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data folder holding the CIFAR-10 subset, as ``$N2D2_DATA`` for the INIs' ``DataPath``."""
    folder = cifar10.parent
    monkeypatch.setenv("N2D2_DATA", str(folder))
    return folder


def test_export_script_writes_what_onnxruntime_agrees_with(tmp_path: Path) -> None:
    out = tmp_path / "resnet20.onnx"
    # the script builds the network from its INI and exports it: no data set needed
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    difference = float(proc.stdout.split("max |difference| = ")[1].split()[0])
    assert difference < 1e-4, proc.stdout
    graph = onnx.load(str(out)).graph
    outputs = [node.output[0] for node in graph.node if node.op_type != "Identity"]
    assert outputs[:3] == ["conv1", "bn1", "bn1_relu"] and outputs[-3:] == ["pool", "flatten", "logits"]
    assert {"res2_1_proj", "res2_1_proj_bn", "res3_3_sum", "res3_3_sum_relu"} <= set(outputs)
    # the residual sums are single Add nodes (no per-channel Mul glue), BatchNorm not folded into the Convs
    counts = {op: sum(node.op_type == op for node in graph.node) for op in ("Add", "BatchNormalization", "Conv")}
    assert counts == {"Add": 9, "BatchNormalization": 21, "Conv": 21}
    assert {node.op_type for node in graph.node} <= {
        "Add", "AveragePool", "BatchNormalization", "Conv", "Flatten", "Gemm", "Identity", "Relu"}
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch


def _rows(network: qatrun.Network) -> dict[str, list[str]]:
    """Summary rows by layer name: [type, inputs, output, params, MACs, weights, activation]."""
    rows = {}
    for line in network.summary().splitlines()[2:]:
        if not line or line.startswith(("Total", "Size")):
            continue
        name, rest = line.split(maxsplit=1)
        cells = [c for c in rest.split("  ") if c.strip()]
        rows[name] = [c.strip() for c in cells]
    return rows


def test_both_phases_build_with_the_intended_quantizers(cifar_data: Path) -> None:
    clamp = qatrun.load(CLAMP, kernels="eager")  # every key of every section read (strict)
    rows = _rows(clamp)
    assert rows["conv1"][-2:] == ["SAT w clamp", "-"] and rows["bn1"][-1] == "Rectifier"
    assert rows["logits"][-2] == "SAT w clamp" and rows["softmax"][1] == "logits"

    network = qatrun.load(W4A4, kernels="eager")  # every key of every override section was read (strict)
    rows = _rows(network)
    assert len(rows) == 21 + 21 + 9 + 3 and list(rows)[:3] == ["conv1", "bn1", "res1_1_conv1"]
    assert rows["conv1"][-2] == "SAT w8" and rows["logits"][-2] == "SAT w8" and rows["res2_1_proj"][-2] == "SAT w4"
    quantized = [name for name, row in rows.items() if row[-1] == "Linear, SAT a4"]
    assert len(quantized) == 9 + 9 + 9 + 2 + 1  # bn1 of each block, bn2 of each block, the sums, proj, stem
    gm = network.gm
    assert gm.cells["bn1"].act_section.name == "bn1_relu"  # the Relu's section holds the QAct
    assert gm.cells["res1_1_bn2"].section.name == "res1_1_bn2" and gm.cells["res1_1_bn2"].act_section is None
    assert gm.cells["res2_2_conv1"].section.name == "onnx:Conv_def"


def test_phase_2_fuses_to_integers_that_predict_the_same(cifar_data: Path) -> None:
    network = qatrun.load(W4A4, seed=0, kernels="eager", strict=False)
    gm = network.gm.eval()
    int_gm, _ = fuse.integerize(gm, fuse.FuseOptions())
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0)) / 255.0  # on the input grid
    with torch.no_grad():
        fake, integer = gm(x), int_gm(x)
    assert torch.equal(fake.argmax(1), integer.argmax(1))
    # the integer scores are in the unit of the last accumulator: the same up to one factor
    scale = (integer.double() * fake.double()).sum() / (fake.double() ** 2).sum()
    assert (integer.double() / scale - fake.double()).abs().max() < 1e-2 * fake.abs().max()
