"""One family of user errors, each knowing where in the configuration it comes from.

Every error a user can cause (a malformed INI file, a missing data set, a weights file of the wrong size)
is a :class:`QatrunError`. ``cli.main`` catches the family once, prints the message on one line and exits
with status 2. Internal invariants use ``assert``; anything else escaping is a bug.

Message format::

    path:line: [section] Key: message
    path:line: [section] Key: message (in template instantiated at other.ini:12)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """Where a value or a section was written.

    Attributes:
        path: file the text came from; ``<command line>`` for ``-set`` overrides.
        line: 1-based line number (0 when unknown, e.g. a whole file).
        via: the chain of template instantiations that produced this text, innermost first.
    """

    path: str
    line: int = 0
    via: tuple[Location, ...] = field(default=())

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        for outer in self.via:
            where += f" (in template instantiated at {outer.path}:{outer.line})"
        return where


COMMAND_LINE = "<command line>"


class QatrunError(Exception):
    """A user error: printed as one line, exit status 2, no traceback.

    Args:
        message: what was expected and what was found.
        location: where the offending text was written, if it comes from a file.
        section: the INI section concerned, if any.
        key: the INI key concerned, if any.
    """

    def __init__(
        self,
        message: str,
        location: Location | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.section = section
        self.key = key

    def __str__(self) -> str:
        parts = []
        if self.location is not None:
            parts.append(f"{self.location}:")
        if self.section is not None:
            parts.append(f"[{self.section}]")
        prefix = " ".join(parts)
        if self.key is not None:
            prefix = f"{prefix} {self.key}:" if prefix else f"{self.key}:"
        return f"{prefix} {self.message}" if prefix else self.message


class ConfigError(QatrunError):
    """The INI configuration is malformed or inconsistent."""


class DataError(QatrunError):
    """A data set or a weights file is missing, unreadable or of the wrong size."""


class RunError(QatrunError):
    """A run cannot proceed (no GPU where one was asked for, a failed verification, ...)."""


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """``" (did you mean 'X'?)"`` for the candidate closest to ``name``, or ``""`` when none is close.

    Every "unknown name" message of qatrun ends with this suffix (``difflib``'s ratio, at least ``cutoff``).
    """
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""
