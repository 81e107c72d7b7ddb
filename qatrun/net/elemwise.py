"""ElemWise cell: element-wise Sum, AbsSum, EuclideanSum, Prod or Max of several inputs.

The formulas are in ``layers.elemwise``. ``Weights`` and ``Shifts`` are constants, laid out by
``CoeffMode``: ``PerLayer`` one value for all, ``PerInput`` one per input (a single value is repeated),
``PerChannel`` one per channel (repeated for each input) or per input and channel. Giving coefficients
that the operation does not use (weights for Prod/Max, shifts for AbsSum/Prod/Max) is an error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qatrun.ini import REQUIRED, Key
from qatrun.net.cells import INPUT_WINDOW_KEYS, NB_OUTPUTS, Built, CellType, Context, register
from qatrun.net.layers import ELEMWISE_OPS, ElemWise

OPERATION = Key("Operation", "enum", REQUIRED, "Sum, AbsSum, EuclideanSum, Prod or Max", ELEMWISE_OPS)
WEIGHTS = Key("Weights", "floats", (1.0,), "coefficient of each input (laid out by CoeffMode)")
SHIFTS = Key("Shifts", "floats", (0.0,), "shift added with each input (laid out by CoeffMode)")
COEFF_MODE = Key(
    "CoeffMode", "enum", "PerInput", "layout of Weights and Shifts", ("PerLayer", "PerInput", "PerChannel")
)

ELEMWISE_KEYS = (NB_OUTPUTS, OPERATION, WEIGHTS, SHIFTS, COEFF_MODE, *INPUT_WINDOW_KEYS)
_USES = {"Sum": ("Weights", "Shifts"), "AbsSum": ("Weights",), "EuclideanSum": ("Weights", "Shifts"),
         "Prod": (), "Max": ()}


def coefficients(values: tuple[float, ...], mode: str, inputs: int, channels: int) -> Tensor | None:
    """Lays coefficients out as (inputs, channels) float32, or None if their count does not fit the mode."""
    n = len(values)
    table = torch.tensor(values, dtype=torch.float32)
    if mode == "PerLayer" and n == 1 or mode == "PerInput" and n == 1:
        return table.expand(inputs, channels).clone()
    if mode == "PerInput" and n == inputs:
        return table[:, None].expand(inputs, channels).clone()
    if mode == "PerChannel" and n == channels:
        return table[None, :].expand(inputs, channels).clone()
    if mode == "PerChannel" and n == inputs * channels:
        return table.view(inputs, channels)
    return None


def _read_coefficients(ctx: Context, key: Key, mode: str, neutral: float, operation: str) -> Tensor:
    inputs, channels = len(ctx.sources), ctx.shape[0]
    values = ctx.read(key)
    if key.name not in _USES[operation] and any(v != neutral for v in values):
        raise ctx.error(key.name, f"{operation} does not use {key.name}")
    table = coefficients(values, mode, inputs, channels)
    if table is None:
        counts = {"PerLayer": "1", "PerInput": f"1 or {inputs} (one per input)",
                  "PerChannel": f"{channels} or {inputs * channels} (per channel, or per input and channel)"}
        raise ctx.error(key.name, f"CoeffMode={mode} expects {counts[mode]} values, found {len(values)}")
    return table


def build_elemwise(ctx: Context) -> Built:
    """Builds an ElemWise cell (its inputs already checked to share one shape)."""
    ctx.nb_outputs(equal_to_channels=True)
    ctx.check_input_window()
    operation, mode = ctx.read(OPERATION), ctx.read(COEFF_MODE)
    weights = _read_coefficients(ctx, WEIGHTS, mode, 1.0, operation)
    shifts = _read_coefficients(ctx, SHIFTS, mode, 0.0, operation)
    return Built(ElemWise(operation, weights, shifts), ctx.shape)


register(CellType("ElemWise", build_elemwise, ELEMWISE_KEYS, (), inputs="many", spatial=False, output="same",
                  activation=""))
