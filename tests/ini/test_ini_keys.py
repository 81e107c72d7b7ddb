"""Typed reads through ``Key`` (N2D2's ``getProperty<T>``), ``Params``, ``prefixed``, ``inject``."""

from __future__ import annotations

import pytest

from qatrun.errors import ConfigError
from qatrun.ini import Key, loads

POOLING = ("Max", "Average")

TYPED = [
    # (id, key, value text, expected)
    ("int", Key("N", "int"), "16", 16),
    ("int negative", Key("N", "int"), "-3", -3),
    ("int plus", Key("N", "int"), "+4", 4),
    ("int thousands", Key("N", "int"), "1,281,167", 1281167),
    ("int from expression", Key("N", "int"), "$(int(32*0.5))", 16),
    ("float", Key("N", "float"), "0.05", 0.05),
    ("float exponent", Key("N", "float"), "1e-4", 1e-4),
    ("float integer text", Key("N", "float"), "-3", -3.0),
    ("float leading dot", Key("N", "float"), ".5", 0.5),
    ("float thousands", Key("N", "float"), "1,000.5", 1000.5),
    ("bool 0", Key("N", "bool"), "0", False),
    ("bool 1", Key("N", "bool"), "1", True),
    ("ints", Key("N", "ints"), "5 5", (5, 5)),
    ("ints blanks", Key("N", "ints"), "  1\t2  3", (1, 2, 3)),
    ("ints empty", Key("N", "ints"), "", ()),
    ("floats", Key("N", "floats"), "0.485 0.456 0.406", (0.485, 0.456, 0.406)),
    ("strs", Key("N", "strs"), "Conv__252:0  Softmax:0", ("Conv__252:0", "Softmax:0")),
    ("enum", Key("N", "enum", choices=POOLING), "Max", "Max"),
    ("str keeps text", Key("N", "str"), "a b ${NOPE}", "a b ${NOPE}"),
    ("path expands env", Key("N", "path"), "${QATRUN_INI_TEST_DIR}/mnist", "/data/x/mnist"),
    ("path through variable", Key("N", "path"), "${ROOT}/y", "/data/x/y"),
]


@pytest.mark.parametrize(("key", "text", "expected"), [pytest.param(*c[1:], id=c[0]) for c in TYPED])
def test_typed_reads(key, text, expected, monkeypatch):
    monkeypatch.setenv("QATRUN_INI_TEST_DIR", "/data/x")
    monkeypatch.delenv("QATRUN_INI_TEST_UNSET", raising=False)
    doc = loads(f"$ROOT=${{QATRUN_INI_TEST_DIR}}\n[conv1]\nN={text}", "t.ini")
    result = doc.section("conv1").read(key)
    assert result == expected
    assert type(result) is type(expected)


TYPED_ERRORS = [
    # (id, key, value text, exact message)
    ("int rejects float text", Key("NbOutputs", "int"), "16.0",
     't.ini:2: [conv1] NbOutputs: expected an integer, found "16.0"'),
    ("int rejects bad grouping", Key("NbOutputs", "int"), "1,28", 't.ini:2: [conv1] NbOutputs: expected an integer, found "1,28"'),
    ("int rejects empty", Key("NbOutputs", "int"), "", 't.ini:2: [conv1] NbOutputs: expected an integer, found ""'),
    ("int rejects trailing text", Key("NbOutputs", "int"), "6 x", 't.ini:2: [conv1] NbOutputs: expected an integer, found "6 x"'),
    ("int rejects expression float", Key("NbOutputs", "int"), "$(32*0.5)",
     't.ini:2: [conv1] NbOutputs: expected an integer, found "16.0"'),
    ("float rejects word", Key("NbOutputs", "float"), "abc", 't.ini:2: [conv1] NbOutputs: expected a number, found "abc"'),
    ("float rejects inf", Key("NbOutputs", "float"), "inf", 't.ini:2: [conv1] NbOutputs: expected a number, found "inf"'),
    ("float rejects nan", Key("NbOutputs", "float"), "nan", 't.ini:2: [conv1] NbOutputs: expected a number, found "nan"'),
    ("bool rejects true", Key("NoBias", "bool"), "true", 't.ini:2: [conv1] NoBias: expected 0 or 1, found "true"'),
    ("bool rejects 2", Key("NoBias", "bool"), "2", 't.ini:2: [conv1] NoBias: expected 0 or 1, found "2"'),
    ("ints rejects word", Key("KernelDims", "ints"), "5 x",
     't.ini:2: [conv1] KernelDims: expected integers separated by spaces, found "5 x"'),
    ("floats rejects word", Key("FirstValue", "floats"), "0.5 mean",
     't.ini:2: [conv1] FirstValue: expected numbers separated by spaces, found "0.5 mean"'),
    ("enum exact case", Key("Pooling", "enum", choices=POOLING), "max",
     't.ini:2: [conv1] Pooling: expected one of Max, Average, found "max"'),
]


@pytest.mark.parametrize(("key", "text", "message"), [pytest.param(*c[1:], id=c[0]) for c in TYPED_ERRORS])
def test_typed_errors(key, text, message):
    doc = loads(f"[conv1]\n{key.name}={text}", "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section("conv1").read(key)
    assert str(info.value) == message


def test_unset_environment_variable_in_a_path_names_it(monkeypatch):
    monkeypatch.delenv("QATRUN_INI_TEST_UNSET", raising=False)
    doc = loads("[conv1]\nN=${QATRUN_INI_TEST_UNSET}/mnist", "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section("conv1").read(Key("N", "path"))
    assert str(info.value) == ('t.ini:2: [conv1] N: ${QATRUN_INI_TEST_UNSET} is not set in the environment (the '
                               'path would read "/mnist"): set it, or write the path in full')


def test_typed_error_of_a_referenced_value_names_the_reading_key():
    doc = loads("[conv1]\nNbOutputs=6.5\n[bn1]\nNbOutputs=[conv1]NbOutputs", "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section("bn1").read(Key("NbOutputs", "int"))
    assert str(info.value) == 't.ini:4: [bn1] NbOutputs: expected an integer, found "6.5"'


def test_required_key_missing_names_the_header():
    doc = loads("; LeNet\n\n[conv1]\nType=Conv", "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section("conv1").read(Key("NbOutputs", "int"))
    assert str(info.value) == "t.ini:3: [conv1] NbOutputs: required key is missing"


def test_default_when_absent_and_read_is_consumption():
    doc = loads("[conv1]\nStride=2", "t.ini")
    conv1 = doc.section("conv1")
    assert conv1.read(Key("Padding", "int", default=0)) == 0
    assert conv1.read(Key("Stride", "int", default=1)) == 2
    assert doc.unknown_keys() == []


ALIAS = Key("QWeight.QuantMode", "enum", default="Default", choices=("Default", "Symmetric"), aliases=("QWeight.Mode",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("QWeight.QuantMode=Symmetric", "Symmetric"), ("QWeight.Mode=Symmetric", "Symmetric"), ("", "Default")],
    ids=["code spelling", "documentation spelling", "absent"],
)
def test_alias_reads_either_spelling(text, expected):
    doc = loads(f"[c]\n{text}", "t.ini")
    assert doc.section("c").read(ALIAS) == expected
    assert doc.unknown_keys() == []


def test_alias_both_spellings_is_an_error():
    doc = loads("[c]\nQWeight.QuantMode=Default\nQWeight.Mode=Symmetric", "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section("c").read(ALIAS)
    assert str(info.value) == "t.ini:3: [c] QWeight.Mode: 'QWeight.QuantMode' and 'QWeight.Mode' are the same key; give only one"


def test_raw_default_and_location_of():
    doc = loads("[c]\nA=1", "t.ini")
    c = doc.section("c")
    assert c.raw("B", default="x") == "x"
    assert c.location_of("A").line == 2
    assert c.location_of("B").line == 1


def test_error_builds_located_errors():
    doc = loads("[c]\nA=1", "t.ini")
    assert str(doc.section("c").error("A", "not supported by qatrun")) == "t.ini:2: [c] A: not supported by qatrun"
    assert str(doc.section("c").error("Z", "needed")) == "t.ini:1: [c] Z: needed"
    assert str(doc.global_section.error(None, "oops")) == "t.ini: oops"


def test_prefixed_returns_suffixes_and_consumes():
    doc = loads("$R=15\n[c]\nQWeight=SAT\nQWeight.Range=${R}\nQWeight.ApplyScaling=0\nQAct.Range=3", "t.ini")
    c = doc.section("c")
    assert c.prefixed("QWeight.") == {"Range": "15", "ApplyScaling": "0"}
    assert [e.key for e in doc.unknown_keys()] == ["QWeight", "QAct.Range"]


def test_inject_is_consumed_and_overwritable():
    doc = loads("[conv1]\nNbOutputs=6", "t.ini")
    conv1 = doc.section("conv1")
    conv1.inject("_OutputsWidth", 28)
    conv1.inject("_OutputsWidth", 14)
    conv1.raw("NbOutputs")
    assert conv1.raw("_OutputsWidth") == "14"
    assert doc.unknown_keys() == []


PARAMS_TEXT = """\
[common.config]
NoBias=1
Solvers.LearningRate=0.05
[fast.config]
Solvers.LearningRate=0.1
[conv1]
Type=Conv
ConfigSection=common.config, fast.config
"""


def test_params_merge_later_overrides_earlier():
    doc = loads(PARAMS_TEXT, "t.ini")
    params = doc.params(doc.section("conv1"))
    assert params.read(Key("Solvers.LearningRate", "float")) == 0.1
    assert params.read(Key("NoBias", "bool")) is True
    assert params.read(Key("Dropout", "float", default=0.5)) == 0.5
    assert params.keys() == ["NoBias", "Solvers.LearningRate"]
    assert params.location_of("Solvers.LearningRate").line == 5
    assert [s.name for s in params.sources] == ["common.config", "fast.config"]


def test_params_consume_in_every_holder():
    doc = loads(PARAMS_TEXT, "t.ini")
    conv1 = doc.section("conv1")
    params = doc.params(conv1)
    params.read(Key("Solvers.LearningRate", "float"))
    params.read(Key("NoBias", "bool"))
    conv1.raw("Type")
    assert doc.unknown_keys() == []


def test_params_errors_name_the_holding_section():
    doc = loads(PARAMS_TEXT.replace("NoBias=1", "NoBias=yes"), "t.ini")
    params = doc.params(doc.section("conv1"))
    with pytest.raises(ConfigError) as info:
        params.read(Key("NoBias", "bool"))
    assert str(info.value) == 't.ini:2: [common.config] NoBias: expected 0 or 1, found "yes"'
    with pytest.raises(ConfigError) as info:
        params.read(Key("Epsilon", "float"))
    assert str(info.value) == "t.ini:6: [conv1] Epsilon: required key is missing"


def test_params_without_config_section_is_empty():
    doc = loads("[conv1]\nType=Conv", "t.ini")
    params = doc.params(doc.section("conv1"))
    assert params.keys() == [] and not params.has("NoBias")


def test_params_missing_config_section():
    doc = loads("[conv1]\nConfigSection=common.config,nope", "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.params(doc.section("conv1"))
    assert str(info.value) == "t.ini:2: [conv1] ConfigSection: section [common.config] does not exist"


def test_params_prefixed_merges():
    doc = loads(PARAMS_TEXT, "t.ini")
    assert doc.params(doc.section("conv1")).prefixed("Solvers.") == {"LearningRate": "0.1"}


@pytest.mark.parametrize("kind", ["int", "nonsense"])
def test_key_declarations_are_checked(kind):
    if kind == "nonsense":
        with pytest.raises(AssertionError):
            Key("X", kind)
    else:
        with pytest.raises(AssertionError):
            Key("X", "enum")
        with pytest.raises(AssertionError):
            Key("X", "enum", default="min", choices=POOLING)
