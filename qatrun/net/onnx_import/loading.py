"""Reading a ``Type=ONNX`` section and the ONNX file it names; onnx2torch without torchvision.

The section's keys are read here; the file is loaded and checked (a graph with nodes, IR version 3 or
later, well formed under onnx's shape inference) and cleaned of what torch's exporter adds that would
mislead the import (Identity nodes sharing a parameter). onnx2torch's ``OnnxGraph`` then gives the nodes in
graph order with their input and output names; its converter registry is used node by node by the
importer (importer.py). ``onnx`` and ``onnx2torch`` are imported when the first ONNX section is read, not
when qatrun starts.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qatrun.errors import did_you_mean
from qatrun.ini import Key
from qatrun.net.cells import DATA_TYPE, INPUT, MODEL, TYPE

if TYPE_CHECKING:
    import onnx

    from qatrun.errors import ConfigError
    from qatrun.ini import Section

ONNX = "ONNX"
"""The ``Type=`` of an ONNX import section."""

FILE = Key("File", "path", doc="the ONNX model; environment variables expanded, relative to the INI's directory")
ONNX_INIT = Key("ONNX_init", "bool", True, "1: weights from the file; 0: from the override sections' fillers")
IGNORE = Key("Ignore", "strs", (), "node output names to skip (the node's output becomes its first input)")
IGNORE_INPUT_SIZE = Key("IgnoreInputSize", "bool", False, "run the graph on the [sp] size even if it declares another")
TRANSPOSE = Key("Transpose", "bool", False, "swap the first two dimensions of the whole graph (not supported)")
CNTK = Key("CNTK", "bool", False, "the file comes from CNTK (not supported)")
FILE_KEYS = (FILE, ONNX_INIT, IGNORE, IGNORE_INPUT_SIZE, TRANSPOSE, CNTK)
"""The keys of an ONNX section besides those every layer section takes."""
ONNX_KEYS = (INPUT, TYPE, MODEL, DATA_TYPE, *FILE_KEYS)


# --------------------------------------------------------------------------------------------------
# onnx2torch, without torchvision


@functools.cache
def onnx2torch() -> types.SimpleNamespace:
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


def load(section: Section) -> OnnxFile:
    """Reads a ``Type=ONNX`` section and its file.

    Raises:
        ConfigError: a bad key, a missing or unreadable file, a malformed graph, an unknown ``Ignore`` name.
    """
    section.declare(*(name for key in ONNX_KEYS for name in key.names))
    section.read(MODEL)
    if section.read(DATA_TYPE) != "Float32":
        raise section.error(DATA_TYPE.name, "qatrun computes in Float32 only")
    for key in (TRANSPOSE, CNTK):
        if section.read(key):
            raise section.error(key.name, f"{key.name}=1 is not supported by qatrun")
    path = _path(section)
    model = _read_model(section, path)
    o2t = onnx2torch()
    try:
        model = o2t.safe_shape_inference(model)
    except Exception as exc:  # onnx's checker: any failure means a malformed graph
        raise section.error(FILE.name, f"{path}: the ONNX graph is malformed: {first_line(exc)}") from None
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
        raise section.error(FILE.name, f"cannot read {path} as an ONNX model: {first_line(exc)}") from None
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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
