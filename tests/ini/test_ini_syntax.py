"""Lexing, sections, inheritance, references, variables and overrides (reference/n2d2.md 1.1-1.2)."""

from __future__ import annotations

import pytest

from qatrun.errors import ConfigError
from qatrun.ini import loads


def value(text: str, section: str, key: str, overrides: tuple[str, ...] = ()) -> str:
    doc = loads(text, "t.ini", overrides)
    holder = doc.global_section if section == "" else doc.section(section)
    return holder.raw(key)


VALUES = [
    # (id, text, section, key, expected)
    ("plain", "[a]\nX=1", "a", "X", "1"),
    ("blanks around =", "[a]\nX  =  1 \t", "a", "X", "1"),
    ("split at first =", "[a]\nX=a=b", "a", "X", "a=b"),
    ("empty value", "[a]\nX=", "a", "X", ""),
    ("semicolon comment", "[a]\nX=1 ;first conv layer is in 8 bits", "a", "X", "1"),
    ("hash comment", "[a]\nX=1# note", "a", "X", "1"),
    ("comment glued to value", "$W=15;->15 for 4-bits\n[a]\nX=${W}", "a", "X", "15"),
    ("quoted semicolon", '[a]\nX="a;b"', "a", "X", "a;b"),
    ("quoted keeps blanks", '[a]\nX=" a = b "', "a", "X", " a = b "),
    ("quotes inside kept", '[a]\nX=a "b#c" d # e', "a", "X", 'a "b#c" d'),
    ("outer quotes only removed", '[a]\nX="a" "b"', "a", "X", 'a" "b'),
    ("continuation", "[a]\nX=1 2 \\\n3 4", "a", "X", "1 2 3 4"),
    ("continuation no separator", "[a]\nX=ab\\\ncd", "a", "X", "abcd"),
    ("continuation chain", "[a]\nX=1\\\n2\\\n3", "a", "X", "123"),
    ("continuation before comment", "[a]\nX=1 ;c \\\n2\nY=3", "a", "X", "1"),
    ("continuation into comment", "[a]\nX=1 \\\n; c", "a", "X", "1"),
    ("continuation at EOF", "[a]\nX=1\\", "a", "X", "1"),
    ("CRLF", "[a]\r\nX=1\r\n", "a", "X", "1"),
    ("CRLF backslash does not continue", "[a]\r\nX=1\\\r\nY=2\r\n", "a", "X", "1\\"),
    ("CRLF next key intact", "[a]\r\nX=1\\\r\nY=2\r\n", "a", "Y", "2"),
    ("BOM first line", "\ufeff[a]\nX=1", "a", "X", "1"),
    ("BOM later line", "[a]\n\ufeffX=1", "a", "X", "1"),
    ("global section", "G=1\n[a]\nX=2", "", "G", "1"),
    ("header comment", "[a] ; no bases\nX=1", "a", "X", "1"),
    ("base without space", "[b]\nK=1\n[a]b", "a", "K", "1"),
    ("bases with tabs", "[b]\nK=1\n[c]\nL=2\n[a]\tb\tc", "a", "L", "2"),
    ("first base wins", "[b]\nK=1\n[c]\nK=2\n[a] b c", "a", "K", "1"),
    ("derived overrides base", "[b]\nK=1\n[a] b\nK=3", "a", "K", "3"),
    ("base keeps its value", "[b]\nK=1\n[a] b\nK=3", "b", "K", "1"),
    ("redefinition last wins", "[a]\nK=1\nK=2", "a", "K", "2"),
    ("copy resolves in derived", "[b]\nK=${SECTION_NAME}\n[a] b", "a", "K", "a"),
    ("section name with punctuation", "[sp.Transformation-1]\nX=1", "sp.Transformation-1", "X", "1"),
    ("reference", "[a]\nN=6\n[b]\nN=[a]N", "b", "N", "6"),
    ("two references", "[a]\nW=3\n[b]\nD=[a]W [a]W", "b", "D", "3 3"),
    ("reference ends at blank", "[a]\nW=3\n[b]\nD=[a]W\tx", "b", "D", "3\tx"),
    ("reference to later section", "[a]\nN=[b]M\n[b]\nM=7", "a", "N", "7"),
    ("reference chain", "[a]\nN=[b]M\n[b]\nM=[c]P\n[c]\nP=8", "a", "N", "8"),
    ("not a section stays", "[a]\nX=[x]y", "a", "X", "[x]y"),
    ("empty brackets stay", "[a]\nX=[]", "a", "X", "[]"),
    ("bracket before reference", "[a]\nW=2\n[b]\nX=[[a]W", "b", "X", "[2"),
    ("reference key with dot", "[sp]\n_GlobalValue.mean=0.5\n[a]\nX=[sp]_GlobalValue.mean", "a", "X", "0.5"),
    ("global variable", "$V=5\n[a]\nX=${V}", "a", "X", "5"),
    ("local variable shadows", "$V=5\n[a]\n$V=6\nX=${V}", "a", "X", "6"),
    ("unknown variable verbatim", "[a]\nX=${N2D2_DATA}/mnist", "a", "X", "${N2D2_DATA}/mnist"),
    ("SECTION_NAME", "[conv1]\nX=${SECTION_NAME}", "conv1", "X", "conv1"),
    ("PREV_SECTION_NAME", "[a]\n[b]\nX=${PREV_SECTION_NAME}", "b", "X", "a"),
    ("PREV_SECTION_NAME first", "[a]\nX=${PREV_SECTION_NAME}", "a", "X", "${PREV_SECTION_NAME}"),
    ("variable of variable", "$A=2\n$B=$(${A}*3)\n[a]\nX=${B}", "a", "X", "6"),
    ("variable holding reference", "$N=[a]K\n[a]\nK=4\n[b]\nX=${N}", "b", "X", "4"),
    ("global variable in section context", "$S=${SECTION_NAME}_x\n[a]\nX=${S}", "a", "X", "a_x"),
    ("reference then variable then expr", "$E=3\n[sp]\n_EpochSize=100\n[a]\nX=$([sp]_EpochSize * ${E})", "a", "X", "300"),
    ("expression in text", "[a]\nX=a$(1+1)b$(2*2)", "a", "X", "a2b4"),
    ("override replaces", "[a]\nX=1", "a", "X", "9", ("[a]X=9",)),
    ("override adds", "[a]\nX=1", "a", "Y", "2", ("[a]Y=2",)),
    ("override global variable", "$V=5\n[a]\nX=${V}", "a", "X", "7", ("$V=7",)),
    ("override global key", "G=1\n[a]", "", "G", "2", ("G=2",)),
    ("override base reaches derived", "[b]\nK=1\n[a] b", "a", "K", "2", ("[b]K=2",)),
    ("override derived only", "[b]\nK=1\n[a] b", "b", "K", "1", ("[a]K=2",)),
    ("override quoted", "[a]\nX=1", "a", "X", " q ", ('[a]X=" q "',)),
    ("override with reference", "[a]\nX=1\n[b]\nY=2", "b", "Y", "1", ("[b]Y=[a]X",)),
    ("override later wins", "[a]\nX=1", "a", "X", "3", ("[a]X=2", "[a]X=3")),
    ("override array key", "[a]\nX=1", "a", "A[0].P", "v", ("[a]A[0].P=v",)),
]


@pytest.mark.parametrize(("text", "section", "key", "expected", "overrides"), [
    pytest.param(*case[1:5], case[5] if len(case) > 5 else (), id=case[0]) for case in VALUES
])
def test_values(text, section, key, expected, overrides):
    assert value(text, section, key, overrides) == expected


LOAD_ERRORS = [
    # (id, text, overrides, exact message)
    ("no equals", "[a]\nfoo", (), "t.ini:2: [a] Missing value for property: foo"),
    ("no equals global", "foo", (), "t.ini:1: Missing value for property: foo"),
    ("no equals after continuation", "[a]\nfoo\\\nbar", (), "t.ini:2: [a] Missing value for property: foobar"),
    ("unclosed header is a property", "[a]\n[b", (), "t.ini:2: [a] Missing value for property: [b"),
    ("unclosed quote", '[a]\nX="abc', (), "t.ini:2: [a] unclosed double quote"),
    ("unclosed second quote", '[a]\nX="a"b"', (), "t.ini:2: [a] unclosed double quote"),
    ("empty name", "[a]\n=5", (), "t.ini:2: [a] missing property name before '=' in \"=5\""),
    ("empty section name", "[a]\n[]", (), "t.ini:2: empty section name"),
    ("duplicate section", "[a]\nX=1\n[a]", (), "t.ini:3: Section [a] already exists (first defined at t.ini:1)"),
    ("missing base", "[c] a", (), "t.ini:1: [c] Inherited section [a] does not exist"),
    ("base defined later", "[c] a\n[a]", (), "t.ini:1: [c] Inherited section [a] does not exist"),
    ("self base", "[a] a", (), "t.ini:1: [a] Inherited section [a] does not exist"),
    ("override without =", "[a]", ("[a]X",),
     '<command line>: malformed override "[a]X": expected [section]Key=value, Key=value or $VAR=value'),
    ("override empty key", "[a]", ("[a]=1",),
     '<command line>: malformed override "[a]=1": expected [section]Key=value, Key=value or $VAR=value'),
    ("override unclosed section", "[a]", ("[a X=1",),
     '<command line>: malformed override "[a X=1": expected [section]Key=value, Key=value or $VAR=value'),
    ("override unknown section", "[a]", ("[zz]X=1",), '<command line>: override "[zz]X=1": no section [zz]'),
]


@pytest.mark.parametrize(("text", "overrides", "message"), [pytest.param(*c[1:], id=c[0]) for c in LOAD_ERRORS])
def test_load_errors(text, overrides, message):
    with pytest.raises(ConfigError) as info:
        loads(text, "t.ini", overrides)
    assert str(info.value) == message


READ_ERRORS = [
    # (id, text, section, key, exact message)
    ("missing property of reference", "[a]\nN=1\n[b]\nM=[a]Q", "b", "M",
     "t.ini:4: [b] M: Property Q not found in section [a]"),
    ("reference with nothing after", "[a]\nN=1\n[b]\nM=[a]", "b", "M",
     "t.ini:4: [b] M: Property  not found in section [a]"),
    ("reference cycle", "[a]\nX=[b]Y\n[b]\nY=[a]X", "a", "X",
     "t.ini:4: [b] Y: reference cycle: [a]X -> [b]Y -> [a]X"),
    ("self reference", "[a]\nX=[a]X", "a", "X", "t.ini:2: [a] X: reference cycle: [a]X -> [a]X"),
    ("variable cycle", "$A=${B}\n$B=${A}\n[a]\nX=${A}", "a", "X",
     "t.ini:2: $B: reference cycle: [a]X -> $A -> $B -> $A"),
    ("local variable cycle", "[a]\n$V=${V}x\nX=${V}", "a", "X",
     "t.ini:2: [a] $V: reference cycle: [a]X -> [a]$V -> [a]$V"),
    ("missing key", "[a]\nX=1", "a", "Y", "t.ini:1: [a] Y: required key is missing"),
    ("error in referenced value", "[a]\nX=$(1/0)\n[b]\nY=[a]X", "b", "Y",
     't.ini:2: [a] X: cannot evaluate "1/0": division by zero'),
]


@pytest.mark.parametrize(("text", "section", "key", "message"), [pytest.param(*c[1:], id=c[0]) for c in READ_ERRORS])
def test_read_errors(text, section, key, message):
    doc = loads(text, "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section(section).raw(key)
    assert str(info.value) == message


WARNINGS = [
    # (id, text, expected stderr lines)
    ("inherited override", "[b]\nK=1\n[a] b\nK=3",
     ['t.ini:4: warning: [a] overriding property K (previous value was "1")']),
    ("redefinition", "[a]\nK=1\nK=2", ['t.ini:3: warning: [a] overriding property K (previous value was "1")']),
    ("global redefinition", "$V=1\n$V=2", ['t.ini:2: warning: overriding property $V (previous value was "1")']),
    ("previous value raw", "$V=1\n[a]\nK=${V}\nK=2", ['t.ini:4: warning: [a] overriding property K (previous value was "${V}")']),
    ("no warning for new key", "[b]\nK=1\n[a] b\nL=3", []),
]


@pytest.mark.parametrize(("text", "lines"), [pytest.param(*c[1:], id=c[0]) for c in WARNINGS])
def test_warnings(text, lines, capsys):
    loads(text, "t.ini")
    assert capsys.readouterr().err.splitlines() == lines


def test_override_is_silent_and_located(capsys):
    doc = loads("[a]\nX=1", "t.ini", ["[a]X=2"])
    assert capsys.readouterr().err == ""
    assert str(doc.section("a").location_of("X")) == "<command line>"


def test_override_of_variable_reaches_template_free_sections_defined_before_and_after():
    doc = loads("$LR=0.05\n[a]\nX=${LR}\n[b]\nY=${LR}", "t.ini", ["$LR=0.1"])
    assert (doc.section("a").raw("X"), doc.section("b").raw("Y")) == ("0.1", "0.1")


def test_inheritance_is_a_copy_not_a_link():
    doc = loads("[b]\nK=1\n[a] b\n[b2] b\nK=5", "t.ini")
    assert doc.section("a").raw("K") == "1"
    assert doc.section("a").bases == ("b",)


def test_inherited_value_keeps_its_location():
    doc = loads("[b]\nK=1\n[a] b\nL=2", "t.ini")
    assert doc.section("a").location_of("K").line == 2
    assert doc.section("a").location_of("L").line == 4
    assert doc.section("a").location.line == 3


def test_keys_in_definition_order_without_variables():
    doc = loads("[b]\nK=1\n$V=2\n[a] b\nZ=1\nA=2\nK=3", "t.ini")
    assert doc.section("a").keys() == ["K", "Z", "A"]
    assert doc.section("a").has("$V")


def test_sections_in_file_order_and_matching():
    doc = loads("G=1\n[sp]\n[sp.Transformation-1]\n[conv1]\n[sp.OnTheFlyTransformation-2]", "t.ini")
    assert [s.name for s in doc.sections()] == ["sp", "sp.Transformation-1", "conv1", "sp.OnTheFlyTransformation-2"]
    assert [s.name for s in doc.matching("sp.*")] == ["sp.Transformation-1", "sp.OnTheFlyTransformation-2"]
    assert [s.name for s in doc.matching("SP.*")] == []
    assert doc.get("nope") is None
    assert doc.get("") is None
    assert doc.global_section.raw("G") == "1"


def test_missing_section_error():
    doc = loads("[a]", "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section("b")
    assert str(info.value) == "t.ini: missing section [b]"


def test_values_resolve_lazily_so_injected_properties_are_visible():
    doc = loads("[conv1]\nNbOutputs=6\n[pool1]\nNbOutputs=[conv1]_NbOutputs", "t.ini")
    doc.section("conv1").inject("_NbOutputs", 6)
    assert doc.section("pool1").raw("NbOutputs") == "6"


def test_case_sensitive_names():
    doc = loads("[Conv]\nNbOutputs=1", "t.ini")
    assert doc.get("conv") is None
    assert not doc.section("Conv").has("nboutputs")
