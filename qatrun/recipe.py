"""Recipes: INI fragments that quantize a network without editing its INI file (``configs/*.ini``).

A recipe is written in qatrun's INI dialect. Before the first section, what the recipe is for::

    Phases=clamp quantize      ; the phases of its flow, in order: clamp, float, quantize [quantize]
    Epochs=8 12                ; the epochs of each phase (-phase-epochs overrides them)

Each section names the layers it sets with a *selector*, and holds the keys it sets on them::

    [all]                      ; every Conv, Deconv and Fc
    QWeight=SAT
    QWeight.Range=15
    [first]                    ; the first of them, in the order the network computes
    QWeight.Range=255
    [Fc last]                  ; the last Fc
    [ElemWise]                 ; every residual sum
    [name=res*_conv?]          ; by name (fnmatch pattern)
    [Conv without-bn]          ; every Conv whose output goes to no BatchNorm

A selector is terms separated by blanks; a layer must meet them all. A type name (``Conv``, ``Fc``,
``BatchNorm``, ``ElemWise``, ``Pool``...; several are alternatives) keeps the layers of those types, without
one the layers with weights (Conv, Deconv, Fc); ``name=PATTERN`` (several are alternatives) keeps the names
that match; ``with-bn`` / ``without-bn`` keep the layers whose output goes (or not) only to BatchNorm;
``first`` / ``last`` then keep the first or the last of what is left; ``all`` restricts nothing. A selector
that matches no layer is an error, unless it has the term ``optional`` (``[ElemWise optional]``: the residual
sums, in a recipe for networks with or without them); an unknown term is an error.

Where each key goes, so that it reaches the layer as a key written in its INI would, and wins over the INI:

* ``QAct``, ``QAct.X``, ``QActSolver[.X]`` and ``ActivationFunction[.X]`` quantize (or set) the *output* of
  the layer: for a Conv/Deconv/Fc whose output goes only to a BatchNorm, the BatchNorm's; for a cell imported
  from ONNX whose ReLU is a node of its own, the section named after that ReLU's output. A QAct on a cell
  whose section has no ``ActivationFunction`` adds its current function there (``Linear`` where it has none),
  as N2D2 reads ``QAct*`` only next to one.
* the keys a layer reads from its ConfigSection (``QWeight.X``, ``Solvers.X``, ``WeightsSolver.X``...,
  cell parameters such as ``NoBias``) go into a section of the recipe's own, ``[<recipe>:<selector>]``,
  appended to the layer's ``ConfigSection`` (later sections win). ``Solvers.X`` also sets the
  ``WeightsSolver.X`` / ``BiasSolver.X`` / ``ScaleSolver.X`` the INI gives the layer, which would
  otherwise win over it.
* everything else goes into the layer's section. A cell imported from ONNX that reads a default section
  (``[onnx:Conv_def]``) gets a section named after its output, inheriting the default.

In a value, ``[sp]`` names the network's stimuli section whatever the INI calls it (``[sp]``, ``[env]``), so
``$([sp]_EpochSize * ${EPOCHS})`` spans ``$EPOCHS`` epochs of any network. Every key set keeps the recipe's
file and line as its origin (``<ini>.resolved``, the summary); a key the INI also gives is an *override*,
listed as such.

Phases: ``quantize`` applies every key; ``clamp`` leaves out the output keys and sets
``QWeight.ApplyQuantization=0`` next to each ``QWeight`` (SAT's first phase: weights clamped, not yet
quantized); ``float`` leaves out the output keys and every ``QWeight*``.
"""

from __future__ import annotations

import fnmatch
import os
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qatrun.errors import ConfigError, Location, did_you_mean
from qatrun.ini import Document, Section
from qatrun.ini.lexer import SPACE, Header, lex, physical_lines, read_text
from qatrun.net.builder import SOURCES
from qatrun.net.cells import CELL_TYPES
from qatrun.options import PHASES

if TYPE_CHECKING:
    from torch import fx

    from qatrun.net.builder import Cell

WEIGHT_TYPES = ("Conv", "Deconv", "Fc")
POSITIONS = ("first", "last")
BN_TERMS = ("with-bn", "without-bn")
_OUTPUT_NAMES = ("QAct", "QActSolver", "ActivationFunction")
_CONFIG_PREFIXES = ("QWeight.", "Solvers.", "WeightsSolver.", "BiasSolver.", "ScaleSolver.")
_ROLES = ("WeightsSolver", "BiasSolver", "ScaleSolver")
_HEADER_KEYS = ("Phases", "Epochs")


def _is_output_key(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in _OUTPUT_NAMES)


def _is_weight_key(key: str) -> bool:
    return key == "QWeight" or key.startswith(("QWeight.", "QWeightSolver"))


# ------------------------------------------------------------------------------------------ the file


@dataclass(frozen=True)
class Setting:
    """One key of a recipe section, as written."""

    key: str
    text: str
    location: Location


@dataclass(frozen=True)
class Selector:
    """The layers a recipe section names (module note)."""

    text: str
    location: Location
    types: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    position: str | None = None
    batchnorm: bool | None = None
    optional: bool = False

    @classmethod
    def parse(cls, text: str, location: Location) -> Selector:
        types: list[str] = []
        patterns: list[str] = []
        position = batchnorm = None
        optional = False
        terms = text.split()
        if not terms:
            raise ConfigError("empty selector: name the layers (all, first, last, a type, name=PATTERN)", location)
        known = ["all", "optional", *POSITIONS, *BN_TERMS, "name=", *CELL_TYPES]
        for term in terms:
            if term == "all":
                continue
            if term == "optional":
                optional = True
                continue
            if term in POSITIONS:
                if position is not None and position != term:
                    raise ConfigError(f"selector [{text}]: first and last together match nothing", location)
                position = term
            elif term in BN_TERMS:
                batchnorm = term == "with-bn"
            elif term.startswith("name="):
                if not term[5:]:
                    raise ConfigError(f"selector [{text}]: name= needs a pattern", location)
                patterns.append(term[5:])
            elif term in CELL_TYPES:
                types.append(term)
            else:
                raise ConfigError(f"selector [{text}]: unknown term '{term}'{did_you_mean(term, known)} (terms: "
                                  "all, first, last, with-bn, without-bn, name=PATTERN, optional, or a cell type)", location)
        return cls(text, location, tuple(types), tuple(patterns), position, batchnorm, optional)

    def select(self, cells: list[Cell], users: dict[str, list[Cell]]) -> list[Cell]:
        """The cells it names, in network order."""
        types = self.types or WEIGHT_TYPES
        found = [c for c in cells if c.type in types]
        if self.patterns:
            found = [c for c in found if any(fnmatch.fnmatchcase(c.name, p) for p in self.patterns)]
        if self.batchnorm is not None:
            found = [c for c in found if _feeds_batchnorm(c, users) == self.batchnorm]
        if self.position == "first":
            found = found[:1]
        elif self.position == "last":
            found = found[-1:]
        return found


@dataclass(frozen=True)
class Rule:
    """One section of a recipe: a selector and the keys it sets."""

    selector: Selector
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class Recipe:
    """A recipe file, read and checked (its selectors are matched when it is applied).

    Attributes:
        path: the file.
        rules: its sections, in file order.
        phases: the phases of its flow (:data:`PHASES`), in order; () when it names none (a recipe of
            solver settings, say): it applies in every phase.
        epochs: the epochs of each phase, or () when the recipe gives none.
        about: its first comment lines (what it is for, what it measured).
    """

    path: str
    rules: tuple[Rule, ...]
    phases: tuple[str, ...] = ()
    epochs: tuple[int, ...] = ()
    about: str = ""

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def read(path: str | os.PathLike[str]) -> Recipe:
    """Reads a recipe file.

    Raises:
        ConfigError: unreadable file, malformed text, unknown header key or selector term, a phase list or
            epochs that do not fit.
    """
    path = os.fspath(path)
    text = read_text(path)
    rules: list[Rule] = []
    header: dict[str, Setting] = {}
    selector: Selector | None = None
    settings: list[Setting] = []
    for item in lex(physical_lines(text, path)):
        if isinstance(item, Header):
            if selector is not None:
                rules.append(Rule(selector, tuple(settings)))
            if item.bases:
                raise ConfigError(f"[{item.name}]: a recipe section has no base sections ({' '.join(item.bases)})",
                                  item.location)
            selector, settings = Selector.parse(item.name, item.location), []
            if any(r.selector.text == item.name for r in rules):
                raise ConfigError(f"[{item.name}] appears twice in the recipe", item.location)
        elif selector is None:
            if item.name not in _HEADER_KEYS:
                raise ConfigError(f"{item.name}: a recipe's first lines take {', '.join(_HEADER_KEYS)}; the keys it "
                                  "sets go in sections named by selectors ([all], [first]...)"
                                  f"{did_you_mean(item.name, _HEADER_KEYS)}", item.location)
            header[item.name] = Setting(item.name, item.value, item.location)
        else:
            if any(s.key == item.name for s in settings):
                raise ConfigError(f"[{selector.text}] {item.name} is set twice", item.location)
            if item.name in ("Input", "Type", "ConfigSection") or item.name.startswith("$"):
                raise ConfigError(f"[{selector.text}] {item.name}: a recipe sets quantizers, solvers and cell "
                                  "parameters; it does not change the network's structure or variables",
                                  item.location)
            settings.append(Setting(item.name, item.value, item.location))
    if selector is not None:
        rules.append(Rule(selector, tuple(settings)))
    phases, epochs = _read_header(header, path)
    return Recipe(path, tuple(rules), phases, epochs, _about(text))


def _read_header(header: dict[str, Setting], path: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    phases: tuple[str, ...] = ()
    if "Phases" in header:
        s = header["Phases"]
        phases = tuple(s.text.split())
        for phase in phases:
            if phase not in PHASES:
                raise ConfigError(f"Phases: unknown phase '{phase}'{did_you_mean(phase, PHASES)} (phases: "
                                  f"{', '.join(PHASES)})", s.location)
        if not phases or phases[-1] != "quantize" or len(set(phases)) != len(phases):
            raise ConfigError(f"Phases: expected distinct phases ending with quantize, got '{s.text}'", s.location)
    epochs: tuple[int, ...] = ()
    if "Epochs" in header:
        s = header["Epochs"]
        try:
            epochs = tuple(int(word) for word in s.text.split())
        except ValueError:
            raise ConfigError(f"Epochs: expected integers, got '{s.text}'", s.location) from None
        if len(epochs) != len(phases or ("quantize",)) or min(epochs) < 1:
            raise ConfigError(f"Epochs: expected {len(phases)} positive integers (one per phase: "
                              f"{' '.join(phases or ('quantize',))}), got '{s.text}'", s.location)
    return phases, epochs


def _about(text: str) -> str:
    lines = []
    for line in text.splitlines():
        stripped = line.strip(SPACE)
        if not stripped.startswith((";", "#")):
            break
        lines.append(stripped.lstrip(";#").strip(SPACE))
    return "\n".join(lines).strip()


# ------------------------------------------------------------------------------------------ applying


@dataclass(frozen=True)
class Assignment:
    """One key a recipe set on one layer.

    Attributes:
        layer: the layer selected.
        section: the section the key went into.
        key: the key.
        text: the value as written in the recipe.
        location: the recipe line.
        replaced: where the INI gave the key before, or None.
        generated: the key was added for another (``ActivationFunction`` next to ``QAct``).
    """

    layer: str
    section: str
    key: str
    text: str
    location: Location
    replaced: Location | None = None
    generated: bool = False


@dataclass
class Applied:
    """What a recipe set on a network, for the summary and the run record.

    Attributes:
        recipe: the recipe.
        phase: the phase applied.
        assignments: every key set, in order.
        matches: each rule with the layers its selector chose.
    """

    recipe: Recipe
    phase: str
    assignments: list[Assignment] = field(default_factory=list)
    matches: list[tuple[Rule, tuple[str, ...]]] = field(default_factory=list)

    @property
    def overrides(self) -> list[Assignment]:
        """The keys the INI gave too, once per layer and key."""
        seen: dict[tuple[str, str], Assignment] = {}
        for a in self.assignments:
            if a.replaced is not None:
                seen[(a.layer, a.key)] = a
        return list(seen.values())

    def describe(self) -> str:
        """Each rule with the layers it chose and every value it set, then the overrides of INI values."""
        layers = {a.layer for a in self.assignments}
        lines = [f"Recipe {self.recipe.path}, phase {self.phase}: {len(self.assignments)} keys on {len(layers)} "
                 "layers"]
        for rule, names in self.matches:
            lines_here = {s.location for s in rule.settings}
            set_here = [a for a in self.assignments if a.location in lines_here]
            if not set_here:
                continue
            lines += textwrap.wrap(f"[{rule.selector.text}] (line {rule.selector.location.line}): {', '.join(names)}",
                                   110, initial_indent="  ", subsequent_indent="      ")
            shown = dict.fromkeys(f"{a.key}={a.text}" for a in set_here if not a.generated)
            outputs = dict.fromkeys(a.layer for a in set_here if _is_output_key(a.key))
            added = dict.fromkeys(f"{a.key}={a.text}" for a in set_here if a.generated)
            lines += textwrap.wrap(", ".join(shown), 110, initial_indent="      ", subsequent_indent="      ")
            if outputs and list(outputs) != list(names):
                lines += textwrap.wrap("outputs at: " + ", ".join(outputs), 110, initial_indent="      ",
                                       subsequent_indent="        ")
            if added:
                lines.append("      added with them: " + ", ".join(added))
        by_value: dict[tuple[str, str, Location, Location | None], list[str]] = {}
        for a in self.overrides:
            by_value.setdefault((a.key, a.text, a.location, a.replaced), []).append(a.layer)
        for (key, text, location, replaced), where in by_value.items():
            lines += textwrap.wrap(f"override: {key}={text} ({location}) replaces the INI's value ({replaced}) on "
                                   + ", ".join(where), 110, initial_indent="  ", subsequent_indent="      ")
        return "\n".join(lines)


def apply(recipe: Recipe, doc: Document, gm: fx.GraphModule, phase: str = "quantize",
          earlier: tuple[Recipe, ...] = ()) -> Applied:
    """Sets the recipe's keys on the layers of ``gm`` (built from ``doc``) in ``doc``; rebuild ``gm`` after.

    Args:
        earlier: the recipes applied before this one (what they set is no INI value it overrides).

    Raises:
        ConfigError: at the recipe line: a selector matching no layer, a weight key on a layer without weights.
    """
    if phase not in PHASES:
        raise ConfigError(f"no recipe phase '{phase}'{did_you_mean(phase, PHASES)} (phases: {', '.join(PHASES)})")
    if recipe.phases and phase not in recipe.phases:
        raise ConfigError(f"{recipe.path}: no phase '{phase}' (its phases: {' '.join(recipe.phases)})")
    cells = list(gm.cells.values())  # type: ignore[union-attr]
    users: dict[str, list[Cell]] = {}
    for cell in cells:
        for name in cell.inputs:
            users.setdefault(name, []).append(cell)
    applier = _Applier(recipe, doc, phase, users, {r.path for r in earlier})
    for rule in recipe.rules:
        chosen = rule.selector.select(cells, users)
        if not chosen and not rule.selector.optional:
            types = ", ".join(sorted({c.type for c in cells}))
            hint = ""
            if rule.selector.patterns and not rule.selector.types:
                named = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in rule.selector.patterns)]
                if named:
                    kinds = " ".join(sorted({c.type for c in named}))
                    hint = (f"; without a type a selector keeps the layers with weights, and its names are "
                            f"{', '.join(c.name for c in named[:4])}{'...' if len(named) > 4 else ''}: write "
                            f"[{kinds} {rule.selector.text}]")
            raise ConfigError(f"selector [{rule.selector.text}] matches no layer of {doc.path} (its layer types: "
                              f"{types}){hint}", rule.selector.location)
        applier.applied.matches.append((rule, tuple(c.name for c in chosen)))
        for setting in rule.settings:
            for cell in chosen:
                applier.set(rule, cell, setting)
    return applier.applied


def _feeds_batchnorm(cell: Cell, users: dict[str, list[Cell]]) -> bool:
    following = users.get(cell.name, [])
    return bool(following) and all(u.type == "BatchNorm" for u in following)


class _Applier:
    def __init__(self, recipe: Recipe, doc: Document, phase: str, users: dict[str, list[Cell]],
                 earlier: set[str]) -> None:
        self.recipe, self.doc, self.phase, self.users = recipe, doc, phase, users
        self.paths = {recipe.path, *earlier}
        self.applied = Applied(recipe, phase)
        self.before: dict[tuple[str, str], Location | None] = {}  # (section, key) -> the INI's location
        self.stimuli = next((name for name in SOURCES if doc.get(name) is not None), "sp")

    def set(self, rule: Rule, cell: Cell, setting: Setting) -> None:
        key = setting.key
        if self.phase != "quantize" and _is_output_key(key):
            return
        if self.phase == "float" and _is_weight_key(key):
            return
        if self.phase == "clamp" and key == "QWeight.ApplyQuantization":
            return  # clamped, never quantized: set to 0 next to QWeight
        if _is_weight_key(key) and cell.type not in WEIGHT_TYPES:
            raise ConfigError(f"[{rule.selector.text}] {key}: {cell.name} is a {cell.type} cell, which has no "
                              "weights to quantize", setting.location)
        text = self._text(setting.text)
        if _is_output_key(key):
            target = self._output_cell(cell)
            section = self._output_section(target, setting)
            if key.startswith("QAct") and not section.has("ActivationFunction"):
                function = target.activation or "Linear"
                self._define(section, target.name, "ActivationFunction", function, setting.location, generated=True)
            self._define(section, target.name, key, text, setting.location)
            return
        section = self._layer_section(cell)
        if key.startswith(_CONFIG_PREFIXES) or key in _params_of(cell):
            config = self._config_section(rule, cell, section, setting.location)
            self._define(config, cell.name, key, text, setting.location, ini_section=section)
            if key.startswith("Solvers."):
                params = self.doc.params(section)
                for role in _ROLES:
                    role_key = role + key[len("Solvers"):]
                    if params.has(role_key) and not (config.has(role_key) and config._values[role_key].text == text):
                        self._define(config, cell.name, role_key, text, setting.location, ini_section=section,
                                     generated=True)
        else:
            self._define(section, cell.name, key, text, setting.location)
        if key == "QWeight" and self.phase == "clamp":
            config = self._config_section(rule, cell, section, setting.location)
            self._define(config, cell.name, "QWeight.ApplyQuantization", "0", setting.location, ini_section=section,
                         generated=True)

    def _text(self, text: str) -> str:
        return text.replace("[sp]", f"[{self.stimuli}]") if self.stimuli != "sp" else text

    def _output_cell(self, cell: Cell) -> Cell:
        """The cell whose output a Conv/Deconv/Fc's output quantizer quantizes: the BatchNorm after it."""
        if cell.type in WEIGHT_TYPES and _feeds_batchnorm(cell, self.users) and len(self.users[cell.name]) == 1:
            return self.users[cell.name][0]
        return cell

    def _output_section(self, cell: Cell, setting: Setting) -> Section:
        if cell.act_output is not None:  # an imported ReLU node merged into the cell
            return self._named_section(cell.act_output, None, setting.location)
        return self._layer_section(cell)

    def _layer_section(self, cell: Cell) -> Section:
        if cell.section is not None and cell.section.name == cell.name:
            return cell.section
        return self._named_section(cell.name, cell.section, cell.section.location if cell.section else None)

    def _named_section(self, name: str, default: Section | None, location: Location | None) -> Section:
        section = self.doc.get(name)
        if section is None:
            where = Location(self.recipe.path)
            section = Section(self.doc, name, location or where, (default.name,) if default else ())
            if default is not None:
                section.inherit(default)
            self.doc.add(section)
        return section

    def _config_section(self, rule: Rule, cell: Cell, section: Section, location: Location) -> Section:
        name = f"{self.recipe.name}:{rule.selector.text}"
        config = self.doc.get(name)
        if config is None:
            config = Section(self.doc, name, rule.selector.location)
            self.doc.add(config)
        listed = [n.strip(SPACE) for n in section.raw("ConfigSection", "").split(",") if n.strip(SPACE)]
        if name not in listed:
            section.define("ConfigSection", ",".join([*listed, name]), location, warn_override=False)
        return config

    def _define(self, section: Section, layer: str, key: str, text: str, location: Location,
                ini_section: Section | None = None, generated: bool = False) -> None:
        holder = ini_section or section
        slot = (holder.name, key)
        if slot not in self.before:
            self.before[slot] = self._ini_location(holder, key)
        section.define(key, text, location, warn_override=False)
        self.applied.assignments.append(Assignment(layer, section.name, key, text, location, self.before[slot],
                                                   generated))

    def _ini_location(self, section: Section, key: str) -> Location | None:
        """Where the INI itself gives ``key`` to the layer of ``section`` (its section or its ConfigSection)."""
        found = [section._find(key)]
        if "ConfigSection" in section._values:
            found += [s._find(key) for s in self.doc.params(section).sources]
        for item in found:
            if item is not None and item[1].location.path not in self.paths:
                return item[1].location
        return None


def _params_of(cell: Cell) -> set[str]:
    cell_type = CELL_TYPES.get(cell.type)
    return {name for key in cell_type.params for name in key.names} if cell_type is not None else set()
