"""The integer graph (``fuse.integerize``'s ``int_gm``) lowered to a list of C layers.

Each step of the list is one C function: an accumulating layer with its rescale (``IntConv2d`` or
``IntLinear`` or ``IntAdd``, then ``Rescale``), optionally with the max-pooling that follows it (a window
equal to its stride, no padding: the pooled maximum of rescaled levels is computed row by row, so the conv
output is never stored), a standalone max-pooling, or an average pooling (the window sum of ``q - z``, as
``IntAvgPool2d`` computes it). Shape changes (flatten, view, reshape) are aliases: activations are stored
CHW, the order of torch's contiguous tensors, so a reshape moves no byte.

Every value keeps the arithmetic of the module it comes from (:mod:`qatrun.fuse.intnet`): accumulators are
exact integers (int32 where the module's bound is below 2^31, else int64), and the rescale is
:func:`qatrun.fuse.scaling.requantize`, restated in C in ``qatrun_rescale.h``.

Weights are packed (:func:`pack_layer`): per layer, the integer weights ``W`` of the connected
(output, input channel) pairs are ``W = base + step u`` with ``u`` unsigned on ``bits`` bits, ``step`` the
greatest common divisor of ``W - base`` (SAT's Default mode levels ``2k - R`` have step 2, so 4-bit levels
take 4 bits); a pair whose kernel is all zeros (a partial ``Mapping``) is not stored and not computed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from qatrun.errors import RunError
from qatrun.export.onnx_graph import record_shapes
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
from qatrun.fuse.scaling import Requant
from qatrun.net.layers import Reshape

SHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous", "detach"}
INT32_LIMIT = 2**31
CTYPES = (("uint8_t", 0, 255, 1), ("int8_t", -128, 127, 1), ("int16_t", -(2**15), 2**15 - 1, 2),
          ("int32_t", -(2**31), 2**31 - 1, 4))
SIZES = {"uint8_t": 1, "int8_t": 1, "uint16_t": 2, "int16_t": 2, "int32_t": 4, "int64_t": 8, "double": 8, "float": 4}


def ctype_of(lo: int, hi: int) -> str:
    """The narrowest C integer type holding [lo, hi]."""
    for name, low, high, _ in CTYPES:
        if low <= lo and hi <= high:
            return name
    raise RunError(f"levels in [{lo}, {hi}] do not fit 32 bits: no C form")


@dataclass(eq=False)
class CTensor:
    """One activation tensor as the C code stores it (CHW).

    Attributes:
        name: C identifier stem (the fx node's name).
        shape: (C, H, W) or (I,).
        ctype: the element type (``uint8_t`` ... ``int32_t``, ``double`` for unquantized scores).
        lo: lowest level (unused for double).
        hi: highest level.
        zero: the level of real zero where the producer knows it.
        node: the fx node whose value this is (for the per-layer check).
        first: the step that writes it (-1: the network input).
        last: the last step that reads it.
        place: ``input``, ``output`` or ``arena``.
        offset: byte offset in the arena.
    """

    name: str
    shape: tuple[int, ...]
    ctype: str
    lo: int
    hi: int
    node: fx.Node
    first: int = -1
    last: int = -1
    place: str = "arena"
    offset: int = 0

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.count * SIZES[self.ctype]

    @property
    def align(self) -> int:
        return SIZES[self.ctype]


@dataclass
class Packed:
    """Packed weights of one layer: ``W = base + step u`` (see the module note).

    Attributes:
        data: the bytes (LSB first), or the raw int16 values when ``bits`` is 16.
        bits: bits per stored value (1 to 8), 16 for raw int16.
        base: the value of ``u = 0``.
        step: the grid step.
        connected: (O, C/groups) bool: the pairs stored and computed; None when all are.
        bit_offsets: (O,) first bit of each output channel (with a connection table).
        fan_in: C/groups * kH * kW.
    """

    data: np.ndarray
    bits: int
    base: int
    step: int
    connected: np.ndarray | None
    bit_offsets: np.ndarray | None
    fan_in: int

    @property
    def nbytes(self) -> int:
        extra = 0 if self.connected is None else self.connected.size + 4 * self.bit_offsets.size  # type: ignore
        return int(self.data.nbytes) + extra


def pack_layer(w: np.ndarray, name: str) -> Packed:
    """Packs integer weights (O, C/groups, kH, kW) or (O, I) (see the module note): with a connection table
    where the all-zero kernels exist and leaving them out takes fewer bytes, else densely."""
    w = w.astype(np.int64)
    if w.ndim == 2:
        w = w.reshape(*w.shape, 1, 1)
    pair_used = np.abs(w).reshape(w.shape[0], w.shape[1], -1).sum(axis=2) > 0
    dense = _pack(w, None, name)
    if pair_used.all() or not pair_used.any():
        return dense
    sparse = _pack(w, pair_used, name)
    return sparse if sparse.nbytes < dense.nbytes else dense


def _pack(w: np.ndarray, connected: np.ndarray | None, name: str) -> Packed:
    out, cpg, kh, kw = w.shape
    keep = w[connected] if connected is not None else w
    values = keep.reshape(-1)
    if int(np.abs(w).max(initial=0)) >= 2**15:
        raise RunError(f"{name}: weights beyond 16 bits have no C form here")
    base = int(values.min()) if values.size else 0
    shifted = values - base
    step = int(np.gcd.reduce(shifted)) if shifted.size and shifted.any() else 1
    codes = shifted // step
    bits = max(1, int(codes.max(initial=0)).bit_length())
    fan_in = cpg * kh * kw
    if bits > 8:  # raw int16: no packing
        return Packed(w.reshape(-1).astype(np.int16) if connected is None else values.astype(np.int16), 16, 0, 1,
                      connected, _offsets(connected, kh * kw, 16, out, fan_in), fan_in)
    bit_stream = ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    data = np.packbits(bit_stream, bitorder="little")
    return Packed(data, bits, base, step, connected, _offsets(connected, kh * kw, bits, out, fan_in), fan_in)


def _offsets(connected: np.ndarray | None, kernel: int, bits: int, out: int, fan_in: int) -> np.ndarray | None:
    """The first bit (or int16 index, for raw weights) of each output channel's stored weights."""
    if connected is None:
        return None
    per_channel = connected.sum(axis=1) * kernel * (bits if bits <= 8 else 1)
    return np.concatenate([[0], np.cumsum(per_channel)[:-1]]).astype(np.uint32)


def unpack(p: Packed, shape: tuple[int, ...]) -> np.ndarray:
    """The dense weights back from :class:`Packed` (for the tests: the inverse of :func:`pack_layer`)."""
    out = shape[0]
    cpg, kernel = (shape[1], int(np.prod(shape[2:]))) if len(shape) == 4 else (shape[1], 1)
    if p.bits == 16:
        values = p.data.astype(np.int64)
    else:
        bits = np.unpackbits(p.data, bitorder="little")
        usable = (bits.size // p.bits) * p.bits
        codes = (bits[:usable].reshape(-1, p.bits) << np.arange(p.bits)).sum(axis=1)
        values = p.base + p.step * codes.astype(np.int64)
    dense = np.zeros((out, cpg, kernel), dtype=np.int64)
    if p.connected is None:
        dense[:] = values[: dense.size].reshape(dense.shape)
    else:
        dense[p.connected] = values[: int(p.connected.sum()) * kernel].reshape(-1, kernel)
    return dense.reshape(shape)


@dataclass(eq=False)
class Step:
    """One C function of the network.

    Attributes:
        kind: ``conv``, ``fc``, ``add``, ``maxpool``, ``avgpool``, ``fmp`` (fractional max-pooling).
        name: the layer name (the fx target of the accumulating module, or of the pool).
        inputs: the tensors read.
        output: the tensor written.
        module: the integer module (IntConv2d, IntLinear, IntAdd, IntMaxPool2d, IntAvgPool2d,
            IntFractionalMaxPool).
        requant: the rescale (accumulating layers).
        pool: the fused max-pooling window (equal to its stride), 0 for none.
        packed: the packed weights.
        acc_type: ``int32_t`` or ``int64_t`` (``double`` for an Add with float multipliers).
        bias: (O,) integer bias.
        checked: the fx nodes whose values this step's output equals (the per-layer check).
    """

    kind: str
    name: str
    inputs: list[CTensor]
    output: CTensor
    module: nn.Module
    requant: Requant | None = None
    pool: int = 0
    packed: Packed | None = None
    acc_type: str = "int32_t"
    bias: np.ndarray | None = None
    checked: list[fx.Node] = field(default_factory=list)
    band: tuple[int, int] | None = None  # set by the emitter: (rows, accumulators) of a banded convolution

    @property
    def scratch_bytes(self) -> int:
        """Stack bytes of the step's temporaries (weight row, accumulator row, pooled rows)."""
        if self.kind in ("conv", "fc"):
            assert self.packed is not None
            total = 2 * self.packed.fan_in
            if self.band is not None:
                rows, length = self.band
                return total + length * SIZES[self.acc_type] + (rows * self.conv_width * SIZES[self.output.ctype]
                                                                if self.pool else 0)
            if self.kind == "conv":
                width = self.conv_width
                total += width * SIZES[self.acc_type] + max(1, self.pool) * width * SIZES[self.output.ctype]
            return total
        return 0

    @property
    def conv_width(self) -> int:
        """The width of the convolution's output (before its fused pooling)."""
        return self.output.shape[2] * self.pool if self.pool else self.output.shape[2]


@dataclass
class Lowered:
    """The network as C steps: its input, output, steps, and every tensor."""

    input: CTensor
    output: CTensor
    steps: list[Step]
    tensors: list[CTensor]
    input_steps: int
    shapes: dict[fx.Node, Any]


def _integral(t: Tensor) -> bool:
    return bool((t == torch.round(t)).all())


def _int_weights(m: IntConv2d | IntLinear, name: str) -> np.ndarray:
    w = m.weight.detach().cpu()
    if w.is_floating_point():
        if not _integral(w):
            raise RunError(f"{name}: its weights are not integers (the n2d2 flavour without -wt-round-mode RINTF); "
                           "they have no C form")
        w = torch.round(w)
    return w.to(torch.int64).numpy()


class Lowerer:
    """Walks ``int_gm`` node by node (as :class:`qatrun.export.onnx_int.IntWriter` does) into steps."""

    def __init__(self, int_gm: fx.GraphModule, sample: Tensor) -> None:
        self.gm = int_gm
        self.modules = dict(int_gm.named_modules())
        self.shapes = record_shapes(int_gm, sample.detach().cpu())
        self.env: dict[fx.Node, Any] = {}
        self.steps: list[Step] = []
        self.tensors: list[CTensor] = []
        self.input: CTensor | None = None
        self.input_steps = 255

    def _tensor(self, node: fx.Node, ctype: str, lo: int, hi: int) -> CTensor:
        shape = tuple(int(s) for s in self.shapes[node][1:])
        t = CTensor(node.name, shape, ctype, lo, hi, node)
        self.tensors.append(t)
        return t

    def _levels(self, node: Any, user: str) -> CTensor:
        value = self.env.get(node)
        if not isinstance(value, CTensor):
            raise RunError(f"{user}: its input {getattr(node, 'name', node)!r} is not a tensor of levels")
        return value

    def _single_user(self, node: fx.Node, kind: type) -> tuple[fx.Node, nn.Module] | None:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            module = self.modules[str(users[0].target)]
            if isinstance(module, kind):
                return users[0], module
        return None

    def lower(self) -> Lowered:
        consumed: set[fx.Node] = set()
        for node in self.gm.graph.nodes:
            if node in consumed:
                continue
            consumed |= self.visit(node)
        assert self.input is not None
        return Lowered(self.input, self.output, self.steps, self.tensors, self.input_steps, self.shapes)

    def visit(self, node: fx.Node) -> set[fx.Node]:
        if node.op == "placeholder":
            if self.env:
                raise RunError("the C export supports networks with one input")
            self.env[node] = "x"
        elif node.op == "output":
            result = node.args[0]
            if isinstance(result, (list, tuple)):
                if len(result) != 1:
                    raise RunError("the C export supports networks with one output")
                result = result[0]
            value = self._levels(result, "the network output")
            value.place = "output"
            self.output = value
        elif node.op == "call_module":
            return self.visit_module(node, self.modules[str(node.target)])
        elif (node.op == "call_function" and node.target in (torch.flatten, torch.reshape)) or (
            node.op == "call_method" and node.target in SHAPE_METHODS
        ):
            self.alias(node, node.args[0])
        elif (node.op == "call_method" and node.target == "size") or (
            node.op == "call_function" and node.target is operator.getitem and node.args[0] not in self.env
        ):
            pass
        else:
            raise RunError(f"{node.name}: {node.op} {getattr(node.target, '__name__', node.target)} has no C form "
                           "in this export")
        return set()

    def alias(self, node: fx.Node, source: Any) -> None:
        """A reshape of a CHW tensor: the same bytes under another shape."""
        x = self._levels(source, node.name)
        self.env[node] = x

    def visit_module(self, node: fx.Node, m: nn.Module) -> set[fx.Node]:
        name = str(node.target)
        if isinstance(m, IntInput):
            if m.steps > 255:
                raise RunError(f"the network input has {m.steps + 1} levels: the C export takes uint8 pixels")
            self.input_steps = m.steps
            t = self._tensor(node, "uint8_t", 0, m.steps)
            t.place = "input"
            self.input = t
            self.env[node] = t
            return set()
        if isinstance(m, (IntConv2d, IntLinear, IntAdd)):
            return self.accumulating(node, m, name)
        if isinstance(m, (IntMaxPool2d, IntFractionalMaxPool)):
            x = self._levels(node.args[0], name)
            out = self._tensor(node, x.ctype, x.lo, x.hi)
            self._step(Step("maxpool" if isinstance(m, IntMaxPool2d) else "fmp", name, [x], out, m, checked=[node]))
            self.env[node] = out
            return set()
        if isinstance(m, IntAvgPool2d):
            if not m.window_sum:
                raise RunError(f"{name}: the n2d2 flavour's float average pooling has no bit-exact C form")
            x = self._levels(node.args[0], name)
            lo, hi = (x.lo - m.input_zero) * m.window, (x.hi - m.input_zero) * m.window
            out = self._tensor(node, ctype_of(lo, hi), lo, hi)
            self._step(Step("avgpool", name, [x], out, m, checked=[node]))
            self.env[node] = out
            return set()
        if isinstance(m, Rescale):
            raise RunError(f"{name}: a Rescale must follow a Conv, Fc or Sum alone")
        inner = getattr(m, "inner", None)
        if isinstance(inner, (nn.Flatten, Reshape)):
            self.alias(node, node.args[0])
            return set()
        raise RunError(f"{name}: {type(m).__name__} has no C form in this export")

    def accumulating(self, node: fx.Node, m: nn.Module, name: str) -> set[fx.Node]:
        found = self._single_user(node, Rescale)
        if found is None:
            raise RunError(f"{name}: an accumulator must go to one Rescale alone in the C export")
        rescale_node, rescale = found
        p = rescale.params
        if isinstance(m, IntAdd):
            inputs = [self._levels(arg, name) for arg in node.args]
        else:
            inputs = [self._levels(node.args[0], name)]
        if p.quantized:
            out = self._tensor(rescale_node, ctype_of(p.lo, p.hi), p.lo, p.hi)
        else:
            out = self._tensor(rescale_node, "double", 0, 0)
        kind = "conv" if isinstance(m, IntConv2d) else "fc" if isinstance(m, IntLinear) else "add"
        step = Step(kind, name, inputs, out, m, requant=p, checked=[rescale_node])
        consumed = {rescale_node}
        if isinstance(m, (IntConv2d, IntLinear)):
            w = _int_weights(m, name)
            if m.codes is not None:  # the module computes step conv(x, k) - zero conv(x, mask): the same W
                codes = m.codes.detach().cpu().to(torch.int64).numpy()
                mask = m.mask.detach().cpu().to(torch.int64).numpy()  # type: ignore[union-attr]
                w = m.code_step * codes - m.code_zero * mask
            bias = m.bias.detach().cpu()
            if not _integral(bias):
                raise RunError(f"{name}: its bias is not an integer (the n2d2 flavour without -b-round-mode RINTF); "
                               "it has no C form")
            step.bias = torch.round(bias).to(torch.int64).numpy()
            step.packed = pack_layer(w, name)
            step.acc_type = "int32_t" if m.acc_bound < INT32_LIMIT else "int64_t"
            if isinstance(m, IntLinear) and len(inputs[0].shape) != 1 and inputs[0].count != w.shape[1]:
                raise RunError(f"{name}: its input has {inputs[0].count} values for {w.shape[1]} weights")
        else:
            step.acc_type = self._add_acc_type(m, inputs, name)
        if kind == "conv" and p.quantized:
            pooled = self._fusable_pool(rescale_node)
            if pooled is not None:
                pool_node, pool = pooled
                out.node = pool_node
                out.name = pool_node.name
                out.shape = tuple(int(s) for s in self.shapes[pool_node][1:])
                step.pool = pool
                step.checked.append(pool_node)
                consumed.add(pool_node)
                self.env[pool_node] = out
        self.env[rescale_node] = out
        self._step(step)
        return consumed

    def _add_acc_type(self, m: IntAdd, inputs: list[CTensor], name: str) -> str:
        if len({t.shape for t in inputs}) != 1:
            raise RunError(f"{name}: a Sum of tensors of different shapes has no C form")
        if not _integral(m.multipliers):
            return "double"
        bound = sum(float(m.multipliers[i].abs().max()) * max(abs(t.hi - z), abs(t.lo - z))
                    for i, (t, z) in enumerate(zip(inputs, m.zeros)))
        return "int32_t" if bound < INT32_LIMIT else "int64_t"

    def _fusable_pool(self, rescale_node: fx.Node) -> tuple[fx.Node, int] | None:
        """The max-pooling that alone reads a rescale's output, with a square window equal to its stride."""
        found = self._single_user(rescale_node, IntMaxPool2d)
        if found is None:
            return None
        pool_node, pool = found
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        k, s = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
        p, d = pair(pool.padding), pair(pool.dilation)
        if k[0] != k[1] or k != s or any(p) or d != (1, 1) or pool.ceil_mode:
            return None
        return pool_node, int(k[0])

    def _step(self, step: Step) -> None:
        index = len(self.steps)
        step.output.first = index
        for t in step.inputs:
            t.last = max(t.last, index)
        self.steps.append(step)


def lower(int_gm: fx.GraphModule, sample: Tensor) -> Lowered:
    """The C steps of an integer network (see the module note).

    Raises:
        RunError: a part of the network without a C form (the message names it).
    """
    low = Lowerer(int_gm, sample).lower()
    if not low.steps:
        raise RunError("the integer network has no layer to export")
    return low


def conv_geometry(m: IntConv2d, in_shape: tuple[int, ...], out_hw: tuple[int, int]) -> dict[str, int]:
    """The integers a C convolution loop needs."""
    c, h, w = in_shape
    return {"C": c, "H": h, "W": w, "O": int(m.weight.shape[0]), "CPG": c // m.groups,
            "OPG": int(m.weight.shape[0]) // m.groups, "KH": int(m.weight.shape[2]), "KW": int(m.weight.shape[3]),
            "SY": m.stride[0], "SX": m.stride[1], "PY": m.padding[0], "PX": m.padding[1],
            "DY": m.dilation[0], "DX": m.dilation[1], "OH": out_hw[0], "OW": out_hw[1]}


def pool_geometry(m: nn.Module) -> dict[str, int]:
    """Kernel, stride, padding (and dilation) of a pooling module, per axis."""
    pair = lambda v: (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))  # noqa: E731
    k, s, p = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
    d = pair(getattr(m, "dilation", 1))
    return {"KH": k[0], "KW": k[1], "SY": s[0], "SX": s[1], "PY": p[0], "PX": p[1], "DY": d[0], "DX": d[1]}


def node_values(int_gm: fx.GraphModule, x: Tensor) -> dict[fx.Node, Tensor]:
    """Every node's value on ``x`` (for the per-layer check)."""
    values: dict[fx.Node, Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            if isinstance(result, Tensor):
                values[n] = result
            return result

    with torch.no_grad():
        Recorder(int_gm).run(x)
    return values


__all__ = ["CTensor", "Lowered", "Packed", "Step", "conv_geometry", "ctype_of", "lower", "node_values",
           "pack_layer", "pool_geometry", "unpack"]
