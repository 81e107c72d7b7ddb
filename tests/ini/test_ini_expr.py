"""``$(expr)``: Python's results and printing, and nothing but arithmetic ever runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatrun.errors import ConfigError
from qatrun.ini import loads
from qatrun.ini.expr import ExpressionError, evaluate

RESULTS = [
    # (expression, printed result as Python's print gives it)
    ("int(32*0.5)", "16"),
    ("4*2.5", "10.0"),
    ("7 // 2", "3"),
    ("-7 // 2", "-4"),
    ("-7 % 3", "2"),
    ("7 / 2", "3.5"),
    ("6 / 2", "3.0"),
    ("2**-1", "0.5"),
    ("2**10", "1024"),
    ("4**(-1.0/(2*2-2)) if 4 > 0 else 1.0", "0.5"),
    ("1.0 if 0 > 1 else 2", "2"),
    ("1 < 2 < 3", "True"),
    ("1 < 2 > 3", "False"),
    ("0 or 5", "5"),
    ("0 and 5", "0"),
    ("not 0", "True"),
    ("max(1, min(5, 3)) + abs(-2) + round(2.5)", "7"),
    ("round(2.675, 2)", "2.67"),
    ("float(3)", "3.0"),
    ("int('12') + 1", "13"),
    ("'a' == 'a'", "True"),
    ("'SGD' != 'Adam'", "True"),
    ("0.1 + 0.2", "0.30000000000000004"),
    ("1e-5", "1e-05"),
    ("  ( 1 + 2 )  ", "3"),
    ("-(3)", "-3"),
    ("+3", "3"),
    ("True + 1", "2"),
    ("1281167 * 150", "192175050"),
]


@pytest.mark.parametrize(("expression", "printed"), RESULTS)
def test_results_print_as_python(expression, printed):
    assert evaluate(expression) == printed
    assert printed == str(eval(expression))  # the reference: what `python -c "print(expr)"` prints


REFUSED = [
    # (expression, exact message)
    ("__import__('os').system('true')", "expression not allowed: __import__('os').system('true')"),
    ("__import__('os')", "expression not allowed: __import__('os')"),
    ("open('x', 'w')", "expression not allowed: open('x', 'w')"),
    ("(1).real", "expression not allowed: (1).real"),
    ("(1).__class__", "expression not allowed: (1).__class__"),
    ("x", "expression not allowed: x"),
    ("lambda: 1", "expression not allowed: lambda: 1"),
    ("[1][0]", "expression not allowed: [1][0]"),
    ("(1, 2)", "expression not allowed: (1, 2)"),
    ("[x for x in (1,)]", "expression not allowed: [x for x in (1,)]"),
    ("{1: 2}", "expression not allowed: {1: 2}"),
    ("int(x=1)", "expression not allowed: int(x=1)"),
    ("max(*(1, 2))", "expression not allowed: max(*(1, 2))"),
    ("1 if x else 2", "expression not allowed: x"),
    ("1 << 10", "expression not allowed: 1 << 10"),
    ("1 in (1,)", "expression not allowed: 1 in (1,)"),
    ("1 is 1", "expression not allowed: 1 is 1"),
    ("~1", "expression not allowed: ~1"),
    ("None", "expression not allowed: None"),
    ("b'x'", "expression not allowed: b'x'"),
    ("1j", "expression not allowed: 1j"),
    ("f'{1}'", "expression not allowed: f'{1}'"),
    ("(y := 1)", "expression not allowed: y := 1"),
    ("0 and __import__('os')", "expression not allowed: __import__('os')"),
    ("2**100000", "expression not allowed: 2**100000 (result too large)"),
    ("9**9**9", "expression not allowed: 9**9**9 (result too large)"),
    ("10**1300", "expression not allowed: 10**1300 (result too large)"),
    ("'a' * 3", "expression not allowed: 'a' * 3 (arithmetic on a non-number)"),
    ("-'a'", "expression not allowed: -'a' (arithmetic on a non-number)"),
    ("int('1' * 200)", "expression not allowed: '1' * 200 (arithmetic on a non-number)"),
    ("int('" + "1" * 200 + "')", "expression not allowed: int('" + "1" * 200 + "') (string too long to convert to a number)"),
    ("round(5, -100000)", "expression not allowed: round(5, -100000) (round() digits must be an integer between -1000 and 1000)"),
    ("(-8) ** 0.5", "expression not allowed: (-8) ** 0.5 (result is not a real number)"),
    ("1/0", 'cannot evaluate "1/0": division by zero'),
    ("1 +", 'invalid expression "1 +": invalid syntax'),
    ("", 'invalid expression "": invalid syntax'),
    ("1+" * 6000 + "1", "expression not allowed: 12001 characters (at most 10000)"),
    ("max(1, 'a')", "cannot evaluate \"max(1, 'a')\": '>' not supported between instances of 'str' and 'int'"),
    ("int('x')", "cannot evaluate \"int('x')\": invalid literal for int() with base 10: 'x'"),
]


@pytest.mark.parametrize(("expression", "message"), REFUSED)
def test_refused(expression, message):
    with pytest.raises(ExpressionError) as info:
        evaluate(expression)
    assert str(info.value) == message


def test_refusal_runs_nothing(tmp_path: Path):
    marker = tmp_path / "pwned"
    attempts = [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('x')",
        f"(lambda: __import__('os').system('touch {marker}'))()",
        f"().__class__.__base__.__subclasses__() or open('{marker}', 'w')",
        f"1 if __import__('pathlib').Path('{marker}').touch() else 2",
        f"[__import__('os').system('touch {marker}') for _ in (1,)]",
        f"max(1, __import__('os').system('touch {marker}'))",
    ]
    text = "[a]\n" + "\n".join(f"X{i}=$({attempt})" for i, attempt in enumerate(attempts))
    doc = loads(text, "t.ini")
    for index, attempt in enumerate(attempts):
        with pytest.raises(ConfigError) as info:
            doc.section("a").raw(f"X{index}")
        assert "expression not allowed" in str(info.value)
    assert not marker.exists()


INI_ERRORS = [
    ("[a]\nX=$(__import__('os'))", "t.ini:2: [a] X: expression not allowed: __import__('os')"),
    ("[a]\nX=$((1)", 't.ini:2: [a] X: unbalanced parentheses in "$((1)"'),
    ("[a]\nX=$(${NOPE} + 1)", 't.ini:2: [a] X: invalid expression "${NOPE} + 1": invalid syntax'),
    ("[a]\nX=$([1][0])", "t.ini:2: [a] X: expression not allowed: [1][0]"),
    ("$V=$(1/0)\n[a]\nX=${V}", 't.ini:1: $V: cannot evaluate "1/0": division by zero'),
    ("[sp]\n_E=6\n[a]\nX=$([sp]_E*2)", "t.ini:4: [a] X: Property _E*2) not found in section [sp]"),
]


@pytest.mark.parametrize(("text", "message"), INI_ERRORS)
def test_expression_errors_in_ini(text, message):
    doc = loads(text, "t.ini")
    with pytest.raises(ConfigError) as info:
        doc.section("a").raw("X")
    assert str(info.value) == message


_ATOMS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["'a'", "x", "__import__", "open", "int", "min", "()", "[]", "lambda", "."]),
)
_OPERATORS = st.sampled_from([" + ", " - ", " * ", " / ", " // ", " % ", " ** ", " < ", " == ", " and ", " or ",
                              " if ", " else ", ", ", "(", ")", "not ", "-", "."])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_ATOMS, _OPERATORS), max_size=12))
def test_random_expressions_raise_only_expression_errors(tokens):
    try:
        evaluate("".join(tokens))
    except ExpressionError:
        pass
