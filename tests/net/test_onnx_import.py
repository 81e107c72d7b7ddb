"""ONNX import (``Type=ONNX``) and N2D2's override sections (reference/n2d2.md section 1.9).

The graphs are written here: a small residual CNN exported by torch (Conv, BatchNorm, Relu, MaxPool, a
residual Add, Flatten, Gemm), with its node outputs renamed to short names as N2D2's example files use
(``conv1``, ``relu1``...), and small graphs written node by node with ``onnx.helper``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

import qatrun
from qatrun import net, quant
from qatrun.errors import ConfigError
from qatrun.ini import Document, loads
from qatrun.net import layers

ONNX_SECTION = "[onnx]\nInput=sp\nType=ONNX\nFile=small.onnx\n"  # lines 1-4
TARGET = "\n[logits.Target]\n"


class SmallNet(nn.Module):
    """Conv-BN-Relu, MaxPool, a residual block (Conv-BN-Relu-Conv-BN + skip, Relu), Flatten, Fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        y = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(x)))))
        return self.fc(torch.flatten(self.relu3(x + y), 1))


class GlueNet(nn.Module):
    """Nodes that are no N2D2 cell: a product by a constant tensor, a concatenation, a Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(8 * 8 * 8, 5)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 4).reshape(1, 4, 1, 1))  # an ONNX initializer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        y = torch.cat([y, y * self.scale], 1)
        return self.fc(y.reshape(-1, 8 * 8 * 8))


@dataclasses.dataclass
class Files:
    root: Path
    model: SmallNet
    glue: GlueNet


def _short_names(model: onnx.ModelProto) -> None:
    """Renames node outputs as N2D2's examples read: ``/conv1/Conv`` -> ``conv1``, ``/Add`` -> ``add``."""
    names = {}
    for node in model.graph.node:
        if node.output[0] not in {output.name for output in model.graph.output}:
            parts = node.name.strip("/").split("/")
            names[node.output[0]] = parts[0] if len(parts) > 1 else parts[0].lower()
    for node in model.graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]


def _export(model: nn.Module, path: Path, shape: tuple[int, ...], short: bool = True) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter (design.md section 8) says it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, torch.zeros(shape), str(path), dynamo=False, opset_version=13, do_constant_folding=False,
            input_names=["x"], output_names=["logits"],
        )
    proto = onnx.load(str(path))
    if short:
        _short_names(proto)
    onnx.save(proto, str(path))


def _conv_mystery_relu(path: Path) -> None:
    """x -> Conv 'c' -> Mystery 'm' (an operator nobody converts) -> Relu 'r'."""
    weight = np.random.RandomState(0).randn(4, 3, 3, 3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mystery", ["c"], ["m"], name="mystery", domain="qatrun.test"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "mystery", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4, 8, 8])], [numpy_helper.from_array(weight, "w")],
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("qatrun.test", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))


def _matmul_gemm(path: Path) -> None:
    """Flatten 'f'; MatMul 'mm' + Add of a vector 'y'; Gemm 'gemm' with a (1, 5) bias, alpha 0.5."""
    rng = np.random.RandomState(1)
    tensors = {
        "W": rng.randn(48, 5).astype(np.float32), "b": rng.randn(5).astype(np.float32),
        "G": rng.randn(5, 48).astype(np.float32), "C": rng.randn(1, 5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "W"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="add"),
        helper.make_node("Gemm", ["f", "G", "C"], ["gemm"], name="gemm", transB=1, alpha=0.5),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 5]) for name in ("y", "gemm")]
    graph = helper.make_graph(
        nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])], outputs,
        [numpy_helper.from_array(value, name) for name, value in tensors.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def _more_operators(path: Path) -> None:
    """Conv with an asymmetric padding 'c'; Relu 'r' of c, which the Add 'a' reads too; GlobalAveragePool
    'g'; Flatten; Dropout 'd' with a constant ratio; Gemm 'fc'; Softmax 's'."""
    rng = np.random.RandomState(2)
    tensors = {
        "w": rng.randn(4, 3, 3, 3).astype(np.float32), "ratio": np.array(0.3, dtype=np.float32),
        "G": rng.randn(6, 4).astype(np.float32), "C": rng.randn(6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["c", "r"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Dropout", ["f", "ratio"], ["d"], name="dropout"),
        helper.make_node("Gemm", ["d", "G", "C"], ["fc"], name="gemm", transB=1),
        helper.make_node("Softmax", ["fc"], ["s"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "more", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(value, name) for name, value in tensors.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = SmallNet()
    for bn in (model.bn1, model.bn2, model.bn3):  # statistics of a trained network, not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    _export(model, root / "small.onnx", (1, 3, 8, 8))
    _export(model, root / "raw.onnx", (1, 3, 8, 8), short=False)
    glue = GlueNet().eval()
    _export(glue, root / "glue.onnx", (1, 3, 8, 8))
    _conv_mystery_relu(root / "mystery.onnx")
    _matmul_gemm(root / "fc.onnx")
    _more_operators(root / "more.onnx")
    (root / "garbage.onnx").write_bytes(b"\x08\x07not an onnx model \xff\xfe")
    return Files(root, model, glue)


def build(files: Files, text: str, shape: tuple[int, int, int] = (3, 8, 8)) -> tuple[Document, torch.fx.GraphModule]:
    torch.manual_seed(0)
    doc = loads(text, str(files.root / "test.ini"))
    return doc, net.build(doc, shape)


def build_error(files: Files, text: str, shape: tuple[int, int, int] = (3, 8, 8)) -> str:
    with pytest.raises(ConfigError) as info:
        build(files, text, shape)
    return str(info.value).replace(str(files.root) + "/", "")


def test_import_computes_the_source_model(files: Files) -> None:
    _, gm = build(files, ONNX_SECTION + TARGET)
    gm.eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = (gm(x) - files.model(x)).abs().max().item()
    print(f"max |imported - source| = {difference:.3g}")
    assert difference < 1e-5
    assert type(gm.conv1) is nn.Conv2d and type(gm.bn1) is nn.BatchNorm2d and type(gm.logits) is nn.Linear
    assert type(gm.pool) is nn.MaxPool2d and isinstance(gm.add, layers.ElemWise)
    assert type(gm.bn1_act) is nn.ReLU and type(gm.add_act) is nn.ReLU  # the Relu nodes are activations
    assert not hasattr(gm, "relu1") and not hasattr(gm, "relu3")
    assert not hasattr(gm, "onnx")  # no glue: the Flatten became torch.flatten
    fc_input = next(node for node in gm.graph.nodes if node.target == "logits").args[0]
    add_act = gm.graph.find_nodes(op="call_module", target="add_act")[0]
    assert fc_input.target is torch.flatten and fc_input.args == (add_act, 1)


def test_raw_torch_names_work_as_cell_names(files: Files) -> None:
    text = "[onnx]\nInput=sp\nType=ONNX\nFile=raw.onnx\n[/conv1/Conv_output_0]\nConfigSection=c\n[c]\nNoBias=1\n"
    _, gm = build(files, text + TARGET)
    conv = gm.cells["/conv1/Conv_output_0"]
    assert conv.module_name == "_conv1_Conv_output_0" and conv.module.bias is None
    assert gm.cells["/Add_output_0"].activation == "Rectifier"


def test_summary_lists_the_imported_layers_under_their_output_names(files: Files) -> None:
    _, gm = build(files, ONNX_SECTION + TARGET)
    rows = {row.name: row for row in net.summarize(gm)}
    assert list(rows) == ["conv1", "bn1", "pool", "conv2", "bn2", "conv3", "bn3", "add", "logits"]
    assert [rows[name].type for name in rows] == [
        "Conv", "BatchNorm", "Pool", "Conv", "BatchNorm", "Conv", "BatchNorm", "ElemWise", "Fc"]
    assert rows["conv1"].inputs == ("sp",) and rows["pool"].inputs == ("bn1",)
    assert rows["add"].inputs == ("pool", "bn3") and rows["logits"].inputs == ("add",)
    assert {name for name, row in rows.items() if row.activation} == {"bn1", "bn2", "add"}
    assert rows["conv1"].out_shape == (8, 8, 8) and rows["pool"].out_shape == (8, 4, 4)
    assert rows["logits"].out_shape == (10, 1, 1)
    assert rows["conv1"].macs == 8 * 8 * 8 * 3 * 9 and rows["logits"].macs == 128 * 10
    assert rows["conv1"].params == 8 * 3 * 9 + 8 and rows["bn1"].params == 16


OVERRIDES = ONNX_SECTION + """
[onnx:Conv_def]
QWeight=SAT
QWeight.Range=15
ConfigSection=conv.config

[conv.config]
NoBias=1

[conv1]onnx:Conv_def
QWeight.Range=255
ConfigSection=conv1.config

[conv1.config]
NoBias=0

[onnx:BatchNorm_def]
ConfigSection=bn.config

[bn.config]
Epsilon=0.001
MovingAverageMomentum=0.05

[ReluQ_def]
ActivationFunction=Linear
QAct=SAT
QAct.Range=15
QActSolver=SGD
QActSolver.LearningRate=0.05

[relu1]ReluQ_def

[relu3]ReluQ_def
ActivationFunction=Rectifier
ActivationFunction.Clipping=6
""" + TARGET


def test_per_node_section_wins_over_the_default(files: Files) -> None:
    doc, gm = build(files, OVERRIDES)
    cells = gm.cells
    assert cells["conv1"].section.name == "conv1"
    assert cells["conv2"].section.name == "onnx:Conv_def" and cells["conv3"].section.name == "onnx:Conv_def"
    assert cells["pool"].section is None and cells["logits"].section is None  # no Fc or Pool default given
    assert gm.conv1.bias is not None and gm.conv2.bias is None and gm.conv3.bias is None
    assert cells["conv2"].params["NoBias"] is True and cells["conv1"].params["NoBias"] is False
    for bn in (gm.bn1, gm.bn2, gm.bn3):
        assert (bn.eps, bn.momentum) == (0.001, 0.05)
    plans = {name: quant.plan_for(cells[name].section, doc.params(cells[name].section)) for name in ("conv1", "conv2")}
    assert (plans["conv1"].weight.range, plans["conv2"].weight.range) == (255, 15)


def test_cell_parameters_from_config_sections(files: Files) -> None:
    text = ONNX_SECTION + "[onnx:BatchNorm_def]\nConfigSection=frozen\n[frozen]\nMovingAverageMomentum=0\n" \
        "[conv2]\nConfigSection=fixed\n[fixed]\nBackPropagate=0\n[onnx:Dropout_def]\nConfigSection=frozen\n"
    doc, gm = build(files, text + TARGET)
    assert all(type(gm.get_submodule(bn)) is layers.RunningStatsBatchNorm2d for bn in ("bn1", "bn2", "bn3"))
    assert torch.equal(gm.bn1.running_var, files.model.bn1.running_var)  # the file's statistics are kept
    conv2 = next(node for node in gm.graph.nodes if node.target == "conv2")
    assert conv2.args[0].op == "call_method" and conv2.args[0].target == "detach"
    assert gm.cells["conv2"].params["BackPropagate"] is False and gm.cells["conv3"].section is None
    doc.check_strict()  # [onnx:Dropout_def] matches no node (no Dropout in the graph): unused, not an error


def test_relu_sections_replace_the_activation_and_hold_its_qact(files: Files) -> None:
    doc, gm = build(files, OVERRIDES)
    bn1, bn2, add = gm.cells["bn1"], gm.cells["bn2"], gm.cells["add"]
    assert bn1.act_section.name == "relu1" and bn1.activation == "Linear" and type(gm.bn1_act) is nn.Identity
    assert bn2.act_section is None and bn2.activation == "Rectifier" and type(gm.bn2_act) is nn.ReLU
    assert add.act_section.name == "relu3" and isinstance(gm.add_act, nn.Hardtanh)
    assert (gm.add_act.min_val, gm.add_act.max_val) == (0.0, 6.0)
    # The API's plans: QWeight* from the cell's section, QAct* from act_section or section.
    plans = qatrun.quant_plans(doc, gm)
    assert set(plans) == {"conv1", "conv2", "conv3", "bn1", "add"}
    assert plans["bn1"].act.range == 15 and plans["bn1"].act_solver.settings == {"LearningRate": "0.05"}
    doc.check_strict()  # every key of every override section was read by net or quant
    quant.prepare(gm, plans, act_names=qatrun.network.activation_names(gm))
    assert isinstance(gm.bn1_act, quant.QuantizedActivation) and isinstance(gm.conv2, quant.QuantConv2d)
    assert gm(torch.rand(2, 3, 8, 8)).shape == (2, 10)


def test_onnx_init_0_fills_from_the_fillers(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    fillers = "\n[onnx:Conv_def]\nWeightsFiller=ConstantFiller\nWeightsFiller.Value=0.25\n" \
              "BiasFiller=ConstantFiller\nBiasFiller.Value=-0.5\n"
    doc, gm = build(files, ONNX_SECTION + "ONNX_init=0\n" + fillers + TARGET)
    for name in ("conv1", "conv2", "conv3"):
        assert torch.equal(gm.get_submodule(name).weight, torch.full_like(gm.get_submodule(name).weight, 0.25))
        assert torch.equal(gm.get_submodule(name).bias, torch.full((8,), -0.5))
    assert abs(gm.logits.weight.std().item() - 0.05) < 0.005  # N2D2's default N(0, 0.05)
    doc.check_strict()  # the fillers were read
    assert not torch.equal(gm.logits.weight, files.model.fc.weight)
    for name in ("bn1", "bn2", "bn3"):
        bn = gm.get_submodule(name)
        assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
        assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.zeros(8))
    capsys.readouterr()
    _, gm = build(files, ONNX_SECTION + fillers + TARGET)
    assert torch.equal(gm.conv1.weight, files.model.conv1.weight)
    warnings = capsys.readouterr().err
    assert warnings.count("WeightsFiller/BiasFiller have no effect: ONNX_init=1") == 1, warnings


def test_ignore_skips_a_node(files: Files) -> None:
    _, gm = build(files, ONNX_SECTION + "Ignore=relu2\n" + TARGET)
    assert gm.cells["bn2"].act_module is None
    model = SmallNet()
    model.load_state_dict(files.model.state_dict())
    model.relu2 = nn.Identity()
    x = torch.randn(4, 3, 8, 8)
    gm.eval()
    with torch.no_grad():
        assert (gm(x) - model.eval()(x)).abs().max() < 1e-5


def test_ignore_skips_an_operator_nobody_converts(files: Files) -> None:
    _, gm = build(files, "[onnx]\nInput=sp\nType=ONNX\nFile=mystery.onnx\nIgnore=m\n[c.Target]\n")
    weight = numpy_helper.to_array(onnx.load(str(files.root / "mystery.onnx")).graph.initializer[0]).copy()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(gm(x), F.relu(F.conv2d(x, torch.from_numpy(weight), padding=1)), atol=1e-6)
    assert gm.cells["c"].activation == "Rectifier"


def test_ignore_input_size_runs_the_graph_on_the_sp_size(files: Files) -> None:
    _, gm = build(files, "[onnx]\nInput=sp\nType=ONNX\nFile=mystery.onnx\nIgnore=m\nIgnoreInputSize=1\n[c.Target]\n",
                  (3, 12, 12))
    assert gm.cells["c"].out_shape == (4, 12, 12) and gm(torch.zeros(1, 3, 12, 12)).shape == (1, 4, 12, 12)


def test_glue_nodes_are_kept_in_the_onnx_container(files: Files) -> None:
    _, gm = build(files, "[onnx]\nInput=sp\nType=ONNX\nFile=glue.onnx\n[logits.Target]\n")
    x = torch.randn(3, 3, 8, 8)
    assert (gm(x) - files.glue(x)).abs().max() < 1e-6
    assert list(gm.cells) == ["conv", "logits"] and gm.cells["conv"].activation == "Rectifier"
    glue = {type(module).__name__ for name, module in gm.onnx.named_children() if name != "constants"}
    assert {"OnnxConcat", "OnnxReshape", "OnnxBinaryMathOperation"} <= glue, glue
    assert torch.equal(gm.onnx.constants.c0, files.glue.scale)
    assert gm.cells["logits"].in_shape == (512, 1, 1)


def test_matmul_add_and_gemm_become_linear_cells(files: Files) -> None:
    _, gm = build(files, "[onnx]\nInput=sp\nType=ONNX\nFile=fc.onnx\n[mm.Target]\n[gemm.Target]\n", (3, 4, 4))
    graph = onnx.load(str(files.root / "fc.onnx")).graph
    initializers = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    x = torch.randn(3, 3, 4, 4)
    mm, gemm = gm(x)
    assert type(gm.mm) is nn.Linear and type(gm.gemm) is nn.Linear and gm.cells["mm"].type == "Fc"
    assert torch.allclose(mm, x.flatten(1) @ initializers["W"] + initializers["b"], atol=1e-5)
    assert torch.allclose(gemm, 0.5 * x.flatten(1) @ initializers["G"].T + initializers["C"], atol=1e-5)


def test_more_operators_match_onnxruntime(files: Files) -> None:
    import onnxruntime

    _, gm = build(files, "[onnx]\nInput=sp\nType=ONNX\nFile=more.onnx\n[s.Target]\n")
    assert [(cell.name, cell.type) for cell in gm.cells.values()] == [
        ("c_padding", "Padding"), ("c", "Conv"), ("r", "Activation"), ("a", "ElemWise"), ("g", "Pool"),
        ("d", "Dropout"), ("fc", "Fc"), ("s", "Softmax")]
    assert gm.cells["c"].act_module is None  # the Relu's input feeds the Add too: a cell of its own
    assert type(gm.c_padding) is nn.ZeroPad2d and gm.c_padding.padding == (0, 1, 0, 1)
    assert type(gm.g) is nn.AvgPool2d and gm.g.kernel_size == (7, 7) and gm.d.p == pytest.approx(0.3)
    assert gm.cells["fc"].inputs == ("d",) and gm.cells["r"].inputs == ("c",)
    session = onnxruntime.InferenceSession(str(files.root / "more.onnx"), providers=["CPUExecutionProvider"])
    gm.eval()
    for seed in range(3):
        x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        expected = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        with torch.no_grad():
            assert (gm(x) - expected).abs().max() < 1e-6


def test_ini_layers_after_the_imported_graph(files: Files) -> None:
    text = """[fc2]
Input=relu3
Type=Fc
NbOutputs=4

""" + ONNX_SECTION + """
[soft]
Input=onnx,logits
Type=Softmax
NbOutputs=10

[soft.Target]
[fc2.Target]
"""
    _, gm = build(files, text)
    assert list(gm.cells)[-2:] == ["fc2", "soft"]  # fc2 is written first but reads the graph: built after it
    features = {}
    files.model.relu3.register_forward_hook(lambda module, args, out: features.update(relu3=out))
    x = torch.randn(4, 3, 8, 8)
    gm.eval()
    with torch.no_grad():
        fc2, soft = gm(x)  # one output per target, in build order
        expected = torch.softmax(files.model(x), dim=1)
    assert (soft - expected).abs().max() < 1e-6
    assert torch.allclose(fc2, gm.fc2(features["relu3"].flatten(1)), atol=1e-6)
    assert gm.cells["soft"].inputs == ("logits",) and gm.cells["fc2"].in_shape == (8, 4, 4)


def test_onnx2torch_loads_without_torchvision() -> None:
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    from qatrun.net.onnx_import import loading

    assert loading.onnx2torch().get_converter is not None
    assert "torchvision" not in sys.modules  # the stand-in does not outlive the import


SP = (3, 8, 8)  # the [sp] size the graphs were exported for

# (id, [sp] size, INI text, the exact message); a message ending in ": " is followed by the reader's own words.
ERRORS = [
    ("missing-file", SP, "[onnx]\nInput=sp\nType=ONNX\nFile=nothere.onnx\n" + TARGET,
     "test.ini:4: [onnx] File: no such file: nothere.onnx"),
    ("unreadable-file", SP, "[onnx]\nInput=sp\nType=ONNX\nFile=garbage.onnx\n" + TARGET,
     "test.ini:4: [onnx] File: cannot read garbage.onnx as an ONNX model: "),
    ("unconvertible-operator", SP, "[onnx]\nInput=sp\nType=ONNX\nFile=mystery.onnx\n[c.Target]\n",
     "test.ini:4: [onnx] File: operator qatrun.test:Mystery (opset 1) of node 'mystery' (Mystery, output 'm') "
     "cannot be converted by onnx2torch; list 'm' in Ignore= to skip the node"),
    ("input-size", (3, 12, 12), "[onnx]\nInput=sp\nType=ONNX\nFile=mystery.onnx\nIgnore=m\n[c.Target]\n",
     "test.ini:4: [onnx] File: the graph takes 3x8x8 inputs (C x H x W), [sp] gives 3x12x12: set "
     "IgnoreInputSize=1 to run the graph on the [sp] size"),
    ("input-size-ignored-but-fc", (3, 12, 12), ONNX_SECTION + "IgnoreInputSize=1\n" + TARGET,
     "test.ini:4: [onnx] File: node '/fc/Gemm' (Gemm, output 'logits') fails on a 3x12x12 input (IgnoreInputSize=1 "
     "runs the graph on the [sp] size): mat1 and mat2 shapes cannot be multiplied (1x288 and 128x10)"),
    ("ignore-unknown", SP, ONNX_SECTION + "Ignore=relu_2\n" + TARGET,
     "test.ini:5: [onnx] Ignore: 'relu_2' is no node output of small.onnx (did you mean 'relu2'?)"),
    ("transpose", SP, ONNX_SECTION + "Transpose=1\n" + TARGET,
     "test.ini:5: [onnx] Transpose: Transpose=1 is not supported by qatrun"),
    ("onnx-input", SP, "[onnx]\nInput=act\nType=ONNX\nFile=small.onnx\n[act]\nInput=sp\nType=Activation\nNbOutputs=3\n"
     "ActivationFunction=Linear\n" + TARGET,
     "test.ini:2: [onnx] Input: an ONNX graph reads the network input: expected Input=sp (or env, cenv), found act"),
    ("geometry-in-default", SP, ONNX_SECTION + "[onnx:Conv_def]\nKernelDims=5 5\n" + TARGET,
     "test.ini:6: [onnx:Conv_def] KernelDims: the geometry of node '/conv1/Conv' (Conv, output 'conv1') comes from "
     "the ONNX graph: KernelDims cannot be overridden"),
    ("geometry-in-node", SP, ONNX_SECTION + "[pool]\nNbOutputs=4\n" + TARGET,
     "test.ini:6: [pool] NbOutputs: the geometry of node '/pool/MaxPool' (MaxPool, output 'pool') comes from "
     "the ONNX graph: NbOutputs cannot be overridden"),
    ("activation-in-cell-section", SP, ONNX_SECTION + "[bn1]\nActivationFunction=Linear\n" + TARGET,
     "test.ini:6: [bn1] ActivationFunction: the activation of an imported cell comes from the graph (N2D2 ignores "
     "ActivationFunction here): set it in a section named after the output of the Relu that follows the node"),
    ("cell-parameter-in-override", SP, ONNX_SECTION + "[conv1]\nNoBias=1\n" + TARGET,
     "test.ini:6: [conv1] NoBias: N2D2 reads NoBias only from a ConfigSection (it silently ignores it in the layer "
     "section): move it to the section named by ConfigSection="),
    ("override-names-no-node", SP, ONNX_SECTION + "[rellu1]\nActivationFunction=Linear\n" + TARGET,
     "test.ini:5: [rellu1] names no node of the ONNX graph imported by [onnx] (an override section is named after "
     "a node's first output) (did you mean 'relu1'?)"),
    ("override-sibling-names-no-node", SP, ONNX_SECTION + "[Q]\nActivationFunction=Linear\n[relu1]Q\n[stage4_act]Q\n"
     + TARGET,
     "test.ini:8: [stage4_act] names no node of the ONNX graph imported by [onnx] (an override section is named "
     "after a node's first output)"),
    ("override-of-glue", SP, ONNX_SECTION + "[flatten]\nQWeight=SAT\n" + TARGET,
     "test.ini:5: [flatten] node 'flatten' is no cell (qatrun keeps the node as it is): the section has nothing "
     "to set"),
    ("no-rectifier-default", SP, ONNX_SECTION + "[onnx:Rectifier_def]\nActivationFunction=Linear\n" + TARGET,
     "test.ini:5: [onnx:Rectifier_def] N2D2 has no default section Rectifier_def (defaults: Conv_def, Fc_def, "
     "BatchNorm_def, Pool_def, Dropout_def, LRN_def); the settings of a Relu go in a section named after its output"),
    ("default-of-unknown-onnx", SP, ONNX_SECTION + "[onx:Conv_def]\nQWeight=SAT\n" + TARGET,
     "test.ini:5: [onx:Conv_def] [onx] is no ONNX section: defaults are named [<ONNX section>:<Kind>_def] "
     "(did you mean 'onnx'?)"),
    ("unknown-node-input", SP, ONNX_SECTION + "[soft]\nInput=logit\nType=Softmax\nNbOutputs=10\n[soft.Target]\n",
     "test.ini:6: [soft] Input: 'logit' is neither a layer section (a section with Input=) nor the network input "
     "(sp, env, cenv) (did you mean 'logits'?)"),
    ("onnx-section-alone", SP, ONNX_SECTION + "[soft]\nInput=onnx\nType=Softmax\nNbOutputs=10\n[soft.Target]\n",
     "test.ini:6: [soft] Input: [onnx] imports an ONNX graph: name the node output to read after it "
     "(Input=onnx,<node output>)"),
    ("no-target", SP, ONNX_SECTION,
     "test.ini: Missing target cell (no [*.Target] section found): the network output [logits] needs a "
     "[logits.Target] section"),
    ("layer-named-like-a-node", SP, ONNX_SECTION + "[pool]\nInput=sp\nType=Softmax\nNbOutputs=3\n" + TARGET,
     "test.ini:5: [pool] [pool] is a layer (it has Input=) and a node output of the graph imported by [onnx]: "
     "rename the layer"),
]


@pytest.mark.parametrize(("shape", "text", "message"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_errors_name_the_key_and_line(files: Files, shape: tuple[int, int, int], text: str, message: str) -> None:
    found = build_error(files, text, shape)
    if message.endswith(": "):
        assert found.startswith(message), found
    else:
        assert found == message
