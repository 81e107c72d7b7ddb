"""N2D2's INI template language (``src/utils/TemplateParser.cpp``), reference/n2d2.md section 1.5.

A section ``[NAME@file.ini.tpl]`` instantiates a template with its own (resolved) properties as
parameters, plus ``SECTION_NAME`` and ``SECTION_FILE_NAME``. The language::

    {{VAR}}                                      the parameter's value
    {% block ARRAY %} {{#}} {{.P1}} {% endblock %}   once per i < ARRAY, with ARRAY[i].P1
    {% for VAR in range([START,]END) %} ... {% endfor %}
    {% if VAR ==|!= VALUE %} / {% if VAR exists|not_exists %} ... {% else %} ... {% endif %}
    {% include FILE %}                           another template, same parameters
    {% set VAR %}value{% endset %}               defines or replaces a parameter

``${...}`` and ``$(...)`` are not template syntax: they stay in the text for the INI parser. Rendering
keeps, for every output line, the template file and line it came from, so values and errors from a
template name it (and, through ``Location.via``, where it was instantiated).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Union

from qatrun.errors import ConfigError, Location
from qatrun.ini.keys import expand_env, parse_int
from qatrun.ini.lexer import read_text

MAX_OUTPUT = 8 * 1024 * 1024
MAX_INCLUDE_DEPTH = 16
MAX_ITERATIONS = 100_000

_TAG = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}")
_FOR = re.compile(r"for\s+(\w+)\s+in\s+range\s*\((.*)\)")
_IF = re.compile(r"if\s+(\S+)\s+(==|!=|exists|not_exists)(?:\s+(.*))?")


@dataclass
class _Text:
    text: str
    location: Location


@dataclass
class _Var:
    name: str
    location: Location


@dataclass
class _Tag:
    """A block construct: ``kind`` is block, for, if, set or include; ``args`` its parsed arguments."""

    kind: str
    args: tuple[str, ...]
    location: Location
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


_Node = Union[_Text, _Var, _Tag]


def render(
    path: str, params: dict[str, str], via: tuple[Location, ...], named_at: Location
) -> tuple[list[tuple[str, Location]], set[str]]:
    """Renders a template file into INI lines, each with the template location it came from.

    Args:
        path: the template file.
        params: the parameters (resolved properties of the instantiating section and the specials).
        via: the instantiation chain, innermost first (becomes ``Location.via`` of every line).
        named_at: where the template was named (for a missing file).

    Returns:
        ``(line, location)`` pairs ready for the INI lexer, and the names of the parameters the
        template looked at (so that the caller can point out parameters it never used).

    Raises:
        ConfigError: unreadable file, malformed tag, undefined variable, non-integer count.
    """
    renderer = _Renderer(dict(params), via)
    renderer.render(renderer.parse_file(path, named_at, 0), 0)
    return _lines(renderer.out), renderer.used


class _Renderer:
    def __init__(self, params: dict[str, str], via: tuple[Location, ...]) -> None:
        self.params = params
        self.via = via
        self.out: list[tuple[str, Location]] = []
        self.size = 0
        self.blocks: list[tuple[str, int]] = []
        self.used: set[str] = set()

    # ----------------------------------------------------------------------------------------------
    # Parsing

    def parse_file(self, path: str, named_at: Location, depth: int) -> list[_Node]:
        text = read_text(path, named_at)
        root: list[_Node] = []
        stack: list[_Tag] = []
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            ending = "\n" if number < len(lines) else ""
            self._parse_line(line + ending, Location(path, number, self.via), root, stack)
        if stack:
            raise ConfigError(f"{{% {stack[-1].kind} %}} is never closed", stack[-1].location)
        return root

    def _parse_line(self, line: str, location: Location, root: list[_Node], stack: list[_Tag]) -> None:
        position = 0
        for match in _TAG.finditer(line):
            self._check_plain(line[position:match.start()], location)
            self._append(_Text(line[position:match.start()], location), root, stack)
            if match.group(1) is not None:
                self._append(_Var(match.group(1).strip(), location), root, stack)
            else:
                self._statement(match.group(2).strip(), location, root, stack)
            position = match.end()
        self._check_plain(line[position:], location)
        self._append(_Text(line[position:], location), root, stack)

    @staticmethod
    def _check_plain(text: str, location: Location) -> None:
        if "{{" in text or "{%" in text:
            raise ConfigError("template tag not closed on its line", location)

    @staticmethod
    def _append(node: _Node, root: list[_Node], stack: list[_Tag]) -> None:
        if isinstance(node, _Text) and not node.text:
            return
        if not stack:
            root.append(node)
        elif stack[-1].kind == "if" and stack[-1].args[-1] == "else":
            stack[-1].orelse.append(node)
        else:
            stack[-1].body.append(node)

    def _statement(self, statement: str, location: Location, root: list[_Node], stack: list[_Tag]) -> None:
        words = statement.split()
        head = words[0] if words else ""
        if head in ("endblock", "endfor", "endif", "endset"):
            opened = stack.pop() if stack else None
            if opened is None or f"end{opened.kind}" != head:
                raise ConfigError(f"{{% {head} %}} without a matching opening tag", location)
            return
        if head == "else":
            if not stack or stack[-1].kind != "if" or stack[-1].args[-1] == "else":
                raise ConfigError("{% else %} outside {% if %}", location)
            stack[-1].args = (*stack[-1].args, "else")
            return
        tag = self._opening(head, statement, words, location)
        self._append(tag, root, stack)
        if tag.kind != "include":
            stack.append(tag)

    @staticmethod
    def _opening(head: str, statement: str, words: list[str], location: Location) -> _Tag:
        if head in ("block", "set") and len(words) == 2:
            return _Tag(head, (words[1],), location)
        if head == "include" and len(words) >= 2:
            return _Tag(head, (statement[len("include"):].strip(),), location)
        if head == "for" and (match := _FOR.fullmatch(statement)):
            return _Tag(head, (match.group(1), match.group(2)), location)
        if head == "if" and (match := _IF.fullmatch(statement)):
            name, op, value = match.group(1), match.group(2), (match.group(3) or "").strip()
            if (op in ("==", "!=")) != bool(value):
                raise ConfigError(f"malformed template condition \"{{% {statement} %}}\"", location)
            return _Tag(head, (name, op, value), location)
        raise ConfigError(f"unknown or malformed template tag \"{{% {statement} %}}\"", location)

    # ----------------------------------------------------------------------------------------------
    # Rendering

    def render(self, nodes: list[_Node], depth: int) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self._emit(node.text, node.location)
            elif isinstance(node, _Var):
                self._emit(self.lookup(node.name, node.location), node.location)
            else:
                getattr(self, f"_render_{node.kind}")(node, depth)

    def _emit(self, text: str, location: Location) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise ConfigError(f"template output larger than {MAX_OUTPUT} characters", location)
        self.out.append((text, location))

    def lookup(self, name: str, location: Location) -> str:
        """The value of ``{{name}}``: a parameter, or ``#``/``.P`` inside a block."""
        if name == "#" or name.startswith("."):
            if not self.blocks:
                raise ConfigError(f"{{{{{name}}}}} outside {{% block %}}", location)
            array, index = self.blocks[-1]
            if name == "#":
                return str(index)
            name = f"{array}[{index}]{name}"
        self.used.add(name)
        if name not in self.params:
            raise ConfigError(f"template variable '{name}' is not defined", location)
        return self.params[name]

    def substitute(self, text: str, location: Location) -> str:
        """Replaces ``{{X}}`` inside a tag's argument."""
        return re.sub(r"\{\{(.*?)\}\}", lambda match: self.lookup(match.group(1).strip(), location), text)

    def _integer(self, text: str, location: Location) -> int:
        text = self.substitute(text, location).strip()
        if text in self.params or text == "#" or text.startswith("."):
            text = self.lookup(text, location).strip()
        try:
            return parse_int(text)
        except ValueError as exc:
            raise ConfigError(f"template: {exc}", location) from None

    def _render_block(self, tag: _Tag, depth: int) -> None:
        array = tag.args[0]
        count = self._integer(array, tag.location)
        self._check_iterations(count, tag.location)
        for index in range(count):
            self.blocks.append((array, index))
            self.render(tag.body, depth)
            self.blocks.pop()

    def _render_for(self, tag: _Tag, depth: int) -> None:
        name, arguments = tag.args
        bounds = [self._integer(argument, tag.location) for argument in arguments.split(",")]
        if len(bounds) not in (1, 2):
            raise ConfigError("template: range() takes [START,]END", tag.location)
        start, end = (0, bounds[0]) if len(bounds) == 1 else bounds
        self._check_iterations(end - start, tag.location)
        saved = self.params.get(name)
        for index in range(start, end):
            self.params[name] = str(index)
            self.render(tag.body, depth)
        if saved is None:
            self.params.pop(name, None)
        else:
            self.params[name] = saved

    @staticmethod
    def _check_iterations(count: int, location: Location) -> None:
        if count > MAX_ITERATIONS:
            raise ConfigError(f"template loop of {count} iterations (at most {MAX_ITERATIONS})", location)

    def _render_if(self, tag: _Tag, depth: int) -> None:
        name, op, value = tag.args[:3]
        if op in ("exists", "not_exists"):
            if name.startswith(".") and self.blocks:
                name = f"{self.blocks[-1][0]}[{self.blocks[-1][1]}]{name}"
            self.used.add(name)
            present = name in self.params
            holds = present if op == "exists" else not present
        else:
            expected = self.substitute(value, tag.location).strip()
            if len(expected) >= 2 and expected[0] == expected[-1] and expected[0] in "\"'":
                expected = expected[1:-1]
            equal = self.lookup(name, tag.location).strip() == expected
            holds = equal if op == "==" else not equal
        self.render(tag.body if holds else tag.orelse, depth)

    def _render_set(self, tag: _Tag, depth: int) -> None:
        outer = self.out
        self.out = []
        self.render(tag.body, depth)
        self.params[tag.args[0]] = "".join(text for text, _ in self.out)
        self.out = outer

    def _render_include(self, tag: _Tag, depth: int) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError(f"templates included deeper than {MAX_INCLUDE_DEPTH}", tag.location)
        written = self.substitute(tag.args[0], tag.location)
        try:
            name = expand_env(written, strict=True)
        except ValueError as exc:
            raise ConfigError(f"include {written}: {exc}", tag.location) from None
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(tag.location.path), name)
        self.render(self.parse_file(os.path.normpath(path), tag.location, depth + 1), depth + 1)


def _lines(fragments: list[tuple[str, Location]]) -> list[tuple[str, Location]]:
    """Joins fragments into lines; each line takes the location of its first non-empty fragment."""
    lines: list[tuple[str, Location]] = []
    buffer: list[str] = []
    start: Location | None = None
    for text, location in fragments:
        for index, part in enumerate(text.split("\n")):
            if index > 0:
                lines.append(("".join(buffer), start or location))
                buffer, start = [], None
            if part and start is None:
                start = location
            buffer.append(part)
    if buffer and start is not None:
        lines.append(("".join(buffer), start))
    return lines
