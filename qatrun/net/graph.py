"""From the layer sections of an INI document to one ``torch.fx.GraphModule``: reference/n2d2.md 1.6-1.7.

Layer sections are the sections with ``Input=`` (a comma list; ``sp``, ``env`` and ``cenv`` name the
network input). A layer's rank is 1 + the largest rank of its layer inputs; cells are built by rank, equal
ranks in file order, as N2D2's generator does, so references to a cell's injected properties
(``[conv1]_OutputsWidth``) resolve in the sections built after it.

The graph is written node by node with ``torch.fx.Graph``: one ``call_module`` per cell, named
``module_name(section)``, then ``<module>_act`` for its activation function. Glue between cells is plain
function nodes: channel concatenation of several inputs, the flatten before an Fc, the (N, C) -> (N, C, 1, 1)
reshape when an Fc output feeds a convolution, ``detach`` for ``BackPropagate=0``, and the crop of a
negative Conv padding. The GraphModule carries ``cells`` (section name -> :class:`Cell`) and ``targets``
(:class:`Target` list); ``forward(x)`` returns the output of the target cell, or a tuple when there are
several targets, one per target. ``copy.deepcopy(gm)`` keeps ``cells`` and ``targets`` (pointing at the
copied modules); a pass that builds a new GraphModule from a rewritten graph must carry them over.

A section whose cell type writes a whole sub-network (a :class:`~qatrun.net.cells.Subnetwork`, such as
``Type=ONNX``) goes through the registry's generic hooks: it is read before the order is known, the
values it provides are names ``Input=`` may use (standing, for the order, for the section itself), it
writes its cells into the same :class:`~qatrun.net.builder.GraphBuilder` in its turn, and its type checks
the whole network after the build. This module names no such type.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import fx, nn
from torch.nn import functional as F

from qatrun.errors import ConfigError, Location, did_you_mean
from qatrun.ini import Key
from qatrun.net import layers
# Their cell types register on import (onnx_import: Type=ONNX, a type that writes a sub-network).
from qatrun.net import basic, batchnorm, conv, elemwise, fc, fmp, normalize, onnx_import, pool  # noqa: F401
from qatrun.net.activations import ACTIVATION, ACTIVATION_KEYS, read_activation
from qatrun.net.builder import SOURCES, Cell, GraphBuilder, Value, activation_name, module_name
from qatrun.net.cells import (
    CELL_TYPES,
    COMMON_KEYS,
    DATA_TYPE,
    INPUT,
    MODEL,
    NOT_BUILT_TYPES,
    OUT_OF_SCOPE_TYPES,
    RATE_BASED,
    SPIKING,
    TYPE,
    Built,
    CellType,
    Context,
    Shape,
    Source,
    Subnetwork,
    cell_generators,
    check_placement,
    spiking_key,
    spiking_model,
)
from qatrun.net.conv import BACK_PROPAGATE

if TYPE_CHECKING:
    from qatrun.ini import Document, Params, Section

DEFAULT_MODEL = Key("DefaultModel", "str", "Transcode", "N2D2's implementation (Frame, Frame_CUDA): no effect")
DEFAULT_DATA_TYPE = Key(
    "DefaultDataType", "enum", "Float32", "number type of the cells", ("Float16", "Float32", "Float64")
)
INSERT_BATCHNORM = Key("InsertBatchNormAfterConv", "bool", False, "insert a BatchNorm after every Conv (not supported)")
GLOBAL_KEYS = (DEFAULT_MODEL, DEFAULT_DATA_TYPE, INSERT_BATCHNORM)

TARGET_KEYS = (
    Key("Type", "enum", "TargetScore", "the target kind (classification scores)", ("TargetScore",)),
    Key("TargetValue", "float", 1.0, "desired output of the labelled class"),
    Key("DefaultValue", "float", 0.0, "desired output of the other classes"),
    Key("TopN", "int", 1, "also report the top-N recognition rate"),
    Key("LabelsMapping", "path", "", "file mapping data set labels to outputs"),
    Key("CreateMissingLabels", "bool", False, "add labels of LabelsMapping missing from the data set"),
    Key("NoDisplayLabel", "int", -1, "label not displayed in N2D2's images (no effect in qatrun)"),
    Key("LabelsHueOffset", "int", 0, "hue offset of N2D2's label images (no effect in qatrun)"),
)
_TARGET = {key.name: key for key in TARGET_KEYS}
OUT_OF_SCOPE_TARGETS = {
    "TargetROIs": "the target of N2D2's object detection (bounding boxes)",
    "TargetRP": "the target of N2D2's region proposal network (object detection)",
    "TargetBBox": "the target of N2D2's bounding-box regression (object detection)",
    "TargetMatching": "the target of N2D2's face matching (distance learning)",
}
MISSING_TARGET = "Missing target cell (no [*.Target] section found)"

@dataclass
class Target:
    """One ``[<cell>.Target*]`` section.

    Attributes:
        cell: the section name of the target cell.
        loss: ``ce`` for a Softmax cell with ``WithLoss=1`` (its output is the logits), else ``mse``
            (squared error to TargetValue for the label and DefaultValue elsewhere).
        section: the target section.
        target_value: desired output of the labelled class.
        default_value: desired output of the other classes.
        top_n: N of the top-N rate reported besides the top-1 (1 = none).
        labels_mapping: path of a labels mapping file, or "".
        create_missing_labels: with a labels mapping, add the labels it lacks.
    """

    cell: str
    loss: str
    section: Section
    target_value: float = 1.0
    default_value: float = 0.0
    top_n: int = 1
    labels_mapping: str = ""
    create_missing_labels: bool = False

    def __deepcopy__(self, memo: dict[int, object]) -> Target:
        return copy.copy(self)  # every field is immutable but the section, which stays shared


def declared_keys(cell_type: str) -> set[str]:
    """The keys qatrun reads for a cell type (layer section and ConfigSection), for did-you-mean.

    Args:
        cell_type: a ``Type=`` name, or ``Target`` for target sections; an unknown name gives the keys
            every layer section takes.
    """
    if cell_type == "Target":
        return set(_TARGET)
    names = {key.name for key in COMMON_KEYS}
    found = CELL_TYPES.get(cell_type)
    if found is not None:
        names |= {key.name for key in (*found.keys, *found.params)}
        if found.activation is not None:
            names |= set(ACTIVATION_KEYS)
    return names


def _read_inputs(section: Section, layer_names: set[str]) -> tuple[str, ...]:
    names = tuple(name.strip() for name in section.read(INPUT).split(","))
    for name in names:
        if not name:
            raise section.error(INPUT.name, "empty name in the comma-separated list")
        if name not in layer_names and name not in SOURCES:
            hint = did_you_mean(name, sorted(layer_names)) or did_you_mean(name, list(SOURCES))
            raise section.error(
                INPUT.name,
                f"'{name}' is neither a layer section (a section with Input=) nor the network input "
                f"(sp, env, cenv){hint}",
            )
    return names


def _order(layers_: dict[str, Section], parents: dict[str, tuple[str, ...]]) -> list[str]:
    """Layer names by rank, equal ranks in file order (``layers_`` is in file order)."""
    rank: dict[str, int] = {}
    for start in layers_:
        if start in rank:
            continue
        path = [start]
        stack = [iter(parents[start])]
        while stack:
            for parent in stack[-1]:
                if parent not in layers_ or parent in rank:
                    continue
                if parent in path:
                    cycle = " -> ".join(path[path.index(parent):] + [parent])
                    raise layers_[path[-1]].error(INPUT.name, f"the layers form a cycle: {cycle}")
                path.append(parent)
                stack.append(iter(parents[parent]))
                break
            else:
                name = path.pop()
                stack.pop()
                rank[name] = 1 + max((rank[p] for p in parents[name] if p in layers_), default=0)
    position = {name: i for i, name in enumerate(layers_)}
    return sorted(layers_, key=lambda name: (rank[name], position[name]))


def _subnetworks(layer_sections: dict[str, Section]
                 ) -> tuple[dict[str, Subnetwork], dict[str, list[Subnetwork]]]:
    """Reads the sections whose cell type writes a sub-network (cells.py), in file order.

    Returns:
        Section name -> its subnetwork, and each such ``Type=`` -> its subnetworks (for ``after_build``).
    """
    found: dict[str, Subnetwork] = {}
    by_type: dict[str, list[Subnetwork]] = {}
    for name, section in layer_sections.items():
        # A missing or unknown Type= is reported when the section is built, in build order.
        cell_type = CELL_TYPES.get(section.raw(TYPE.name)) if section.has(TYPE.name) else None
        if cell_type is not None and cell_type.subnetwork is not None:
            found[name] = cell_type.subnetwork(section)
            by_type.setdefault(cell_type.name, []).append(found[name])
    return found, by_type


def _data_inputs(section: Section, inputs: tuple[str, ...], subnetworks: dict[str, Subnetwork]) -> tuple[str, ...]:
    """The inputs a layer reads: a subnetwork section in ``Input=`` only orders (``Input=<it>,<its value>``).

    Raises:
        ConfigError: ``Input=`` names only subnetwork sections.
    """
    kept = tuple(name for name in inputs if name not in subnetworks)
    if not kept:
        raise subnetworks[inputs[0]].no_value(section)
    return kept


def _read_globals(doc: Document) -> None:
    glob = doc.global_section
    if spiking_model(glob.read(DEFAULT_MODEL)):
        raise glob.error(DEFAULT_MODEL.name, f"{glob.raw(DEFAULT_MODEL.name)} is N2D2's spiking simulation; "
                         f"{RATE_BASED} (DefaultModel=Frame or Frame_CUDA)")
    if glob.read(DEFAULT_DATA_TYPE) != "Float32":
        raise glob.error(DEFAULT_DATA_TYPE.name, "qatrun computes in Float32 only")
    if glob.read(INSERT_BATCHNORM):
        raise glob.error(INSERT_BATCHNORM.name, "not supported by qatrun: write the BatchNorm layers")


def _arguments(builder: GraphBuilder, section: Section, cell_type: CellType, sources: list[Value],
               names: tuple[str, ...]) -> tuple[list[fx.Node], Shape, bool]:
    """The argument nodes of a cell, the shape its module receives, and whether that is flat."""
    mode, shapes = cell_type.inputs, [value.shape for value in sources]
    described = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in zip(names, shapes))
    if mode == "one" and len(sources) > 1:
        raise section.error(INPUT.name, f"a {cell_type.name} cell takes one input, found {len(sources)}")
    if mode == "many" and len(set(shapes)) > 1:
        raise section.error(INPUT.name, f"the inputs must have one shape, found {described}")
    if mode == "concat" and len({shape[1:] for shape in shapes}) > 1:
        raise section.error(INPUT.name, f"the inputs must have one width and height, found {described}")
    if mode == "flatten":
        total = sum(c * h * w for c, h, w in shapes)
        shape = shapes[0] if len(shapes) == 1 else (total, 1, 1)
        return [builder.concat([builder.flat(value) for value in sources])], shape, True
    if mode == "concat":
        shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        return [builder.concat([builder.image(value) for value in sources])], shape, False
    flat = all(value.flat for value in sources) and not cell_type.spatial
    nodes = [value.node if flat else builder.image(value) for value in sources]
    return nodes, shapes[0], flat


def _inject(section: Section, in_shape: Shape, out_shape: Shape) -> None:
    for key, value in zip(
        ("_NbChannels", "_ChannelsHeight", "_ChannelsWidth", "_NbOutputs", "_OutputsHeight", "_OutputsWidth"),
        (*in_shape, *out_shape),
    ):
        section.inject(key, value)


def _cell_type(section: Section) -> CellType:
    name = section.read(TYPE)
    if name in OUT_OF_SCOPE_TYPES:
        raise section.error(TYPE.name, f"{name} is {OUT_OF_SCOPE_TYPES[name]}; {RATE_BASED}")
    if name in NOT_BUILT_TYPES:
        raise section.error(TYPE.name, f"qatrun does not build a {name} cell, {NOT_BUILT_TYPES[name]}")
    found = CELL_TYPES.get(name)
    if found is None:
        generators = cell_generators()  # N2D2's word: the types that build one cell
        raise section.error(
            TYPE.name,
            f"No cell generator for type '{name}'.{did_you_mean(name, generators)} "
            f"(qatrun builds: {', '.join(generators)})",
        )
    return found


def _build_cell(doc: Document, section: Section, inputs: tuple[str, ...], builder: GraphBuilder) -> Cell:
    cell_type = _cell_type(section)
    if spiking_model(section.read(MODEL)):
        raise section.error(MODEL.name, f"{section.raw(MODEL.name)} is N2D2's spiking simulation; {RATE_BASED}")
    if section.read(DATA_TYPE) != "Float32":
        raise section.error(DATA_TYPE.name, "qatrun computes in Float32 only")
    params = doc.params(section)
    _refuse_spiking(section, params)
    section.declare(*declared_keys(cell_type.name))
    params.declare(*(key.name for key in cell_type.params))
    check_placement(cell_type, section, params)
    sources = [builder.values[name] for name in inputs]
    nodes, in_shape, flat = _arguments(builder, section, cell_type, sources, inputs)
    ctx = Context(section, params, tuple(Source(n, v.shape) for n, v in zip(inputs, sources)), in_shape,
                  cell_type.name)
    assert cell_type.build is not None, cell_type.name  # a subnetwork type's sections are written whole
    built: Built = cell_type.build(ctx)
    activation = _activation(section, cell_type)
    if not built.params.get(BACK_PROPAGATE.name, True):
        nodes = [builder.graph.call_method("detach", (node,)) for node in nodes]
    if built.pre_pad is not None:
        nodes = [builder.graph.call_function(F.pad, (nodes[0], built.pre_pad))]
    name = module_name(section.name)
    builder.add_section_module(section, name, built.module)
    node = builder.graph.call_module(name, tuple(nodes))
    act_module = None
    if activation is not None:
        act_module = activation[1]
        builder.add_section_module(section, activation_name(name), act_module)
        node = builder.graph.call_module(activation_name(name), (node,))
    out_flat = cell_type.output == "flat" or (cell_type.output == "same" and flat)
    builder.values[section.name] = Value(node, built.out_shape, out_flat)
    _inject(section, in_shape, built.out_shape)
    return Cell(
        section.name, cell_type.name, built.module, act_module, inputs, built.out_shape, section, in_shape,
        activation[0] if activation else None, built.macs, built.params,
    )


def _refuse_spiking(section: Section, params: Params) -> None:
    """Refuses the parameters of N2D2's spiking neurons, in the layer section or its ConfigSection.

    Raises:
        ConfigError: at the first such key.
    """
    for reader in (section, params):
        for key in reader.keys():
            if spiking_key(key):
                reader.raw(key)
                raise reader.error(key, f"{key} is {SPIKING}; {RATE_BASED}")


def _activation(section: Section, cell_type: CellType) -> tuple[str, nn.Module] | None:
    if cell_type.activation is None:
        given = [key for key in section.keys() if key == ACTIVATION or key.startswith(ACTIVATION + ".")]
        if given:
            raise section.error(given[0], f"a {cell_type.name} cell has no activation function (N2D2 ignores this key)")
        return None
    return read_activation(section, cell_type.activation or None)


def _targets(doc: Document, order: list[str], cells: dict[str, Cell]) -> list[Target]:
    targets = []
    for name in order:
        pattern = re.sub(r"([*?\[])", r"[\1]", name) + ".Target*"
        for section in doc.matching(pattern):
            if section.has(INPUT.name):
                continue
            kind = section.raw("Type", "TargetScore")
            if kind in OUT_OF_SCOPE_TARGETS:
                raise section.error("Type", f"{kind} is {OUT_OF_SCOPE_TARGETS[kind]}; {RATE_BASED}")
            values = {key.name: section.read(key) for key in TARGET_KEYS}
            if values["TopN"] < 1:
                raise section.error("TopN", f"expected a positive value, found {values['TopN']}")
            module = cells[name].module
            loss = "ce" if isinstance(module, layers.Softmax) and module.with_loss else "mse"
            targets.append(Target(
                name, loss, section, values["TargetValue"], values["DefaultValue"], values["TopN"],
                values["LabelsMapping"], values["CreateMissingLabels"],
            ))
    for section in doc.sections():
        owner, sep, _ = section.name.rpartition(".Target")
        if sep and owner and owner not in cells and not section.has(INPUT.name):
            raise section.error(
                None, f"target section of '{owner}', which is not a layer section{did_you_mean(owner, list(cells))}"
            )
    if not targets:
        last = list(cells)[-1] if cells else None
        if last is None:
            raise ConfigError(MISSING_TARGET, Location(doc.path))
        message = f"{MISSING_TARGET}: the network output [{last}] needs a [{last}.Target] section"
        section = cells[last].section
        if section is None:  # a cell a subnetwork wrote without a section (an ONNX node without override)
            raise ConfigError(message, Location(doc.path))
        raise section.error(None, message)
    return targets


def build(doc: Document, input_shape: tuple[int, int, int]) -> fx.GraphModule:
    """Builds the network of an INI document.

    Args:
        doc: the parsed INI file.
        input_shape: (C, H, W) of one network input, from the data spec.

    Returns:
        A GraphModule carrying ``cells`` and ``targets``; its parameters are filled by the cells' fillers
        with torch's global generator, in build order.

    Raises:
        ConfigError: at the offending key: an unknown type or input, a cycle, a cell parameter outside
            a ConfigSection, inconsistent shapes, a missing target...
    """
    assert len(input_shape) == 3 and min(input_shape) > 0, input_shape
    _read_globals(doc)
    layer_sections = {s.name: s for s in doc.sections() if s.has(INPUT.name) and s.template is None}
    for section in layer_sections.values():
        section.mark_used()
    subnetworks, by_type = _subnetworks(layer_sections)
    provided: dict[str, str] = {}  # value name -> the subnetwork section writing it
    for owner, subnetwork in subnetworks.items():
        provided.update(dict.fromkeys(subnetwork.provides(layer_sections), owner))
    names = set(layer_sections) | set(provided)
    parents = {name: _read_inputs(section, names) for name, section in layer_sections.items()}
    # For the build order, a provided value stands for the section that writes it.
    ranked = {name: tuple(provided.get(parent, parent) for parent in inputs) for name, inputs in parents.items()}
    order = _order(layer_sections, ranked)
    builder = GraphBuilder(tuple(input_shape))
    cells: dict[str, Cell] = {}
    for name in order:
        if name in subnetworks:
            cells.update(subnetworks[name].write(doc, builder, parents[name]))
            continue
        inputs = _data_inputs(layer_sections[name], parents[name], subnetworks)
        cells[name] = _build_cell(doc, layer_sections[name], inputs, builder)
    for type_name, written in by_type.items():  # checks that need the whole network
        after_build = CELL_TYPES[type_name].after_build
        if after_build is not None:
            after_build(doc, written, layer_sections)
    targets = _targets(doc, list(cells), cells)
    outputs = [builder.values[target.cell].node for target in targets]
    builder.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    gm = fx.GraphModule(builder.root, builder.graph, class_name="QatrunNet")
    gm.cells = cells
    gm.targets = targets
    # GraphModule.__deepcopy__ restores the attributes listed here (copy.deepcopy(gm) keeps them).
    gm.meta["_user_preserved_attributes"] = {"cells": cells, "targets": targets}
    return gm
