"""N2D2's own golden LeNet INI (CRLF, comments after values, variables, references) parses as N2D2 reads it.

The file is N2D2's, byte for byte, and does not ship with qatrun: it is read from shared/ beside the repository
and these tests skip without it. The INI that ships, tests/golden/n2d2-lenet-8b/network.ini, must describe the
same network: the last test compares the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from qatrun.errors import ConfigError
from qatrun.ini import Document, Key, load

SHIPPED = Path(__file__).resolve().parents[1] / "golden" / "n2d2-lenet-8b" / "network.ini"


@pytest.fixture()
def n2d2_ini(shared_data: Callable[[str, str], Path]) -> Path:
    return shared_data("golden/n2d2-lenet-8b/LeNet-bn-SAT-8b.ini", "N2D2's LeNet-bn-SAT-8b.ini")


@pytest.fixture()
def doc(n2d2_ini: Path) -> Document:
    return load(str(n2d2_ini))


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


def test_golden_strict_reports_first_unknown_key(doc, n2d2_ini):
    with pytest.raises(ConfigError) as info:
        doc.check_strict()
    assert str(info.value) == f"{n2d2_ini}:45: DefaultModel: unknown key 'DefaultModel'"


def _resolved(doc: Document) -> list[tuple[str, dict[str, str]]]:
    """Every section in file order with its resolved values, bases copied in (what the builder sees)."""
    return [(section.name, {key: section.raw(key) for key in section.keys()}) for section in doc.sections()]


def test_shipped_ini_describes_the_same_network(doc):
    shipped = load(str(SHIPPED))
    assert _resolved(shipped) == _resolved(doc)
    # N2D2 computed the golden numbers with its CPU implementation, Frame (the golden README)
    assert doc.global_section.raw("DefaultModel") == "Frame_CUDA"
    assert shipped.global_section.raw("DefaultModel") == "Frame"
