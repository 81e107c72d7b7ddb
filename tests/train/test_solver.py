"""N2D2 SGD / Adam and every LR policy against plain references written from reference/n2d2.md §4 (atol=0)."""

from __future__ import annotations

import math

import pytest
import torch

from qatrun.train.solver import LR_POLICIES, N2D2Optimizer, SolverConfig, group_by_solver, learning_rate


class RefSGD:
    """``SGDSolver`` of §4.2 transcribed line by line: mutable counters, diff = -(batch sum of dL/dw)."""

    def __init__(self, cfg: SolverConfig, batch: int) -> None:
        self.cfg, self.batch = cfg, batch
        self.iteration_pass = 0
        self.nb_iterations = 0
        self.v: torch.Tensor | None = None

    def get_learning_rate(self) -> float:
        c, b = self.cfg, self.batch
        if c.learning_rate == 0:
            return 0.0
        if self.iteration_pass < c.iteration_size - 1:
            self.iteration_pass += 1
            return 0.0
        self.iteration_pass = 0
        rate = c.learning_rate
        if c.policy in ("StepDecay", "ExponentialDecay", "InvTDecay", "CosineDecay"):
            pattern = self.nb_iterations * c.iteration_size * b
            step = pattern // c.step_size
            if c.policy == "StepDecay":
                rate *= c.lr_decay**step
            elif c.policy == "ExponentialDecay":
                rate *= math.exp(-c.lr_decay * step)
            elif c.policy == "InvTDecay":
                rate *= 1 / (1 + c.lr_decay * step)
            elif step < c.warm_up_duration:
                rate *= (1 - c.warm_up_lr_frac) * step / c.warm_up_duration + c.warm_up_lr_frac
            else:
                den = c.max_iterations - c.warm_up_duration
                cos = 0.5 * (1 + math.cos(math.pi * (step - c.warm_up_duration) / den)) if den else math.nan
                value = (1 - c.min_decay) * cos + c.min_decay
                rate *= 0.0 if math.isnan(value) else max(0.0, value)
        elif c.policy == "PolyDecay":
            rate *= (1 - self.nb_iterations / c.max_iterations) ** c.power
        elif c.policy == "InvDecay":
            rate *= (1 + c.lr_decay * self.nb_iterations) ** (-c.power)
        if c.max_iterations == 0 or self.nb_iterations < c.max_iterations:
            self.nb_iterations += 1
        return rate

    def update(self, w: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        rate = self.get_learning_rate()
        if rate == 0:
            return w
        rate_diff = rate / (self.batch * c.iteration_size)
        if c.momentum == 0 and c.decay == 0:
            w = w + rate_diff * diff
        else:
            if self.v is None:
                self.v = torch.zeros_like(w)
            self.v = c.momentum * self.v + rate_diff * diff - c.decay * rate * w
            w = w + self.v
        if c.clamp_min is not None:
            w = torch.where(w < c.clamp_min, torch.full_like(w, c.clamp_min), w)
        if c.clamp_max is not None:
            w = torch.where(w > c.clamp_max, torch.full_like(w, c.clamp_max), w)
        return w


class RefAdam:
    """``AdamSolver`` of §4.3, diff = -(batch sum of dL/dw)."""

    def __init__(self, cfg: SolverConfig) -> None:
        self.cfg, self.t = cfg, 0
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, w: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        self.t += 1
        if self.m is None:
            self.m, self.v = torch.zeros_like(w), torch.zeros_like(w)
        self.m = c.beta1 * self.m + (1 - c.beta1) * diff
        self.v = c.beta2 * self.v + (1 - c.beta2) * diff * diff
        alpha = c.learning_rate * math.sqrt(1 - c.beta2**self.t) / (1 - c.beta1**self.t)
        eps = c.epsilon * math.sqrt(1 - c.beta2**self.t)
        w = w + alpha * self.m / (torch.sqrt(self.v) + eps)
        if c.clamp_min is not None:
            w = torch.where(w < c.clamp_min, torch.full_like(w, c.clamp_min), w)
        if c.clamp_max is not None:
            w = torch.where(w > c.clamp_max, torch.full_like(w, c.clamp_max), w)
        return w


BATCH = 4  # a power of two: diff = -B * g is then exact in both computations

POLICY_CASES = [
    SolverConfig(policy="None", learning_rate=0.05),
    SolverConfig(policy="StepDecay", learning_rate=0.1, lr_decay=0.5, step_size=6),
    SolverConfig(policy="StepDecay", learning_rate=0.1, lr_decay=0.993, step_size=8, iteration_size=3),
    SolverConfig(policy="ExponentialDecay", learning_rate=0.1, lr_decay=0.07, step_size=3),
    SolverConfig(policy="InvTDecay", learning_rate=0.1, lr_decay=0.3, step_size=5),
    SolverConfig(policy="PolyDecay", learning_rate=0.1, power=2.0, max_iterations=5),
    SolverConfig(policy="PolyDecay", learning_rate=0.1, power=0.5, max_iterations=7, iteration_size=2),
    SolverConfig(policy="InvDecay", learning_rate=0.1, lr_decay=0.2, power=0.75),
    SolverConfig(policy="CosineDecay", learning_rate=0.1, max_iterations=40),
    SolverConfig(policy="CosineDecay", learning_rate=0.1, max_iterations=40, warm_up_duration=12, warm_up_lr_frac=0.1),
    SolverConfig(policy="CosineDecay", learning_rate=0.1, max_iterations=30, warm_up_duration=8, min_decay=0.2),
    SolverConfig(policy="CosineDecay", learning_rate=0.1, max_iterations=0),  # N2D2: NaN -> never updates
    SolverConfig(policy="CosineDecay", learning_rate=0.1, max_iterations=64, step_size=4, iteration_size=2),
    SolverConfig(policy="StepDecay", learning_rate=0.0, lr_decay=0.5),
]


def test_every_policy_is_covered() -> None:
    assert {c.policy for c in POLICY_CASES} == set(LR_POLICIES)


@pytest.mark.parametrize("cfg", POLICY_CASES, ids=lambda c: _id(c))
def test_learning_rate_matches_reference(cfg: SolverConfig) -> None:
    ref = RefSGD(cfg, BATCH)
    step = 0
    for _ in range(25 * cfg.iteration_size):
        expected = ref.get_learning_rate()
        if ref.iteration_pass == 0 and cfg.learning_rate != 0:  # an effective update
            assert learning_rate(cfg, step, BATCH) == expected
            step += 1
        else:
            assert expected == 0.0


def test_learning_rate_schedules_are_not_trivial() -> None:
    """The table above exercises decays, the warm-up ramp and the MaxIterations cap."""
    warm = POLICY_CASES[9]
    assert learning_rate(warm, 0, BATCH) == pytest.approx(0.01)  # WarmUpLRFrac * LR
    assert learning_rate(warm, 1, BATCH) == pytest.approx(0.1 * (0.9 * 4 / 12 + 0.1))
    assert learning_rate(warm, 3, BATCH) == pytest.approx(0.1)  # end of warm-up: cos(0)
    poly = POLICY_CASES[5]
    assert learning_rate(poly, 5, BATCH) == 0.0 == learning_rate(poly, 99, BATCH)
    assert learning_rate(POLICY_CASES[1], 3, BATCH) == pytest.approx(0.1 * 0.5**2)  # 12 samples / 6


def _run(cfg: SolverConfig, steps: int, shape: tuple[int, ...] = (3, 5)) -> None:
    """Drives N2D2Optimizer and the reference with the same gradients; compares every step exactly."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    opt = N2D2Optimizer(group_by_solver([("w", param, cfg)]), BATCH)
    ref = RefAdam(cfg) if cfg.type == "Adam" else RefSGD(cfg, BATCH)
    w_ref = w0.clone()
    accumulated = torch.zeros_like(w0)
    for _ in range(steps):
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        # what backward() of a batch-sum-over-B loss adds to .grad
        param.grad = g.clone() if param.grad is None else param.grad + g
        accumulated = accumulated + g
        opt.step()
        w_new = ref.update(w_ref, -BATCH * accumulated)
        if cfg.type == "Adam" or ref.iteration_pass == 0:  # the reference consumed the accumulated diff
            accumulated = torch.zeros_like(w0)
            assert param.grad is None
        w_ref = w_new
        assert torch.equal(param.data, w_ref), (param.data - w_ref).abs().max()
    assert not torch.equal(w_ref, w0)


UPDATE_CASES = [
    SolverConfig(learning_rate=0.1),
    SolverConfig(learning_rate=0.1, momentum=0.9),
    SolverConfig(learning_rate=0.1, decay=5e-4),
    SolverConfig(learning_rate=0.05, momentum=0.9, decay=1e-3, policy="StepDecay", lr_decay=0.5, step_size=8),
    SolverConfig(learning_rate=0.05, momentum=0.8, decay=1e-3, iteration_size=3, policy="PolyDecay",
                 power=1.0, max_iterations=4),
    SolverConfig(learning_rate=0.2, momentum=0.5, policy="CosineDecay", max_iterations=48, warm_up_duration=16,
                 iteration_size=2, min_decay=0.1),
    SolverConfig(learning_rate=0.5, clamp_min=-1.0, clamp_max=1.0),
    SolverConfig(learning_rate=0.5, momentum=0.9, clamp_max=0.5),
    SolverConfig(learning_rate=0.5, clamp_min=0.0),
    SolverConfig(type="Adam", learning_rate=0.001),
    SolverConfig(type="Adam", learning_rate=0.01, beta1=0.8, beta2=0.99, epsilon=1e-6, clamp_min=-0.5,
                 clamp_max=0.5),
]


def _id(cfg: SolverConfig) -> str:
    """The fields that differ from the defaults, e.g. ``SGD-momentum=0.9-decay=0.0005``."""
    default = SolverConfig(type=cfg.type)
    changed = [f"{k}={v}" for k, v in vars(cfg).items() if k != "type" and v != getattr(default, k)]
    return "-".join([cfg.type, *changed])


@pytest.mark.parametrize("cfg", UPDATE_CASES, ids=_id)
def test_update_matches_reference(cfg: SolverConfig) -> None:
    _run(cfg, steps=12)


def test_clamping_bites() -> None:
    param = torch.nn.Parameter(torch.tensor([0.9, -0.9, 0.0], dtype=torch.float64))
    opt = N2D2Optimizer(group_by_solver([("w", param, SolverConfig(learning_rate=1.0, clamp_min=-1.0,
                                                                    clamp_max=1.0))]), BATCH)
    param.grad = torch.tensor([-1.0, 1.0, 0.25], dtype=torch.float64)
    opt.step()
    assert param.data.tolist() == [1.0, -1.0, -0.25]


def test_iteration_size_accumulates_then_updates_once() -> None:
    cfg = SolverConfig(learning_rate=0.5, iteration_size=3)
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = N2D2Optimizer(group_by_solver([("w", param, cfg)]), BATCH)
    for k in range(3):
        param.grad = torch.ones(2, dtype=torch.float64) if param.grad is None else param.grad + 1
        opt.step()
        if k < 2:
            assert param.data.tolist() == [0.0, 0.0] and param.grad is not None
    # w -= rate / I * (sum of 3 batch gradients) = 0.5 / 3 * 3
    assert param.data.tolist() == [-0.5, -0.5] and param.grad is None


def test_groups_and_state_dict_round_trip() -> None:
    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    sgd, adam = SolverConfig(momentum=0.9), SolverConfig(type="Adam")
    groups = group_by_solver([("a", a, sgd), ("b", b, adam), ("c", c, sgd), ("a2", a, adam)])
    assert [len(g["params"]) for g in groups] == [2, 1] and groups[0]["solver"] is sgd
    opt = N2D2Optimizer(groups, 8)
    for p in (a, b, c):
        p.grad = torch.ones(2)
    opt.step()
    state = opt.state_dict()
    assert all("solver" not in g for g in state["param_groups"])
    fresh = N2D2Optimizer(group_by_solver([("a", a, sgd), ("b", b, adam), ("c", c, sgd)]), 8)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["solver"] is sgd and fresh.param_groups[1]["updates"] == 1
    assert torch.equal(fresh.state[a]["velocity"], opt.state[a]["velocity"])


# ------------------------------------------------------------------------------------------ INI reading

LAYERS = """\
[common]
Solvers.LearningRate=0.05
Solvers.Momentum=0.9
Solvers.LearningRatePolicy=StepDecay
Solvers.LearningRateStepSize=1,000
WeightsSolver.Decay=0.0005
BiasSolver.LearningRate=0.1
[conv1]
Input=sp
ConfigSection=common
[conv2]
Input=conv1
ConfigSection=common
Solvers=SGD
Solvers.IterationSize=2
Solvers.LearningRate=0.5
[bn1]
Input=conv2
WeightsSolver=Adam
WeightsSolver.Beta1=0.8
ScaleSolver=ADAM
[adam_cfg]
Solvers.LearningRate=0.002
Solvers.Epsilon=1e-7
Solvers.Clamping=-1:1
[fc]
Input=bn1
Solvers=Adam
ConfigSection=adam_cfg
"""


def _read(text: str, section: str, role: str) -> SolverConfig:
    from qatrun.ini import loads

    doc = loads(text, "t.ini")
    sec = doc.section(section)
    return SolverConfig.from_params(sec, doc.params(sec), role)


@pytest.mark.parametrize(
    ("section", "role", "expected"),
    [
        ("conv1", "WeightsSolver", SolverConfig(learning_rate=0.05, momentum=0.9, policy="StepDecay", step_size=1000,
                                                decay=0.0005)),
        ("conv1", "BiasSolver", SolverConfig(learning_rate=0.1, momentum=0.9, policy="StepDecay", step_size=1000)),
        # the layer's Solvers.X (honoured with Solvers=) are overridden by the ConfigSection's
        ("conv2", "WeightsSolver", SolverConfig(learning_rate=0.05, momentum=0.9, policy="StepDecay", step_size=1000,
                                                decay=0.0005, iteration_size=2)),
        ("bn1", "WeightsSolver", SolverConfig(type="Adam", learning_rate=0.001, beta1=0.8)),
        ("bn1", "ScaleSolver", SolverConfig(type="Adam", learning_rate=0.001)),
        ("bn1", "BiasSolver", SolverConfig()),
        ("fc", "WeightsSolver", SolverConfig(type="Adam", learning_rate=0.002, epsilon=1e-7, clamp_min=-1.0,
                                             clamp_max=1.0)),
    ],
)
def test_read_solver(section: str, role: str, expected: SolverConfig) -> None:
    assert _read(LAYERS, section, role) == expected


@pytest.mark.parametrize(
    ("text", "section", "message"),
    [
        ("[c]\nSolvers.LearningRate=0.1\n", "c",
         "t.ini:2: [c] Solvers.LearningRate: N2D2 ignores Solvers.X in a layer section without Solvers=SGD|Adam in "
         "it: add the type, or move the key to the ConfigSection"),
        ("[cfg]\nSolvers=SGD\n[c]\nConfigSection=cfg\n", "c",
         "t.ini:2: [cfg] Solvers: Solvers (the solver type) is read from the layer section only, not from a "
         "ConfigSection (N2D2: Unknown parameter)"),
        ("[cfg]\nSolvers.LearningRat=0.1\n[c]\nConfigSection=cfg\n", "c",
         "t.ini:2: [cfg] Solvers.LearningRat: unknown SGD solver key (did you mean 'LearningRate'?); valid: "
         "LearningRate, Momentum, Decay, LearningRatePolicy, LearningRateStepSize, LearningRateDecay, Power, "
         "MaxIterations, IterationSize, WarmUpDuration, WarmUpLRFrac, MinDecay, PolyakMomentum, Clamping"),
        ("[c]\nSolvers=Adam\nSolvers.Momentum=0.9\n", "c",
         "t.ini:3: [c] Solvers.Momentum: unknown Adam solver key; valid: LearningRate, Beta1, Beta2, Epsilon, "
         "Clamping"),
        ("[c]\nSolvers=SGD\nSolvers.IterationSize=2.0\n", "c",
         't.ini:3: [c] Solvers.IterationSize: expected an integer, found "2.0"'),
        ("[c]\nSolvers=SGD\nSolvers.LearningRatePolicy=PolyDecay\n", "c",
         "t.ini:3: [c] Solvers.LearningRatePolicy: PolyDecay needs MaxIterations > 0 (N2D2 divides by it)"),
        ("[c]\nSolvers=SGD\nSolvers.LearningRatePolicy=CosineDecay\n", "c",
         "t.ini:3: [c] Solvers.LearningRatePolicy: CosineDecay needs MaxIterations > WarmUpDuration: N2D2 then "
         "computes a NaN rate and never updates"),
        ("[c]\nSolvers=SGD\nSolvers.Clamping=1\n", "c",
         't.ini:3: [c] Solvers.Clamping: expected "min:max", ":max" or "min:", found "1"'),
        ("[c]\nSolvers=SGD\nSolvers.IterationSize=0\n", "c",
         "t.ini:3: [c] Solvers.IterationSize: must be at least 1, found 0"),
        ("[c]\nSolvers=sgd\n", "c", 't.ini:2: [c] Solvers: expected one of SGD, Adam, ADAM, found "sgd"'),
    ],
)
def test_read_solver_errors(text: str, section: str, message: str) -> None:
    from qatrun.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _read(text, section, "WeightsSolver")
    assert str(err.value) == message


@pytest.mark.parametrize("clamping", ["-1:1", ":0.5", "0:"])
def test_clamping_forms(clamping: str) -> None:
    cfg = _read(f"[c]\nSolvers=SGD\nSolvers.Clamping={clamping}\n", "c", "WeightsSolver")
    low, high = clamping.split(":")
    assert (cfg.clamp_min, cfg.clamp_max) == (float(low) if low else None, float(high) if high else None)


def test_quantizer_solver_plans() -> None:
    from dataclasses import dataclass, field

    from qatrun.errors import ConfigError, Location
    from qatrun.train.solver import solver_group

    @dataclass(frozen=True)
    class Plan:  # the shape of qatrun.quant.SolverPlan
        type: str = "SGD"
        settings: dict = field(default_factory=dict)
        locations: dict = field(default_factory=dict)
        section: str = "bn1"
        prefix: str = "QActSolver."

    assert SolverConfig.from_plan(None) == SolverConfig()
    plan = Plan("Adam", {"LearningRate": "0.05"}, {"LearningRate": Location("t.ini", 7)})
    p = torch.nn.Parameter(torch.ones(1))
    group = solver_group([p], plan, "bn1.alpha")
    assert group["solver"] == SolverConfig(type="Adam", learning_rate=0.05) and group["params"] == [p]
    bad = Plan("SGD", {"Momentun": "0.9"}, {"Momentun": Location("t.ini", 9)})
    with pytest.raises(ConfigError) as err:
        SolverConfig.from_plan(bad)
    assert str(err.value).startswith("t.ini:9: [bn1] QActSolver.Momentun: unknown SGD solver key (did you mean "
                                     "'Momentum'?)")
