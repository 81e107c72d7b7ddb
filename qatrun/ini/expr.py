"""A safe evaluator for N2D2's ``$(expr)`` values.

N2D2 runs ``python -c "print (expr)"`` on the text between ``$(`` and its matching ``)``, after
references and variables were substituted. Running the text would let an INI file execute arbitrary
code, so qatrun parses it with :mod:`ast` and walks the tree itself. Allowed: numbers, string literals
(for comparisons), ``+ - * / // % **``, unary ``+ - not``, comparisons, ``and``/``or``, the conditional
expression ``a if c else b``, parentheses and calls to ``int float min max round abs``. Anything else
(names, attributes, subscripts, lambdas, comprehensions, other calls) is refused before anything runs,
and results are bounded so that ``9**9**9`` cannot exhaust memory or time.

The result is printed as Python's ``print`` would: ``$(int(32*0.5))`` gives ``16``, ``$(4*2.5)`` gives
``10.0``, ``$(1 > 0)`` gives ``True``.
"""

from __future__ import annotations

import ast
import operator
import warnings
from typing import Any, Callable

MAX_EXPONENT = 10_000
"""Largest absolute integer exponent accepted by ``**``."""

MAX_INT_BITS = 4_096
"""Largest integer result (about 1,200 decimal digits)."""

MAX_TEXT = 10_000
"""Longest expression text accepted."""

MAX_NUMERIC_STRING = 100
"""Longest string that ``int()``/``float()`` may convert."""


class ExpressionError(Exception):
    """The expression is refused or fails; the caller adds the location."""


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}

_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "int": int,
    "float": float,
    "min": min,
    "max": max,
    "round": round,
    "abs": abs,
}


def evaluate(text: str) -> str:
    """Evaluates one ``$(...)`` body and prints the result as Python's ``print`` does.

    Args:
        text: the expression, references and variables already substituted.

    Returns:
        The printed result.

    Raises:
        ExpressionError: the expression is not allowed, malformed, or fails (division by zero, ...).
    """
    source = text.strip()
    if len(source) > MAX_TEXT:
        raise ExpressionError(f"expression not allowed: {len(source)} characters (at most {MAX_TEXT})")
    try:
        with warnings.catch_warnings():
            # Python warns about things like `1is 1` while parsing; the evaluator refuses them anyway.
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"invalid expression \"{source}\": {getattr(exc, 'msg', exc)}") from None
    evaluator = _Evaluator(source)
    try:
        evaluator.check(tree.body)
        value = evaluator.eval(tree.body)
    except RecursionError:
        raise ExpressionError(f"expression nested too deeply: \"{source}\"") from None
    except (ArithmeticError, ValueError, TypeError, MemoryError) as exc:
        raise ExpressionError(f"cannot evaluate \"{source}\": {exc}") from None
    return str(value)


class _Evaluator:
    """Checks the whole tree first (so nothing runs when any part is refused), then evaluates it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def refuse(self, node: ast.AST, reason: str = "") -> ExpressionError:
        segment = ast.get_source_segment(self.source, node) or type(node).__name__
        return ExpressionError(f"expression not allowed: {segment}" + (f" ({reason})" if reason else ""))

    def check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float, str, bool):
                raise self.refuse(node)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise self.refuse(node)
            self.check(node.left)
            self.check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise self.refuse(node)
            self.check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self.check(value)
        elif isinstance(node, ast.Compare):
            if any(type(op) not in _COMPARE for op in node.ops):
                raise self.refuse(node)
            for sub in (node.left, *node.comparators):
                self.check(sub)
        elif isinstance(node, ast.IfExp):
            for sub in (node.test, node.body, node.orelse):
                self.check(sub)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                raise self.refuse(node)
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    raise self.refuse(node)
                self.check(arg)
        else:
            raise self.refuse(node)

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.BinOp):
            return self.binary(node)
        if isinstance(node, ast.UnaryOp):
            operand = self.eval(node.operand)
            if not isinstance(node.op, ast.Not):
                self.need_number(operand, node)
            return _UNARY[type(node.op)](operand)
        if isinstance(node, ast.BoolOp):
            return self.boolean(node)
        if isinstance(node, ast.Compare):
            left = self.eval(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = self.eval(comparator)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)
        assert isinstance(node, ast.Call)
        return self.call(node)

    def call(self, node: ast.Call) -> Any:
        assert isinstance(node.func, ast.Name)
        name = node.func.id
        args = [self.eval(arg) for arg in node.args]
        if name in ("int", "float") and any(isinstance(arg, str) and len(arg) > MAX_NUMERIC_STRING for arg in args):
            raise self.refuse(node, "string too long to convert to a number")
        if name == "round" and len(args) == 2 and (not isinstance(args[1], int) or abs(args[1]) > 1000):
            # round(5, -10**9) would compute 10**(10**9).
            raise self.refuse(node, "round() digits must be an integer between -1000 and 1000")
        return self.bounded(_FUNCTIONS[name](*args), node)

    def boolean(self, node: ast.BoolOp) -> Any:
        value: Any = None
        for sub in node.values:
            value = self.eval(sub)
            # Short-circuit exactly as Python: `and` stops at the first falsy value, `or` at the first truthy.
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
        return value

    def binary(self, node: ast.BinOp) -> Any:
        left = self.eval(node.left)
        right = self.eval(node.right)
        self.need_number(left, node)
        self.need_number(right, node)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int):
            # Bound the size before computing: bits(a**b) <= bits(a) * b.
            if abs(right) > MAX_EXPONENT or left.bit_length() * right > MAX_INT_BITS:
                raise self.refuse(node, "result too large")
        return self.bounded(_BINARY[type(node.op)](left, right), node)

    def need_number(self, value: Any, node: ast.AST) -> None:
        # Strings are for comparisons only: "a" * 10**9 must not allocate a gigabyte.
        if not isinstance(value, (int, float)):
            raise self.refuse(node, "arithmetic on a non-number")

    def bounded(self, value: Any, node: ast.AST) -> Any:
        if not isinstance(value, (int, float, str)):
            raise self.refuse(node, "result is not a real number")
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self.refuse(node, "result too large")
        return value
