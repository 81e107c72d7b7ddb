"""Cells without weights that keep or reshape their input: Dropout, Softmax, Activation, Scaling,
Padding, Resize, Reshape, Transpose (reference/n2d2.md section 2.2).

Dimension lists follow N2D2's order, width first: ``Dims=W H C`` for Reshape, ``Perm`` over (x, y, z, b)
= (W, H, C, N) for Transpose; they are turned into torch's (N, C, H, W) here.
"""

from __future__ import annotations

import math

from torch import nn

from qatrun.ini import REQUIRED, Key
from qatrun.net import layers
from qatrun.net.cells import INPUT_WINDOW_KEYS, NB_OUTPUTS, Built, CellType, Context, register

DROPOUT = Key("Dropout", "float", 0.5, "probability of dropping each value in training")
WITH_LOSS = Key("WithLoss", "bool", False, "1: pass logits through, the loss is cross-entropy")
GROUP_SIZE = Key("GroupSize", "int", 0, "softmax over groups of this many channels (0 = all)")
FACTOR = Key("Factor", "float", REQUIRED, "y = Factor x")
PADDINGS = tuple(
    Key(f"{side}Padding", "int", REQUIRED, f"rows or columns added at the {side.lower()} (negative crops)")
    for side in ("Top", "Bottom", "Left", "Right")
)
OUTPUT_WIDTH = Key("OutputWidth", "int", REQUIRED, "output width")
OUTPUT_HEIGHT = Key("OutputHeight", "int", REQUIRED, "output height")
RESIZE_MODE = Key("Mode", "enum", REQUIRED, "interpolation", layers.RESIZE_MODES)
ALIGN_CORNERS = Key("AlignCorners", "bool", True, "Bilinear: align the corner pixels")
DIMS = Key("Dims", "ints", REQUIRED, "new dimensions, width first: W [H [C]] (C defaults to NbOutputs)")
PERM = Key("Perm", "ints", REQUIRED, "permutation of the dimensions (x y z [b]) = (W H C [N])")


def build_dropout(ctx: Context) -> Built:
    """Dropout: inverted dropout (N2D2's CUDA model; its CPU model does not rescale)."""
    ctx.nb_outputs(equal_to_channels=True)
    ctx.check_input_window()
    p = ctx.param(DROPOUT)
    if not 0 <= p < 1:
        raise ctx.params.error(DROPOUT.name, f"expected a probability in [0, 1), found {p}")
    return Built(nn.Dropout(p), ctx.shape, params={DROPOUT.name: p})


def build_softmax(ctx: Context) -> Built:
    """Softmax over channels; ``WithLoss=1`` passes the logits through."""
    channels = ctx.nb_outputs(equal_to_channels=True)
    ctx.check_input_window()
    with_loss, group = ctx.read(WITH_LOSS), ctx.read(GROUP_SIZE)
    if group < 0 or group and channels % group:
        raise ctx.error(GROUP_SIZE.name, f"expected 0 or a divisor of the {channels} channels, found {group}")
    return Built(layers.Softmax(with_loss, group), ctx.shape)


def build_activation(ctx: Context) -> Built:
    """Activation cell: the function is its ``_act`` module, read by the graph (default Tanh)."""
    ctx.nb_outputs(equal_to_channels=True)
    return Built(nn.Identity(), ctx.shape)


def build_scaling(ctx: Context) -> Built:
    """Scaling: y = Factor x."""
    ctx.nb_outputs(equal_to_channels=True)
    return Built(layers.Scaling(ctx.read(FACTOR)), ctx.shape)


def build_padding(ctx: Context) -> Built:
    """Padding with zeros on each side; a negative value crops."""
    channels = ctx.nb_outputs(equal_to_channels=True)
    top, bottom, left, right = (ctx.read(key) for key in PADDINGS)
    _, height, width = ctx.shape
    out_h, out_w = height + top + bottom, width + left + right
    if out_h < 1 or out_w < 1:
        key = PADDINGS[0] if out_h < 1 else PADDINGS[2]
        raise ctx.error(key.name, f"the output would be empty ({out_w} x {out_h})")
    return Built(nn.ZeroPad2d((left, right, top, bottom)), (channels, out_h, out_w))


def build_resize(ctx: Context) -> Built:
    """Resize to OutputWidth x OutputHeight."""
    channels = ctx.nb_outputs(equal_to_channels=True)
    width, height = ctx.read(OUTPUT_WIDTH), ctx.read(OUTPUT_HEIGHT)
    for key, value in ((OUTPUT_WIDTH, width), (OUTPUT_HEIGHT, height)):
        if value < 1:
            raise ctx.error(key.name, f"expected a positive size, found {value}")
    mode, align = ctx.read(RESIZE_MODE), ctx.param(ALIGN_CORNERS)
    module = layers.Resize((height, width), mode, align)
    return Built(module, (channels, height, width), params={ALIGN_CORNERS.name: align})


def build_reshape(ctx: Context) -> Built:
    """Reshape each sample to Dims = W [H [C]]."""
    outputs = ctx.nb_outputs()
    dims = ctx.read(DIMS)
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        found = " ".join(map(str, dims))
        raise ctx.error(DIMS.name, f"expected 1 to 3 positive sizes (W [H [C]]), found {found}")
    width = dims[0]
    height = dims[1] if len(dims) > 1 else 1
    channels = dims[2] if len(dims) > 2 else outputs
    if channels != outputs:
        raise ctx.error(
            NB_OUTPUTS.name, f"NbOutputs must equal the channel size of Dims ({channels}), found {outputs}"
        )
    if channels * height * width != math.prod(ctx.shape):
        size = " x ".join(map(str, ctx.shape))
        raise ctx.error(DIMS.name, f"{width} x {height} x {channels} does not hold the {size} input values")
    return Built(layers.Reshape((channels, height, width)), (channels, height, width))


def build_transpose(ctx: Context) -> Built:
    """Transpose the (W, H, C) dimensions; the batch stays first."""
    outputs = ctx.nb_outputs()
    perm = ctx.read(PERM)
    if len(perm) == 3:
        perm = (*perm, 3)
    if len(perm) != 4 or sorted(perm) != [0, 1, 2, 3] or perm[3] != 3:
        found = " ".join(map(str, perm))
        raise ctx.error(PERM.name, f"expected a permutation of 0 1 2 keeping 3 (the batch) last, found {found}")
    # N2D2 dimension i is torch dimension 3 - i; output dimension j takes input dimension perm[j].
    torch_perm = tuple(3 - perm[3 - j] for j in range(4))
    size = (1, *ctx.shape)
    out = tuple(size[d] for d in torch_perm)[1:]
    if out[0] != outputs:
        raise ctx.error(
            NB_OUTPUTS.name, f"NbOutputs must equal the transposed channels ({out[0]}), found {outputs}"
        )
    return Built(layers.Permute(torch_perm), out)


register(CellType("Dropout", build_dropout, (NB_OUTPUTS, *INPUT_WINDOW_KEYS), (DROPOUT,), spatial=False,
                  output="same"))
register(CellType("Softmax", build_softmax, (NB_OUTPUTS, WITH_LOSS, GROUP_SIZE, *INPUT_WINDOW_KEYS), spatial=False,
                  output="same"))
register(CellType("Activation", build_activation, (NB_OUTPUTS,), spatial=False, output="same", activation="Tanh"))
register(CellType("Scaling", build_scaling, (NB_OUTPUTS, FACTOR), spatial=False, output="same"))
register(CellType("Padding", build_padding, (NB_OUTPUTS, *PADDINGS)))
register(CellType("Resize", build_resize, (NB_OUTPUTS, OUTPUT_WIDTH, OUTPUT_HEIGHT, RESIZE_MODE), (ALIGN_CORNERS,)))
register(CellType("Reshape", build_reshape, (NB_OUTPUTS, DIMS), spatial=False))
register(CellType("Transpose", build_transpose, (NB_OUTPUTS, PERM)))
