"""Verification: run the fake-quantized and the integer network on the same batches and compare.

N2D2 only claims that the fused network's results "must be exactly the same"; qatrun measures it on every
fusion.

The reference. What training defines is a quantized function: integer weight levels times their spacing
(SAT: ``Wq = n / (D S)``), BatchNorm parameters, clip values, and the rounding rule of each activation
quantizer (round half away from zero for SAT and LSQ), all of them numbers; the float32 fake-quantized
network is one approximate evaluation of it. At 600k rounded values per ResNet-20 image, float32 puts some
within its rounding error (about 1e-6 of a level) of a tie ``k + 1/2``, where it may round either way: 13
of 932 ONNX ResNet-20 predictions changed that way, none of them because of the integer network. So the
reference is the same network evaluated in float64 on the pixels ``p / 255`` the integer network reads
(not their float32 roundings), each quantized layer computing with its levels times their spacing
(``J u_w``; checked against the float32 fake weights, so a misread level still fails), each other module
(BatchNorm, activation quantizers, sums, pools) running its own code in float64. Its error is
some 1e-13 of a level, so a level on which it and the integer network disagree is either within float64
error of a tie, or a fault. Where a value lies that close to a tie, neither float evaluation decides: the
value is computed in exact arithmetic from the layer's :class:`~qatrun.fuse.graph.Definition` and the
input levels (rationals, the BatchNorm's square root compared by squaring; the dot product from the
definition's levels, never from the integer network's accumulator, which may be what is wrong), and the
level is the one the quantizer's rounding rule gives, exact ties included (half away from zero for SAT).
That level is the verdict for both networks, and the reference goes on from it. Float64 alone is not
enough there: a Sum whose clip is twice its inputs' makes every odd ``q_a + q_b`` an exact tie, and float64
rounds about half of them down (tests/fuse/test_fuse_verify_ties.py).

Measured on the ONNX ResNet-20 example (932 CIFAR-10 test images): 14 predictions differ from the float32
network, 0 from this reference, and 0 of its 267 million layer outputs.

Three comparisons per integer layer, against the float64 reference:

* end to end (``differing``, ``max_lsb``): each network fed its own previous layers, as in deployment;
  the Rescale's levels against the levels ``v / unit + zero`` of the source module it replaces;
* layer by layer (``local_differing``, ``ties``, ``unexplained``): the integer layer fed the reference's
  input levels, so that a difference is this layer's alone. Every value within ``2^-32`` (times the size
  of the terms summed, plus one) of a tie, and every differing value, is decided in exact arithmetic when
  the layer has a definition and Floating-point rescaling (``ties``); an integer level off the exact one
  is *unexplained* (``reference_misrounded`` counts the reference's own misses). Without a definition, or
  with an approximate rescaling mode, a difference is explained when the reference value lies within
  ``bound + 1/2 + tol`` of the integer level;
* the rescale alone (``rescale_lsb``): the Rescale's output against the exact floating rescale of the
  *same* accumulator, which the mode's bound limits (:func:`qatrun.fuse.scaling.error_bound_lsb`).

The float32 fake network, the one that trained, is compared as well and reported beside (``f32_*``):
predictions, end-to-end levels, and layer by layer, where a difference at a float32 rounding tie is one
whose float32 value lies within ``bound + 1/2 + tol32`` of the integer level, ``tol32 = 2^-16`` times the
size of the terms plus ``2^-20`` (a float32 error budget of about 500 roundings). It is not judged: the
float64 reference decides, and float32's own error is no fault of the integer network.

Allowed (``ok``): in the exact flavour, the reference weights equal the fake ones up to float32 rounding,
no unexplained difference, and every rescale within its bound (0 for Floating-point). A broken integer
network (a bias one unit off, a wrong scale) differs from the exact levels away from any tie and fails.
Predictions and end-to-end differences are reported, not judged (a fault is already counted layer by
layer; a float32 tie resolved differently propagates, and so would an approximate rescaling mode's error).
The n2d2 flavour reproduces N2D2, which has no bound (its Fc saturation alone loses up to 128 levels): it
is measured and reported, never failed.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from qatrun.fuse.graph import Definition, FusedLayer, FuseReport, sat_spacing
from qatrun.fuse.integerize import INPUT_RANGE, Grid
from qatrun.fuse.intnet import Rescale
from qatrun.fuse.scaling import requantize

TIE_RELATIVE = 2.0**-16  # float32 fake network: error budget relative to the size of the terms summed
TIE_ABSOLUTE = 2.0**-20
REFERENCE_RELATIVE = 2.0**-32  # float64 reference: far above its error, far below a level
WEIGHT_TOLERANCE = 2.0**-20  # |J u_w - Wq| relative to max |Wq|: float32 rounding of Wq, not a level


@dataclass(frozen=True)
class LayerCheck:
    """The comparison of one integer layer with the fake-quantized module it replaces.

    Attributes:
        name: the Rescale module (named after the source module).
        compared: number of values compared.
        differing: values whose level differs end to end from the float64 reference.
        max_lsb: largest end-to-end difference from the float64 reference, in output levels (LSB).
        local_differing: values that differ from the reference with the layer fed the reference's inputs.
        ties: values decided in exact arithmetic (within float64 error of a tie, or differing).
        reference_misrounded: of those, the ones the float64 reference rounded off the exact level.
        unexplained: integer levels off the exact level (or beyond the mode's bound): faults.
        rescale_lsb: largest local rescale error, in levels (0 for Floating-point).
        bound_lsb: the allowed rescale error (None: no bound, n2d2 flavour).
        f32_differing: values whose level differs end to end from the float32 fake network.
        f32_max_lsb: largest end-to-end difference from the float32 fake network.
        f32_local_differing: values that differ with the layer fed the float32 network's inputs.
        f32_off_tie: of those, the ones not within float32 rounding (and the bound) of a tie (not judged).
    """

    name: str
    compared: int
    differing: int
    max_lsb: float
    local_differing: int
    ties: int
    reference_misrounded: int
    unexplained: int
    rescale_lsb: int
    bound_lsb: int | None
    f32_differing: int = 0
    f32_max_lsb: float = 0.0
    f32_local_differing: int = 0
    f32_off_tie: int = 0


@dataclass(frozen=True)
class VerifyReport:
    """What verification found.

    Attributes:
        flavour: ``exact`` or ``n2d2``.
        rescaling: the rescaling mode.
        samples: number of inputs compared.
        differing_predictions: predictions (argmax over channels) that differ from the float64 reference.
        predictions: number of predictions compared.
        layers: per integer layer, in graph order.
        f32_differing_predictions: predictions that differ from the float32 fake network.
        weight_mismatch: quantized layers whose levels times spacing are not the fake weights.
    """

    flavour: str
    rescaling: str
    samples: int
    differing_predictions: int
    predictions: int
    layers: tuple[LayerCheck, ...]
    f32_differing_predictions: int = 0
    weight_mismatch: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Within what the flavour and mode allow (always True for the n2d2 flavour, which has no bound)."""
        if self.flavour != "exact":
            return True
        return not self.weight_mismatch and all(
            layer.unexplained == 0 and layer.rescale_lsb <= (layer.bound_lsb or 0) for layer in self.layers
        )

    @property
    def max_lsb(self) -> float:
        """Largest end-to-end difference from the float64 reference over all layers."""
        return max((layer.max_lsb for layer in self.layers), default=0.0)

    def __str__(self) -> str:
        layers = self.layers
        total = sum(layer.compared for layer in layers)
        per_layer = ", ".join(
            f"{layer.name} {layer.max_lsb:g}/{layer.f32_max_lsb:g}"
            + (f" (rescale {layer.rescale_lsb}/{layer.bound_lsb})" if layer.bound_lsb else "")
            for layer in layers
        )
        if self.flavour != "exact":
            allowed = "no bound: N2D2's conversion is not exact"
        else:
            bound = max((layer.bound_lsb or 0 for layer in layers), default=0)
            allowed = f"allowed rescale error {bound} LSB"
        weights = (f" Levels times spacing differ from the fake weights in: {', '.join(self.weight_mismatch)}."
                   if self.weight_mismatch else "")
        return (
            f"Integer network verified against the fake-quantized network on {self.samples} inputs "
            f"({self.flavour} flavour, {self.rescaling} rescaling): {'OK' if self.ok else 'FAILED'}.{weights}\n"
            f"  against the fake network in float64 (the reference, exact arithmetic at ties): "
            f"{self.differing_predictions} of {self.predictions} predictions differ; end to end "
            f"{sum(layer.differing for layer in layers)} of {total} layer outputs differ, by at most "
            f"{self.max_lsb:g} LSB; layer by layer {sum(layer.local_differing for layer in layers)} differ, "
            f"{sum(layer.ties for layer in layers)} values decided exactly at a tie "
            f"({sum(layer.reference_misrounded for layer in layers)} misrounded by float64), "
            f"{sum(layer.unexplained for layer in layers)} integer levels unexplained ({allowed}).\n"
            f"  against the fake network in float32 (as trained): {self.f32_differing_predictions} of "
            f"{self.predictions} predictions differ; end to end {sum(layer.f32_differing for layer in layers)} "
            f"of {total} layer outputs differ, by at most {max((c.f32_max_lsb for c in layers), default=0):g} "
            f"LSB; layer by layer {sum(layer.f32_local_differing for layer in layers)} differ, "
            f"{sum(layer.f32_off_tie for layer in layers)} of them not at a float32 rounding tie.\n"
            f"  Largest end-to-end difference per layer, in LSB (float64 / float32 reference): {per_layer}."
        )


@dataclass
class _Tally:
    compared: int = 0
    differing: int = 0
    max_lsb: float = 0.0
    local_differing: int = 0
    ties: int = 0
    reference_misrounded: int = 0
    unexplained: int = 0
    rescale_lsb: int = 0
    f32_differing: int = 0
    f32_max_lsb: float = 0.0
    f32_local_differing: int = 0
    f32_off_tie: int = 0


Settle = Callable[[dict[str, Tensor], Tensor], Tensor]


class _Recorder(fx.Interpreter):
    """Runs the fake network, keeping the output of the nodes verification needs.

    ``weights`` (module name -> tensor) replaces the weights of those Conv2d/Linear modules: the float64
    reference computes with the levels times their spacing rather than the quantizer's float32 output.
    ``settle`` (node name -> function of the values so far and the node's output) replaces a node's output
    before the rest of the network reads it: the reference's levels decided in exact arithmetic.
    """

    def __init__(self, gm: fx.GraphModule, wanted: set[str], weights: dict[str, Tensor] | None = None,
                 settle: dict[str, Settle] | None = None) -> None:
        super().__init__(gm)
        self.wanted, self.values, self.weights, self.settle = wanted, {}, weights or {}, settle or {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.settle:
            out = self.settle[n.name](self.values, out)
        if n.name in self.wanted:
            self.values[n.name] = out.detach() if isinstance(out, Tensor) else out
        return out

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        weight = self.weights.get(str(target))
        if weight is None:
            return super().call_module(target, args, kwargs)
        module = self.fetch_attr(str(target))
        if isinstance(module, nn.Conv2d):  # fusion accepts zero padding only
            return F.conv2d(args[0], weight, module.bias, module.stride, module.padding, module.dilation,
                            module.groups)
        return F.linear(args[0], weight, module.bias)


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


# --------------------------------------------------------------------------------------------------
# The float64 reference


def _reference_weights(report: FuseReport) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """``J u_w`` in float64 per quantized layer, and the layers where it is not the fake ``Wq``."""
    weights, mismatch = {}, []
    for layer in report.layers:
        w = layer.definition.weights if layer.definition else None
        if w is None or w.levels is None:
            continue
        unit = w.unit.double()
        exact = w.levels.double() * (unit.reshape(-1, *([1] * (w.levels.dim() - 1))) if unit.dim() else unit)
        fake = w.fake.double().to(exact.device)
        if float((exact - fake).abs().max()) > WEIGHT_TOLERANCE * max(float(fake.abs().max()), 1e-30):
            mismatch.append(layer.name)
        weights[layer.name] = exact
    return weights, tuple(mismatch)


def _pixels(x: Tensor) -> Tensor:
    """The input as the integer network reads it, ``p / 255`` with integer ``p``, in float64.

    A float32 image holds ``p / 255`` rounded to float32, 6e-8 off at most, which the first layer scales
    into a visible error (measured: 3.9e-8 of a level at conv1, enough to cross a tie 6.5 + 3.9e-8).
    """
    return torch.round(x.double() * INPUT_RANGE) / INPUT_RANGE


def _float64(fake: fx.GraphModule) -> fx.GraphModule:
    """A float64 copy of the fake network (its parameters and buffers converted exactly)."""
    reference = copy.deepcopy(fake).double()
    reference.eval()
    return reference


# --------------------------------------------------------------------------------------------------
# Exact arithmetic at ties


def _grid_unit(grid: Grid) -> Fraction:
    """The exact unit of a grid: ``|alpha| / R`` (over the window of an average-pooling sum), ``1/255`` in."""
    base = Fraction(abs(grid.alpha)) / grid.range
    window = max(1, round(float(base) / grid.unit))
    return base / window


def _weight_unit(definition: Definition, channel: int) -> Fraction:
    assert definition.weights is not None
    w = definition.weights
    exact = sat_spacing(w)
    if exact is not None:
        return exact
    return Fraction(float(w.unit if w.unit.dim() == 0 else w.unit[channel]))


def _sign(x: Fraction) -> int:
    return (x > 0) - (x < 0)


def _conv_comparator(definition: Definition, grid_in: Grid, channel: int, dot: int) -> Callable[[Fraction], int]:
    """``t -> sign(z / u_out - t)`` for ``z = f (u_acc dot + b - mean) + beta`` (or without BatchNorm)."""
    assert definition.act is not None
    u_out = Fraction(abs(definition.act.alpha)) / definition.act.range
    y = _grid_unit(grid_in) * _weight_unit(definition, channel) * dot
    if definition.bias is not None:
        y += Fraction(float(definition.bias[channel]))
    bn = definition.bn
    if bn is None:
        return lambda t: _sign(y - t * u_out)
    # z / u_out - t = (P / sqrt(V) - Q) / u_out, P = gamma (y - mean), Q = t u_out - beta, V = var + eps > 0.
    p = Fraction(float(bn.gamma[channel])) * (y - Fraction(float(bn.mean[channel])))
    v = Fraction(float(bn.var[channel])) + Fraction(bn.eps)
    beta = Fraction(float(bn.beta[channel]))

    def compare(t: Fraction) -> int:
        q = t * u_out - beta
        if _sign(p) != _sign(q):
            return _sign(p) if p != 0 else -_sign(q)
        return _sign(p) * _sign(p * p - q * q * v)  # same signs: |P| / sqrt(V) against |Q|

    return compare


def _sum_comparator(definition: Definition, grids: tuple[Grid, ...], channel: int,
                    levels: list[int]) -> Callable[[Fraction], int]:
    """``t -> sign(z / u_out - t)`` for ``z = sum_i w_i u_i (q_i - z_i) + s_i``."""
    assert definition.act is not None and definition.terms is not None
    weights, shifts = definition.terms
    u_out = Fraction(abs(definition.act.alpha)) / definition.act.range
    z = Fraction(0)
    for i, (grid, q) in enumerate(zip(grids, levels)):
        c = channel if weights.shape[1] > 1 else 0
        z += Fraction(float(weights[i, c])) * _grid_unit(grid) * (q - grid.zero) + Fraction(float(shifts[i, c]))
    return lambda t: _sign(z - t * u_out)


def _exact_level(compare: Callable[[Fraction], int], approx: float, rounding: str, zero: int, lo: int,
                 hi: int) -> int:
    """The quantizer's level ``sat(round(x / u) + zero)``, given ``compare(t) = sign(x / u - t)`` exactly.

    ``approx`` (a float evaluation of ``x / u``) is where the search starts; the level is then moved until
    ``x / u`` lies between its two ties, within the saturation range, so a far-off ``approx`` only costs steps.
    Ties go away from zero (``half_away``) or to the even neighbour.
    """
    first, last = lo - zero - 1, hi - zero + 1  # beyond these, saturation decides
    k = min(max(math.floor(approx + 0.5), first), last)
    while k > first and compare(Fraction(2 * k - 1, 2)) < 0:
        k -= 1
    while k < last and compare(Fraction(2 * k + 1, 2)) > 0:
        k += 1
    if compare(Fraction(2 * k - 1, 2)) == 0:
        k = _resolve_tie(k - 1, rounding)
    elif compare(Fraction(2 * k + 1, 2)) == 0:
        k = _resolve_tie(k, rounding)
    return min(max(k + zero, lo), hi)


def _resolve_tie(k: int, rounding: str) -> int:
    """The rounding of ``k + 1/2``: away from zero, or to the even neighbour."""
    if rounding == "half_away":
        return k + 1 if k >= 0 else k
    return k if k % 2 == 0 else k + 1


def _dot(layer: FusedLayer, source: nn.Module, levels: list[Tensor]) -> Tensor:
    """``sum J (q - z_in)`` from the definition's levels and the source module's geometry, not from the
    integer network (whose bias or weights may be what is wrong): float64 holding exact integers."""
    assert layer.definition is not None and layer.definition.weights is not None
    weights = layer.definition.weights.levels
    assert weights is not None
    x = (levels[0] - layer.input_grids[0].zero).double()
    if isinstance(source, nn.Conv2d):
        return F.conv2d(x, weights.double().to(x.device), None, source.stride, source.padding, source.dilation,
                        source.groups)
    return F.linear(x, weights.double().to(x.device))


def _exact_levels(layer: FusedLayer, source: nn.Module, levels: list[Tensor], approx: Tensor,
                  where: Tensor) -> Tensor:
    """The exact level at each ``where`` position (int64, the shape of ``where.nonzero()``)."""
    definition = layer.definition
    assert definition is not None and definition.act is not None
    act = definition.act
    zero = act.zero
    dots = _dot(layer, source, levels) if layer.kind in ("conv", "fc") else None
    bounds = _output_bounds(layer)
    result = []
    for index in where.nonzero().tolist():
        channel = index[1]
        position = tuple(index)
        if dots is not None:
            compare = _conv_comparator(definition, layer.input_grids[0], channel, round(float(dots[position])))
        else:
            compare = _sum_comparator(definition, layer.input_grids, channel,
                                      [int(level[position]) for level in levels])
        result.append(_exact_level(compare, float(approx[position]) - zero, act.rounding, zero, *bounds))
    return torch.tensor(result, dtype=torch.int64, device=approx.device)


def _output_bounds(layer: FusedLayer) -> tuple[int, int]:
    """The quantizer's level range, a ReLU before it raising the lowest level to the zero point."""
    act = layer.definition.act if layer.definition else None
    assert act is not None
    return (max(act.lo, act.zero) if layer.relu else act.lo), act.hi


# --------------------------------------------------------------------------------------------------
# The layer-by-layer checks


def _local_inputs(layer: FusedLayer, values: dict[str, Tensor]) -> list[Tensor]:
    return [_to_levels(values[name], grid, grid.unit).to(torch.int64 if grid.integer else torch.float64)
            for name, grid in zip(layer.inputs, layer.input_grids)]


def _before_levels(layer: FusedLayer, values: dict[str, Tensor]) -> Tensor:
    """The fake network's value before the layer's quantizer, in output levels (saturated)."""
    assert layer.out is not None and layer.pre is not None
    before = values[layer.pre].double()
    if layer.relu:
        before = before.clamp(min=0)
    return (before / layer.out.unit + layer.out.zero).clamp(layer.out.lo, layer.out.hi)


def _run_local(layer: FusedLayer, int_gm: fx.GraphModule, values: dict[str, Tensor]
               ) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Rescale]:
    """The integer layer fed the given network's input levels: ``(levels, acc, out, size, rescale)``."""
    accumulate = int_gm.get_submodule(layer.name)
    rescale = int_gm.get_submodule(layer.rescale)
    assert isinstance(rescale, Rescale)
    levels = _local_inputs(layer, values)
    acc = accumulate(*levels)
    out = rescale(acc)
    size = accumulate.magnitude(*levels) * rescale.params.scale.abs().reshape(-1, *([1] * (acc.dim() - 2)))
    return levels, acc, out, size, rescale


def _local_check(layer: FusedLayer, int_gm: fx.GraphModule, source: nn.Module, tally: _Tally,
                 reference: dict[str, Tensor], output: Tensor) -> Tensor:
    """The integer layer fed the float64 reference's input levels, against the reference's ``output``.

    Returns the reference output with the levels decided in exact arithmetic, for the layers after it.
    """
    values = {**reference, layer.source: output}
    levels, acc, out, size, rescale = _run_local(layer, int_gm, values)
    tally.rescale_lsb = max(tally.rescale_lsb, _rescale_error(rescale, acc, out))
    expected = _to_levels(output, layer.out, layer.out_unit)
    if layer.out is None:  # unquantized: nothing rounds, the two differ by float64 error only
        tolerance = REFERENCE_RELATIVE * (size + expected.abs() + 1)
        far = (out - expected).abs() > tolerance
        tally.local_differing += int(far.sum())
        tally.unexplained += int(far.sum())
        return output
    differing = out.double() != expected
    tally.local_differing += int(differing.sum())
    if layer.pre is None:
        tally.unexplained += int(differing.sum())
        return output
    v = _before_levels(layer, values)
    tolerance = REFERENCE_RELATIVE * (size + v.abs() + 1)
    # Exact arithmetic decides where the integer network must be exact: Floating-point rescaling, exact flavour.
    exact = layer.definition is not None and layer.definition.act is not None and layer.bound_lsb == 0
    if not exact or rescale.params.integer:
        slack = 0.5 + (layer.bound_lsb or 0) + tolerance
        tally.unexplained += int((differing & ((out.double() - v).abs() > slack)).sum())
        return output
    distance = (v - layer.out.zero - torch.floor(v - layer.out.zero) - 0.5).abs()  # to the nearest tie
    decide = differing | ((distance <= tolerance) & (v > layer.out.lo) & (v < layer.out.hi))
    if not bool(decide.any()):
        return output
    truth = _exact_levels(layer, source, levels, v, decide)
    tally.ties += int(decide.sum())
    tally.reference_misrounded += int((expected[decide].to(torch.int64) != truth).sum())
    tally.unexplained += int((out[decide].to(torch.int64) != truth).sum())
    settled = expected.clone()
    settled[decide] = truth.double()
    return (settled - layer.out.zero) * layer.out.unit


def _f32_local_check(layer: FusedLayer, int_gm: fx.GraphModule, fake: dict[str, Tensor], tally: _Tally) -> None:
    """The integer layer fed the float32 fake network's input levels, against its output (not judged)."""
    _, _, out, size, _ = _run_local(layer, int_gm, fake)
    expected = _to_levels(fake[layer.source], layer.out, layer.out_unit)
    tolerance = TIE_RELATIVE * size + TIE_ABSOLUTE
    if layer.out is None:  # unquantized: the fake value itself carries float32 error of that size
        tally.f32_local_differing += int(((out - expected).abs() > tolerance).sum())
        tally.f32_off_tie += int(((out - expected).abs() > tolerance + 0.5).sum())
        return
    differing = out.double() != expected
    tally.f32_local_differing += int(differing.sum())
    if layer.pre is None or not bool(differing.any()):
        tally.f32_off_tie += int(differing.sum())
        return
    slack = 0.5 + (layer.bound_lsb or 0) + tolerance
    tally.f32_off_tie += int((differing & ((out.double() - _before_levels(layer, fake)).abs() > slack)).sum())


def _end_to_end(fake_levels: Tensor, int_levels: Tensor, unquantized: bool, relative: float) -> tuple[int, int, float]:
    """``(compared, differing, max difference)`` of two networks' levels for one layer."""
    difference = (fake_levels - int_levels.double()).abs()
    # Levels differ by whole LSBs; unquantized outputs (logits) also carry the reference's float rounding,
    # relative to their magnitude.
    tolerance = 0.5 + relative * fake_levels.abs() if unquantized else 0.5
    largest = float(difference.max()) if difference.numel() else 0.0
    return difference.numel(), int((difference >= tolerance).sum()), largest


def verify(
    fake: fx.GraphModule, integer: fx.GraphModule, report: FuseReport, batches: Iterable[Any]
) -> VerifyReport:
    """Runs both networks on ``batches`` (tensors, or ``(inputs, labels)`` pairs) and compares them.

    The fake network runs twice: as trained (float32), and in float64 with its quantized layers computing
    with levels times spacing (the reference; module note).

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
    reference = _float64(fake)
    weights, mismatch = _reference_weights(report)
    weights = {name: w.to(device) for name, w in weights.items()}
    wanted = {name for layer in report.layers for name in (layer.source, layer.pre, *layer.inputs) if name}
    modules = dict(fake.named_modules())
    sources = {layer.name: modules.get(layer.name) for layer in report.layers}
    tallies = {layer.rescale: _Tally() for layer in report.layers}
    outputs: dict[str, Tensor] = {}
    int_modules = dict(integer.named_modules())

    def keep(name: str) -> Any:
        return lambda module, args, output: outputs.__setitem__(name, output.detach())

    handles = [int_modules[layer.rescale].register_forward_hook(keep(layer.rescale)) for layer in report.layers]
    samples = differing_predictions = f32_differing_predictions = predictions = 0
    try:
        with torch.no_grad():
            for batch in batches:
                x = _inputs(batch).to(device)
                settle = {layer.source: functools.partial(_local_check, layer, integer, sources[layer.name],
                                                          tallies[layer.rescale]) for layer in report.layers}
                recorder, recorder64 = _Recorder(fake, wanted), _Recorder(reference, wanted, weights, settle)
                fake_out, ref_out = recorder.run(x), recorder64.run(_pixels(x))
                int_out = integer(x)
                int_levels = dict(outputs)
                samples += x.shape[0]
                int_pred = _predictions(int_out)
                predictions += int_pred.numel()
                differing_predictions += int((_predictions(ref_out) != int_pred).sum())
                f32_differing_predictions += int((_predictions(fake_out) != int_pred).sum())
                for layer in report.layers:
                    _tally_layer(layer, integer, recorder64.values, recorder.values, int_levels[layer.rescale],
                                 tallies[layer.rescale])
    finally:
        for handle in handles:
            handle.remove()
    checks = tuple(
        LayerCheck(layer.rescale, t.compared, t.differing, t.max_lsb, t.local_differing, t.ties,
                   t.reference_misrounded, t.unexplained, t.rescale_lsb, layer.bound_lsb, t.f32_differing,
                   t.f32_max_lsb, t.f32_local_differing, t.f32_off_tie)
        for layer, t in ((layer, tallies[layer.rescale]) for layer in report.layers)
    )
    options = report.options
    return VerifyReport(options.flavour, options.rescaling, samples, differing_predictions, predictions, checks,
                        f32_differing_predictions, mismatch)


def _tally_layer(layer: FusedLayer, integer: fx.GraphModule, reference: dict[str, Tensor], fake: dict[str, Tensor],
                 int_levels: Tensor, tally: _Tally) -> None:
    """End to end against the float64 reference, end to end and layer by layer against the float32 fake
    network (the reference's layer-by-layer check ran inside the reference, :func:`_local_check`)."""
    unquantized = layer.out is None
    compared, differing, largest = _end_to_end(_to_levels(reference[layer.source], layer.out, layer.out_unit),
                                               int_levels, unquantized, 1e-12)
    tally.compared += compared
    tally.differing += differing
    tally.max_lsb = max(tally.max_lsb, largest)
    _, differing, largest = _end_to_end(_to_levels(fake[layer.source], layer.out, layer.out_unit), int_levels,
                                        unquantized, 1e-5)
    tally.f32_differing += differing
    tally.f32_max_lsb = max(tally.f32_max_lsb, largest)
    _f32_local_check(layer, integer, fake, tally)
