"""Recipes (qatrun/recipe.py): selectors, where each key lands, origins and overrides, phases, errors, on the
shipped INIs (hand-made LeNets and the ONNX ResNet-20) and the recipes of configs/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import qatrun
from qatrun import recipe
from qatrun.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MODELS, CONFIGS = REPO / "models", REPO / "configs"
LENET, LENET_BN, ONNX = MODELS / "LeNet.ini", MODELS / "LeNet-BN.ini", MODELS / "ResNet20-onnx.ini"
SAT = CONFIGS / "sat-w4a4.ini"
RECIPES = sorted(CONFIGS.glob("*.ini"))


def write(tmp_path: Path, text: str, name: str = "r.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def selected(ini: Path, selector: str, tmp_path: Path) -> tuple[str, ...]:
    applied = qatrun.load(ini, recipes=[write(tmp_path, f"[{selector}]\nQWeight=SAT\n")]).recipes[0]
    return applied.matches[0][1]


@pytest.mark.parametrize(("selector", "layers"), [
    ("all", ("conv1", "conv2", "conv3", "fc1", "fc2")),
    ("first", ("conv1",)),
    ("last", ("fc2",)),
    ("Conv last", ("conv3",)),
    ("Fc first", ("fc1",)),
    ("name=conv*", ("conv1", "conv2", "conv3")),
    ("name=conv1 name=fc?", ("conv1", "fc1", "fc2")),
    ("Fc name=conv*", ()),
])
def test_selectors_on_lenet(selector: str, layers: tuple[str, ...], tmp_path: Path) -> None:
    if not layers:
        with pytest.raises(ConfigError, match=r"r\.ini:1: selector \[Fc name=conv\*\] matches no layer"):
            selected(LENET, selector, tmp_path)
        return
    assert selected(LENET, selector, tmp_path) == layers


def test_batchnorm_terms(tmp_path: Path) -> None:
    assert selected(LENET_BN, "with-bn", tmp_path) == ("conv1", "conv2", "conv3")
    assert selected(LENET_BN, "without-bn", tmp_path) == ("fc1", "fc2")
    assert selected(LENET, "without-bn", tmp_path) == ("conv1", "conv2", "conv3", "fc1", "fc2")


def test_output_keys_go_to_the_batchnorm_after_the_layer(tmp_path: Path) -> None:
    """LeNet-BN has no activation quantizer; the recipe's QAct on [all] quantizes each block output."""
    r = write(tmp_path, "[all]\nQAct=SAT\nQAct.Range=15\n[last]\nQAct.Range=255\n")
    net = qatrun.load(LENET_BN, recipes=[r])
    acts = {name: plan.act.range for name, plan in net.plans.items() if plan.act is not None}
    assert acts == {"bn1": 15, "bn2": 15, "bn3": 15, "fc1": 15, "fc2": 255}
    resolved = net.doc.dump_resolved()
    assert f"QAct.Range=255  ; {r}:5" in resolved.split("[fc2]")[1].split("\n\n")[0]


def test_sat_w4a4_on_lenet_quantizes_every_layer_with_8_bit_ends() -> None:
    net = qatrun.load(LENET, recipes=[SAT])
    weights = {name: (plan.weight.range, plan.weight.apply_scaling) for name, plan in net.plans.items()}
    assert weights == {"conv1": (255, True), "conv2": (15, True), "conv3": (15, True), "fc1": (15, True),
                       "fc2": (255, True)}  # no BatchNorm in LeNet.ini: SAT scales every layer itself
    assert {n: p.act.range for n, p in net.plans.items()} == {"conv1": 15, "conv2": 15, "conv3": 15, "fc1": 15,
                                                               "fc2": 255}
    summary = net.summary()
    assert "SAT w8   Linear, SAT a4" in summary
    summary = " ".join(summary.split())  # the recipe's lines wrap at 110 columns
    assert "[first] (line" in summary
    assert f"override: ActivationFunction=Linear ({SAT}:" in summary  # LeNet.ini's Rectifier, replaced
    assert f"replaces the INI's value ({LENET}:34) on conv1" in summary


def test_the_recipe_wins_over_the_config_section_and_is_listed_as_override(tmp_path: Path) -> None:
    """LeNet-QAT.ini sets QWeight.Range in its sections and WeightsFiller...; a recipe's value wins, reported."""
    r = write(tmp_path, "[all]\nQWeight.Range=7\nSolvers.Momentum=0.5\n")
    net = qatrun.load(MODELS / "LeNet-QAT.ini", recipes=[r])
    assert {p.weight.range for p in net.plans.values() if p.weight is not None} == {7}
    momenta = {name: cfg.momentum for name, _, cfg in net.solvers}
    assert {n for n, m in momenta.items() if m == 0.5} == {"conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight",
                                                             "fc2.weight"}  # not the BatchNorms, nor the alphas
    overrides = {(a.layer, a.key) for a in net.recipes[0].overrides}
    assert ("conv1", "QWeight.Range") in overrides and ("conv2", "Solvers.Momentum") in overrides
    assert "override: QWeight.Range=7" in " ".join(net.summary().split())


def test_role_solver_keys_of_the_ini_follow_solvers(tmp_path: Path) -> None:
    """LeNet.ini gives WeightsSolver.LearningRate=0.05, which would win over a ConfigSection's Solvers.X."""
    r = write(tmp_path, "[all]\nSolvers.LearningRate=0.01\n")
    net = qatrun.load(LENET, recipes=[r])
    assert {cfg.learning_rate for name, _, cfg in net.solvers if name.endswith("weight")} == {0.01}


def test_stimuli_section_alias(tmp_path: Path) -> None:
    """LeNet-QAT.ini calls its stimuli [env]: a recipe's [sp]_EpochSize reads it there."""
    r = write(tmp_path, "[last]\nQActSolver.LearningRatePolicy=CosineDecay\nQActSolver.MaxIterations=$([sp]_EpochSize * 3)\n")
    net = qatrun.load(MODELS / "LeNet-QAT.ini", recipes=[r])
    assert net.doc.get("fc2").raw("QActSolver.MaxIterations") == str(60000 * 3)  # LeNet-QAT: no Validation set


def test_phases(tmp_path: Path) -> None:
    clamp = qatrun.load(LENET, recipes=[SAT], phase="clamp")
    assert all(p.act is None and not p.weight.apply_quantization for p in clamp.plans.values())
    assert len(clamp.plans) == 5 and "ActivationFunction" not in clamp.recipes[0].describe()
    assert qatrun.load(LENET, recipes=[CONFIGS / "lsq-w4a4.ini"], phase="float").plans == {}
    lsq = write(tmp_path, "Phases=float quantize\n[all]\nQWeight=LSQ\nQWeight.Range=15\n")
    with pytest.raises(ConfigError, match="no phase 'clamp'"):
        qatrun.load(LENET, recipes=[lsq], phase="clamp")


def test_onnx_resnet20_every_conv_and_fc(tmp_path: Path) -> None:
    net = qatrun.load(ONNX, recipes=[SAT])
    cells = net.gm.cells
    weighted = [c.name for c in cells.values() if c.type in ("Conv", "Fc")]
    assert len(weighted) == 22 and all(net.plans[n].weight is not None for n in weighted)
    assert net.plans["conv1"].weight.range == 255 and net.plans["logits"].weight.range == 255
    assert net.plans["res2_1_proj"].weight.range == 15 and not net.plans["res2_1_proj"].weight.apply_scaling
    outputs = [c.name for c in cells.values() if c.type in ("BatchNorm", "ElemWise")] + ["logits"]
    assert all(net.plans[n].act is not None for n in outputs)
    assert cells["bn1"].act_section.name == "bn1_relu"  # the Relu node's section, made by the recipe
    assert "res3_3_conv2, logits" in " ".join(net.summary().split())


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_applies_to_lenet_and_the_onnx_resnet(path: Path) -> None:
    r = recipe.read(path)
    assert r.about, path
    for ini in (LENET, ONNX):
        for phase in r.phases or ("clamp", "float", "quantize"):
            qatrun.load(ini, recipes=[path], phase=phase)
    for ini in ("ResNet20-cifar10.ini", "MobileNet-v1-cifar10.ini"):
        qatrun.load(MODELS / ini, recipes=[path])


@pytest.mark.parametrize(("text", "line", "message"), [
    ("[frist]\nQWeight=SAT\n", 1, "unknown term 'frist' (did you mean 'first'?)"),
    ("[first last]\nQWeight=SAT\n", 1, "first and last together match nothing"),
    ("[Pool]\nQWeight=SAT\n", 2, "pool1 is a Pool cell, which has no weights to quantize"),
    ("[ElemWise]\nQAct=SAT\n", 1, "selector [ElemWise] matches no layer"),
    ("[name=pool*]\nQAct=SAT\n", 1, "its names are pool1, pool2: write [Pool name=pool*]"),
    ("[all]\nType=Fc\n", 2, "it does not change the network's structure"),
    ("Phases=quantize clamp\n", 1, "ending with quantize"),
    ("Phases=clamp quantize\nEpochs=8\n", 2, "expected 2 positive integers"),
    ("Epoch=8\n", 1, "Epoch: a recipe's first lines take Phases, Epochs"),
    ("[all] base\nQWeight=SAT\n", 1, "no base sections"),
])
def test_errors_name_the_recipe_line(text: str, line: int, message: str, tmp_path: Path) -> None:
    r = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        qatrun.load(LENET, recipes=[r])
    assert str(err.value).startswith(f"{r}:{line}:") and message in str(err.value), str(err.value)


def test_a_key_the_target_cannot_take(tmp_path: Path) -> None:
    r = write(tmp_path, "[all]\nQWeight=SAT\nQWeight.Rnage=15\n")
    with pytest.raises(ConfigError) as err:
        qatrun.load(LENET, recipes=[r])
    assert str(err.value).startswith(f"{r}:3:") and "Rnage" in str(err.value), str(err.value)


def test_optional_selector(tmp_path: Path) -> None:
    r = write(tmp_path, "[ElemWise optional]\nQAct=SAT\n[first]\nQWeight=SAT\n")
    assert qatrun.load(LENET, recipes=[r]).recipes[0].matches[0][1] == ()


def test_two_recipes_in_order(tmp_path: Path) -> None:
    later = write(tmp_path, "[first]\nQWeight.Range=63\n", "later.ini")
    net = qatrun.load(LENET, recipes=[SAT, later])
    assert net.plans["conv1"].weight.range == 63 and net.plans["conv2"].weight.range == 15
    assert net.recipes[1].overrides == []  # what an earlier recipe set is no INI value


def test_schedule_note() -> None:
    net = qatrun.load(LENET)  # $EPOCHS=10: every solver's CosineDecay spans 10 epochs of the Learn partition
    assert net.schedule_note(10, 48000) is None
    note = net.schedule_note(4, 48000)
    assert note is not None and "spans 10 epochs" in note and "-set '$EPOCHS=4'" in note
    assert qatrun.load(LENET, ["$EPOCHS=4"]).schedule_note(4, 48000) is None


_NETS = {"lenet-bn": LENET_BN, "resnet20-onnx": ONNX, "resnet20": MODELS / "ResNet20-cifar10.ini",
         "mobilenet": MODELS / "MobileNet-v1-cifar10.ini"}
_FUSED = [(name, "lenet-bn") for name in ("sat-w8a8", "sat-w4a4", "sat-w2a2", "lsq-w4a4", "minmax-w8a8")] + [
    ("sat-w4a4", "resnet20-onnx"), ("sat-w4a4", "resnet20"), ("sat-w4a4", "mobilenet"), ("lsq-w4a4", "resnet20"),
    ("minmax-w8a8", "resnet20-onnx")]


@pytest.mark.parametrize(("name", "net_name"), _FUSED, ids=[f"{a}-{b}" for a, b in _FUSED])
def test_every_integer_recipe_fuses_and_verifies(name: str, net_name: str, tmp_path: Path) -> None:
    """A few training-mode batches (ranges, LSQ's first steps), then the exact integer network on pixel images;
    MinMax's 200-step delay is lifted by a second recipe, applied after it."""
    no_delay = write(tmp_path, "[all]\nQWeight.Delay=0\nQAct.Delay=0\n[ElemWise optional]\nQAct.Delay=0\n")
    recipes = [CONFIGS / f"{name}.ini", *([no_delay] if name.startswith("minmax") else [])]
    net = qatrun.load(_NETS[net_name], recipes=recipes)
    shape = net.spec.input_shape
    generator = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (8, *shape), generator=generator).float() / 255
    net.gm.train()
    with torch.no_grad():
        net.gm(images)
    net.gm.eval()
    report = net.fuse().verify([(images, torch.zeros(8, dtype=torch.long))])
    assert report.ok, str(report)
