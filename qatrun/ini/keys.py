"""Typed INI keys: one declaration per key, next to the code that reads it.

A :class:`Key` names a key, its kind, its default and a one-line doc. ``Section.read(KEY)`` resolves the
value and converts it with the rules of N2D2's typed reads (``IniParser::getProperty<T>``, a C++ stream
with a ``,`` thousands separator that must consume the whole string):

========= ============================================================ =====================
kind      accepted text                                                 Python value
========= ============================================================ =====================
``str``   anything                                                      ``str``
``int``   ``-12``, ``1,281,167`` (not ``16.0``: use ``$(int(...))``)    ``int``
``float`` ``0.05``, ``1e-4``, ``-3``                                    ``float``
``bool``  ``0`` or ``1`` only (N2D2 rejects ``true``)                    ``bool``
``ints``  space-separated integers (``5 5``)                           ``tuple[int, ...]``
``floats`` space-separated numbers (``0.485 0.456 0.406``)              ``tuple[float, ...]``
``strs``  space-separated words                                         ``tuple[str, ...]``
``enum``  one of ``choices``, exact case                                ``str``
``path``  a path; OS environment variables ``${VAR}`` expanded (unset:   ``str``
          an error naming the variable, where N2D2 reads "")
========= ============================================================ =====================
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

KINDS = ("str", "int", "float", "bool", "ints", "floats", "strs", "enum", "path")


class _Required:
    """The default of a key that must be present."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Key:
    """Declaration of one INI key.

    Attributes:
        name: the key as the code spells it (``QWeight.QuantMode``).
        kind: one of :data:`KINDS`.
        default: the value when the key is absent; :data:`REQUIRED` makes absence an error.
        doc: one line saying what the key does.
        choices: the valid values of an ``enum`` key, exact case.
        aliases: other accepted spellings (the documentation's, e.g. ``QWeight.Mode``); giving two
            spellings in one section is an error.
    """

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.kind in KINDS, f"unknown key kind {self.kind!r} for {self.name}"
        assert (self.kind == "enum") == bool(self.choices), f"{self.name}: choices go with kind 'enum'"
        assert self.kind != "enum" or self.default is REQUIRED or self.default in self.choices, self.name

    @property
    def names(self) -> tuple[str, ...]:
        """The code spelling followed by the aliases."""
        return (self.name, *self.aliases)

    def convert(self, text: str) -> Any:
        """Converts a resolved value.

        Args:
            text: the resolved string.

        Returns:
            The typed value.

        Raises:
            ValueError: with the message to show (``expected an integer, found "16.0"``).
        """
        return _CONVERTERS[self.kind](self, text)


_INT = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_FLOAT = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_ENV = re.compile(r"\$\{([^}]*)\}")


def parse_int(text: str) -> int:
    """Parses an integer as N2D2 does (``,`` thousands separator accepted, no fraction)."""
    if not _INT.fullmatch(text):
        raise ValueError(f'expected an integer, found "{text}"')
    return int(text.replace(",", ""))


def parse_float(text: str) -> float:
    """Parses a decimal number (``,`` thousands separator accepted; no ``inf``/``nan``)."""
    if not _FLOAT.fullmatch(text):
        raise ValueError(f'expected a number, found "{text}"')
    return float(text.replace(",", ""))


def unset_variables(text: str) -> list[str]:
    """The names of the ``${VAR}`` in ``text`` that the OS environment does not set, in order."""
    return list(dict.fromkeys(name for name in _ENV.findall(text) if name not in os.environ))


def expand_env(text: str, strict: bool = False) -> str:
    """Replaces each ``${VAR}`` by the OS environment variable.

    Args:
        text: the path as written (``${N2D2_MODELS}/ONNX/resnet18v1.onnx``).
        strict: an unset variable is an error (N2D2 replaces it by nothing, so that the path silently
            becomes ``/ONNX/...``); else it is replaced by nothing.

    Raises:
        ValueError: with ``strict``, naming the unset variables.
    """
    unset = unset_variables(text) if strict else []
    if unset:
        names = " and ".join(f"${{{name}}}" for name in unset)
        verb = "is" if len(unset) == 1 else "are"
        empty = _ENV.sub(lambda match: os.environ.get(match.group(1), ""), text)
        raise ValueError(f'{names} {verb} not set in the environment (the path would read "{empty}"): '
                         "set it, or write the path in full")
    return _ENV.sub(lambda match: os.environ.get(match.group(1), ""), text)


def _str(key: Key, text: str) -> str:
    return text


def _int(key: Key, text: str) -> int:
    return parse_int(text)


def _float(key: Key, text: str) -> float:
    return parse_float(text)


def _bool(key: Key, text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f'expected 0 or 1, found "{text}"')
    return text == "1"


def _ints(key: Key, text: str) -> tuple[int, ...]:
    try:
        return tuple(parse_int(word) for word in text.split())
    except ValueError:
        raise ValueError(f'expected integers separated by spaces, found "{text}"') from None


def _floats(key: Key, text: str) -> tuple[float, ...]:
    try:
        return tuple(parse_float(word) for word in text.split())
    except ValueError:
        raise ValueError(f'expected numbers separated by spaces, found "{text}"') from None


def _strs(key: Key, text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _enum(key: Key, text: str) -> str:
    if text not in key.choices:
        raise ValueError(f'expected one of {", ".join(key.choices)}, found "{text}"')
    return text


def _path(key: Key, text: str) -> str:
    return expand_env(text, strict=True)


_CONVERTERS = {
    "str": _str,
    "int": _int,
    "float": _float,
    "bool": _bool,
    "ints": _ints,
    "floats": _floats,
    "strs": _strs,
    "enum": _enum,
    "path": _path,
}
