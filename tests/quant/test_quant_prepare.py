"""The prepare pass on a small fx GraphModule: swaps, masking, outputs, integer mode, round trip, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from qatrun.errors import ConfigError
from qatrun.quant import (
    ActivationQuantizer,
    HoldsN2D2Files,
    LSQWeightSpec,
    MinMaxActSpec,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantizedActivation,
    QuantLinear,
    QuantPlan,
    SATActSpec,
    SATWeightSpec,
    SolverPlan,
    describe,
    prepare,
    quantize_module,
    select_kernels,
    unprepare,
    WeightQuantizer,
)
from qatrun.quant.sat import sat_activation, sat_weight


class MaskedConv2d(nn.Conv2d):
    """Stands for ``qatrun.net.layers.MappedConv2d`` (quant may not import net): a 0/1 ``mask`` buffer."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, mask: torch.Tensor) -> None:
        super().__init__(in_channels, out_channels, kernel, bias=True)
        self.register_buffer("mask", mask[:, :, None, None].expand_as(self.weight).to(self.weight.dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class Net(nn.Module):
    """conv1 (masked) -> ReLU -> deconv1 -> Identity -> flatten -> fc1 -> Identity -> bn-free fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = MaskedConv2d(2, 3, 3, torch.tensor([[1, 0], [1, 1], [0, 1]]))
        self.conv1_act = nn.ReLU()
        self.deconv1 = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.deconv1_act = nn.Identity()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * 8 * 8, 5)
        self.fc1_act = nn.Identity()
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_act(self.conv1(x))
        x = self.deconv1_act(self.deconv1(x))
        x = self.fc1_act(self.fc1(self.flatten(x)))
        return self.bn(x)


class _Tracer(fx.Tracer):
    # The network builder emits one call_module per cell; a masked convolution must stay one module.
    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return isinstance(module, MaskedConv2d) or super().is_leaf_module(module, name)


def _graph() -> fx.GraphModule:
    torch.manual_seed(0)
    root = Net().double().eval()
    return fx.GraphModule(root, _Tracer().trace(root))


def _plan(section: str, weight=None, act=None) -> QuantPlan:
    return QuantPlan(
        section, weight, act,
        SolverPlan() if weight is not None else None,
        SolverPlan() if act is not None else None,
    )


PLANS = {
    "conv1": _plan("conv1", SATWeightSpec(range=15), SATActSpec(range=15, alpha=2.0)),
    "deconv1": _plan("deconv1", LSQWeightSpec(range=15)),
    "fc1": _plan("fc1", SATWeightSpec(range=255, apply_scaling=True), SATActSpec(range=255, alpha=3.0)),
}

X = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _prepare(gm: nn.Module, plans: dict[str, QuantPlan]) -> nn.Module:
    """``prepare`` with the network builder's names: the activation of layer ``x`` is the module ``x_act``."""
    return prepare(gm, plans, {name: name + "_act" for name in plans}, kernels=select_kernels("eager"))


def test_plain_symbolic_trace_graph_is_prepared():
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).double())
    _prepare(gm, {"0": _plan("conv", SATWeightSpec(range=3))})
    assert isinstance(gm.get_submodule("0"), QuantConv2d) and describe(gm.get_submodule("0")) == "SAT w2"


def test_modules_are_swapped_and_share_the_float_parameters():
    gm = _graph()
    conv, fc, deconv = gm.conv1, gm.fc1, gm.deconv1
    before = set(gm.state_dict())
    _prepare(gm, PLANS)
    assert type(gm.conv1) is QuantConv2d and type(gm.fc1) is QuantLinear
    assert type(gm.deconv1) is QuantConvTranspose2d and type(gm.conv1_act) is QuantizedActivation
    assert type(gm.deconv1_act) is nn.Identity and type(gm.fc1_act) is QuantizedActivation
    assert gm.conv1.weight is conv.weight and gm.conv1.bias is conv.bias and gm.conv1.mask is conv.mask
    assert gm.fc1.weight is fc.weight and gm.deconv1.weight is deconv.weight
    after = set(gm.state_dict())
    assert before <= after  # weight/bias/mask keys unchanged, quantizer state added
    assert after - before == {
        "conv1_act.quantizer.alpha", "fc1_act.quantizer.alpha", "deconv1.weight_quantizer.step",
        "deconv1.weight_quantizer.initialized",
    }
    assert [describe(gm.get_submodule(name)) for name in ("conv1", "conv1_act", "deconv1", "fc1", "fc1_act", "bn")] \
        == ["SAT w4", "SAT a4", "LSQ w4", "SAT w8", "SAT a8", None]


def test_outputs_equal_a_manual_computation():
    gm = _graph()
    reference = copy.deepcopy(gm)
    _prepare(gm, PLANS)
    y = gm(X)
    m = reference
    mask = m.conv1.mask
    x = F.conv2d(X, sat_weight(m.conv1.weight * mask, 15) * mask, m.conv1.bias)
    x = sat_activation(F.relu(x), torch.tensor(2.0, dtype=torch.float64), 15)
    step = gm.deconv1.weight_quantizer.step.detach()
    assert float(step) == float(2 * m.deconv1.weight.detach().abs().mean() / 7**0.5)  # LSQ initialised on first use
    w = m.deconv1.weight
    w_lsq = step * torch.clamp(w / step, -8, 7).sign() * torch.floor(torch.clamp(w / step, -8, 7).abs() + 0.5)
    x = F.conv_transpose2d(x, w_lsq, m.deconv1.bias, stride=2)
    x = F.linear(x.flatten(1), sat_weight(m.fc1.weight, 255, n_out=5), m.fc1.bias)
    x = sat_activation(x, torch.tensor(3.0, dtype=torch.float64), 255)
    assert torch.equal(y, m.bn(x))


def test_masking_is_kept():
    gm = _prepare(_graph(), PLANS)
    wq = gm.conv1.quantized_weight()
    assert torch.all(wq[gm.conv1.mask == 0] == 0)
    before = gm(X)
    with torch.no_grad():  # unconnected latent weights have no effect, not even through max|tanh W|
        gm.conv1.weight[gm.conv1.mask == 0] = 5.0
    assert torch.equal(gm(X), before)
    gm.train()
    gm(X).sum().backward()
    assert torch.all(gm.conv1.weight.grad[gm.conv1.mask == 0] == 0)
    assert gm.conv1_act.quantizer.alpha.grad is not None and gm.deconv1.weight_quantizer.step.grad is not None


def test_to_float_round_trip():
    gm = _graph()
    float_output = gm(X)
    originals = {name: module for name, module in gm.named_modules()}
    state = {key: value.clone() for key, value in gm.state_dict().items()}
    unprepare(_prepare(gm, PLANS))
    for name, module in gm.named_modules():
        assert module is originals[name], name
    assert isinstance(gm.conv1, MaskedConv2d) and gm.conv1.weight is originals["conv1"].weight
    assert gm.state_dict().keys() == state.keys()
    assert all(torch.equal(gm.state_dict()[key], value) for key, value in state.items())
    assert torch.equal(gm(X), float_output)


def test_to_float_keeps_parameters_replaced_after_prepare():
    gm = _prepare(_graph(), PLANS)
    gm.fc1.weight = nn.Parameter(torch.zeros_like(gm.fc1.weight))
    float_fc = gm.fc1.to_float()
    assert type(float_fc) is nn.Linear and torch.equal(float_fc.weight, torch.zeros_like(float_fc.weight))


def test_integer_mode_computes_the_same_layer():
    plans = dict(PLANS)
    plans["conv1"] = _plan("conv1", SATWeightSpec(range=15, integer=True), SATActSpec(range=15, alpha=2.0))
    plans["fc1"] = _plan("fc1", SATWeightSpec(range=255, apply_scaling=True, integer=True))
    integer = _prepare(_graph(), plans)
    default = _prepare(_graph(), {"conv1": PLANS["conv1"], "fc1": _plan("fc1", PLANS["fc1"].weight)})
    torch.testing.assert_close(integer.conv1(X), default.conv1(X), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(integer.fc1(X.reshape(-1)[:128].reshape(1, 128)),
                               default.fc1(X.reshape(-1)[:128].reshape(1, 128)), rtol=1e-13, atol=1e-13)
    assert describe(integer.conv1) == "SAT w4 int"
    levels, rescale = integer.conv1.integer_weights()
    assert levels.dtype == torch.int64 and levels.abs().max() <= 15 and torch.all(levels[integer.conv1.mask == 0] == 0)
    torch.testing.assert_close(levels * rescale, integer.conv1.quantized_weight().detach(), rtol=1e-15, atol=0)


def test_minmax_activation_and_eval_mode():
    gm = _prepare(_graph(), {"fc1": _plan("fc1", act=MinMaxActSpec(range=15))})
    assert describe(gm.fc1_act) == "MinMax a4"
    assert not gm.fc1_act.quantizer.training  # follows the float module's mode


@pytest.mark.parametrize(
    "plans,message",
    [
        ({"conv9": _plan("conv9", SATWeightSpec())}, "[conv9] QWeight: the network has no module 'conv9'"),
        ({"bn": _plan("bn", SATWeightSpec())}, "[bn] QWeight: only Conv, Fc and Deconv layers have weights"),
        ({"flatten": _plan("flatten", act=SATActSpec())}, "[flatten] QAct: the network has no module 'flatten_act'"),
    ],
)
def test_errors(plans, message):
    with pytest.raises(ConfigError) as caught:
        _prepare(_graph(), plans)
    assert message in str(caught.value)


def test_preparing_twice_is_an_error():
    gm = _prepare(_graph(), PLANS)
    with pytest.raises(ConfigError, match="already quantized"):
        _prepare(gm, PLANS)


def test_integer_mode_linear_adds_the_bias_on_the_last_dimension():
    linear = nn.Linear(4, 3).double()
    plan = _plan("fc", SATWeightSpec(range=15, integer=True))
    float_twin = fx.symbolic_trace(nn.Sequential(copy.deepcopy(linear)))
    default = _prepare(float_twin, {"0": _plan("fc", SATWeightSpec(range=15))})
    integer = _prepare(fx.symbolic_trace(nn.Sequential(linear)), {"0": plan})
    x = torch.randn(2, 5, 4, dtype=torch.float64)  # (N, L, C): channels last
    torch.testing.assert_close(integer(x), default(x), rtol=1e-13, atol=1e-13)


def test_hooks_for_the_weights_folders():
    gm = _prepare(_graph(), PLANS)
    assert list(gm.conv1_act.n2d2_files("conv1")) == ["conv1_QAct_SAT_Alpha"]
    gm.conv1_act.load_n2d2_file("conv1_QAct_SAT_Alpha", torch.tensor([4.0]))
    assert float(gm.conv1_act.quantizer.alpha.detach()) == 4.0
    assert gm.conv1.n2d2_files("conv1") == {}
    gm(X)
    assert list(gm.deconv1.n2d2_files("deconv1")) == ["deconv1_alphaW_LSQ"]
    assert gm.fc1.quantized_weight().shape == gm.fc1.weight.shape


def test_a_prepared_graph_deep_copies_and_converts_back():
    gm = _prepare(_graph(), PLANS)
    twin = copy.deepcopy(gm)
    assert torch.equal(twin(X), gm(X))
    unprepare(twin)
    assert isinstance(twin.conv1, MaskedConv2d) and twin.conv1.weight is not gm.conv1.weight
    assert torch.equal(twin.conv1.weight, gm.conv1.weight) and torch.equal(twin.conv1.mask, gm.conv1.mask)


# ----------------------------------------------------------------------------------------------------
# One module at a time, by its name: a network of one's own


class Block(nn.Module):
    """A network not built from an INI: nested names, an activation that is not followed by a quantizer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
        self.head = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_modules_are_quantized_by_their_dotted_names():
    torch.manual_seed(0)
    model = Block().double()
    reference = copy.deepcopy(model)
    original = model.features[2][0]
    eager = select_kernels("eager")
    conv = quantize_module(model, "features.2.0", SATWeightSpec(range=15), eager)
    act = quantize_module(model, "features.2.1", SATActSpec(range=15, alpha=2.0), eager)
    assert model.features[2][0] is conv and type(conv) is QuantConv2d and conv.weight is original.weight
    assert model.features[2][1] is act and type(act.act) is nn.ReLU and act.quantizer.kernels is eager
    y = model(X)
    x = reference.features[:2](X)
    x = F.conv2d(x, sat_weight(reference.features[2][0].weight, 15), reference.features[2][0].bias)
    x = sat_activation(F.relu(x), torch.tensor(2.0, dtype=torch.float64), 15)
    assert torch.equal(y, reference.head(x.flatten(1)))
    unprepare(model)
    assert type(model.features[2][0]) is nn.Conv2d and type(model.features[2][1]) is nn.ReLU
    assert torch.equal(model(X), reference(X))


@pytest.mark.parametrize(
    "name,spec,message",
    [
        ("features.9", SATWeightSpec(), "QWeight: the network has no module 'features.9'"),
        ("features.1", SATWeightSpec(), "QWeight: only Conv, Fc and Deconv layers have weights to quantize; "
                                        "'features.1' is a ReLU"),
        ("", SATActSpec(), "QAct: the network has no module ''"),
    ],
)
def test_quantize_module_errors(name, spec, message):
    with pytest.raises(ConfigError) as caught:
        quantize_module(Block(), name, spec)
    assert str(caught.value) == message


def test_prepare_wraps_the_modules_it_is_told_to():
    gm = _graph()
    plans = {"deconv1": _plan("deconv1", LSQWeightSpec(range=15), SATActSpec(range=15))}
    prepare(gm, plans, {"deconv1": "flatten"}, kernels=select_kernels("eager"))
    assert type(gm.flatten) is QuantizedActivation and type(gm.deconv1_act) is nn.Identity
    with pytest.raises(ConfigError, match=r"\[conv1\] QAct: no activation module named for 'conv1'"):
        prepare(_graph(), {"conv1": PLANS["conv1"]}, {}, kernels=select_kernels("eager"))


def test_every_quantizer_holds_the_kernels_it_was_given():
    fused = select_kernels("compiled", device="meta")
    gm = prepare(_graph(), PLANS, {name: name + "_act" for name in PLANS}, kernels=fused)
    quantizers = [m.weight_quantizer for m in (gm.conv1, gm.deconv1, gm.fc1)] + [gm.conv1_act.quantizer]
    assert all(q.kernels is fused for q in quantizers)
    assert copy.deepcopy(gm).conv1.weight_quantizer.kernels is fused


def test_quantizers_and_their_layers_satisfy_the_protocols():
    gm = _prepare(_graph(), PLANS)
    for name in ("conv1", "deconv1", "fc1"):
        module = gm.get_submodule(name)
        assert isinstance(module, HoldsN2D2Files) and isinstance(module.weight_quantizer, WeightQuantizer)
    assert isinstance(gm.conv1_act, HoldsN2D2Files) and isinstance(gm.conv1_act.quantizer, ActivationQuantizer)
    assert not isinstance(gm.conv1_act.quantizer, WeightQuantizer) and not isinstance(gm.bn, HoldsN2D2Files)
    assert dict(gm.deconv1.weight_quantizer.PARAMETER_MIN) == {"step": 1e-8}
    assert dict(gm.conv1.weight_quantizer.PARAMETER_MIN) == {} == dict(gm.conv1_act.quantizer.PARAMETER_MIN)
