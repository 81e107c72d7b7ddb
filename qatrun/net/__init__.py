"""Network building: cell key tables, INI layer sections -> ``torch.fx.GraphModule``, small layers.

Public API::

    gm = net.build(doc, (C, H, W))     # GraphModule with gm.cells and gm.targets
    net.module_name("conv1.1")         # "conv1_1": the submodule of a section
    net.summarize(gm)                  # list[LayerRow]: shapes, parameters, MACs per layer
    net.declared_keys("Conv")          # the keys qatrun reads for a cell type (did-you-mean)
"""

from __future__ import annotations

from qatrun.net.graph import SOURCES, Cell, Target, build, declared_keys, module_name
from qatrun.net.summary import LayerRow, count_parameters, summarize

__all__ = [
    "Cell",
    "LayerRow",
    "SOURCES",
    "Target",
    "build",
    "count_parameters",
    "declared_keys",
    "module_name",
    "summarize",
]
