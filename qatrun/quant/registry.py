"""Quantization methods by name: ``QWeight=<name>`` and ``QAct=<name>`` look them up here.

Each method registers a spec class and a quantizer module class per tensor role. A weight quantizer is
built as ``cls(spec, n_out=..., channel_axis=..., kernels=...)``, an activation quantizer as
``cls(spec, kernels=...)``; their instances satisfy :class:`~qatrun.quant.protocols.WeightQuantizer` and
:class:`~qatrun.quant.protocols.ActivationQuantizer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qatrun.errors import ConfigError
from qatrun.quant.kernels import EAGER, Kernels
from qatrun.quant.lsq import LSQActivationQuantizer, LSQActSpec, LSQWeightQuantizer, LSQWeightSpec
from qatrun.quant.minmax import MinMaxActivationQuantizer, MinMaxActSpec, MinMaxWeightQuantizer, MinMaxWeightSpec
from qatrun.quant.protocols import ActivationQuantizer, WeightQuantizer
from qatrun.quant.sat import SATActivationQuantizer, SATActSpec, SATWeightQuantizer, SATWeightSpec
from qatrun.quant.spec import QuantSpec


@dataclass(frozen=True)
class Method:
    """One quantization method: spec and module classes for weights and activations (the module classes'
    instances are ``nn.Module`` s satisfying the protocols)."""

    name: str
    weight_spec: type[QuantSpec]
    weight_quantizer: Callable[..., WeightQuantizer]
    act_spec: type[QuantSpec]
    act_quantizer: Callable[..., ActivationQuantizer]


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds a method to :data:`METHODS` (names are unique)."""
    assert method.name not in METHODS, method.name
    METHODS[method.name] = method
    return method


register(Method("SAT", SATWeightSpec, SATWeightQuantizer, SATActSpec, SATActivationQuantizer))
register(Method("LSQ", LSQWeightSpec, LSQWeightQuantizer, LSQActSpec, LSQActivationQuantizer))
register(Method("MinMax", MinMaxWeightSpec, MinMaxWeightQuantizer, MinMaxActSpec, MinMaxActivationQuantizer))


def method(name: str) -> Method:
    """The method called ``name`` (exact case).

    Raises:
        ConfigError: unknown name; the message lists the valid ones (the caller adds the location).
    """
    found = METHODS.get(name)
    if found is None:
        raise ConfigError(f"unknown quantization method {name!r} (valid: {', '.join(METHODS)})")
    return found


def _method_of(spec: QuantSpec) -> Method:
    for candidate in METHODS.values():
        if type(spec) in (candidate.weight_spec, candidate.act_spec):
            return candidate
    raise AssertionError(f"no method registered for {type(spec).__name__}")


def build_weight_quantizer(
    spec: QuantSpec, *, n_out: int, channel_axis: int, kernels: Kernels = EAGER
) -> WeightQuantizer:
    """The weight quantizer module for ``spec``, for a layer with SAT fan ``n_out``."""
    assert spec.ROLE == "w", spec
    return _method_of(spec).weight_quantizer(spec, n_out=n_out, channel_axis=channel_axis, kernels=kernels)


def build_act_quantizer(spec: QuantSpec, *, kernels: Kernels = EAGER) -> ActivationQuantizer:
    """The activation quantizer module for ``spec``."""
    assert spec.ROLE == "a", spec
    return _method_of(spec).act_quantizer(spec, kernels=kernels)
