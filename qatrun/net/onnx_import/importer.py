"""The walk: one ONNX graph written into the network's GraphBuilder, node by node, in graph order.

Conversion goes node by node through onnx2torch's converter registry, rather than through
``onnx2torch.convert`` on the whole model (which names modules after node *names*; its
``attach_onnx_mapping=True`` would be needed to map them back to outputs): converting each node itself
gives the output names directly, lets ``Ignore=`` skip a node that onnx2torch cannot convert, and lets an
unconvertible operator be reported with its node. Each converted module runs once on a zero input of the
``[sp]`` size as it is added, which gives every shape (and catches an input size the graph cannot take).

Per node (:meth:`Importer.visit`): a node the plan skips is recorded as such (planning.py); an activation
merges into the cell before it (activations.py); an op with a handler becomes a cell (handlers.py,
:meth:`Importer.emit`); anything else is glue, onnx2torch's module kept in the container submodule named
after the ONNX section. Every image or vector a node computes becomes a value later layers may read.
"""

from __future__ import annotations

import inspect
import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from qatrun.net.builder import RESERVED, Cell, Value, module_name
from qatrun.net.conv import BACK_PROPAGATE
from qatrun.net.onnx_import.activations import ACTIVATION_OPS, activation, own_activation
from qatrun.net.onnx_import.handlers import HANDLERS, NO_CELL
from qatrun.net.onnx_import.loading import first_line, onnx2torch
from qatrun.net.onnx_import.planning import plan

if TYPE_CHECKING:
    from qatrun.errors import ConfigError
    from qatrun.ini import Document, Section
    from qatrun.net.builder import GraphBuilder
    from qatrun.net.cells import Shape
    from qatrun.net.onnx_import.loading import OnnxFile


def _image_shape(tensor: Tensor) -> tuple[Shape, bool] | None:
    """(C, H, W) and whether the tensor is (N, C), or None for anything but images and vectors."""
    if tensor.dim() == 4:
        return tuple(tensor.shape[1:]), False  # type: ignore[return-value]
    if tensor.dim() == 2:
        return (tensor.shape[1], 1, 1), True
    return None


def _needs_float32(module: nn.Module) -> bool:
    """Whether a module holds floating tensors other than float32 (an ONNX file in float16 or float64)."""
    return any(t.is_floating_point() and t.dtype != torch.float32 for t in (*module.parameters(), *module.buffers()))


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


class Importer:
    """Writes one ONNX graph into the builder's fx graph, node by node.

    Args:
        doc: the INI document (override sections are looked up in it).
        onnx_file: the ONNX section and its graph (loading.py).
        builder: the network being written.
        source: the network input the graph reads (``sp``, ``env`` or ``cenv``).

    Attributes:
        plan: what is known before converting (planning.py).
        tensors: ONNX value name -> (fx node, example tensor) for every value computed so far.
        owner: value -> the cell whose output it is, through glue (for ``Cell.inputs``).
        cells: the cells emitted, by name, in graph order.
    """

    def __init__(self, doc: Document, onnx_file: OnnxFile, builder: GraphBuilder, source: str) -> None:
        self.doc, self.file, self.builder, self.source = doc, onnx_file, builder, source
        self.graph = onnx_file.graph
        self.plan = plan(onnx_file)
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
        """An error at the ONNX section's ``File`` key: the graph it names is the offending text."""
        return self.file.error(message)

    def node_label(self, node: Any) -> str:
        """``node 'name' (Op, output 'out')``, how messages name a node."""
        name = f"'{node.name}' " if node.name else ""
        return f"node {name}({node.operation_type}, output '{node.output_values[0]}')"

    def add_module(self, name: str, module: nn.Module, owner: str) -> None:
        """Adds the top-level module of a cell or an activation, named after the node output ``owner``."""
        taken = self.builder.owners.get(name)
        if name in RESERVED or taken is not None:
            why = f"already taken by [{taken}]" if taken else "which torch reserves"
            raise self.error(f"node output '{owner}' gives the module name '{name}', {why}")
        self.builder.add_module(name, module, owner)

    def set(self, value: str, node: fx.Node, example: Tensor, owner: str | None) -> None:
        """Records how a value is computed; an image or a vector also becomes a value ``Input=`` may name."""
        self.tensors[value] = (node, example)
        if owner is not None:
            self.owner[value] = owner
        shape = _image_shape(example) if isinstance(example, Tensor) else None
        if shape is not None:
            self.builder.values[value] = Value(node, *shape)

    def tensor(self, value: str) -> tuple[fx.Node, Tensor]:
        """A value computed by the graph (not a constant), as (fx node, example)."""
        found = self.argument(value)
        if found is None or found[0].op == "get_attr":
            raise self.error(f"value '{value}' is a constant where qatrun expects a tensor computed by the graph")
        return found

    def argument(self, value: str) -> tuple[fx.Node, Tensor] | None:
        """A node input as (fx node, example): computed, or a constant; None for an absent optional input."""
        value = self.plan.resolve(value)
        if not value:
            return None
        if value in self.tensors:
            return self.tensors[value]
        if value in self.graph.initializers:
            return self.constant(value)
        raise self.error(f"value '{value}' is not computed: it is an output of an ignored or unconverted node")

    def constant(self, value: str) -> tuple[fx.Node, Tensor]:
        """An initializer, as a buffer of ``gm.<onnx section>.constants`` read by a ``get_attr`` node."""
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
        """The name ``Cell.inputs`` records for a value: the network input, or the cell computing it."""
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
            raise self.error(f"{self.node_label(node)} fails on a {size} input{hint}: {first_line(exc)}") from None
        finally:
            module.train(training)

    # -- the walk ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Cell]:
        """Writes every node; returns the cells by name, in graph order."""
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
        """One node: skipped, merged (an activation), a cell (a handler's), or glue; records its kind."""
        op, output = node.operation_type, node.output_values[0]
        if node.unique_name in self.plan.folded:
            self.file.kinds[output] = "folded"
            return
        if output in self.plan.alias:
            self.file.kinds[output] = "ignored" if output in self.file.ignore else "identity"
            return
        if op in ACTIVATION_OPS:
            activation(self, node)
            return
        module, mapping = self.convert(node)
        handler = HANDLERS.get(op)
        cell = handler(self, node, module, mapping) if handler is not None else None
        if cell is None:
            self.glue_node(node, module, mapping)
            self.file.kinds[output] = "glue"
        elif cell is not NO_CELL:
            self.file.kinds[output] = cell.type

    def convert(self, node: Any) -> tuple[nn.Module, Any]:
        """onnx2torch's module for a node (in float32) and its input/output mapping."""
        o2t = onnx2torch()
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
            raise self.error(f"onnx2torch cannot convert {self.node_label(node)}: {first_line(exc)}") from None
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
        """Keeps a node as onnx2torch converted it, in the container ``gm.<onnx section>``."""
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
            own_activation(self, cell, section)
        return cell
