"""The N2D2 golden LeNet INI (CRLF, comments after values, variables, references) parses as N2D2 reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from qatrun.errors import ConfigError
from qatrun.ini import Key, load

GOLDEN = Path("/work/shared/golden/n2d2-lenet-8b/LeNet-bn-SAT-8b.ini")
pytestmark = pytest.mark.skipif(not GOLDEN.exists(), reason="golden data not present")


@pytest.fixture()
def doc():
    return load(str(GOLDEN))


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("conv1", Key("QWeight.Range", "int"), 255),
        ("conv1", Key("KernelWidth", "int"), 5),
        ("conv1", Key("Type", "str"), "Conv"),
        ("conv1", Key("QWeight.ApplyScaling", "bool"), False),
        ("bn1", Key("NbOutputs", "int"), 6),
        ("bn3", Key("NbOutputs", "int"), 120),
        ("bn3", Key("Type", "str"), "BatchNorm"),
        ("fc2", Key("QActSolver.LearningRate", "float"), 0.05),
        ("fc2", Key("QActSolver", "enum", choices=("SGD", "Adam")), "SGD"),
        ("fc2", Key("QAct.Alpha", "float"), 6.0),
        ("env", Key("BatchSize", "int"), 256),
        ("env.Transformation_1", Key("FirstValue", "float"), 255.0),
        ("fc1.drop", Key("NbOutputs", "int"), 84),
        ("softmax", Key("WithLoss", "bool"), True),
    ],
)
def test_golden_values(doc, section, key, expected):
    assert doc.section(section).read(key) == expected


def test_golden_config_section_params(doc):
    params = doc.params(doc.section("conv1"))
    assert params.read(Key("Solvers.LearningRate", "float")) == 0.05
    assert params.read(Key("NoBias", "bool")) is True
    assert params.location_of("NoBias").line == 137


def test_golden_strict_reports_first_unknown_key(doc):
    with pytest.raises(ConfigError) as info:
        doc.check_strict()
    assert str(info.value) == f"{GOLDEN}:45: DefaultModel: unknown key 'DefaultModel'"
