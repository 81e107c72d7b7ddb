"""Post-training calibration: a float network quantized from the data, or a QAT network's quantizers
started from it.

**Post-training quantization** (N2D2's ``-calib``, reference/n2d2-ptq-export.md §1), on a float network with
trained weights, ``n`` bits, ``R = 2^n - 1``:

1. BatchNorm is folded into the Conv or Fc before it: ``W <- f W`` per output channel,
   ``f = gamma / sqrt(var + eps)``; the BatchNorm stays in the graph as the identity plus the shift
   ``beta - f mean`` (gamma 1, variance 1, eps 0), so the network, its cells and its summary keep their shape.
2. Weight clipping (``-wt-clipping-mode``, default None): per layer, ``t`` from the histogram of its weights
   over ``[-m, m]``, ``m = max|W|`` (signed search), and ``W <- clamp(W, -t, t)``.
3. The calibration stimuli run through the float network twice: the range of each *quantization point*
   first, then its histogram over that range (:mod:`.histogram`).
4. Each point's threshold ``T`` (``-act-clipping-mode``, default MSE; max-abs for a residual Sum and for a
   tensor of 2 channels or fewer, as N2D2) sets its activation quantizer, a MinMax grid that no longer moves:
   ``[0, T]`` with levels ``0..R`` for unsigned values (every value seen >= 0), ``[-T, T]`` with levels
   ``-floor(R/2)..floor(R/2)`` otherwise.
5. Weights get a MinMax symmetric quantizer, levels ``-floor(R/2)..floor(R/2)`` on ``[-m, m]``, per layer
   or, with ``-act-rescale-per-output 1``, per output channel.

The result is an ordinary fake-quantized network (MinMax quantizers): ``-test``, the integer network and
its verification, and the exports treat it as any quantized network.

The quantization points: the output of every Conv, Fc, BatchNorm and residual Sum cell (after its
activation function), except a Conv or Fc whose output only feeds a BatchNorm (folded into it); a cell
without an activation module gets an identity one to hold the quantizer. When a point's only consumer is a
max-pool, the histogram is the pool's output (the values that propagate; max-pooling commutes with the
quantizer), as N2D2 does.

**QAT started from calibration**: on a quantized network, the points are its activation quantizers, each
observed with every activation quantizer passed through, and each starts from the data (see
:func:`initialize`): SAT ``alpha = T``, LSQ ``step = T / Qp``, MinMax the range ``[lo, T]``, where ``T`` is
the threshold of the quantizer's own grid (unsigned for SAT, by its bounds for LSQ and MinMax).

Where qatrun differs from N2D2 (each measured by scripts/bench_calibration.py):

* the network input keeps its 8-bit levels ``p / 255`` at every bit width (N2D2 truncates it to n bits,
  ``floor(p / 17)`` at 4 bits), as qatrun's integer network reads 8-bit images;
* no cross-layer equalization and no per-channel floor ``min(m, 0.1)`` of the weight ranges;
* the logits are quantized like every other point (signed, clipped); ties between two winning levels are
  broken by the lower class index, as in the float network's argmax.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from qatrun.calib.histogram import (
    CLIPPING_MODES,
    WEIGHT_CLIPPING_MODES,
    Histogram,
    initial_bins,
    threshold,
)
from qatrun.errors import RunError
from qatrun.fuse.fold import BATCHNORMS, FOLDABLE, bn_factor, follow_to_bn, refuse_non_finite
from qatrun.net.layers import ElemWise
from qatrun.quant import (
    LSQActivationQuantizer,
    MinMaxActivationQuantizer,
    MinMaxActSpec,
    MinMaxWeightSpec,
    QuantizedActivation,
    QuantizedWeightLayer,
    SATActivationQuantizer,
    quantize_module,
)
from qatrun.quant.kernels import EAGER, Kernels

POINT_TYPES = ("Conv", "Fc", "Deconv", "BatchNorm", "ElemWise")
MIN_BITS, MAX_BITS = 2, 8
MIN_CLIPPED_CHANNELS = 3  # N2D2 clips a tensor only when it has more than 2 channels


@dataclass(frozen=True)
class CalibOptions:
    """What to calibrate, N2D2's options and defaults.

    Attributes:
        bits: ``-nbbits``: weights and activations (2..8).
        act_bits: activations on other bits than the weights (None: ``bits``).
        act_clipping: ``-act-clipping-mode``, one of :data:`~qatrun.calib.histogram.CLIPPING_MODES`.
        quantile: ``-act-quantile-value``, the fraction Quantile keeps, in (0, 1].
        wt_clipping: ``-wt-clipping-mode``: ``None``, ``MSE`` or ``KL-Divergence``.
        per_output: ``-act-rescale-per-output 1``: one weight scale per output channel.
    """

    bits: int = 8
    act_bits: int | None = None
    act_clipping: str = "MSE"
    quantile: float = 0.9999
    wt_clipping: str = "None"
    per_output: bool = False

    def __post_init__(self) -> None:
        for name, value in (("-nbbits", self.bits), ("activation bits", self.activation_bits)):
            if not MIN_BITS <= value <= MAX_BITS:
                raise RunError(f"{name} must be in {MIN_BITS}..{MAX_BITS} for calibration, found {value}")
        if self.act_clipping not in CLIPPING_MODES:
            raise RunError(f"-act-clipping-mode must be one of {', '.join(CLIPPING_MODES)}, "
                           f"found {self.act_clipping!r}")
        if self.wt_clipping not in WEIGHT_CLIPPING_MODES:
            raise RunError(f"-wt-clipping-mode must be one of {', '.join(WEIGHT_CLIPPING_MODES)}, "
                           f"found {self.wt_clipping!r}")
        if not 0 < self.quantile <= 1:
            raise RunError(f"-act-quantile-value must be in (0, 1], found {self.quantile}")

    @property
    def activation_bits(self) -> int:
        return self.bits if self.act_bits is None else self.act_bits

    def describe(self) -> str:
        """``8 bits, MSE, per layer``."""
        bits = f"{self.bits} bits" if self.act_bits in (None, self.bits) else f"w{self.bits}a{self.act_bits}"
        clip = self.act_clipping + (f" {self.quantile}" if self.act_clipping == "Quantile" else "")
        weights = "" if self.wt_clipping == "None" else f", weights clipped by {self.wt_clipping}"
        return f"{bits}, {clip}, {'per output channel' if self.per_output else 'per layer'}{weights}"


@dataclass
class Point:
    """One quantization point and what calibration found there.

    Attributes:
        name: the cell whose output it is.
        quantizer: the module its activation quantizer wraps (PTQ), or the activation quantizer module (QAT).
        observed: the module whose output is histogrammed (``quantizer``, or the max-pool after it).
        clip: the clipping mode applies (else max-abs).
        steps: the quantizer's steps R.
        signed: the grid is signed (None until the data decides, PTQ).
        lo: lowest value seen.
        hi: highest value seen.
        histogram: the values' histogram (None with clipping mode None).
        threshold: the chosen T.
        before: QAT: the quantizer's value before calibration (``alpha 8``), else "".
        after: QAT: its value after (``alpha 3.2``), else "".
    """

    name: str
    quantizer: str
    observed: str
    clip: bool
    steps: int
    signed: bool | None = None
    lo: float = 0.0
    hi: float = 0.0
    histogram: Histogram | None = None
    threshold: float = 0.0
    before: str = ""
    after: str = ""

    @property
    def reach(self) -> float:
        """The largest magnitude the grid must hold: ``max(|lo|, |hi|)``, or ``hi`` on an unsigned grid."""
        return max(abs(self.lo), abs(self.hi)) if self.signed else max(self.hi, 0.0)

    @property
    def bits(self) -> int:
        return self.steps.bit_length()


@dataclass
class Calibration:
    """A calibration: the stimuli it read, its options, and each point with its threshold.

    Attributes:
        options: the options it was made with (the thresholds follow ``options.act_clipping``).
        stimuli: how many stimuli were read.
        partition: the partition they came from (``Validation``, else ``Test``).
        digest: SHA-256 of the float network's parameters it was made from.
        points: the quantization points, in graph order.
        kind: ``ptq`` (a float network quantized) or ``qat`` (a QAT network's starting values).
        weight_thresholds: layer -> its weight clipping threshold (weight clipping only).
    """

    options: CalibOptions
    stimuli: int
    partition: str
    digest: str
    points: list[Point]
    kind: str = "ptq"
    weight_thresholds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """One line per point: range, signedness, threshold (and for QAT, the value set)."""
        header = ("point", "observed", "grid", "range", "threshold") + (("set",) if self.kind == "qat" else ())
        rows = [header]
        for p in self.points:
            grid = "signed" if p.signed else "unsigned"
            row = (p.name, p.observed, f"{grid} R={p.steps}", f"[{p.lo:.4g}, {p.hi:.4g}]",
                   f"{p.threshold:.6g}" + ("" if p.clip else " (max-abs)"))
            rows.append(row + ((f"{p.before} -> {p.after}",) if self.kind == "qat" else ()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def settings(self) -> str:
        """The options that shaped it: ``8 bits, MSE, per layer``; for QAT, the clipping mode alone (each
        quantizer keeps its own grid)."""
        if self.kind == "qat":
            o = self.options
            return (o.act_clipping + (f" {o.quantile}" if o.act_clipping == "Quantile" else "")
                    + ", on each quantizer's own grid")
        return self.options.describe()

    def describe(self) -> str:
        """One line for the run record."""
        return (f"{self.kind} on {self.stimuli} stimuli of {self.partition}, {self.settings()}; "
                + "; ".join(f"{p.name} T={p.threshold:.6g}" + (f" {p.after}" if p.after else "")
                            for p in self.points))


# ------------------------------------------------------------------------------------------ the graph


def parameters_digest(gm: nn.Module) -> str:
    """SHA-256 of every parameter and floating buffer, by name (the weights a calibration belongs to)."""
    digest = hashlib.sha256()
    for name, tensor in [*gm.named_parameters(), *gm.named_buffers()]:
        if tensor.is_floating_point():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _node_of(gm: fx.GraphModule, module: str) -> fx.Node:
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == module:
            return node
    raise AssertionError(f"no node calls {module}")


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _add_identity_act(gm: fx.GraphModule, cell: object) -> str:
    """Gives a cell without activation module an identity one (``<module>_act``), to hold a quantizer."""
    name = cell.module_name + "_act"  # type: ignore[attr-defined]
    node = _node_of(gm, cell.module_name)  # type: ignore[attr-defined]
    identity = nn.Identity()
    gm.add_submodule(name, identity)
    with gm.graph.inserting_after(node):
        act = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(act, delete_user_cb=lambda user: user is not act)
    gm.recompile()
    cell.act_module = identity  # type: ignore[attr-defined]
    return name


def _observed(gm: fx.GraphModule, node: fx.Node) -> str:
    """The module whose output tells the values that propagate: a max-pool that is the only consumer."""
    if len(node.users) == 1:
        user = next(iter(node.users))
        if isinstance(_module(gm, user), nn.MaxPool2d):
            return str(user.target)
    return str(node.target)


def _channels(cell: object) -> int:
    return int(cell.out_shape[0])  # type: ignore[attr-defined]


def ptq_points(gm: fx.GraphModule, steps: int) -> list[Point]:
    """The quantization points of a float network (module note), adding identity activations where needed."""
    points = []
    for cell in list(gm.cells.values()):  # type: ignore[union-attr]
        if cell.type not in POINT_TYPES:
            continue
        if cell.act_name is None:
            _add_identity_act(gm, cell)
        node = _node_of(gm, cell.act_name)
        users = [_module(gm, u) for u in node.users]
        if cell.type != "BatchNorm" and users and all(isinstance(u, BATCHNORMS) for u in users):
            continue  # folded into the BatchNorm, whose output is the point
        clip = cell.type != "ElemWise" and _channels(cell) >= MIN_CLIPPED_CHANNELS
        points.append(Point(cell.name, cell.act_name, _observed(gm, node), clip, steps))
    return points


def qat_points(gm: fx.GraphModule) -> list[Point]:
    """The activation quantizers of a quantized network, as points (their grids fix the signedness)."""
    cells_by_act = {c.act_name: c for c in gm.cells.values() if c.act_name is not None}  # type: ignore[union-attr]
    points = []
    for node in gm.graph.nodes:
        module = _module(gm, node)
        if not isinstance(module, QuantizedActivation):
            continue
        q = module.quantizer
        spec = q.spec  # type: ignore[attr-defined]
        if isinstance(q, SATActivationQuantizer):
            signed = False
        elif isinstance(q, LSQActivationQuantizer):
            signed = spec.bounds[0] < 0
        elif isinstance(q, MinMaxActivationQuantizer):
            signed = spec.symmetric
        else:
            raise RunError(f"{node.target}: calibration has no rule for {type(q).__name__}")
        cell = cells_by_act.get(str(node.target))
        name = cell.name if cell is not None else str(node.target)
        clip = cell is None or (cell.type != "ElemWise" and _channels(cell) >= MIN_CLIPPED_CHANNELS)
        points.append(Point(name, str(node.target), _observed(gm, node), clip, spec.range, signed))
    return points


# ------------------------------------------------------------------------------------------ collection


@contextmanager
def _activation_quantizers_off(gm: nn.Module) -> Iterator[None]:
    """Every activation quantizer passes its input through (the float network's values)."""
    saved = {}
    for name, module in gm.named_modules():
        if isinstance(module, QuantizedActivation):
            saved[name] = module.quantizer
            module.quantizer = nn.Identity()  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, quantizer in saved.items():
            gm.get_submodule(name).quantizer = quantizer


@contextmanager
def _batch_statistics(gm: nn.Module) -> Iterator[None]:
    """Every BatchNorm normalises with the batch's statistics, as in a training step, and leaves its running
    statistics as they were (momentum 0; the batch counter restored)."""
    saved = []
    for module in gm.modules():
        if isinstance(module, BATCHNORMS):
            counter = None if module.num_batches_tracked is None else module.num_batches_tracked.clone()
            saved.append((module, module.momentum, counter))
            module.momentum = 0.0
            module.train()
    try:
        yield
    finally:
        for module, momentum, counter in saved:
            module.momentum = momentum
            if counter is not None:
                module.num_batches_tracked.copy_(counter)


def _observe(gm: nn.Module, points: list[Point], batches: Callable[[], Iterable[Tensor]],
             record: Callable[[Point, Tensor], None], batch_statistics: bool = False) -> int:
    """Runs every batch through ``gm`` in evaluation (BatchNorms on the batch's statistics with
    ``batch_statistics``), ``record(point, output)`` at each observed module."""
    hooks = []
    for point in points:
        module = gm.get_submodule(point.observed)
        if isinstance(module, QuantizedActivation):
            module = module.act  # its input to the (disabled) quantizer
        hooks.append(module.register_forward_hook(lambda _m, _i, out, p=point: record(p, out)))
    was_training = gm.training
    gm.eval()
    count = 0
    try:
        with torch.no_grad(), _activation_quantizers_off(gm), (
                _batch_statistics(gm) if batch_statistics else contextlib.nullcontext()):
            for x in batches():
                gm(x)
                count += x.shape[0]
    finally:
        for hook in hooks:
            hook.remove()
        gm.train(was_training)
    return count


def collect(gm: nn.Module, points: list[Point], batches: Callable[[], Iterable[Tensor]], mode: str,
            batch_statistics: bool = False) -> int:
    """Fills each point's range, then (unless ``mode`` is None) its histogram; decides unset signedness.

    Args:
        batches: called once per pass, yields the calibration inputs.
        batch_statistics: BatchNorms use the batch's statistics (a network about to learn).

    Returns:
        The number of stimuli read (per pass).
    """
    ranges: dict[str, tuple[float, float]] = {}

    def widen(point: Point, out: Tensor) -> None:
        lo, hi = float(out.min()), float(out.max())
        old = ranges.get(point.name)
        ranges[point.name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    count = _observe(gm, points, batches, widen, batch_statistics)
    if count == 0:
        raise RunError("calibration read no stimulus: the calibration partition is empty")
    for point in points:
        point.lo, point.hi = ranges[point.name]
        if point.signed is None:
            point.signed = point.lo < 0
        if not bool(torch.isfinite(torch.tensor([point.lo, point.hi])).all()):
            raise RunError(f"{point.name}: calibration saw non-finite values ({point.lo}, {point.hi}); the "
                           "weights or the data hold nan or inf")
    if mode == "None":
        return count
    for point in points:
        lowest = point.lo if point.signed else max(point.lo, 0.0)
        point.histogram = Histogram.create(lowest, point.hi, initial_bins(mode, point.bits), bool(point.signed))
    _observe(gm, points, batches, lambda point, out: point.histogram.fill(out),  # type: ignore[union-attr]
             batch_statistics)
    return count


def choose_thresholds(points: list[Point], options: CalibOptions) -> None:
    """Sets each point's threshold from its histogram (max-abs where the mode does not apply)."""
    for point in points:
        mode = options.act_clipping if point.clip else "None"
        if mode != "None" and point.histogram is None:
            raise RunError(f"{point.name}: this calibration holds no histogram (made with clipping mode None); "
                           "calibrate again rather than reload it")
        t = threshold(point.histogram, mode, point.steps, point.reach, options.quantile)
        point.threshold = t if t > 0 else max(point.reach, 1.0)  # a dead tensor still needs a grid


# ------------------------------------------------------------------------------------------ PTQ


def fold_batchnorm_in_place(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Step 1 of the module note: each BatchNorm that follows a Conv/Fc (through identities) is folded
    into its weights and left as the identity plus its shift. Returns the (layer, BatchNorm) pairs."""
    pairs = []
    for node in gm.graph.nodes:
        layer = _module(gm, node)
        if not isinstance(layer, FOLDABLE):
            continue
        chain = follow_to_bn(gm, node)  # the same pattern as -fuse's folding
        if chain is None:
            continue
        bn_node = chain[1]
        bn = gm.get_submodule(str(bn_node.target))
        if bn.running_mean is None or bn.running_var is None:
            raise RunError(f"{bn_node.target}: cannot fold a BatchNorm without running statistics")
        with torch.no_grad():
            f = bn_factor(bn.running_var, bn.eps, bn.weight)
            axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
            shape = [1] * layer.weight.dim()
            shape[axis] = -1
            layer.weight.copy_((layer.weight.double() * f.reshape(shape)).to(layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.copy_((layer.bias.double() * f).to(layer.bias.dtype))
            shift = -f * bn.running_mean.double() + (0 if bn.bias is None else bn.bias.double())
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.eps = 0.0
            if bn.weight is not None:
                bn.weight.fill_(1.0)
            if bn.bias is not None:
                bn.bias.copy_(shift.to(bn.bias.dtype))
            else:  # no affine shift to hold it: the mean does (-mean is the shift)
                bn.running_mean.copy_((-shift).to(bn.running_mean.dtype))
        pairs.append((str(node.target), str(bn_node.target)))
    return pairs


def _weight_layers(gm: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in gm.named_modules() if isinstance(m, FOLDABLE) and not isinstance(m, QuantizedWeightLayer)]


def clip_weights(gm: nn.Module, mode: str, bits: int) -> dict[str, float]:
    """Step 2: clamps each layer's weights to the threshold of their histogram; returns the thresholds."""
    if mode == "None":
        return {}
    steps = 2**bits - 1
    found = {}
    for name, layer in _weight_layers(gm):
        w = layer.weight.detach()
        mask = getattr(layer, "mask", None)
        values = w[mask.bool().expand_as(w)] if mask is not None else w
        m = float(values.abs().max()) if values.numel() else 0.0
        if m == 0:
            continue
        h = Histogram.create(-m, m, initial_bins(mode, bits), signed=True)
        h.fill(values)
        t = threshold(h, mode, steps, m)
        with torch.no_grad():
            layer.weight.clamp_(-t, t)
        found[name] = t
    return found


def install(gm: fx.GraphModule, points: list[Point], options: CalibOptions, kernels: Kernels = EAGER) -> None:
    """Steps 4 and 5: MinMax quantizers on every weight layer and at every point, fixed at their thresholds."""
    w_steps = 2**options.bits - 1
    for name, _layer in _weight_layers(gm):
        quantize_module(gm, name, MinMaxWeightSpec(range=w_steps, symmetric=True, per_channel=options.per_output),
                        kernels)
    for point in points:
        spec = MinMaxActSpec(range=point.steps, symmetric=bool(point.signed), update="Maximum")
        wrapped = quantize_module(gm, point.quantizer, spec, kernels)
        assert isinstance(wrapped, QuantizedActivation)
        set_range(wrapped.quantizer, -point.threshold if point.signed else 0.0, point.threshold)  # type: ignore
    gm.eval()


def set_range(q: MinMaxActivationQuantizer, lo: float, hi: float) -> None:
    """Fixes a MinMax activation quantizer's range (as if it had observed ``[lo, hi]``)."""
    with torch.no_grad():
        q.running_min.fill_(lo)
        q.running_max.fill_(hi)
        q.observed.fill_(True)


def calibrate_float(gm: fx.GraphModule, batches: Callable[[], Iterable[Tensor]], options: CalibOptions,
                    kernels: Kernels = EAGER, reloaded: Calibration | None = None) -> Calibration:
    """Post-training quantization of a float network, in place (module note).

    Args:
        gm: the float network with its trained weights.
        batches: yields the calibration inputs (called once per pass; not called with ``reloaded``).
        options: bits and modes.
        kernels: the quantizers' kernels.
        reloaded: a saved calibration of the same weights (``-calib-reload``): its ranges and histograms
            are used, the thresholds chosen again with ``options``.

    Raises:
        RunError: the network already holds quantizers, non-finite values, or a calibration of other weights.
    """
    if any(isinstance(m, (QuantizedWeightLayer, QuantizedActivation)) for m in gm.modules()):
        raise RunError("post-training calibration needs a float network; this one holds quantizers")
    refuse_non_finite(gm, "calibrate")
    digest = parameters_digest(gm)
    fold_batchnorm_in_place(gm)
    weight_thresholds = clip_weights(gm, options.wt_clipping, options.bits)
    points = ptq_points(gm, 2**options.activation_bits - 1)
    if reloaded is not None:
        stimuli, partition = reuse(reloaded, points, digest)
    else:
        stimuli, partition = collect(gm, points, batches, options.act_clipping), ""
    choose_thresholds(points, options)
    install(gm, points, options, kernels)
    return Calibration(options, stimuli, partition, digest, points, "ptq", weight_thresholds)


def reuse(saved: Calibration, points: list[Point], digest: str) -> tuple[int, str]:
    """Copies a saved calibration's ranges and histograms onto ``points`` (the same network and weights)."""
    if saved.digest != digest:
        raise RunError("-calib-reload: the saved calibration was made from other weights (its digest "
                       f"{saved.digest[:12]} differs from {digest[:12]}); calibrate again with -calib N")
    by_name = {p.name: p for p in saved.points}
    names = [p.name for p in points]
    if sorted(by_name) != sorted(names):
        raise RunError("-calib-reload: the saved calibration is of another network (points "
                       f"{', '.join(sorted(set(by_name) ^ set(names)))} differ)")
    for point in points:
        old = by_name[point.name]
        point.lo, point.hi, point.signed, point.histogram = old.lo, old.hi, old.signed, old.histogram
    return saved.stimuli, saved.partition


# ------------------------------------------------------------------------------------------ QAT


def initialize(gm: fx.GraphModule, batches: Callable[[], Iterable[Tensor]], options: CalibOptions,
               reloaded: Calibration | None = None) -> Calibration:
    """Starts a QAT network's activation quantizers from the data, in place.

    The rule, per quantizer, with ``T`` the threshold of ``options.act_clipping`` on the histogram of the
    quantizer's input (all activation quantizers passed through, every BatchNorm on the batch's statistics
    as in the training steps that follow: a BatchNorm not yet trained holds no useful running statistics),
    on the quantizer's own grid (``R`` steps;
    unsigned for SAT, which clips at 0; by its bounds for LSQ and MinMax):

    * SAT: ``alpha = T`` (CG-PACT's clip, so the grid ``alpha / R`` covers what the data needs);
    * LSQ: ``step = T / Qp`` (``Qp`` its highest level), and the step counts as initialized;
    * MinMax: the running range ``[min(lo, 0), T]`` (``[-T, T]`` when symmetric), as if observed.

    Weights are left as they are: their quantizers take their scales from the weights themselves.
    """
    digest = parameters_digest(gm)
    points = qat_points(gm)
    if not points:
        raise RunError("-calib on a quantized network sets its activation quantizers; this one has none")
    if reloaded is not None:
        stimuli, partition = reuse(reloaded, points, digest)
    else:
        stimuli, partition = collect(gm, points, batches, options.act_clipping, batch_statistics=True), ""
    choose_thresholds(points, options)
    with torch.no_grad():
        for point in points:
            q = gm.get_submodule(point.quantizer).quantizer
            point.before, point.after = _set_start(q, point)
    return Calibration(options, stimuli, partition, digest, points, "qat")


def _set_start(q: nn.Module, point: Point) -> tuple[str, str]:
    t = point.threshold
    if isinstance(q, SATActivationQuantizer):
        before = f"alpha {float(q.alpha):.4g}"
        q.alpha.fill_(t)
        return before, f"alpha {t:.4g}"
    if isinstance(q, LSQActivationQuantizer):
        qp = q.spec.bounds[1]
        before = f"step {float(q.step):.4g}" if bool(q.initialized) else "step from the first batch"
        q.step.fill_(t / qp)
        q.initialized.fill_(True)
        return before, f"step {t / qp:.4g}"
    assert isinstance(q, MinMaxActivationQuantizer), type(q)
    before = f"range [{float(q.running_min):.4g}, {float(q.running_max):.4g}]" if bool(q.observed) else "range unset"
    lo = -t if q.spec.symmetric else min(point.lo, 0.0)
    q.running_min.fill_(lo)
    q.running_max.fill_(t)
    q.observed.fill_(True)
    return before, f"range [{lo:.4g}, {t:.4g}]"
