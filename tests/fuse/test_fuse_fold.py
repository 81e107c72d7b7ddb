"""Float BatchNorm folding (-fuse): the pure function against hand-worked values, the graph pass against
the unfolded network (the golden LeNet built from its INI by qatrun.net, without quantizers)."""

from __future__ import annotations

import fuse_golden as golden
import pytest
import torch
from torch import fx, nn

from qatrun.fuse import fold_batchnorm, fold_bn_weights, fold_layer_bn
from qatrun.net.layers import MappedConv2d


def test_fold_by_hand() -> None:
    # f = gamma / sqrt(var + eps) = [2/2, -1/1] = [1, -1];  W' = f W;  b' = f (b - mean) + beta
    w, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.5, -1.0])
    mean, var = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    gamma, beta = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0])
    folded_w, folded_b = fold_bn_weights(w, b, mean, var, 1.0, gamma, beta)
    assert folded_w.tolist() == [[1.0, 2.0], [-3.0, -4.0]]
    assert folded_b.tolist() == [-0.5, 4.0]  # [1 (0.5 - 1) + 0, -1 (-1 - 2) + 1]
    no_bias_w, no_bias_b = fold_bn_weights(w, None, mean, var, 1.0, None, None)  # no affine: gamma 1, beta 0
    assert no_bias_w.tolist() == [[0.5, 1.0], [3.0, 4.0]] and no_bias_b.tolist() == [-0.5, -2.0]


def test_fold_transposed_convolution_on_its_output_axis() -> None:
    deconv = nn.ConvTranspose2d(2, 3, 2)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    x = torch.randn(2, 2, 3, 3)
    folded = fold_layer_bn(deconv, bn)
    torch.testing.assert_close(folded(x), bn(deconv(x)), rtol=1e-5, atol=1e-5)


def test_fold_keeps_a_masked_convolution_masked() -> None:
    conv = MappedConv2d(2, 2, (3, 3), torch.tensor([[1, 0], [1, 1]]), bias=False)
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-3.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2]))
    folded = fold_layer_bn(conv, bn)
    assert isinstance(folded, MappedConv2d) and torch.equal(folded.mask, conv.mask)
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def float_lenet() -> fx.GraphModule:
    from qatrun import ini, net

    doc = ini.load(str(golden.INI))
    gm = net.build(doc, (1, 32, 32))
    with torch.no_grad():
        for cell, shape in golden.SHAPES.items():
            getattr(gm, cell).weight.copy_(
                torch.from_numpy(golden.values(f"weights_8b_SAT/{cell}_weights.syntxt")).reshape(shape))
        for bn in ("bn1", "bn2", "bn3"):
            for attr, role in (("weight", "scales"), ("bias", "biases"), ("running_mean", "means"),
                               ("running_var", "variances")):
                getattr(getattr(gm, bn), attr).copy_(
                    torch.from_numpy(golden.values(f"weights_8b_SAT/{bn}_{role}.syntxt")))
    return gm.eval()


def test_fold_graph_pass_on_the_lenet_built_from_its_ini(float_lenet: fx.GraphModule) -> None:
    folded, pairs = fold_batchnorm(float_lenet)
    assert [(p.layer, p.batchnorm, p.skipped) for p in pairs] == [
        ("conv1", "bn1", ("conv1_act",)), ("conv2", "bn2", ("conv2_act",)), ("conv3", "bn3", ("conv3_act",))]
    names = dict(folded.named_modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in names.values())
    assert "conv1_act" not in names and "bn1_act" in names  # the BN's own activation stays
    assert float_lenet.bn1 is not None  # the source network is untouched
    x = golden.golden_inputs()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), float_lenet(x), rtol=1e-4, atol=1e-4)


def test_fold_graph_pass_leaves_what_does_not_match() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.relu = nn.ReLU()
            self.bn = nn.BatchNorm2d(2)  # after a ReLU: not foldable
            self.fc = nn.Linear(8, 3)
            self.bn_fc = nn.BatchNorm1d(3)  # after an Fc: folded

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn_fc(self.fc(torch.flatten(self.bn(self.relu(self.conv(x))), 1)))

    gm = golden.trace(Net().eval())
    with torch.no_grad():
        gm.bn_fc.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        gm.bn_fc.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
    folded, pairs = fold_batchnorm(gm)
    assert [(p.layer, p.batchnorm) for p in pairs] == [("fc", "bn_fc")]
    x = torch.randn(4, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), gm(x), rtol=1e-5, atol=1e-5)
