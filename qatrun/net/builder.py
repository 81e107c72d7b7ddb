"""The network being written: one ``torch.fx.Graph`` and the root module whose submodules it calls.

Everything that adds layers to a network writes through one :class:`GraphBuilder`: the INI cells
(``graph.py``, one cell per layer section) and the cell types that write a whole sub-network themselves
(``Type=ONNX``, ``onnx_import/``). The builder holds what they share:

* ``values``: every tensor later layers may read, by the name ``Input=`` uses for it (a section name, an
  ONNX node output, and ``sp``/``env``/``cenv`` for the network input), as a :class:`Value`;
* ``owners``: every top-level submodule name, with the section (or node output) that took it, so two
  writers cannot take one name;
* the naming rules downstream passes rely on: a layer's module is ``module_name(section)``, its
  activation ``activation_name(module)`` (``<module>_act``), and no name may shadow an attribute of
  ``fx.GraphModule`` (:data:`RESERVED`).

What is built is recorded as :class:`Cell` objects, the same for a hand-made and an imported layer.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from qatrun.net.cells import Shape

if TYPE_CHECKING:
    from qatrun.ini import Section

SOURCES = ("sp", "env", "cenv")
"""Names that denote the network input in ``Input=``."""

ACT_SUFFIX = "_act"
"""What the activation module of a layer adds to the layer's module name."""

RESERVED = frozenset({"cells", "targets"} | set(dir(fx.GraphModule)))
"""Names no submodule may take: ``gm.cells``, ``gm.targets`` and the attributes of ``fx.GraphModule``."""


def module_name(name: str) -> str:
    """The submodule name of a section: every character outside ``[A-Za-z0-9_]`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def activation_name(module: str) -> str:
    """The submodule name of the activation of the layer whose module is named ``module``."""
    return module + ACT_SUFFIX


@dataclass
class Cell:
    """One built layer.

    Attributes:
        name: the section name.
        type: its ``Type=``.
        module: the cell's module as built (graph passes that swap modules find the current one with
            ``gm.get_submodule(module_name(name))``).
        act_module: the activation module ``<module>_act``, or None.
        inputs: the ``Input=`` names.
        out_shape: (C, H, W) of its output.
        section: the layer section; for a cell imported from ONNX, its override section (the one named
            after the node's output, else ``[<onnx>:<Kind>_def]``), or None when it has none.
        in_shape: (C, H, W) the module receives (inputs concatenated; before the flatten of an Fc).
        activation: the activation function name, or None.
        macs: multiply-accumulates per image.
        params: the cell parameters read from the ConfigSection.
        act_section: the section holding the activation's settings (``ActivationFunction``, ``QAct*``)
            when it is not ``section``: for an imported cell, the section named after the Relu merged
            into it (``onnx_import/activations.py``). ``QAct*`` are read from ``act_section or section``.
        act_output: for an imported cell, the output name of the activation node merged into it (the name
            its ``act_section`` has, or would have), else None.
    """

    name: str
    type: str
    module: nn.Module
    act_module: nn.Module | None
    inputs: tuple[str, ...]
    out_shape: Shape
    section: Section | None
    in_shape: Shape = (0, 0, 0)
    activation: str | None = None
    macs: int = 0
    params: dict[str, object] = field(default_factory=dict)
    act_section: Section | None = None
    act_output: str | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> Cell:
        # The modules are state and are copied (with the GraphModule holding them); the section is
        # configuration and stays shared, so reads through a copy are still seen by strict mode.
        copied = copy.copy(self)
        copied.module = copy.deepcopy(self.module, memo)
        copied.act_module = copy.deepcopy(self.act_module, memo)
        copied.params = copy.deepcopy(self.params, memo)
        return copied

    @property
    def module_name(self) -> str:
        """The submodule name of the cell in the GraphModule."""
        return module_name(self.name)

    @property
    def act_name(self) -> str | None:
        """The submodule name of its activation, or None."""
        return activation_name(self.module_name) if self.act_module is not None else None


@dataclass
class Value:
    """A tensor of the graph being built.

    Attributes:
        node: the fx node computing it.
        shape: (C, H, W) of one sample (a vector is (C, 1, 1)).
        flat: whether the node gives (N, C) rather than (N, C, H, W).
    """

    node: fx.Node
    shape: Shape
    flat: bool = False


class GraphBuilder:
    """Writes one network: the fx graph, its root module, and the values later layers may read.

    Args:
        input_shape: (C, H, W) of one network input; the graph's one placeholder ``x`` is the value of
            every name in :data:`SOURCES`.

    Attributes:
        graph: the graph being written (its output is added by the caller, last).
        root: the module holding every submodule the graph calls.
        values: name -> :class:`Value`, for every tensor an ``Input=`` may name.
        owners: top-level submodule name -> the section or node output that took it.
    """

    def __init__(self, input_shape: Shape) -> None:
        self.graph = fx.Graph()
        self.root = nn.Module()
        placeholder = self.graph.placeholder("x")
        self.values: dict[str, Value] = {name: Value(placeholder, input_shape) for name in SOURCES}
        self.owners: dict[str, str] = {}

    def add_module(self, name: str, module: nn.Module, owner: str) -> None:
        """Adds a top-level submodule under a name the caller checked is free (not taken, not reserved)."""
        assert name not in RESERVED and name not in self.owners, name
        self.owners[name] = owner
        self.root.add_module(name, module)

    def add_section_module(self, section: Section, name: str, module: nn.Module) -> None:
        """Adds the submodule of a section (its layer, its activation, its container).

        Raises:
            ConfigError: at the section header: ``name`` is reserved, or another section took it.
        """
        if name in RESERVED:
            raise section.error(None, f"the section name gives the module name '{name}', which torch reserves")
        if name in self.owners:
            raise section.error(
                None, f"module name '{name}' is already taken by [{self.owners[name]}]: section names must stay "
                "distinct once every character outside A-Z a-z 0-9 _ becomes _"
            )
        self.add_module(name, module, section.name)

    def image(self, value: Value) -> fx.Node:
        """The node as (N, C, H, W)."""
        if not value.flat:
            return value.node
        return self.graph.call_method("reshape", (value.node, -1, *value.shape))

    def flat(self, value: Value) -> fx.Node:
        """The node as (N, C·H·W)."""
        if value.flat:
            return value.node
        return self.graph.call_function(torch.flatten, (value.node, 1))

    def concat(self, nodes: list[fx.Node]) -> fx.Node:
        """The nodes' channels concatenated (a single node as it is)."""
        return nodes[0] if len(nodes) == 1 else self.graph.call_function(torch.cat, (nodes, 1))
