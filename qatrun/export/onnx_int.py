"""The integer-only network (``fuse.integerize``'s ``int_gm``) as an ONNX graph that onnxruntime runs bit for bit.

Each integer module becomes ONNX operators that compute the same integers, and the same float64 (or
float32) rescale, operation for operation:

=============== ==========================================================================================
int_gm module   ONNX
=============== ==========================================================================================
IntInput        ``p = Round(Cast<double>(x) * 255)`` clipped to [0, 255], uint8 (or a uint8 graph input)
IntConv2d       ``acc = sum_j 256^j sum_s ConvInteger(plane_j(q), slice_s(W), zp_j, 128) + b``, int32
IntLinear       the same with MatMulInteger (weights transposed)
Rescale         ``v = Cast<double>(acc) * s + o``, rounded as the module rounds, Clip [lo, hi], Cast
                (Floating-point32: fused with its layer into one QLinearConv, see below)
                (Fixed-point/shift modes: ``floor((a M + O) / 2^n)`` in int64, floor as ``t - Mod(t, 2^n)``)
IntAdd          ``sum_i m_i (Cast<double>(q_i) - z_i)``, summed in input order as torch sums the stack
IntMaxPool2d    MaxPool on the uint8/int8 levels (float32 beyond 8 bits: exact below 2^24)
                (IntFractionalMaxPool: Gather + Reshape + ReduceMax per axis, on the same types)
IntAvgPool2d    the window sum of ``q - z``: a depthwise ConvInteger with a kernel of ones
shape modules   Flatten / Reshape / Transpose / Concat / Pad on the integers
=============== ==========================================================================================

Why this form. onnxruntime has ConvInteger and MatMulInteger (int32 accumulators) for uint8/int8 operands
only, with a per-tensor weight zero point. Both operands are given as uint8: MLAS's uint8 x int8 kernels
on x86 without VNNI add pairs of products with int16 saturation (the reason for onnxruntime's
``reduce_range``), its uint8 x uint8 kernels do not. So weights are stored as ``W + 128`` with zero point
128, split into slices ``W = sum_s W_s`` with every ``W_s`` in [-128, 127] when they do not fit (SAT
Default 8-bit levels ``2k - 255`` take two slices); the input levels ``q`` become ``u = q - lo`` in base-256
digits ``u = sum_j 256^j u_j`` when they span more than 256 values (the window sums after an average
pooling), each digit a uint8 plane whose zero point is the matching digit of ``z - lo``. ConvInteger
pads with the zero point, so every padded position is a real zero, as in ``IntConv2d``. The exact
integer accumulator is then the weighted sum of the partial products, in int32 when its bound allows
(int64 otherwise; each partial itself must stay below 2^31, which is checked).

The rescale repeats :func:`qatrun.fuse.scaling.requantize` literally: the accumulator is converted to
float64 (exact: it is an integer below 2^53), multiplied by the per-channel scale, the offset added (two
roundings, as torch does; onnxruntime fuses nothing with optimizations off), then rounded half away from
zero by ``sign(v) (floor(|v|) + (|v| - floor(|v|) >= 1/2))`` (exact: ``|v| - floor(|v|)`` is an exact
float subtraction), or half to even by ``Round``. For outputs saturated at ``lo >= 0`` (every SAT and LSQ
activation) the negative values saturate to ``lo`` under either rule, and round half up is
``floor(v + pred(1/2))``, ``pred(1/2)`` the float just below 1/2: the sum rounds up to the next integer
exactly when ``v`` is a tie (checked on every float32 in [0, 2^17) and around every tie below 70,000 in
float64; a plain ``floor(v + 1/2)`` errs at ``v = pred(1/2)``).

The fast form (``-act-rescaling-mode Floating-point32``). That mode's rescale is, by construction,
onnxruntime's ``QLinearConv`` requantization (:mod:`qatrun.fuse.scaling`): ``sat(rne(f32(acc + B) m) + z)``.
So an accumulating layer and its rescale become one ``QLinearConv`` (x_scale = y_scale = 1, w_scale = m
per channel, int8 weights with zero point 0, x_zero_point the input's zero point, which is also what it pads
with, as ``IntConv2d`` pads with real zeros; int32 bias B) with a uint8 output, then ``Clip`` to [lo, hi]
for outputs below 8 bits. An Fc is the same 1x1 ``QLinearConv`` between two Reshapes; a Sum is a 1x1
``QLinearConv`` over the ``Concat`` of its inputs with the branch multipliers on the diagonals (the zero
points move into the bias). onnxruntime then runs its blocked int8 kernels (NHWC with graph optimizations
on): 2-3x its float ``Conv`` at batch 256 on ResNet-20-sized layers (``scripts/bench_onnx.py``). A layer
takes this form only where it is exact on every x86 CPU: uint8 input levels, an int32 accumulator, one
output zero point, and int8 weights with ``2 max(q) max|W| <= 32767``: MLAS's uint8 x int8 kernels on
CPUs without AVX-512 VNNI/AVX-VNNI add pairs of products in int16 with saturation (4-bit activations and
weights are far below). Weights beyond that, such as the 8-bit first convolution's levels ``2k - 255`` on
8-bit pixels, are split into slices ``W = sum_s W_s`` that each meet it, applied to copies of the input
(``Concat``; up to 4 copies, ungrouped convolutions). Other layers keep the exact accumulation above
followed by the same arithmetic as ONNX operators: ``Cast<float>(acc + B) * m``, then ``Round`` (half to
even), ``+ z`` and ``Clip``, or one ``QuantizeLinear`` of scale 1 (``v / 1 = v``) for uint8 outputs.
A global average pooling is a ``ReduceSum`` in int32 there (the same window sum).

What is not reproduced: ``IntInput`` raises on inputs off the 1/255 grid; the ONNX graph rounds them (in
float32 in the fast form: ``QuantizeLinear(255 x)``, the same levels wherever ``IntInput`` accepts x).
The n2d2 flavour's float32 weights (not integers without ``-wt-round-mode RINTF``) and its float average
pooling have no integer form here (float sums in another order would not be bit-identical): exporting
them raises :class:`~qatrun.errors.RunError`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx import TensorProto
from torch import Tensor, fx, nn
from torch.nn import functional as F

from qatrun.errors import RunError
from qatrun.export.onnx_graph import NUMPY_TYPES, OnnxGraph, record_shapes
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
from qatrun.net.layers import Permute, Reshape

OPSET = 13
INT32_LIMIT = 2**31
MAX_INPUT_COPIES = 4  # weight slices over copies of the input (module note): 8-bit x 8-bit needs 4
INT16_PAIR_LIMIT = 2**15 - 1  # MLAS uint8 x int8 without VNNI: |x0 w0 + x1 w1| must fit int16
FUSED_MODE = "Floating-point32"
FLOAT32_EXACT = 2**24
WEIGHT_ZERO = 128  # uint8 weights are stored as W + 128 with this zero point

INPUT_KINDS = ("float", "uint8")
SHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
IDENTITY_METHODS = {"contiguous", "detach"}


@dataclass(frozen=True)
class Levels:
    """An integer tensor of levels in the ONNX graph.

    Attributes:
        name: the ONNX value.
        elem: its ONNX element type (uint8, int8, int32, int64; float32 after a wide max-pool).
        lo: lowest level it can hold.
        hi: highest level.
    """

    name: str
    elem: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Acc:
    """An accumulator: exact integers (int32/int64), or float64 when a non-integer bias was added."""

    name: str
    elem: int


@dataclass(frozen=True)
class FloatOut:
    """A float64 result (the unquantized logits)."""

    name: str


@dataclass(frozen=True)
class Pending:
    """An accumulating layer whose only user is a Floating-point32 Rescale: the Rescale writes both."""

    node: fx.Node
    module: nn.Module


def level_type(lo: int, hi: int) -> int:
    """Storage type of levels in [lo, hi]: uint8, int8, int32 or int64."""
    if 0 <= lo and hi <= 255:
        return TensorProto.UINT8
    if -128 <= lo and hi <= 127:
        return TensorProto.INT8
    if -INT32_LIMIT <= lo and hi < INT32_LIMIT:
        return TensorProto.INT32
    return TensorProto.INT64


def integer_array(t: Tensor, name: str) -> np.ndarray:
    """Integer weights as int64 numpy; float weights must hold integers."""
    if t.is_floating_point():
        if not bool((t == torch.round(t)).all()):
            raise RunError(f"{name}: its weights are not integers (the n2d2 flavour without -wt-round-mode RINTF); "
                           "they have no integer-only ONNX form")
        t = torch.round(t)
    return t.detach().cpu().to(torch.int64).numpy()


def weight_slices(w: np.ndarray, limit: int | None = None) -> list[np.ndarray]:
    """``W = sum_s W_s`` with every slice in [-128, 127], or in [-limit, limit] (one slice when W already fits)."""
    low, high = (-128, 127) if limit is None else (-limit, limit)
    slices = []
    rest = w.astype(np.int64)
    while True:
        part = np.clip(rest, low, high)
        slices.append(part)
        rest = rest - part
        if not rest.any():
            return slices


class IntWriter:
    """Writes one int_gm as ONNX (see the module note).

    Args:
        int_gm: the integer network from :func:`qatrun.fuse.integerize`.
        sample: an input batch (x in [0, 1] on the 1/255 grid) to learn the tensor shapes.
        input_kind: ``float`` (x, as int_gm takes it) or ``uint8`` (the pixels p = 255 x).
    """

    def __init__(self, int_gm: fx.GraphModule, sample: Tensor, input_kind: str = "float") -> None:
        if input_kind not in INPUT_KINDS:
            raise RunError(f"integer ONNX input must be one of {', '.join(INPUT_KINDS)}, found {input_kind!r}")
        self.gm = int_gm
        self.input_kind = input_kind
        self.modules = dict(int_gm.named_modules())
        self.shapes = record_shapes(int_gm, sample.detach().cpu())
        self.g = OnnxGraph("qatrun_integer", OPSET)
        self.env: dict[fx.Node, Any] = {}
        self._casts: dict[tuple[str, int], str] = {}
        self._planes: dict[tuple[str, int], list[tuple[str, str, int, int]]] = {}
        # A Floating-point32 network gets the fast form (module note); other modes keep the general one.
        self.fast = any(isinstance(mod, Rescale) and mod.mode == FUSED_MODE for mod in self.modules.values())

    # ------------------------------------------------------------------------------------------ helpers

    def _as(self, levels: Levels, elem: int) -> str:
        """The levels as ``elem`` (one Cast, shared by every consumer)."""
        if levels.elem == elem:
            return levels.name
        key = (levels.name, elem)
        if key not in self._casts:
            self._casts[key] = self.g.cast(levels.name, elem, f"{levels.name}_as_{elem}")
        return self._casts[key]

    def _channel(self, values: Tensor | np.ndarray, rank: int, dtype: Any) -> np.ndarray:
        """(C,) per-channel values shaped to broadcast against a rank-``rank`` (N, C, ...) tensor."""
        array = np.asarray(values.detach().cpu().numpy() if isinstance(values, Tensor) else values, dtype=dtype)
        return array.reshape(-1, *([1] * (rank - 2)))

    def _rank(self, node: fx.Node) -> int:
        return len(self.shapes[node])

    def _levels(self, node: fx.Node, user: str) -> Levels:
        value = self.env[node]
        if not isinstance(value, Levels):
            raise RunError(f"{user}: its input {node.name!r} is not an integer tensor of levels")
        return value

    def _planes_of(self, x: Levels, zero: int) -> list[tuple[str, str, int, int]]:
        """The uint8 operands of ``q - zero`` (module note): ``(digit plane, its zero point, 256^j, largest
        |digit - zero digit|)`` with ``q - zero = sum_j 256^j (digit_j - zero digit_j)``."""
        key = (x.name, zero)
        if key in self._planes:
            return self._planes[key]
        if x.lo >= 0 and x.hi <= 255:
            base, digits, kind = 0, 1, np.uint8
            u = self._as(x, TensorProto.UINT8)
        else:  # u = q - lo >= 0 in base 256
            base, digits = x.lo, max(1, math.ceil((x.hi - x.lo).bit_length() / 8))
            wide = TensorProto.INT64 if x.elem == TensorProto.INT64 else TensorProto.INT32
            kind = NUMPY_TYPES[wide]
            u = self.g.op("Sub", [self._as(x, wide), self.g.const("lo", np.array(base, dtype=kind))], f"{x.name}_u")
        zp = zero - base
        assert 0 <= zp <= x.hi - base, (zero, x)
        planes = []
        for j in range(digits):
            digit = u
            if digits > 1:
                if j:
                    digit = self.g.op("Div", [u, self.g.const("radix", np.array(256**j, dtype=kind))], f"{x.name}_d{j}")
                digit = self.g.op("Mod", [digit, self.g.const("byte", np.array(256, dtype=kind))], f"{x.name}_m{j}")
            if kind is not np.uint8:
                digit = self.g.cast(digit, TensorProto.UINT8, f"{x.name}_p{j}")
            top = min(255, (x.hi - base) >> (8 * j))
            z = (zp >> (8 * j)) & 255
            planes.append((digit, self.g.const("zp", np.array(z, dtype=np.uint8)), 256**j, max(z, top - z)))
        self._planes[key] = planes
        return planes

    # ---------------------------------------------------------------------------------- accumulation

    def _accumulate(
        self, x: Levels, zero: int, w: np.ndarray, bias: Tensor | None, hint: str, conv: dict[str, Any] | None
    ) -> Acc:
        """``sum W (q - zero) + bias`` exactly, from ConvInteger (``conv`` attributes) or MatMulInteger."""
        planes = self._planes_of(x, zero)
        slices = weight_slices(w)
        partials: list[tuple[str, int, float]] = []  # (int32 value, coefficient, bound)
        for s, part in enumerate(slices):
            stored = (part + WEIGHT_ZERO).astype(np.uint8)
            if conv is None:
                stored = stored.T.copy()  # MatMulInteger: (I, O)
            w_name = self.g.const(f"{hint}_w{s}", stored)
            w_zero = self.g.const("w_zero", np.array(WEIGHT_ZERO, dtype=np.uint8))
            l1 = float(np.abs(part).reshape(part.shape[0], -1).sum(axis=1).max()) if part.size else 0.0
            for digit, zp, coef, span in planes:
                if conv is None:
                    out = self.g.op("MatMulInteger", [digit, w_name, zp, w_zero], f"{hint}_mm")
                else:
                    out = self.g.op("ConvInteger", [digit, w_name, zp, w_zero], f"{hint}_conv", **conv)
                bound = l1 * span
                if bound >= INT32_LIMIT:
                    raise RunError(f"{hint}: a partial product can reach {bound:.3g}, beyond onnxruntime's int32 "
                                   "accumulators")
                partials.append((out, coef, bound))
        b = None if bias is None else bias.detach().cpu().double()
        integral_bias = b is None or bool((b == torch.round(b)).all())
        b_max = float(b.abs().max()) if b is not None and b.numel() else 0.0
        total = sum(coef * bound for _, coef, bound in partials) + b_max
        elem = TensorProto.INT32 if total < INT32_LIMIT else TensorProto.INT64
        acc = None
        for out, coef, _ in partials:
            term = out if elem == TensorProto.INT32 else self.g.cast(out, elem, f"{hint}_i64")
            if coef != 1:
                term = self.g.op("Mul", [term, self.g.const("radix", np.array(coef, dtype=NUMPY_TYPES[elem]))],
                                 f"{hint}_scaled")
            acc = term if acc is None else self.g.op("Add", [acc, term], f"{hint}_sum")
        assert acc is not None
        rank = 4 if conv is not None else 2
        if b is not None and b_max > 0:
            if integral_bias:
                acc = self.g.op("Add", [acc, self.g.const(f"{hint}_b", self._channel(b, rank, NUMPY_TYPES[elem]))],
                                f"{hint}_acc")
            else:  # n2d2 flavour without bias rounding: the float64 sum int_gm computes
                acc = self.g.op("Add", [self.g.cast(acc, TensorProto.DOUBLE, f"{hint}_f64"),
                                        self.g.const(f"{hint}_b", self._channel(b, rank, np.float64))], f"{hint}_acc")
                return Acc(acc, TensorProto.DOUBLE)
        return Acc(acc, elem)

    def conv(self, node: fx.Node, m: IntConv2d) -> None:
        x = self._levels(node.args[0], node.target)  # type: ignore[arg-type]
        attrs = {
            "strides": list(m.stride), "pads": [*m.padding, *m.padding], "dilations": list(m.dilation),
            "group": m.groups,
        }
        w = integer_array(m.weight, str(node.target))
        self.env[node] = self._accumulate(x, m.input_zero, w, m.bias, str(node.target), attrs)

    def linear(self, node: fx.Node, m: IntLinear) -> None:
        x = self._levels(node.args[0], node.target)  # type: ignore[arg-type]
        w = integer_array(m.weight, str(node.target))
        self.env[node] = self._accumulate(x, m.input_zero, w, m.bias, str(node.target), None)

    def avg_pool(self, node: fx.Node, m: IntAvgPool2d) -> None:
        name = str(node.target)
        if not m.window_sum:
            raise RunError(f"{name}: the n2d2 flavour's float average pooling has no bit-exact ONNX form")
        x = self._levels(node.args[0], name)
        in_shape = self.shapes[node.args[0]]  # type: ignore[index]
        if self.fast and tuple(m.kernel_size) == tuple(in_shape[2:]) and not any(m.padding):
            self._global_sum(node, m, x)
            return
        channels = in_shape[1]
        ones = np.ones((channels, 1, *m.kernel_size), dtype=np.int64)
        attrs = {"strides": list(m.stride), "pads": [*m.padding, *m.padding], "group": channels}
        acc = self._accumulate(x, m.input_zero, ones, None, name, attrs)
        lo, hi = (x.lo - m.input_zero) * m.window, (x.hi - m.input_zero) * m.window
        self.env[node] = Levels(acc.name, acc.elem, lo, hi)

    def _global_sum(self, node: fx.Node, m: IntAvgPool2d, x: Levels) -> None:
        """A window covering the whole map: ``ReduceSum`` of ``q - z`` over H and W, in int32 (or int64)."""
        name = str(node.target)
        lo, hi = (x.lo - m.input_zero) * m.window, (x.hi - m.input_zero) * m.window
        elem = TensorProto.INT32 if max(abs(lo), abs(hi), abs(x.lo), abs(x.hi)) < INT32_LIMIT else TensorProto.INT64
        value = self._as(x, elem)
        if m.input_zero:
            value = self.g.op("Sub", [value, self.g.const("zero", np.array(m.input_zero, NUMPY_TYPES[elem]))],
                              f"{name}_c")
        axes = self.g.const("hw", np.array([2, 3], dtype=np.int64))
        self.env[node] = Levels(self.g.op("ReduceSum", [value, axes], name, keepdims=1), elem, lo, hi)

    def add(self, node: fx.Node, m: IntAdd) -> None:
        name = str(node.target)
        rank = self._rank(node)
        acc = None
        for i, arg in enumerate(node.args):
            x = self._levels(arg, name)  # type: ignore[arg-type]
            term = self._as(x, TensorProto.DOUBLE)
            if m.zeros[i]:
                term = self.g.op("Sub", [term, self.g.const("zero", np.array(float(m.zeros[i])))], f"{name}_c{i}")
            if bool((m.multipliers[i] != 1).any()):  # x * 1.0 is x exactly
                multiplier = self.g.const(f"{name}_m{i}", self._channel(m.multipliers[i], rank, np.float64))
                term = self.g.op("Mul", [term, multiplier], f"{name}_t{i}")
            acc = term if acc is None else self.g.op("Add", [acc, term], f"{name}_sum")
        assert acc is not None
        self.env[node] = Acc(acc, TensorProto.DOUBLE)

    # --------------------------------------------------------------------------------------- rescale

    def _round(self, v: str, rounding: str, lo: int, hint: str, dtype: Any) -> str:
        """Rounds to integers exactly as :func:`qatrun.fuse.scaling.round_levels` (see the module note)."""
        if rounding == "half_even":
            return self.g.op("Round", [v], f"{hint}_round")
        if lo >= 0:  # negative values saturate to lo >= 0 under either rule: round half up suffices
            below_half = self.g.const("below_half", np.nextafter(np.array(0.5, dtype=dtype), dtype(0)))
            return self.g.op("Floor", [self.g.op("Add", [v, below_half], f"{hint}_plus")], f"{hint}_round")
        half = self.g.const("half", np.array(0.5, dtype=dtype))
        magnitude = self.g.op("Abs", [v], f"{hint}_abs")
        whole = self.g.op("Floor", [magnitude], f"{hint}_floor")
        frac = self.g.op("Sub", [magnitude, whole], f"{hint}_frac")
        up = self.g.cast(self.g.op("GreaterOrEqual", [frac, half], f"{hint}_tie"), _FLOAT_ELEM[dtype], f"{hint}_up")
        rounded = self.g.op("Add", [whole, up], f"{hint}_rounded")
        return self.g.op("Mul", [rounded, self.g.op("Sign", [v], f"{hint}_sign")], f"{hint}_signed")

    def rescale(self, node: fx.Node, m: Rescale) -> None:
        name = str(node.target)
        acc = self.env[node.args[0]]  # type: ignore[index]
        if isinstance(acc, Pending):
            fused = self._qlinear(acc, m.params, name)
            if fused is not None:
                self.env[node] = fused
                return
            acc = self._materialize(acc)
        if not isinstance(acc, Acc):
            raise RunError(f"{name}: a Rescale must follow an accumulating layer")
        p = m.params
        rank = self._rank(node)
        value, elem = acc.name, acc.elem
        if p.clip is not None:  # N2D2's min(max(acc, 0), clip), in float64 as int_gm computes it
            value = self.g.cast(value, TensorProto.DOUBLE, f"{name}_f64") if elem != TensorProto.DOUBLE else value
            elem = TensorProto.DOUBLE
            value = self.g.op("Max", [value, self.g.const("zero", np.array(0.0))], f"{name}_pos")
            value = self.g.op("Min", [value, self.g.const(f"{name}_clip", self._channel(p.clip, rank, np.float64))],
                              f"{name}_clipped")
        if not p.quantized:
            value = self.g.cast(value, TensorProto.DOUBLE, f"{name}_f64") if elem != TensorProto.DOUBLE else value
            value = self.g.op("Mul", [value, self.g.const(f"{name}_s", self._channel(p.scale, rank, np.float64))],
                              f"{name}_v")
            value = self.g.op("Add", [value, self.g.const(f"{name}_o", self._channel(p.offset, rank, np.float64))],
                              f"{name}_out")
            self.env[node] = FloatOut(value)
            return
        if p.mode == FUSED_MODE:
            self.env[node] = self._float32_rescale(value, elem, p, rank, name)
            return
        if p.integer:
            levels = self._integer_rescale(value, elem, p, rank, name)
        else:
            dtype = np.float32 if p.float32 else np.float64
            float_elem = _FLOAT_ELEM[dtype]
            v = self.g.cast(value, float_elem, f"{name}_f") if elem != float_elem else value
            v = self.g.op("Mul", [v, self.g.const(f"{name}_s", self._channel(p.scale, rank, dtype))], f"{name}_v")
            v = self.g.op("Add", [v, self.g.const(f"{name}_o", self._channel(p.offset, rank, dtype))], f"{name}_vo")
            y = self._round(v, p.rounding, p.lo, name, dtype)
            levels = self.g.op("Clip", [y, self.g.const("lo", np.array(p.lo, dtype=dtype)),
                                        self.g.const("hi", np.array(p.hi, dtype=dtype))], f"{name}_sat")
        out_elem = level_type(p.lo, p.hi)
        self.env[node] = Levels(self.g.cast(levels, out_elem, name), out_elem, p.lo, p.hi)

    def _float32_rescale(self, value: str, elem: int, p: Any, rank: int, name: str) -> Levels:
        """``clip(Round(Cast<float>(acc + B) * m) + z, lo, hi)``: Floating-point32 outside a QLinearConv."""
        if p.bias is not None:  # in float64, exact: both are integers below 2^53
            value = self.g.cast(value, TensorProto.DOUBLE, f"{name}_f64") if elem != TensorProto.DOUBLE else value
            value = self.g.op("Add", [value, self.g.const(f"{name}_B", self._channel(p.bias, rank, np.float64))],
                              f"{name}_acc")
        v = self.g.cast(value, TensorProto.FLOAT, f"{name}_f32")  # one rounding to nearest even
        v = self.g.op("Mul", [v, self.g.const(f"{name}_m", self._channel(p.scale, rank, np.float32))], f"{name}_v")
        return self._round_saturate(v, p, rank, name)

    def _round_saturate(self, v: str, p: Any, rank: int, name: str) -> Levels:
        """The levels ``clip(rne(v) + z, lo, hi)`` of a float32 ``v``: one QuantizeLinear (scale 1: ``v / 1``
        is exact) for uint8 outputs with one zero point, else Round, Add, Clip, Cast."""
        zero = p.offset.detach().cpu().to(torch.int64)
        if 0 <= p.lo and p.hi <= 255 and zero.numel() and bool((zero == zero[0]).all()):
            y = self.g.op("QuantizeLinear", [v, self.g.const("one", np.array(1.0, dtype=np.float32)),
                                             self.g.const("zp", np.array(int(zero[0]), np.uint8))], f"{name}_q")
            if (p.lo, p.hi) != (0, 255):
                y = self.g.op("Clip", [y, self.g.const("lo", np.array(p.lo, np.uint8)),
                                       self.g.const("hi", np.array(p.hi, np.uint8))], f"{name}_sat")
            return Levels(y, TensorProto.UINT8, p.lo, p.hi)
        y = self.g.op("Round", [v], f"{name}_round")
        if bool(p.offset.any()):
            y = self.g.op("Add", [y, self.g.const(f"{name}_z", self._channel(p.offset, rank, np.float32))], f"{name}_z")
        y = self.g.op("Clip", [y, self.g.const("lo", np.array(p.lo, dtype=np.float32)),
                               self.g.const("hi", np.array(p.hi, dtype=np.float32))], f"{name}_sat")
        out_elem = level_type(p.lo, p.hi)
        return Levels(self.g.cast(y, out_elem, name), out_elem, p.lo, p.hi)

    # --------------------------------------------------------------------------- the fast form: QLinearConv

    def _fused_rescale(self, node: fx.Node) -> bool:
        """Whether the only user of an accumulating node is a Floating-point32 Rescale."""
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            return False
        user = self.modules[str(users[0].target)]
        return isinstance(user, Rescale) and user.mode == FUSED_MODE and user.clip is None

    def _materialize(self, pending: Pending) -> Acc:
        """The exact accumulator of a pending layer (the general form, module note)."""
        handlers = {IntConv2d: self.conv, IntLinear: self.linear, IntAdd: self.add}
        handlers[type(pending.module)](pending.node, pending.module)  # type: ignore[operator]
        return self.env[pending.node]

    def _qlinear(self, pending: Pending, p: Any, name: str) -> Levels | None:
        """The layer and its rescale as one QLinearConv (module note), or None where that is not exact."""
        zero = p.offset.detach().cpu().to(torch.int64)
        if not (0 <= p.lo and p.hi <= 255) or zero.numel() == 0 or bool((zero != zero[0]).any()):
            return None
        m = pending.module
        node = pending.node
        if isinstance(m, IntAdd):
            operands = self._add_operands(node, m)
        else:
            operands = self._layer_operands(node, m)
        if operands is None:
            return None
        x, x_zero, x_hi, w, bias, spatial = operands
        if p.bias is not None:
            bias = bias + p.bias.detach().cpu().to(torch.int64).numpy()
        l1 = np.abs(w).reshape(w.shape[0], -1).sum(axis=1)
        if float((l1 * max(x_hi, x_zero) + np.abs(bias)).max()) >= INT32_LIMIT:  # raw sum w q, and sum w (q - z)
            return None
        # Each product |w x| <= 2^14 - 1, so no pair of them saturates int16; weights beyond that (or beyond
        # int8) are split into slices W = sum_s W_s, each applied to its own copy of the input.
        limit = min(127, INT16_PAIR_LIMIT // (2 * x_hi)) if x_hi > 0 else 127
        copies = max(1, math.ceil(int(np.abs(w).max()) / limit)) if w.size else 1
        if copies > MAX_INPUT_COPIES or (copies > 1 and spatial.get("group", 1) != 1):
            return None
        if copies > 1:
            slices = weight_slices(w, limit)
            assert len(slices) == copies, (len(slices), copies)
            w = np.concatenate(slices, axis=1)  # (O, copies * I, kH, kW)
            x = self.g.op("Concat", [x] * copies, f"{name}_copies", axis=1)
        channels = w.shape[0]
        inputs = [
            x, self.g.const("one", np.array(1.0, dtype=np.float32)), self.g.const("zp", np.array(x_zero, np.uint8)),
            self.g.const(f"{name}_w", w.astype(np.int8)),
            self.g.const(f"{name}_m", p.scale.detach().cpu().numpy().astype(np.float32)),
            self.g.const(f"{name}_wz", np.zeros(channels, dtype=np.int8)),
            self.g.const("one", np.array(1.0, dtype=np.float32)),
            self.g.const("zp", np.array(int(zero[0]), np.uint8)),
            self.g.const(f"{name}_B", bias.astype(np.int32)),
        ]
        out = self.g.op("QLinearConv", inputs, f"{name}_q", **spatial)
        if (p.lo, p.hi) != (0, 255):
            out = self.g.op("Clip", [out, self.g.const("lo", np.array(p.lo, np.uint8)),
                                     self.g.const("hi", np.array(p.hi, np.uint8))], f"{name}_sat")
        if isinstance(m, IntLinear):
            out = self.g.op("Reshape", [out, self.g.const("flat", np.array([0, -1], dtype=np.int64))], f"{name}_flat")
        return Levels(out, TensorProto.UINT8, p.lo, p.hi)

    def _layer_operands(self, node: fx.Node, m: nn.Module) -> tuple | None:
        """``(x, x zero point, max x, int weights (O, I, kH, kW), int bias, conv attributes)`` of a Conv/Fc."""
        x = self._levels(node.args[0], str(node.target))  # type: ignore[arg-type]
        if x.elem != TensorProto.UINT8 or not 0 <= m.input_zero <= 255:
            return None
        bias = m.bias.detach().cpu().double()
        if not bool((bias == torch.round(bias)).all()):
            return None
        w = integer_array(m.weight, str(node.target))
        if isinstance(m, IntConv2d):
            spatial = {"kernel_shape": list(w.shape[2:]), "strides": list(m.stride),
                       "pads": [*m.padding, *m.padding], "dilations": list(m.dilation), "group": m.groups}
            name = x.name
        else:  # (N, I) -> (N, I, 1, 1): a 1x1 convolution
            w = w.reshape(*w.shape, 1, 1)
            spatial = {"kernel_shape": [1, 1]}
            shape = self.g.const(f"{node.target}_4d", np.array([0, -1, 1, 1], dtype=np.int64))
            name = self.g.op("Reshape", [x.name, shape], f"{node.target}_4d")
        return name, m.input_zero, x.hi, w, bias.to(torch.int64).numpy(), spatial

    def _add_operands(self, node: fx.Node, m: IntAdd) -> tuple | None:
        """The Sum as a 1x1 convolution over the Concat of its inputs: ``W[c, i C + c] = R_i[c]``, zero
        points in the bias ``-sum_i R_i[c] z_i``."""
        parts = [self._levels(arg, str(node.target)) for arg in node.args]  # type: ignore[arg-type]
        shapes = {tuple(self.shapes[arg]) for arg in node.args}  # type: ignore[index]
        if len(shapes) != 1 or len(next(iter(shapes))) != 4 or any(x.elem != TensorProto.UINT8 for x in parts):
            return None
        multipliers = m.multipliers.detach().cpu()
        if not bool((multipliers == torch.round(multipliers)).all()):
            return None
        r = multipliers.to(torch.int64).numpy()  # (n, C)
        n, channels = r.shape
        w = np.zeros((channels, n * channels, 1, 1), dtype=np.int64)
        for i in range(n):
            w[np.arange(channels), i * channels + np.arange(channels), 0, 0] = r[i]
        bias = -sum(r[i] * m.zeros[i] for i in range(n))
        x = parts[0].name
        if n > 1:
            x = self.g.op("Concat", [part.name for part in parts], f"{node.target}_cat", axis=1)
        return x, 0, max(part.hi for part in parts), w, np.asarray(bias, dtype=np.int64), {"kernel_shape": [1, 1]}

    def _integer_rescale(self, value: str, elem: int, p: Any, rank: int, name: str) -> str:
        """``clamp(floor((a M + O) / 2^n), lo, hi)`` in int64, ``a`` the accumulator rounded half away."""
        if elem == TensorProto.DOUBLE:
            value = self.g.cast(self._round(value, "half_away", -1, name, np.float64), TensorProto.INT64, f"{name}_a")
        elif elem != TensorProto.INT64:
            value = self.g.cast(value, TensorProto.INT64, f"{name}_a")
        multiplier = self.g.const(f"{name}_M", self._channel(p.multiplier, rank, np.int64))
        t = self.g.op("Mul", [value, multiplier], f"{name}_aM")
        t = self.g.op("Add", [t, self.g.const(f"{name}_O", self._channel(p.integer_offset(), rank, np.int64))],
                      f"{name}_t")
        divisor = self.g.const(f"{name}_2n", self._channel(torch.pow(2, p.shift), rank, np.int64))
        rest = self.g.op("Mod", [t, divisor], f"{name}_rest", fmod=0)  # in [0, 2^n): floor division below
        y = self.g.op("Div", [self.g.op("Sub", [t, rest], f"{name}_floor"), divisor], f"{name}_shift")
        return self.g.op("Clip", [y, self.g.const("lo", np.array(p.lo, dtype=np.int64)),
                                  self.g.const("hi", np.array(p.hi, dtype=np.int64))], f"{name}_sat")

    # ------------------------------------------------------------------------------------ other layers

    def input(self, node: fx.Node, m: IntInput) -> None:
        x = self.env[node.args[0]]  # type: ignore[index]
        steps = m.steps
        elem = level_type(0, steps)
        if self.input_kind == "uint8":
            if steps > 255:
                raise RunError(f"the network input has {steps + 1} levels: it does not fit a uint8 input")
            self.env[node] = Levels(x, TensorProto.UINT8, 0, steps)
            return
        if self.fast and steps == 255:
            # float32 is enough where IntInput accepts x (|255 x - p| <= 1e-3): its product errs by 2^-16
            p = self.g.op("Mul", [x, self.g.const("steps", np.array(float(steps), np.float32))], "x_scaled")
            p = self.g.op("QuantizeLinear", [p, self.g.const("one", np.array(1.0, dtype=np.float32)),
                                             self.g.const("zp", np.array(0, np.uint8))], "input_int")
            self.env[node] = Levels(p, TensorProto.UINT8, 0, steps)
            return
        p = self.g.cast(x, TensorProto.DOUBLE, "x_f64")
        p = self.g.op("Mul", [p, self.g.const("steps", np.array(float(steps)))], "x_scaled")  # as x.double() * 255
        p = self.g.op("Clip", [self.g.op("Round", [p], "x_round"), self.g.const("lo", np.array(0.0)),
                               self.g.const("hi", np.array(float(steps)))], "x_sat")
        self.env[node] = Levels(self.g.cast(p, elem, "input_int"), elem, 0, steps)

    def _max_input(self, node: fx.Node, name: str) -> Levels:
        """The levels a maximum reads: uint8/int8 as they are, wider levels as float32 (exact below 2^24)."""
        x = self._levels(node.args[0], name)  # type: ignore[arg-type]
        if x.elem in (TensorProto.UINT8, TensorProto.INT8):
            return x
        if max(abs(x.lo), abs(x.hi)) >= FLOAT32_EXACT:
            raise RunError(f"{name}: max-pooling levels beyond 2^24 has no exact onnxruntime kernel")
        return Levels(self._as(x, TensorProto.FLOAT), TensorProto.FLOAT, x.lo, x.hi)

    def max_pool(self, node: fx.Node, m: IntMaxPool2d) -> None:
        name = str(node.target)
        x = self._max_input(node, name)
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        attrs = {"kernel_shape": pair(m.kernel_size), "strides": pair(m.stride), "pads": pair(m.padding) * 2,
                 "dilations": pair(m.dilation), "ceil_mode": int(m.ceil_mode)}
        self.env[node] = Levels(self.g.op("MaxPool", [x.name], name, **attrs), x.elem, x.lo, x.hi)

    def fractional_max_pool(self, node: fx.Node, m: IntFractionalMaxPool) -> None:
        name = str(node.target)
        x = self._max_input(node, name)
        pooled = self.g.region_max(x.name, m.rows.numpy(), m.cols.numpy(), name)
        self.env[node] = Levels(pooled, x.elem, x.lo, x.hi)

    def reshape(self, node: fx.Node, source: fx.Node) -> None:
        """Any shape change: Reshape to the recorded shape, batch dimension copied (``0``)."""
        x = self._levels(source, node.name)
        shape = np.array([0, *self.shapes[node][1:]], dtype=np.int64)
        out = self.g.op("Reshape", [x.name, self.g.const(f"{node.name}_shape", shape)], node.name)
        self.env[node] = Levels(out, x.elem, x.lo, x.hi)

    def transpose(self, node: fx.Node, source: fx.Node, perm: list[int]) -> None:
        x = self._levels(source, node.name)
        self.env[node] = Levels(self.g.op("Transpose", [x.name], node.name, perm=perm), x.elem, x.lo, x.hi)

    def concat(self, node: fx.Node) -> None:
        parts = [self._levels(p, node.name) for p in node.args[0]]  # type: ignore[union-attr]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        lo, hi = min(p.lo for p in parts), max(p.hi for p in parts)
        elem = level_type(lo, hi)
        if any(p.elem == TensorProto.FLOAT for p in parts):
            elem = TensorProto.FLOAT
        names = [self._as(p, elem) for p in parts]
        self.env[node] = Levels(self.g.op("Concat", names, node.name, axis=int(dim)), elem, lo, hi)  # type: ignore

    def pad(self, node: fx.Node) -> None:
        """``F.pad`` with zeros (the zero point is 0, as fusion checked) or a crop (negative pads)."""
        x = self._levels(node.args[0], node.name)  # type: ignore[arg-type]
        pads = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])  # type: ignore[arg-type]
        rank = self._rank(node)
        begin, end = [0] * rank, [0] * rank
        for k in range(len(pads) // 2):  # torch lists (first, last) pairs from the last dimension back
            begin[rank - 1 - k], end[rank - 1 - k] = int(pads[2 * k]), int(pads[2 * k + 1])
        pads_name = self.g.const(f"{node.name}_pads", np.array(begin + end, dtype=np.int64))
        lo, hi = min(x.lo, 0), max(x.hi, 0)
        self.env[node] = Levels(self.g.op("Pad", [x.name, pads_name], node.name), x.elem, lo, hi)

    # ---------------------------------------------------------------------------------------- walk

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if self.env:
                raise RunError("the integer ONNX export supports one input")
            shape = ["N", *self.shapes[node][1:]]
            elem = TensorProto.FLOAT if self.input_kind == "float" else TensorProto.UINT8
            self.env[node] = self.g.input("x", elem, shape)
        elif node.op == "output":
            self.outputs(node.args[0])
        elif node.op == "call_module":
            self.visit_module(node, self.modules[str(node.target)])
        elif node.op == "call_function" and node.target is torch.flatten:
            self.reshape(node, node.args[0])  # type: ignore[arg-type]
        elif node.op == "call_function" and node.target is torch.reshape:
            self.reshape(node, node.args[0])  # type: ignore[arg-type]
        elif node.op == "call_function" and node.target is torch.cat:
            self.concat(node)
        elif node.op == "call_function" and node.target is F.pad:
            self.pad(node)
        elif node.op == "call_method" and node.target in SHAPE_METHODS:
            self.reshape(node, node.args[0])  # type: ignore[arg-type]
        elif node.op == "call_method" and node.target == "permute":
            dims = node.args[1:] if not isinstance(node.args[1], (list, tuple)) else node.args[1]
            self.transpose(node, node.args[0], [int(d) for d in dims])  # type: ignore[arg-type,union-attr]
        elif node.op == "call_method" and node.target in IDENTITY_METHODS:
            self.env[node] = self.env[node.args[0]]  # type: ignore[index]
        elif (node.op == "call_method" and node.target == "size") or (
            node.op == "call_function" and node.target is operator.getitem and node.args[0] not in self.env
        ):
            pass  # shape arithmetic: the recorded output shapes stand for it
        else:
            raise RunError(f"{node.name}: {node.op} {node.target} has no integer ONNX form")

    def visit_module(self, node: fx.Node, m: nn.Module) -> None:
        if isinstance(m, (IntConv2d, IntLinear, IntAdd)) and self._fused_rescale(node):
            self.env[node] = Pending(node, m)  # its Rescale decides the form
            return
        handlers = (
            (IntInput, self.input), (IntConv2d, self.conv), (IntLinear, self.linear), (Rescale, self.rescale),
            (IntAdd, self.add), (IntMaxPool2d, self.max_pool), (IntAvgPool2d, self.avg_pool),
            (IntFractionalMaxPool, self.fractional_max_pool),
        )
        for kind, handler in handlers:
            if isinstance(m, kind):
                handler(node, m)  # type: ignore[operator]
                return
        inner = getattr(m, "inner", None)  # fuse's shape-module wrapper
        if isinstance(inner, (nn.Flatten, Reshape)):
            self.reshape(node, node.args[0])  # type: ignore[arg-type]
        elif isinstance(inner, Permute):
            self.transpose(node, node.args[0], list(inner.perm))  # type: ignore[arg-type]
        else:
            raise RunError(f"{node.target}: {type(m).__name__} has no integer ONNX form")

    def outputs(self, result: Any) -> None:
        values = list(result) if isinstance(result, (list, tuple)) else [result]
        for k, value_node in enumerate(values):
            value = self.env[value_node]
            name = "y" if len(values) == 1 else f"y{k}"
            shape = ["N", *self.shapes[value_node][1:]]
            if isinstance(value, FloatOut):
                self.g.output(value.name, name, TensorProto.DOUBLE, shape)
            elif isinstance(value, Levels):
                self.g.output(self._as(value, TensorProto.INT64), name, TensorProto.INT64, shape)
            else:
                raise RunError(f"{value_node.name}: the network output is an accumulator without rescale")

    def write(self, path: str | Path) -> int:
        """Builds the graph and saves it; returns the file size."""
        for node in self.gm.graph.nodes:
            self.visit(node)
        return self.g.save(path, doc="qatrun integer-only network (exact integer accumulation and rescale)")


_FLOAT_ELEM = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def export_int(int_gm: fx.GraphModule, path: str | Path, sample: Tensor, input_kind: str = "float") -> int:
    """Writes the integer-only network as ONNX (opset 13).

    Args:
        int_gm: the network from :func:`qatrun.fuse.integerize`.
        path: the ONNX file to write.
        sample: an input batch, for the tensor shapes (and the check the caller runs).
        input_kind: ``float`` (input x in [0, 1], as int_gm) or ``uint8`` (input p = 255 x).

    Returns:
        The file size in bytes.

    Raises:
        RunError: a module without an exact ONNX form (the message names it).
    """
    return IntWriter(int_gm, sample, input_kind).write(path)
