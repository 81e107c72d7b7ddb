"""The golden N2D2 LeNet (tests/golden/n2d2-lenet-8b) as a fake-quantized torch.fx network, in plain torch.

Written here from reference/n2d2.md §5.1-5.2 (SAT weights and activations, float32 as N2D2's CPU kernels:
``q = 0.5 (t+1)``, ``Wq = 2 ((1/R) rint(R q)) - 1``, S from sequential float32 sums), independently of
``qatrun.quant``, with a :class:`GoldenReader` that gives fusion what it needs from these modules.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from qatrun.fuse.integerize import ActQuant, WeightQuant, sat_act

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "n2d2-lenet-8b"  # N2D2's numbers, shipped
INI = GOLDEN / "network.ini"  # the network they come from, as qatrun reads it
SHAPES = {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "conv3": (120, 16, 5, 5), "fc1": (84, 120), "fc2": (10, 84)}
ACTIVATED = ("bn1", "bn2", "bn3", "fc1", "fc2")
# N2D2's fused output names (the Conv now outputs levels) -> the source module each one replaces.
FUSED_OUTPUTS = {"conv1": "bn1_act", "pool1": "pool1", "conv2": "bn2_act", "pool2": "pool2", "conv3": "bn3_act",
                 "fc1": "fc1_act", "fc2": "fc2_act"}


def values(relative: str) -> np.ndarray:
    """All numbers of a golden text file, float64."""
    return np.array((GOLDEN / relative).read_text().split(), dtype=np.float64)


def alpha(cell: str) -> float:
    """The float32 SAT alpha of a cell, as N2D2 reads it."""
    return float(np.float32((GOLDEN / f"weights_8b_SAT/{cell}_QAct_SAT_Alpha.syntxt").read_text()))


def stimulus(run: str, index: int, layer: str, count: int | None = None) -> np.ndarray:
    """A layer dump of ``outputs/<run>/stimulus<index>``, padding of the 1x1xC blocks removed."""
    data = values(f"outputs/{run}/stimulus{index}/{layer}.dat")
    return data if count is None else data[:count]


def round_half_away(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def sat_weights(latent: Tensor, steps: int, n_out: int | None) -> tuple[Tensor, Tensor, float]:
    """(Wq / S float32, integer levels 2k - R, S) of N2D2's SAT Default mode."""
    w = latent.float()
    t = torch.tanh(w) / torch.tanh(w).abs().max()
    k = torch.round(steps * (0.5 * (t + 1)))
    wq = 2 * (torch.tensor(1 / steps, dtype=torch.float32) * k) - 1
    s = 1.0
    if n_out is not None:  # S = sqrt(n_out Var(Wq)), std::accumulate-style float32 sums
        a = wq.numpy().ravel()
        mean = np.cumsum(a)[-1] / np.float32(a.size)
        d = (a - mean).astype(np.float32)
        var = np.cumsum(d * d)[-1] / np.float32(a.size - 1)
        s = float(np.sqrt(np.float32(n_out) * var))
        wq = wq / torch.tensor(s, dtype=torch.float32)
    return wq, (2 * k - steps).long(), s


class SATConv2d(nn.Conv2d):
    """A convolution computing with SAT fake-quantized weights (Range 255, Default, no scaling)."""

    def __init__(self, latent: Tensor) -> None:
        super().__init__(latent.shape[1], latent.shape[0], latent.shape[2:], bias=False)
        self.weight = nn.Parameter(latent.float())
        self.wq, self.levels, self.s = sat_weights(latent, 255, None)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.wq)


class SATLinear(nn.Linear):
    """An Fc computing with SAT fake-quantized, scale-adjusted weights (ApplyScaling=1)."""

    def __init__(self, latent: Tensor) -> None:
        super().__init__(latent.shape[1], latent.shape[0], bias=False)
        self.weight = nn.Parameter(latent.float())
        self.wq, self.levels, self.s = sat_weights(latent, 255, latent.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.wq)


class SATAct(nn.Module):
    """SAT activation quantizer (CPU rounding): ``round(R clip(x, 0, a) / a) / R a``."""

    def __init__(self, alpha: float, steps: int = 255) -> None:
        super().__init__()
        self.alpha, self.steps = alpha, steps

    def forward(self, x: Tensor) -> Tensor:
        a = torch.tensor(self.alpha, dtype=x.dtype)
        return round_half_away(self.steps * (x.clamp(min=0).minimum(a) / a)) / self.steps * a


class GoldenReader:
    """Fusion's view of the modules above."""

    def weight(self, module: nn.Module, name: str) -> WeightQuant | None:
        if not isinstance(module, (SATConv2d, SATLinear)):
            return None
        unit = torch.tensor(1 / (255 * module.s), dtype=torch.float64)
        return WeightQuant(module.wq, module.levels, unit, 255, "Default", module.s, "SAT")

    def activation(self, module: nn.Module, name: str) -> tuple[ActQuant, nn.Module] | None:
        if not isinstance(module, SATAct):
            return None
        return sat_act(module.alpha, module.steps), nn.Identity()


class LeNet(nn.Module):
    """LeNet-bn-SAT-8b, module names as the network builder names INI sections."""

    def __init__(self) -> None:
        super().__init__()
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            setattr(self, conv, SATConv2d(torch.from_numpy(values(f"weights_8b_SAT/{conv}_weights.syntxt"))
                                          .reshape(SHAPES[conv])))
            setattr(self, f"{conv}_act", nn.Identity())
            norm = nn.BatchNorm2d(SHAPES[conv][0], eps=1e-5)
            for attr, role in (("weight", "scales"), ("bias", "biases"), ("running_mean", "means"),
                               ("running_var", "variances")):
                getattr(norm, attr).data.copy_(torch.from_numpy(values(f"weights_8b_SAT/{bn}_{role}.syntxt")))
            setattr(self, bn, norm)
            setattr(self, f"{bn}_act", SATAct(alpha(bn)))
        self.pool1, self.pool2 = nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2)
        self.conv3_drop, self.fc1_drop = nn.Dropout(0.5), nn.Dropout(0.5)
        for fc in ("fc1", "fc2"):
            setattr(self, fc, SATLinear(torch.from_numpy(values(f"weights_8b_SAT/{fc}_weights.syntxt"))
                                        .reshape(SHAPES[fc])))
            setattr(self, f"{fc}_act", SATAct(alpha(fc)))
        self.softmax = nn.Identity()  # Softmax WithLoss=1 passes the logits through

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.bn1_act(self.bn1(self.conv1_act(self.conv1(x)))))
        x = self.pool2(self.bn2_act(self.bn2(self.conv2_act(self.conv2(x)))))
        x = self.conv3_drop(self.bn3_act(self.bn3(self.conv3_act(self.conv3(x)))))
        x = torch.flatten(x, 1)
        x = self.fc1_drop(self.fc1_act(self.fc1(x)))
        return self.softmax(self.fc2_act(self.fc2(x)))


class LeafTracer(fx.Tracer):
    """Every submodule is one ``call_module`` node, as in the network builder's graphs."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def trace(module: nn.Module) -> fx.GraphModule:
    """``module`` as a GraphModule whose nodes are its submodules."""
    return fx.GraphModule(module, LeafTracer().trace(module))


@functools.cache
def _traced() -> fx.GraphModule:
    return trace(LeNet().eval())


def lenet() -> fx.GraphModule:
    """The traced golden LeNet in evaluation mode (built once, shared read-only)."""
    return _traced()


def golden_inputs() -> Tensor:
    """The two test images as the fake-quantized network takes them: p / 255 in float32, (2, 1, 32, 32)
    (the fused runs logged the pixels p themselves)."""
    pixels = np.stack([stimulus("fused_NONE", i, "env") for i in (0, 1)]).reshape(2, 1, 32, 32)
    return torch.from_numpy(pixels).float() / 255
