"""A small ONNX graph writer and the onnxruntime session settings every export check uses.

qatrun writes its QDQ and integer-only graphs node by node with ``onnx.helper``; :class:`OnnxGraph` keeps
the names unique, stores constants as initializers (4-bit integers packed two per byte, as ONNX stores
them) and saves a checked model. :func:`session` opens a file in onnxruntime on the CPU, with graph
optimizations off by default: exactness checks must see the graph as written (with optimizations on,
onnxruntime rewrites e.g. int4 DequantizeLinear + MatMul into an approximate kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import Tensor, fx

# The newest IR version onnxruntime 1.31 reads (onnx 1.23 would write 11+ by default).
IR_VERSION = min(onnx.IR_VERSION, 10)

NUMPY_TYPES: dict[int, Any] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT8: np.int8,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
}

def int_tensor(name: str, values: np.ndarray, elem: int) -> TensorProto:
    """An integer initializer of type ``elem``; int4/uint4 packed two per byte, low nibble first."""
    values = np.asarray(values)
    if elem in (TensorProto.INT4, TensorProto.UINT4):
        flat = values.astype(np.int64).reshape(-1) & 0xF
        if flat.size % 2:
            flat = np.concatenate([flat, np.zeros(1, dtype=np.int64)])
        packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
        return helper.make_tensor(name, elem, values.shape, packed.tobytes(), raw=True)
    array = values.astype(NUMPY_TYPES[elem])
    return helper.make_tensor(name, elem, array.shape, array.tobytes(), raw=True)


class OnnxGraph:
    """Nodes, initializers, inputs and outputs of one ONNX graph, with unique names.

    Args:
        name: the graph name.
        opset: the default-domain opset version.
    """

    def __init__(self, name: str, opset: int) -> None:
        self.name = name
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: set[str] = set()
        self._constants: dict[tuple[Any, ...], str] = {}

    def fresh(self, hint: str) -> str:
        """A name not used yet, ``hint`` itself if free."""
        hint = hint.replace(".", "_") or "t"
        name, k = hint, 1
        while name in self._used:
            name, k = f"{hint}_{k}", k + 1
        self._used.add(name)
        return name

    def const(self, hint: str, values: np.ndarray | float | int, elem: int | None = None) -> str:
        """An initializer holding ``values`` (numpy dtype kept unless ``elem`` names an ONNX type).

        Small constants with the same value and type are shared.
        """
        array = np.asarray(values)
        if elem is None:
            elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        key = (elem, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(int_tensor(name, array, elem) if elem not in (TensorProto.FLOAT, TensorProto.DOUBLE)
                                 else helper.make_tensor(name, elem, array.shape,
                                                         array.astype(NUMPY_TYPES[elem]).tobytes(), raw=True))
        if key is not None:
            self._constants[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        """Adds a one-output node; returns its output name."""
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def cast(self, value: str, elem: int, hint: str) -> str:
        """``Cast(value, to=elem)``."""
        return self.op("Cast", [value], hint, to=elem)

    def region_max(self, x: str, rows: np.ndarray, cols: np.ndarray, hint: str) -> str:
        """Fractional max-pooling of (N, C, H, W) ``x`` over fixed regions: for rows, then columns, a
        ``Gather`` of every region's indices (``rows``: (m, L)), a ``Reshape`` that puts a region on an axis
        of its own, and a ``ReduceMax`` over it (the FMP cell's :func:`~qatrun.net.fmp.pool_regions`)."""
        y = x
        for axis, regions, part in ((2, rows, "rows"), (3, cols, "cols")):
            flat = self.const(f"{hint}_{part}", np.asarray(regions, dtype=np.int64).reshape(-1))
            y = self.op("Gather", [y, flat], f"{hint}_{part}_gather", axis=axis)
            shape = [0, 0, *([0] if axis == 3 else []), *regions.shape, *([-1] if axis == 2 else [])]
            y = self.op("Reshape", [y, self.const(f"{hint}_{part}_shape", np.array(shape, dtype=np.int64))],
                        f"{hint}_{part}_regions")
            out = hint if axis == 3 else f"{hint}_{part}_max"
            if self.opset >= 18:
                y = self.op("ReduceMax", [y, self.const(f"{hint}_axis", np.array([axis + 1], dtype=np.int64))], out,
                            keepdims=0)
            else:
                y = self.op("ReduceMax", [y], out, axes=[axis + 1], keepdims=0)
        return y

    def input(self, name: str, elem: int, shape: list[int | str]) -> str:
        """Declares a graph input."""
        self._used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, value: str, name: str, elem: int, shape: list[int | str] | None = None) -> None:
        """Declares ``value`` a graph output under ``name`` (through an Identity if the names differ)."""
        if value != name:
            self._used.add(name)
            self.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, doc: str = "") -> onnx.ModelProto:
        """The checked model."""
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=IR_VERSION,
            producer_name="qatrun", doc_string=doc,
        )
        onnx.checker.check_model(model)
        return model

    def save(self, path: str | Path, doc: str = "") -> int:
        """Writes the model; returns the file size in bytes."""
        onnx.save(self.model(doc), str(path))
        return Path(path).stat().st_size


def session(model: str | Path | bytes, optimize: bool = False, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session.

    Args:
        model: a file path or the serialized model.
        optimize: onnxruntime's graph optimizations (all levels) on; off for exactness checks.
        threads: intra-op threads (0: onnxruntime's default).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: no per-node warnings on stderr
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class _ShapeRecorder(fx.Interpreter):
    """Runs a GraphModule once, recording each node's output shape (nested like the output)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = fx.node.map_aggregate(result, lambda r: tuple(r.shape) if isinstance(r, Tensor) else r)
        return result


def record_shapes(gm: fx.GraphModule, sample: Tensor) -> dict[fx.Node, Any]:
    """The output shape of every node of ``gm`` on ``sample`` (run once, without gradients)."""
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(sample)
    return recorder.shapes
