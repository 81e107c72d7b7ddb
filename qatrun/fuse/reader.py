"""Reading quantized modules for fusion: what the integer conversion needs from ``qatrun.quant``.

Fusion reads a quantized layer's weights as integer levels times a unit, and an activation quantizer as
a grid (unit, level range, zero point, rounding). :class:`QuantReader` is that interface;
:class:`DefaultReader` implements it on the quant package's public attributes (``QuantizedWeightLayer.
integer_weights()``, ``quantized_weight()``, the quantizer ``spec``; ``QuantizedActivation.act`` and
``.quantizer``). A network made of other modules (a test's, an imported one's) plugs in its own reader.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from qatrun.errors import RunError
from qatrun.fuse.integerize import ActQuant, WeightQuant, sat_act
from qatrun.quant.minmax import MinMaxActivationQuantizer, minmax_active, minmax_qparams
from qatrun.quant.lsq import LSQActivationQuantizer
from qatrun.quant.modules import QuantizedActivation, QuantizedWeightLayer
from qatrun.quant.sat import SATActivationQuantizer


class QuantReader(Protocol):
    """How fusion sees quantized modules."""

    def weight(self, module: nn.Module, name: str) -> WeightQuant | None:
        """The module's quantized weights, or None if it is not a quantized Conv/Fc."""
        ...

    def activation(self, module: nn.Module, name: str) -> tuple[ActQuant, nn.Module] | None:
        """``(grid, activation function)`` of an activation quantizer module, or None if it is not one."""
        ...


def _unit_per_channel(rescale: Tensor, channels: int) -> Tensor:
    """A 0-dim or broadcastable per-channel rescale -> 0-dim or (C,) float64."""
    rescale = rescale.detach().double()
    return rescale.reshape(()) if rescale.numel() == 1 else rescale.reshape(channels)


class DefaultReader:
    """Reads ``qatrun.quant`` modules (SAT, LSQ and MinMax)."""

    def weight(self, module: nn.Module, name: str) -> WeightQuant | None:
        if not isinstance(module, QuantizedWeightLayer):
            return None
        quantizer = module.weight_quantizer
        spec = quantizer.spec  # type: ignore[attr-defined]
        with torch.no_grad():
            fake = module.quantized_weight().detach().float()
            channels = fake.shape[0]
            if getattr(spec, "apply_quantization", True):
                levels, rescale = module.integer_weights()
                unit = _unit_per_channel(rescale, channels)
            else:
                levels, unit = None, torch.ones((), dtype=torch.float64)
            scaling = 1.0
            if getattr(spec, "apply_scaling", False):
                scaling = float(quantizer.scale(module.latent_weight()))  # type: ignore[operator]
        mask = getattr(module, "mask", None)
        return WeightQuant(
            fake=fake,
            levels=levels,
            unit=unit,
            range=spec.range,
            mode=getattr(spec, "quant_mode", "Default"),
            scaling=scaling,
            method=spec.METHOD,
            mask=None if mask is None else mask.detach().bool(),
        )

    def activation(self, module: nn.Module, name: str) -> tuple[ActQuant, nn.Module] | None:
        if not isinstance(module, QuantizedActivation):
            return None
        q = module.quantizer
        spec = q.spec  # type: ignore[attr-defined]
        if isinstance(q, SATActivationQuantizer):
            return sat_act(float(q.alpha.detach()), spec.range), module.act
        if isinstance(q, LSQActivationQuantizer):
            step = float(q.step.detach())
            lo, hi = spec.bounds
            return ActQuant(step, lo, hi, 0, "half_away", step * spec.range, spec.range), module.act
        if isinstance(q, MinMaxActivationQuantizer):
            if not bool(q.observed) or not minmax_active(int(q.step), spec.delay):
                raise RunError(f"{name}: its MinMax quantizer has not quantized yet (no range observed, or "
                               "still within Delay): the activation has no grid to integerize")
            scale, zero, qmin, qmax = minmax_qparams(q.running_min, q.running_max, spec.range, spec.symmetric)
            unit = float(scale)
            return ActQuant(unit, qmin, qmax, int(zero), "half_even", unit * spec.range, spec.range), module.act
        raise RunError(f"{name}: no integer form for activation quantizer {type(q).__name__}")
