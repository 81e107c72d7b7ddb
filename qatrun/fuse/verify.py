"""Verification: run the fake-quantized and the integer network on the same batches and compare.

N2D2 only claims that the fused network's results "must be exactly the same"; qatrun measures it on every
fusion, three ways per integer layer:

* end to end (``differing``, ``max_lsb``): each network fed its own previous layers, as in deployment;
  the Rescale's levels against the levels ``v / unit + zero`` of the source module it replaces;
* layer by layer (``local_differing``, ``unexplained``): the integer layer fed the fake network's own input
  levels, so that a difference is this layer's alone. The fake network computes in float32, the integer
  one exactly: a value within float32 rounding of a tie (``k + 1/2``) may round either way in the fake
  network. A local difference is *explained* when the fake network's value before its quantizer ``v``
  lies within ``bound + 1/2 + tol`` of the integer level, ``tol = 2^-16`` times the size of the terms
  summed for that output (``sum |W| |q|``, in levels) plus ``2^-20``: a float32 error budget of about
  500 roundings. Anything else is unexplained.
* the rescale alone (``rescale_lsb``): the Rescale's output against the exact floating rescale of the
  *same* accumulator, which the mode's bound limits (:func:`qatrun.fuse.scaling.error_bound_lsb`).

Allowed (``ok``): in the exact flavour, no unexplained difference and every rescale within its bound
(0 for Floating-point). Predictions and end-to-end differences are reported, not judged: a tie that
rounds differently propagates. The n2d2 flavour reproduces N2D2, which has no bound (its Fc saturation
alone loses up to 128 levels): it is measured and reported, never failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, fx

from qatrun.fuse.graph import FusedLayer, FuseReport
from qatrun.fuse.integerize import Grid
from qatrun.fuse.intnet import Rescale
from qatrun.fuse.scaling import requantize

TIE_RELATIVE = 2.0**-16
TIE_ABSOLUTE = 2.0**-20


@dataclass(frozen=True)
class LayerCheck:
    """The comparison of one integer layer with the fake-quantized module it replaces.

    Attributes:
        name: the Rescale module (named after the source module).
        compared: number of values compared.
        differing: values whose level differs end to end.
        max_lsb: largest end-to-end difference, in output levels (LSB).
        local_differing: values that differ with the layer fed the fake network's inputs.
        unexplained: of those, the ones not within float32 rounding (and the mode's bound) of a tie.
        rescale_lsb: largest local rescale error, in levels (0 for Floating-point).
        bound_lsb: the allowed rescale error (None: no bound, n2d2 flavour).
    """

    name: str
    compared: int
    differing: int
    max_lsb: float
    local_differing: int
    unexplained: int
    rescale_lsb: int
    bound_lsb: int | None


@dataclass(frozen=True)
class VerifyReport:
    """What verification found.

    Attributes:
        flavour: ``exact`` or ``n2d2``.
        rescaling: the rescaling mode.
        samples: number of inputs compared.
        differing_predictions: predictions (argmax over channels) that differ.
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
    def ok(self) -> bool:
        """Within what the flavour and mode allow (always True for the n2d2 flavour, which has no bound)."""
        if self.flavour != "exact":
            return True
        return all(layer.unexplained == 0 and layer.rescale_lsb <= (layer.bound_lsb or 0) for layer in self.layers)

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
        local = sum(layer.local_differing for layer in self.layers)
        unexplained = sum(layer.unexplained for layer in self.layers)
        if self.flavour != "exact":
            allowed = "no bound: N2D2's conversion is not exact"
        else:
            bound = max((layer.bound_lsb or 0 for layer in self.layers), default=0)
            allowed = f"allowed rescale error {bound} LSB"
        return (
            f"Integer network verified against the fake-quantized network on {self.samples} inputs "
            f"({self.flavour} flavour, {self.rescaling} rescaling): {'OK' if self.ok else 'FAILED'}. "
            f"{self.differing_predictions} of {self.predictions} predictions differ; end to end "
            f"{sum(layer.differing for layer in self.layers)} of {sum(layer.compared for layer in self.layers)} "
            f"layer outputs differ, by at most {self.max_lsb:g} LSB; layer by layer {local} differ, "
            f"{unexplained} of them not at a float32 rounding tie of the fake network ({allowed}). "
            f"Largest end-to-end difference per layer, in LSB: {per_layer}."
        )


@dataclass
class _Tally:
    compared: int = 0
    differing: int = 0
    max_lsb: float = 0.0
    local_differing: int = 0
    unexplained: int = 0
    rescale_lsb: int = 0


class _Recorder(fx.Interpreter):
    """Runs the fake network, keeping the output of the nodes verification needs."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = out.detach() if isinstance(out, Tensor) else out
        return out


def _inputs(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _to_levels(value: Tensor, grid: Grid | None, unit: float) -> Tensor:
    """A fake-network value in levels of ``grid`` (rounded off the float error of ``k unit``), or in
    ``unit`` for an unquantized output."""
    if grid is None:
        return value.double() / unit
    levels = value.double() / grid.unit
    return (torch.round(levels) if grid.integer else levels) + grid.zero


def _predictions(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Argmax over channels, of every target output (a network with several targets returns a tuple)."""
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    return torch.cat([(o.argmax(dim=1) if o.dim() > 1 else o).flatten() for o in outputs])


def _rescale_error(rescale: Rescale, acc: Tensor, out: Tensor) -> int:
    params = rescale.params
    if not params.integer or out.numel() == 0:
        return 0
    exact = requantize(acc, replace(params, mode="Floating-point", multiplier=None, shift=None, float32=False))
    return int((exact - out).abs().max())


def _local_check(layer: FusedLayer, int_gm: fx.GraphModule, fake: dict[str, Tensor], tally: _Tally) -> None:
    """The integer layer fed the fake network's input levels, against the fake output."""
    accumulate = int_gm.get_submodule(layer.name)
    rescale = int_gm.get_submodule(layer.rescale)
    assert isinstance(rescale, Rescale)
    levels = [_to_levels(fake[name], grid, grid.unit).to(torch.int64 if grid.integer else torch.float64)
              for name, grid in zip(layer.inputs, layer.input_grids)]
    acc = accumulate(*levels)
    out = rescale(acc)
    tally.rescale_lsb = max(tally.rescale_lsb, _rescale_error(rescale, acc, out))
    expected = _to_levels(fake[layer.source], layer.out, layer.out_unit)
    size = accumulate.magnitude(*levels) * rescale.params.scale.abs().reshape(-1, *([1] * (acc.dim() - 2)))
    tolerance = TIE_RELATIVE * size + TIE_ABSOLUTE
    if layer.out is None:  # unquantized: the fake value itself carries float32 error of that size
        tally.local_differing += int(((out - expected).abs() > tolerance).sum())
        tally.unexplained += int(((out - expected).abs() > tolerance + 0.5).sum())
        return
    differing = out.double() != expected
    tally.local_differing += int(differing.sum())
    if layer.pre is None or not bool(differing.any()):
        tally.unexplained += int(differing.sum())
        return
    before = fake[layer.pre].double()
    if layer.relu:
        before = before.clamp(min=0)
    v = (before / layer.out.unit + layer.out.zero).clamp(layer.out.lo, layer.out.hi)
    slack = 0.5 + (layer.bound_lsb or 0) + tolerance
    tally.unexplained += int((differing & ((out.double() - v).abs() > slack)).sum())


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
    device = next((p.device for p in fake.parameters()), torch.device("cpu"))
    integer.to(device)
    wanted = {name for layer in report.layers for name in (layer.source, layer.pre, *layer.inputs) if name}
    tallies = {layer.rescale: _Tally() for layer in report.layers}
    outputs: dict[str, Tensor] = {}
    int_modules = dict(integer.named_modules())

    def keep(name: str) -> Any:
        return lambda module, args, output: outputs.__setitem__(name, output.detach())

    handles = [int_modules[layer.rescale].register_forward_hook(keep(layer.rescale)) for layer in report.layers]
    samples = differing_predictions = predictions = 0
    try:
        with torch.no_grad():
            for batch in batches:
                x = _inputs(batch).to(device)
                recorder = _Recorder(fake, wanted)
                fake_out, int_out = recorder.run(x), integer(x)
                samples += x.shape[0]
                fake_pred, int_pred = _predictions(fake_out), _predictions(int_out)
                predictions += fake_pred.numel()
                differing_predictions += int((fake_pred != int_pred).sum())
                for layer in report.layers:
                    tally = tallies[layer.rescale]
                    _end_to_end(tally, _to_levels(recorder.values[layer.source], layer.out, layer.out_unit),
                                outputs[layer.rescale], layer.out is None)
                    _local_check(layer, integer, recorder.values, tally)
    finally:
        for handle in handles:
            handle.remove()
    checks = tuple(
        LayerCheck(layer.rescale, t.compared, t.differing, t.max_lsb, t.local_differing, t.unexplained,
                   t.rescale_lsb, layer.bound_lsb)
        for layer, t in ((layer, tallies[layer.rescale]) for layer in report.layers)
    )
    options = report.options
    return VerifyReport(options.flavour, options.rescaling, samples, differing_predictions, predictions, checks)


def _end_to_end(tally: _Tally, fake_levels: Tensor, int_levels: Tensor, unquantized: bool) -> None:
    difference = (fake_levels - int_levels.double()).abs()
    tally.compared += difference.numel()
    # Levels differ by whole LSBs; unquantized outputs (logits) also carry the fake network's float32
    # rounding, relative to their magnitude.
    tolerance = 0.5 + 1e-5 * fake_levels.abs() if unquantized else 0.5
    tally.differing += int((difference >= tolerance).sum())
    if difference.numel():
        tally.max_lsb = max(tally.max_lsb, float(difference.max()))
