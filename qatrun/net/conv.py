"""Conv and Deconv cells: reference/n2d2.md sections 2.1-2.4.

A Conv cell is ``nn.Conv2d`` (``groups=g`` when its mapping is block-diagonal, depthwise included) or
``layers.MappedConv2d`` for any other partial mapping. Weights and biases are filled by the cell's fillers
with N2D2's fans (fillers.py). ``SubSample`` is folded into the stride (geometry.py); a negative padding
crops the input before the convolution (``Built.pre_pad``), since torch's convolutions pad only.
"""

from __future__ import annotations

from torch import nn

from qatrun.ini import Key
from qatrun.net import geometry, mapping
from qatrun.net.cells import NB_OUTPUTS, Built, CellType, Context, register
from qatrun.net.fillers import FILLER_KEYS, fill_, read_filler
from qatrun.net.geometry import DILATION, KERNEL, PADDING, STRIDE, SUBSAMPLE, read_pair
from qatrun.net.layers import MappedConv2d

NO_BIAS = Key("NoBias", "bool", False, "the cell has no biases")
BACK_PROPAGATE = Key("BackPropagate", "bool", True, "propagate the gradient to the cell's inputs")
CONV_EXPORT_FORMAT = Key(
    "WeightsExportFormat", "enum", "OCHW", "layout of exported weight files", ("OCHW", "HWCO")
)
WEIGHTS_EXPORT_FLIP = Key("WeightsExportFlip", "bool", False, "export kernels flipped")
OUTPUTS_REMAP = Key("OutputsRemap", "str", "", "output channel remapping (not supported: keep empty)")
WEIGHTS_SHARING = Key("WeightsSharing", "str", "", "share weights with another cell (not supported)")
BIASES_SHARING = Key("BiasesSharing", "str", "", "share biases with another cell (not supported)")

_FILLERS = tuple(key for table in FILLER_KEYS.values() for key in table.values())
_GEOMETRY = tuple(key for family in (KERNEL, STRIDE, PADDING, DILATION) for key in family.keys)

CONV_KEYS = (NB_OUTPUTS, *_GEOMETRY, *SUBSAMPLE.keys, *_FILLERS, *mapping.MAPPING_KEYS.values(),
             WEIGHTS_SHARING, BIASES_SHARING)
CONV_PARAMS = (NO_BIAS, BACK_PROPAGATE, CONV_EXPORT_FORMAT, WEIGHTS_EXPORT_FLIP, OUTPUTS_REMAP)
DECONV_KEYS = (NB_OUTPUTS, *_GEOMETRY, *_FILLERS, *mapping.MAPPING_KEYS.values(), WEIGHTS_SHARING,
               BIASES_SHARING)


def read_common_params(ctx: Context, keys: tuple[Key, ...]) -> dict[str, object]:
    """Reads the weight-cell parameters, rejecting the ones qatrun does not implement."""
    values = {key.name: ctx.param(key) for key in keys}
    if values.get(OUTPUTS_REMAP.name):
        raise ctx.params.error(OUTPUTS_REMAP.name, "output remapping is not supported by qatrun")
    return values


def reject_sharing(ctx: Context, keys: tuple[Key, ...]) -> None:
    """Reads the ``*Sharing`` keys; sharing parameters between cells is not supported."""
    for key in keys:
        if ctx.read(key):
            raise ctx.error(key.name, "sharing parameters between cells is not supported by qatrun")


def _out_size(ctx: Context, size: int, kernel: int, stride: int, pad: int, dil: int, key: str) -> int:
    out = geometry.conv_out(size, kernel, stride, pad, dil)
    if out < 1:
        raise ctx.error(
            key, f"the output would be empty: input {size}, kernel {kernel} (dilation {dil}), padding {pad}, "
            f"stride {stride} give an output size of {out}"
        )
    return out


def build_conv(ctx: Context) -> Built:
    """Builds a Conv cell."""
    outputs = ctx.nb_outputs()
    kernel, stride = read_pair(ctx.section, KERNEL), read_pair(ctx.section, STRIDE)
    pad, dil = read_pair(ctx.section, PADDING), read_pair(ctx.section, DILATION)
    sub = read_pair(ctx.section, SUBSAMPLE)
    reject_sharing(ctx, (WEIGHTS_SHARING, BIASES_SHARING))
    params = read_common_params(ctx, CONV_PARAMS)
    channels, height, width = ctx.shape
    out_h = _out_size(ctx, height, kernel.h, stride.h, pad.h, dil.h, kernel.key)
    out_w = _out_size(ctx, width, kernel.w, stride.w, pad.w, dil.w, kernel.key)
    out_h, out_w = geometry.subsample_out(out_h, sub.h), geometry.subsample_out(out_w, sub.w)
    links = mapping.connectivity(ctx.section, [(s.name, s.shape[0]) for s in ctx.sources], outputs)
    options = dict(
        stride=(stride.h * sub.h, stride.w * sub.w),
        padding=(max(pad.h, 0), max(pad.w, 0)),
        dilation=dil.hw,
        bias=not params[NO_BIAS.name],
    )
    if links.groups is None:
        module: nn.Conv2d = MappedConv2d(channels, outputs, kernel.hw, links.mask, **options)
        fan_in_channels = channels
    else:
        module = nn.Conv2d(channels, outputs, kernel.hw, groups=links.groups, **options)
        fan_in_channels = channels // links.groups
    area = kernel.h * kernel.w
    weights_filler, bias_filler = read_filler(ctx.section, "WeightsFiller"), read_filler(ctx.section, "BiasFiller")
    fill_(module.weight, weights_filler, area * fan_in_channels, area * outputs)
    if module.bias is not None:
        fill_(module.bias, bias_filler, outputs, 1)
    connected = links.connected * area
    pre_pad = None
    if pad.h < 0 or pad.w < 0:
        pre_pad = (min(pad.w, 0), min(pad.w, 0), min(pad.h, 0), min(pad.h, 0))
    return Built(module, (outputs, out_h, out_w), macs=connected * out_h * out_w, params=params, pre_pad=pre_pad)


def build_deconv(ctx: Context) -> Built:
    """Builds a Deconv (transposed convolution) cell; its mapping must be full or grouped."""
    outputs = ctx.nb_outputs()
    kernel, stride = read_pair(ctx.section, KERNEL), read_pair(ctx.section, STRIDE)
    pad, dil = read_pair(ctx.section, PADDING), read_pair(ctx.section, DILATION)
    reject_sharing(ctx, (WEIGHTS_SHARING, BIASES_SHARING))
    params = read_common_params(ctx, CONV_PARAMS)
    if min(pad.h, pad.w) < 0:
        raise ctx.error(pad.key, "a negative padding is not supported for Deconv")
    channels, height, width = ctx.shape
    out_h = geometry.deconv_out(height, kernel.h, stride.h, pad.h, dil.h)
    out_w = geometry.deconv_out(width, kernel.w, stride.w, pad.w, dil.w)
    if min(out_h, out_w) < 1:
        raise ctx.error(pad.key, f"the output would be empty ({out_w} x {out_h})")
    groups = mapping.connectivity(ctx.section, [(s.name, s.shape[0]) for s in ctx.sources], outputs).groups
    if groups is None:
        raise ctx.error(None, "Deconv supports full or grouped mappings only (Mapping.NbGroups)")
    module = nn.ConvTranspose2d(
        channels, outputs, kernel.hw, stride=stride.hw, padding=pad.hw, dilation=dil.hw, groups=groups,
        bias=not params[NO_BIAS.name],
    )
    # N2D2 stores a Deconv kernel as (kW, kH, outputs, channels): fan-in counts outputs, fan-out channels.
    area = kernel.h * kernel.w
    weights_filler, bias_filler = read_filler(ctx.section, "WeightsFiller"), read_filler(ctx.section, "BiasFiller")
    fill_(module.weight, weights_filler, area * outputs // groups, area * channels)
    if module.bias is not None:
        fill_(module.bias, bias_filler, outputs, 1)
    macs = height * width * channels * (outputs // groups) * area
    return Built(module, (outputs, out_h, out_w), macs=macs, params=params)


register(CellType("Conv", build_conv, CONV_KEYS, CONV_PARAMS, inputs="concat", activation=""))
register(CellType("Deconv", build_deconv, DECONV_KEYS, CONV_PARAMS, inputs="concat", activation=""))
