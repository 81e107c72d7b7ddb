"""N2D2's solvers (SGD, Adam) and learning-rate policies, as a ``torch.optim.Optimizer``.

Design note
-----------
N2D2 cells hold *diffs*: the negative gradient summed over the batch (reference/n2d2.md §4.1). qatrun's loss is
the per-sample loss summed over the batch and divided by the nominal batch size B (``loop.py``), so the PyTorch
gradient ``g`` relates to N2D2's diff by ``diff = -B * g`` (over an accumulation group of IterationSize batches
``g`` is the sum of the per-batch gradients, and ``diff`` the sum over all B * IterationSize samples).

SGD (``SGDSolver_Frame::update``, §4.2), with ``rate`` from :func:`learning_rate` and ``r = rate / (B * I)``,
I = IterationSize::

    Momentum == 0 and Decay == 0:   w += r * diff
    otherwise:                      v  = Momentum * v + r * diff - Decay * rate * w
                                    w += v
    w = clamp(w, Clamping)

The LR sits inside the velocity (Caffe style) and the decay multiplies the *un-normalised* rate: under a schedule
this differs from ``torch.optim.SGD``, so N2D2's form is implemented. Gradient accumulation: the first I - 1
passes of a group only accumulate (``getLearningRate`` returns 0 and counts the pass); the I-th updates.

Adam (``AdamSolver_Frame``, §4.3), t = 1, 2, ... the update count, ``diff`` the batch *sum*::

    m = b1 * m + (1 - b1) * diff;  v = b2 * v + (1 - b2) * diff * diff
    a_t = LR * sqrt(1 - b2^t) / (1 - b1^t);  e_t = eps * sqrt(1 - b2^t)
    w += a_t * m / (sqrt(v) + e_t)

Learning-rate policies: :func:`learning_rate` is a pure function of the number of effective updates done before
the current one (N2D2's ``nbIterations``, which stops counting at MaxIterations when that is set). Step,
Exponential, InvT and Cosine decays count *samples* (``updates * I * B // LearningRateStepSize``); Poly and Inv
count updates. Each operation is written unfused (a product, then a sum) in the order of the reference, so a plain
float64 reference reproduces the update bit for bit (``Tensor.add_(x, alpha=a)`` fuses into an FMA on CPU). The
SGD step ``r * diff = r * (-B * g)`` is computed as one product ``(-r * B) * g``, which is the same number when B
is a power of two. The updates run as ``torch._foreach_*`` ops over each group.

Where qatrun differs from N2D2, and why:
  * N2D2 computes ``nbIterations * I * B`` in ``unsigned int`` and wraps after 2^32 samples; qatrun does not
    (3 000 ImageNet epochs would be needed to see it).
  * CosineDecay with MaxIterations == WarmUpDuration computes 0/0 in N2D2, a NaN rate that ``max(0, .)`` turns
    into 0: the solver never updates. :func:`learning_rate` returns 0 there too, but reading such a configuration
    from an INI file is an error, since a run that silently never learns is never what was meant.
  * PolyDecay without MaxIterations divides by zero in N2D2; it is an error in qatrun.
  * A parameter without a gradient (unused in the forward pass) is skipped, as torch's optimizers do; N2D2 would
    still apply momentum and decay to it.
  * ``PolyakMomentum`` is read and ignored, as in N2D2; the ``-find-lr`` global rate is not supported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from qatrun.errors import ConfigError, Location, did_you_mean
from qatrun.ini import Key, Params, Section

SOLVER_TYPES = ("SGD", "Adam")
LR_POLICIES = (
    "None",
    "StepDecay",
    "ExponentialDecay",
    "InvTDecay",
    "PolyDecay",
    "InvDecay",
    "CosineDecay",
)
# Policies whose step is counted in samples (updates * IterationSize * B // LearningRateStepSize).
_SAMPLE_POLICIES = ("StepDecay", "ExponentialDecay", "InvTDecay", "CosineDecay")


@dataclass(frozen=True)
class SolverConfig:
    """One solver's settings (N2D2 ``SGDSolver`` / ``AdamSolver`` parameters, §4.2-4.3).

    Attributes:
        type: ``"SGD"`` or ``"Adam"``.
        learning_rate: base rate (``LearningRate``; by default N2D2's: 0.01 for SGD, 0.001 for Adam).
        momentum: ``Momentum`` (SGD).
        decay: L2 weight decay ``Decay`` (SGD), multiplied by the un-normalised rate.
        policy: ``LearningRatePolicy`` (SGD), one of :data:`LR_POLICIES`.
        step_size: ``LearningRateStepSize``, in samples (SGD).
        lr_decay: ``LearningRateDecay`` (SGD).
        power: ``Power`` of PolyDecay / InvDecay (SGD).
        max_iterations: ``MaxIterations``: updates for PolyDecay, steps for CosineDecay; 0 = unbounded (SGD).
        iteration_size: ``IterationSize``, batches accumulated per update (SGD).
        warm_up_duration: ``WarmUpDuration`` of CosineDecay, in steps (SGD).
        warm_up_lr_frac: ``WarmUpLRFrac``, rate fraction at the start of the warm-up (SGD).
        min_decay: ``MinDecay``, floor of the cosine factor (SGD).
        clamp_min: lower bound of ``Clamping`` (``None``: unbounded).
        clamp_max: upper bound of ``Clamping`` (``None``: unbounded).
        beta1: ``Beta1`` (Adam).
        beta2: ``Beta2`` (Adam).
        epsilon: ``Epsilon`` (Adam).
    """

    type: str = "SGD"
    learning_rate: float = None  # type: ignore[assignment]  # None: the type's default, set below
    momentum: float = 0.0
    decay: float = 0.0
    policy: str = "None"
    step_size: int = 1
    lr_decay: float = 0.1
    power: float = 0.0
    max_iterations: int = 0
    iteration_size: int = 1
    warm_up_duration: int = 0
    warm_up_lr_frac: float = 0.25
    min_decay: float = 0.0
    clamp_min: float | None = None
    clamp_max: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        assert self.type in SOLVER_TYPES, self.type
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", 0.01 if self.type == "SGD" else 0.001)
        assert self.policy in LR_POLICIES, self.policy
        assert self.step_size >= 1 and self.iteration_size >= 1, self
        assert self.type == "SGD" or (self.policy == "None" and self.iteration_size == 1), self

    @classmethod
    def from_params(cls, section: Section, params: Params, role: str) -> SolverConfig:
        """The solver of one parameter role of a layer, read from the INI (see :func:`_read_solver`)."""
        return _read_solver(section, params, role)

    @classmethod
    def from_plan(cls, plan: SolverSource | None) -> SolverConfig:
        """The solver of a quantizer parameter, from the quant package's plain data (see :func:`_solver_from_plan`)."""
        return _solver_from_plan(plan)

    @property
    def clamps(self) -> bool:
        """Whether the parameter is clamped after each update."""
        return self.clamp_min is not None or self.clamp_max is not None


def learning_rate(cfg: SolverConfig, step: int, batch_size: int) -> float:
    """Rate of the update that follows ``step`` effective updates (N2D2 ``Solver::getLearningRate``).

    Args:
        cfg: the solver.
        step: number of effective updates already done (accumulation passes excluded).
        batch_size: nominal batch size B.

    Returns:
        The un-normalised rate; SGD divides it by ``B * IterationSize``. For Adam, ``LearningRate`` itself (its
        bias correction is applied by the update).
    """
    if cfg.learning_rate == 0.0:
        return 0.0
    rate = cfg.learning_rate
    if cfg.type == "Adam" or cfg.policy == "None":
        return rate
    # N2D2's counter stops at MaxIterations (when set): past it every rate stays the last one.
    n = step if cfg.max_iterations == 0 else min(step, cfg.max_iterations)
    if cfg.policy in _SAMPLE_POLICIES:
        sample_step = n * cfg.iteration_size * batch_size // cfg.step_size
        return rate * _sample_factor(cfg, sample_step)
    if cfg.policy == "PolyDecay":
        assert cfg.max_iterations > 0, "PolyDecay needs MaxIterations"
        return rate * (1.0 - n / cfg.max_iterations) ** cfg.power
    assert cfg.policy == "InvDecay", cfg.policy
    return rate * (1.0 + cfg.lr_decay * n) ** (-cfg.power)


def _sample_factor(cfg: SolverConfig, step: int) -> float:
    """Multiplier of the base rate for the policies counted in samples."""
    if cfg.policy == "StepDecay":
        return cfg.lr_decay**step
    if cfg.policy == "ExponentialDecay":
        return math.exp(-cfg.lr_decay * step)
    if cfg.policy == "InvTDecay":
        return 1.0 / (1.0 + cfg.lr_decay * step)
    assert cfg.policy == "CosineDecay", cfg.policy
    if step < cfg.warm_up_duration:
        return (1.0 - cfg.warm_up_lr_frac) * step / cfg.warm_up_duration + cfg.warm_up_lr_frac
    span = cfg.max_iterations - cfg.warm_up_duration
    if span == 0:
        return 0.0  # N2D2: cos(x/0) is NaN and max(0, NaN) is 0
    cosine = 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warm_up_duration) / span))
    return max(0.0, (1.0 - cfg.min_decay) * cosine + cfg.min_decay)


class N2D2Optimizer(torch.optim.Optimizer):
    """N2D2's SGD and Adam updates over parameter groups, one group per solver configuration.

    Each group holds ``params``, ``solver`` (a :class:`SolverConfig`), ``name`` and the counters ``updates``
    (effective updates done) and ``pass`` (accumulation passes since the last update). :meth:`step` is called
    after every backward pass: a group in an accumulation pass keeps its gradients; a group that updates (or
    whose rate is 0) consumes them and sets them to ``None``, so the training loop never calls ``zero_grad``.
    ``lr`` holds the rate of the group's last update, for logging.

    Args:
        groups: dicts with ``params`` and ``solver`` (and optionally ``name``), e.g. from :func:`solver_group`.
        batch_size: the nominal batch size B (the loss is normalised by it; SGD divides the rate by B * I).
    """

    def __init__(self, groups: Iterable[dict[str, Any]], batch_size: int) -> None:
        assert batch_size >= 1, batch_size
        super().__init__(list(groups), {"solver": SolverConfig(), "name": "", "updates": 0, "pass": 0, "lr": 0.0})
        self.batch_size = batch_size

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """Applies one N2D2 update (or accumulation pass) to every group."""
        assert closure is None, "N2D2 solvers take no closure"
        for group in self.param_groups:
            cfg: SolverConfig = group["solver"]
            params = [p for p in group["params"] if p.grad is not None]
            if cfg.type == "SGD" and cfg.learning_rate != 0.0 and group["pass"] < cfg.iteration_size - 1:
                group["pass"] += 1  # accumulation pass: the gradients keep summing
                continue
            group["pass"] = 0
            rate = learning_rate(cfg, group["updates"], self.batch_size)
            group["updates"] += 1
            group["lr"] = rate
            if params and rate != 0.0:
                if cfg.type == "SGD":
                    self._sgd(params, cfg, rate)
                else:
                    self._adam(params, cfg, rate, group["updates"])
                if cfg.clamps:
                    _clamp(params, cfg)
            for p in params:
                p.grad = None

    def _sgd(self, params: list[torch.Tensor], cfg: SolverConfig, rate: float) -> None:
        batch = self.batch_size
        rate_diff = rate / (batch * cfg.iteration_size)
        # rate_diff * diff with diff = -B * g, as one product (exactly N2D2's value when B is a power of two),
        # in place: the gradients are consumed by this update anyway
        steps = [p.grad for p in params]
        torch._foreach_mul_(steps, -rate_diff * batch)
        if cfg.momentum == 0.0 and cfg.decay == 0.0:
            torch._foreach_add_(params, steps)
            return
        velocities = [self._buffer(p, "velocity") for p in params]
        torch._foreach_mul_(velocities, cfg.momentum)
        torch._foreach_add_(velocities, steps)
        if cfg.decay != 0.0:
            torch._foreach_sub_(velocities, torch._foreach_mul(params, cfg.decay * rate))
        torch._foreach_add_(params, velocities)

    def _adam(self, params: list[torch.Tensor], cfg: SolverConfig, rate: float, t: int) -> None:
        diffs = torch._foreach_mul([p.grad for p in params], -float(self.batch_size))  # batch sum of -dL/dw
        means = [self._buffer(p, "exp_avg") for p in params]
        squares = [self._buffer(p, "exp_avg_sq") for p in params]
        torch._foreach_mul_(means, cfg.beta1)
        torch._foreach_add_(means, torch._foreach_mul(diffs, 1.0 - cfg.beta1))
        diff_sq = torch._foreach_mul(diffs, 1.0 - cfg.beta2)
        torch._foreach_mul_(diff_sq, diffs)
        torch._foreach_mul_(squares, cfg.beta2)
        torch._foreach_add_(squares, diff_sq)
        correction = math.sqrt(1.0 - cfg.beta2**t)
        alpha = rate * correction / (1.0 - cfg.beta1**t)
        epsilon = cfg.epsilon * correction
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_add_(denominators, epsilon)
        steps = torch._foreach_mul(means, alpha)
        torch._foreach_div_(steps, denominators)
        torch._foreach_add_(params, steps)

    def _buffer(self, param: torch.Tensor, key: str) -> torch.Tensor:
        state = self.state[param]
        if key not in state:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state[key]

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state without the solver configurations (they come from the INI file)."""
        state = super().state_dict()
        for group in state["param_groups"]:
            group.pop("solver", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores buffers and counters, keeping the current solver configurations."""
        solvers = [group["solver"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, solver in zip(self.param_groups, solvers):
            group["solver"] = solver


def _clamp(params: list[torch.Tensor], cfg: SolverConfig) -> None:
    if cfg.clamp_min is not None:
        torch._foreach_clamp_min_(params, cfg.clamp_min)
    if cfg.clamp_max is not None:
        torch._foreach_clamp_max_(params, cfg.clamp_max)


def group_by_solver(
    pairs: Iterable[tuple[str, torch.nn.Parameter, SolverConfig]],
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`N2D2Optimizer`: one per distinct solver configuration, in first-seen order.

    Parameters sharing a configuration update in lockstep, so one counter per group is N2D2's per-tensor
    counter. A parameter listed twice (shared between cells) is kept once, with its first configuration.

    Args:
        pairs: ``(name, parameter, solver)`` triples; ``name`` labels the group in logs.
    """
    groups: dict[SolverConfig, dict[str, Any]] = {}
    seen: set[int] = set()
    for name, param, cfg in pairs:
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        group = groups.setdefault(cfg, {"params": [], "solver": cfg, "name": name})
        group["params"].append(param)
    return list(groups.values())


# ------------------------------------------------------------------------------------------ reading the INI

_COMMON_KEYS: tuple[tuple[str, Key], ...] = (
    ("clamping", Key("Clamping", "str", "", 'clamp after each update: "min:max", ":max" or "min:"')),
)
SGD_KEYS: tuple[tuple[str, Key], ...] = (
    ("learning_rate", Key("LearningRate", "float", 0.01, "base learning rate")),
    ("momentum", Key("Momentum", "float", 0.0, "momentum (Caffe style: the rate is inside the velocity)")),
    ("decay", Key("Decay", "float", 0.0, "L2 weight decay, multiplied by the un-normalised rate")),
    ("policy", Key("LearningRatePolicy", "enum", "None", "learning-rate schedule", choices=LR_POLICIES)),
    ("step_size", Key("LearningRateStepSize", "int", 1, "schedule step, in samples (Step/Exp/InvT/Cosine)")),
    ("lr_decay", Key("LearningRateDecay", "float", 0.1, "decay factor of the schedule")),
    ("power", Key("Power", "float", 0.0, "exponent of PolyDecay and InvDecay")),
    ("max_iterations", Key("MaxIterations", "int", 0, "PolyDecay: updates; CosineDecay: steps; 0: none")),
    ("iteration_size", Key("IterationSize", "int", 1, "batches accumulated per update")),
    ("warm_up_duration", Key("WarmUpDuration", "int", 0, "CosineDecay warm-up length, in steps")),
    ("warm_up_lr_frac", Key("WarmUpLRFrac", "float", 0.25, "rate fraction at the start of the warm-up")),
    ("min_decay", Key("MinDecay", "float", 0.0, "CosineDecay floor, a fraction of the rate")),
    ("polyak_momentum", Key("PolyakMomentum", "bool", True, "declared by N2D2, unused by its update")),
    *_COMMON_KEYS,
)
ADAM_KEYS: tuple[tuple[str, Key], ...] = (
    ("learning_rate", Key("LearningRate", "float", 0.001, "step size")),
    ("beta1", Key("Beta1", "float", 0.9, "decay of the first-moment estimate")),
    ("beta2", Key("Beta2", "float", 0.999, "decay of the second-moment estimate")),
    ("epsilon", Key("Epsilon", "float", 1e-8, "denominator offset")),
    *_COMMON_KEYS,
)
_KEYS = {"SGD": SGD_KEYS, "Adam": ADAM_KEYS}

# Solver type keys of a layer section, and the roles that read them (reference/n2d2.md §1.4).
SOLVERS = Key("Solvers", "enum", "SGD", "solver of every parameter of the cell", choices=("SGD", "Adam", "ADAM"))
ROLES = ("WeightsSolver", "BiasSolver", "ScaleSolver")
_ROLE_KEYS = {
    role: Key(role, "enum", "SGD", f"solver of the cell's {role[:-6].lower()}", choices=SOLVERS.choices)
    for role in ROLES
}


class SolverSource(Protocol):
    """A quantizer solver as plain data (``qatrun.quant.SolverPlan``): the train package reads it duck-typed."""

    type: str
    settings: Mapping[str, str]
    locations: Mapping[str, Location]
    section: str
    prefix: str


# A raw setting: suffix -> (text, a function building the located error for it).
_Raw = dict[str, tuple[str, Callable[[str], ConfigError]]]


def _from_raw(solver_type: str, raw: _Raw, what: str) -> SolverConfig:
    """Converts raw settings with the key table of the solver type, validating them."""
    keys = dict((key.name, (name, key)) for name, key in _KEYS[solver_type])
    values: dict[str, Any] = {}
    for suffix, (text, error) in raw.items():
        if suffix not in keys:
            raise error(f"unknown {solver_type} solver key{did_you_mean(suffix, keys)}; valid: {', '.join(keys)}")
        name, key = keys[suffix]
        try:
            values[name] = key.convert(text)
        except ValueError as exc:
            raise error(str(exc)) from None
    clamping = values.pop("clamping", "")
    values.pop("polyak_momentum", None)
    if clamping:
        values["clamp_min"], values["clamp_max"] = _parse_clamping(clamping, raw["Clamping"][1])
    _validate(values, raw, what)
    return SolverConfig(type=solver_type, **values)


def _parse_clamping(text: str, error: Callable[[str], ConfigError]) -> tuple[float | None, float | None]:
    low, sep, high = text.partition(":")
    if not sep:
        raise error(f'expected "min:max", ":max" or "min:", found "{text}"')
    try:
        bounds = (float(low) if low.strip() else None, float(high) if high.strip() else None)
    except ValueError:
        raise error(f'expected "min:max", ":max" or "min:" with numbers, found "{text}"') from None
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise error(f"the minimum is above the maximum in \"{text}\"")
    return bounds


def _validate(values: dict[str, Any], raw: _Raw, what: str) -> None:
    def fail(suffix: str, message: str) -> ConfigError:
        if suffix in raw:
            return raw[suffix][1](message)
        return ConfigError(f"{what}: {message}")

    for suffix, name in (("LearningRateStepSize", "step_size"), ("IterationSize", "iteration_size")):
        if values.get(name, 1) < 1:
            raise fail(suffix, f"must be at least 1, found {values[name]}")
    policy = values.get("policy", "None")
    max_iterations = values.get("max_iterations", 0)
    if policy == "PolyDecay" and max_iterations <= 0:
        raise fail("LearningRatePolicy", "PolyDecay needs MaxIterations > 0 (N2D2 divides by it)")
    if policy == "CosineDecay" and max_iterations <= values.get("warm_up_duration", 0):
        raise fail(
            "LearningRatePolicy",
            "CosineDecay needs MaxIterations > WarmUpDuration: N2D2 then computes a NaN rate and never updates",
        )


def _solver_type(reader: Section, key: Key) -> str:
    value = reader.read(key)
    return "Adam" if value == "ADAM" else value


def _collect(raw: _Raw, reader: Section | Params, prefix: str) -> None:
    """Adds ``prefix``-ed settings of a reader (later calls override earlier ones)."""
    for suffix, text in reader.prefixed(prefix).items():
        full = prefix + suffix
        raw[suffix] = (text, lambda message, r=reader, k=full: r.error(k, message))


def _read_solver(section: Section, params: Params, role: str) -> SolverConfig:
    """The solver of one parameter role of a layer (N2D2 ``*CellGenerator::generateParams``, §1.4).

    The type comes from the layer section: ``<role>=`` (e.g. ``WeightsSolver=Adam``), else ``Solvers=``, else
    SGD. Settings are merged in this order, later overriding earlier: the layer section's ``Solvers.X`` (only
    with ``Solvers=`` in it), its ``<role>.X`` (only with ``<role>=``), the ConfigSection's ``Solvers.X``, then
    its ``<role>.X``. Where N2D2 silently ignores a key (``Solvers.X`` in a layer section without ``Solvers=``)
    or fails (a type key in a ConfigSection), qatrun reports a located error.

    Args:
        section: the layer section.
        params: its ConfigSection parameter map (``Document.params(section)``).
        role: ``WeightsSolver`` (Conv/Fc weights), ``BiasSolver`` (biases, BatchNorm beta) or ``ScaleSolver``
            (BatchNorm gamma).

    Raises:
        ConfigError: a misplaced or unknown key, or a bad value.
    """
    assert role in ROLES, role
    role_key = _ROLE_KEYS[role]
    for name in params.keys():
        if name in ("Solvers", *ROLES):
            raise params.error(name, f"{name} (the solver type) is read from the layer section only, not from a "
                                     "ConfigSection (N2D2: Unknown parameter)")
    raw: _Raw = {}
    for key in (SOLVERS, role_key):
        prefix = key.name + "."
        if section.has(key.name):
            _collect(raw, section, prefix)
        else:
            stray = next((k for k in section.keys() if k.startswith(prefix)), None)
            if stray is not None:
                raise section.error(stray, f"N2D2 ignores {prefix}X in a layer section without {key.name}=SGD|Adam "
                                           "in it: add the type, or move the key to the ConfigSection")
    solver_type = _solver_type(section, role_key) if section.has(role) else _solver_type(section, SOLVERS)
    for prefix in ("Solvers.", role + "."):
        _collect(raw, params, prefix)
    return _from_raw(solver_type, raw, f"[{section.name}] {role}")


def _solver_from_plan(plan: SolverSource | None) -> SolverConfig:
    """The solver of a quantizer parameter (SAT alpha, LSQ step size) from the quant package's plain data.

    ``None`` (no ``QActSolver=``) is N2D2's default: SGD, learning rate 0.01, no momentum, no decay.

    Raises:
        ConfigError: an unknown or malformed setting, located where it was written.
    """
    if plan is None:
        return SolverConfig()
    raw: _Raw = {}
    for suffix, text in plan.settings.items():
        location = plan.locations.get(suffix)
        full = plan.prefix + suffix
        raw[suffix] = (text, lambda m, loc=location, k=full: ConfigError(m, loc, plan.section or None, k))
    return _from_raw(plan.type, raw, f"[{plan.section}] {plan.prefix.rstrip('.')}")


def solver_group(params: Iterable[torch.nn.Parameter], plan: SolverSource | None, name: str = "") -> dict[str, Any]:
    """A parameter group for :class:`N2D2Optimizer` from a quantizer solver plan (:meth:`SolverConfig.from_plan`)."""
    return {"params": list(params), "solver": SolverConfig.from_plan(plan), "name": name}
