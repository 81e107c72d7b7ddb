"""Weight and bias fillers (``WeightsFiller=``, ``BiasFiller=``): reference/n2d2.md section 2.4.

Design note. N2D2 fills each weight tensor from its own shape in N2D2 order (x=kW, y=kH, z=C_in per group,
b=C_out): fan-in = size / b = kW·kH·C_in/groups and fan-out = size / z = kW·kH·C_out. A bias tensor is
(1, 1, C_out, 1), so its fan-in is C_out and its fan-out 1; an Fc weight is (1, 1, inputs, outputs).

    ConstantFiller  Value
    NormalFiller    N(Mean, StdDev)
    UniformFiller   U(Min, Max)
    XavierFiller    n = fan-in | (fan-in + fan-out)/2 | fan-out          (VarianceNorm)
                    Uniform: Scaling·U(-sqrt(3/n), sqrt(3/n));  Normal: Scaling·N(0, sqrt(1/n))
    HeFiller        Scaling·N(MeanNorm/n, sqrt(2/n))

Without a ``WeightsFiller=``/``BiasFiller=`` key a Conv/Fc/Deconv cell uses N(0, 0.05) for both (the
generators' default), not ``NormalFiller``'s own default N(0, 1).

Samples come from torch's global generator (qatrun.load seeds it), in the order the cells are built.
qatrun draws in float64 and rounds to the module's dtype; N2D2 draws with its own generator, so the
numbers differ but the distributions are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qatrun.ini import REQUIRED, Key

if TYPE_CHECKING:
    from qatrun.ini import Section

ROLES = ("WeightsFiller", "BiasFiller")
VARIANCE_NORMS = ("FanIn", "Average", "FanOut")
DISTRIBUTIONS = ("Uniform", "Normal")

# Each filler parameter once, under a placeholder prefix; ``filler_keys(role)`` renames them.
_PARAMS: dict[str, Key] = {
    key.name: key
    for key in (
        Key("Value", "float", REQUIRED, "ConstantFiller: the value"),
        Key("Mean", "float", 0.0, "NormalFiller: mean"),
        Key("StdDev", "float", 1.0, "NormalFiller: standard deviation"),
        Key("Min", "float", 0.0, "UniformFiller: lower bound"),
        Key("Max", "float", 1.0, "UniformFiller: upper bound"),
        Key("VarianceNorm", "enum", "FanIn", "Xavier/He: n = fan-in, their average, or fan-out", VARIANCE_NORMS),
        Key("Distribution", "enum", "Uniform", "XavierFiller: uniform or normal samples", DISTRIBUTIONS),
        Key("Scaling", "float", 1.0, "Xavier/He: factor applied to every sample"),
        Key("MeanNorm", "float", 0.0, "HeFiller: mean = MeanNorm / n"),
    )
}

FILLERS: dict[str, tuple[str, ...]] = {
    "ConstantFiller": ("Value",),
    "NormalFiller": ("Mean", "StdDev"),
    "UniformFiller": ("Min", "Max"),
    "XavierFiller": ("VarianceNorm", "Distribution", "Scaling"),
    "HeFiller": ("VarianceNorm", "MeanNorm", "Scaling"),
}


def filler_keys(role: str) -> dict[str, Key]:
    """The key table of one role: ``WeightsFiller`` or ``BiasFiller`` and its ``.X`` parameters.

    Args:
        role: one of ``ROLES``.

    Returns:
        key name -> Key, the filler name first.
    """
    keys = {role: Key(role, "enum", "NormalFiller", f"{role}: the distribution of the initial values", tuple(FILLERS))}
    for name, key in _PARAMS.items():
        keys[f"{role}.{name}"] = replace(key, name=f"{role}.{name}")
    return keys


FILLER_KEYS: dict[str, dict[str, Key]] = {role: filler_keys(role) for role in ROLES}


@dataclass(frozen=True)
class Filler:
    """A filler and its parameters.

    Attributes:
        name: one of ``FILLERS``.
        params: parameter name (without prefix) -> value.
    """

    name: str
    params: tuple[tuple[str, object], ...] = ()

    def get(self, name: str) -> object:
        """The value of one parameter (its default when not given)."""
        return dict(self.params).get(name, _PARAMS[name].default)


DEFAULT_FILLER = Filler("NormalFiller", (("Mean", 0.0), ("StdDev", 0.05)))


def variance_n(norm: str, fan_in: int, fan_out: int) -> float:
    """The ``n`` of Xavier and He for a ``VarianceNorm``."""
    if norm == "FanIn":
        return float(fan_in)
    if norm == "FanOut":
        return float(fan_out)
    return (fan_in + fan_out) / 2.0


def sample(filler: Filler, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Tensor:
    """Draws a float64 tensor from a filler with torch's global generator.

    Args:
        filler: the filler and its parameters.
        shape: the tensor shape.
        fan_in: N2D2's fan-in of the tensor (see the module note).
        fan_out: N2D2's fan-out of the tensor.
    """
    out = torch.empty(shape, dtype=torch.float64)
    name, get = filler.name, filler.get
    if name == "ConstantFiller":
        return out.fill_(get("Value"))
    if name == "NormalFiller":
        return out.normal_(get("Mean"), get("StdDev"))
    if name == "UniformFiller":
        return out.uniform_(get("Min"), get("Max"))
    n = variance_n(get("VarianceNorm"), fan_in, fan_out)
    if name == "XavierFiller":
        if get("Distribution") == "Uniform":
            bound = math.sqrt(3.0 / n)
            return out.uniform_(-bound, bound) * get("Scaling")
        return out.normal_(0.0, math.sqrt(1.0 / n)) * get("Scaling")
    if name == "HeFiller":
        return out.normal_(get("MeanNorm") / n, math.sqrt(2.0 / n)) * get("Scaling")
    raise AssertionError(name)


def fill_(tensor: Tensor, filler: Filler, fan_in: int, fan_out: int) -> Tensor:
    """Fills a parameter in place (no autograd) and returns it."""
    with torch.no_grad():
        tensor.copy_(sample(filler, tuple(tensor.shape), fan_in, fan_out))
    return tensor


def read_filler(section: Section, role: str) -> Filler:
    """Reads ``<role>=`` and its ``<role>.X`` parameters from a layer section.

    Args:
        section: the layer section (keys inherited from base sections included).
        role: ``WeightsFiller`` or ``BiasFiller``.

    Returns:
        The filler; ``DEFAULT_FILLER`` when the section names none.

    Raises:
        ConfigError: a parameter that the named filler does not take, or parameters without a filler name.
    """
    keys = FILLER_KEYS[role]
    given = [name for name in section.keys() if name.startswith(role + ".")]
    if not section.has(role):
        if given:
            raise section.error(
                given[0],
                f"{given[0]} needs {role}=<filler> in the section: the default filler, NormalFiller(0, 0.05), "
                "takes no parameters",
            )
        return DEFAULT_FILLER
    name = section.read(keys[role])
    allowed = FILLERS[name]
    for key in given:
        param = key[len(role) + 1 :]
        if param not in allowed:
            raise section.error(key, f"{name} has no parameter {param} (its parameters: {', '.join(allowed)})")
    return Filler(name, tuple((param, section.read(keys[f"{role}.{param}"])) for param in allowed))
