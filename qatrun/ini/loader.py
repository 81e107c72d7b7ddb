"""Builds a :class:`Document` from INI text: sections, copy-inheritance, templates, ``-set`` overrides.

N2D2's semantics (``IniParser::load``, reference/n2d2.md sections 1.1 and 1.5):

- ``[name] Base1 Base2`` copies the bases' properties *as they are now* (first listed base wins);
  keys then written in the section override them, each with a warning, as does a redefinition.
- ``[name@file.ini.tpl]`` is rendered when the next header (or the end of the text) is reached, with
  the section's resolved properties, and the result is parsed in place. Sections it creates carry
  ``$PARENT_SECTION_NAME``.
- Overrides (``-set [conv1]NbOutputs=32``, ``-set $LR=0.1``) replace or add a key when their section
  is complete, before any later section copies it or a template reads it, so overriding a base
  section or a variable reaches everything built from it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from qatrun.errors import COMMAND_LINE, ConfigError, Location
from qatrun.ini.diagnostics import warn
from qatrun.ini.document import Document, Section
from qatrun.ini.keys import expand_env
from qatrun.ini.lexer import SPACE, Header, lex, physical_lines, read_text
from qatrun.ini.template import render

MAX_TEMPLATE_DEPTH = 16

_OVERRIDE = re.compile(r"(?:\[([^\]]*)\])?([^=]+)=(.*)", re.DOTALL)


def load(path: str, overrides: Sequence[str] = ()) -> Document:
    """Reads an INI file.

    Args:
        path: the INI file; templates are found relative to its directory.
        overrides: ``[section]Key=value``, ``Key=value`` (global section) or ``$VAR=value`` texts.

    Raises:
        ConfigError: unreadable file, malformed text, missing base, template error, bad override.
    """
    return loads(read_text(path), path, overrides)


def loads(text: str, path: str = "<string>", overrides: Sequence[str] = ()) -> Document:
    """Parses INI text; ``path`` names it in messages and locates templates (its directory)."""
    document = Document(path)
    builder = _Builder(document, [_parse_override(text) for text in overrides])
    builder.feed(physical_lines(text, path), os.path.dirname(path) or ".", 0)
    builder.check_overrides_applied()
    return document


@dataclass
class _Override:
    text: str
    section: str
    key: str
    value: str
    applied: bool = False


def _parse_override(text: str) -> _Override:
    match = _OVERRIDE.fullmatch(text.strip(SPACE))
    key = match.group(2).strip(SPACE) if match else ""
    if match is None or not key or key.startswith("[") or any(char in SPACE for char in key):
        raise ConfigError(
            f'malformed override "{text}": expected [section]Key=value, Key=value or $VAR=value',
            Location(COMMAND_LINE),
        )
    value = match.group(3).strip(SPACE)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return _Override(text, (match.group(1) or "").strip(SPACE), key, value)


@dataclass
class _Builder:
    document: Document
    overrides: list[_Override]
    current: Section = field(init=False)
    previous: str | None = None  # last section not instantiating a template, for ${PREV_SECTION_NAME}
    parent: str | None = None  # SECTION_NAME of the template being parsed
    origins: dict[str, tuple[str, int]] = field(default_factory=dict)  # template section -> (dir, depth)

    def __post_init__(self) -> None:
        self.current = self.document.global_section

    def feed(self, lines: Iterable[tuple[str, Location]], directory: str, depth: int) -> None:
        """Parses lines into the document; the last section is completed at the end."""
        for item in lex(lines, self.current.name):
            if isinstance(item, Header):
                self.complete()
                self.open(item, directory, depth)
            else:
                self.current.define(item.name, item.value, item.location)
        self.complete()

    def open(self, header: Header, directory: str, depth: int) -> None:
        existing = self.document._sections.get(header.name)
        if existing is not None:
            raise ConfigError(
                f"Section [{header.name}] already exists (first defined at {existing.location})", header.location
            )
        template = header.name.split("@", 1)[1] if "@" in header.name else None
        section = Section(self.document, header.name, header.location, header.bases, template, self.previous)
        for base in header.bases:
            found = self.document._sections.get(base)
            if found is None:
                raise ConfigError(f"Inherited section [{base}] does not exist", header.location, header.name)
            section.inherit(found)
        if self.parent is not None:
            section.define("$PARENT_SECTION_NAME", self.parent, header.location, warn_override=False)
        self.document.add(section)
        if template is None:
            self.previous = header.name
        else:
            self.origins[header.name] = (directory, depth)
        self.current = section

    def complete(self) -> None:
        """Applies the overrides of the current section and instantiates its template, once."""
        section = self.current
        for override in self.overrides:
            if override.section == section.name:
                section.define(override.key, override.value, Location(COMMAND_LINE), warn_override=False)
                override.applied = True
        if section.template is not None and section.name in self.origins:
            directory, depth = self.origins.pop(section.name)
            self.instantiate(section, directory, depth)

    def instantiate(self, section: Section, directory: str, depth: int) -> None:
        if depth >= MAX_TEMPLATE_DEPTH:
            raise ConfigError(f"templates nested deeper than {MAX_TEMPLATE_DEPTH}", section.location, section.name)
        assert section.template is not None
        name = section.name.split("@", 1)[0]
        try:
            file_name = expand_env(section.template, strict=True)
        except ValueError as exc:
            raise ConfigError(f"template {section.template}: {exc}", section.location, section.name) from None
        path = os.path.normpath(file_name if os.path.isabs(file_name) else os.path.join(directory, file_name))
        params = {key: section.raw(key) for key in section.keys()}
        params.update(SECTION_NAME=name, SECTION_FILE_NAME=file_name)
        site = Location(section.location.path, section.location.line)
        lines, used = render(path, params, (site, *section.location.via), section.location)
        for key in section.keys():
            if key not in used:
                warn(f"template parameter {key} is not used by {path}", section.location_of(key), section.name)
        outer_parent, self.parent = self.parent, name
        try:
            self.feed(lines, os.path.dirname(path), depth + 1)
        finally:
            self.parent = outer_parent

    def check_overrides_applied(self) -> None:
        for override in self.overrides:
            if not override.applied:
                raise ConfigError(
                    f'override "{override.text}": no section [{override.section}]', Location(COMMAND_LINE)
                )
