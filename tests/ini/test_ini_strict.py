"""Consumption tracking, ``check_strict`` (unknown keys, unused sections) and ``dump_resolved``."""

from __future__ import annotations

import pytest

from qatrun.errors import ConfigError
from qatrun.ini import Key, loads

LR = Key("Solvers.LearningRate", "float", default=0.01)
TYPE = Key("Type", "str")


def first_unknown(doc) -> str:
    with pytest.raises(ConfigError) as info:
        doc.check_strict()
    return str(info.value)


UNKNOWN = [
    # (id, text, what the code reads: {section: [Key or declared name]}, exact first error)
    ("did you mean", "[conv1]\nType=Conv\nSolvers.LearningRat=0.1", {"conv1": [TYPE, LR]},
     "t.ini:3: [conv1] Solvers.LearningRat: unknown key 'Solvers.LearningRat' (did you mean 'Solvers.LearningRate'?)"),
    ("no close match", "[conv1]\nType=Conv\nFoo=1", {"conv1": [TYPE, LR]},
     "t.ini:3: [conv1] Foo: unknown key 'Foo'"),
    ("declared names suggest", "[conv1]\nType=Conv\nQWeight.Rnage=15", {"conv1": [TYPE, "QWeight.Range"]},
     "t.ini:3: [conv1] QWeight.Rnage: unknown key 'QWeight.Rnage' (did you mean 'QWeight.Range'?)"),
    ("case matters", "[conv1]\nType=Conv\nnboutputs=6", {"conv1": [TYPE, Key("NbOutputs", "int", default=1)]},
     "t.ini:3: [conv1] nboutputs: unknown key 'nboutputs' (did you mean 'NbOutputs'?)"),
    ("first in file order", "[a]\nType=x\nZ=1\nY=2\n[b]\nType=y\nX=3", {"b": [TYPE], "a": [TYPE]},
     "t.ini:3: [a] Z: unknown key 'Z'"),
    ("global section checked", "Stray=1\n[a]\nType=x", {"a": [TYPE]}, "t.ini:1: Stray: unknown key 'Stray'"),
    ("inherited key named in derived", "[Conv_def]\nType=Conv\nKernelWidht=5\n[conv1] Conv_def",
     {"conv1": [TYPE, Key("KernelWidth", "int", default=1)]},
     "t.ini:3: [conv1] KernelWidht: unknown key 'KernelWidht' (did you mean 'KernelWidth'?)"),
    ("inherited before own", "[d]\nQ=1\n[a] d\nType=x\nP=2", {"a": [TYPE]}, "t.ini:2: [a] Q: unknown key 'Q'"),
    ("config section key", "[common.config]\nNoBais=1\n[conv1]\nType=Conv\nConfigSection=common.config",
     {"conv1": [TYPE], "params:conv1": [Key("NoBias", "bool", default=False)]},
     "t.ini:2: [common.config] NoBais: unknown key 'NoBais' (did you mean 'NoBias'?)"),
    ("section looked up but not read", "[softmax.Target]\nTargetValu=1\n[a]\nType=x", {"a": [TYPE], "softmax.Target": []},
     "t.ini:2: [softmax.Target] TargetValu: unknown key 'TargetValu'"),
    ("alias declared", "[c]\nType=x\nQWeight.Mod=Default", {"c": [TYPE, Key("QWeight.QuantMode", "str", "", aliases=("QWeight.Mode",))]},
     "t.ini:3: [c] QWeight.Mod: unknown key 'QWeight.Mod' (did you mean 'QWeight.Mode'?)"),
    ("per-model config section", "[c]\nType=x\nConfigSection(Frame)=a", {"c": [TYPE], "params:c": []},
     "t.ini:3: [c] ConfigSection(Frame): unknown key 'ConfigSection(Frame)' (did you mean 'ConfigSection'?)"),
    ("command line value", "[c]\nType=x", {"c": [TYPE]}, "<command line>: [c] Extra: unknown key 'Extra'"),
]


def read_all(doc, reads):
    for name, keys in reads.items():
        if name.startswith("params:"):
            holder = doc.params(doc.section(name[len("params:"):]))
        else:
            holder = doc.section(name)
        for key in keys:
            holder.read(key) if isinstance(key, Key) else holder.declare(key)


@pytest.mark.parametrize(("text", "reads", "message"), [pytest.param(*c[1:], id=c[0]) for c in UNKNOWN])
def test_unknown_keys(text, reads, message):
    overrides = ["[c]Extra=1"] if "command line" in message else []
    doc = loads(text, "t.ini", overrides)
    read_all(doc, reads)
    assert first_unknown(doc) == message


CLEAN = [
    # (id, text, reads): check_strict passes
    ("all read", "[a]\nType=x", {"a": [TYPE]}),
    ("variables are never unknown", "$V=1\n[a]\n$W=2\nType=x", {"a": [TYPE]}),
    ("untouched section not checked", "[a]\nType=x\n[notes]\nAnything=1", {"a": [TYPE]}),
    ("base section not checked", "[Conv_def]\nType=Conv\nNoise=1\n[conv1] Conv_def\nNoise=2", {"conv1": [TYPE, Key("Noise", "int")]}),
    ("referenced section not checked", "[consts]\nW=3\nOther=1\n[a]\nType=x\nWidth=[consts]W",
     {"a": [TYPE, Key("Width", "int")]}),
]


@pytest.mark.parametrize(("text", "reads"), [pytest.param(*c[1:], id=c[0]) for c in CLEAN])
def test_clean(text, reads):
    doc = loads(text, "t.ini")
    read_all(doc, reads)
    doc.check_strict()


UNUSED = [
    # (id, text, reads, expected warning lines)
    ("unused section warned", "[a]\nType=x\n[notes]\nX=1", {"a": [TYPE]}, ["t.ini:3: warning: [notes] unused section"]),
    ("empty unused section warned", "[a]\nType=x\n[empty]", {"a": [TYPE]}, ["t.ini:3: warning: [empty] unused section"]),
    ("base used through child", "[Conv_def]\nType=Conv\n[conv1] Conv_def", {"conv1": [TYPE]}, []),
    ("base of base", "[A_def]\nType=Conv\n[B_def] A_def\n[conv1] B_def", {"conv1": [TYPE]}, []),
    ("base of unused is unused", "[A_def]\nType=Conv\n[x] A_def\n[a]\nType=y", {"a": [TYPE]},
     ["t.ini:1: warning: [A_def] unused section", "t.ini:3: warning: [x] unused section"]),
    ("referenced", "[consts]\nW=3\n[a]\nType=[consts]W", {"a": [TYPE]}, []),
    ("config section", "[c.config]\nNoBias=1\n[a]\nType=x\nConfigSection=c.config",
     {"a": [TYPE], "params:a": [Key("NoBias", "bool")]}, []),
]


@pytest.mark.parametrize(("text", "reads", "lines"), [pytest.param(*c[1:], id=c[0]) for c in UNUSED])
def test_unused_sections(text, reads, lines, capsys):
    doc = loads(text, "t.ini")
    read_all(doc, reads)
    capsys.readouterr()
    doc.check_strict()
    assert capsys.readouterr().err.splitlines() == lines


def test_unknown_keys_lists_all_in_order():
    doc = loads("[a]\nType=x\nB=1\nA=2\n[b]\nC=3", "t.ini")
    doc.section("a").read(TYPE)
    doc.section("b").mark_used()
    assert [(e.section, e.key) for e in doc.unknown_keys()] == [("a", "B"), ("a", "A"), ("b", "C")]


def test_probing_does_not_consume():
    doc = loads("[a]\nX=1", "t.ini")
    a = doc.section("a")
    assert a.has("X") and a.keys() == ["X"] and a.location_of("X").line == 2
    doc.dump_resolved()
    assert [e.key for e in doc.unknown_keys()] == ["X"]


# --------------------------------------------------------------------------------------------------
# dump_resolved


def test_dump_resolved_lists_values_with_origin():
    doc = loads("$LR=0.05\n[Conv_def]\nType=Conv\n[conv1] Conv_def\nLR=${LR}\nN=$(2*3)\nQ=a;b", "t.ini", ["[conv1]Extra= x "])
    doc.section("conv1").inject("_NbOutputs", 6)
    assert doc.dump_resolved() == (
        "; t.ini resolved by qatrun: each value with the place it was written\n"
        "$LR=0.05  ; t.ini:1\n"
        "\n[Conv_def]  ; t.ini:2\n"
        "Type=Conv  ; t.ini:3\n"
        "\n[conv1]  ; t.ini:4\n"
        "Type=Conv  ; t.ini:3\n"
        "LR=0.05  ; t.ini:5\n"
        "N=6  ; t.ini:6\n"
        "Q=a  ; t.ini:7\n"
        "Extra=x  ; <command line>\n"
        "_NbOutputs=6  ; t.ini:4 (generated)\n"
    )


def test_dump_resolved_quotes_and_reports_failures():
    doc = loads('[a]\nX=" a;b "\nY=$(1/0)\n', "t.ini")
    text = doc.dump_resolved()
    assert 'X=" a;b "  ; t.ini:2' in text
    assert 'Y=$(1/0)  ; unresolved: cannot evaluate "1/0": division by zero  ; t.ini:3' in text


def test_dump_resolved_reads_back_to_the_same_values():
    source = (
        "$W=4\n[d]\nType=Conv\nK=${W} ${W}\n[a] d\nX=\" padded \"\nY=$(int(${W}/2))\nR=[d]K\n"
        "Path=${N2D2_DATA}/mnist\nC=x#y\n"
    )
    doc = loads(source, "t.ini")
    again = loads(doc.dump_resolved(), "dump.ini")
    for section in doc.sections():
        copy = again.section(section.name)
        assert copy.keys() == section.keys()
        for key in section.keys():
            assert copy.raw(key) == doc._resolve(section, key)
