"""Random text never crashes the parser: every failure is a ``QatrunError`` (no traceback for users)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qatrun.errors import QatrunError
from qatrun.ini import Key, loads

_PIECES = st.sampled_from([
    "[", "]", "[a]", "[b] a", "[c]a b", "[t@x.tpl]", "[@]", "=", "\n", "\r\n", "\\", "\\\n", ";", "#", '"',
    "$(", ")", "$(1+", "$(2**", "${", "}", "${V}", "$V=", "${SECTION_NAME}", "{%", "%}", "{{", "}}",
    "{% if A == 1 %}", "{% endif %}", "[a]X", "[b]Y", "X=", "Y=", "ConfigSection=", "a,b", " ", "\t", "\ufeff",
    "0", "1", "16.0", "1,281", "__import__('os')", "x" * 3, "é", "\x00",
])

_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(_PIECES, max_size=40).map("".join),
    st.binary(max_size=200).map(lambda data: data.decode("utf-8", errors="replace")),
    st.binary(max_size=200).map(lambda data: data.decode("latin-1")),
)

_KINDS = [Key("K", kind) for kind in ("str", "int", "float", "bool", "ints", "floats", "strs", "path")]


def _attempt(action, *args) -> None:
    try:
        action(*args)
    except QatrunError:
        pass


def _exercise(text: str, overrides: list[str]) -> None:
    doc = loads(text, "fuzz.ini", overrides)
    _attempt(doc.dump_resolved)
    for section in [doc.global_section, *doc.sections()]:
        for key in section.keys() + [k for k in ("$V", "$A") if section.has(k)]:
            _attempt(section.raw, key)
            for kind in _KINDS:
                _attempt(section.read, Key(key, kind.kind))
        _attempt(doc.params, section)
    _attempt(doc.check_strict)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT, st.lists(st.one_of(st.text(max_size=20), st.lists(_PIECES, max_size=6).map("".join)), max_size=2))
def test_random_text_raises_only_qatrun_errors(text, overrides):
    _attempt(_exercise, text, overrides)
