"""ONNX import (``Type=ONNX`` sections) and N2D2's override sections: reference/n2d2.md section 1.9.

Design note.

An ``[onnx]`` section (any name) with ``Type=ONNX`` and ``File=model.onnx`` becomes part of the one
``torch.fx.GraphModule`` that the hand-made builder writes, in the same form: every ONNX node N2D2 turns
into a cell becomes a :class:`~qatrun.net.graph.Cell` named after the node's *first output* (N2D2's cell
name), its module a top-level submodule ``module_name(<output>)``:

    ONNX op                                   cell type   module
    Conv                                      Conv        nn.Conv2d (an asymmetric pad: a ``<output>_padding``
                                                          Padding cell before it, as N2D2 inserts)
    ConvTranspose                             Deconv      nn.ConvTranspose2d
    Gemm, MatMul (constant 2-D weights)       Fc          nn.Linear after ``torch.flatten(x, 1)``; a MatMul's
                                                          following Add of a constant vector is its bias
    BatchNormalization                        BatchNorm   nn.BatchNorm2d
    MaxPool, AveragePool, GlobalAverage/      Pool        nn.MaxPool2d / nn.AvgPool2d (global: a window of
    GlobalMaxPool, ReduceMean/Max over H, W               the whole input, as N2D2's PoolDims)
    Dropout                                   Dropout     nn.Dropout
    LRN                                       LRN         onnx2torch's module
    Add, Sum, Sub, Mul, Max of tensors        ElemWise    layers.ElemWise
    Softmax over channels                     Softmax     layers.Softmax
    Relu, LeakyRelu, Sigmoid, Tanh            -           ``<cell>_act`` of the cell before it (below)

Every other node (Flatten, Reshape, Concat, Constant...) is *glue*: onnx2torch's module, kept in a
container submodule named after the ONNX section (``gm.onnx.<node>``), so it cannot collide with a cell.
Identity nodes and the outputs listed in ``Ignore=`` are skipped: their output is their first input.

Overrides, exactly as N2D2 resolves them (``DeepNetGenerator::ONNX_processGraph``): a cell's settings
come from the section named after its first output, else from ``[<onnx>:<Kind>_def]`` for Kind in Conv,
Fc, BatchNorm, Pool, Dropout, LRN; the chosen section is read like a hand-made layer's (ConfigSection
cell parameters, fillers, and later ``QWeight*`` and solvers by their packages). Geometry always comes
from the graph: a geometry key there (``KernelDims``, ``NbOutputs``...) is an error, where N2D2 ignores
it. A Relu is no cell: it becomes the activation of the cell whose output it reads, and a section named
after the Relu's output replaces that activation (its ``ActivationFunction``) and holds its ``QAct*`` keys;
there is no default section for activations. A Relu that cannot be merged (its input feeds other nodes
too, or comes from no cell) becomes an Activation cell named after its output.

Where the section holding a cell's activation settings is not the cell's own section, it is recorded as
``Cell.act_section``: the quant package reads ``QWeight*`` from ``cell.section`` and ``QAct*`` from
``cell.act_section or cell.section``.

Where qatrun differs from N2D2, and why:

* ``ONNX_init=0`` refills Conv, Deconv and Fc weights and biases with the section's fillers (N2D2's
  default N(0, 0.05) without one) and resets BatchNorm to scale 1, shift 0, mean 0, variance 0, as a
  hand-made BatchNorm starts. With ``ONNX_init=1`` fillers have no effect: qatrun says so once per section.
* BatchNorm momentum: N2D2 copies the ONNX attribute (0.9 by default) into ``MovingAverageMomentum``,
  whose convention is the opposite of ONNX's, so its running statistics follow each batch at 90 %.
  qatrun keeps the meaning (PyTorch momentum = 1 - ONNX momentum); a ConfigSection's
  ``MovingAverageMomentum`` still overrides it, in N2D2's (= PyTorch's) convention.
* An ``ActivationFunction`` (with its ``QAct*``) in the override section of a node that no Relu follows
  gives the cell that activation, ``<cell>_act``, as in a hand-made layer. N2D2 ignores the key there, so
  such an output (the BatchNorm before a residual Add) cannot be quantized, and a residual sum of an
  unquantized branch has no integer-only form; ``ActivationFunction=Linear`` + ``QAct=SAT`` in
  ``[res1_1_bn2]`` quantizes it. Where a Relu follows, the key is an error, as below.
* Errors where N2D2 is silent: an override section that names no node (with a did-you-mean over the node
  outputs), a geometry key in an override section, an ``ActivationFunction`` in the override section of
  a node a Relu follows (N2D2 reads that activation from the Relu's section), a graph input size that differs from ``[sp]``
  (N2D2 warns; ``IgnoreInputSize=1`` runs the graph on the ``[sp]`` size). ``Transpose=1`` and ``CNTK=1``
  are not supported.

Conversion goes node by node through onnx2torch's converter registry, rather than through
``onnx2torch.convert`` on the whole model (which names modules after node *names*; its
``attach_onnx_mapping=True`` would be needed to map them back to outputs): converting each node itself
gives the output names directly, lets ``Ignore=`` skip a node that onnx2torch cannot convert, and lets an
unconvertible operator be reported with its node. Each converted module runs once on a zero input of the
``[sp]`` size as it is added, which gives every shape (and catches an input size the graph cannot take).
"""

from __future__ import annotations

import functools
import inspect
import operator
import os
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from qatrun.errors import did_you_mean
from qatrun.ini import Key, warn
from qatrun.net import layers
from qatrun.net.activations import ACTIVATION, ACTIVATION_KEYS, FUNCTIONS, make_activation, read_activation
from qatrun.net.batchnorm import EPSILON, MOMENTUM
from qatrun.net.cells import CELL_TYPES, DATA_TYPE, INPUT, MODEL, TYPE, Shape, check_placement
from qatrun.net.conv import BACK_PROPAGATE, CONV_PARAMS, NO_BIAS, OUTPUTS_REMAP
from qatrun.net.fc import DROP_CONNECT, FC_PARAMS, NORMALIZE
from qatrun.net.fillers import DEFAULT_FILLER, FILLER_KEYS, fill_, read_filler
from qatrun.net.builder import RESERVED, SOURCES, Cell, GraphBuilder, Value, activation_name, module_name

if TYPE_CHECKING:
    import onnx

    from qatrun.errors import ConfigError
    from qatrun.ini import Document, Section

ONNX = "ONNX"
"""The ``Type=`` of an ONNX import section."""

FILE = Key("File", "path", doc="the ONNX model; environment variables expanded, relative to the INI's directory")
ONNX_INIT = Key("ONNX_init", "bool", True, "1: weights from the file; 0: from the override sections' fillers")
IGNORE = Key("Ignore", "strs", (), "node output names to skip (the node's output becomes its first input)")
IGNORE_INPUT_SIZE = Key("IgnoreInputSize", "bool", False, "run the graph on the [sp] size even if it declares another")
TRANSPOSE = Key("Transpose", "bool", False, "swap the first two dimensions of the whole graph (not supported)")
CNTK = Key("CNTK", "bool", False, "the file comes from CNTK (not supported)")
ONNX_KEYS = (INPUT, TYPE, MODEL, DATA_TYPE, FILE, ONNX_INIT, IGNORE, IGNORE_INPUT_SIZE, TRANSPOSE, CNTK)

DEFAULT_KINDS = ("Conv", "Fc", "BatchNorm", "Pool", "Dropout", "LRN")
"""Kinds with a default override section ``[<onnx>:<Kind>_def]`` (N2D2 has none for activations)."""

POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")
ELEMWISE_OPS = {"Add": "Sum", "Sum": "Sum", "Sub": "Sum", "Mul": "Prod", "Max": "Max"}

# ONNX activation op -> (N2D2 function, its parameters from the node's attributes).
ACTIVATION_OPS = {
    "Relu": lambda attrs: ("Rectifier", {"LeakSlope": 0.0, "Clipping": 0.0}),
    "LeakyRelu": lambda attrs: ("Rectifier", {"LeakSlope": float(attrs.get("alpha", 0.01)), "Clipping": 0.0}),
    "Sigmoid": lambda attrs: ("Logistic", {}),
    "Tanh": lambda attrs: ("Tanh", {"Alpha": 1.0}),
}

_WEIGHT_KINDS = ("Conv", "Deconv", "Fc")
_FILLER_NAMES = {name for table in FILLER_KEYS.values() for name in table}


# --------------------------------------------------------------------------------------------------
# onnx2torch, without torchvision


@functools.cache
def _onnx2torch() -> types.SimpleNamespace:
    """Imports onnx2torch's graph reader, converter registry and shape inference.

    onnx2torch imports torchvision at start-up for two converters (NonMaxSuppression, RoiAlign) that no
    classification network uses; torchvision is not a qatrun dependency (installing it pulls another torch
    build). When torchvision cannot be imported, a stand-in is put in ``sys.modules`` for the duration of
    the import only: those two converters load, and fail with a clear message if a graph ever runs them.
    """
    try:
        import torchvision  # noqa: F401
        stand_in = None
    except Exception:  # missing or broken: either way onnx2torch must still load
        stand_in = _torchvision_stand_in()
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.ops")}
    if stand_in is not None:
        sys.modules.update({"torchvision": stand_in, "torchvision.ops": stand_in.ops})
    try:
        from onnx2torch.node_converters import get_converter
        from onnx2torch.onnx_graph import OnnxGraph
        from onnx2torch.utils.common import get_const_value
        from onnx2torch.utils.safe_shape_inference import safe_shape_inference
    finally:
        if stand_in is not None:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
    return types.SimpleNamespace(
        OnnxGraph=OnnxGraph, get_converter=get_converter, get_const_value=get_const_value,
        safe_shape_inference=safe_shape_inference,
    )


def _torchvision_stand_in() -> types.ModuleType:
    def missing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("this operator needs torchvision, which is not installed")

    package, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    for name in ("nms", "roi_align", "box_convert"):
        setattr(ops, name, missing)
    package.ops = ops
    return package


# --------------------------------------------------------------------------------------------------
# Reading the section and the file


@dataclass
class OnnxFile:
    """One ``Type=ONNX`` section and the graph its file holds.

    Attributes:
        section: the ONNX section.
        path: the file read.
        graph: onnx2torch's view of the (shape-inferred) graph.
        opsets: domain -> opset version.
        init: ``ONNX_init``.
        ignore: the ``Ignore`` output names.
        ignore_input_size: ``IgnoreInputSize``.
        outputs: the first output of every node, in graph order (the names overrides may use).
        kinds: first output -> what qatrun made of the node (a cell type, ``activation``, ``glue``,
            ``ignored``...), filled by the import.
        matched: override sections the import used, by name.
        configured: the names of those read as a cell's settings (the others hold an activation's).
    """

    section: Section
    path: str
    graph: Any
    opsets: dict[str, int]
    init: bool
    ignore: tuple[str, ...]
    ignore_input_size: bool
    outputs: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    matched: dict[str, Section] = field(default_factory=dict)
    configured: set[str] = field(default_factory=set)

    def error(self, message: str) -> ConfigError:
        """An error at the ``File`` key: the graph it names is the offending text."""
        return self.section.error(FILE.name, message)


def is_onnx(section: Section) -> bool:
    """Whether a layer section imports an ONNX file (``Type=ONNX``)."""
    return section.has(TYPE.name) and section.raw(TYPE.name) == ONNX


def load_files(layer_sections: dict[str, Section]) -> dict[str, OnnxFile]:
    """Reads every ``Type=ONNX`` section and its file.

    Args:
        layer_sections: the layer sections by name.

    Returns:
        Section name -> its file, for the ONNX sections.

    Raises:
        ConfigError: a bad key, a missing or unreadable file, an unknown ``Ignore`` name.
    """
    return {name: _load(section) for name, section in layer_sections.items() if is_onnx(section)}


def _load(section: Section) -> OnnxFile:
    section.declare(*(name for key in ONNX_KEYS for name in key.names))
    section.read(MODEL)
    if section.read(DATA_TYPE) != "Float32":
        raise section.error(DATA_TYPE.name, "qatrun computes in Float32 only")
    for key in (TRANSPOSE, CNTK):
        if section.read(key):
            raise section.error(key.name, f"{key.name}=1 is not supported by qatrun")
    path = _path(section)
    model = _read_model(section, path)
    o2t = _onnx2torch()
    try:
        model = o2t.safe_shape_inference(model)
    except Exception as exc:  # onnx's checker: any failure means a malformed graph
        raise section.error(FILE.name, f"{path}: the ONNX graph is malformed: {_first_line(exc)}") from None
    graph = o2t.OnnxGraph(model.graph)
    onnx_file = OnnxFile(
        section, path, graph, {opset.domain: opset.version for opset in model.opset_import},
        section.read(ONNX_INIT), section.read(IGNORE), section.read(IGNORE_INPUT_SIZE),
        [node.output_values[0] for node in graph.nodes.values() if node.output_values],
    )
    for name in onnx_file.ignore:
        if name not in onnx_file.outputs:
            suggestion = did_you_mean(name, onnx_file.outputs)
            raise section.error(IGNORE.name, f"'{name}' is no node output of {path}{suggestion}")
    return onnx_file


def _path(section: Section) -> str:
    path = section.read(FILE)
    if not path:
        raise section.error(FILE.name, "expected the path of an ONNX file")
    where = section.location_of(FILE.name).path  # the INI file the key was written in
    if not os.path.isabs(path) and not where.startswith("<"):  # not <string> or <command line>
        path = os.path.join(os.path.dirname(os.path.abspath(where)), path)
    return os.path.normpath(path)


def _read_model(section: Section, path: str) -> onnx.ModelProto:
    import onnx

    if not os.path.isfile(path):
        raise section.error(FILE.name, f"no such file: {path}")
    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf and OS errors alike: the file is not a readable model
        raise section.error(FILE.name, f"cannot read {path} as an ONNX model: {_first_line(exc)}") from None
    if not model.graph.node:
        raise section.error(FILE.name, f"{path} holds no ONNX graph (no nodes)")
    if model.ir_version < 3:
        raise section.error(FILE.name, f"{path}: ONNX IR version {model.ir_version} is too old (3 or later)")
    _fold_constant_identities(model)
    return model


def _fold_constant_identities(model: onnx.ModelProto) -> None:
    """Replaces ``Identity(initializer)`` by an initializer of that name.

    torch's exporter shares equal parameters through Identity nodes (two BatchNorms both at their initial
    scale 1), which would make the parameters look computed.
    """
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = type(initializers[node.input[0]])()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            initializers[copy.name] = copy
            model.graph.node.remove(node)


# --------------------------------------------------------------------------------------------------
# Hooks for graph.build: names, ordering, inputs


def provided_names(files: dict[str, OnnxFile], layer_sections: dict[str, Section]) -> dict[str, str]:
    """Node output name -> the ONNX section importing it, for ``Input=<node>`` of INI layers.

    Raises:
        ConfigError: a layer section named like a node output.
    """
    provided: dict[str, str] = {}
    for name, onnx_file in files.items():
        for output in onnx_file.outputs:
            if output in layer_sections:
                raise layer_sections[output].error(
                    None, f"[{output}] is a layer (it has Input=) and a node output of the graph imported by "
                    f"[{name}]: rename the layer"
                )
            provided[output] = name
    return provided


def ordering(parents: dict[str, tuple[str, ...]], provided: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """The parents used to order the layers: a node output stands for the ONNX section importing it."""
    return {name: tuple(provided.get(parent, parent) for parent in inputs) for name, inputs in parents.items()}


def data_inputs(section: Section, inputs: tuple[str, ...], files: dict[str, OnnxFile]) -> tuple[str, ...]:
    """The inputs a layer reads: an ONNX section name in ``Input=`` only orders (``Input=onnx,<node>``).

    Raises:
        ConfigError: ``Input=`` names only ONNX sections.
    """
    kept = tuple(name for name in inputs if name not in files)
    if not kept:
        onnx_name = inputs[0]
        raise section.error(
            INPUT.name, f"[{onnx_name}] imports an ONNX graph: name the node output to read after it "
            f"(Input={onnx_name},<node output>)"
        )
    return kept


# --------------------------------------------------------------------------------------------------
# The import


@dataclass
class _Plan:
    """What is known before converting: skipped nodes, uses of each value, MatMul nodes that are Fc cells."""

    alias: dict[str, str] = field(default_factory=dict)
    uses: Counter[str] = field(default_factory=Counter)
    matmul_fc: dict[str, str | None] = field(default_factory=dict)  # MatMul unique name -> bias initializer
    folded: set[str] = field(default_factory=set)  # unique names of Add nodes folded into a MatMul's bias
    activated: set[str] = field(default_factory=set)  # values read by one activation node alone (merged into the cell)

    def resolve(self, value: str) -> str:
        while value in self.alias:
            value = self.alias[value]
        return value


def _rank(graph: Any, value: str) -> int | None:
    info = graph.value_info.get(value)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def _plan(onnx_file: OnnxFile) -> _Plan:
    graph, plan = onnx_file.graph, _Plan()
    consumers: dict[str, list[Any]] = {}
    for node in graph.nodes.values():
        for value in node.input_values:
            consumers.setdefault(value, []).append(node)
    for node in graph.nodes.values():
        output = node.output_values[0]
        if output in onnx_file.ignore or node.operation_type == "Identity":
            plan.alias[output] = node.input_values[0]
        elif node.operation_type == "MatMul" and node.input_values[1] in graph.initializers \
                and len(graph.initializers[node.input_values[1]].proto.dims) == 2 \
                and _rank(graph, node.input_values[0]) == 2:
            plan.matmul_fc[node.unique_name] = None
            users = consumers.get(output, [])
            if len(users) == 1 and users[0].operation_type == "Add" and output not in graph.output_values:
                add = users[0]
                other = [value for value in add.input_values if value != output]
                outputs = graph.initializers[node.input_values[1]].proto.dims[1]
                if len(other) == 1 and other[0] in graph.initializers \
                        and list(graph.initializers[other[0]].proto.dims) == [outputs]:
                    plan.matmul_fc[node.unique_name] = other[0]
                    plan.folded.add(add.unique_name)
                    plan.alias[add.output_values[0]] = output
    for node in graph.nodes.values():
        if node.output_values[0] in plan.alias:  # skipped, ignored and folded nodes use nothing
            continue
        for value in node.input_values:
            if value:
                plan.uses[plan.resolve(value)] += 1
    for value in graph.output_values:
        plan.uses[plan.resolve(value)] += 1
    for node in graph.nodes.values():
        if node.operation_type in ACTIVATION_OPS and node.output_values[0] not in plan.alias:
            value = plan.resolve(node.input_values[0])
            if plan.uses[value] == 1:
                plan.activated.add(value)
    return plan


def _image_shape(tensor: Tensor) -> tuple[Shape, bool] | None:
    """(C, H, W) and whether the tensor is (N, C), or None for anything but images and vectors."""
    if tensor.dim() == 4:
        return tuple(tensor.shape[1:]), False  # type: ignore[return-value]
    if tensor.dim() == 2:
        return (tensor.shape[1], 1, 1), True
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _fan_in_out(module: nn.Module) -> tuple[int, int]:
    """N2D2's fans of a weight (fillers.py), the same expression for the three torch layouts.

    Conv (O, C/g, kH, kW): fan-in kH·kW·C/g, fan-out kH·kW·O; Deconv (C, O/g, kH, kW): kH·kW·O/g and
    kH·kW·C (as conv.py); Fc (O, I): I and O.
    """
    weight = module.weight
    area = weight[0, 0].numel()  # kH·kW, or 1 for an Fc
    return area * weight.shape[1], area * weight.shape[0]


def _macs(module: nn.Module, x: Tensor, y: Tensor) -> int:
    """Multiply-accumulates per image."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return x[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return y[0].numel() * (module.in_channels // module.groups) * kh * kw
    return 0


def _graph_keys(kind: str) -> set[str]:
    """Keys of a hand-made layer section that an imported node takes from the graph instead."""
    cell_type = CELL_TYPES.get(kind)
    names = {"NbOutputs"}
    if cell_type is not None:
        names |= {name for key in cell_type.keys for name in key.names}
    return names - _FILLER_NAMES


class _Importer:
    """Writes one ONNX graph into the builder's fx graph, node by node."""

    def __init__(self, doc: Document, onnx_file: OnnxFile, builder: GraphBuilder, source: str) -> None:
        self.doc, self.file, self.builder, self.source = doc, onnx_file, builder, source
        self.graph = onnx_file.graph
        self.plan = _plan(onnx_file)
        self.prefix = module_name(onnx_file.section.name)
        self._glue: nn.Module | None = None
        self.tensors: dict[str, tuple[fx.Node, Tensor]] = {}
        self.owner: dict[str, str] = {}  # value -> the cell whose output it is (through glue)
        self.cells: dict[str, Cell] = {}
        self.warned: set[str] = set()
        self.input_shape: Shape = builder.values[source].shape
        self.input_value = self.graph_input()

    # -- errors and small helpers ------------------------------------------------------------------

    def error(self, message: str) -> ConfigError:
        return self.file.error(message)

    def node_label(self, node: Any) -> str:
        name = f"'{node.name}' " if node.name else ""
        return f"node {name}({node.operation_type}, output '{node.output_values[0]}')"

    def add_module(self, name: str, module: nn.Module, owner: str) -> None:
        taken = self.builder.owners.get(name)
        if name in RESERVED or taken is not None:
            why = f"already taken by [{taken}]" if taken else "which torch reserves"
            raise self.error(f"node output '{owner}' gives the module name '{name}', {why}")
        self.builder.add_module(name, module, owner)

    def set(self, value: str, node: fx.Node, example: Tensor, owner: str | None) -> None:
        self.tensors[value] = (node, example)
        if owner is not None:
            self.owner[value] = owner
        shape = _image_shape(example) if isinstance(example, Tensor) else None
        if shape is not None:
            self.builder.values[value] = Value(node, *shape)

    def tensor(self, value: str) -> tuple[fx.Node, Tensor]:
        found = self.argument(value)
        if found is None or found[0].op == "get_attr":
            raise self.error(f"value '{value}' is a constant where qatrun expects a tensor computed by the graph")
        return found

    def argument(self, value: str) -> tuple[fx.Node, Tensor] | None:
        value = self.plan.resolve(value)
        if not value:
            return None
        if value in self.tensors:
            return self.tensors[value]
        if value in self.graph.initializers:
            return self.constant(value)
        raise self.error(f"value '{value}' is not computed: it is an output of an ignored or unconverted node")

    def constant(self, value: str) -> tuple[fx.Node, Tensor]:
        tensor = self.graph.initializers[value].to_torch()
        if tensor.is_floating_point():
            tensor = tensor.float()
        constants = self.glue.get_submodule("constants")
        name = f"c{len(constants._buffers)}"
        constants.register_buffer(name, tensor)
        found = (self.builder.graph.get_attr(f"{self.prefix}.constants.{name}"), tensor)
        self.tensors[value] = found
        return found

    @property
    def glue(self) -> nn.Module:
        """The container of glue modules and constants, ``gm.<onnx section>``, added when first needed."""
        if self._glue is None:
            self._glue = nn.Module()
            self._glue.add_module("constants", nn.Module())
            self.builder.add_section_module(self.file.section, self.prefix, self._glue)
        return self._glue

    def cell_name(self, value: str) -> str:
        value = self.plan.resolve(value)
        if value == self.input_value:
            return self.source
        return self.owner.get(value, value)

    def probe(self, node: Any, module: nn.Module, args: list[Any], kwargs: dict[str, Any] | None = None) -> Any:
        """Runs a module on the example values (eval mode, no gradient) to learn its output shape."""
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                return module(*args, **(kwargs or {}))
        except Exception as exc:  # any failure of a converted module: the graph does not fit this input
            size = "x".join(map(str, self.input_shape))
            hint = f" (IgnoreInputSize=1 runs the graph on the [{self.source}] size)"
            hint = hint if self.file.ignore_input_size else ""
            raise self.error(f"{self.node_label(node)} fails on a {size} input{hint}: {_first_line(exc)}") from None
        finally:
            module.train(training)

    # -- the walk ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Cell]:
        start = self.builder.values[self.source]
        self.set(self.input_value, self.builder.image(start), torch.zeros(1, *self.input_shape), None)
        for node in self.graph.nodes.values():
            self.visit(node)
        for value in self.plan.alias:  # an ignored or Identity output reads as its input
            resolved = self.plan.resolve(value)
            if resolved in self.tensors:
                self.set(value, *self.tensors[resolved], self.owner.get(resolved))
        return self.cells

    def graph_input(self) -> str:
        """The graph's one input, checked against the size of the network input."""
        input_shape = self.input_shape
        inputs = [name for name in self.graph.input_values if name not in self.graph.initializers]
        if len(inputs) != 1:
            raise self.error(
                f"the graph has {len(inputs)} inputs ({', '.join(inputs)}); qatrun imports graphs with one"
            )
        dims = self.graph.value_info[inputs[0]].type.tensor_type.shape.dim
        if len(dims) != 4:
            raise self.error(
                f"the graph input '{inputs[0]}' has {len(dims)} dimensions; qatrun feeds N x C x H x W images"
            )
        declared = [dim.dim_value if dim.HasField("dim_value") else 0 for dim in dims[1:]]
        if not self.file.ignore_input_size and any(d and d != s for d, s in zip(declared, input_shape)):
            shown = "x".join(str(d) if d else "?" for d in declared)
            raise self.error(
                f"the graph takes {shown} inputs (C x H x W), [{self.source}] gives "
                f"{'x'.join(map(str, input_shape))}: set IgnoreInputSize=1 to run the graph on the [{self.source}] size"
            )
        return inputs[0]

    def visit(self, node: Any) -> None:
        op, output = node.operation_type, node.output_values[0]
        if node.unique_name in self.plan.folded:
            self.file.kinds[output] = "folded"
            return
        if output in self.plan.alias:
            self.file.kinds[output] = "ignored" if output in self.file.ignore else "identity"
            return
        if op in ACTIVATION_OPS:
            self.activation(node)
            return
        module, mapping = self.convert(node)
        handler = _HANDLERS.get(op)
        cell = handler(self, node, module, mapping) if handler is not None else None
        if cell is None:
            self.glue_node(node, module, mapping)
            self.file.kinds[output] = "glue"
        elif cell is not _NO_CELL:
            self.file.kinds[output] = cell.type

    def convert(self, node: Any) -> tuple[nn.Module, Any]:
        o2t = _onnx2torch()
        domain = node.domain
        version = self.file.opsets.get(domain, 0)
        op = f"{domain}:{node.operation_type}" if domain else node.operation_type
        try:
            converter = o2t.get_converter(domain=domain, operation_type=node.operation_type, version=version)
        except NotImplementedError:
            raise self.error(
                f"operator {op} (opset {version}) of {self.node_label(node)} cannot be converted by onnx2torch; "
                f"list '{node.output_values[0]}' in Ignore= to skip the node"
            ) from None
        try:
            module, mapping = converter(node, self.graph)
        except Exception as exc:  # a converter's own refusal (unsupported attribute, computed weights...)
            raise self.error(f"onnx2torch cannot convert {self.node_label(node)}: {_first_line(exc)}") from None
        return module.float() if _needs_float32(module) else module, mapping

    def arguments(
        self, module: nn.Module, values: tuple[str, ...]
    ) -> tuple[list[Any], dict[str, Any], list[Any], dict[str, Any]]:
        """fx nodes and examples for a module's inputs; absent optional inputs become keywords, as onnx2torch does."""
        found = [self.argument(value) for value in values]
        nodes = [None if f is None else f[0] for f in found]
        examples = [None if f is None else f[1] for f in found]
        if None not in nodes:
            return nodes, {}, examples, {}
        first = nodes.index(None)
        names = list(inspect.signature(module.forward).parameters)[first:len(nodes)]
        kwargs = {n: v for n, v in zip(names, nodes[first:]) if v is not None}
        example_kwargs = {n: v for n, v in zip(names, examples[first:]) if v is not None}
        return nodes[:first], kwargs, examples[:first], example_kwargs

    def glue_node(self, node: Any, module: nn.Module, mapping: Any) -> None:
        name = module_name(node.unique_name)
        while hasattr(self.glue, name):
            name += "_"
        self.glue.add_module(name, module)
        args, kwargs, example_args, example_kwargs = self.arguments(module, mapping.inputs)
        call = self.builder.graph.call_module(f"{self.prefix}.{name}", tuple(args), kwargs)
        example = self.probe(node, module, example_args, example_kwargs)
        first = self.plan.resolve(mapping.inputs[0]) if mapping.inputs else ""
        owner = self.owner.get(first)
        if len(mapping.outputs) == 1:
            self.set(mapping.outputs[0], call, example, owner)
            return
        for index, output in enumerate(mapping.outputs):
            self.set(output, self.builder.graph.call_function(operator.getitem, (call, index)), example[index], owner)

    # -- cells ------------------------------------------------------------------------------------

    def settings(self, node: Any, kind: str) -> tuple[Section | None, Any]:
        """The override section of a cell (per-node, else the kind's default) and its ConfigSection map."""
        output = node.output_values[0]
        section = self.named_section(output)
        if section is None and kind in DEFAULT_KINDS:
            section = self.doc.get(f"{self.file.section.name}:{kind}_def")
        if section is None:
            return None, None
        self.file.matched[section.name] = section
        self.file.configured.add(section.name)
        self.check_override(section, node, kind)
        section.read(MODEL)
        if section.read(DATA_TYPE) != "Float32":
            raise section.error(DATA_TYPE.name, "qatrun computes in Float32 only")
        params = self.doc.params(section)
        cell_type = CELL_TYPES.get(kind)
        if cell_type is not None:
            params.declare(*(key.name for key in cell_type.params))
            check_placement(cell_type, section, params)
        if kind in _WEIGHT_KINDS:
            section.declare(*_FILLER_NAMES)
        return section, params

    def named_section(self, output: str) -> Section | None:
        section = self.doc.get(output)
        if section is not None:
            self.file.matched[section.name] = section
        return section

    def check_override(self, section: Section, node: Any, kind: str) -> None:
        graph_keys = _graph_keys(kind)
        for key in section.keys():
            if key in graph_keys or key.startswith("Mapping") or key == TYPE.name:
                raise section.error(
                    key, f"the geometry of {self.node_label(node)} comes from the ONNX graph: {key} cannot be "
                    "overridden"
                )
            if (key == ACTIVATION or key.startswith(ACTIVATION + ".")) and node.output_values[0] in self.plan.activated:
                raise section.error(
                    key, f"the activation of an imported cell comes from the graph (N2D2 ignores {key} here): set "
                    "it in a section named after the output of the Relu that follows the node"
                )

    def read_params(self, params: Any, table: tuple[Key, ...]) -> dict[str, Any]:
        """The cell parameters a ConfigSection gives (only those given: the others come from the graph)."""
        if params is None:
            return {}
        return {key.name: params.read(key) for key in table if any(params.has(name) for name in key.names)}

    def fill(self, section: Section | None, module: nn.Module, created_bias: bool) -> None:
        """``ONNX_init=0``: weights and biases from the fillers; a bias the graph lacks always is."""
        weights = read_filler(section, "WeightsFiller") if section is not None else DEFAULT_FILLER
        bias = read_filler(section, "BiasFiller") if section is not None else DEFAULT_FILLER
        outputs = module.out_channels if isinstance(module, nn.ConvTranspose2d) else module.weight.shape[0]
        if not self.file.init:
            fill_(module.weight, weights, *_fan_in_out(module))
        if module.bias is not None and (created_bias or not self.file.init):
            fill_(module.bias, bias, outputs, 1)
        given = section is not None and any(section.has(name) for name in ("WeightsFiller", "BiasFiller"))
        if self.file.init and given and section.name not in self.warned:
            self.warned.add(section.name)
            warn("WeightsFiller/BiasFiller have no effect: ONNX_init=1 takes the weights from the ONNX file",
                 section.location, section.name)

    def weight_params(self, section: Section | None, params: Any, module: nn.Module, table: tuple[Key, ...]
                      ) -> dict[str, Any]:
        """Applies NoBias and the other Conv/Fc parameters; fills the weights."""
        given = self.read_params(params, table)
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
        self.fill(section, module, created)
        values = {key.name: key.default for key in table} | given
        values[NO_BIAS.name] = module.bias is None
        return values

    def emit(self, node: Any, kind: str, module: nn.Module, data: list[str], section: Section | None,
             params: dict[str, Any], name: str | None = None) -> Cell:
        """Adds a cell: its module under ``module_name(name)``, called on its data inputs."""
        name = name or node.output_values[0]
        sources = [self.tensor(value) for value in data]
        args, examples = [s[0] for s in sources], [s[1] for s in sources]
        in_shape = _image_shape(examples[0])
        if kind == "Fc" and examples[0].dim() == 4:
            args = [self.builder.graph.call_function(torch.flatten, (args[0], 1))]
            examples = [torch.flatten(examples[0], 1)]
        if params.get(BACK_PROPAGATE.name) is False:
            args = [self.builder.graph.call_method("detach", (arg,)) for arg in args]
        self.add_module(module_name(name), module, name)
        call = self.builder.graph.call_module(module_name(name), tuple(args))
        example = self.probe(node, module, examples)
        out_shape = _image_shape(example)
        if out_shape is None or in_shape is None:
            raise self.error(f"{self.node_label(node)}: qatrun builds cells on N x C x H x W images or N x C vectors")
        cell = Cell(
            name, kind, module, None, tuple(self.cell_name(value) for value in data), out_shape[0], section,
            in_shape[0], None, _macs(module, sources[0][1], example), params,
        )
        self.cells[name] = cell
        self.set(name, call, example, name)
        if section is not None and kind != "Activation":
            self.own_activation(cell, section)
        return cell

    def own_activation(self, cell: Cell, section: Section) -> None:
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
        self.merge(cell, cell.name, cell.name, function, module, None)

    def conv(self, node: Any, module: nn.Module, mapping: Any) -> Cell:
        data = [node.input_values[0]]
        if isinstance(module, nn.Sequential):  # onnx2torch's answer to an asymmetric padding
            pad, module = module[0], module[1]
            if pad.mode == "constant" and pad.constant_value == 0 and len(pad.pads) == 4:
                pad = nn.ZeroPad2d(tuple(pad.pads))
            padding = self.emit(node, "Padding", pad, data, None, {}, name=f"{node.output_values[0]}_padding")
            data = [padding.name]
        kind = "Deconv" if node.operation_type == "ConvTranspose" else "Conv"
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            raise self.error(f"{self.node_label(node)}: qatrun imports 2-D convolutions only")
        section, params = self.settings(node, kind)
        values = self.weight_params(section, params, module, CONV_PARAMS)
        return self.emit(node, kind, module, data, section, values)

    def fc(self, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
        if node.operation_type == "MatMul":
            if node.unique_name not in self.plan.matmul_fc:
                return None
            module = self.matmul_linear(node)
        elif not isinstance(module, nn.Linear):
            module = self.gemm_linear(node)
        section, params = self.settings(node, "Fc")
        values = self.weight_params(section, params, module, FC_PARAMS)
        return self.emit(node, "Fc", module, [node.input_values[0]], section, values)

    def matmul_linear(self, node: Any) -> nn.Linear:
        weight = self.graph.initializers[node.input_values[1]].to_torch().float()  # (in, out)
        bias_name = self.plan.matmul_fc[node.unique_name]
        module = nn.Linear(weight.shape[0], weight.shape[1], bias=bias_name is not None)
        with torch.no_grad():
            module.weight.copy_(weight.T)
            if bias_name is not None:
                module.bias.copy_(self.graph.initializers[bias_name].to_torch().float())
        return module

    def gemm_linear(self, node: Any) -> nn.Linear:
        """A Gemm that onnx2torch leaves as its own module: an (1, O) bias, or a refusal naming why."""
        attrs, inputs = node.attributes, node.input_values
        if attrs.get("transA", 0) or inputs[1] not in self.graph.initializers:
            raise self.error(f"{self.node_label(node)} cannot be an Fc cell: its weights must be a constant "
                             "and its input not transposed")
        weight = self.graph.initializers[inputs[1]].to_torch().float()
        weight = weight if attrs.get("transB", 0) else weight.T  # (out, in)
        bias = None
        if len(inputs) > 2 and inputs[2]:
            if inputs[2] not in self.graph.initializers or \
                    self.graph.initializers[inputs[2]].to_torch().numel() != weight.shape[0]:
                raise self.error(f"{self.node_label(node)} cannot be an Fc cell: its bias must be a constant "
                                 "with one value per output")
            bias = self.graph.initializers[inputs[2]].to_torch().float().reshape(-1) * attrs.get("beta", 1.0)
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            module.weight.copy_(weight * attrs.get("alpha", 1.0))
            if bias is not None:
                module.bias.copy_(bias)
        return module

    def batchnorm(self, node: Any, module: nn.Module, mapping: Any) -> Cell:
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise self.error(f"{self.node_label(node)}: qatrun imports BatchNormalization with constant scale, "
                             "bias, mean and variance only")
        section, params = self.settings(node, "BatchNorm")
        given = self.read_params(params, (EPSILON, MOMENTUM, BACK_PROPAGATE))
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
        if not self.file.init:
            module.reset_parameters()
            module.running_var.zero_()  # N2D2's initial variance, as a hand-made BatchNorm
        back_propagate = given.get(BACK_PROPAGATE.name, True)
        values = {EPSILON.name: eps, MOMENTUM.name: momentum, BACK_PROPAGATE.name: back_propagate}
        return self.emit(node, "BatchNorm", module, [node.input_values[0]], section, values)

    def pool(self, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
        op, data = node.operation_type, [node.input_values[0]]
        example = self.tensor(data[0])[1]
        if op.startswith(("Global", "Reduce")):  # a window of the whole input, as N2D2's global pooling
            over_hw = sorted(axis % 4 for axis in node.attributes.get("axes", [])) == [2, 3]
            if example.dim() != 4 or op.startswith("Reduce") and not (over_hw and node.attributes.get("keepdims", 1)):
                return None
            window = tuple(example.shape[2:])
            module = nn.MaxPool2d(window) if op.endswith("MaxPool") or op == "ReduceMax" else nn.AvgPool2d(window)
        elif not isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.Sequential)):
            return None
        section, _ = self.settings(node, "Pool")
        return self.emit(node, "Pool", module, data, section, {})

    def dropout(self, node: Any, module: nn.Module, mapping: Any) -> Cell:
        p = module.p if isinstance(module, nn.Dropout) else 0.5
        if len(node.input_values) > 1 and node.input_values[1]:
            try:
                p = float(_onnx2torch().get_const_value(node.input_values[1], self.graph))
            except KeyError:
                raise self.error(f"{self.node_label(node)}: the dropout ratio must be a constant") from None
        section, params = self.settings(node, "Dropout")
        given = self.read_params(params, CELL_TYPES["Dropout"].params)
        if not 0 <= given.get("Dropout", 0.0) < 1:
            raise params.error("Dropout", f"expected a probability in [0, 1), found {given['Dropout']}")
        p = given.get("Dropout", p)
        return self.emit(node, "Dropout", nn.Dropout(p), [node.input_values[0]], section, {"Dropout": p})

    def lrn(self, node: Any, module: nn.Module, mapping: Any) -> Cell:
        section, _ = self.settings(node, "LRN")
        return self.emit(node, "LRN", module, [node.input_values[0]], section, {})

    def elemwise(self, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
        values = [self.plan.resolve(value) for value in node.input_values]
        if len(values) < 2 or any(value not in self.tensors or value in self.graph.initializers for value in values):
            return None
        examples = [self.tensors[value][1] for value in values]
        if len({tuple(e.shape) for e in examples}) != 1 or examples[0].dim() not in (2, 4):
            return None
        op = node.operation_type
        weights = torch.ones(len(values), examples[0].shape[1])
        if op == "Sub":
            weights[1] = -1.0
        section, _ = self.settings(node, "ElemWise")
        module = layers.ElemWise(ELEMWISE_OPS[op], weights, torch.zeros_like(weights))
        return self.emit(node, "ElemWise", module, values, section, {})

    def softmax(self, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
        example = self.tensor(node.input_values[0])[1]
        opset = self.file.opsets.get("", 0)
        axis = node.attributes.get("axis", -1 if opset >= 13 else 1)
        if not (example.dim() == 2 and axis in (1, -1) or example.dim() == 4 and opset >= 13 and axis in (1, -3)):
            return None
        section, _ = self.settings(node, "Softmax")
        return self.emit(node, "Softmax", layers.Softmax(), [node.input_values[0]], section, {})

    def flatten(self, node: Any, module: nn.Module, mapping: Any) -> Cell | None:
        """Flatten(axis=1) becomes ``torch.flatten(x, 1)``, the form a hand-made Fc is preceded by (no cell)."""
        if not isinstance(module, nn.Flatten) or (module.start_dim, module.end_dim) != (1, -1):
            return None
        value = self.plan.resolve(node.input_values[0])
        source, example = self.tensor(value)
        call = self.builder.graph.call_function(torch.flatten, (source, 1))
        self.set(node.output_values[0], call, torch.flatten(example, 1), self.owner.get(value))
        self.file.kinds[node.output_values[0]] = "glue"
        return _NO_CELL

    # -- activations ------------------------------------------------------------------------------

    def activation(self, node: Any) -> None:
        output, value = node.output_values[0], self.plan.resolve(node.input_values[0])
        function, params = ACTIVATION_OPS[node.operation_type](node.attributes)
        section = self.named_section(output)
        module = None
        if section is not None:
            section.declare(*ACTIVATION_KEYS)
            if any(key == ACTIVATION or key.startswith(ACTIVATION + ".") for key in section.keys()):
                function, module = read_activation(section, None)  # type: ignore[misc]
        if module is None:
            full = {name: ACTIVATION_KEYS[f"{ACTIVATION}.{name}"].default for name in FUNCTIONS[function]} | params
            module = make_activation(function, full)
        cell = self.cells.get(value)
        if cell is not None and cell.act_module is None and self.plan.uses[value] == 1:
            self.merge(cell, value, output, function, module, section)
            self.file.kinds[output] = "activation"
            return
        activation = self.emit(node, "Activation", nn.Identity(), [value], section, {})
        self.merge(activation, output, output, function, module, None)
        self.file.kinds[output] = "Activation"

    def merge(self, cell: Cell, value: str, output: str, function: str, module: nn.Module,
              section: Section | None) -> None:
        """Makes ``module`` the activation ``<cell>_act`` of ``cell``, whose output ``value`` it reads."""
        name = activation_name(module_name(cell.name))
        self.add_module(name, module, output)
        source, example = self.tensors[value]
        call = self.builder.graph.call_module(name, (source,))
        example = self.probe_activation(module, example)
        cell.act_module, cell.activation, cell.act_section = module, function, section
        self.set(value, call, example, cell.name)
        self.set(output, call, example, cell.name)

    @staticmethod
    def probe_activation(module: nn.Module, example: Tensor) -> Tensor:
        with torch.no_grad():
            return module(example)


def _needs_float32(module: nn.Module) -> bool:
    """Whether a module holds floating tensors other than float32 (an ONNX file in float16 or float64)."""
    return any(t.is_floating_point() and t.dtype != torch.float32 for t in (*module.parameters(), *module.buffers()))


_NO_CELL: Any = object()
"""A handler's answer for a node it wrote itself without a cell."""


_HANDLERS = {
    "Conv": _Importer.conv,
    "ConvTranspose": _Importer.conv,
    "Gemm": _Importer.fc,
    "MatMul": _Importer.fc,
    "BatchNormalization": _Importer.batchnorm,
    "Dropout": _Importer.dropout,
    "LRN": _Importer.lrn,
    "Softmax": _Importer.softmax,
    "Flatten": _Importer.flatten,
    **{op: _Importer.pool for op in POOL_OPS},
    **{op: _Importer.elemwise for op in ELEMWISE_OPS},
}


def import_graph(doc: Document, onnx_file: OnnxFile, builder: GraphBuilder, inputs: tuple[str, ...]
                 ) -> dict[str, Cell]:
    """Writes an ONNX section's graph into the network being built.

    Args:
        doc: the INI document (override sections are looked up in it).
        onnx_file: the section and its graph, from :func:`load_files`.
        builder: the graph builder of ``graph.build``; every node output that is an image or a vector
            becomes a value later layers can read (``Input=<node output>``).
        inputs: the section's ``Input=`` names.

    Returns:
        The imported cells by name (the node's first output), in graph order.

    Raises:
        ConfigError: at the ``File`` key for the graph's faults (an operator onnx2torch cannot convert, an
            input size that differs from ``[sp]``...), at the offending key of an override section.
    """
    section = onnx_file.section
    if len(inputs) != 1 or inputs[0] not in SOURCES:
        raise section.error(
            INPUT.name, f"an ONNX graph reads the network input: expected Input=sp (or env, cenv), found "
            f"{','.join(inputs)}"
        )
    return _Importer(doc, onnx_file, builder, inputs[0]).run()


def check_overrides(doc: Document, files: list[OnnxFile], layer_sections: dict[str, Section]) -> None:
    """Rejects sections that look like overrides but name no node (after every import).

    A section is taken for an override when it inherits from an ONNX default section or from the base of
    an override that matched (``[relu7]ReluQ_def`` next to ``[relu0]ReluQ_def``), or when its name is
    close to a node output; a section named after a node qatrun makes no cell of (glue, ignored) is an
    error too. Layers, their ConfigSections, base sections, data sections and targets are left alone.

    Raises:
        ConfigError: at the section header, with a did-you-mean over the node outputs.
    """
    if not files:
        return
    outputs = [output for onnx_file in files for output in onnx_file.outputs]
    kinds = {output: kind for onnx_file in files for output, kind in onnx_file.kinds.items()}
    matched = {name: section for onnx_file in files for name, section in onnx_file.matched.items()}
    onnx_names = [onnx_file.section.name for onnx_file in files]
    anchors = {f"{name}:{kind}_def" for name in onnx_names for kind in DEFAULT_KINDS}
    anchors |= {base for section in matched.values() for base in section.bases}
    readers = [s for name, s in layer_sections.items() if name not in onnx_names]
    readers += [onnx_file.matched[name] for onnx_file in files for name in onnx_file.configured]
    skipped = {source.name for section in readers for source in doc.params(section).sources}
    skipped |= {base for section in doc.sections() for base in section.bases}
    skipped |= set(matched) | set(layer_sections) | set(SOURCES) | {"database"}
    for section in doc.sections():
        name = section.name
        if name in skipped or section.template is not None or ".Target" in name \
                or name.startswith(tuple(f"{source}." for source in SOURCES)):
            continue
        _check_default_name(section, onnx_names)
        if name in kinds:
            what = _NO_SETTINGS.get(kinds[name], f"is a {kinds[name]} cell")
            raise section.error(None, f"node '{name}' {what}: the section has nothing to set")
        if did_you_mean(name, outputs, cutoff=0.8) or set(section.bases) & anchors:
            raise section.error(
                None, f"names no node of the ONNX graph imported by [{'], ['.join(onnx_names)}] (an override "
                f"section is named after a node's first output){did_you_mean(name, outputs)}"
            )


_NO_SETTINGS = {
    "glue": "is no cell (qatrun keeps the node as it is)",
    "ignored": "is in Ignore=",
    "identity": "is an Identity (skipped)",
    "folded": "is an Add folded into the bias of the MatMul before it",
}


def _check_default_name(section: Section, onnx_names: list[str]) -> None:
    """``[<onnx>:<Kind>_def]``: the ONNX section must exist and Kind have a default."""
    prefix, colon, kind = section.name.rpartition(":")
    if not colon or not kind.endswith("_def"):
        return
    kind = kind[: -len("_def")]
    if prefix in onnx_names and kind in DEFAULT_KINDS:
        return  # a default that no node of its kind needed
    defaults = ", ".join(f"{k}_def" for k in DEFAULT_KINDS)
    if prefix in onnx_names:
        raise section.error(
            None, f"N2D2 has no default section {kind}_def (defaults: {defaults}); the settings of a Relu go in a "
            f"section named after its output{did_you_mean(kind + '_def', [k + '_def' for k in DEFAULT_KINDS])}"
        )
    if kind in DEFAULT_KINDS:
        raise section.error(
            None, f"[{prefix}] is no ONNX section: defaults are named [<ONNX section>:<Kind>_def]"
            f"{did_you_mean(prefix, onnx_names)}"
        )
