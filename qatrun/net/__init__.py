"""Network building: cell key tables, INI layer sections -> ``torch.fx.GraphModule``, small layers.

Public API::

    gm = net.build(doc, (C, H, W))     # GraphModule with gm.cells and gm.targets
    net.module_name("conv1.1")         # "conv1_1": the submodule of a section
    net.activation_name("conv1_1")     # "conv1_1_act": the submodule of its activation (net.ACT_SUFFIX)
    net.summarize(gm)                  # list[LayerRow]: shapes, parameters, MACs per layer
    net.declared_keys("Conv")          # the keys qatrun reads for a cell type (did-you-mean)
    net.GraphBuilder((C, H, W))        # the graph being written, shared by INI cells and ONNX import
"""

from __future__ import annotations

from qatrun.net.builder import ACT_SUFFIX, RESERVED, SOURCES, Cell, GraphBuilder, Value, activation_name, module_name
from qatrun.net.graph import Target, build, declared_keys
from qatrun.net.summary import LayerRow, count_parameters, summarize

__all__ = [
    "ACT_SUFFIX",
    "Cell",
    "GraphBuilder",
    "LayerRow",
    "RESERVED",
    "SOURCES",
    "Target",
    "Value",
    "activation_name",
    "build",
    "count_parameters",
    "declared_keys",
    "module_name",
    "summarize",
]
