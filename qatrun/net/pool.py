"""Pool cell: channel-wise max or average pooling (reference/n2d2.md sections 2.1-2.3).

N2D2 pools each output over the input channels its mapping connects, every channel by default. What
networks use is channel-wise pooling (``Mapping.Size=1`` or ``Mapping.ChannelsPerGroup=1`` with
NbOutputs = input channels), which is what qatrun builds; any other mapping is an error. Average pooling
divides by the number of input pixels inside the window (``count_include_pad=False``).
Global pooling is a window of the whole input: ``PoolDims=[x]_OutputsWidth [x]_OutputsHeight``.
"""

from __future__ import annotations

from torch import nn

from qatrun.ini import REQUIRED, Key
from qatrun.net import geometry, mapping
from qatrun.net.cells import NB_OUTPUTS, Built, CellType, Context, register
from qatrun.net.geometry import PADDING, POOL, STRIDE, read_pair

POOLING = Key(
    "Pooling", "enum", REQUIRED, "Max or Average (required: N2D2's code has no default)", ("Max", "Average")
)

POOL_KEYS = (NB_OUTPUTS, *POOL.keys, *STRIDE.keys, *PADDING.keys, POOLING, *mapping.MAPPING_KEYS.values())


def check_channel_wise(ctx: Context, outputs: int) -> None:
    """Raises the error of a mapping that is not one channel per output (Pool and FMP pool channel-wise)."""
    links = mapping.connectivity(ctx.section, [(s.name, s.shape[0]) for s in ctx.sources], outputs)
    if outputs == ctx.shape[0] and links.groups == outputs:  # the identity: O groups of one channel
        return
    given = [key for key in ctx.section.keys() if key.startswith(mapping.MAPPING)]
    how = "Mapping.Size=1 (or Mapping.ChannelsPerGroup=1) with NbOutputs equal to the input channels"
    if outputs != ctx.shape[0]:
        raise ctx.error(
            NB_OUTPUTS.name,
            f"qatrun pools channel-wise: NbOutputs must equal the number of input channels ({ctx.shape[0]}), "
            f"found {outputs}",
        )
    if not given:
        raise ctx.error(
            None,
            f"without Mapping keys N2D2 pools every output over all {ctx.shape[0]} channels; qatrun pools "
            f"channel-wise only: write {how}",
        )
    raise ctx.error(given[0], f"this mapping is not channel-wise; qatrun pools channel-wise only: write {how}")


def build_pool(ctx: Context) -> Built:
    """Builds a Pool cell."""
    outputs = ctx.nb_outputs()
    window, stride, pad = read_pair(ctx.section, POOL), read_pair(ctx.section, STRIDE), read_pair(ctx.section, PADDING)
    pooling = ctx.read(POOLING)
    check_channel_wise(ctx, outputs)
    if min(pad.h, pad.w) < 0 or 2 * pad.h > window.h or 2 * pad.w > window.w:
        raise ctx.error(pad.key, f"expected a padding between 0 and half the window ({window.w} x {window.h})")
    _, height, width = ctx.shape
    out_h = geometry.pool_out(height, window.h, stride.h, pad.h)
    out_w = geometry.pool_out(width, window.w, stride.w, pad.w)
    if min(out_h, out_w) < 1:
        raise ctx.error(
            window.key, f"the output would be empty: a {window.w} x {window.h} window on a {width} x {height} input"
        )
    if pooling == "Max":
        module: nn.Module = nn.MaxPool2d(window.hw, stride.hw, pad.hw)
    else:
        module = nn.AvgPool2d(window.hw, stride.hw, pad.hw, count_include_pad=False)
    return Built(module, (outputs, out_h, out_w))


register(CellType("Pool", build_pool, POOL_KEYS, (), inputs="concat", activation=""))
