"""Graph construction: ranks and file order, targets, glue nodes, the GraphModule contract."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import fx, nn

from qatrun.net import Cell, Target, declared_keys, module_name, summarize
from qatrun.net.graph import SOURCES


def act(name: str, input_: str) -> str:
    return f"[{name}]\nInput={input_}\nType=Activation\nNbOutputs=[{input_}]_NbOutputs\n" if input_ not in SOURCES \
        else f"[{name}]\nInput={input_}\nType=Activation\nNbOutputs=1\n"


def test_rank_order_then_file_order(build_net) -> None:
    # b and d come before their inputs in the file; x, z have rank 1, y and d rank 2, b rank 3
    text = act("b", "y") + act("x", "sp") + act("y", "x") + act("d", "z") + act("z", "sp")
    text += "[b.Target]\n[d.Target]\n"
    _, gm = build_net(text, target=False)
    assert list(gm.cells) == ["x", "z", "y", "d", "b"]


def test_references_to_injected_properties_of_cells_written_later(build_net) -> None:
    text = "[fc]\nInput=c\nType=Fc\nNbOutputs=[c]_OutputsWidth\n" \
           "[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\n"
    _, gm = build_net(text, (1, 9, 9))
    assert gm.cells["fc"].out_shape == (7, 1, 1)


def test_env_and_cenv_name_the_input(build_net) -> None:
    for source in SOURCES:
        _, gm = build_net(act("a", source), (1, 2, 2))
        assert gm.cells["a"].inputs == (source,)


def test_contract_of_cells_and_targets(build_net) -> None:
    text = "[conv1.a]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nActivationFunction=Rectifier\n" \
           "[soft]\nInput=conv1.a\nType=Softmax\nNbOutputs=2\nWithLoss=1\n[soft.Target]\nTopN=2\n"
    doc, gm = build_net(text, (1, 5, 5), target=False)
    assert isinstance(gm, fx.GraphModule)
    cell = gm.cells["conv1.a"]
    assert isinstance(cell, Cell)
    assert (cell.name, cell.type, cell.inputs, cell.out_shape, cell.in_shape) == (
        "conv1.a", "Conv", ("sp",), (2, 3, 3), (1, 5, 5))
    assert cell.module is gm.conv1_a and cell.act_module is gm.conv1_a_act
    assert isinstance(cell.act_module, nn.ReLU)
    assert (cell.module_name, cell.act_name) == ("conv1_a", "conv1_a_act")
    assert cell.section is doc.section("conv1.a")
    assert gm.cells["soft"].act_module is None and gm.cells["soft"].act_name is None
    [target] = gm.targets
    assert isinstance(target, Target)
    assert (target.cell, target.loss, target.top_n, target.target_value, target.default_value) == (
        "soft", "ce", 2, 1.0, 0.0)
    assert target.section is doc.section("soft.Target")


def test_forward_returns_the_logits_of_a_softmax_with_loss(build_net) -> None:
    text = "[f]\nInput=sp\nType=Fc\nNbOutputs=3\n[s]\nInput=f\nType=Softmax\nNbOutputs=3\nWithLoss=1\n"
    _, gm = build_net(text, (1, 2, 2))
    x = torch.rand(4, 1, 2, 2)
    assert torch.equal(gm(x), gm.f(x.reshape(4, 4)))


def test_mse_target_and_target_keys(build_net) -> None:
    text = act("a", "sp") + "[a.Target]\nTargetValue=0.9\nDefaultValue=-0.9\nLabelsMapping=${HOME}/labels.dat\n"
    _, gm = build_net(text, target=False)
    [target] = gm.targets
    assert (target.loss, target.target_value, target.default_value) == ("mse", 0.9, -0.9)
    assert not target.labels_mapping.startswith("${")


def test_several_targets_give_a_tuple_in_target_order(build_net) -> None:
    text = act("a", "sp") + "[b]\nInput=a\nType=Scaling\nFactor=2\nNbOutputs=1\n" \
        "[b.Target]\n[a.Target]\n[a.Target-Top5]\nTopN=5\n"
    _, gm = build_net(text, (1, 2, 2), target=False)
    assert [(t.cell, t.section.name) for t in gm.targets] == [("a", "a.Target"), ("a", "a.Target-Top5"),
                                                               ("b", "b.Target")]
    x = torch.rand(1, 1, 2, 2)
    a, a5, b = gm(x)
    assert torch.equal(a, torch.tanh(x)) and torch.equal(a5, a) and torch.equal(b, 2 * a)


def test_fc_output_feeds_a_convolution(build_net) -> None:
    text = "[f]\nInput=sp\nType=Fc\nNbOutputs=4\n[c]\nInput=f\nType=Conv\nKernelDims=1 1\nNbOutputs=2\n"
    _, gm = build_net(text, (1, 3, 3))
    x = torch.rand(2, 1, 3, 3)
    assert gm(x).shape == (2, 2, 1, 1)
    assert gm.cells["c"].in_shape == (4, 1, 1)


def test_elemwise_of_flat_and_image_tensors(build_net) -> None:
    text = "[f]\nInput=sp\nType=Fc\nNbOutputs=3\n[c]\nInput=sp\nType=Conv\nKernelDims=2 2\nNbOutputs=3\n" \
           "[e]\nInput=f,c\nType=ElemWise\nOperation=Sum\nNbOutputs=3\n"
    _, gm = build_net(text, (1, 2, 2))
    x = torch.rand(2, 1, 2, 2)
    torch.testing.assert_close(gm(x), gm.f(x.reshape(2, 4)).reshape(2, 3, 1, 1) + gm.c(x))


def test_back_propagate_zero_stops_the_gradient_at_the_cell_input(build_net) -> None:
    text = "[c]\nInput=sp\nType=Conv\nKernelDims=1 1\nNbOutputs=1\nConfigSection=cfg\n[cfg]\nBackPropagate=0\n"
    _, gm = build_net(text, (1, 2, 2))
    x = torch.rand(1, 1, 2, 2, requires_grad=True)
    gm(x).sum().backward()
    assert x.grad is None and gm.c.weight.grad is not None


def test_module_name() -> None:
    assert module_name("conv2.1@x-y/z:0") == "conv2_1_x_y_z_0"
    assert module_name("fc1_2") == "fc1_2"


def test_strict_mode_after_the_build_suggests_declared_keys(build_net) -> None:
    from qatrun.errors import ConfigError

    doc, _ = build_net("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nPadingX=1\n")
    with pytest.raises(ConfigError) as info:
        doc.check_strict()
    assert str(info.value) == "test.ini:6: [c] PadingX: unknown key 'PadingX' (did you mean 'PaddingX'?)"


def test_other_stages_keys_are_left_unconsumed(build_net) -> None:
    text = "[c]\nInput=sp\nType=Conv\nKernelDims=1 1\nNbOutputs=1\nQWeight=SAT\nQWeight.Range=15\n" \
           "ActivationFunction=Linear\nQAct=SAT\nConfigSection=cfg\n[cfg]\nSolvers.LearningRate=0.1\nNoBias=1\n"
    doc, _ = build_net(text, (1, 2, 2))
    left = {(e.section, e.key) for e in doc.unknown_keys()}
    assert left == {("c", "QWeight"), ("c", "QWeight.Range"), ("c", "QAct"), ("cfg", "Solvers.LearningRate")}


def test_declared_keys() -> None:
    conv = declared_keys("Conv")
    assert {"KernelDims", "PaddingY", "Mapping.NbGroups", "WeightsFiller.VarianceNorm", "NoBias",
            "ActivationFunction.LeakSlope", "Input", "ConfigSection"} <= conv
    assert "Epsilon" not in conv and "Epsilon" in declared_keys("BatchNorm")
    assert "ActivationFunction" not in declared_keys("Dropout")
    assert {"TargetValue", "TopN"} <= declared_keys("Target")
    assert declared_keys("NoSuchType") == {"Input", "Type", "Model", "DataType", "ConfigSection"}


def test_deepcopy_keeps_cells_and_targets(build_net) -> None:
    _, gm = build_net(act("a", "sp"), (1, 2, 2))
    clone = copy.deepcopy(gm)
    assert list(clone.cells) == ["a"] and clone.cells["a"].module is clone.a and clone.a is not gm.a
    assert clone.cells["a"].act_module is clone.a_act
    assert clone.cells["a"].section is gm.cells["a"].section  # configuration stays shared
    assert [t.section for t in clone.targets] == [t.section for t in gm.targets]


def test_summary_rows(build_net) -> None:
    text = "[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nActivationFunction=Rectifier\n" \
           "[f]\nInput=c\nType=Fc\nNbOutputs=3\n"
    _, gm = build_net(text, (1, 4, 4))
    rows = summarize(gm)
    assert [(r.name, r.type, r.inputs, r.out_shape, r.params, r.macs, r.activation) for r in rows] == [
        ("c", "Conv", ("sp",), (2, 2, 2), 2 * 9 + 2, 4 * 18, "Rectifier"),
        ("f", "Fc", ("c",), (3, 1, 1), 8 * 3 + 3, 24, ""),
    ]
