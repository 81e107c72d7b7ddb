"""What the importer knows before it converts a node: skipped nodes, uses of each value, MatMul Fc cells.

One pass over the graph, before any node is converted, finds:

* ``alias``: the output of an Identity node, of a node listed in ``Ignore=`` and of an Add folded into a
  MatMul's bias reads as the node's first input (:meth:`Plan.resolve` follows chains of them);
* ``matmul_fc``: a MatMul of a 2-D input by a constant 2-D matrix is an Fc cell; the Add of a constant
  vector that alone reads its output is its bias (``folded``);
* ``uses``: how many nodes and graph outputs read each value once aliases are resolved;
* ``activated``: the values an activation node alone reads, which merge into the cell computing them
  (activations.py), so that their override section may not set an activation itself (overrides.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qatrun.net.onnx_import.activations import ACTIVATION_OPS

if TYPE_CHECKING:
    from qatrun.net.onnx_import.loading import OnnxFile


@dataclass
class Plan:
    """What is known before converting: skipped nodes, uses of each value, MatMul nodes that are Fc cells."""

    alias: dict[str, str] = field(default_factory=dict)
    uses: Counter[str] = field(default_factory=Counter)
    matmul_fc: dict[str, str | None] = field(default_factory=dict)  # MatMul unique name -> bias initializer
    folded: set[str] = field(default_factory=set)  # unique names of Add nodes folded into a MatMul's bias
    activated: set[str] = field(default_factory=set)  # values read by one activation node alone (merged into the cell)

    def resolve(self, value: str) -> str:
        """The value a name reads as, through any chain of aliases."""
        while value in self.alias:
            value = self.alias[value]
        return value


def _rank(graph: Any, value: str) -> int | None:
    """The number of dimensions shape inference gives a value, or None when it gives no shape."""
    info = graph.value_info.get(value)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def plan(onnx_file: OnnxFile) -> Plan:
    """Walks the graph once, before any node is converted (the module docstring lists what it finds)."""
    graph, found = onnx_file.graph, Plan()
    consumers: dict[str, list[Any]] = {}
    for node in graph.nodes.values():
        for value in node.input_values:
            consumers.setdefault(value, []).append(node)
    for node in graph.nodes.values():
        output = node.output_values[0]
        if output in onnx_file.ignore or node.operation_type == "Identity":
            found.alias[output] = node.input_values[0]
        elif node.operation_type == "MatMul" and node.input_values[1] in graph.initializers \
                and len(graph.initializers[node.input_values[1]].proto.dims) == 2 \
                and _rank(graph, node.input_values[0]) == 2:
            found.matmul_fc[node.unique_name] = None
            users = consumers.get(output, [])
            if len(users) == 1 and users[0].operation_type == "Add" and output not in graph.output_values:
                add = users[0]
                other = [value for value in add.input_values if value != output]
                outputs = graph.initializers[node.input_values[1]].proto.dims[1]
                if len(other) == 1 and other[0] in graph.initializers \
                        and list(graph.initializers[other[0]].proto.dims) == [outputs]:
                    found.matmul_fc[node.unique_name] = other[0]
                    found.folded.add(add.unique_name)
                    found.alias[add.output_values[0]] = output
    for node in graph.nodes.values():
        if node.output_values[0] in found.alias:  # skipped, ignored and folded nodes use nothing
            continue
        for value in node.input_values:
            if value:
                found.uses[found.resolve(value)] += 1
    for value in graph.output_values:
        found.uses[found.resolve(value)] += 1
    for node in graph.nodes.values():
        if node.operation_type in ACTIVATION_OPS and node.output_values[0] not in found.alias:
            value = found.resolve(node.input_values[0])
            if found.uses[value] == 1:
                found.activated.add(value)
    return found
