"""The parsed INI file: sections, lazy value resolution, typed reads and consumption tracking.

Values are stored raw and resolved at every read, in N2D2's order (``IniParser::getPropertyValue``,
reference/n2d2.md section 1.2): ``[Section]Key`` references, then ``${VAR}`` variables, then ``$(expr)``
expressions. Lazy resolution is what lets generator-injected properties (``[conv1]_NbOutputs``,
``[sp]_EpochSize``) be used by sections read later.

Every read marks the key *consumed*; :meth:`Document.check_strict` turns every key left unconsumed in a
used section into an error with a did-you-mean drawn from the keys the reading code declared. N2D2
silently ignores such keys in many sections; qatrun does not.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from qatrun.errors import ConfigError, Location, did_you_mean
from qatrun.ini.diagnostics import warn
from qatrun.ini.expr import ExpressionError, evaluate
from qatrun.ini.keys import REQUIRED, Key
from qatrun.ini.lexer import SPACE

MAX_DEPTH = 64
"""Deepest chain of references and variables followed before giving up."""

MAX_VALUE = 1_000_000
"""Longest resolved value (guards against exponential variable expansion)."""

_Where = tuple[Location, str | None, str | None]  # location, section, key of the text being resolved


@dataclass
class Value:
    """One stored property: raw text, where it was written, and whether code read it."""

    text: str
    location: Location
    consumed: bool = False
    injected: bool = False
    placeholder: bool = False  # injected before the data it derives from were read


@dataclass
class _Resolution:
    """State of one top-level read: the chain being followed (for cycles) and finished values."""

    stack: list[tuple[str, str]] = field(default_factory=list)
    memo: dict[tuple[str, str, str], str] = field(default_factory=dict)
    placeholders: list[str] = field(default_factory=list)  # ``[sp]_EpochSize`` ... met on the way


@dataclass(frozen=True)
class Provisional:
    """A value read while a property it refers to was a placeholder (see :meth:`Section.inject`).

    Attributes:
        location: where the value was written.
        section: its section.
        key: its key.
        sources: the placeholder properties it refers to, directly or through others (``[sp]_EpochSize``).
    """

    location: Location
    section: str
    key: str
    sources: tuple[str, ...]


class _Reader:
    """The read API shared by :class:`Section` and :class:`Params`."""

    name: str
    location: Location

    def _find(self, key: str) -> tuple[Section, Value] | None:
        raise NotImplementedError

    def _holders(self) -> list[Section]:
        raise NotImplementedError

    def _consume(self, key: str) -> None:
        raise NotImplementedError

    def keys(self) -> list[str]:
        """Property names in definition order, variables (``$X``) excluded."""
        raise NotImplementedError

    def has(self, key: str) -> bool:
        """Whether the key is present (does not consume it)."""
        return self._find(key) is not None

    def declare(self, *names: str) -> None:
        """Records key names valid here, for the did-you-mean of strict mode (reading does it too)."""
        for section in self._holders():
            section._declared.update(names)

    def location_of(self, key: str) -> Location:
        """Where the key's value was written (the section header if the key is absent)."""
        found = self._find(key)
        return found[1].location if found else self.location

    def error(self, key: str | None, message: str) -> ConfigError:
        """Builds (does not raise) an error about a key: ``path:line: [section] key: message``."""
        found = self._find(key) if key is not None else None
        if found is None:
            return ConfigError(message, self.location, self.name or None, key)
        section, value = found
        return ConfigError(message, value.location, section.name or None, key)

    def raw(self, key: str, default: str | None = None) -> str:
        """The resolved string value of a key; consumes it.

        Args:
            key: the property name.
            default: returned when the key is absent; ``None`` makes absence an error.

        Raises:
            ConfigError: the key is absent and no default was given, or resolution fails.
        """
        found = self._find(key)
        if found is None:
            if default is not None:
                return default
            raise self.error(key, "required key is missing")
        self._consume(key)
        section, _ = found
        return section.document._resolve(section, key)

    def read(self, key: Key) -> Any:
        """The typed value of a declared key (or its default); consumes it.

        Raises:
            ConfigError: the key is required and absent, two spellings are given, or the value does
                not parse (``expected an integer, found "16.0"``).
        """
        self.declare(*key.names)
        present = [name for name in key.names if self.has(name)]
        if len(present) > 1:
            spellings = " and ".join(f"'{name}'" for name in present)
            raise self.error(present[-1], f"{spellings} are the same key; give only one")
        if not present:
            if key.default is REQUIRED:
                raise self.error(key.name, "required key is missing")
            return key.default
        text = self.raw(present[0])
        try:
            return key.convert(text)
        except ValueError as exc:
            raise self.error(present[0], str(exc)) from None

    def prefixed(self, prefix: str) -> dict[str, str]:
        """All keys starting with ``prefix``, resolved, by suffix (``QWeight.`` -> ``{"Range": "15"}``).

        Consumes them: the caller must reject the suffixes it does not know (with :meth:`error`).
        """
        return {key[len(prefix):]: self.raw(key) for key in self.keys() if key.startswith(prefix)}


class Section(_Reader):
    """One ``[name] Base1 Base2`` section (the global section has the name ``""``).

    Attributes:
        name: the text between the brackets.
        location: where the header was written (the file start for the global section).
        bases: the base sections listed after the header, whose properties were copied in.
        template: for ``[name@file.ini.tpl]``, the template file as written; else ``None``.
        document: the document holding the section.
    """

    def __init__(
        self,
        document: Document,
        name: str,
        location: Location,
        bases: tuple[str, ...] = (),
        template: str | None = None,
        previous: str | None = None,
    ) -> None:
        self.document = document
        self.name = name
        self.location = location
        self.bases = bases
        self.template = template
        self.previous = previous
        self._values: dict[str, Value] = {}
        self._declared: set[str] = set()
        self._used = False
        self._referenced = False

    def __repr__(self) -> str:
        return f"Section({self.name!r}, {self.location})"

    def _find(self, key: str) -> tuple[Section, Value] | None:
        value = self._values.get(key)
        return (self, value) if value is not None else None

    def _holders(self) -> list[Section]:
        return [self]

    def _consume(self, key: str) -> None:
        self._used = True
        self._values[key].consumed = True

    def keys(self) -> list[str]:
        return [key for key in self._values if not key.startswith("$")]

    def mark_used(self) -> None:
        """Marks the section as used: strict mode then reports its unconsumed keys."""
        self._used = True

    def inject(self, key: str, value: object, placeholder: bool = False) -> None:
        """Adds a generator-computed property (``_NbOutputs``), visible to later references.

        Args:
            key: the property (``_EpochSize``).
            value: its value.
            placeholder: the value stands in for one derived from data not read yet (``[sp]_EpochSize``
                with the data set absent): every value read through it is recorded as provisional
                (:meth:`Document.provisional`).
        """
        self._values[key] = Value(str(value), self.location, consumed=True, injected=True,
                                  placeholder=placeholder)

    def define(self, key: str, text: str, location: Location, warn_override: bool = True) -> None:
        """Stores a property as the parser does; redefinition warns as N2D2 does and the last wins."""
        old = self._values.get(key)
        if old is not None and warn_override:
            warn(f'overriding property {key} (previous value was "{old.text}")', location, self.name)
        self._values[key] = Value(text, location)

    def inherit(self, base: Section) -> None:
        """Copies the base's current properties; keys already present (an earlier base) are kept."""
        for key, value in base._values.items():
            if key not in self._values:
                self._values[key] = Value(value.text, value.location, injected=value.injected)

    def unconsumed(self) -> list[str]:
        """Keys (variables excluded) that nothing read, in file order."""
        keys = [key for key in self.keys() if not self._values[key].consumed]

        def order(key: str) -> tuple[int, int]:
            location = self._values[key].location
            return (location.path != self.location.path, location.line)

        return sorted(keys, key=order)


class Params(_Reader):
    """A layer's parameter map: the sections of its ``ConfigSection=a,b``, later overriding earlier.

    Reading a key marks it consumed in every listed section that holds it (an overridden value was
    honoured too: it was replaced on purpose).
    """

    def __init__(self, owner: Section, sources: list[Section]) -> None:
        self.name = owner.name
        self.location = owner.location
        self.owner = owner
        self.sources = sources

    def __repr__(self) -> str:
        return f"Params({self.name!r}, {[source.name for source in self.sources]})"

    def _find(self, key: str) -> tuple[Section, Value] | None:
        for source in reversed(self.sources):
            found = source._find(key)
            if found is not None:
                return found
        return None

    def _holders(self) -> list[Section]:
        return list(self.sources)

    def _consume(self, key: str) -> None:
        for source in self.sources:
            if key in source._values:
                source._consume(key)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(key for source in self.sources for key in source.keys()))


class Document:
    """A parsed INI file and the templates it instantiated.

    Attributes:
        path: the file it was read from (``<string>`` for text).
        global_section: the properties before the first header (name ``""``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.global_section = Section(self, "", Location(path))
        self._sections: dict[str, Section] = {"": self.global_section}
        self._provisional: dict[tuple[str, str], Provisional] = {}

    def __repr__(self) -> str:
        return f"Document({self.path!r}, {len(self._sections) - 1} sections)"

    # ----------------------------------------------------------------------------------------------
    # Finding sections

    def add(self, section: Section) -> None:
        """Adds a section built by the loader (name already checked unique)."""
        assert section.name not in self._sections, section.name
        self._sections[section.name] = section

    def section(self, name: str) -> Section:
        """The section with that exact name; marks it used.

        Raises:
            ConfigError: no such section (naming the file).
        """
        found = self.get(name)
        if found is None:
            raise ConfigError(f"missing section [{name}]", Location(self.path))
        return found

    def get(self, name: str) -> Section | None:
        """The section with that exact name (marked used), or ``None``."""
        found = self._sections.get(name) if name else None
        if found is not None:
            found.mark_used()
        return found

    def sections(self) -> list[Section]:
        """All sections in file order, the global section excluded (marks nothing)."""
        return [section for name, section in self._sections.items() if name]

    def matching(self, pattern: str) -> list[Section]:
        """Sections whose name matches an fnmatch pattern (case-sensitive), in file order; marks them used."""
        found = [section for section in self.sections() if fnmatch.fnmatchcase(section.name, pattern)]
        for section in found:
            section.mark_used()
        return found

    def params(self, section: Section) -> Params:
        """The parameter map of a layer from its ``ConfigSection=a,b`` (consumes that key).

        N2D2's per-model ``ConfigSection(<Model>)=`` is not supported: it is left unconsumed, so strict
        mode reports it (suggesting ``ConfigSection``).

        Raises:
            ConfigError: a listed section does not exist.
        """
        section.declare("ConfigSection")
        if not section.has("ConfigSection"):
            return Params(section, [])
        sources = []
        for name in section.raw("ConfigSection").split(","):
            name = name.strip(SPACE)
            if not name:
                continue
            source = self._sections.get(name)
            if source is None:
                raise section.error("ConfigSection", f"section [{name}] does not exist")
            source.mark_used()
            sources.append(source)
        return Params(section, sources)

    # ----------------------------------------------------------------------------------------------
    # Resolution

    def _resolve(self, section: Section, key: str) -> str:
        """Resolves a stored property in the context of its own section."""
        state = _Resolution()
        result = self._value(section, section, key, state)
        if state.placeholders and not section._values[key].placeholder:
            sources = tuple(dict.fromkeys(state.placeholders))
            self._provisional[(section.name, key)] = Provisional(section._values[key].location, section.name, key,
                                                                sources)
        return result

    def provisional(self) -> list[Provisional]:
        """The values read so far that refer to a placeholder property, in the order first read.

        A value read again once the property holds its real value stays listed: a stage that read it
        early (a solver schedule built before the data were opened) may still hold the placeholder.
        """
        return list(self._provisional.values())

    def resolve_text(self, section: Section, text: str, location: Location, key: str | None = None) -> str:
        """Resolves arbitrary text as if it were a value of ``section`` written at ``location``."""
        return self._expand(section, text, location, key, _Resolution(), section)

    def _value(self, context: Section, holder: Section, key: str, state: _Resolution) -> str:
        """Resolves ``holder``'s property ``key``; ``context`` is the section variables resolve in."""
        memo_key = (context.name, holder.name, key)
        if memo_key in state.memo:
            return state.memo[memo_key]
        frame = (holder.name, key)
        value = holder._values[key]
        if frame in state.stack:
            # Reported at the value whose text closes the cycle, the one to edit.
            chain = " -> ".join(f"[{name}]{prop}" if name else prop for name, prop in [*state.stack, frame])
            closing_section, closing_key = state.stack[-1]
            raise self._sections[closing_section].error(closing_key, f"reference cycle: {chain}")
        if len(state.stack) >= MAX_DEPTH:
            raise ConfigError(f"references nested deeper than {MAX_DEPTH}", value.location, holder.name or None, key)
        state.stack.append(frame)
        try:
            result = self._expand(context, value.text, value.location, key, state, holder)
        finally:
            state.stack.pop()
        state.memo[memo_key] = result
        return result

    def _expand(
        self, section: Section, text: str, location: Location, key: str | None, state: _Resolution, holder: Section
    ) -> str:
        """Resolves ``text`` read in ``section``; errors name ``holder``, the section the text is written in."""
        where = (location, holder.name or None, key)
        text = self._references(text, where, state)
        text = self._variables(section, text, where, state)
        try:
            return self._expressions(text)
        except ExpressionError as exc:
            raise ConfigError(str(exc), *where) from None

    @staticmethod
    def _check_length(text: str, where: _Where) -> str:
        if len(text) > MAX_VALUE:
            raise ConfigError(f"value longer than {MAX_VALUE} characters after resolution", *where)
        return text

    def _references(self, text: str, where: _Where, state: _Resolution) -> str:
        """Pass 1: ``[Section]Key`` where the bracketed text names an existing section."""
        out: list[str] = []
        start = 0
        scan = 0
        while True:
            opening = text.find("[", scan)
            closing = text.find("]", opening + 1) if opening >= 0 else -1
            if closing < 0:
                break
            target = self._sections.get(text[opening + 1:closing]) if closing > opening + 1 else None
            if target is None:
                scan = opening + 1
                continue
            end = closing + 1
            while end < len(text) and text[end] not in SPACE:
                end += 1
            prop = text[closing + 1:end]
            if prop not in target._values:
                raise ConfigError(f"Property {prop} not found in section [{target.name}]", *where)
            target._referenced = True
            if target._values[prop].placeholder:
                state.placeholders.append(f"[{target.name}]{prop}")
            out.append(text[start:opening])
            out.append(self._value(target, target, prop, state))
            start = scan = end
        out.append(text[start:])
        return self._check_length("".join(out), where)

    def _variables(self, section: Section, text: str, where: _Where, state: _Resolution) -> str:
        """Pass 2: ``${NAME}``: section-local ``$NAME``, then global; unknown names stay verbatim."""
        out: list[str] = []
        start = 0
        while True:
            opening = text.find("${", start)
            closing = text.find("}", opening + 2) if opening >= 0 else -1
            if closing < 0:
                break
            name = text[opening + 2:closing]
            out.append(text[start:opening])
            out.append(self._variable(section, name, state, text[opening:closing + 1]))
            start = closing + 1
        out.append(text[start:])
        return self._check_length("".join(out), where)

    def _variable(self, section: Section, name: str, state: _Resolution, verbatim: str) -> str:
        if name == "SECTION_NAME":
            return section.name
        if name == "PREV_SECTION_NAME" and section.previous is not None:
            return section.previous
        for holder in (section, self.global_section):
            if f"${name}" in holder._values:
                # The variable's text is substituted into the reading section, as N2D2 does textually.
                return self._value(section, holder, f"${name}", state)
        return verbatim

    def _expressions(self, text: str) -> str:
        """Pass 3: ``$(expr)`` with balanced parentheses, evaluated safely."""
        out: list[str] = []
        start = 0
        while True:
            opening = text.find("$(", start)
            if opening < 0:
                break
            depth = 0
            closing = opening + 1
            while closing < len(text):
                depth += {"(": 1, ")": -1}.get(text[closing], 0)
                if depth == 0:
                    break
                closing += 1
            if depth != 0:
                raise ExpressionError(f"unbalanced parentheses in \"{text[opening:]}\"")
            out.append(text[start:opening])
            out.append(evaluate(text[opening + 2:closing]))
            start = closing + 1
        out.append(text[start:])
        return "".join(out)

    # ----------------------------------------------------------------------------------------------
    # Strictness

    def unknown_keys(self) -> list[ConfigError]:
        """One error per unconsumed key of a used section, in file order (global section first)."""
        errors = []
        for section in self._sections.values():
            if section.name and not section._used:
                continue
            for key in section.unconsumed():
                message = f"unknown key '{key}'{did_you_mean(key, sorted(section._declared))}"
                errors.append(section.error(key, message))
        return errors

    def unused_sections(self) -> list[Section]:
        """Sections nothing used, inherited from (by a used section), referenced or instantiated."""
        alive = {name for name, section in self._sections.items() if section._used or section._referenced or section.template}
        pending = list(alive)
        while pending:
            for base in self._sections[pending.pop()].bases:
                if base not in alive:
                    alive.add(base)
                    pending.append(base)
        return [section for section in self.sections() if section.name not in alive]

    def check_strict(self) -> None:
        """Warns about unused sections, then raises the first unknown key (file order) if any.

        Raises:
            ConfigError: ``path:line: [sec] Key: unknown key 'Key' (did you mean 'Other'?)``.
        """
        for section in self.unused_sections():
            warn("unused section", section.location, section.name)
        errors = self.unknown_keys()
        if errors:
            raise errors[0]

    # ----------------------------------------------------------------------------------------------
    # Reproducibility

    def dump_resolved(self) -> str:
        """The whole document with every value resolved and its origin, as INI text.

        Sections come in file order, bases already copied in; a template-instantiating section is
        written as comments (its instantiated sections follow it). Reading nothing consumes anything.
        """
        lines = [f"; {self.path} resolved by qatrun: each value with the place it was written"]
        for section in self._sections.values():
            comment = "; " if section.template else ""
            if section.name:
                lines.append("")
                lines.append(f"{comment}[{section.name}]  ; {section.location}")
            for key, value in section._values.items():
                lines.append(f"{comment}{key}={self._dump_value(section, key)}  ; {self._origin(value)}")
        return "\n".join(lines) + "\n"

    def _dump_value(self, section: Section, key: str) -> str:
        try:
            text = self._resolve(section, key)
        except ConfigError as exc:
            return f"{_quote(section._values[key].text)}  ; unresolved: {exc.message}"
        return _quote(text)

    @staticmethod
    def _origin(value: Value) -> str:
        return f"{value.location} (generated)" if value.injected else str(value.location)


def _quote(text: str) -> str:
    """Quotes a value the lexer would otherwise change (comment characters, edge blanks, quotes)."""
    needs = (
        text != text.strip(SPACE)
        or any(char in text for char in ";#")
        or text.endswith("\\")
        or (len(text) >= 2 and text[0] == '"' and text[-1] == '"')
    )
    return f'"{text}"' if needs else text

