"""Per-line lexing of N2D2 INI text (``IniParser::load``), reference/n2d2.md section 1.1.

For each physical line, in N2D2's order: strip a UTF-8 BOM; if the *raw* line ends with ``\\`` join it
with the next one (checked before comments and trimming, so a CRLF line ending in ``\\`` + ``\\r`` does
not continue); cut the comment at the first ``;`` or ``#`` outside double quotes; trim; skip empty lines;
``[name] Base1 Base2`` is a header; anything else is ``Name=value`` split at the first ``=``, with one
pair of surrounding double quotes removed from the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from qatrun.errors import ConfigError, Location

BOM = "\ufeff"
SPACE = " \t\n\v\f\r"  # C's isspace(), not str.strip()'s Unicode notion.


@dataclass(frozen=True)
class Header:
    """``[name] base1 base2``."""

    name: str
    bases: tuple[str, ...]
    location: Location


@dataclass(frozen=True)
class Property:
    """``Name=value`` (value unquoted)."""

    name: str
    value: str
    location: Location


MAX_FILE_BYTES = 16 * 1024 * 1024


def read_text(path: str, location: Location | None = None) -> str:
    """Reads an INI or template file as UTF-8 (undecodable bytes replaced), refusing non-files.

    Args:
        path: the file.
        location: where the file was named (a template header), for the error message.

    Raises:
        ConfigError: the file is missing, not a regular file, unreadable or over 16 MiB.
    """
    where = location or Location(path)
    try:
        if not os.path.isfile(path):
            raise ConfigError(f"cannot read \"{path}\": no such file", where)
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ConfigError(f"cannot read \"{path}\": larger than {MAX_FILE_BYTES} bytes", where)
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read \"{path}\": {reason}", where) from None
    return data.decode("utf-8", errors="replace")


def physical_lines(text: str, path: str, via: tuple[Location, ...] = ()) -> list[tuple[str, Location]]:
    """Splits file text on ``\\n`` only (as ``std::getline``), numbering lines from 1."""
    return [(line, Location(path, number, via)) for number, line in enumerate(text.split("\n"), 1)]


def lex(lines: Iterable[tuple[str, Location]], section: str | None = None) -> Iterator[Header | Property]:
    """Turns physical lines into headers and properties.

    Args:
        lines: ``(raw line, location)`` pairs.
        section: the section that properties before the first header belong to (for messages).

    Yields:
        :class:`Header` and :class:`Property` items; a continued line has the location of its first line.

    Raises:
        ConfigError: unclosed double quote, empty section name, property without ``=``.
    """
    pending: str | None = None
    pending_location: Location | None = None
    for raw, location in lines:
        if raw.startswith(BOM):
            raw = raw[len(BOM):]
        if pending is not None:
            raw = pending + raw
            location = pending_location or location
        if raw.endswith("\\"):
            pending, pending_location = raw[:-1], location
            continue
        pending = pending_location = None
        item = _lex_line(raw, location, section)
        if isinstance(item, Header):
            section = item.name
        if item is not None:
            yield item
    if pending is not None and pending_location is not None:
        item = _lex_line(pending, pending_location, section)
        if item is not None:
            yield item


def strip_comment(raw: str, location: Location, section: str | None) -> str:
    """Cuts the text at the first ``;`` or ``#`` that is outside double quotes."""
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == '"':
            close = raw.find('"', index + 1)
            if close < 0:
                raise ConfigError("unclosed double quote", location, section or None)
            index = close + 1
            continue
        if char in ";#":
            return raw[:index]
        index += 1
    return raw


def _lex_line(raw: str, location: Location, section: str | None) -> Header | Property | None:
    line = strip_comment(raw, location, section).strip(SPACE)
    if not line:
        return None
    if line.startswith("[") and "]" in line:
        close = line.index("]")
        name = line[1:close]
        if not name:
            raise ConfigError("empty section name", location)
        bases = tuple(token for token in re.split("[ \t]+", line[close + 1:]) if token)
        return Header(name, bases, location)
    if "=" not in line:
        raise ConfigError(f"Missing value for property: {line}", location, section or None)
    name, value = line.split("=", 1)
    name = name.rstrip(SPACE)
    value = value.lstrip(SPACE)
    if not name:
        raise ConfigError(f"missing property name before '=' in \"{line}\"", location, section or None)
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return Property(name, value, location)
