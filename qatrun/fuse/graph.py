"""The integerization pass: a fake-quantized GraphModule -> an integer-only GraphModule, node for node.

``integerize(gm, options)`` walks the source graph in order and emits, for each pattern:

=========================================================== ================================================
source                                                      integer graph
=========================================================== ================================================
input ``x`` (in [0, 1])                                     ``input_int``: IntInput, ``p = 255 x``
Conv/Fc -> [Identity] -> [BatchNorm] -> activation quantizer ``<conv>``: IntConv2d/IntLinear, then
                                                            ``<act>``: Rescale (named after the quantizer it
                                                            replaces, so outputs compare by name)
Conv/Fc -> ... without quantizer (the logits)               IntConv2d/IntLinear, Rescale to float64
ElemWise Sum / ``+`` -> activation quantizer                ``<sum>``: IntAdd, ``<act>``: Rescale
activation quantizer on integer levels                      IntAdd (one input) + Rescale
MaxPool2d                                                   IntMaxPool2d
FractionalMaxPool (FMP), on its fixed regions               IntFractionalMaxPool
AvgPool2d                                                   exact: the window sum (unit / window size);
                                                            n2d2: the average, as N2D2 computes it
Identity, Dropout, Softmax with loss                        nothing (the value passes through)
Flatten, Reshape, Permute, flatten/view/reshape calls       the same operation on the integers
``torch.cat`` of inputs on one grid, ``F.pad`` crops        the same operation on the integers
=========================================================== ================================================

Anything else (a non-linear activation without quantizer, a BatchNorm that follows no layer, an
unquantized tensor reaching an integer layer) is a :class:`~qatrun.errors.RunError` naming the module.
Each integer tensor carries its :class:`~qatrun.fuse.integerize.Grid` through the walk, so units follow
the actual graph (residual branches included) rather than N2D2's single running ``(R_in, alpha_in)``.

SAT weight levels are spaced by ``1 / (D S)`` (``Wq = n / (D S)``, D = R or floor(R/2), S the SAT scale
or 1). The quantizer hands out that spacing as its float32 rescale (what ``QWeight.Mode=Integer`` trains
with): ``float32(1/15)`` is 5.2e-8 above 1/15, enough to move a value 2.5e-8 below a rounding tie above
it after a BatchNorm (measured: one ResNet-20 test image changed class). Fusion takes the spacing in
float64 from its definition instead (:func:`sat_spacing`), so the integer network is exact to float64.
Each :class:`FusedLayer` keeps the :class:`Definition` it was made from, for verification's exact
arithmetic at rounding ties.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction

import torch
from torch import fx, nn
from torch.nn import functional as F

from qatrun.errors import RunError
from qatrun.fuse.fold import BATCHNORMS, refuse_non_finite
from qatrun.fuse.integerize import (
    INPUT_GRID,
    ActQuant,
    BatchNormParams,
    FuseOptions,
    Grid,
    IntegerLayer,
    WeightQuant,
    add_layer,
    exact_layer,
    n2d2_conv_bn,
    n2d2_fc,
)
from qatrun.fuse.intnet import (
    IntAdd,
    IntAvgPool2d,
    IntConv2d,
    IntFractionalMaxPool,
    IntInput,
    IntLinear,
    IntMaxPool2d,
    Rescale,
)
from qatrun.fuse.reader import DefaultReader, QuantReader
from qatrun.fuse.scaling import Requant, error_bound_lsb, product_fits
from qatrun.net.fmp import FractionalMaxPool
from qatrun.net.layers import ElemWise, Permute, Reshape, Softmax
from qatrun.quant.sat import sat_denominator

PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)
SHAPE_MODULES = (nn.Flatten, Reshape, Permute)
SHAPE_FUNCTIONS: set[Callable[..., object]] = {torch.flatten, torch.reshape, operator.getitem}
SHAPE_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze", "permute", "size", "detach"}
ADD_FUNCTIONS: set[Callable[..., object]] = {operator.add, torch.add}
INPUT_MODULE = "input_int"
FLOAT32_SPACING = 2.0**-21  # a float32 rescale 1/(D S) lies within a few float32 roundings of the exact one


def sat_spacing(w: WeightQuant) -> Fraction | None:
    """The exact spacing ``1 / (D S)`` of SAT weight levels (S as the float it is), or None when ``w`` is not
    SAT with levels, or its unit is not that spacing up to float32 rounding (a reader with another unit)."""
    if w.method != "SAT" or w.levels is None or w.unit.numel() != 1 or w.scaling <= 0:
        return None
    exact = 1 / (sat_denominator(w.range, w.mode) * Fraction(w.scaling))
    unit = float(w.unit)
    return exact if abs(unit - float(exact)) <= FLOAT32_SPACING * float(exact) else None


def _float64_spacing(w: WeightQuant) -> WeightQuant:
    """SAT weights with their level spacing in float64 from its definition (module note)."""
    exact = sat_spacing(w)
    return w if exact is None else replace(w, unit=torch.tensor(float(exact), dtype=torch.float64))


@dataclass(frozen=True)
class Definition:
    """The parameters of the quantized function an integer layer replaces, as the trained network holds them.

    Verification evaluates the layer from these in exact arithmetic where a value lies at a rounding tie.

    Attributes:
        weights: the Conv/Fc's quantized weights (levels and spacing), else None.
        bias: the Conv/Fc's float bias (C,), or None.
        bn: the BatchNorm folded into it, or None.
        act: the activation quantizer closing the layer (None: unquantized output).
        terms: a Sum's ``(weights, shifts)``, each (n_inputs, C) or (n_inputs, 1), else None.
    """

    weights: WeightQuant | None = None
    bias: torch.Tensor | None = None
    bn: BatchNormParams | None = None
    act: ActQuant | None = None
    terms: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class FusedLayer:
    """One integer layer of the fused network.

    Attributes:
        name: the accumulating module (IntConv2d/IntLinear/IntAdd), named after the source layer.
        rescale: the Rescale module closing it.
        source: the source graph node whose output the Rescale reproduces (its activation quantizer),
            or the last node of the pattern for an unquantized output.
        kind: ``conv``, ``fc``, ``add`` or ``requant``.
        out: the output grid (None: unquantized float output).
        out_unit: real value of one output unit.
        bound_lsb: the rescale's error bound in output levels (None for the n2d2 flavour: N2D2's
            conversion has none).
        layer: the per-layer integer form (weights, bias, rescale) for conv/fc.
        mask: the connectivity of a masked (``Mapping``) convolution, for the weights files.
        inputs: the source nodes feeding the accumulating module (for layer-by-layer verification).
        input_grids: their grids.
        pre: the source node feeding the activation quantizer (its value before rounding), if any.
        relu: a ReLU runs before that quantizer.
        definition: the source parameters, for verification.
    """

    name: str
    rescale: str
    source: str
    kind: str
    out: Grid | None
    out_unit: float
    bound_lsb: int | None
    layer: IntegerLayer | None = None
    mask: torch.Tensor | None = None
    inputs: tuple[str, ...] = ()
    input_grids: tuple[Grid, ...] = ()
    pre: str | None = None
    relu: bool = False
    definition: Definition | None = None


@dataclass
class FuseReport:
    """What fusion did: the integer layers in graph order, and notes for the user."""

    options: FuseOptions
    layers: list[FusedLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def bound_lsb(self) -> int | None:
        """Largest per-layer rescale error bound (levels); None for the n2d2 flavour."""
        bounds = [layer.bound_lsb for layer in self.layers]
        if any(bound is None for bound in bounds):
            return None
        return max((b for b in bounds if b is not None), default=0)

    def summary(self) -> str:
        """One line per integer module: name and ``describe()``, then the notes."""
        width = max((len(name) for name in self.descriptions), default=0)
        lines = [f"{name:<{width}}  {text}" for name, text in self.descriptions.items()]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _module_name(node: fx.Node) -> str:
    return str(node.target)


@dataclass
class _Chain:
    """A layer's single-user chain: the BatchNorm and activation quantizer nodes it absorbs."""

    members: list[fx.Node]
    bn: fx.Node | None = None
    act: tuple[fx.Node, ActQuant] | None = None
    relu: bool = False

    @property
    def tail(self) -> fx.Node | None:
        return self.members[-1] if self.members else None


class _Builder:
    """Walks the source graph once, emitting the integer graph."""

    def __init__(self, gm: fx.GraphModule, options: FuseOptions, reader: QuantReader) -> None:
        self.gm, self.options, self.reader = gm, options, reader
        self.modules = dict(gm.named_modules())
        self.graph = fx.Graph()
        self.root: dict[str, nn.Module] = {}
        self.env: dict[fx.Node, fx.Node] = {}
        self.grids: dict[fx.Node, Grid | None] = {}
        self.consumed: set[fx.Node] = set()
        self.report = FuseReport(options)
        self.exact = options.flavour == "exact"

    # ---------------------------------------------------------------------------------------- helpers

    def _emit(self, name: str, module: nn.Module, *args: fx.Node) -> fx.Node:
        assert name not in self.root, f"duplicate integer module {name}"
        self.root[name] = module
        self.report.descriptions[name] = f"{type(module).__name__}: {module.describe()}"  # type: ignore[operator]
        return self.graph.call_module(name, args)

    def _grid(self, node: fx.Node, user: str) -> Grid:
        grid = self.grids.get(node)
        if grid is None:
            raise RunError(
                f"{user}: its input {node.name!r} is not quantized (no activation quantizer before it), "
                "so the network has no integer-only form here"
            )
        return grid

    def _chain(self, node: fx.Node) -> _Chain:
        """Follows a layer's single users through Identity/Dropout, one BatchNorm and one quantizer."""
        chain = _Chain([])
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            if user.op != "call_module":
                break
            module = self.modules[_module_name(user)]
            if isinstance(module, BATCHNORMS) and chain.bn is None:
                chain.bn = user
            elif (found := self.reader.activation(module, _module_name(user))) is not None:
                grid, inner = found
                if isinstance(inner, nn.ReLU):
                    chain.relu = True
                elif not isinstance(inner, nn.Identity):
                    raise RunError(
                        f"{_module_name(user)}: activation {type(inner).__name__} before the quantizer has no "
                        "integer form (Linear or ReLU only)"
                    )
                chain.members.append(user)
                chain.act = (user, grid)
                break
            elif not isinstance(module, PASS_THROUGH):
                break
            chain.members.append(user)
            current = user
        return chain

    @staticmethod
    def _names(chain: _Chain, node: fx.Node, layer_name: str) -> dict[str, object]:
        """The Rescale module's name, and what verification needs to find its counterpart in the source."""
        tail = chain.tail
        pre = chain.act[0].args[0] if chain.act else None
        return {
            "rescale": f"{layer_name}_rescale" if tail is None else _module_name(tail),
            "source": node.name if tail is None else tail.name,
            "pre": pre.name if isinstance(pre, fx.Node) else None,
            "relu": chain.relu,
        }

    def _close(self, chain: _Chain, source_node: fx.Node, acc: fx.Node, info: FusedLayer, rescale: Rescale) -> None:
        out = self._emit(info.rescale, rescale, acc)
        tail = chain.tail or source_node
        self.consumed.update(chain.members)
        self.env[tail] = out
        self.grids[tail] = info.out
        self.report.layers.append(info)

    @staticmethod
    def _check_product(name: str, requant: Requant, acc_bound: float) -> None:
        if not product_fits(requant, acc_bound):
            raise RunError(f"{name}: its accumulator (up to {acc_bound:.3g}) times the {requant.mode} multiplier "
                           "would overflow 64-bit integers; use Floating-point or Fixed-point16")

    def _bound(self, rescale: Rescale, extra: float = 0.0) -> int | None:
        if not self.exact:
            return None
        return error_bound_lsb(rescale.params, extra)

    # -------------------------------------------------------------------------------------- patterns

    def weight_layer(self, node: fx.Node, module: nn.Module) -> None:
        name = _module_name(node)
        w = self.reader.weight(module, name)
        if w is None:
            raise RunError(f"{name}: {type(module).__name__} has no weight quantizer; only quantized layers "
                           "have an integer form (use -fuse to fold BatchNorm in floating point)")
        w = _float64_spacing(w)
        grid_in = self._grid(node.args[0], name)  # type: ignore[arg-type]
        chain = self._chain(node)
        bn = BatchNormParams.from_module(self.modules[_module_name(chain.bn)]) if chain.bn else None  # type: ignore
        act = chain.act[1] if chain.act else None
        bias = None if module.bias is None else module.bias.detach()  # type: ignore[union-attr]
        is_conv = isinstance(module, nn.Conv2d)
        layer = self._convert(name, w, bias, bn, act, grid_in, chain.relu, is_conv)
        span = max(abs(grid_in.lo - grid_in.zero), abs(grid_in.hi - grid_in.zero))
        if is_conv:
            assert isinstance(module, nn.Conv2d)
            if module.padding_mode != "zeros":
                raise RunError(f"{name}: padding mode {module.padding_mode!r} has no integer form (zeros only)")
            int_module: nn.Module = IntConv2d(
                layer.weight, layer.bias, module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                module.groups, grid_in.zero, span, layer.weight_codes, name,
            )
        else:
            int_module = IntLinear(layer.weight, layer.bias, grid_in.zero, span, layer.weight_codes, name)
        self._check_product(name, layer.requant, int_module.acc_bound)  # type: ignore[arg-type]
        acc = self._emit(name, int_module, self.env[node.args[0]])  # type: ignore[index]
        rescale = Rescale(layer.requant)
        info = FusedLayer(
            name=name, kind="conv" if is_conv else "fc", out=layer.out, out_unit=layer.out_unit,
            bound_lsb=self._bound(rescale), layer=layer, mask=w.mask, inputs=(node.args[0].name,),  # type: ignore
            input_grids=(grid_in,), definition=Definition(w, bias, bn, act),
            **self._names(chain, node, name),  # type: ignore[arg-type]
        )
        self._close(chain, node, acc, info, rescale)

    def _convert(
        self, name: str, w: object, bias: torch.Tensor | None, bn: BatchNormParams | None, act: ActQuant | None,
        grid_in: Grid, relu: bool, is_conv: bool,
    ) -> IntegerLayer:
        if self.exact:
            return exact_layer(w, bias, bn, act, grid_in, self.options, relu)  # type: ignore[arg-type]
        if is_conv:
            if bn is None or act is None:
                raise RunError(f"{name}: N2D2 converts a Conv only as Conv -> BatchNorm -> activation quantizer "
                               "(use the exact flavour)")
            return n2d2_conv_bn(w, bias, bn, act, grid_in, self.options)  # type: ignore[arg-type]
        if bn is not None:
            raise RunError(f"{name}: N2D2 does not fuse a BatchNorm after an Fc (use the exact flavour)")
        return n2d2_fc(w, bias, act, grid_in, self.options, signed=not relu)  # type: ignore[arg-type]

    def add(self, node: fx.Node, name: str, weights: torch.Tensor, shifts: torch.Tensor) -> None:
        inputs = [arg for arg in node.args if isinstance(arg, fx.Node)]
        grids = [self._grid(arg, name) for arg in inputs]
        chain = self._chain(node)
        if chain.bn is not None or chain.act is None:
            raise RunError(f"{name}: a Sum needs an activation quantizer after it (and no BatchNorm) to stay integer")
        integer_add = add_layer(grids, weights, shifts, chain.act[1], self.options, chain.relu)
        acc = self._emit(name, IntAdd(integer_add.multipliers, integer_add.zeros), *[self.env[a] for a in inputs])
        rescale = Rescale(integer_add.requant)
        info = FusedLayer(
            name=name, kind="add", out=integer_add.out, out_unit=chain.act[1].unit,
            bound_lsb=self._bound(rescale, integer_add.error), inputs=tuple(a.name for a in inputs),
            input_grids=tuple(grids),
            definition=Definition(act=chain.act[1], terms=(weights, shifts)),
            **self._names(chain, node, name),  # type: ignore[arg-type]
        )
        self._close(chain, node, acc, info, rescale)

    def requant(self, node: fx.Node, act: ActQuant, relu: bool) -> None:
        """A quantizer applied to levels (after a pool or a pass-through): a one-input IntAdd + Rescale."""
        name = _module_name(node)
        source = node.args[0]
        assert isinstance(source, fx.Node)
        grid = self._grid(source, name)
        ones = torch.ones(1, 1, dtype=torch.float64)
        integer_add = add_layer([grid], ones, torch.zeros(1, 1), act, self.options, relu)
        acc = self._emit(f"{name}_acc", IntAdd(integer_add.multipliers, integer_add.zeros), self.env[source])
        rescale = Rescale(integer_add.requant)
        info = FusedLayer(
            name=f"{name}_acc", rescale=name, source=node.name, kind="requant", out=integer_add.out,
            out_unit=act.unit, bound_lsb=self._bound(rescale, integer_add.error), inputs=(source.name,),
            input_grids=(grid,), pre=source.name, relu=relu,
            definition=Definition(act=act, terms=(ones, torch.zeros(1, 1))),
        )
        self._close(_Chain([]), node, acc, info, rescale)

    def pool(self, node: fx.Node, module: nn.Module) -> None:
        name = _module_name(node)
        grid = self._grid(node.args[0], name)  # type: ignore[arg-type]
        source = self.env[node.args[0]]  # type: ignore[index]
        if isinstance(module, (nn.MaxPool2d, FractionalMaxPool)):
            kind = IntMaxPool2d if isinstance(module, nn.MaxPool2d) else IntFractionalMaxPool
            self.env[node] = self._emit(name, kind(module), source)
            self.grids[node] = grid
            return
        assert isinstance(module, nn.AvgPool2d)
        pool = IntAvgPool2d(module, grid.zero, window_sum=self.exact, name=name)
        self.env[node] = self._emit(name, pool, source)
        self.grids[node] = pool.output_grid(grid)

    def same_op(self, node: fx.Node) -> None:
        """Copies a shape operation (or a shape module) onto the integer graph; the grid passes through."""
        if node.op == "call_module":
            name = _module_name(node)
            source = self.env[node.args[0]]  # type: ignore[index]
            self.env[node] = self._emit(name, _ShapeModule(self.modules[name]), source)
        else:
            self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
        first = node.args[0] if node.args else None
        self.grids[node] = self.grids.get(first) if isinstance(first, fx.Node) else None

    def concat(self, node: fx.Node) -> None:
        """Channel concatenation of levels on one grid (N2D2's multi-input cells)."""
        parts = node.args[0]
        assert isinstance(parts, (list, tuple))
        grids = [self._grid(part, node.name) for part in parts]  # type: ignore[arg-type]
        if any((g.unit, g.zero, g.integer) != (grids[0].unit, grids[0].zero, grids[0].integer) for g in grids):
            raise RunError(f"{node.name}: concatenated inputs have different activation grids "
                           f"({', '.join(f'unit {g.unit:.6g} zero {g.zero}' for g in grids)}); give them one quantizer")
        self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
        self.grids[node] = replace(grids[0], lo=min(g.lo for g in grids), hi=max(g.hi for g in grids))

    def pad(self, node: fx.Node) -> None:
        """A crop (negative padding), or zero padding of levels whose zero point is 0."""
        grid = self._grid(node.args[0], node.name)  # type: ignore[arg-type]
        pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", ())
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        grows = any(p > 0 for p in pads)  # type: ignore[union-attr]
        if grows and (mode != "constant" or value not in (None, 0) or grid.zero != 0):
            raise RunError(f"{node.name}: padding with anything but real zeros has no integer form")
        self.same_op(node)

    def passthrough(self, node: fx.Node) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        self.env[node] = self.env[source]
        self.grids[node] = self.grids.get(source)

    # ------------------------------------------------------------------------------------------ walk

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if INPUT_MODULE in self.root:
                raise RunError("the integer network supports one input")
            placeholder = self.graph.placeholder(node.name)
            self.env[node] = self._emit(INPUT_MODULE, IntInput(), placeholder)
            self.grids[node] = INPUT_GRID
        elif node.op == "output":
            self.graph.output(fx.map_arg(node.args[0], lambda n: self.env[n]))
        elif node.op == "call_module":
            self.visit_module(node, self.modules[_module_name(node)])
        elif node.op == "call_function" and node.target in ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
            self.add(node, node.name, torch.ones(2, 1), torch.zeros(2, 1))
        elif (node.op == "call_function" and node.target in SHAPE_FUNCTIONS) or (
            node.op == "call_method" and node.target in SHAPE_METHODS
        ):
            self.same_op(node)
        elif node.op == "call_function" and node.target is torch.cat:
            self.concat(node)
        elif node.op == "call_function" and node.target is F.pad:
            self.pad(node)
        else:
            raise RunError(f"{node.name}: {node.op} {node.target} has no integer form")

    def visit_module(self, node: fx.Node, module: nn.Module) -> None:
        name = _module_name(node)
        if isinstance(module, nn.ConvTranspose2d):
            raise RunError(f"{name}: transposed convolutions have no integer form in qatrun yet")
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            self.weight_layer(node, module)
        elif isinstance(module, ElemWise):
            if module.op != "Sum":
                raise RunError(f"{name}: ElemWise {module.op} has no integer form (Sum only)")
            self.add(node, name, module.weights, module.shifts)
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, FractionalMaxPool)):
            self.pool(node, module)
        elif isinstance(module, PASS_THROUGH) or (isinstance(module, Softmax) and module.with_loss):
            self.passthrough(node)
        elif isinstance(module, Softmax):
            self.report.notes.append(f"{name}: the integer network outputs the levels before the softmax")
            self.passthrough(node)
        elif isinstance(module, SHAPE_MODULES):
            self.same_op(node)
        elif (found := self.reader.activation(module, name)) is not None:
            act, inner = found
            if not isinstance(inner, (nn.Identity, nn.ReLU)):
                raise RunError(f"{name}: activation {type(inner).__name__} has no integer form (Linear or ReLU only)")
            self.requant(node, act, isinstance(inner, nn.ReLU))
        elif isinstance(module, BATCHNORMS):
            raise RunError(f"{name}: a BatchNorm must directly follow a Conv or Fc to be fused")
        else:
            raise RunError(f"{name}: {type(module).__name__} has no integer form")

    def build(self) -> tuple[fx.GraphModule, FuseReport]:
        for node in self.gm.graph.nodes:
            if node not in self.consumed:
                self.visit(node)
        if not self.exact and self.options.rescaling != "Floating-point":
            self.report.notes.append("N2D2 rescales Fc layers in floating point whatever -act-rescaling-mode says")
        if self.exact and "RINTF" in (
            self.options.weights_rounding, self.options.biases_rounding, self.options.clips_rounding
        ):
            self.report.notes.append("round modes are ignored by the exact flavour: its weights and biases are "
                                     "integers already and saturation replaces the clip")
        int_gm = fx.GraphModule(self.root, self.graph, class_name="IntegerNet")
        int_gm.eval()
        return int_gm, self.report


class _ShapeModule(nn.Module):
    """A shape module (Flatten, Reshape, Permute) applied to integer levels."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def describe(self) -> str:
        return type(self.inner).__name__.lower()


def integerize(
    gm: fx.GraphModule, options: FuseOptions | None = None, reader: QuantReader | None = None
) -> tuple[fx.GraphModule, FuseReport]:
    """Converts a fake-quantized network into an integer-only one.

    Args:
        gm: the quantized network (``qatrun.quant.prepare`` applied), evaluated with its running statistics.
        options: flavour, rescaling and round modes (default: exact, Floating-point).
        reader: how to read quantized modules (default: the ``qatrun.quant`` modules).

    Returns:
        ``(int_gm, report)``: ``int_gm(x)`` takes the same input as ``gm`` (x = p/255) and returns levels
        (int64), or float64 values for an unquantized output; ``report`` lists the integer layers.

    Raises:
        RunError: a part of the network has no integer-only form (the message names the module), or a
            parameter is not finite (the message names it).
    """
    refuse_non_finite(gm, "fuse")
    builder = _Builder(gm, options or FuseOptions(), reader or DefaultReader())
    return builder.build()
