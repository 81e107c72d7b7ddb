"""``ActivationFunction`` in the override section of an imported node that no Relu follows (onnx_import/activations.py).

The graph is the residual pattern of a ResNet block: x -> Conv 'c' -> BatchNormalization 'b' -> Add 'a'
(b + x) -> Relu 'r'. 'b' is followed by the Add, not by a Relu: its section may give it an activation,
which then carries its ``QAct``; 'a' is followed by the Relu: there the key stays an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qatrun import net, quant
from qatrun.errors import ConfigError
from qatrun.ini import loads

HEADER = "[onnx]\nInput=sp\nType=ONNX\nFile=block.onnx\n"  # lines 1-4
TARGET = "[a.Target]\n"  # the Relu r is the activation of the Add a: no cell of its own


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.RandomState(0)
    tensors = {
        "w": rng.randn(3, 3, 3, 3).astype(np.float32), "scale": rng.uniform(0.5, 1.5, 3).astype(np.float32),
        "shift": rng.uniform(-0.5, 0.5, 3).astype(np.float32), "mean": rng.uniform(-0.5, 0.5, 3).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, 3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["b"], name="bn"),
        helper.make_node("Add", ["b", "x"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(value, name) for name, value in tensors.items()],
    )
    path = tmp_path_factory.mktemp("own") / "block.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path.parent


def build(root: Path, text: str):
    doc = loads(HEADER + text + TARGET, str(root / "test.ini"))
    return doc, net.build(doc, (3, 4, 4))


def test_linear_activation_carries_the_qact(root: Path) -> None:
    _, plain = build(root, "")
    doc, gm = build(root, "[b]\nActivationFunction=Linear\nQAct=SAT\nQAct.Range=15\n")
    cell = gm.cells["b"]
    assert cell.activation == "Linear" and cell.act_section is None and type(gm.b_act) is nn.Identity
    assert plain.cells["b"].act_module is None and not hasattr(plain, "b_act")
    add = gm.graph.find_nodes(op="call_module", target="a")[0]
    assert add.args[0].target == "b_act"  # the Add reads the activation, not the BatchNorm
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    gm.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(gm(x), plain(x))  # Linear: the function is unchanged
    plan = quant.plan_for(cell.section, doc.params(cell.section))
    assert plan.act.range == 15 and plan.weight is None
    quant.prepare(gm, {"b": plan}, act_names={"b": "b_act"})
    doc.check_strict()  # ActivationFunction, QAct and QAct.Range were all read
    assert isinstance(gm.b_act, quant.QuantizedActivation)
    with torch.no_grad():
        levels = gm.b_act(torch.linspace(-1, 2, 31)) * 15  # SAT, alpha 1: 16 levels on [0, 1]
    assert torch.equal(levels, levels.round()) and levels.min() == 0 and levels.max() == 15


def test_default_section_gives_the_activation_too(root: Path) -> None:
    _, gm = build(root, "[onnx:BatchNorm_def]\nActivationFunction=Rectifier\n[onnx:Conv_def]\nActivationFunction=Linear\n")
    assert type(gm.b_act) is nn.ReLU and gm.cells["b"].section.name == "onnx:BatchNorm_def"
    assert type(gm.c_act) is nn.Identity  # the Conv is followed by the BatchNorm, no Relu


ERRORS = [
    ("relu-follows", "[a]\nActivationFunction=Linear\n",
     "test.ini:6: [a] ActivationFunction: the activation of an imported cell comes from the graph (N2D2 ignores "
     "ActivationFunction here): set it in a section named after the output of the Relu that follows the node"),
    ("parameter-without-function", "[b]\nActivationFunction.Clipping=6\n",
     "test.ini:6: [b] ActivationFunction.Clipping: ActivationFunction.Clipping is given but the section has no "
     "ActivationFunction="),
]


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_errors(root: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(root, text)
    assert str(info.value).replace(str(root) + "/", "") == message
