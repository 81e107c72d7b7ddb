"""Reading a layer's quantization settings from the INI: ``QWeight*``, ``QAct*`` and their solvers.

Where N2D2 honours each key (reference/n2d2.md §1.4), and what qatrun does with the keys N2D2 ignores:

=========================== ============================== ================================================
key                         layer section                  ConfigSection
=========================== ============================== ================================================
``QWeight=<method>``        yes                            error (N2D2: "Unknown parameter")
``QWeight.X``               yes                            yes, and it wins over the layer section
``QWeightSolver[.X]``       yes (``.X`` needs the type)    error (N2D2: "Unknown parameter")
``QAct``, ``QAct.X``,       only with ``ActivationFunction=`` in the layer section (N2D2 ignores them
``QActSolver[.X]``          silently otherwise; qatrun reports an error); in a ConfigSection: error
=========================== ============================== ================================================

The documentation's spellings are accepted next to the code's: ``QWeight.Solver``/``QAct.Solver`` for
``QWeightSolver``/``QActSolver``, ``ADAM`` for ``Adam``, ``StepOptInitStepSize`` for
``SetOptInitStepSize``; ``QWeight.Mode=Default|Integer`` (documented, absent from N2D2's code) selects
integer computation next to ``QWeight.QuantMode``. An unknown ``QWeight.X`` or ``QAct.X`` is an error
listing the valid keys of that method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qatrun.errors import ConfigError, Location
from qatrun.ini import Key, Params, Section
from qatrun.quant.registry import METHODS, Method, method
from qatrun.quant.spec import QuantSpec

SOLVER_TYPES = ("SGD", "Adam")

QWEIGHT = Key("QWeight", "str", None, "weight quantization method: " + "|".join(METHODS))
QACT = Key("QAct", "str", None, "activation quantization method: " + "|".join(METHODS))
QWEIGHT_SOLVER = Key(
    "QWeightSolver", "enum", "SGD", "solver of the weight quantizer's parameters (LSQ step size)",
    choices=("SGD", "Adam", "ADAM"), aliases=("QWeight.Solver",),
)
QACT_SOLVER = Key(
    "QActSolver", "enum", "SGD", "solver of the activation quantizer's parameter (SAT alpha, LSQ step size)",
    choices=("SGD", "Adam", "ADAM"), aliases=("QAct.Solver",),
)
ACTIVATION_FUNCTION = "ActivationFunction"  # read by the network builder; only tested for presence here


@dataclass(frozen=True)
class SolverPlan:
    """A quantizer solver as plain data, for the train package to turn into an optimizer group.

    Attributes:
        type: ``SGD`` or ``Adam``.
        settings: the ``QWeightSolver.X`` / ``QActSolver.X`` values by X (resolved INI text); empty for
            N2D2's default (SGD, learning rate 0.01, no momentum, no decay).
        locations: where each setting was written, for the train package's errors.
        section: the layer section they come from.
        prefix: ``QWeightSolver.`` or ``QActSolver.``, the key prefix of the settings.
    """

    type: str = "SGD"
    settings: Mapping[str, str] = field(default_factory=dict)
    locations: Mapping[str, Location] = field(default_factory=dict)
    section: str = ""
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.type not in SOLVER_TYPES:
            raise ConfigError(f"solver type must be one of {', '.join(SOLVER_TYPES)}, found {self.type!r}")


@dataclass(frozen=True)
class QuantPlan:
    """How one layer is quantized.

    Attributes:
        section: the INI section (layer) it was read from.
        weight: the weight quantizer settings, or None.
        act: the activation quantizer settings (applied after the layer's activation), or None.
        weight_solver: solver of the weight quantizer's learnable parameters (with ``weight``).
        act_solver: solver of the activation quantizer's learnable parameter (with ``act``).
        location: where the section was written, for errors of later stages.
    """

    section: str
    weight: QuantSpec | None = None
    act: QuantSpec | None = None
    weight_solver: SolverPlan | None = None
    act_solver: SolverPlan | None = None
    location: Location | None = None

    def __post_init__(self) -> None:
        assert self.weight is not None or self.act is not None, "a plan quantizes something"
        assert self.weight is None or self.weight.ROLE == "w", self.weight
        assert self.act is None or self.act.ROLE == "a", self.act
        assert (self.weight is None) == (self.weight_solver is None), "weight solver goes with weight"
        assert (self.act is None) == (self.act_solver is None), "act solver goes with act"


def _prefixed_key(key: Key, prefix: str) -> Key:
    return dataclasses.replace(key, name=prefix + key.name, aliases=tuple(prefix + a for a in key.aliases))


def _keys_with(reader: Section | Params, prefix: str) -> list[str]:
    return [key for key in reader.keys() if key.startswith(prefix)]


def _role(spec_cls: type[QuantSpec]) -> str:
    return "weight" if spec_cls.ROLE == "w" else "activation"


def _read_spec(spec_cls: type[QuantSpec], prefix: str, section: Section, params: Params) -> QuantSpec:
    """Reads the ``prefix``-ed keys of a spec class, the ConfigSection's values winning over the section's.

    Raises:
        ConfigError: an unknown ``prefix`` key (listing the valid ones), a bad value, or invalid settings.
    """
    keys = {name: _prefixed_key(key, prefix) for name, key in spec_cls.KEYS}
    solver_alias = prefix + "Solver"  # QWeight.Solver / QAct.Solver, read with the solver
    valid = {spelling for key in keys.values() for spelling in key.names} | {solver_alias}
    for reader in (section, params):
        reader.declare(*valid)
        for name in _keys_with(reader, prefix):
            if name not in valid:
                listing = ", ".join(key.name[len(prefix):] for key in keys.values())
                message = f"unknown {spec_cls.METHOD} {_role(spec_cls)} quantizer key (valid: {listing})"
                raise reader.error(name, message)
    values: dict[str, Any] = {}
    for name, key in keys.items():
        value = section.read(key)
        if any(params.has(spelling) for spelling in key.names):
            value = params.read(key)
        values[name] = spec_cls.convert(name, value)
    try:
        return spec_cls(**values)
    except ConfigError as exc:
        full = prefix + (exc.key or "")
        holder: Section | Params = params if params.has(full) else section
        raise holder.error(full, exc.message) from None


def _read_solver(key: Key, section: Section) -> SolverPlan:
    """Reads a quantizer solver type and its ``<type key>.X`` settings from the layer section."""
    prefix = key.name + "."
    given = any(section.has(spelling) for spelling in key.names)
    solver_type = section.read(key)
    settings = section.prefixed(prefix)
    if settings and not given:
        first = prefix + next(iter(settings))
        raise section.error(first, f"needs {key.name}=SGD|Adam in the same section (N2D2 ignores the settings without it)")
    return SolverPlan(
        type="Adam" if solver_type == "ADAM" else solver_type,
        settings=settings,
        locations={suffix: section.location_of(prefix + suffix) for suffix in settings},
        section=section.name,
        prefix=prefix,
    )


def _reject_in_config_section(params: Params, names: tuple[str, ...], prefixes: tuple[str, ...]) -> None:
    for name in params.keys():
        if name in names or name.startswith(prefixes):
            raise params.error(
                name, "read from the layer section only, not from a ConfigSection (N2D2: Unknown parameter)"
            )


def _first_present(section: Section, names: tuple[str, ...], prefixes: tuple[str, ...]) -> str | None:
    for name in section.keys():
        if name in names or name.startswith(prefixes):
            return name
    return None


_ACT_NAMES = ("QAct", "QActSolver")
_ACT_PREFIXES = ("QAct.", "QActSolver.")


def _method_for(section: Section, key: Key) -> Method | None:
    name = section.read(key)
    if name is None:
        return None
    try:
        return method(name)
    except ConfigError as exc:
        raise section.error(key.name, exc.message) from None


def plan_for(section: Section, params: Params) -> QuantPlan | None:
    """Reads a layer's quantization settings.

    Args:
        section: the layer section (inherited keys included).
        params: its ConfigSection parameter map (``Document.params(section)``).

    Returns:
        The plan, or None when the layer has neither ``QWeight=`` nor ``QAct=``.

    Raises:
        ConfigError: unknown method or key, a bad value, a key in the wrong place (see the module doc).
    """
    _reject_in_config_section(
        params, ("QWeight", "QWeightSolver", "QWeight.Solver", *_ACT_NAMES), ("QWeightSolver.", *_ACT_PREFIXES)
    )

    weight = weight_solver = None
    weight_method = _method_for(section, QWEIGHT)
    if weight_method is not None:
        weight = _read_spec(weight_method.weight_spec, "QWeight.", section, params)
        weight_solver = _read_solver(QWEIGHT_SOLVER, section)
    else:
        stray = _first_present(section, ("QWeightSolver",), ("QWeight.", "QWeightSolver."))
        if stray is not None:
            raise section.error(stray, "given, but the section has no QWeight=<method>")

    act = act_solver = None
    if not section.has(ACTIVATION_FUNCTION):
        stray = _first_present(section, _ACT_NAMES, _ACT_PREFIXES)
        if stray is not None:
            raise section.error(
                stray, "needs ActivationFunction= in the same section (the activation quantizer runs after the "
                "activation; N2D2 silently ignores it without one)",
            )
    else:
        act_method = _method_for(section, QACT)
        if act_method is not None:
            act = _read_spec(act_method.act_spec, "QAct.", section, params)
            act_solver = _read_solver(QACT_SOLVER, section)
        else:
            stray = _first_present(section, ("QActSolver",), _ACT_PREFIXES)
            if stray is not None:
                raise section.error(stray, "given, but the section has no QAct=<method>")

    if weight is None and act is None:
        return None
    return QuantPlan(section.name, weight, act, weight_solver, act_solver, section.location)
