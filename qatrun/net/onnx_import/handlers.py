"""The op handlers: each ONNX node that N2D2 turns into a cell becomes one, with its override settings.

A handler takes the importer, the node, onnx2torch's module for it and the module's input/output mapping,
and returns the :class:`~qatrun.net.builder.Cell` it emitted, ``None`` to keep the node as glue (the op in
a form qatrun makes no cell of: a MatMul by a computed matrix, a Softmax over another axis...), or
:data:`NO_CELL` for a node it wrote itself without a cell (a Flatten). :data:`HANDLERS` maps each op type
to its handler; activation nodes are handled apart (activations.py).

The cell parameters an override section's ConfigSection gives replace the graph's (``NoBias``,
``Epsilon``, ``Dropout``...); with ``ONNX_init=0`` the weights come from its fillers (:func:`fill`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from qatrun.ini import Key, warn
from qatrun.net import layers
from qatrun.net.batchnorm import EPSILON, MOMENTUM
from qatrun.net.cells import CELL_TYPES
from qatrun.net.conv import BACK_PROPAGATE, CONV_PARAMS, NO_BIAS, OUTPUTS_REMAP
from qatrun.net.fc import DROP_CONNECT, FC_PARAMS, NORMALIZE
from qatrun.net.fillers import DEFAULT_FILLER, fill_, read_filler
from qatrun.net.onnx_import.loading import onnx2torch
from qatrun.net.onnx_import.overrides import settings

if TYPE_CHECKING:
    from qatrun.ini import Section
    from qatrun.net.builder import Cell
    from qatrun.net.onnx_import.importer import Importer

POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")
ELEMWISE_OPS = {"Add": "Sum", "Sum": "Sum", "Sub": "Sum", "Mul": "Prod", "Max": "Max"}

NO_CELL: Any = object()
"""A handler's answer for a node it wrote itself without a cell."""


def read_params(params: Any, table: tuple[Key, ...]) -> dict[str, Any]:
    """The cell parameters a ConfigSection gives (only those given: the others come from the graph)."""
    if params is None:
        return {}
    return {key.name: params.read(key) for key in table if any(params.has(name) for name in key.names)}


def fill(imp: Importer, section: Section | None, module: nn.Module, created_bias: bool) -> None:
    """``ONNX_init=0``: weights and biases from the fillers; a bias the graph lacks always is."""
    weights = read_filler(section, "WeightsFiller") if section is not None else DEFAULT_FILLER
    bias = read_filler(section, "BiasFiller") if section is not None else DEFAULT_FILLER
    outputs = module.out_channels if isinstance(module, nn.ConvTranspose2d) else module.weight.shape[0]
    if not imp.file.init:
        fill_(module.weight, weights, *_fan_in_out(module))
    if module.bias is not None and (created_bias or not imp.file.init):
        fill_(module.bias, bias, outputs, 1)
    given = section is not None and any(section.has(name) for name in ("WeightsFiller", "BiasFiller"))
    if imp.file.init and given and section.name not in imp.warned:
        imp.warned.add(section.name)
        warn("WeightsFiller/BiasFiller have no effect: ONNX_init=1 takes the weights from the ONNX file",
             section.location, section.name)


def weight_params(imp: Importer, section: Section | None, params: Any, module: nn.Module, table: tuple[Key, ...]
                  ) -> dict[str, Any]:
    """Applies NoBias and the other Conv/Fc parameters; fills the weights."""
    given = read_params(params, table)
    if given.get(OUTPUTS_REMAP.name):
        raise params.error(OUTPUTS_REMAP.name, "output remapping is not supported by qatrun")
    if given.get(NORMALIZE.name):
        raise params.error(NORMALIZE.name, "weight normalisation is not supported by qatrun")
    if given.get(DROP_CONNECT.name, 1.0) != 1.0:
        raise params.error(DROP_CONNECT.name, "DropConnect is not supported by qatrun (keep 1.0)")
    created = False
    if given.get(NO_BIAS.name) is True and module.bias is not None:
        module.bias = None
    elif given.get(NO_BIAS.name) is False and module.bias is None:
        outputs = module.out_channels if isinstance(module, nn.ConvTranspose2d) else module.weight.shape[0]
        module.bias = nn.Parameter(torch.zeros(outputs))
        created = True
    fill(imp, section, module, created)
    values = {key.name: key.default for key in table} | given
    values[NO_BIAS.name] = module.bias is None
    return values


def _fan_in_out(module: nn.Module) -> tuple[int, int]:
    """N2D2's fans of a weight (fillers.py), the same expression for the three torch layouts.

    Conv (O, C/g, kH, kW): fan-in kH·kW·C/g, fan-out kH·kW·O; Deconv (C, O/g, kH, kW): kH·kW·O/g and
    kH·kW·C (as conv.py); Fc (O, I): I and O.
    """
    weight = module.weight
    area = weight[0, 0].numel()  # kH·kW, or 1 for an Fc
    return area * weight.shape[1], area * weight.shape[0]


def conv(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell:
    """Conv and ConvTranspose; an asymmetric pad becomes a Padding cell ``<output>_padding`` before it."""
    data = [node.input_values[0]]
    if isinstance(module, nn.Sequential):  # onnx2torch's answer to an asymmetric padding
        pad, module = module[0], module[1]
        if pad.mode == "constant" and pad.constant_value == 0 and len(pad.pads) == 4:
            pad = nn.ZeroPad2d(tuple(pad.pads))
        padding = imp.emit(node, "Padding", pad, data, None, {}, name=f"{node.output_values[0]}_padding")
        data = [padding.name]
    kind = "Deconv" if node.operation_type == "ConvTranspose" else "Conv"
    if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        raise imp.error(f"{imp.node_label(node)}: qatrun imports 2-D convolutions only")
    section, params = settings(imp, node, kind)
    values = weight_params(imp, section, params, module, CONV_PARAMS)
    return imp.emit(node, kind, module, data, section, values)


def fc(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
    """Gemm, and a MatMul by a constant matrix (planning.py) with its folded bias; any other MatMul is glue."""
    if node.operation_type == "MatMul":
        if node.unique_name not in imp.plan.matmul_fc:
            return None
        module = _matmul_linear(imp, node)
    elif not isinstance(module, nn.Linear):
        module = _gemm_linear(imp, node)
    section, params = settings(imp, node, "Fc")
    values = weight_params(imp, section, params, module, FC_PARAMS)
    return imp.emit(node, "Fc", module, [node.input_values[0]], section, values)


def _matmul_linear(imp: Importer, node: Any) -> nn.Linear:
    """A MatMul by a constant (in, out) matrix as an nn.Linear, with the bias of the Add folded into it."""
    weight = imp.graph.initializers[node.input_values[1]].to_torch().float()  # (in, out)
    bias_name = imp.plan.matmul_fc[node.unique_name]
    module = nn.Linear(weight.shape[0], weight.shape[1], bias=bias_name is not None)
    with torch.no_grad():
        module.weight.copy_(weight.T)
        if bias_name is not None:
            module.bias.copy_(imp.graph.initializers[bias_name].to_torch().float())
    return module


def _gemm_linear(imp: Importer, node: Any) -> nn.Linear:
    """A Gemm that onnx2torch leaves as its own module: an (1, O) bias, or a refusal naming why."""
    attrs, inputs = node.attributes, node.input_values
    if attrs.get("transA", 0) or inputs[1] not in imp.graph.initializers:
        raise imp.error(f"{imp.node_label(node)} cannot be an Fc cell: its weights must be a constant "
                        "and its input not transposed")
    weight = imp.graph.initializers[inputs[1]].to_torch().float()
    weight = weight if attrs.get("transB", 0) else weight.T  # (out, in)
    bias = None
    if len(inputs) > 2 and inputs[2]:
        if inputs[2] not in imp.graph.initializers or \
                imp.graph.initializers[inputs[2]].to_torch().numel() != weight.shape[0]:
            raise imp.error(f"{imp.node_label(node)} cannot be an Fc cell: its bias must be a constant "
                            "with one value per output")
        bias = imp.graph.initializers[inputs[2]].to_torch().float().reshape(-1) * attrs.get("beta", 1.0)
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        module.weight.copy_(weight * attrs.get("alpha", 1.0))
        if bias is not None:
            module.bias.copy_(bias)
    return module


def batchnorm(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell:
    """BatchNormalization; ``Epsilon`` and ``MovingAverageMomentum`` of a ConfigSection replace the graph's."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise imp.error(f"{imp.node_label(node)}: qatrun imports BatchNormalization with constant scale, "
                        "bias, mean and variance only")
    section, params = settings(imp, node, "BatchNorm")
    given = read_params(params, (EPSILON, MOMENTUM, BACK_PROPAGATE))
    if given.get(EPSILON.name, 1.0) <= 0:
        raise params.error(EPSILON.name, f"expected a positive value, found {given[EPSILON.name]}")
    if not 0 <= given.get(MOMENTUM.name, 0.0) < 1:
        raise params.error(MOMENTUM.name, f"expected a value in [0, 1), found {given[MOMENTUM.name]}")
    eps, momentum = given.get(EPSILON.name, module.eps), given.get(MOMENTUM.name, module.momentum)
    if momentum == 0 and isinstance(module, nn.BatchNorm2d):
        state = module.state_dict()
        module = layers.RunningStatsBatchNorm2d(module.num_features)
        module.load_state_dict(state)
    module.eps, module.momentum = eps, momentum
    if not imp.file.init:
        module.reset_parameters()
        module.running_var.zero_()  # N2D2's initial variance, as a hand-made BatchNorm
    back_propagate = given.get(BACK_PROPAGATE.name, True)
    values = {EPSILON.name: eps, MOMENTUM.name: momentum, BACK_PROPAGATE.name: back_propagate}
    return imp.emit(node, "BatchNorm", module, [node.input_values[0]], section, values)


def pool(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
    """Max and average pooling; a global pooling or a ReduceMean/Max over H, W is a window of the whole input."""
    op, data = node.operation_type, [node.input_values[0]]
    example = imp.tensor(data[0])[1]
    if op.startswith(("Global", "Reduce")):  # a window of the whole input, as N2D2's global pooling
        over_hw = sorted(axis % 4 for axis in node.attributes.get("axes", [])) == [2, 3]
        if example.dim() != 4 or op.startswith("Reduce") and not (over_hw and node.attributes.get("keepdims", 1)):
            return None
        window = tuple(example.shape[2:])
        module = nn.MaxPool2d(window) if op.endswith("MaxPool") or op == "ReduceMax" else nn.AvgPool2d(window)
    elif not isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.Sequential)):
        return None
    section, _ = settings(imp, node, "Pool")
    return imp.emit(node, "Pool", module, data, section, {})


def dropout(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell:
    """Dropout with a constant ratio; a ConfigSection's ``Dropout`` replaces it."""
    p = module.p if isinstance(module, nn.Dropout) else 0.5
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            p = float(onnx2torch().get_const_value(node.input_values[1], imp.graph))
        except KeyError:
            raise imp.error(f"{imp.node_label(node)}: the dropout ratio must be a constant") from None
    section, params = settings(imp, node, "Dropout")
    given = read_params(params, CELL_TYPES["Dropout"].params)
    if not 0 <= given.get("Dropout", 0.0) < 1:
        raise params.error("Dropout", f"expected a probability in [0, 1), found {given['Dropout']}")
    p = given.get("Dropout", p)
    return imp.emit(node, "Dropout", nn.Dropout(p), [node.input_values[0]], section, {"Dropout": p})


def lrn(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell:
    """LRN, onnx2torch's module as it is."""
    section, _ = settings(imp, node, "LRN")
    return imp.emit(node, "LRN", module, [node.input_values[0]], section, {})


def elemwise(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
    """Add, Sum, Sub, Mul, Max of computed tensors of one shape; with a constant operand, glue."""
    values = [imp.plan.resolve(value) for value in node.input_values]
    if len(values) < 2 or any(value not in imp.tensors or value in imp.graph.initializers for value in values):
        return None
    examples = [imp.tensors[value][1] for value in values]
    if len({tuple(e.shape) for e in examples}) != 1 or examples[0].dim() not in (2, 4):
        return None
    op = node.operation_type
    weights = torch.ones(len(values), examples[0].shape[1])
    if op == "Sub":
        weights[1] = -1.0
    section, _ = settings(imp, node, "ElemWise")
    module = layers.ElemWise(ELEMWISE_OPS[op], weights, torch.zeros_like(weights))
    return imp.emit(node, "ElemWise", module, values, section, {})


def softmax(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
    """Softmax over the channels (of vectors, or of images from opset 13); over another axis, glue."""
    example = imp.tensor(node.input_values[0])[1]
    opset = imp.file.opsets.get("", 0)
    axis = node.attributes.get("axis", -1 if opset >= 13 else 1)
    if not (example.dim() == 2 and axis in (1, -1) or example.dim() == 4 and opset >= 13 and axis in (1, -3)):
        return None
    section, _ = settings(imp, node, "Softmax")
    return imp.emit(node, "Softmax", layers.Softmax(), [node.input_values[0]], section, {})


def flatten(imp: Importer, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
    """Flatten(axis=1) becomes ``torch.flatten(x, 1)``, the form a hand-made Fc is preceded by (no cell)."""
    if not isinstance(module, nn.Flatten) or (module.start_dim, module.end_dim) != (1, -1):
        return None
    value = imp.plan.resolve(node.input_values[0])
    source, example = imp.tensor(value)
    call = imp.builder.graph.call_function(torch.flatten, (source, 1))
    imp.set(node.output_values[0], call, torch.flatten(example, 1), imp.owner.get(value))
    imp.file.kinds[node.output_values[0]] = "glue"
    return NO_CELL


HANDLERS: dict[str, Callable[..., Cell | None]] = {
    "Conv": conv,
    "ConvTranspose": conv,
    "Gemm": fc,
    "MatMul": fc,
    "BatchNormalization": batchnorm,
    "Dropout": dropout,
    "LRN": lrn,
    "Softmax": softmax,
    "Flatten": flatten,
    **{op: pool for op in POOL_OPS},
    **{op: elemwise for op in ELEMWISE_OPS},
}
"""ONNX op type -> its handler (the ops N2D2 makes cells of; the others are glue)."""
