"""A per-layer summary of a built network: output shape, parameters and multiply-accumulates.

Parameters are counted from the modules currently in the graph (so quantizer parameters added by a later
pass show up); a weight with a 0/1 ``mask`` buffer of its shape counts only its connected entries, as
N2D2 stores only the connected kernels of a mapped convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, fx, nn

from qatrun.net.builder import activation_name, module_name
from qatrun.net.cells import Shape


@dataclass(frozen=True)
class LayerRow:
    """One line of the summary table.

    Attributes:
        name: the section name.
        type: the cell type.
        inputs: the ``Input=`` names.
        out_shape: (C, H, W) of the output.
        params: trainable values (connected weights, biases, BatchNorm scales and shifts...).
        macs: multiply-accumulates per image (Conv, Deconv, Fc).
        activation: the activation function, or "".
    """

    name: str
    type: str
    inputs: tuple[str, ...]
    out_shape: Shape
    params: int
    macs: int
    activation: str = ""


def count_parameters(module: nn.Module) -> int:
    """Trainable values of a module; a weight with a same-shaped ``mask`` buffer counts its ones."""
    total = 0
    for name, param in module.named_parameters():
        owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        mask = getattr(owner, "mask", None)
        if name.rpartition(".")[2] == "weight" and isinstance(mask, Tensor) and mask.shape == param.shape:
            total += int(mask.count_nonzero())
        else:
            total += param.numel()
    return total


def summarize(gm: fx.GraphModule) -> list[LayerRow]:
    """One row per cell of a network built by ``net.build``, in build order."""
    rows = []
    for cell in gm.cells.values():
        name = module_name(cell.name)
        params = count_parameters(gm.get_submodule(name))
        if cell.act_module is not None:
            params += count_parameters(gm.get_submodule(activation_name(name)))
        rows.append(
            LayerRow(cell.name, cell.type, cell.inputs, cell.out_shape, params, cell.macs, cell.activation or "")
        )
    return rows
