"""The fused quantizer kernels against the eager quantizers.

Two builds of the fused kernels run here: the native C++ ones (the CPU's), which must equal the eager
functions to the bit but for the order of the alpha/step sums, and the ``torch.compile`` graphs of the same
definitions (the other devices'), run on the CPU, whose levels may differ within a float rounding of a tie.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
from dataclasses import dataclass, field

import pytest
import torch

from qatrun.errors import RunError
from qatrun.quant import kernels, select_kernels
from qatrun.quant.kernels import EAGER, Kernels
from qatrun.quant.lsq import LSQActivationQuantizer, LSQActSpec, LSQFunction, lsq_quantize
from qatrun.quant import sat
from qatrun.quant.sat import SATActivationFunction, sat_activation

# Each test takes its own kernels value: the native C++ ones, or the torch.compile graphs on the CPU.
FUSED = {"native": Kernels("compiled", "native"), "graph": Kernels("compiled", "compiled")}


@pytest.fixture(params=["native", "graph"])
def compiled(request: pytest.FixtureRequest) -> str:
    """``compiled`` kernels: the native ones, or the torch.compile graphs on the CPU."""
    return request.param


@dataclass(frozen=True)
class Recording(Kernels):
    """Kernels that note the definitions they are asked to compute."""

    calls: list[str] = field(default_factory=list, compare=False)

    def run(self, fn, *args):
        self.calls.append(fn.__name__)
        return super().run(fn, *args)


def _inputs(dtype: torch.dtype, shape: tuple[int, ...], alpha: float, steps: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape) + steps)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * alpha).to(dtype)
    flat = x.view(-1)
    # Values on the edges: below 0, 0, the clip, above it, and exact rounding ties k + 1/2 of R x / a.
    ties = (torch.arange(steps, dtype=torch.float64) + 0.5) * alpha / steps
    special = torch.cat([torch.tensor([-1.0, -0.0, 0.0, alpha, alpha * 2, 1e-30], dtype=torch.float64), ties])
    flat[: special.numel()] = special.to(dtype)[: flat.numel()]
    return x


CASES = [
    (torch.float32, (4, 3, 9, 7), 4.0, 15),
    (torch.float32, (2, 16, 5, 5), 0.37, 255),
    (torch.float64, (3, 5, 6, 6), 2.5, 1),
    (torch.float64, (64, 10), 10.0, 15),
]


def _check_levels(y_fused, y_eager, v_eager, unit, dtype) -> None:
    """The fused levels equal the eager ones except where the eager ``v`` lies within float rounding of a tie;
    the values differ by at most float rounding of ``level * unit``."""
    eps = torch.finfo(dtype).eps
    level_f = torch.round(y_fused.double() / unit)
    level_e = torch.round(y_eager.double() / unit)
    differ = level_f != level_e
    near_tie = ((v_eager.double().abs() % 1) - 0.5).abs() <= 4 * eps * v_eager.double().abs().clamp(min=1)
    assert bool((near_tie | ~differ).all()), v_eager[differ & ~near_tie]
    same = ~differ
    assert torch.allclose(y_fused[same].double(), y_eager[same].double(), rtol=2 * eps, atol=0)


@pytest.mark.parametrize(("dtype", "shape", "alpha", "steps"), CASES)
def test_fused_sat_activation_matches_eager(compiled: str, dtype, shape, alpha, steps) -> None:
    x = _inputs(dtype, shape, alpha, steps)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
    results = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        a = torch.tensor(alpha, dtype=dtype, requires_grad=True)
        if fused:
            y = SATActivationFunction.apply(xi, a, steps, FUSED[compiled])
        else:
            y = SATActivationFunction.apply(xi, a, steps)
        y.backward(grad)
        results.append((y.detach(), xi.grad, a.grad))
    (y_f, dx_f, da_f), (y_e, dx_e, da_e) = results
    a = torch.tensor(alpha, dtype=dtype)
    v_eager = steps * (torch.minimum(x.clamp(min=0), a) / a)
    _check_levels(y_f, y_e, v_eager, alpha / steps, dtype)
    if compiled == "native":
        assert torch.equal(y_f, y_e)
    assert torch.equal(dx_f, dx_e)  # the mask depends on x and alpha only
    # The alpha gradient is one sum over the tensor: the compiled loop sums in another order. Where a tie
    # was rounded the other way, the residue round(Rq)/R - q differs by the level's change / R.
    flips = (torch.round(y_f.double() * steps / alpha) - torch.round(y_e.double() * steps / alpha))
    expected = da_e.double() + (grad.double() * flips).sum() / steps
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(da_f.double(), expected, rtol=tolerance, atol=tolerance * float(grad.abs().sum())), (
        da_f, expected)


def test_training_step_dispatches_to_fused_kernels(compiled: str) -> None:
    x = torch.linspace(-1, 5, 60).reshape(3, 20).requires_grad_()
    alpha = torch.tensor(4.0, requires_grad=True)
    fused = Recording("compiled", FUSED[compiled].backend)
    sat_activation(x, alpha, 15, fused).sum().backward()
    assert fused.calls == ["sat_act_forward", "sat_act_backward"]
    with torch.no_grad():  # evaluation: the eager function, nothing to compile
        assert sat_activation(x, alpha, 15, fused).grad_fn is None
    sat_activation(x.detach(), alpha.detach(), 15, fused)
    assert fused.calls == ["sat_act_forward", "sat_act_backward"]
    assert fused.for_step(x) is fused and fused.for_step(x.detach()) is EAGER


def test_eager_mode_never_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile called in eager mode"))
    x = torch.linspace(-1, 5, 60).requires_grad_()
    y = sat_activation(x, torch.tensor(4.0, requires_grad=True), 15, select_kernels("eager"))
    assert type(y.grad_fn).__name__ == "SATActivationFunctionBackward"
    y.sum().backward()


def _failing_compile(*args, **kwargs):
    def run(*a, **k):
        raise RuntimeError("no C++ compiler")

    return run


def _failing_build():
    raise RuntimeError("no C++ compiler")


def _failing_load(directory=None, *, build=True):
    if build:
        _failing_build()
    return None  # nothing built yet


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "load_native", _failing_load)
    monkeypatch.setattr(torch, "compile", _failing_compile)


@pytest.mark.parametrize("native", [True, False])
def test_auto_mode_falls_back_to_eager_with_one_warning(no_compiler: None, monkeypatch, native: bool) -> None:
    monkeypatch.setenv(kernels.ENV, "auto")
    chosen = select_kernels(device="cpu" if native else "meta")  # meta: stands for a GPU (compiled graphs)
    assert chosen.backend == ("native" if native else "compiled")
    assert chosen.describe() == ("native (CPU C++)" if native else "compiled (torch.compile)")
    x = torch.linspace(-1, 5, 60)
    a = torch.tensor(4.0)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        y = chosen.run(sat.sat_act_forward, x, a, 15)
    assert torch.equal(y, sat.sat_act_forward(x, a, 15))
    chosen.run(sat.sat_act_forward, x, a, 15)  # no second warning (pytest would error on none)
    what = "native kernels" if native else "torch.compile"
    assert chosen.describe() == f"eager ({what} failed: RuntimeError: no C++ compiler)"
    assert copy.deepcopy(chosen) is chosen  # a copied network shares the value, its failure included


def test_compiled_mode_reports_a_failure(no_compiler: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV, "compiled")
    with pytest.raises(RunError, match="QATRUN_KERNELS=compiled: the fused quantizer kernels failed: RuntimeError"):
        select_kernels().run(sat.sat_act_forward, torch.ones(3), torch.tensor(1.0), 15)


def test_native_build_name_follows_source_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    name = kernels.native_build_name()
    assert name.startswith("qatrun_native_") and name == kernels.native_build_name()
    monkeypatch.setattr(kernels, "native_cflags", lambda: ["-O0"])
    assert kernels.native_build_name() != name  # other flags, another build (never a stale one)


def test_unknown_mode_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(RunError, match="QATRUN_KERNELS=fast: expected one of auto, compiled, eager"):
        select_kernels()
    with pytest.raises(RunError, match="kernels=quick: expected one of auto, compiled, eager"):
        select_kernels("quick")


def test_a_pickled_network_keeps_its_kernels_choice() -> None:
    quantizer = LSQActivationQuantizer(LSQActSpec(range=15), kernels=FUSED["native"])
    FUSED["native"].run(sat.sat_act_forward, torch.ones(3), torch.tensor(1.0), 15)  # the library loaded
    copied = pickle.loads(pickle.dumps(quantizer))
    assert copied.kernels == FUSED["native"] and copied.kernels._cache.native is None


def test_the_mode_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV, "compiled")
    chosen = select_kernels(device="meta")
    assert (chosen.mode, chosen.backend, chosen.origin) == ("compiled", "compiled", kernels.ENV)
    quantizer = LSQActivationQuantizer(LSQActSpec(range=15), kernels=chosen)
    monkeypatch.setenv(kernels.ENV, "fast")  # read by nobody from now on
    x = torch.linspace(-1, 5, 60).requires_grad_()
    with torch.no_grad():
        quantizer(x)
    assert quantizer.kernels is chosen
    assert select_kernels("eager", device="meta").describe() == "eager"
    monkeypatch.delenv(kernels.ENV)
    assert select_kernels(device="meta").mode == "auto"


LSQ_CASES = [
    (torch.float32, (4, 3, 9, 7), 0.25, (0, 15)),  # unsigned activations
    (torch.float32, (16, 8, 3, 3), 0.013, (-8, 7)),  # 4-bit weights
    (torch.float64, (5, 40), 0.5, (-128, 127)),
]


@pytest.mark.parametrize(("dtype", "shape", "step", "bounds"), LSQ_CASES)
def test_fused_lsq_matches_eager(compiled: str, dtype, shape, step, bounds) -> None:
    qn, qp = bounds
    g = torch.Generator().manual_seed(len(shape) + qp)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * step * qp / 2).to(dtype)
    flat = x.view(-1)
    # The ends, beyond them, and exact ties (k + 1/2) s.
    special = torch.tensor([qn * step, qp * step, (qn - 3) * step, (qp + 3) * step, 0.0, -0.0, 0.5 * step,
                            -2.5 * step, 3.5 * step], dtype=torch.float64)
    flat[: special.numel()] = special.to(dtype)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for chosen in (FUSED[compiled], EAGER):
        xi = x.clone().requires_grad_()
        s = torch.tensor(step, dtype=dtype, requires_grad=True)
        y = LSQFunction.apply(xi, s, qn, qp, chosen)
        y.backward(grad)
        results.append((y.detach(), xi.grad, s.grad))
    (y_f, dx_f, ds_f), (y_e, dx_e, ds_e) = results
    s = torch.tensor(step, dtype=dtype)
    v_eager = (x / s).clamp(qn, qp)
    _check_levels(y_f, y_e, v_eager, step, dtype)
    if compiled == "native":
        assert torch.equal(y_f, y_e) and torch.equal(dx_f, dx_e)
    # A compiler may compare x (1/s) with the ends instead of x / s: equal except within float rounding of an end.
    v_fused = x * (1 / s)
    mask_differs = dx_f != dx_e
    at_end = ((v_eager - qn).abs() <= 4 * torch.finfo(dtype).eps * abs(qn)) | (
        (v_eager - qp).abs() <= 4 * torch.finfo(dtype).eps * qp) | ((v_fused > qn) & (v_fused < qp)) != (
        (v_eager > qn) & (v_eager < qp))
    assert bool((at_end | ~mask_differs).all())
    # The step gradient from its formula on the kernels' v, summed in float64: both compute the definition's
    # x / s (a compiler that turned it into x (1/s) could put ends and ties on the other side).
    v = (x / s).double()
    level = torch.where(v.clamp(qn, qp) >= 0, torch.floor(v.clamp(qn, qp) + 0.5), -torch.floor(-v.clamp(qn, qp) + 0.5))
    local = torch.where(v <= qn, float(qn), torch.where(v >= qp, float(qp), level - v))
    expected = (grad.double() * local).sum() / math.sqrt(x.numel() * qp)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(ds_f.double(), expected, rtol=tolerance, atol=tolerance * float(grad.abs().sum())), (
        ds_f, expected)
    x_req = x.clone().requires_grad_()
    fused = Recording("compiled", FUSED[compiled].backend)
    lsq_quantize(x_req, torch.tensor(step, dtype=dtype), qn, qp, fused).sum().backward()
    assert fused.calls == ["lsq_forward", "lsq_backward"]


SAT_WEIGHT_CASES = [
    (mode, quantize, n_out, integer)
    for mode in ("Default", "Symmetric", "Asymmetric", "FullRange")
    for quantize in (True, False)
    for n_out in (None, 400)
    for integer in ((False, True) if quantize else (False,))
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("mode", "quantize", "n_out", "integer"), SAT_WEIGHT_CASES)
def test_fused_sat_weight_matches_eager(compiled: str, dtype, mode, quantize, n_out, integer) -> None:
    steps = 15
    g = torch.Generator().manual_seed(7)
    w = (torch.randn((16, 6, 5, 5), generator=g, dtype=torch.float64) * 0.3).to(dtype)
    grad = torch.randn(w.shape, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for chosen in (FUSED[compiled], EAGER):
        wi = w.clone().requires_grad_()
        out, s = sat.SATWeightFunction.apply(wi, steps, mode, quantize, n_out, integer, chosen)
        out.backward(grad)
        results.append((out.detach(), s, wi.grad))
    (out_f, s_f, grad_f), (out_e, s_e, grad_e) = results
    if compiled == "native":  # the same operations in the same order: the same bits
        assert torch.equal(out_f, out_e) and torch.equal(s_f, s_e) and torch.equal(grad_f, grad_e)
    eps = torch.finfo(dtype).eps
    rtol = 64 * eps  # S: a sum over 2,400 weights in another order
    assert torch.allclose(s_f, s_e, rtol=rtol, atol=0), (s_f, s_e)
    if quantize:
        # The levels: equal except where the eager value before rounding lies within float rounding of a tie.
        # The numerators n (Wq = n / D), from either output, and the value the levels round.
        denom = sat.sat_denominator(steps, mode)
        n_f, n_e = ((out if integer else (out * s * denom).round()) for out, s in ((out_f, s_f), (out_e, s_e)))
        t = (torch.tanh(w) / torch.tanh(w).abs().max()).double()
        half, u = steps // 2, 0.5 * (t + 1)
        before = {"Default": steps * u, "FullRange": steps * ((1 + 0.9998 / steps) * u - 0.4999 / steps),
                  "Symmetric": half * t, "Asymmetric": half * ((1 + 1 / (2 * half)) * t - 1 / (2 * half))}[mode]
        differ = n_f != n_e
        near_tie = ((before.double().abs() % 1) - 0.5).abs() <= 8 * eps * before.double().abs().clamp(min=1)
        assert bool((near_tie | ~differ).all()), before[differ & ~near_tie]
        same = ~differ
        assert torch.allclose(out_f[same], out_e[same], rtol=rtol, atol=rtol)
    else:
        assert torch.allclose(out_f, out_e, rtol=rtol, atol=rtol)
    assert torch.allclose(grad_f, grad_e, rtol=rtol, atol=0)


def test_training_step_dispatches_weights_to_fused_kernels(compiled: str) -> None:
    fused = Recording("compiled", FUSED[compiled].backend)
    quantizer = sat.SATWeightQuantizer(sat.SATWeightSpec(range=15, apply_scaling=True), n_out=20, kernels=fused)
    w = torch.randn(20, 8, requires_grad=True)
    quantizer(w).sum().backward()
    assert fused.calls == ["sat_weight_forward", "sat_weight_backward"]
    with torch.no_grad():
        assert quantizer(w).grad_fn is None
    quantizer(w.detach())
    assert fused.calls == ["sat_weight_forward", "sat_weight_backward"]


def test_compiling_leaves_dynamo_settings_alone() -> None:
    before = torch._dynamo.config.recompile_limit
    x = torch.linspace(-1, 5, 60).requires_grad_()
    for steps in (3, 7, 15):
        sat_activation(x, torch.tensor(4.0, requires_grad=True), steps, FUSED["graph"]).sum().backward()
    assert torch._dynamo.config.recompile_limit == before


def test_native_build_removes_a_stale_lock(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from torch.utils import cpp_extension

    name = kernels.native_build_name()
    built = []
    path = os.environ.get("PATH")

    def load(**kwargs):
        built.append((kwargs["name"], kwargs["build_directory"]))
        return None

    monkeypatch.setattr(cpp_extension, "load", load)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "lock").write_text("")
    kernels.build_native(tmp_path)  # a fresh lock: left to its owner
    assert (tmp_path / "lock").exists() and built == [(name, str(tmp_path))]
    old = time.time() - kernels.STALE_LOCK_SECONDS - 60
    os.utime(tmp_path / "lock", (old, old))
    kernels.build_native(tmp_path)
    assert not (tmp_path / "lock").exists() and len(built) == 2
    assert os.environ.get("PATH") == path  # ninja's folder is on the PATH during a build only


def test_a_built_library_is_imported_without_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    FUSED["native"].run(sat.sat_act_forward, torch.ones(3), torch.tensor(1.0), 15)  # built by now
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: pytest.fail("compiled at run time"))
    chosen = select_kernels("auto")
    assert chosen.describe() == "native (CPU C++)" and chosen._cache.native is not None
    assert kernels.native_directory().name == kernels.native_build_name()


def test_the_build_command_reports_a_failure_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(kernels, "native_directory", lambda: tmp_path)
    monkeypatch.setattr(kernels, "build_native", lambda directory: _failing_build())
    assert kernels.main(["--build-kernels"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "... failed (RuntimeError: no C++ compiler); training on the CPU" in err
    assert kernels.main(["--kernels-dir"]) == 0
    assert capsys.readouterr().out == f"{tmp_path}\n"
