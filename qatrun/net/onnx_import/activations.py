"""ONNX activation nodes (Relu, LeakyRelu, Sigmoid, Tanh): merged into the cell before them, as N2D2 does.

An activation node is no cell. When the value it reads is the output of a cell that has no activation yet
and nothing else reads that value, it becomes that cell's activation module ``<cell>_act``; the section
named after the activation's output, if any, replaces its function (``ActivationFunction``) and holds
its ``QAct*`` keys, and is recorded as ``Cell.act_section``. Otherwise it becomes an Activation cell of
its own, named after its output. There is no default section for activations.

An ``ActivationFunction`` in the override section of a node that no activation follows gives that cell its
own activation, as in a hand-made layer (:func:`own_activation`; N2D2 ignores the key there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from qatrun.net.activations import ACTIVATION, ACTIVATION_KEYS, FUNCTIONS, make_activation, read_activation
from qatrun.net.builder import activation_name, module_name
from qatrun.net.cells import CELL_TYPES
from qatrun.net.onnx_import.overrides import named_section

if TYPE_CHECKING:
    from qatrun.ini import Section
    from qatrun.net.builder import Cell
    from qatrun.net.onnx_import.importer import Importer

# ONNX activation op -> (N2D2 function, its parameters from the node's attributes).
ACTIVATION_OPS = {
    "Relu": lambda attrs: ("Rectifier", {"LeakSlope": 0.0, "Clipping": 0.0}),
    "LeakyRelu": lambda attrs: ("Rectifier", {"LeakSlope": float(attrs.get("alpha", 0.01)), "Clipping": 0.0}),
    "Sigmoid": lambda attrs: ("Logistic", {}),
    "Tanh": lambda attrs: ("Tanh", {"Alpha": 1.0}),
}


def activation(imp: Importer, node: Any) -> None:
    """An activation node: merged into the cell before it, else an Activation cell (module docstring)."""
    output, value = node.output_values[0], imp.plan.resolve(node.input_values[0])
    function, params = ACTIVATION_OPS[node.operation_type](node.attributes)
    section = named_section(imp, output)
    module = None
    if section is not None:
        section.declare(*ACTIVATION_KEYS)
        if any(key == ACTIVATION or key.startswith(ACTIVATION + ".") for key in section.keys()):
            function, module = read_activation(section, None)  # type: ignore[misc]
    if module is None:
        full = {name: ACTIVATION_KEYS[f"{ACTIVATION}.{name}"].default for name in FUNCTIONS[function]} | params
        module = make_activation(function, full)
    cell = imp.cells.get(value)
    if cell is not None and cell.act_module is None and imp.plan.uses[value] == 1:
        merge(imp, cell, value, output, function, module, section)
        imp.file.kinds[output] = "activation"
        return
    standalone = imp.emit(node, "Activation", nn.Identity(), [value], section, {})
    merge(imp, standalone, output, output, function, module, None)
    imp.file.kinds[output] = "Activation"


def merge(imp: Importer, cell: Cell, value: str, output: str, function: str, module: nn.Module,
          section: Section | None) -> None:
    """Makes ``module`` the activation ``<cell>_act`` of ``cell``, whose output ``value`` it reads."""
    name = activation_name(module_name(cell.name))
    imp.add_module(name, module, output)
    source, example = imp.tensors[value]
    call = imp.builder.graph.call_module(name, (source,))
    example = _probe(module, example)
    cell.act_module, cell.activation, cell.act_section = module, function, section
    cell.act_output = output if output != cell.name else None
    imp.set(value, call, example, cell.name)
    imp.set(output, call, example, cell.name)


def own_activation(imp: Importer, cell: Cell, section: Section) -> None:
    """``ActivationFunction=`` in the override section of a node no Relu follows (``check_override``
    rejects it where one does): the cell's own activation, whose ``QAct*`` the same section holds."""
    given = [key for key in section.keys() if key == ACTIVATION or key.startswith(ACTIVATION + ".")]
    if not given:
        return
    cell_type = CELL_TYPES.get(cell.type)
    if cell_type is None or cell_type.activation is None:
        raise section.error(given[0], f"a {cell.type} cell has no activation function (N2D2 ignores this key)")
    section.declare(*ACTIVATION_KEYS)
    function, module = read_activation(section, None)  # type: ignore[misc]
    merge(imp, cell, cell.name, cell.name, function, module, None)


def _probe(module: nn.Module, example: Tensor) -> Tensor:
    """The activation's output on the example (its shape is the input's; the values feed later probes)."""
    with torch.no_grad():
        return module(example)
