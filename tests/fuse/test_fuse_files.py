"""weights_quantized/: the exact flavour's files, masked convolutions, the scaling CSV, atomic replacement.
(The n2d2 flavour's files are compared byte for byte with N2D2's in test_fuse_golden.py.)"""

from __future__ import annotations

from pathlib import Path

import fuse_golden as golden
import pytest
import torch
from torch import fx, nn

from qatrun.fuse import FuseOptions, integerize, write_weights_quantized
from qatrun.fuse.weights_folder import SCALING_FILE, file_stem, format_value, read_scaling
from qatrun.net.layers import MappedConv2d
from qatrun.quant import QuantConv2d, QuantizedActivation, SATActivationQuantizer, SATActSpec, SATWeightQuantizer
from qatrun.quant import SATWeightSpec


@pytest.fixture(scope="module")
def exact_report():
    return integerize(golden.lenet(), FuseOptions(rescaling="Fixed-point16"), golden.GoldenReader())[1]


def test_exact_files_hold_integers(exact_report, tmp_path: Path) -> None:
    folder = write_weights_quantized(tmp_path / "weights_quantized", exact_report)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([SCALING_FILE] + [f"conv{i}_{k}.syntxt" for i in (1, 2, 3) for k in ("weights", "biases")]
                           + ["fc1_weights.syntxt", "fc2_weights.syntxt"])
    conv1 = (folder / "conv1_weights.syntxt").read_text().splitlines()
    assert len(conv1) == 6 and all(line.endswith(" ") for line in conv1)
    values = [int(v) for v in " ".join(conv1).split()]
    assert values == exact_report.layers[0].layer.weight.flatten().tolist()  # the levels 2k - 255
    biases = (folder / "conv1_biases.syntxt").read_text().split()
    assert [int(b) for b in biases] == exact_report.layers[0].layer.bias.long().tolist()


def test_scaling_csv_round_trips(exact_report, tmp_path: Path) -> None:
    folder = write_weights_quantized(tmp_path / "w", exact_report)
    header = (folder / SCALING_FILE).read_text().splitlines()[0]
    assert header == "layer,channel,clip,scale,offset,min,max,multiplier,shift"
    table = read_scaling(folder / SCALING_FILE)
    assert list(table) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for layer in exact_report.layers:
        requant = layer.layer.requant
        assert torch.equal(table[layer.name]["scale"], requant.scale)  # 17 digits: exact float64
        assert torch.equal(table[layer.name]["offset"], requant.offset)
        assert torch.equal(table[layer.name]["multiplier"].long(), requant.multiplier)
        assert bool(table[layer.name]["clip"].isnan().all()) and set(table[layer.name]["max"].tolist()) == {255.0}


def test_folder_is_replaced_atomically(exact_report, tmp_path: Path) -> None:
    target = tmp_path / "weights_quantized"
    target.mkdir()
    (target / "stale.syntxt").write_text("old")
    write_weights_quantized(target, exact_report)
    assert not (target / "stale.syntxt").exists() and (target / "fc2_weights.syntxt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights_quantized"]  # no temporary left


def test_masked_convolution_writes_connected_kernels_only(tmp_path: Path) -> None:
    connectivity = torch.tensor([[1, 0, 1], [0, 1, 0]])
    conv = MappedConv2d(3, 2, (2, 2), connectivity, bias=False)
    quantized = QuantConv2d.from_float(conv, SATWeightQuantizer(SATWeightSpec(range=15), n_out=8))
    act = QuantizedActivation(nn.Identity(), SATActivationQuantizer(SATActSpec(range=15, alpha=2.0)))
    root = nn.Module()
    root.add_module("conv", quantized)
    root.add_module("conv_act", act)
    graph = fx.Graph()
    graph.output(graph.call_module("conv_act", (graph.call_module("conv", (graph.placeholder("x"),)),)))
    _, report = integerize(fx.GraphModule(root, graph).eval())
    folder = write_weights_quantized(tmp_path / "w", report)
    lines = (folder / "conv_weights.syntxt").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [8, 4]  # 2 and 1 connected channels of 2x2 kernels
    assert not (folder / "conv_biases.syntxt").exists()  # no bias and no BatchNorm


@pytest.mark.parametrize(("value", "text"), [(-0.0, "-0"), (18344.0, "18344"), (0.00392163, "0.00392163"),
                                             (123456789.0, "1.23457e+08"), (7, "7"), (-12, "-12")])
def test_values_print_like_cpp_ostream(value, text: str) -> None:
    assert format_value(value) == text


def test_file_stems_follow_n2d2() -> None:
    assert file_stem('a<b>:c"d|e?f*g/h') == "a_b__c_d_e_f_g/h"
