"""Templates ``[name@file.ini.tpl]`` (reference/n2d2.md 1.5): the language, locations, a CIFAR ResNet-20."""

from __future__ import annotations

from pathlib import Path

import pytest

from qatrun.errors import ConfigError
from qatrun.ini import Key, load

DATA = Path(__file__).parent / "data"


def build(tmp_path: Path, ini: str, templates: dict[str, str], overrides: tuple[str, ...] = ()):
    for name, text in templates.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "net.ini").write_text(ini)
    return load(str(tmp_path / "net.ini"), overrides)


RENDERED = [
    # (id, ini, template text, section, key, expected)
    ("variable", "[b@t.tpl]\nA=5", "[x]\nV={{A}}", "x", "V", "5"),
    ("variable blanks in braces", "[b@t.tpl]\nA=5", "[x]\nV={{ A }}", "x", "V", "5"),
    ("section name", "[blk@t.tpl]", "[{{SECTION_NAME}}_c]\nV={{SECTION_NAME}}", "blk_c", "V", "blk"),
    ("section file name", "[blk@t.tpl]", "[x]\nV={{SECTION_FILE_NAME}}", "x", "V", "t.tpl"),
    ("parameters resolved", "$W=16\n[b@t.tpl]\nNB=$(2*${W})", "[x]\nV={{NB}}", "x", "V", "32"),
    ("parameter from reference", "[c]\nN=7\n[b@t.tpl]\nNB=[c]N", "[x]\nV={{NB}}", "x", "V", "7"),
    ("block", "[b@t.tpl]\nA=2\nA[0].P=Conv\nA[1].P=Pool",
     "[x]\n{% block A %}K{{#}}={{.P}}\n{% endblock %}", "x", "K1", "Pool"),
    ("block count", "[b@t.tpl]\nA=3\nA[0].P=a\nA[1].P=b\nA[2].P=c",
     "[x]\nV={% block A %}{{.P}}{% endblock %}", "x", "V", "abc"),
    ("block property exists", "[b@t.tpl]\nA=2\nA[1].Q=q",
     "[x]\nV={% block A %}{% if .Q exists %}{{.Q}}{% else %}-{% endif %}{% endblock %}", "x", "V", "-q"),
    ("for end", "[b@t.tpl]", "[x]\nV={% for i in range(3) %}{{i}}{% endfor %}", "x", "V", "012"),
    ("for start end", "[b@t.tpl]\nN=4", "[x]\nV={% for i in range(1, {{N}}) %}{{i}}{% endfor %}", "x", "V", "123"),
    ("for bound by name", "[b@t.tpl]\nN=2", "[x]\nV={% for i in range(N) %}{{i}}{% endfor %}", "x", "V", "01"),
    ("for empty", "[b@t.tpl]", "[x]\nV=<{% for i in range(2, 1) %}{{i}}{% endfor %}>", "x", "V", "<>"),
    ("for sections", "[b@t.tpl]", "{% for i in range(2) %}\n[x{{i}}]\nV={{i}}\n{% endfor %}", "x1", "V", "1"),
    ("if equal", "[b@t.tpl]\nS=2", "[x]\nV={% if S == 2 %}yes{% else %}no{% endif %}", "x", "V", "yes"),
    ("if not equal", "[b@t.tpl]\nS=2", "[x]\nV={% if S != 2 %}yes{% else %}no{% endif %}", "x", "V", "no"),
    ("if equal variable", "[b@t.tpl]\nS=2\nT=2", "[x]\nV={% if S == {{T}} %}yes{% endif %}", "x", "V", "yes"),
    ("if quoted value", "[b@t.tpl]\nS=a b", '[x]\nV={% if S == "a b" %}yes{% endif %}', "x", "V", "yes"),
    ("if exists", "[b@t.tpl]\nS=1", "[x]\nV={% if S exists %}yes{% endif %}", "x", "V", "yes"),
    ("if not_exists", "[b@t.tpl]", "[x]\nV={% if S not_exists %}none{% endif %}", "x", "V", "none"),
    ("nested if", "[b@t.tpl]\nA=1\nB=0",
     "[x]\nV={% if A == 1 %}{% if B == 1 %}11{% else %}10{% endif %}{% else %}0{% endif %}", "x", "V", "10"),
    ("if across lines", "[b@t.tpl]\nP=1", "[x]\n{% if P == 1 %}\nV=proj\n{% else %}\nV=id\n{% endif %}", "x", "V", "proj"),
    ("set", "[b@t.tpl]\nI=in", "{% set S %}{{I}}_x{% endset %}[x]\nV={{S}}", "x", "V", "in_x"),
    ("set replaces", "[b@t.tpl]\nI=a", "{% set I %}b{% endset %}[x]\nV={{I}}", "x", "V", "b"),
    ("include", "[b@t.tpl]\nA=3", "[x]\n{% include inc.tpl %}", "x", "V", "3"),
    ("dollar syntax left to INI", "$G=4\n[b@t.tpl]\nA=3", "[x]\nV=$({{A}} * ${G})", "x", "V", "12"),
    ("section variable in template", "[b@t.tpl]", "[x]\nV=${SECTION_NAME}", "x", "V", "x"),
    ("parent section name", "[blk@t.tpl]", "[x]\nV=${PARENT_SECTION_NAME}", "x", "V", "blk"),
    ("previous skips template parent", "[a]\n[blk@t.tpl]", "[x]\nV=${PREV_SECTION_NAME}", "x", "V", "a"),
    ("previous inside template", "[blk@t.tpl]", "[x]\n[y]\nV=${PREV_SECTION_NAME}", "y", "V", "x"),
    ("lines before a header go to the parent", "[b@t.tpl]\nA=1", "EXTRA=2\n[x]", "b@t.tpl", "EXTRA", "2"),
    ("template inherits base", "[Conv_def]\nType=Conv\n[b@t.tpl]", "[x] Conv_def", "x", "Type", "Conv"),
    ("comments and continuation", "[b@t.tpl]\nA=1", "[x] ; c\nV={{A}} \\\n2 ; c", "x", "V", "1 2"),
    ("subdirectory template", "[b@sub/t.tpl]", "[x]\n{% include inc2.tpl %}", "x", "W", "sub"),
]

INCLUDES = {"inc.tpl": "V={{A}}\n", "sub/inc2.tpl": "W=sub\n"}


@pytest.mark.parametrize(("ini", "template", "section", "key", "expected"), [
    pytest.param(*c[1:], id=c[0]) for c in RENDERED
])
def test_rendered(tmp_path, ini, template, section, key, expected):
    name = "sub/t.tpl" if "@sub/" in ini else "t.tpl"
    doc = build(tmp_path, ini, {name: template, **INCLUDES})
    assert doc.section(section).raw(key) == expected


def test_template_file_name_expands_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QATRUN_INI_TPL", str(tmp_path / "lib"))
    doc = build(tmp_path, "[b@${QATRUN_INI_TPL}/t.tpl]\nA=1", {"lib/t.tpl": "[x]\nV={{A}}"})
    assert doc.section("x").raw("V") == "1"


def test_override_reaches_template_parameters(tmp_path):
    doc = build(tmp_path, "$W=1\n[b@t.tpl]\nN=$(2*${W})", {"t.tpl": "[x]\nV={{N}}"}, ("$W=8",))
    assert doc.section("x").raw("V") == "16"
    doc = build(tmp_path, "[b@t.tpl]\nN=1", {"t.tpl": "[x]\nV={{N}}"}, ("[b@t.tpl]N=3",))
    assert doc.section("x").raw("V") == "3"


def test_override_of_a_templated_section(tmp_path):
    doc = build(tmp_path, "[b@t.tpl]", {"t.tpl": "[x]\nV=1"}, ("[x]V=2",))
    assert doc.section("x").raw("V") == "2"


def test_values_know_template_line_and_instantiation(tmp_path):
    doc = build(tmp_path, "; net\n[b@t.tpl]\nA=1", {"t.tpl": "; block\n[x]\n\nV={{A}}"})
    location = doc.section("x").location_of("V")
    assert (location.path, location.line) == (str(tmp_path / "t.tpl"), 4)
    assert [(outer.path, outer.line) for outer in location.via] == [(str(tmp_path / "net.ini"), 2)]
    assert str(location) == f"{tmp_path}/t.tpl:4 (in template instantiated at {tmp_path}/net.ini:2)"


def test_nested_templates_chain_instantiations(tmp_path):
    doc = build(tmp_path, "[outer@a.tpl]", {"a.tpl": "[inner@b.tpl]\n", "b.tpl": "[x]\nV=1"})
    assert str(doc.section("x").location_of("V")) == (
        f"{tmp_path}/b.tpl:2 (in template instantiated at {tmp_path}/a.tpl:1)"
        f" (in template instantiated at {tmp_path}/net.ini:1)"
    )


def test_unused_template_parameter_warns(tmp_path, capsys):
    build(tmp_path, "[b@t.tpl]\nA=1\nTYPO=2", {"t.tpl": "[x]\nV={{A}}"})
    assert capsys.readouterr().err == (
        f"{tmp_path}/net.ini:3: warning: [b@t.tpl] template parameter TYPO is not used by {tmp_path}/t.tpl\n"
    )


def test_instantiating_section_is_used_by_rendering(tmp_path):
    doc = build(tmp_path, "[b@t.tpl]\nA=1", {"t.tpl": "[x]\nV={{A}}"})
    doc.section("x").raw("V")
    assert doc.unused_sections() == []
    assert doc.unknown_keys() == []


TEMPLATE_ERRORS = [
    # (id, ini, template, message with {tpl} and {ini} placeholders)
    ("undefined variable", "[b@t.tpl]", "[x]\nV={{NOPE}}",
     "{tpl}:2 (in template instantiated at {ini}:1): template variable 'NOPE' is not defined"),
    ("undefined in condition", "[b@t.tpl]", "{% if NOPE == 1 %}{% endif %}",
     "{tpl}:1 (in template instantiated at {ini}:1): template variable 'NOPE' is not defined"),
    ("index outside block", "[b@t.tpl]", "[x]\nV={{#}}",
     "{tpl}:2 (in template instantiated at {ini}:1): {{{{#}}}} outside {{% block %}}"),
    ("unknown tag", "[b@t.tpl]", "\n{% while 1 %}",
     '{tpl}:2 (in template instantiated at {ini}:1): unknown or malformed template tag "{{% while 1 %}}"'),
    ("malformed if", "[b@t.tpl]", "{% if A == %}{% endif %}",
     '{tpl}:1 (in template instantiated at {ini}:1): malformed template condition "{{% if A == %}}"'),
    ("unclosed if", "[b@t.tpl]\nA=1", "[x]\n{% if A exists %}\nV=1",
     "{tpl}:2 (in template instantiated at {ini}:1): {{% if %}} is never closed"),
    ("stray endif", "[b@t.tpl]", "[x]\n{% endif %}",
     "{tpl}:2 (in template instantiated at {ini}:1): {{% endif %}} without a matching opening tag"),
    ("mismatched end", "[b@t.tpl]", "{% for i in range(2) %}{% endblock %}",
     "{tpl}:1 (in template instantiated at {ini}:1): {{% endblock %}} without a matching opening tag"),
    ("else outside if", "[b@t.tpl]", "{% else %}",
     "{tpl}:1 (in template instantiated at {ini}:1): {{% else %}} outside {{% if %}}"),
    ("tag not closed", "[b@t.tpl]\nA=1", "[x]\nV={{A",
     "{tpl}:2 (in template instantiated at {ini}:1): template tag not closed on its line"),
    ("range not integer", "[b@t.tpl]\nN=x", "{% for i in range(N) %}{% endfor %}",
     '{tpl}:1 (in template instantiated at {ini}:1): template: expected an integer, found "x"'),
    ("block count not integer", "[b@t.tpl]\nA=2.0", "{% block A %}{% endblock %}",
     '{tpl}:1 (in template instantiated at {ini}:1): template: expected an integer, found "2.0"'),
    ("huge loop", "[b@t.tpl]", "{% for i in range(1000000) %}{% endfor %}",
     "{tpl}:1 (in template instantiated at {ini}:1): template loop of 1000000 iterations (at most 100000)"),
    ("INI error inside template", "[b@t.tpl]", "[x_{{SECTION_NAME}}]\n\njunk",
     "{tpl}:3 (in template instantiated at {ini}:1): [x_b] Missing value for property: junk"),
    ("missing base inside template", "[b@t.tpl]", "[x] Nope_def",
     "{tpl}:1 (in template instantiated at {ini}:1): [x] Inherited section [Nope_def] does not exist"),
    ("duplicate section from two instances", "[a@t.tpl]\n[b@t.tpl]", "[x]",
     "{tpl}:1 (in template instantiated at {ini}:2): Section [x] already exists"
     " (first defined at {tpl}:1 (in template instantiated at {ini}:1))"),
    ("missing template file", "\n[b@nope.tpl]", "", '{ini}:2: cannot read "{dir}/nope.tpl": no such file'),
    ("missing include", "[b@t.tpl]", "{% include nope.tpl %}",
     '{tpl}:1 (in template instantiated at {ini}:1): cannot read "{dir}/nope.tpl": no such file'),
    ("parameter fails to resolve", "[b@t.tpl]\nA=$(1/0)", "",
     '{ini}:2: [b@t.tpl] A: cannot evaluate "1/0": division by zero'),
    ("self instantiation", "[b@t.tpl]", "[b2@t.tpl]\n",
     "{tpl}:1 (in template instantiated at {tpl}:1) (in template instantiated at {ini}:1):"
     " Section [b2@t.tpl] already exists"
     " (first defined at {tpl}:1 (in template instantiated at {ini}:1))"),
]


@pytest.mark.parametrize(("ini", "template", "message"), [pytest.param(*c[1:], id=c[0]) for c in TEMPLATE_ERRORS])
def test_template_errors(tmp_path, ini, template, message):
    with pytest.raises(ConfigError) as info:
        build(tmp_path, ini, {"t.tpl": template})
    assert str(info.value) == message.format(tpl=tmp_path / "t.tpl", ini=tmp_path / "net.ini", dir=tmp_path)


def test_recursive_template_is_bounded(tmp_path):
    template = "[{{SECTION_NAME}}x@t.tpl]\n"
    with pytest.raises(ConfigError) as info:
        build(tmp_path, "[b@t.tpl]", {"t.tpl": template})
    assert "templates nested deeper than 16" in str(info.value)


# --------------------------------------------------------------------------------------------------
# A CIFAR ResNet-20 written with one block template (tests/ini/data/resnet20.ini)

WIDTHS = {"s1": 16, "s2": 32, "s3": 64}


def test_resnet20_from_one_block_template():
    doc = load(str(DATA / "resnet20.ini"))
    layers = [s for s in doc.sections() if s.has("Input")]
    assert len([s for s in layers if s.raw("Type") == "Conv"]) == 1 + 9 * 2 + 2  # conv1, 2 per block, 2 projections
    assert len([s for s in layers if s.raw("Type") == "ElemWise"]) == 9
    for stage, width in WIDTHS.items():
        for block in (1, 2, 3):
            name = f"{stage}b{block}"
            assert doc.section(f"{name}_conv1").read(Key("NbOutputs", "int")) == width
            assert doc.section(f"{name}_bn1").read(Key("NbOutputs", "int")) == width
            assert doc.section(f"{name}_bn1").raw("ActivationFunction") == "Rectifier"
            assert doc.section(f"{name}_bn2").raw("ActivationFunction") == "Linear"
            stride = 2 if block == 1 and stage != "s1" else 1
            assert doc.section(f"{name}_conv1").read(Key("Stride", "int")) == stride
            assert doc.section(f"{name}_conv1").read(Key("KernelWidth", "int")) == 3
    assert doc.section("s1b1_sum").raw("Input") == "s1b1_bn2,bn1"
    assert doc.section("s2b1_sum").raw("Input") == "s2b1_bn2,s2b1_proj"
    assert doc.section("s2b1_proj").read(Key("KernelWidth", "int")) == 1
    assert doc.section("s2b2_sum").raw("Input") == "s2b2_bn2,s2b1_sum"
    assert doc.get("s1b1_proj") is None and doc.get("s3b1_proj") is not None
    assert doc.section("pool").raw("Input") == "s3b3_sum"


def test_resnet20_width_multiplier_override():
    doc = load(str(DATA / "resnet20.ini"), ["$ALPHA=0.5"])
    assert doc.section("conv1").read(Key("NbOutputs", "int")) == 8
    assert doc.section("s3b3_conv2").read(Key("NbOutputs", "int")) == 32


def test_resnet20_injected_sizes_reach_later_sections():
    doc = load(str(DATA / "resnet20.ini"))
    doc.section("s3b3_sum").inject("_OutputsWidth", 8)
    doc.section("s3b3_sum").inject("_OutputsHeight", 8)
    assert doc.section("pool").read(Key("PoolWidth", "int")) == 8


def test_resnet20_errors_point_into_the_block_template():
    doc = load(str(DATA / "resnet20.ini"))
    with pytest.raises(ConfigError) as info:
        doc.section("s2b3_sum").read(Key("Operation", "enum", choices=("Max", "Prod")))
    assert str(info.value) == (
        f"{DATA}/ResNet20-block.ini.tpl:36 (in template instantiated at {DATA}/resnet20.ini:72):"
        ' [s2b3_sum] Operation: expected one of Max, Prod, found "Sum"'
    )


def test_resnet20_stage_template_instantiates_block_template(tmp_path):
    ini = (DATA / "resnet20.ini").read_text()
    head = ini[: ini.index("[s1b1@")]
    stages = "".join(
        f"[{stage}@{DATA}/ResNet20-stage.ini.tpl]\nINPUT={source}\nNB_FILTERS={width}\nNB_BLOCKS=3\n"
        f"STRIDES={1 if stage == 's1' else 2}\nPROJECTION_SHORTCUT={0 if stage == 's1' else 1}\n"
        for stage, source, width in (("s1", "bn1", 16), ("s2", "s1b2_sum", 32), ("s3", "s2b2_sum", 64))
    )
    (tmp_path / "net.ini").write_text(head + stages)
    doc = load(str(tmp_path / "net.ini"))
    assert doc.section("s2b0_sum").raw("Input") == "s2b0_bn2,s2b0_proj"
    assert doc.section("s2b2_conv1").raw("Input") == "s2b1_sum"
    assert doc.section("s3b0_conv1").read(Key("Stride", "int")) == 2
    location = doc.section("s3b1_conv1").location_of("NbOutputs")
    assert [Path(outer.path).name for outer in location.via] == ["ResNet20-stage.ini.tpl", "net.ini"]
