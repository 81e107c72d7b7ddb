"""Fusion of N2D2's SAT W8A8 LeNet against what N2D2 itself wrote (tests/golden/n2d2-lenet-8b).

* n2d2 flavour: the fused weights and biases equal N2D2's files (RINTF byte for byte, NONE to its 6
  printed digits, byte for byte too), the per-channel clip and scale equal derived/, and the integer
  network reproduces every integer N2D2 logged for both images, both runs;
* exact flavour: every layer's levels equal the fake-quantized levels N2D2 logged (no 127 saturation).
"""

from __future__ import annotations

from pathlib import Path

import fuse_golden as golden
import numpy as np
import pytest
import torch
from torch import Tensor, fx

from qatrun.fuse import FuseOptions, integerize, verify, write_weights_quantized
from qatrun.fuse.integerize import INPUT_GRID

ROUND_MODES = ("NONE", "RINTF")
LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")


def n2d2_options(rounding: str) -> FuseOptions:
    return FuseOptions(flavour="n2d2", weights_rounding=rounding, biases_rounding=rounding, clips_rounding=rounding)


def run_with_hooks(int_gm: fx.GraphModule, x: Tensor) -> dict[str, Tensor]:
    """Every integer module's output on ``x``."""
    outputs: dict[str, Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
        for name, module in int_gm.named_modules() if name
    ]
    try:
        with torch.no_grad():
            int_gm(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.fixture(scope="module")
def fused() -> dict[str, tuple[fx.GraphModule, object]]:
    nets = {rounding: integerize(golden.lenet(), n2d2_options(rounding), golden.GoldenReader())
            for rounding in ROUND_MODES}
    nets["exact"] = integerize(golden.lenet(), FuseOptions(), golden.GoldenReader())
    return nets


@pytest.fixture(scope="module")
def written(fused: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights_quantized")
    return {rounding: write_weights_quantized(root / rounding, fused[rounding][1]) for rounding in ROUND_MODES}


def test_test_network_reproduces_n2d2_fake_quantized_outputs() -> None:
    # The reference network of these tests computes what N2D2's run (a) logged, layer by layer.
    seen = {}
    gm = golden.lenet()
    handles = [getattr(gm, name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
               for name in ("bn1_act", "bn2_act", "bn3_act", "fc1_act", "fc2_act")]
    try:
        with torch.no_grad():
            gm(golden.golden_inputs())
    finally:
        for handle in handles:
            handle.remove()
    for index in (0, 1):
        for cell in golden.ACTIVATED:
            out = seen[f"{cell}_act"][index].flatten().double().numpy()
            logged = golden.stimulus("fakequant", index, cell, out.size)
            np.testing.assert_allclose(out, logged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rounding", ROUND_MODES)
@pytest.mark.parametrize("layer", LAYERS)
def test_n2d2_weights_files_are_n2d2s_bytes(written: dict, rounding: str, layer: str) -> None:
    folder = written[rounding]
    expected = (golden.GOLDEN / f"fused_{rounding}/{layer}_weights.syntxt").read_bytes()
    assert (folder / f"{layer}_weights.syntxt").read_bytes() == expected
    biases = golden.GOLDEN / f"fused_{rounding}/{layer}_biases.syntxt"
    assert (folder / f"{layer}_biases.syntxt").exists() == biases.exists()
    if biases.exists():
        assert (folder / f"{layer}_biases.syntxt").read_bytes() == biases.read_bytes()


@pytest.mark.parametrize("rounding", ROUND_MODES)
def test_n2d2_weights_equal_golden_values(fused: dict, rounding: str) -> None:
    # Values, independently of the text: RINTF exactly, NONE to N2D2's 6 printed digits.
    report = fused[rounding][1]
    for fused_layer in report.layers:
        mine = fused_layer.layer.weight.double().flatten().numpy()
        theirs = golden.values(f"fused_{rounding}/{fused_layer.name}_weights.syntxt")
        if rounding == "RINTF":
            np.testing.assert_array_equal(mine, theirs)
        else:
            np.testing.assert_array_equal(np.array([float(f"{v:.6g}") for v in mine]), theirs)


@pytest.mark.parametrize("rounding", ROUND_MODES)
def test_n2d2_clip_and_scale_equal_derived(fused: dict, written: dict, rounding: str) -> None:
    derived = (golden.GOLDEN / f"derived/activation_scaling_{rounding}.csv").read_bytes()
    assert (written[rounding] / "activation_scaling.csv").read_bytes() == derived
    rows = [line.split(",") for line in derived.decode().splitlines()[1:]]
    for fused_layer in fused[rounding][1].layers:
        requant = fused_layer.layer.requant
        theirs = [(float(clip), float(scale)) for name, _, clip, scale in rows if name == fused_layer.name]
        assert [(f"{c:.9g}", f"{s:.9g}") for c, s in zip(requant.clip.tolist(), requant.scale.tolist())] == \
            [(f"{c:.9g}", f"{s:.9g}") for c, s in theirs]


@pytest.mark.parametrize("rounding", ROUND_MODES)
@pytest.mark.parametrize("index", (0, 1))
def test_n2d2_integer_network_reproduces_every_logged_integer(fused: dict, rounding: str, index: int) -> None:
    run = f"fused_{rounding}"
    pixels = torch.from_numpy(golden.stimulus(run, index, "env")).reshape(1, 1, 32, 32)
    outputs = run_with_hooks(fused[rounding][0], pixels.float() / 255)
    assert torch.equal(outputs["input_int"].double(), pixels)
    for logged_name, module in golden.FUSED_OUTPUTS.items():
        mine = outputs[module].flatten().double().numpy()
        np.testing.assert_array_equal(mine, golden.stimulus(run, index, logged_name, mine.size), err_msg=logged_name)


def test_n2d2_fc_outputs_saturate_at_127_as_n2d2(fused: dict) -> None:
    # N2D2 treats the Fc's Linear activation as signed: the winning logit of image 0 is 127, not 255.
    outputs = run_with_hooks(fused["RINTF"][0], golden.golden_inputs()[:1])
    assert int(outputs["fc2_act"].max()) == 127
    assert fused["RINTF"][1].bound_lsb is None


@pytest.mark.parametrize("index", (0, 1))
def test_exact_levels_equal_fake_quantized_levels(fused: dict, index: int) -> None:
    outputs = run_with_hooks(fused["exact"][0], golden.golden_inputs()[index:index + 1])
    for cell in golden.ACTIVATED:
        mine = outputs[f"{cell}_act"].flatten().double().numpy()
        levels = golden.stimulus("fakequant", index, cell, mine.size) / (golden.alpha(cell) / 255)
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-2)  # the logged values are on the grid
        np.testing.assert_array_equal(mine, np.round(levels), err_msg=cell)
    assert int(outputs["fc2_act"].max()) == (255 if index == 0 else int(outputs["fc2_act"].max()))


def test_exact_flavour_exceeds_127_where_n2d2_saturates(fused: dict) -> None:
    outputs = run_with_hooks(fused["exact"][0], golden.golden_inputs()[:1])
    assert int(outputs["fc2_act"].max()) == 255  # fake-quant: fc2 = alpha, level 255 (README)
    assert int((outputs["fc1_act"] > 127).sum()) == 6


def test_exact_weights_are_the_sat_levels(fused: dict) -> None:
    report = fused["exact"][1]
    for fused_layer in report.layers:
        levels = getattr(golden.lenet(), fused_layer.name).levels
        assert torch.equal(fused_layer.layer.weight, levels)  # all BN factors are positive: no flip
        assert fused_layer.layer.weight.abs().max() <= 255 and bool((fused_layer.layer.weight % 2 != 0).all())


def test_verify_on_golden_images(fused: dict) -> None:
    int_gm, report = fused["exact"]
    result = verify(golden.lenet(), int_gm, report, [golden.golden_inputs()])
    assert result.ok and result.samples == 2 and result.differing_predictions == 0
    assert all(layer.differing == 0 and layer.max_lsb < 1e-3 for layer in result.layers)
    assert "0 of 2 predictions differ" in str(result)
    n2d2 = verify(golden.lenet(), *fused["RINTF"], [golden.golden_inputs()])
    by_name = {layer.name: layer for layer in n2d2.layers}
    assert by_name["fc2_act"].max_lsb == 128  # 255 -> 127 on image 0
    assert by_name["bn1_act"].differing == 172 + 218  # README: RINTF conv1 differs on 172 and 218 levels
    assert n2d2.ok and "no bound" in str(n2d2)


def test_input_grid_is_n2d2s() -> None:
    assert (INPUT_GRID.range, INPUT_GRID.alpha, INPUT_GRID.lo, INPUT_GRID.hi) == (255, 1.0, 0, 255)


def mnist_test_images(count: int) -> tuple[Tensor, Tensor]:
    """The first MNIST t10k images padded 28 -> 32 with zeros, as p / 255, and their labels."""
    import gzip

    folder = Path(__file__).resolve().parents[2] / "qatrun" / "data" / "mnist"
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as images:
        pixels = np.frombuffer(images.read(), np.uint8, offset=16)[: count * 784].reshape(count, 1, 28, 28)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as labels:
        targets = np.frombuffer(labels.read(), np.uint8, offset=8)[:count]
    padded = np.pad(pixels, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return torch.from_numpy(padded).float() / 255, torch.from_numpy(targets.astype(np.int64))


def test_exact_flavour_on_real_mnist_images(fused: dict) -> None:
    x, labels = mnist_test_images(200)
    int_gm, report = fused["exact"]
    result = verify(golden.lenet(), int_gm, report, [(x[:100], labels[:100]), (x[100:], labels[100:])])
    assert result.ok and result.samples == 200, str(result)
    assert result.differing_predictions == 0
    with torch.no_grad():
        accuracy = float((int_gm(x).argmax(dim=1) == labels).float().mean())
    assert accuracy > 0.97  # padded rather than resized as in training, still recognised
