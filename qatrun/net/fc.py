"""Fc cell: ``nn.Linear`` on the input flattened in C·H·W order (reference/n2d2.md section 2.2).

N2D2's Fc reads its input flattened exactly as ``torch.flatten`` flattens NCHW, so weight files map
one to one. The graph inserts the flatten; the module named after the section is the ``nn.Linear``.
"""

from __future__ import annotations

from torch import nn

from qatrun.ini import Key
from qatrun.net.cells import INPUT_WINDOW_KEYS, NB_OUTPUTS, Built, CellType, Context, register
from qatrun.net.conv import BACK_PROPAGATE, NO_BIAS, OUTPUTS_REMAP, read_common_params
from qatrun.net.fillers import FILLER_KEYS, fill_, read_filler

FC_EXPORT_FORMAT = Key("WeightsExportFormat", "enum", "OC", "layout of exported weight files", ("OC", "CO"))
NORMALIZE = Key("Normalize", "bool", False, "normalise the weights (not supported: keep 0)")
DROP_CONNECT = Key("DropConnect", "float", 1.0, "keep probability of each weight (not supported: keep 1)")

FC_KEYS = (NB_OUTPUTS, *(key for table in FILLER_KEYS.values() for key in table.values()), *INPUT_WINDOW_KEYS)
FC_PARAMS = (NO_BIAS, BACK_PROPAGATE, NORMALIZE, FC_EXPORT_FORMAT, DROP_CONNECT, OUTPUTS_REMAP)


def build_fc(ctx: Context) -> Built:
    """Builds an Fc cell."""
    outputs = ctx.nb_outputs()
    ctx.check_input_window()
    params = read_common_params(ctx, FC_PARAMS)
    if params[NORMALIZE.name]:
        raise ctx.params.error(NORMALIZE.name, "weight normalisation is not supported by qatrun")
    if params[DROP_CONNECT.name] != 1.0:
        raise ctx.params.error(DROP_CONNECT.name, "DropConnect is not supported by qatrun (keep 1.0)")
    channels, height, width = ctx.shape
    inputs = channels * height * width
    module = nn.Linear(inputs, outputs, bias=not params[NO_BIAS.name])
    weights_filler, bias_filler = read_filler(ctx.section, "WeightsFiller"), read_filler(ctx.section, "BiasFiller")
    fill_(module.weight, weights_filler, inputs, outputs)
    if module.bias is not None:
        fill_(module.bias, bias_filler, outputs, 1)
    return Built(module, (outputs, 1, 1), macs=inputs * outputs, params=params)


register(CellType("Fc", build_fc, FC_KEYS, FC_PARAMS, inputs="flatten", spatial=False, output="flat", activation=""))
