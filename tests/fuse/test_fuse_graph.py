"""The integerization pass on fx graphs made of qatrun.quant modules: every quantizer method, residual
sums, pooling, masked convolutions, the rescaling modes end to end, and the errors it reports."""

from __future__ import annotations

import fuse_golden
import pytest
import torch
from torch import Tensor, fx, nn

from qatrun.errors import RunError
from qatrun.fuse import FuseOptions, RESCALING_MODES, integerize, mode_bound_lsb, verify
from qatrun.fuse.intnet import IntAvgPool2d, IntConv2d, Rescale
from qatrun.net.layers import ElemWise, MappedConv2d
from qatrun.quant import (
    LSQActivationQuantizer,
    LSQActSpec,
    LSQWeightQuantizer,
    LSQWeightSpec,
    MinMaxActivationQuantizer,
    MinMaxActSpec,
    MinMaxWeightQuantizer,
    MinMaxWeightSpec,
    QuantConv2d,
    QuantizedActivation,
    QuantLinear,
    SATActivationQuantizer,
    SATActSpec,
    SATWeightQuantizer,
    SATWeightSpec,
)


def sat_conv(conv: nn.Conv2d, steps: int = 255, mode: str = "Default", scaling: bool = False) -> QuantConv2d:
    n_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    spec = SATWeightSpec(range=steps, quant_mode=mode, apply_scaling=scaling)
    return QuantConv2d.from_float(conv, SATWeightQuantizer(spec, n_out=n_out))


def sat_act(alpha: float, steps: int = 255, act: nn.Module | None = None) -> QuantizedActivation:
    quantizer = SATActivationQuantizer(SATActSpec(range=steps, alpha=alpha))
    return QuantizedActivation(act or nn.Identity(), quantizer)


def randomize_bn(bn: nn.BatchNorm2d, gen: torch.Generator, negative: bool = True) -> nn.BatchNorm2d:
    with torch.no_grad():
        gamma = torch.rand(bn.num_features, generator=gen) + 0.5
        if negative:
            gamma[0] = -gamma[0]  # one channel with a negative factor: the sign trick
        bn.weight.copy_(gamma)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.3)
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.2)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.2)
    return bn


class Residual(nn.Module):
    """conv1 -> bn1 -> ReLU+LSQ; conv2 (masked, SAT) -> bn2 -> SAT; Sum -> SAT; avg-pool; LSQ Fc -> logits."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.conv1 = sat_conv(nn.Conv2d(1, 4, 3, padding=1))
        self.bn1 = randomize_bn(nn.BatchNorm2d(4), gen)
        self.bn1_act = QuantizedActivation(nn.ReLU(), LSQActivationQuantizer(LSQActSpec(range=15)))
        connectivity = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 1]])
        self.conv2 = sat_conv(MappedConv2d(4, 4, (3, 3), connectivity, padding=(1, 1)), steps=15, mode="Symmetric")
        self.conv2_act = nn.Identity()
        self.bn2 = randomize_bn(nn.BatchNorm2d(4), gen)
        self.bn2_act = sat_act(2.0, 15)
        self.sum = ElemWise("Sum", torch.ones(2, 4), torch.zeros(2, 4))
        self.sum_act = sat_act(3.0, 255)
        self.pool = nn.AvgPool2d(2)
        self.fc = QuantLinear.from_float(nn.Linear(64, 10), LSQWeightQuantizer(LSQWeightSpec(range=255), n_out=10))
        self.fc_act = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        a = self.bn1_act(self.bn1(self.conv1(x)))
        b = self.bn2_act(self.bn2(self.conv2_act(self.conv2(a))))
        y = self.pool(self.sum_act(self.sum(a, b)))
        return self.fc_act(self.fc(torch.flatten(y, 1)))


class MinMaxNet(nn.Module):
    """Asymmetric MinMax activations (zero points) and per-channel MinMax weights, a plain `+`, a max-pool."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        spec = MinMaxWeightSpec(range=255, per_channel=True)
        self.conv1 = QuantConv2d.from_float(nn.Conv2d(1, 3, 3), MinMaxWeightQuantizer(spec, n_out=27))
        self.conv1_act = QuantizedActivation(nn.Identity(), MinMaxActivationQuantizer(MinMaxActSpec(range=255)))
        self.conv2 = QuantConv2d.from_float(nn.Conv2d(3, 3, 3, padding=1), MinMaxWeightQuantizer(spec, n_out=27))
        self.bn2 = randomize_bn(nn.BatchNorm2d(3), gen)
        self.bn2_act = QuantizedActivation(nn.Identity(), MinMaxActivationQuantizer(MinMaxActSpec(range=255)))
        self.add_act = QuantizedActivation(nn.ReLU(), MinMaxActivationQuantizer(MinMaxActSpec(range=15)))
        self.pool = nn.MaxPool2d(2)
        self.fc = QuantLinear.from_float(nn.Linear(27, 5), MinMaxWeightQuantizer(spec, n_out=5))
        self.fc_act = QuantizedActivation(nn.Identity(), MinMaxActivationQuantizer(MinMaxActSpec(range=255)))

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv1_act(self.conv1(x))
        b = self.bn2_act(self.bn2(self.conv2(a)))
        y = self.pool(self.add_act(a + b))
        return self.fc_act(self.fc(torch.flatten(y, 1)))


def images(gen: torch.Generator, count: int, size: int = 8) -> Tensor:
    return torch.randint(0, 256, (count, 1, size, size), generator=gen).float() / 255


def calibrated(net: nn.Module, gen: torch.Generator, size: int = 8) -> fx.GraphModule:
    """Traced, with LSQ steps and MinMax ranges set by a few training-mode batches, in eval mode."""
    gm = fuse_golden.trace(net)
    gm.train()
    with torch.no_grad():
        for _ in range(3):
            gm(images(gen, 16, size))
    for module in gm.modules():  # the BatchNorms keep the randomized statistics
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0
    return gm.eval()


@pytest.fixture(scope="module")
def residual() -> fx.GraphModule:
    gen = torch.Generator().manual_seed(1)
    net = Residual(gen)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0  # keep the randomized running statistics through calibration
    return calibrated(net, gen)


@pytest.fixture(scope="module")
def minmax() -> fx.GraphModule:
    gen = torch.Generator().manual_seed(2)
    net = MinMaxNet(gen)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0
    return calibrated(net, gen)


def test_residual_network_is_exact(residual: fx.GraphModule) -> None:
    int_gm, report = integerize(residual)
    assert [layer.rescale for layer in report.layers] == ["bn1_act", "bn2_act", "sum_act", "fc_act"]
    assert report.layers[-1].out is None  # the logits stay unquantized
    assert isinstance(int_gm.pool, IntAvgPool2d) and int_gm.pool.window_sum
    result = verify(residual, int_gm, report, [images(torch.Generator().manual_seed(3), 64)])
    assert result.ok and result.differing_predictions == 0, str(result)
    assert all(layer.differing == 0 for layer in result.layers), str(result)
    assert report.layers[0].layer.flipped[0] and report.layers[1].layer.flipped[0]  # negative gamma channels


def test_minmax_zero_points_are_exact(minmax: fx.GraphModule) -> None:
    int_gm, report = integerize(minmax)
    zeros = {layer.rescale: layer.out.zero for layer in report.layers}
    assert zeros["conv1_act"] != 0 and int_gm.conv2.input_zero == zeros["conv1_act"]
    result = verify(minmax, int_gm, report, [images(torch.Generator().manual_seed(4), 64)])
    assert result.ok and all(layer.differing == 0 for layer in result.layers), str(result)


@pytest.mark.parametrize("mode", RESCALING_MODES)
def test_rescaling_modes_end_to_end(residual: fx.GraphModule, mode: str) -> None:
    int_gm, report = integerize(residual, FuseOptions(rescaling=mode))
    assert all(isinstance(int_gm.get_submodule(layer.rescale), Rescale) for layer in report.layers)
    assert report.bound_lsb <= mode_bound_lsb(mode, 255)
    result = verify(residual, int_gm, report, [images(torch.Generator().manual_seed(5), 64)])
    assert result.ok, str(result)
    assert max(layer.rescale_lsb for layer in result.layers) <= report.bound_lsb
    if mode in ("Floating-point", "Fixed-point32"):
        assert all(layer.differing == 0 for layer in result.layers), str(result)


def test_golden_lenet_rescaling_modes_on_random_images() -> None:
    gm = fuse_golden.lenet()
    batch = images(torch.Generator().manual_seed(6), 32, 32)
    for mode in RESCALING_MODES:
        int_gm, report = integerize(gm, FuseOptions(rescaling=mode), fuse_golden.GoldenReader())
        result = verify(gm, int_gm, report, [batch])
        assert result.ok, str(result)
        assert report.bound_lsb <= mode_bound_lsb(mode, 255)


def test_n2d2_flavour_runs_on_residual_sums(residual: fx.GraphModule) -> None:
    options = FuseOptions(flavour="n2d2", weights_rounding="RINTF", biases_rounding="RINTF", clips_rounding="RINTF")
    int_gm, report = integerize(residual, options)
    result = verify(residual, int_gm, report, [images(torch.Generator().manual_seed(7), 16)])
    assert result.ok and report.bound_lsb is None and "no bound" in str(result)
    assert not int_gm.pool.window_sum  # N2D2 averages


def test_summary_describes_every_integer_module(residual: fx.GraphModule) -> None:
    int_gm, report = integerize(residual, FuseOptions(rescaling="Fixed-point16"))
    summary = report.summary()
    assert "conv1      IntConv2d: int9 w / int32 acc" in summary  # SAT Default 8-bit: 2k - 255
    assert "conv2      IntConv2d: int4 w / int32 acc" in summary  # SAT Symmetric R=15: -7..7
    assert "bn1_act    Rescale: u4 out, Fixed-point16" in summary
    assert "pool       IntAvgPool2d: sum of 4" in summary
    assert "fc_act     Rescale: f64 out" in summary
    assert set(report.descriptions) == {name for name, _ in int_gm.named_children()}


def graph_of(*modules: tuple[str, nn.Module]) -> fx.GraphModule:
    """A chain of named modules as a GraphModule."""
    root = nn.Module()
    graph = fx.Graph()
    value = graph.placeholder("x")
    for name, module in modules:
        root.add_module(name, module)
        value = graph.call_module(name, (value,))
    graph.output(value)
    return fx.GraphModule(root, graph)


ERRORS = [
    ([("conv", nn.Conv2d(1, 2, 3))], "conv: Conv2d has no weight quantizer"),
    ([("conv", sat_conv(nn.Conv2d(1, 2, 3))), ("act", sat_act(1.0, act=nn.Tanh()))],
     "act: activation Tanh before the quantizer has no integer form"),
    ([("act", sat_act(1.0)), ("bn", nn.BatchNorm2d(1))], "bn: a BatchNorm must directly follow a Conv or Fc"),
    ([("conv", sat_conv(nn.Conv2d(1, 2, 3))), ("conv2", sat_conv(nn.Conv2d(2, 2, 3)))],
     "conv2: its input 'conv' is not quantized"),
    ([("conv", sat_conv(nn.Conv2d(1, 2, 3))), ("act", sat_act(1.0)), ("up", nn.Upsample(scale_factor=2))],
     "up: Upsample has no integer form"),
]


@pytest.mark.parametrize(("modules", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_errors_name_the_module(modules: list, message: str) -> None:
    with pytest.raises(RunError, match=message):
        integerize(graph_of(*modules).eval())


def test_n2d2_flavour_needs_batchnorm_after_conv() -> None:
    gm = graph_of(("conv", sat_conv(nn.Conv2d(1, 2, 3))), ("act", sat_act(1.0))).eval()
    with pytest.raises(RunError, match="N2D2 converts a Conv only as Conv -> BatchNorm"):
        integerize(gm, FuseOptions(flavour="n2d2"))
    integerize(gm)  # the exact flavour handles it


def test_input_off_the_pixel_grid_is_refused() -> None:
    gm = graph_of(("conv", sat_conv(nn.Conv2d(1, 2, 3))), ("act", sat_act(1.0))).eval()
    int_gm, _ = integerize(gm)
    int_gm(torch.full((1, 1, 4, 4), 3 / 255))
    with pytest.raises(RunError, match="inputs p/255 with integer p in \\[0, 255\\]"):
        int_gm(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(RunError, match="range"):
        int_gm(torch.full((1, 1, 4, 4), -1.0))


def test_accumulator_bound_is_checked() -> None:
    with pytest.raises(RunError, match="exceeds 2\\^53"):
        IntConv2d(torch.full((1, 1, 3, 3), 2**40), torch.zeros(1), input_span=2**20, name="big")


def test_float64_accumulation_equals_int64_convolution() -> None:
    gen = torch.Generator().manual_seed(8)
    weight = torch.randint(-255, 256, (8, 4, 5, 5), generator=gen)
    x = torch.randint(0, 256, (2, 4, 12, 12), generator=gen)
    conv = IntConv2d(weight, torch.zeros(8), padding=(2, 2))
    reference = torch.nn.functional.conv2d(x, weight, padding=2)  # int64 on the CPU
    assert torch.equal(conv(x), reference.double())


class Branches(nn.Module):
    """Two quantized branches concatenated (one grid, or two), then a crop."""

    def __init__(self, alphas: tuple[float, float]) -> None:
        super().__init__()
        self.a = sat_conv(nn.Conv2d(1, 2, 3, padding=1))
        self.a_act = sat_act(alphas[0], 15)
        self.b = sat_conv(nn.Conv2d(1, 3, 3, padding=1))
        self.b_act = sat_act(alphas[1], 15)
        self.c = sat_conv(nn.Conv2d(5, 2, 3))
        self.c_act = sat_act(1.0, 15)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.a_act(self.a(x)), self.b_act(self.b(x))], 1)
        return self.c_act(self.c(torch.nn.functional.pad(y, (-1, 0, 0, -1))))


def test_concatenation_on_one_grid_and_crop() -> None:
    gm = fuse_golden.trace(Branches((2.0, 2.0)).eval())
    int_gm, report = integerize(gm)
    result = verify(gm, int_gm, report, [images(torch.Generator().manual_seed(9), 8)])
    assert result.ok and all(layer.differing == 0 for layer in result.layers), str(result)
    with pytest.raises(RunError, match="concatenated inputs have different activation grids"):
        integerize(fuse_golden.trace(Branches((2.0, 3.0)).eval()))


def test_quant_modules_built_from_the_golden_ini() -> None:
    """The whole path: qatrun.net builds the INI, qatrun.quant prepares it, fusion reads it (DefaultReader)."""
    from qatrun import ini, net, quant

    doc = ini.load(str(fuse_golden.INI))
    gm = net.build(doc, (1, 32, 32))
    plans = {net.module_name(s.name): plan for s in doc.sections()
             if s.has("Input") and (plan := quant.plan_for(s, doc.params(s)))}
    quant.prepare(gm, plans, act_names={name: net.activation_name(name) for name in plans})
    with torch.no_grad():
        for cell, shape in fuse_golden.SHAPES.items():
            weights = fuse_golden.values(f"weights_8b_SAT/{cell}_weights.syntxt")
            getattr(gm, cell).weight.copy_(torch.from_numpy(weights).reshape(shape))
        for bn in ("bn1", "bn2", "bn3"):
            for attr, role in (("weight", "scales"), ("bias", "biases"), ("running_mean", "means"),
                               ("running_var", "variances")):
                getattr(getattr(gm, bn), attr).copy_(
                    torch.from_numpy(fuse_golden.values(f"weights_8b_SAT/{bn}_{role}.syntxt")))
        for cell in fuse_golden.ACTIVATED:
            getattr(gm, f"{cell}_act").quantizer.alpha.fill_(fuse_golden.alpha(cell))
    gm.eval()
    rounding = "RINTF"
    int_gm, report = integerize(gm, FuseOptions("n2d2", "Floating-point", rounding, rounding, rounding))
    outputs: dict[str, Tensor] = {}
    for name in fuse_golden.FUSED_OUTPUTS.values():
        int_gm.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
    for index in (0, 1):
        pixels = torch.from_numpy(fuse_golden.stimulus("fused_RINTF", index, "env")).reshape(1, 1, 32, 32)
        with torch.no_grad():
            int_gm(pixels.float() / 255)
        for logged, module in fuse_golden.FUSED_OUTPUTS.items():
            mine = outputs[module].flatten().double().numpy()
            assert (mine == fuse_golden.stimulus("fused_RINTF", index, logged, mine.size)).all(), logged
    exact_gm, exact_report = integerize(gm)
    result = verify(gm, exact_gm, exact_report, [fuse_golden.golden_inputs()])
    assert result.ok and all(layer.differing == 0 for layer in result.layers), str(result)
