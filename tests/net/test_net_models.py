"""The networks of models/*.ini and N2D2's golden LeNet: shapes, parameters and MACs computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qatrun.ini import load
from qatrun.net import build, summarize
from qatrun.net.cells import FOREIGN_PREFIXES

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
GOLDEN = ROOT / "tests" / "golden" / "n2d2-lenet-8b"  # N2D2's weights and the INI of their network


def conv(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k


def bn(c: int) -> int:
    return 2 * c


def built(name: str, shape: tuple[int, int, int]):
    torch.manual_seed(0)
    doc = load(str(MODELS / name))
    return doc, build(doc, shape)


def table(gm) -> dict[str, tuple[tuple[int, int, int], int, int]]:
    return {row.name: (row.out_shape, row.params, row.macs) for row in summarize(gm)}


def test_every_model_is_tested() -> None:
    assert sorted(p.name for p in MODELS.glob("*.ini")) == sorted(
        ["LeNet.ini", "LeNet-QAT-clamp.ini", "LeNet-QAT.ini", "ResNet20-cifar10.ini", "MobileNet-v1-cifar10.ini",
         "ResNet20-cifar10-W4A4-clamp.ini", "ResNet20-cifar10-W4A4.ini",
         # the ONNX example: tests/cli/test_onnx_example.py builds both phases from their .onnx file
         "ResNet20-onnx-W4A4-clamp.ini", "ResNet20-onnx-W4A4.ini",
         # the float networks recipes quantize: tests/recipe/test_recipe.py applies them (the ONNX one too)
         "LeNet-BN.ini", "ResNet20-onnx.ini",
         # N2D2's fractional max-pooling
         "FMP-MNIST.ini"]
    )


def test_fmp_mnist() -> None:
    _, gm = built("FMP-MNIST.ini", (1, 28, 28))
    # each FMP: round(n / 1.414) outputs per side (26 -> 18.39, 16 -> 11.32, 9 -> 6.36)
    assert table(gm) == {
        "conv1": ((16, 26, 26), conv(1, 16, 3), 26 * 26 * conv(1, 16, 3)),
        "bn1": ((16, 26, 26), bn(16), 0),
        "fmp1": ((16, 18, 18), 0, 0),
        "conv2": ((32, 16, 16), conv(16, 32, 3), 16 * 16 * conv(16, 32, 3)),
        "bn2": ((32, 16, 16), bn(32), 0),
        "fmp2": ((32, 11, 11), 0, 0),
        "conv3": ((32, 9, 9), conv(32, 32, 3), 9 * 9 * conv(32, 32, 3)),
        "bn3": ((32, 9, 9), bn(32), 0),
        "fmp3": ((32, 6, 6), 0, 0),
        "fc": ((10, 1, 1), 32 * 6 * 6 * 10, 32 * 6 * 6 * 10),
        "soft": ((10, 1, 1), 0, 0),
    }
    assert gm(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_lenet() -> None:
    _, gm = built("LeNet.ini", (1, 32, 32))
    assert table(gm) == {
        "conv1": ((6, 28, 28), 6 * 25, 28 * 28 * 6 * 25),
        "pool1": ((6, 14, 14), 0, 0),
        "conv2": ((16, 10, 10), 60 * 25, 10 * 10 * 60 * 25),  # the 60 connections of LeCun's table
        "pool2": ((16, 5, 5), 0, 0),
        "conv3": ((120, 1, 1), 16 * 120 * 25, 16 * 120 * 25),
        "fc1": ((84, 1, 1), 120 * 84, 120 * 84),
        "fc1.drop": ((84, 1, 1), 0, 0),
        "fc2": ((10, 1, 1), 84 * 10, 84 * 10),
        "softmax": ((10, 1, 1), 0, 0),
    }
    assert sum(row.params for row in summarize(gm)) == 60570
    assert [t.loss for t in gm.targets] == ["ce"]
    assert gm(torch.rand(2, 1, 32, 32)).shape == (2, 10)


LENET_BN = {
    "conv1": ((6, 28, 28), 6 * 25, 28 * 28 * 6 * 25),
    "bn1": ((6, 28, 28), bn(6), 0),
    "pool1": ((6, 14, 14), 0, 0),
    "conv2": ((16, 10, 10), 16 * 6 * 25, 10 * 10 * 16 * 6 * 25),
    "bn2": ((16, 10, 10), bn(16), 0),
    "pool2": ((16, 5, 5), 0, 0),
    "conv3": ((120, 1, 1), 120 * 16 * 25, 120 * 16 * 25),
    "bn3": ((120, 1, 1), bn(120), 0),
    "fc1": ((84, 1, 1), 120 * 84, 120 * 84),
    "fc1.drop": ((84, 1, 1), 0, 0),
    "fc2": ((10, 1, 1), 84 * 10, 84 * 10),
    "softmax": ((10, 1, 1), 0, 0),
}


@pytest.mark.parametrize("name", ["LeNet-QAT-clamp.ini", "LeNet-QAT.ini", "LeNet-BN.ini"])
def test_lenet_qat(name: str) -> None:
    doc, gm = built(name, (1, 32, 32))
    assert table(gm) == LENET_BN
    assert sum(row.params for row in summarize(gm)) == 61754
    # what net leaves unread belongs to the quant and train stages
    assert all(error.key.startswith(FOREIGN_PREFIXES) for error in doc.unknown_keys())


def test_lenet_qat_phase_two_ranges() -> None:
    doc, _ = built("LeNet-QAT.ini", (1, 32, 32))
    ranges = {name: doc.section(name).raw("QWeight.Range") for name in ("conv1", "conv2", "conv3", "fc1", "fc2")}
    assert ranges == {"conv1": "255", "conv2": "15", "conv3": "15", "fc1": "15", "fc2": "255"}
    assert {name: doc.section(name).raw("QAct.Range") for name in ("bn1", "bn2", "bn3")} == dict.fromkeys(
        ("bn1", "bn2", "bn3"), "15")
    assert doc.section("conv1").raw("QWeight.ApplyQuantization") == "1"


def resnet20() -> tuple[dict[str, tuple[tuple[int, int, int], int, int]], int]:
    """ResNet-20 by hand: name -> (shape, parameters, MACs), and the total parameters."""
    rows = {
        "conv1": ((16, 32, 32), conv(3, 16, 3), 32 * 32 * conv(3, 16, 3)),
        "bn1": ((16, 32, 32), bn(16), 0),
    }
    previous, size = 16, 32
    for stage, channels in enumerate((16, 32, 64), 1):
        for block in range(1, 4):
            stride = 2 if stage > 1 and block == 1 else 1
            size //= stride
            area, name = size * size, f"res{stage}.{block}"
            shape = (channels, size, size)
            rows[f"{name}_conv1"] = (shape, conv(previous, channels, 3), area * conv(previous, channels, 3))
            rows[f"{name}_bn1"] = (shape, bn(channels), 0)
            rows[f"{name}_conv2"] = (shape, conv(channels, channels, 3), area * conv(channels, channels, 3))
            rows[f"{name}_bn2"] = (shape, bn(channels), 0)
            if stride == 2:
                rows[f"{name}_proj"] = (shape, conv(previous, channels, 1), area * conv(previous, channels, 1))
                rows[f"{name}_proj_bn"] = (shape, bn(channels), 0)
            rows[f"{name}_sum"] = (shape, 0, 0)
            previous = channels
    rows["pool"] = ((64, 1, 1), 0, 0)
    rows["fc"] = ((10, 1, 1), 64 * 10 + 10, 64 * 10)
    rows["softmax"] = ((10, 1, 1), 0, 0)
    return rows, sum(params for _, params, _ in rows.values())


def test_resnet20() -> None:
    doc, gm = built("ResNet20-cifar10.ini", (3, 32, 32))
    expected, total = resnet20()
    assert table(gm) == expected
    assert total == 272474  # the 0.27 M of He et al. 2016, table 6
    assert gm.cells["res2.1_sum"].inputs == ("res2.1_bn2", "res2.1_proj_bn")
    assert gm.cells["res1.2_sum"].inputs == ("res1.2_bn2", "res1.1_sum")
    assert gm(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert all(error.key.startswith(FOREIGN_PREFIXES) for error in doc.unknown_keys())


@pytest.mark.parametrize("name", ["ResNet20-cifar10-W4A4-clamp.ini", "ResNet20-cifar10-W4A4.ini"])
def test_resnet20_qat_recipe_is_the_same_network(name: str) -> None:
    doc, gm = built(name, (3, 32, 32))
    expected, _ = resnet20()
    assert table(gm) == expected
    assert all(error.key.startswith(FOREIGN_PREFIXES) for error in doc.unknown_keys())


def test_mobilenet_v1() -> None:
    doc, gm = built("MobileNet-v1-cifar10.ini", (3, 32, 32))
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    expected = {
        "conv1": ((16, 32, 32), conv(3, 16, 3), 32 * 32 * conv(3, 16, 3)),
        "conv1_bn": ((16, 32, 32), bn(16), 0),
    }
    channels, size = 16, 32
    for i, (outputs, stride) in enumerate(blocks, 1):
        outputs //= 2  # ALPHA = 0.5
        size //= stride
        area = size * size
        dw, pw = conv(channels, channels, 3, groups=channels), conv(channels, outputs, 1)
        expected[f"dws{i}_dw"] = ((channels, size, size), dw, area * dw)
        expected[f"dws{i}_dw_bn"] = ((channels, size, size), bn(channels), 0)
        expected[f"dws{i}_pw"] = ((outputs, size, size), pw, area * pw)
        expected[f"dws{i}_pw_bn"] = ((outputs, size, size), bn(outputs), 0)
        channels = outputs
    expected["pool"] = ((512, 1, 1), 0, 0)
    expected["fc"] = ((10, 1, 1), 512 * 10 + 10, 5120)
    expected["softmax"] = ((10, 1, 1), 0, 0)
    assert table(gm) == expected
    assert gm.dws13_dw.groups == 512 and gm.dws13_dw.weight.shape == (512, 1, 3, 3)
    assert gm(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert all(error.key.startswith(FOREIGN_PREFIXES) for error in doc.unknown_keys())


def test_golden_n2d2_lenet_8b() -> None:
    torch.manual_seed(0)
    doc = load(str(GOLDEN / "network.ini"))
    gm = build(doc, (1, 32, 32))
    shapes = {row.name: row.out_shape for row in summarize(gm)}
    # the README: conv1 5x5 6 maps, pool1 2x2/2, conv2 16 maps on all channels, pool2, conv3 120 maps 1x1,
    # fc1 84, fc2 10
    assert {name: shapes[name] for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "fc1", "fc2")} == {
        "conv1": (6, 28, 28), "pool1": (6, 14, 14), "conv2": (16, 10, 10), "pool2": (16, 5, 5),
        "conv3": (120, 1, 1), "fc1": (84, 1, 1), "fc2": (10, 1, 1),
    }
    # N2D2's weight files hold exactly as many values as the modules, with no biases (NoBias=1)
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        values = (GOLDEN / "weights_8b_SAT" / f"{name}_weights.syntxt").read_text().split()
        module = gm.get_submodule(name)
        assert len(values) == module.weight.numel() and module.bias is None
    for name in ("bn1", "bn2", "bn3"):
        values = (GOLDEN / "weights_8b_SAT" / f"{name}_scales.syntxt").read_text().split()
        assert len(values) == gm.get_submodule(name).num_features
    assert [(t.cell, t.loss) for t in gm.targets] == [("softmax", "ce")]
    assert all(error.key.startswith(FOREIGN_PREFIXES) for error in doc.unknown_keys())
