"""BatchNorm cell (reference/n2d2.md section 2.2).

N2D2's BatchNorm is PyTorch's: per channel over N·H·W, biased batch variance to normalise in training,
unbiased running variance, ``running = m·batch + (1 - m)·running`` with ``MovingAverageMomentum`` m,
epsilon inside the root. Two differences are kept: the running variance starts at 0 (PyTorch: 1), and
m = 0 means the running statistics are used in training too (``layers.RunningStatsBatchNorm2d``).
"""

from __future__ import annotations

from torch import nn

from qatrun.ini import Key
from qatrun.net.cells import NB_OUTPUTS, Built, CellType, Context, register
from qatrun.net.conv import BACK_PROPAGATE, reject_sharing
from qatrun.net.layers import RunningStatsBatchNorm2d

EPSILON = Key("Epsilon", "float", 1e-5, "added to the variance inside the square root")
MOMENTUM = Key("MovingAverageMomentum", "float", 0.1, "running = m batch + (1 - m) running, m in [0, 1)")
SHARING = tuple(
    Key(name, "str", "", "share with another cell (not supported)")
    for name in ("ScalesSharing", "BiasesSharing", "MeansSharing", "VariancesSharing")
)

BATCHNORM_KEYS = (NB_OUTPUTS, *SHARING)
BATCHNORM_PARAMS = (EPSILON, MOMENTUM, BACK_PROPAGATE)


def build_batchnorm(ctx: Context) -> Built:
    """Builds a BatchNorm cell."""
    channels = ctx.nb_outputs(equal_to_channels=True)
    reject_sharing(ctx, SHARING)
    params = {key.name: ctx.param(key) for key in BATCHNORM_PARAMS}
    eps, momentum = params[EPSILON.name], params[MOMENTUM.name]
    if eps <= 0:
        raise ctx.params.error(EPSILON.name, f"expected a positive value, found {eps}")
    if not 0 <= momentum < 1:
        raise ctx.params.error(MOMENTUM.name, f"expected a value in [0, 1), found {momentum}")
    kind = RunningStatsBatchNorm2d if momentum == 0 else nn.BatchNorm2d
    module = kind(channels, eps=eps, momentum=momentum)
    module.running_var.zero_()
    return Built(module, ctx.shape, params=params)


register(CellType("BatchNorm", build_batchnorm, BATCHNORM_KEYS, BATCHNORM_PARAMS, activation=""))
