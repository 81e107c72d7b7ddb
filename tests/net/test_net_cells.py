"""Each cell type: output shape, parameter count and MACs computed by hand from N2D2's formulas
(reference/n2d2.md section 2), and the module qatrun builds for it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qatrun.net import layers, summarize

LENET_TABLE = """\
1 0 0 0 1 1 1 0 0 1 1 1 1 0 1 1 \\
1 1 0 0 0 1 1 1 0 0 1 1 1 1 0 1 \\
1 1 1 0 0 0 1 1 1 0 0 1 0 1 1 1 \\
0 1 1 1 0 0 1 1 1 1 0 0 1 0 1 1 \\
0 0 1 1 1 0 0 1 1 1 1 0 1 1 0 1 \\
0 0 0 1 1 1 0 0 1 1 1 1 0 1 1 1"""


def conv(keys: str, name: str = "c", input_: str = "sp") -> str:
    return f"[{name}]\nInput={input_}\nType=Conv\n{keys}\n"


# (id, INI text, input (C, H, W), cell, output (C, H, W), parameters, MACs per image)
CASES = [
    ("conv-kerneldims", conv("KernelDims=3 3\nNbOutputs=4"), (1, 8, 8), "c",
     (4, 6, 6), 4 * 1 * 3 * 3 + 4, 6 * 6 * 4 * 9),
    # KernelDims is width first: 3 wide, 5 high
    ("conv-kerneldims-wh", conv("KernelDims=3 5\nNbOutputs=3"), (2, 10, 12), "c",
     (3, 10 - 5 + 1, 12 - 3 + 1), 3 * 2 * 15 + 3, 6 * 10 * 3 * 2 * 15),
    ("conv-kernel-width-height", conv("KernelWidth=3\nKernelHeight=5\nNbOutputs=3"), (2, 10, 12), "c",
     (3, 6, 10), 93, 6 * 10 * 90),
    ("conv-kernelsize", conv("KernelSize=2\nNbOutputs=1"), (1, 5, 5), "c", (1, 4, 4), 4 + 1, 16 * 4),
    # floor((7 + 2 - 3 + 2) / 2) = 4
    ("conv-stride-padding", conv("KernelDims=3 3\nStride=2\nPadding=1\nNbOutputs=2"), (1, 7, 7), "c",
     (2, 4, 4), 2 * 9 + 2, 16 * 18),
    # width: floor((8 + 2 - 3 + 2) / 2) = 4; height: 8 - 3 + 1 = 6
    ("conv-stride-padding-xy", conv("KernelDims=3 3\nStrideX=2\nPaddingX=1\nNbOutputs=1"), (1, 8, 8), "c",
     (1, 6, 4), 10, 24 * 9),
    ("conv-stridedims", conv("KernelDims=3 3\nStrideDims=2 1\nNbOutputs=1"), (1, 8, 8), "c",
     (1, 6, 3), 10, 18 * 9),
    # dilation 2: extent 2 * (3 - 1) + 1 = 5, 9 - 5 + 1 = 5
    ("conv-dilation", conv("KernelDims=3 3\nDilation=2\nNbOutputs=1"), (1, 9, 9), "c", (1, 5, 5), 10, 25 * 9),
    # 8 - 3 + 1 = 6 then ceil(6 / 2) = 3; ceil(6 / 4) = 2
    ("conv-subsample", conv("KernelDims=3 3\nSubSampleX=2\nSubSampleY=4\nNbOutputs=1"), (1, 8, 8), "c",
     (1, 2, 3), 10, 6 * 9),
    # 8 - 2 - 3 + 1 = 4
    ("conv-negative-padding", conv("KernelDims=3 3\nPadding=-1\nNbOutputs=1"), (1, 8, 8), "c", (1, 4, 4), 10, 16 * 9),
    ("conv-nobias", conv("KernelDims=3 3\nNbOutputs=4\nConfigSection=cfg") + "[cfg]\nNoBias=1\n", (2, 8, 8), "c",
     (4, 6, 6), 4 * 2 * 9, 36 * 72),
    ("conv-groups", conv("KernelDims=3 3\nNbOutputs=6\nMapping.NbGroups=2"), (4, 5, 5), "c",
     (6, 3, 3), 6 * 2 * 9 + 6, 9 * 6 * 2 * 9),
    ("conv-depthwise", conv("KernelDims=3 3\nNbOutputs=3\nMapping.ChannelsPerGroup=1"), (3, 5, 5), "c",
     (3, 3, 3), 3 * 9 + 3, 9 * 27),
    ("conv-depthwise-multiplier", conv("KernelDims=3 3\nNbOutputs=6\nMapping.ChannelsPerGroup=1"), (3, 5, 5), "c",
     (6, 3, 3), 6 * 9 + 6, 9 * 54),
    # LeNet-5 conv2: 60 connected kernels of 5 x 5 = 1500 weights, plus 16 biases
    ("conv-mapping-matrix", conv(f"KernelDims=5 5\nNbOutputs=16\nMapping(sp)=\\\n{LENET_TABLE}"), (6, 14, 14), "c",
     (16, 10, 10), 60 * 25 + 16, 100 * 1500),
    ("conv-canvas-identity", conv("KernelDims=1 1\nNbOutputs=4\nMapping.Size=1"), (4, 3, 3), "c",
     (4, 3, 3), 4 + 4, 9 * 4),
    # SizeY=2: output i sees channels i and i + 1 (mod 4): 8 kernels
    ("conv-canvas-sizey", conv("KernelDims=1 1\nNbOutputs=4\nMapping.SizeY=2"), (4, 3, 3), "c",
     (4, 3, 3), 8 + 4, 9 * 8),
    ("conv-two-inputs", conv("KernelDims=1 1\nNbOutputs=2", "a") + conv("KernelDims=1 1\nNbOutputs=3", "b")
     + conv("KernelDims=3 3\nNbOutputs=4", "c", "a,b"), (1, 6, 6), "c", (4, 4, 4), 4 * 5 * 9 + 4, 16 * 180),
    # per-input mapping: a one-to-one from a (2 kernels), b fully connected by default (4 kernels)
    ("conv-mapping-per-input", conv("KernelDims=1 1\nNbOutputs=2", "a") + conv("KernelDims=1 1\nNbOutputs=2", "b")
     + conv("KernelDims=1 1\nNbOutputs=2\nMapping(a).Size=1", "c", "a,b"), (1, 3, 3), "c", (2, 3, 3), 6 + 2, 9 * 6),
    ("fc", "[f]\nInput=sp\nType=Fc\nNbOutputs=10\n", (3, 4, 4), "f", (10, 1, 1), 48 * 10 + 10, 480),
    ("fc-two-inputs", conv("KernelDims=1 1\nNbOutputs=2", "a") + "[f]\nInput=a,sp\nType=Fc\nNbOutputs=5\n",
     (1, 3, 3), "f", (5, 1, 1), (18 + 9) * 5 + 5, 27 * 5),
    ("fc-after-fc", "[f]\nInput=sp\nType=Fc\nNbOutputs=7\n[g]\nInput=f\nType=Fc\nNbOutputs=3\n", (1, 2, 2), "g",
     (3, 1, 1), 7 * 3 + 3, 21),
    # floor((9 - 2 + 2) / 2) = 4
    ("pool-max", "[p]\nInput=sp\nType=Pool\nPoolDims=2 2\nStride=2\nPooling=Max\nNbOutputs=3\nMapping.Size=1\n",
     (3, 9, 9), "p", (3, 4, 4), 0, 0),
    ("pool-same", "[p]\nInput=sp\nType=Pool\nPoolSize=3\nPadding=1\nPooling=Average\nNbOutputs=2\n"
     "Mapping.ChannelsPerGroup=1\n", (2, 5, 5), "p", (2, 5, 5), 0, 0),
    ("pool-width-height", "[p]\nInput=sp\nType=Pool\nPoolWidth=3\nPoolHeight=1\nStrideX=3\nPooling=Max\n"
     "NbOutputs=1\n", (1, 4, 9), "p", (1, 4, 3), 0, 0),
    ("pool-global", conv("KernelDims=3 3\nNbOutputs=5", "a") + "[p]\nInput=a\nType=Pool\nPooling=Average\n"
     "PoolDims=[a]_OutputsWidth [a]_OutputsHeight\nNbOutputs=[a]NbOutputs\nMapping.Size=1\n",
     (1, 7, 9), "p", (5, 1, 1), 0, 0),
    ("batchnorm", "[b]\nInput=sp\nType=BatchNorm\nNbOutputs=3\n", (3, 4, 4), "b", (3, 4, 4), 6, 0),
    ("batchnorm-after-fc", "[f]\nInput=sp\nType=Fc\nNbOutputs=4\n[b]\nInput=f\nType=BatchNorm\nNbOutputs=4\n",
     (1, 2, 2), "b", (4, 1, 1), 8, 0),
    ("dropout", "[d]\nInput=sp\nType=Dropout\nNbOutputs=2\n", (2, 3, 3), "d", (2, 3, 3), 0, 0),
    ("elemwise", conv("KernelDims=1 1\nNbOutputs=2", "a") + "[e]\nInput=a,sp\nType=ElemWise\nOperation=Sum\n"
     "NbOutputs=2\n", (2, 3, 3), "e", (2, 3, 3), 0, 0),
    ("softmax", "[s]\nInput=sp\nType=Softmax\nNbOutputs=4\n", (4, 2, 2), "s", (4, 2, 2), 0, 0),
    ("padding", "[p]\nInput=sp\nType=Padding\nNbOutputs=1\nTopPadding=1\nBottomPadding=2\nLeftPadding=-1\n"
     "RightPadding=0\n", (1, 4, 4), "p", (1, 4 + 3, 4 - 1), 0, 0),
    ("resize", "[r]\nInput=sp\nType=Resize\nNbOutputs=2\nOutputWidth=7\nOutputHeight=5\nMode=Bilinear\n",
     (2, 3, 3), "r", (2, 5, 7), 0, 0),
    ("resize-tf", "[r]\nInput=sp\nType=Resize\nNbOutputs=2\nOutputWidth=7\nOutputHeight=5\nMode=BilinearTF\n",
     (2, 3, 3), "r", (2, 5, 7), 0, 0),
    ("reshape", "[r]\nInput=sp\nType=Reshape\nNbOutputs=1\nDims=6 4\n", (4, 2, 3), "r", (1, 4, 6), 0, 0),
    ("reshape-3d", "[r]\nInput=sp\nType=Reshape\nNbOutputs=2\nDims=3 2 2\n", (3, 2, 2), "r", (2, 2, 3), 0, 0),
    # Perm over (x, y, z, b): swapping x and y swaps width and height
    ("transpose", "[t]\nInput=sp\nType=Transpose\nNbOutputs=2\nPerm=1 0 2 3\n", (2, 3, 4), "t", (2, 4, 3), 0, 0),
    # output (x, y, z) = input (z, x, y): W 4, H 3, C 2 -> W 2, H 4, C 3
    ("transpose-channels", "[t]\nInput=sp\nType=Transpose\nNbOutputs=3\nPerm=2 0 1\n", (2, 3, 4), "t",
     (3, 4, 2), 0, 0),
    # (4 - 1) * 2 - 2 * 0 + 3 = 9
    ("deconv", "[d]\nInput=sp\nType=Deconv\nKernelDims=3 3\nStride=2\nNbOutputs=3\n", (2, 4, 4), "d",
     (3, 9, 9), 2 * 3 * 9 + 3, 16 * 2 * 3 * 9),
    ("activation", "[a]\nInput=sp\nType=Activation\nNbOutputs=2\n", (2, 3, 3), "a", (2, 3, 3), 0, 0),
    ("scaling", "[s]\nInput=sp\nType=Scaling\nNbOutputs=2\nFactor=0.5\n", (2, 3, 3), "s", (2, 3, 3), 0, 0),
]


@pytest.mark.parametrize("text, shape, cell, out_shape, params, macs", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_shapes_parameters_macs(build_net, text, shape, cell, out_shape, params, macs) -> None:
    doc, gm = build_net(text, shape)
    row = {row.name: row for row in summarize(gm)}[cell]
    assert (row.out_shape, row.params, row.macs) == (out_shape, params, macs)
    out = gm(torch.rand(2, *shape))
    assert out.reshape(2, -1).shape[1] == out_shape[0] * out_shape[1] * out_shape[2]
    section = doc.section(cell)
    injected = [int(section.raw(key)) for key in ("_NbOutputs", "_OutputsHeight", "_OutputsWidth")]
    assert tuple(injected) == out_shape


def test_injected_input_properties(build_net) -> None:
    doc, _ = build_net(conv("KernelDims=3 3\nNbOutputs=4"), (2, 9, 7))
    section = doc.section("c")
    values = {key: int(section.raw(key)) for key in ("_NbChannels", "_ChannelsHeight", "_ChannelsWidth")}
    assert values == {"_NbChannels": 2, "_ChannelsHeight": 9, "_ChannelsWidth": 7}


def test_mapping_matrix_rows_are_input_channels(build_net) -> None:
    _, gm = build_net(conv(f"KernelDims=5 5\nNbOutputs=16\nMapping(sp)=\\\n{LENET_TABLE}"), (6, 14, 14))
    module = gm.c
    assert isinstance(module, layers.MappedConv2d)
    connectivity = module.mask[:, :, 0, 0]  # (outputs, channels)
    assert connectivity[0].tolist() == [1, 1, 1, 0, 0, 0]  # output 0 sees channels 0, 1, 2
    assert connectivity[15].tolist() == [1] * 6
    assert connectivity[:, 0].tolist() == [float(v) for v in "1000111001111011"]
    assert int(connectivity.sum()) == 60


def test_masked_convolution_ignores_unconnected_weights(build_net) -> None:
    _, gm = build_net(conv(f"KernelDims=5 5\nNbOutputs=16\nMapping(sp)=\\\n{LENET_TABLE}"), (6, 14, 14))
    x = torch.rand(1, 6, 14, 14)
    before = gm(x)
    with torch.no_grad():
        gm.c.weight.add_((1 - gm.c.mask) * 100.0)  # change only weights the table disconnects
    assert torch.equal(gm(x), before)


@pytest.mark.parametrize(
    "keys, groups",
    [("Mapping.NbGroups=2", 2), ("Mapping.ChannelsPerGroup=1", 4), ("Mapping.ChannelsPerGroup=2", 2),
     ("Mapping.Size=1", 4), ("", 1)],
)
def test_block_diagonal_mappings_build_grouped_convolutions(build_net, keys, groups) -> None:
    _, gm = build_net(conv(f"KernelDims=1 1\nNbOutputs=4\n{keys}"), (4, 2, 2))
    assert type(gm.c) is nn.Conv2d and gm.c.groups == groups


def test_negative_padding_crops_before_the_convolution(build_net) -> None:
    _, gm = build_net(conv("KernelDims=3 3\nPadding=-1\nNbOutputs=1"), (1, 8, 8))
    x = torch.rand(1, 1, 8, 8)
    expected = torch.nn.functional.conv2d(x[:, :, 1:-1, 1:-1], gm.c.weight, gm.c.bias)
    torch.testing.assert_close(gm(x), expected, atol=0, rtol=0)


def test_subsample_keeps_every_nth_output(build_net) -> None:
    _, gm = build_net(conv("KernelDims=3 3\nSubSampleX=2\nSubSampleY=4\nNbOutputs=1"), (1, 8, 8))
    x = torch.rand(1, 1, 8, 8)
    full = torch.nn.functional.conv2d(x, gm.c.weight, gm.c.bias)
    torch.testing.assert_close(gm(x), full[:, :, ::4, ::2], atol=1e-6, rtol=0)


def test_batchnorm_reads_its_parameters_from_the_config_section(build_net) -> None:
    text = "[b]\nInput=sp\nType=BatchNorm\nNbOutputs=3\nConfigSection=bn.cfg\n[bn.cfg]\nEpsilon=0.001\n" \
           "MovingAverageMomentum=0.25\n"
    _, gm = build_net(text, (3, 2, 2))
    assert type(gm.b) is nn.BatchNorm2d
    assert (gm.b.eps, gm.b.momentum) == (0.001, 0.25)
    assert torch.equal(gm.b.running_var, torch.zeros(3))  # N2D2 starts the running variance at 0
    assert torch.equal(gm.b.weight, torch.ones(3)) and torch.equal(gm.b.bias, torch.zeros(3))


def test_batchnorm_with_zero_momentum_uses_running_statistics_in_training(build_net) -> None:
    text = "[b]\nInput=sp\nType=BatchNorm\nNbOutputs=1\nConfigSection=cfg\n[cfg]\nMovingAverageMomentum=0\n"
    _, gm = build_net(text, (1, 2, 2))
    gm.train()
    gm.b.running_mean.fill_(1.0)
    gm.b.running_var.fill_(4.0)
    x = torch.rand(3, 1, 2, 2)
    torch.testing.assert_close(gm(x), (x - 1.0) / torch.sqrt(torch.tensor(4.0 + 1e-5)))
    assert torch.equal(gm.b.running_mean, torch.ones(1))


def test_dropout_probability_and_inverted_scaling(build_net) -> None:
    text = "[d]\nInput=sp\nType=Dropout\nNbOutputs=1\nConfigSection=cfg\n[cfg]\nDropout=0.25\n"
    _, gm = build_net(text, (1, 100, 100))
    assert gm.d.p == 0.25
    gm.train()
    out = gm(torch.ones(1, 1, 100, 100))
    assert torch.equal(out.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs(float((out == 0).float().mean()) - 0.25) < 0.02
    gm.eval()
    assert torch.equal(gm(torch.ones(1, 1, 100, 100)), torch.ones(1, 1, 100, 100))


def test_dropout_default_probability(build_net) -> None:
    _, gm = build_net("[d]\nInput=sp\nType=Dropout\nNbOutputs=1\n", (1, 2, 2))
    assert gm.d.p == 0.5


def test_softmax_with_loss_passes_logits_through(build_net) -> None:
    _, gm = build_net("[s]\nInput=sp\nType=Softmax\nNbOutputs=4\nWithLoss=1\n", (4, 1, 1))
    x = torch.rand(2, 4, 1, 1)
    assert torch.equal(gm(x), x)
    _, gm = build_net("[s]\nInput=sp\nType=Softmax\nNbOutputs=4\n", (4, 1, 1))
    torch.testing.assert_close(gm(x), torch.exp(x) / torch.exp(x).sum(dim=1, keepdim=True))


def test_softmax_groups(build_net) -> None:
    _, gm = build_net("[s]\nInput=sp\nType=Softmax\nNbOutputs=4\nGroupSize=2\n", (4, 1, 1))
    out = gm(torch.rand(3, 4, 1, 1))
    torch.testing.assert_close(out[:, :2].sum(dim=1), torch.ones(3, 1, 1))
    torch.testing.assert_close(out[:, 2:].sum(dim=1), torch.ones(3, 1, 1))


def test_fc_flattens_channel_height_width(build_net) -> None:
    text = "[f]\nInput=sp\nType=Fc\nNbOutputs=2\nConfigSection=cfg\n[cfg]\nNoBias=1\n"
    _, gm = build_net(text, (2, 3, 4))
    x = torch.rand(5, 2, 3, 4)
    torch.testing.assert_close(gm(x), x.reshape(5, 24) @ gm.f.weight.T, atol=0, rtol=0)
    assert isinstance(gm.f, nn.Linear) and gm.f.bias is None


def test_padding_resize_reshape_transpose_values(build_net) -> None:
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    _, gm = build_net("[p]\nInput=sp\nType=Padding\nNbOutputs=2\nTopPadding=1\nBottomPadding=0\n"
                      "LeftPadding=-1\nRightPadding=2\n", (2, 3, 4))
    expected = torch.zeros(1, 2, 4, 5)
    expected[:, :, 1:, :3] = x[:, :, :, 1:]
    assert torch.equal(gm(x), expected)
    _, gm = build_net("[t]\nInput=sp\nType=Transpose\nNbOutputs=2\nPerm=1 0 2 3\n", (2, 3, 4))
    assert torch.equal(gm(x), x.transpose(2, 3))
    _, gm = build_net("[r]\nInput=sp\nType=Reshape\nNbOutputs=1\nDims=6 4\n", (2, 3, 4))
    assert torch.equal(gm(x), x.reshape(1, 1, 4, 6))
    _, gm = build_net("[r]\nInput=sp\nType=Resize\nNbOutputs=2\nOutputWidth=8\nOutputHeight=6\n"
                      "Mode=NearestNeighbor\n", (2, 3, 4))
    assert torch.equal(gm(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_scaling_and_default_tanh_activation(build_net) -> None:
    x = torch.randn(2, 2, 3, 3, dtype=torch.float32)
    _, gm = build_net("[s]\nInput=sp\nType=Scaling\nNbOutputs=2\nFactor=0.5\n", (2, 3, 3))
    assert torch.equal(gm(x), x * 0.5)
    _, gm = build_net("[a]\nInput=sp\nType=Activation\nNbOutputs=2\n", (2, 3, 3))
    assert isinstance(gm.a_act, nn.Tanh) and torch.equal(gm(x), torch.tanh(x))
    assert gm.cells["a"].activation == "Tanh"


def test_elemwise_sum_of_a_conv_and_the_input(build_net) -> None:
    text = conv("KernelDims=1 1\nNbOutputs=2", "a") + "[e]\nInput=a,sp\nType=ElemWise\nOperation=Sum\n" \
        "NbOutputs=2\nWeights=2.0 -1.0\nShifts=0.5\nActivationFunction=Rectifier\n"
    _, gm = build_net(text, (2, 3, 3))
    x = torch.randn(4, 2, 3, 3)
    a = gm.a(x)
    torch.testing.assert_close(gm(x), torch.relu(2.0 * a + 0.5 - x + 0.5), atol=1e-6, rtol=0)


def test_cell_parameters_are_recorded(build_net) -> None:
    text = conv("KernelDims=1 1\nNbOutputs=1\nConfigSection=cfg") + "[cfg]\nNoBias=1\nWeightsExportFormat=HWCO\n"
    _, gm = build_net(text, (1, 2, 2))
    params = gm.cells["c"].params
    assert params["NoBias"] is True and params["WeightsExportFormat"] == "HWCO" and params["BackPropagate"] is True


@pytest.mark.parametrize("text, shape", [(case[1], case[2]) for case in CASES], ids=[case[0] for case in CASES])
def test_forward_creates_no_tensor_off_the_input_device(build_net, text, shape) -> None:
    # On the meta device any tensor made on the CPU in forward fails to combine: a stand-in for CUDA.
    _, gm = build_net(text, shape)
    out = gm.to("meta")(torch.empty(2, *shape, device="meta"))
    assert out.device.type == "meta"
