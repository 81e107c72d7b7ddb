"""The fake-quantized network as ONNX QuantizeLinear/DequantizeLinear (QDQ), at each layer's own bits.

qatrun writes the graph node by node from the fx graph (torch's exporter refuses sub-8-bit fake
quantization):

* weights: the integer levels ``J`` of ``Wq = J u`` (:meth:`QuantizedWeightLayer.integer_weights`) as a
  constant in the narrowest integer container that holds them (int4 for LSQ 4-bit ``[-8, 7]`` and SAT
  Symmetric 4-bit ``[-7, 7]``; int8 for SAT Default 4-bit ``2k - 15``; int16 for SAT Default 8-bit
  ``2k - 255``, which is 9 bits wide; MinMax's affine codes ``q = J + z`` in uint8 with their zero
  points), then ``DequantizeLinear``, per tensor or per output channel;
* activations: ``Clip -> QuantizeLinear -> DequantizeLinear`` with the quantizer's scale and zero point
  (SAT: scale ``alpha/R``, uint8 container clipped to ``[0, alpha]``, i.e. levels ``[0, R]``; LSQ: scale
  s, levels ``[0, R]``; MinMax: its scale, zero point and ``[qmin, qmax]``). The Clip in float keeps a
  sub-8-bit grid inside its R+1 levels, and keeps each QuantizeLinear directly before its
  DequantizeLinear, the pair onnxruntime's QDQ optimizations recognise;
* everything else as the float network (Conv, Gemm, BatchNormalization, pooling, sums, ...). A SAT
  weight quantizer in its clamp phase (``ApplyQuantization=0``) or a MinMax quantizer still within its
  ``Delay`` has no grid: its fake weights are written as float constants.

Opset 21, the first with int4 and int16 QuantizeLinear/DequantizeLinear.

Not bit-exact, by design of the format: QuantizeLinear computes ``round_half_even(x / scale)`` where SAT
computes ``round_half_away(R clip(x)/alpha)`` and LSQ ``round_half_away(x / s)``; the two agree except
within float32 rounding of a tie ``k + 1/2``, and dequantized weights ``J * u`` differ from qatrun's
``Wq`` by float32 rounding. The export check reports the largest output difference.

The same writer, with ``quantized=False``, writes the float network (latent weights, no quantizers): the
fallback of :mod:`qatrun.export.onnx_float` when torch's exporter fails on a graph.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx import TensorProto
from torch import Tensor, fx, nn
from torch.nn import functional as F

from qatrun.errors import RunError
from qatrun.export.onnx_graph import OnnxGraph, int_tensor, record_shapes
from qatrun.net import layers
from qatrun.net.fmp import FractionalMaxPool
from qatrun.quant import (
    LSQActivationQuantizer,
    MinMaxActivationQuantizer,
    MinMaxWeightQuantizer,
    QuantizedActivation,
    QuantizedWeightLayer,
    SATActivationQuantizer,
)
from qatrun.quant.minmax import minmax_active, minmax_qparams
from qatrun.quant.modules import weight_layout

OPSET = 21
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
ADD_FUNCTIONS = {operator.add, torch.add}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
IDENTITY_METHODS = {"contiguous", "detach"}


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def weight_grid(module: nn.Module) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(levels int64, unit float32 (scalar or per channel), channel axis)`` of a quantized layer's
    weights, or None when the quantizer has no grid (SAT clamp phase, MinMax within Delay)."""
    if not isinstance(module, QuantizedWeightLayer):
        return None
    quantizer = module.weight_quantizer
    spec = quantizer.spec  # type: ignore[attr-defined]
    if not getattr(spec, "apply_quantization", True):
        return None
    if isinstance(quantizer, MinMaxWeightQuantizer) and not minmax_active(int(quantizer.step), spec.delay):
        return None
    levels, rescale = module.integer_weights()
    _, axis = weight_layout(module)
    unit = rescale.detach().cpu().double().reshape(-1).numpy().astype(np.float32)
    return levels.cpu().numpy().astype(np.int64), (unit[0] if unit.size == 1 else unit), axis


def act_grid(quantizer: nn.Module, name: str) -> tuple[float, int, int, int] | None:
    """``(scale, zero point, lowest level, highest level)`` of an activation quantizer; None when it does not
    quantize yet (MinMax before its range is observed or within Delay).

    Raises:
        RunError: an activation quantizer qatrun does not know.
    """
    spec = quantizer.spec  # type: ignore[attr-defined]
    if isinstance(quantizer, SATActivationQuantizer):
        alpha = float(quantizer.alpha.detach().float().abs())
        return alpha / spec.range, 0, 0, spec.range
    if isinstance(quantizer, LSQActivationQuantizer):
        lo, hi = spec.bounds
        return float(quantizer.step.detach().float()), 0, lo, hi
    if isinstance(quantizer, MinMaxActivationQuantizer):
        if not bool(quantizer.observed) or not minmax_active(int(quantizer.step), spec.delay):
            return None
        scale, zero, qmin, qmax = minmax_qparams(quantizer.running_min, quantizer.running_max, spec.range,
                                                 spec.symmetric)
        return float(scale), int(zero), qmin, qmax
    raise RunError(f"{name}: no QDQ form for activation quantizer {type(quantizer).__name__}")


CONTAINERS = (  # (type, lowest, highest), narrowest first, signed before unsigned at each width
    (TensorProto.INT4, -8, 7), (TensorProto.UINT4, 0, 15), (TensorProto.INT8, -128, 127),
    (TensorProto.UINT8, 0, 255), (TensorProto.INT16, -(2**15), 2**15 - 1), (TensorProto.UINT16, 0, 2**16 - 1),
)


def weight_container(levels: np.ndarray, per_channel: bool, axis: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(stored, zero point, ONNX type)`` with ``levels = stored - zero`` in the narrowest container.

    A signed container holds the levels as they are (zero point 0); an unsigned one holds ``levels + z``
    with a zero point z per tensor (or per channel along ``axis``), as MinMax's affine codes ``q - z``.

    Raises:
        RunError: levels beyond 16 bits.
    """
    moved = np.moveaxis(levels, axis, 0).reshape(levels.shape[axis] if per_channel else 1, -1)
    lo, hi = moved.min(axis=1, initial=0), moved.max(axis=1, initial=0)
    for elem, low, high in CONTAINERS:
        zero = np.zeros_like(lo) if low < 0 else np.maximum(0, -lo)
        if (lo + zero >= low).all() and (hi + zero <= high).all():
            break
    else:
        raise RunError(f"weight levels in [{lo.min()}, {hi.max()}] need more than 16 bits")
    shape = [1] * levels.ndim
    if per_channel:
        shape[axis] = -1
    stored = levels + zero.reshape(shape)
    return stored, (zero if per_channel else zero.reshape(())), elem


def act_container(lo: int, hi: int) -> int:
    """Activation levels: uint8 (uint16) for a grid without negative levels, else int8 (int16).

    Raises:
        RunError: levels beyond 16 bits.
    """
    for elem, low, high in CONTAINERS[2:]:
        if (low < 0) == (lo < 0) and low <= lo and hi <= high:
            return elem
    raise RunError(f"activation levels in [{lo}, {hi}] need more than 16 bits")


class QdqWriter:
    """Writes a (fake-quantized) GraphModule as ONNX, QDQ or float (see the module note).

    Args:
        gm: the network, in eval mode.
        sample: an input batch, for the tensor shapes.
        quantized: QDQ nodes for the quantizers (False: the float network, latent weights).
    """

    def __init__(self, gm: fx.GraphModule, sample: Tensor, quantized: bool = True) -> None:
        self.gm = gm
        self.quantized = quantized
        self.modules = dict(gm.named_modules())
        self.shapes = record_shapes(gm, sample)
        self.g = OnnxGraph("qatrun_qdq" if quantized else "qatrun_float", OPSET if quantized else 13)
        self.env: dict[fx.Node, str] = {}
        self.notes: list[str] = []
        self.activations: dict[str, tuple[str, float]] = {}  # fx node name -> (its DQ output, its scale)
        self.size = 0

    # ------------------------------------------------------------------------------------ constants

    def _f32(self, hint: str, values: Any) -> str:
        return self.g.const(hint, np.asarray(values, dtype=np.float32))

    def _channel(self, hint: str, values: Tensor, node: fx.Node) -> str:
        """(C,) values shaped (C, 1, ..., 1) against the node's output."""
        rank = len(self.shapes[node])
        return self._f32(hint, _np(values).reshape(-1, *([1] * (rank - 2))))

    def weight(self, module: nn.Module, name: str) -> str:
        """The layer's weights: ``DequantizeLinear`` of the integer levels, or a float constant."""
        grid = weight_grid(module) if self.quantized else None
        if grid is None:
            if self.quantized and isinstance(module, QuantizedWeightLayer):
                self.notes.append(f"{name}: weights without a quantization grid written as float")
                w = module.quantized_weight()
            elif isinstance(module, QuantizedWeightLayer):
                w = module.latent_weight()
            else:
                mask = getattr(module, "mask", None)
                w = module.weight if mask is None else module.weight * mask  # type: ignore[operator]
            return self._f32(f"{name}_weight", _np(w))
        levels, unit, axis = grid
        stored, zero, elem = weight_container(levels, np.ndim(unit) > 0, axis)
        w_int = self.g.fresh(f"{name}_wq")
        self.g.initializers.append(int_tensor(w_int, stored, elem))
        zero_name = self.g.fresh(f"{name}_wzero")
        self.g.initializers.append(int_tensor(zero_name, zero, elem))
        attrs = {"axis": axis} if np.ndim(unit) else {}
        return self.g.op("DequantizeLinear", [w_int, self._f32(f"{name}_wscale", unit), zero_name], f"{name}_weight",
                         **attrs)

    def _bias(self, module: nn.Module, name: str) -> list[str]:
        bias = getattr(module, "bias", None)
        return [] if bias is None else [self._f32(f"{name}_bias", _np(bias))]

    # ----------------------------------------------------------------------------------------- layers

    def conv(self, node: fx.Node, m: nn.Conv2d, x: str) -> str:
        name = str(node.target)
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise RunError(f"{name}: only explicit zero padding has an ONNX form here")
        attrs = {"strides": list(m.stride), "pads": [*m.padding, *m.padding], "dilations": list(m.dilation),
                 "group": m.groups, "kernel_shape": list(m.kernel_size)}
        return self.g.op("Conv", [x, self.weight(m, name), *self._bias(m, name)], name, **attrs)

    def deconv(self, node: fx.Node, m: nn.ConvTranspose2d, x: str) -> str:
        name = str(node.target)
        attrs = {"strides": list(m.stride), "pads": [*m.padding, *m.padding], "dilations": list(m.dilation),
                 "group": m.groups, "kernel_shape": list(m.kernel_size), "output_padding": list(m.output_padding)}
        return self.g.op("ConvTranspose", [x, self.weight(m, name), *self._bias(m, name)], name, **attrs)

    def linear(self, node: fx.Node, m: nn.Linear, x: str) -> str:
        name = str(node.target)
        w = self.weight(m, name)
        if len(self.shapes[node]) == 2:
            return self.g.op("Gemm", [x, w, *self._bias(m, name)], name, transB=1)
        y = self.g.op("MatMul", [x, self.g.op("Transpose", [w], f"{name}_wt", perm=[1, 0])], f"{name}_mm")
        bias = self._bias(m, name)
        return self.g.op("Add", [y, bias[0]], name) if bias else y

    def batchnorm(self, node: fx.Node, m: nn.BatchNorm2d, x: str) -> str:
        name = str(node.target)
        if m.running_mean is None or m.running_var is None:
            raise RunError(f"{name}: a BatchNorm without running statistics has no inference form")
        ones = torch.ones_like(m.running_mean)
        gamma = ones if m.weight is None else m.weight
        beta = torch.zeros_like(ones) if m.bias is None else m.bias
        inputs = [x] + [self._f32(f"{name}_{k}", _np(t)) for k, t in
                        (("scale", gamma), ("bias", beta), ("mean", m.running_mean), ("var", m.running_var))]
        return self.g.op("BatchNormalization", inputs, name, epsilon=float(m.eps))

    def act_quantizer(self, node: fx.Node, quantizer: nn.Module, x: str) -> str:
        """``Clip -> QuantizeLinear -> DequantizeLinear`` on the quantizer's grid."""
        name = str(node.target)
        grid = act_grid(quantizer, name)
        if grid is None:
            self.notes.append(f"{name}: its MinMax quantizer does not quantize yet; written as float")
            return x
        scale, zero, lo, hi = grid
        elem = act_container(min(lo, zero), max(hi, zero))
        bounds = (np.float32(scale) * np.float32(lo - zero), np.float32(scale) * np.float32(hi - zero))
        clip_lo, clip_hi = self._f32("clip_lo", bounds[0]), self._f32("clip_hi", bounds[1])
        clipped = self.g.op("Clip", [x, clip_lo, clip_hi], f"{name}_clip")
        scale_name = self._f32(f"{name}_scale", scale)
        zero_name = self.g.fresh(f"{name}_zero")
        self.g.initializers.append(int_tensor(zero_name, np.array(zero), elem))
        q = self.g.op("QuantizeLinear", [clipped, scale_name, zero_name], f"{name}_q")
        out = self.g.op("DequantizeLinear", [q, scale_name, zero_name], name)
        self.activations[node.name] = (out, float(np.float32(scale)))
        return out

    def activation(self, node: fx.Node, m: nn.Module, x: str, name: str | None = None) -> str:
        """A float activation function (its output named ``name``, by default the module's name)."""
        name = name or str(node.target)
        if isinstance(m, PASS_THROUGH):
            return x
        if isinstance(m, nn.ReLU):
            return self.g.op("Relu", [x], name)
        if isinstance(m, nn.LeakyReLU):
            return self.g.op("LeakyRelu", [x], name, alpha=float(m.negative_slope))
        if isinstance(m, nn.Hardtanh):
            return self.g.op("Clip", [x, self._f32("lo", m.min_val), self._f32("hi", m.max_val)], name)
        if isinstance(m, layers.Rectifier):
            y = self.g.op("LeakyRelu", [x], f"{name}_leaky", alpha=float(m.leak_slope))
            return self.g.op("Clip", [y, "", self._f32("hi", m.clipping)], name) if m.clipping > 0 else y
        if isinstance(m, (nn.Sigmoid, layers.LogisticWithLoss)):
            return self.g.op("Sigmoid", [x], name)
        if isinstance(m, nn.Tanh):
            return self.g.op("Tanh", [x], name)
        if isinstance(m, layers.ScaledTanh):
            inner = self.g.op("Tanh", [self.g.op("Mul", [x, self._f32("alpha", m.alpha)], f"{name}_ax")], f"{name}_t")
            return self.g.op("Mul", [inner, self._f32("scale", m.scale)], name)
        if isinstance(m, nn.Softplus) and m.beta == 1:
            return self.g.op("Softplus", [x], name)
        if isinstance(m, nn.SiLU):
            return self.g.op("Mul", [x, self.g.op("Sigmoid", [x], f"{name}_sig")], name)
        raise RunError(f"{name}: {type(m).__name__} has no ONNX form in qatrun's writer")

    def pool(self, node: fx.Node, m: nn.Module, x: str) -> str:
        name = str(node.target)
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        attrs = {"kernel_shape": pair(m.kernel_size), "strides": pair(m.stride or m.kernel_size),
                 "pads": pair(m.padding) * 2, "ceil_mode": int(m.ceil_mode)}
        if isinstance(m, nn.MaxPool2d):
            return self.g.op("MaxPool", [x], name, dilations=pair(m.dilation), **attrs)
        assert isinstance(m, nn.AvgPool2d)
        if m.divisor_override:
            raise RunError(f"{name}: average pooling with divisor_override has no ONNX form")
        return self.g.op("AveragePool", [x], name, count_include_pad=int(m.count_include_pad), **attrs)

    def elemwise(self, node: fx.Node, m: layers.ElemWise, inputs: list[str]) -> str:
        name = str(node.target)
        if m.op == "Max":
            return self.g.op("Max", inputs, name)
        if m.op == "Prod":
            y = inputs[0]
            for k, x in enumerate(inputs[1:]):
                y = self.g.op("Mul", [y, x], f"{name}_p{k}")
            return y
        total = None
        for i, x in enumerate(inputs):
            term = self.g.op("Abs", [x], f"{name}_abs{i}") if m.op == "AbsSum" else x
            term = self.g.op("Mul", [term, self._channel(f"{name}_w{i}", m.weights[i], node)], f"{name}_t{i}")
            if m.op != "AbsSum":
                term = self.g.op("Add", [term, self._channel(f"{name}_s{i}", m.shifts[i], node)], f"{name}_ts{i}")
            if m.op == "EuclideanSum":
                term = self.g.op("Mul", [term, term], f"{name}_sq{i}")
            total = term if total is None else self.g.op("Add", [total, term], f"{name}_sum")
        assert total is not None
        return self.g.op("Sqrt", [total], name) if m.op == "EuclideanSum" else total

    def softmax(self, node: fx.Node, m: layers.Softmax, x: str) -> str:
        name = str(node.target)
        if m.with_loss:
            return x
        if m.group_size == 0:
            return self.g.op("Softmax", [x], name, axis=1)
        shape = list(self.shapes[node])
        grouped = [0, shape[1] // m.group_size, m.group_size, *shape[2:]]
        y = self.g.op("Reshape", [x, self.g.const(f"{name}_groups", np.array(grouped, dtype=np.int64))], f"{name}_g")
        y = self.g.op("Softmax", [y], f"{name}_sm", axis=2)
        return self.reshape_to(node, y)

    def reshape_to(self, node: fx.Node, x: str) -> str:
        """Reshape to the node's recorded shape, the batch dimension copied."""
        shape = np.array([0, *self.shapes[node][1:]], dtype=np.int64)
        return self.g.op("Reshape", [x, self.g.const(f"{node.name}_shape", shape)], node.name)

    def pad(self, node: fx.Node, x: str, pads: list[int], value: float = 0.0) -> str:
        """torch-style pads (last dimension first, (begin, end) pairs) as an ONNX Pad (negative: crop)."""
        rank = len(self.shapes[node])
        begin, end = [0] * rank, [0] * rank
        for k in range(len(pads) // 2):
            begin[rank - 1 - k], end[rank - 1 - k] = int(pads[2 * k]), int(pads[2 * k + 1])
        pads_name = self.g.const(f"{node.name}_pads", np.array(begin + end, dtype=np.int64))
        return self.g.op("Pad", [x, pads_name, self._f32("pad_value", value)], node.name)

    # ------------------------------------------------------------------------------------------- walk

    def module(self, node: fx.Node, m: nn.Module) -> str:
        args = [self.env[a] for a in node.args if isinstance(a, fx.Node)]
        x = args[0] if args else ""
        if isinstance(m, QuantizedActivation):
            if not self.quantized:
                return self.activation(node, m.act, x)
            y = self.activation(node, m.act, x, f"{node.target}_fn")
            return self.act_quantizer(node, m.quantizer, y)
        if isinstance(m, nn.ConvTranspose2d):
            return self.deconv(node, m, x)
        if isinstance(m, nn.Conv2d):
            return self.conv(node, m, x)
        if isinstance(m, nn.Linear):
            return self.linear(node, m, x)
        if isinstance(m, nn.BatchNorm2d):
            return self.batchnorm(node, m, x)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(node, m, x)
        if isinstance(m, FractionalMaxPool):
            return self.g.region_max(x, m.rows.numpy(), m.cols.numpy(), str(node.target))
        if isinstance(m, layers.ElemWise):
            return self.elemwise(node, m, args)
        if isinstance(m, layers.Softmax):
            return self.softmax(node, m, x)
        if isinstance(m, layers.Scaling):
            return self.g.op("Mul", [x, self._f32("factor", m.factor)], str(node.target))
        if isinstance(m, nn.ZeroPad2d):
            return self.pad(node, x, list(m.padding))
        if isinstance(m, nn.Flatten) and m.end_dim == -1:
            return self.g.op("Flatten", [x], str(node.target), axis=m.start_dim)
        if isinstance(m, (nn.Flatten, layers.Reshape)):
            return self.reshape_to(node, x)
        if isinstance(m, layers.Permute):
            return self.g.op("Transpose", [x], str(node.target), perm=list(m.perm))
        return self.activation(node, m, x)

    def function(self, node: fx.Node) -> str | None:
        target = node.target
        args = [self.env[a] if isinstance(a, fx.Node) else a for a in node.args]
        if target in ADD_FUNCTIONS and len(args) == 2 and all(isinstance(a, str) for a in args) and not node.kwargs:
            return self.g.op("Add", args, node.name)
        if target is torch.flatten:
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            if end == -1:
                return self.g.op("Flatten", [args[0]], node.name, axis=int(start))
            return self.reshape_to(node, args[0])
        if target is torch.reshape:
            return self.reshape_to(node, args[0])
        if target is torch.cat:
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
            return self.g.op("Concat", [self.env[a] for a in node.args[0]], node.name, axis=int(dim))  # type: ignore
        if target is F.pad:
            pads = args[1] if len(args) > 1 else node.kwargs["pad"]
            mode = args[2] if len(args) > 2 else node.kwargs.get("mode", "constant")
            value = args[3] if len(args) > 3 else node.kwargs.get("value", None)
            if mode != "constant":
                raise RunError(f"{node.name}: padding mode {mode!r} has no ONNX form in qatrun's writer")
            return self.pad(node, args[0], list(pads), float(value or 0.0))  # type: ignore[arg-type]
        if target is F.relu or target is torch.relu:
            return self.g.op("Relu", [args[0]], node.name)
        if target is operator.getitem and node.args[0] not in self.env:
            return None  # shape arithmetic (x.size(0)): the recorded shapes stand for it
        raise RunError(f"{node.name}: {target} has no ONNX form in qatrun's writer")

    def method(self, node: fx.Node) -> str | None:
        source = self.env.get(node.args[0])  # type: ignore[arg-type]
        if node.target == "size":
            return None
        assert source is not None, node
        if node.target in RESHAPE_METHODS:
            return self.reshape_to(node, source)
        if node.target in IDENTITY_METHODS:
            return source
        if node.target == "permute":
            dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else node.args[1:]
            return self.g.op("Transpose", [source], node.name, perm=[int(d) for d in dims])  # type: ignore
        raise RunError(f"{node.name}: method {node.target} has no ONNX form in qatrun's writer")

    def visit(self, node: fx.Node) -> None:
        value: str | None
        if node.op == "placeholder":
            if self.env:
                raise RunError("the ONNX export supports one input")
            value = self.g.input("x", TensorProto.FLOAT, ["N", *self.shapes[node][1:]])
        elif node.op == "output":
            self.outputs(node.args[0])
            return
        elif node.op == "call_module":
            value = self.module(node, self.modules[str(node.target)])
        elif node.op == "call_function":
            value = self.function(node)
        elif node.op == "call_method":
            value = self.method(node)
        else:
            raise RunError(f"{node.name}: {node.op} has no ONNX form in qatrun's writer")
        if value is not None:
            self.env[node] = value

    def outputs(self, result: Any) -> None:
        values = list(result) if isinstance(result, (list, tuple)) else [result]
        for k, node in enumerate(values):
            name = "y" if len(values) == 1 else f"y{k}"
            self.g.output(self.env[node], name, TensorProto.FLOAT, ["N", *self.shapes[node][1:]])

    def write(self, path: str | Path) -> int:
        """Builds the graph and saves it; returns the file size."""
        with torch.no_grad():
            for node in self.gm.graph.nodes:
                self.visit(node)
        kind = "fake-quantized network (QDQ)" if self.quantized else "float network"
        return self.g.save(path, doc=f"qatrun {kind}")


def export_qdq(gm: fx.GraphModule, path: str | Path, sample: Tensor) -> QdqWriter:
    """Writes the fake-quantized network as QDQ ONNX (opset 21).

    Args:
        gm: the quantized network (``qatrun.quant.prepare`` applied), in eval mode.
        path: the ONNX file to write.
        sample: an input batch, for the tensor shapes.

    Returns:
        The writer: ``size`` (file bytes), ``notes`` (layers written without a grid) and ``activations``
        (each quantized activation's ONNX value and scale, for the layer-by-layer check).

    Raises:
        RunError: a module without an ONNX form in this writer (the message names it).
    """
    writer = QdqWriter(gm, sample.detach().cpu(), quantized=True)
    writer.size = writer.write(path)
    return writer
