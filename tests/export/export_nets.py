"""Small quantized networks for the export tests, built the way qatrun.load builds them (INI -> net.build ->
quant.plan_for / prepare), with random weights, BatchNorm statistics and quantizer state set by a few
training-mode batches of random images, then in eval mode."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, fx, nn

import qatrun
from qatrun import ini, net, quant
from qatrun.fuse import FuseOptions, integerize

# LeNet as models/LeNet-QAT.ini (SAT W4A4, 8-bit conv1 and fc2), with a 4-bit activation quantizer on fc1:
# the integer-only network needs every layer input quantized (models/LeNet-QAT.ini leaves fc1 float).
LENET_SAT = """
[env]
SizeX=32
SizeY=32
BatchSize=8

[Conv_def]
Type=Conv
ActivationFunction=Linear
QWeight=SAT
QWeight.ApplyScaling=0
QWeight.Range=15
ConfigSection=common.config

[Fc_def]
Type=Fc
ActivationFunction=Linear
QWeight=SAT
QWeight.ApplyScaling=1
QWeight.Range=15
ConfigSection=common.config

[Bn_def]
Type=BatchNorm
ActivationFunction=Linear
QAct=SAT
QAct.Alpha=6.0
QAct.Range=15

[common.config]
NoBias=1

[Pool_def]
Type=Pool
PoolDims=2 2
Stride=2
Pooling=Max
Mapping.Size=1

[conv1] Conv_def
Input=env
KernelDims=5 5
NbOutputs=6
QWeight.Range=255

[bn1] Bn_def
Input=conv1
NbOutputs=6

[pool1] Pool_def
Input=bn1
NbOutputs=6

[conv2] Conv_def
Input=pool1
KernelDims=5 5
NbOutputs=16

[bn2] Bn_def
Input=conv2
NbOutputs=16

[pool2] Pool_def
Input=bn2
NbOutputs=16

[conv3] Conv_def
Input=pool2
KernelDims=5 5
NbOutputs=120

[bn3] Bn_def
Input=conv3
NbOutputs=120

[conv3.drop]
Input=bn3
Type=Dropout
NbOutputs=120

[fc1] Fc_def
Input=conv3.drop
NbOutputs=84
QAct=SAT
QAct.Alpha=6.0
QAct.Range=15

[fc2] Fc_def
Input=fc1
NbOutputs=10
QWeight.Range=255

[softmax]
Input=fc2
Type=Softmax
NbOutputs=10
WithLoss=1

[softmax.Target]
"""

# A residual network: stem, a basic block whose shortcut is the identity (ElemWise Sum, ReLU and a SAT
# quantizer after it), a stride-2 block with a 1x1 projection, global average pooling, Fc.
RESIDUAL_SAT = """
[env]
SizeX=16
SizeY=16
NbChannels=3
BatchSize=8

[Conv_def]
Type=Conv
KernelDims=3 3
Padding=1
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=15
ConfigSection=common.config

[Bn_def]
Type=BatchNorm
ActivationFunction=Linear
QAct=SAT
QAct.Alpha=4.0
QAct.Range=15

[common.config]
NoBias=1

[Sum_def]
Type=ElemWise
Operation=Sum
ActivationFunction=Rectifier
QAct=SAT
QAct.Alpha=6.0
QAct.Range=15

[conv1] Conv_def
Input=env
NbOutputs=8
QWeight.Range=255

[bn1] Bn_def
Input=conv1
NbOutputs=8

[b1_conv1] Conv_def
Input=bn1
NbOutputs=8
QWeight.QuantMode=Symmetric

[b1_bn1] Bn_def
Input=b1_conv1
NbOutputs=8

[b1_conv2] Conv_def
Input=b1_bn1
NbOutputs=8

[b1_bn2] Bn_def
Input=b1_conv2
NbOutputs=8

[b1_sum] Sum_def
Input=b1_bn2,bn1
NbOutputs=8

[b2_conv1] Conv_def
Input=b1_sum
NbOutputs=16
Stride=2

[b2_bn1] Bn_def
Input=b2_conv1
NbOutputs=16

[b2_conv2] Conv_def
Input=b2_bn1
NbOutputs=16

[b2_bn2] Bn_def
Input=b2_conv2
NbOutputs=16

[b2_proj] Conv_def
Input=b1_sum
KernelDims=1 1
Padding=0
Stride=2
NbOutputs=16

[b2_proj_bn] Bn_def
Input=b2_proj
NbOutputs=16

[b2_sum] Sum_def
Input=b2_bn2,b2_proj_bn
NbOutputs=16

[pool]
Input=b2_sum
Type=Pool
Pooling=Average
PoolDims=8 8
NbOutputs=16
Mapping.ChannelsPerGroup=1

[fc]
Input=pool
Type=Fc
NbOutputs=10
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=255
QWeight.ApplyScaling=1

[softmax]
Input=fc
Type=Softmax
NbOutputs=10
WithLoss=1

[softmax.Target]
"""

# LSQ weights and activations (learned steps initialised from the data), 4-bit inside, 8-bit ends, with
# a 2x2 max-pool and an Fc ending in a quantized activation.
LSQ = """
[env]
SizeX=12
SizeY=12
BatchSize=8

[Conv_def]
Type=Conv
KernelDims=3 3
ActivationFunction=Rectifier
QWeight=LSQ
QWeight.Range=15
QAct=LSQ
QAct.Range=15

[conv1] Conv_def
Input=env
NbOutputs=6
QWeight.Range=255

[conv2] Conv_def
Input=conv1
NbOutputs=8
Padding=1

[pool]
Input=conv2
Type=Pool
Pooling=Max
PoolDims=2 2
Stride=2
NbOutputs=8
Mapping.Size=1

[fc1]
Input=pool
Type=Fc
NbOutputs=24
ActivationFunction=Rectifier
QWeight=LSQ
QWeight.Range=15
QAct=LSQ
QAct.Range=255

[fc2]
Input=fc1
Type=Fc
NbOutputs=10
ActivationFunction=Linear
QWeight=LSQ
QWeight.Range=255

[softmax]
Input=fc2
Type=Softmax
NbOutputs=10
WithLoss=1

[softmax.Target]
"""

# MinMax: affine activations (zero points), a symmetric one (signed levels), per-channel weights, a Sum
# of two differently quantized branches, a max-pool on signed levels.
MINMAX = """
[env]
SizeX=10
SizeY=10
BatchSize=8

[conv1]
Input=env
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs=4
ActivationFunction=Linear
QWeight=MinMax
QWeight.PerChannel=1
QAct=MinMax
QAct.Update=Maximum

[conv2]
Input=conv1
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs=4
ActivationFunction=Linear
QWeight=MinMax
QWeight.Range=15
QWeight.Symmetric=1

[bn2]
Input=conv2
Type=BatchNorm
NbOutputs=4
ActivationFunction=Linear
QAct=MinMax
QAct.Symmetric=1
QAct.Update=Maximum

[sum]
Input=conv1,bn2
Type=ElemWise
Operation=Sum
NbOutputs=4
ActivationFunction=Linear
QAct=MinMax
QAct.Symmetric=1
QAct.Update=Maximum

[pool]
Input=sum
Type=Pool
Pooling=Max
PoolDims=2 2
Stride=2
NbOutputs=4
Mapping.Size=1

[fc]
Input=pool
Type=Fc
NbOutputs=10
ActivationFunction=Linear
QWeight=MinMax
QAct=MinMax
QAct.Update=Maximum

[softmax]
Input=fc
Type=Softmax
NbOutputs=10
WithLoss=1

[softmax.Target]
"""

# Fractional max-pooling (N2D2's FMP cell): overlapping pseudo-random regions on unsigned SAT levels, then
# disjoint regions of a random order on the levels of a BatchNorm's quantizer; the first FMP reads a Conv
# whose levels are also the second Conv's input, the second an odd-sized map (15 x 15 -> 10 x 10).
FMP = """
[env]
SizeX=17
SizeY=17
BatchSize=8

[conv1]
Input=env
Type=Conv
KernelDims=3 3
NbOutputs=4
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=255
QAct=SAT
QAct.Range=15

[fmp1]
Input=conv1
Type=FMP
NbOutputs=4
ScalingRatio=1.25
Mapping.Size=1

[conv2]
Input=fmp1
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs=6
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=15

[bn2]
Input=conv2
Type=BatchNorm
NbOutputs=6
ActivationFunction=Linear
QAct=SAT
QAct.Range=15

[fmp2]
Input=bn2
Type=FMP
NbOutputs=6
ScalingRatio=1.5
Mapping.ChannelsPerGroup=1
ConfigSection=fmp2.config

[fmp2.config]
Overlapping=0
PseudoRandom=0

[fc]
Input=fmp2
Type=Fc
NbOutputs=10
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=255
QWeight.ApplyScaling=1

[softmax]
Input=fc
Type=Softmax
NbOutputs=10
WithLoss=1

[softmax.Target]
"""

SHAPES = {"lenet": (1, 32, 32), "residual": (3, 16, 16), "lsq": (1, 12, 12), "minmax": (1, 10, 10), "fmp": (1, 17, 17)}
TEXTS = {"lenet": LENET_SAT, "residual": RESIDUAL_SAT, "lsq": LSQ, "minmax": MINMAX, "fmp": FMP}


def images(shape: tuple[int, int, int], count: int, seed: int) -> Tensor:
    """Random 8-bit images ``p / 255``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *shape), generator=gen).float() / 255


def build(kind: str, seed: int = 0) -> fx.GraphModule:
    """One of the test networks, quantized, its state set by a few random batches, in eval mode."""
    torch.manual_seed(seed)
    doc = ini.loads(TEXTS[kind], path=f"<{kind}>")
    gm = net.build(doc, SHAPES[kind])
    gm = quant.prepare(gm, qatrun.quant_plans(doc, gm), act_names=qatrun.network.activation_names(gm))
    for module in gm.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative averages over the calibration batches
    gm.train()
    with torch.no_grad():
        for k in range(3):
            gm(images(SHAPES[kind], 32, seed + 100 + k))
    return gm.eval()


@functools.lru_cache(maxsize=None)
def network(kind: str) -> fx.GraphModule:
    """:func:`build` once per test session (the tests only read the networks)."""
    return build(kind)


@functools.lru_cache(maxsize=None)
def integer_network(kind: str, options: FuseOptions | None = None) -> fx.GraphModule:
    """The integer network of :func:`network`, once per session and options."""
    int_gm, _ = integerize(network(kind), options or FuseOptions())
    return int_gm
