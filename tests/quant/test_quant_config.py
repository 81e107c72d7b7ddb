"""Reading QuantPlans from INI text: key placement, aliases, precedence, and errors with path:line."""

from __future__ import annotations

import pytest

from qatrun.errors import ConfigError
from qatrun.ini import loads
from qatrun.quant import (
    LSQActSpec,
    LSQWeightSpec,
    MinMaxActSpec,
    MinMaxWeightSpec,
    SATActSpec,
    SATWeightSpec,
    bits,
    plan_for,
)


def _plan(text: str, section: str = "conv1"):
    doc = loads(text, "t.ini")
    layer = doc.section(section)
    return plan_for(layer, doc.params(layer)), layer


PLANS = [
    # (INI text, expected weight spec, expected act spec)
    ("[conv1]\nQWeight=SAT\n", SATWeightSpec(), None),
    (
        "[conv1]\nQWeight=SAT\nQWeight.Range=15\nQWeight.ApplyScaling=1\nQWeight.QuantMode=FullRange\n"
        "QWeight.ApplyQuantization=0\n",
        SATWeightSpec(range=15, apply_scaling=True, quant_mode="FullRange", apply_quantization=False),
        None,
    ),
    ("[conv1]\nQWeight=SAT\nQWeight.Mode=Integer\n", SATWeightSpec(integer=True), None),
    # The ConfigSection's QWeight.X wins over the layer section's (N2D2 applies it afterwards).
    (
        "[cfg]\nQWeight.Range=15\n[conv1]\nQWeight=SAT\nQWeight.Range=255\nConfigSection=cfg\n",
        SATWeightSpec(range=15),
        None,
    ),
    (
        "[conv1]\nActivationFunction=Linear\nQAct=SAT\nQAct.Alpha=6.0\nQAct.Range=15\n",
        None,
        SATActSpec(range=15, alpha=6.0),
    ),
    (
        "[conv1]\nQWeight=LSQ\nQWeight.StepOptInitStepSize=0\nQWeight.StepSize=0.5\n"
        "ActivationFunction=Rectifier\nQAct=LSQ\nQAct.Range=15\n",
        LSQWeightSpec(opt_init=False, step_size=0.5),
        LSQActSpec(range=15),
    ),
    (
        "[conv1]\nQWeight=MinMax\nQWeight.PerChannel=1\nQWeight.Symmetric=1\nQWeight.Delay=100\n"
        "ActivationFunction=Rectifier\nQAct=MinMax\nQAct.Update=Maximum\nQAct.Momentum=0.1\n",
        MinMaxWeightSpec(per_channel=True, symmetric=True, delay=100),
        MinMaxActSpec(update="Maximum", momentum=0.1),
    ),
]


@pytest.mark.parametrize("text,weight,act", PLANS)
def test_plans(text, weight, act):
    plan, layer = _plan(text)
    assert plan.weight == weight and plan.act == act
    assert plan.section == "conv1" and plan.location == layer.location
    assert not [key for key in layer.unconsumed() if key.startswith(("QWeight", "QAct"))]


def test_no_quantizer_gives_no_plan():
    assert _plan("[conv1]\nType=Conv\nActivationFunction=Rectifier\n")[0] is None


def test_solvers_are_plain_data_with_locations():
    plan, _ = _plan(
        "[conv1]\nQWeight=LSQ\nQWeight.Solver=ADAM\nActivationFunction=Linear\nQAct=SAT\n"
        "QActSolver=SGD\nQActSolver.LearningRate=0.05\nQActSolver.Momentum=0.9\n"
    )
    assert plan.weight_solver.type == "Adam" and dict(plan.weight_solver.settings) == {}
    assert plan.act_solver.type == "SGD" and plan.act_solver.prefix == "QActSolver."
    assert dict(plan.act_solver.settings) == {"LearningRate": "0.05", "Momentum": "0.9"}
    assert str(plan.act_solver.locations["Momentum"]) == "t.ini:8"


def test_a_missing_solver_is_n2d2s_default_sgd():
    plan, _ = _plan("[conv1]\nActivationFunction=Linear\nQAct=SAT\n")
    assert plan.act_solver.type == "SGD" and not plan.act_solver.settings and plan.weight_solver is None


ERRORS = [
    (
        "[conv1]\nQWeight=Prune\n",
        "t.ini:2: [conv1] QWeight: unknown quantization method 'Prune' (valid: SAT, LSQ, MinMax)",
    ),
    (
        "[conv1]\nQWeight=SAT\nQWeight.Rnage=15\n",
        "t.ini:3: [conv1] QWeight.Rnage: unknown SAT weight quantizer key "
        "(valid: Range, QuantMode, ApplyQuantization, ApplyScaling, Mode)",
    ),
    (
        "[conv1]\nQWeight=LSQ\nQWeight.Mode=Integer\n",
        "t.ini:3: [conv1] QWeight.Mode: unknown LSQ weight quantizer key (valid: Range, StepSize, SetOptInitStepSize)",
    ),
    (
        "[cfg]\nQWeight.Rnage=15\n[conv1]\nQWeight=SAT\nConfigSection=cfg\n",
        "t.ini:2: [cfg] QWeight.Rnage: unknown SAT weight quantizer key",
    ),
    (
        "[conv1]\nQWeight=SAT\nQWeight.Range=16.0\n",
        't.ini:3: [conv1] QWeight.Range: expected an integer, found "16.0"',
    ),
    (
        "[conv1]\nQWeight=SAT\nQWeight.Range=0\n",
        "t.ini:3: [conv1] QWeight.Range: SAT weights need Range >= 1, found 0",
    ),
    (
        "[conv1]\nQWeight=SAT\nQWeight.QuantMode=Symmetric\nQWeight.Range=1\n",
        "t.ini:4: [conv1] QWeight.Range: QuantMode=Symmetric needs Range >= 2",
    ),
    (
        "[conv1]\nQWeight=SAT\nQWeight.QuantMode=symmetric\n",
        "t.ini:3: [conv1] QWeight.QuantMode: expected one of Default, Symmetric, Asymmetric, FullRange",
    ),
    (
        "[conv1]\nQWeight.Range=15\n",
        "t.ini:2: [conv1] QWeight.Range: given, but the section has no QWeight=<method>",
    ),
    (
        "[conv1]\nQWeight=SAT\nQWeightSolver.LearningRate=0.1\n",
        "t.ini:3: [conv1] QWeightSolver.LearningRate: needs QWeightSolver=SGD|Adam in the same section",
    ),
    (
        "[conv1]\nQWeight=SAT\nQWeightSolver=RMSprop\n",
        "t.ini:3: [conv1] QWeightSolver: expected one of SGD, Adam, ADAM",
    ),
    (
        "[conv1]\nQWeight=LSQ\nQWeight.SetOptInitStepSize=1\nQWeight.StepOptInitStepSize=1\n",
        "t.ini:4: [conv1] QWeight.StepOptInitStepSize: 'QWeight.SetOptInitStepSize' and "
        "'QWeight.StepOptInitStepSize' are the same key; give only one",
    ),
    # QAct is honoured only next to ActivationFunction (N2D2 silently ignores it otherwise).
    (
        "[conv1]\nQAct=SAT\nQAct.Alpha=6\n",
        "t.ini:2: [conv1] QAct: needs ActivationFunction= in the same section",
    ),
    ("[conv1]\nQActSolver=SGD\n", "t.ini:2: [conv1] QActSolver: needs ActivationFunction="),
    (
        "[conv1]\nActivationFunction=Linear\nQAct.Alpha=6\n",
        "t.ini:3: [conv1] QAct.Alpha: given, but the section has no QAct=<method>",
    ),
    # Keys N2D2 does not take from a ConfigSection.
    (
        "[cfg]\nQAct.Alpha=6\n[conv1]\nActivationFunction=Linear\nQAct=SAT\nConfigSection=cfg\n",
        "t.ini:2: [cfg] QAct.Alpha: read from the layer section only, not from a ConfigSection",
    ),
    (
        "[cfg]\nQWeightSolver.LearningRate=0.1\n[conv1]\nQWeight=LSQ\nConfigSection=cfg\n",
        "t.ini:2: [cfg] QWeightSolver.LearningRate: read from the layer section only",
    ),
    (
        "[cfg]\nQWeight=SAT\n[conv1]\nConfigSection=cfg\n",
        "t.ini:2: [cfg] QWeight: read from the layer section only",
    ),
    (
        "[conv1]\nActivationFunction=Linear\nQAct=SAT\nQAct.Alpha=0\n",
        "t.ini:4: [conv1] QAct.Alpha: Alpha must not be 0",
    ),
    ("[conv1]\nQWeight=LSQ\nQWeight.Range=2\n", "t.ini:3: [conv1] QWeight.Range: LSQ weights need Range >= 3"),
]


@pytest.mark.parametrize("text,message", ERRORS)
def test_errors(text, message):
    with pytest.raises(ConfigError) as caught:
        _plan(text)
    assert str(caught.value).startswith(message)


def test_inherited_quantizer_keys_are_read_from_the_base():
    text = "[Conv_def]\nQWeight=SAT\nQWeight.Range=15\n[conv1] Conv_def\nQWeight.Range=255\n"
    plan, _ = _plan(text)
    assert plan.weight == SATWeightSpec(range=255)


@pytest.mark.parametrize("steps,expected", [(255, 8), (15, 4), (1, 1), (3, 2), (7, 3), (16, 5), (256, 9)])
def test_bits(steps, expected):
    assert bits(steps) == expected == bits(SATWeightSpec(range=steps))
