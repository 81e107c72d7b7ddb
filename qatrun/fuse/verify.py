"""Verification: run the fake-quantized and the integer network on the same batches and compare.

N2D2 only claims that the fused network's results "must be exactly the same"; qatrun measures it on every
fusion. For each integer layer, the levels of its Rescale are compared with the output of the source
module it replaces (an activation quantizer, whose value ``v`` stands for level ``v / unit + zero``):

* ``differing`` / ``max_lsb``: end to end, each network fed its own previous layers (differences
  propagate, as they would in deployment);
* ``rescale_lsb``: locally, the Rescale's output against the exact floating rescale of the *same*
  accumulator (what the rescaling mode itself costs); this is what the documented bound limits.

Allowed: the exact flavour with Floating-point rescaling must show 0 differences everywhere; with an
integer rescaling mode every layer's local error must stay within its bound
(:func:`qatrun.fuse.scaling.error_bound_lsb`, at most :func:`~qatrun.fuse.scaling.mode_bound_lsb`). The
n2d2 flavour reproduces N2D2, which has no bound (its Fc saturation alone loses up to 128 levels): it is
measured and reported, never failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, fx, nn

from qatrun.fuse.graph import FusedLayer, FuseReport
from qatrun.fuse.intnet import Rescale
from qatrun.fuse.scaling import requantize


@dataclass(frozen=True)
class LayerCheck:
    """The comparison of one integer layer with the fake-quantized module it replaces.

    Attributes:
        name: the Rescale module (named after the source module).
        compared: number of values compared.
        differing: values whose level differs by half a level or more.
        max_lsb: largest end-to-end difference, in output levels (LSB).
        rescale_lsb: largest local rescale error, in levels (0 for Floating-point).
        bound_lsb: the allowed local error (None: no bound, n2d2 flavour).
    """

    name: str
    compared: int
    differing: int
    max_lsb: float
    rescale_lsb: int
    bound_lsb: int | None


@dataclass(frozen=True)
class VerifyReport:
    """What verification found.

    Attributes:
        flavour: ``exact`` or ``n2d2``.
        rescaling: the rescaling mode.
        samples: number of inputs compared.
        differing_predictions: samples (or output positions) whose argmax differs.
        predictions: number of predictions compared.
        layers: per integer layer, in graph order.
    """

    flavour: str
    rescaling: str
    samples: int
    differing_predictions: int
    predictions: int
    layers: tuple[LayerCheck, ...]

    @property
    def exact_required(self) -> bool:
        """True when no difference at all is allowed (exact flavour, Floating-point)."""
        return self.flavour == "exact" and all(layer.bound_lsb == 0 for layer in self.layers)

    @property
    def ok(self) -> bool:
        """Within what the flavour and mode allow (always True for the n2d2 flavour, which has no bound)."""
        if self.flavour != "exact":
            return True
        if self.exact_required:
            return self.differing_predictions == 0 and all(layer.differing == 0 for layer in self.layers)
        return all(layer.rescale_lsb <= (layer.bound_lsb or 0) for layer in self.layers)

    @property
    def max_lsb(self) -> float:
        """Largest end-to-end difference over all layers."""
        return max((layer.max_lsb for layer in self.layers), default=0.0)

    def __str__(self) -> str:
        per_layer = ", ".join(
            f"{layer.name} {layer.max_lsb:g}" + (f" (rescale {layer.rescale_lsb}/{layer.bound_lsb})"
                                                 if layer.bound_lsb else "")
            for layer in self.layers
        )
        if self.flavour != "exact":
            allowed = "no bound (N2D2's conversion is not exact)"
        elif self.exact_required:
            allowed = "allowed: none"
        else:
            allowed = f"allowed local rescale error: {max(layer.bound_lsb or 0 for layer in self.layers)} LSB"
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"Integer network verified against the fake-quantized network on {self.samples} inputs "
            f"({self.flavour} flavour, {self.rescaling} rescaling): {verdict}. "
            f"{self.differing_predictions} of {self.predictions} predictions differ; "
            f"{sum(layer.differing for layer in self.layers)} of {sum(layer.compared for layer in self.layers)} "
            f"layer outputs differ, by at most {self.max_lsb:g} LSB ({allowed}). "
            f"Largest difference per layer, in LSB: {per_layer}."
        )


@dataclass
class _Tally:
    compared: int = 0
    differing: int = 0
    max_lsb: float = 0.0
    rescale_lsb: int = 0


def _inputs(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _levels(value: Tensor, layer: FusedLayer) -> Tensor:
    """The fake-quantized output in the integer layer's units: its levels (rounded off the float error of
    ``k unit``, zero point included), or the unquantized value in output units."""
    if layer.out is None:
        return value.double() / layer.out_unit
    return torch.round(value.double() / layer.out_unit) + layer.out.zero


def _local_error(rescale: Rescale, acc: Tensor, out: Tensor) -> int:
    params = rescale.params
    if not params.integer:
        return 0
    exact = requantize(acc, replace(params, mode="Floating-point", multiplier=None, shift=None, float32=False))
    return int((exact - out).abs().max()) if out.numel() else 0


def _predictions(output: Tensor) -> Tensor:
    return output.argmax(dim=1) if output.dim() > 1 else output


def verify(
    fake: fx.GraphModule, integer: fx.GraphModule, report: FuseReport, batches: Iterable[Any]
) -> VerifyReport:
    """Runs both networks on ``batches`` (tensors, or ``(inputs, labels)`` pairs) and compares them.

    Args:
        fake: the fake-quantized network (evaluation mode is set here).
        integer: its integer form from :func:`qatrun.fuse.integerize`.
        report: the fusion report (which module replaces which).
        batches: input batches in [0, 1] as the fake network takes them.
    """
    fake.eval()
    integer.eval()
    fake_modules, int_modules = dict(fake.named_modules()), dict(integer.named_modules())
    device = next((p.device for p in fake.parameters()), torch.device("cpu"))
    integer.to(device)
    tallies = {layer.rescale: _Tally() for layer in report.layers}
    seen: dict[str, Tensor] = {}
    local: dict[str, int] = {}

    def keep_fake(name: str) -> Any:
        return lambda module, args, output: seen.__setitem__(name, output.detach())

    def keep_int(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            seen["int:" + name] = output.detach()
            local[name] = max(local.get(name, 0), _local_error(module, args[0], output))  # type: ignore[arg-type]
        return hook

    handles = [fake_modules[layer.source].register_forward_hook(keep_fake(layer.rescale)) for layer in report.layers]
    handles += [int_modules[layer.rescale].register_forward_hook(keep_int(layer.rescale)) for layer in report.layers]
    samples = differing_predictions = predictions = 0
    try:
        with torch.no_grad():
            for batch in batches:
                x = _inputs(batch).to(device)
                fake_out, int_out = fake(x), integer(x)
                samples += x.shape[0]
                fake_pred, int_pred = _predictions(fake_out), _predictions(int_out)
                predictions += fake_pred.numel()
                differing_predictions += int((fake_pred != int_pred).sum())
                for layer in report.layers:
                    _tally(tallies[layer.rescale], _levels(seen[layer.rescale], layer), seen["int:" + layer.rescale])
    finally:
        for handle in handles:
            handle.remove()
    checks = tuple(
        LayerCheck(layer.rescale, t.compared, t.differing, t.max_lsb, local.get(layer.rescale, 0), layer.bound_lsb)
        for layer, t in ((layer, tallies[layer.rescale]) for layer in report.layers)
    )
    options = report.options
    return VerifyReport(options.flavour, options.rescaling, samples, differing_predictions, predictions, checks)


def _tally(tally: _Tally, fake_levels: Tensor, int_levels: Tensor) -> None:
    difference = (fake_levels - int_levels.double()).abs()
    tally.compared += difference.numel()
    # Levels differ by whole LSBs; unquantized outputs (logits) also carry the fake network's float32
    # rounding, relative to their magnitude.
    tolerance = 0.5 + 1e-5 * fake_levels.abs()
    tally.differing += int((difference >= tolerance).sum())
    if difference.numel():
        tally.max_lsb = max(tally.max_lsb, float(difference.max()))
