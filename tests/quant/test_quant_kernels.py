"""The fused quantizer kernels against the eager quantizers.

Two builds of the fused kernels run here: the native C++ ones (the CPU's), which must equal the eager
functions to the bit but for the order of the alpha/step sums, and the ``torch.compile`` graphs (the other
devices'), run on the CPU, whose levels may differ within a float rounding of a tie.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch

from qatrun.errors import RunError
from qatrun.quant import kernels
from qatrun.quant.lsq import LSQFunction, lsq_quantize
from qatrun.quant import sat
from qatrun.quant.sat import SATActivationFunction, sat_activation


@pytest.fixture(params=["native", "graph"])
def compiled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``QATRUN_KERNELS=compiled`` with the native kernels, or with the torch.compile graphs on the CPU."""
    monkeypatch.setenv(kernels.ENV, "compiled")
    monkeypatch.setattr(kernels.KERNELS, "native_on_cpu", request.param == "native")
    return request.param


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
            y = kernels.FusedSATActivation.apply(xi, a, steps)
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
    assert type(sat_activation(x, alpha, 15).grad_fn).__name__ == "FusedSATActivationBackward"
    with torch.no_grad():  # evaluation: the eager function, nothing to compile
        assert sat_activation(x, alpha, 15).grad_fn is None
    assert type(sat_activation(x.detach(), alpha.detach(), 15).grad_fn).__name__ != "FusedSATActivationBackward"


def test_eager_mode_never_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV, "eager")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile called in eager mode"))
    x = torch.linspace(-1, 5, 60).requires_grad_()
    y = sat_activation(x, torch.tensor(4.0, requires_grad=True), 15)
    assert type(y.grad_fn).__name__ == "SATActivationFunctionBackward"


def _failing_compile(*args, **kwargs):
    def run(*a, **k):
        raise RuntimeError("no C++ compiler")

    return run


def _failing_build():
    raise RuntimeError("no C++ compiler")


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "KERNELS", kernels._Kernels())
    monkeypatch.setattr(kernels, "build_native", _failing_build)
    monkeypatch.setattr(torch, "compile", _failing_compile)


@pytest.mark.parametrize("native", [True, False])
def test_auto_mode_falls_back_to_eager_with_one_warning(no_compiler: None, monkeypatch, native: bool) -> None:
    monkeypatch.setenv(kernels.ENV, "auto")
    kernels.KERNELS.native_on_cpu = native
    x = torch.linspace(-1, 5, 60)
    a = torch.tensor(4.0)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        y = kernels.KERNELS.run(kernels.sat_act_forward, x, a, 15)
    assert torch.equal(y, kernels.sat_act_forward(x, a, 15))
    kernels.KERNELS.run(kernels.sat_act_forward, x, a, 15)  # no second warning (pytest would error on none)


def test_compiled_mode_reports_a_failure(no_compiler: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV, "compiled")
    with pytest.raises(RunError, match="QATRUN_KERNELS=compiled: the fused quantizer kernels failed: RuntimeError"):
        kernels.KERNELS.run(kernels.sat_act_forward, torch.ones(3), torch.tensor(1.0), 15)


def test_native_build_name_follows_source_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    name = kernels.native_build_name()
    assert name.startswith("qatrun_native_") and name == kernels.native_build_name()
    monkeypatch.setattr(kernels, "native_cflags", lambda: ["-O0"])
    assert kernels.native_build_name() != name  # other flags, another build (never a stale one)


def test_unknown_mode_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(RunError, match="QATRUN_KERNELS=fast: expected one of auto, compiled, eager"):
        kernels.fused_enabled()


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
    for function in (kernels.FusedLSQ, LSQFunction):
        xi = x.clone().requires_grad_()
        s = torch.tensor(step, dtype=dtype, requires_grad=True)
        y = function.apply(xi, s, qn, qp)
        y.backward(grad)
        results.append((y.detach(), xi.grad, s.grad))
    (y_f, dx_f, ds_f), (y_e, dx_e, ds_e) = results
    s = torch.tensor(step, dtype=dtype)
    v_eager = (x / s).clamp(qn, qp)
    _check_levels(y_f, y_e, v_eager, step, dtype)
    if compiled == "native":
        assert torch.equal(y_f, y_e) and torch.equal(dx_f, dx_e)
    # The mask compares x (1/s) with the ends instead of x / s: equal except within float rounding of an end.
    v_fused = x * (1 / s)
    mask_differs = dx_f != dx_e
    at_end = ((v_eager - qn).abs() <= 4 * torch.finfo(dtype).eps * abs(qn)) | (
        (v_eager - qp).abs() <= 4 * torch.finfo(dtype).eps * qp) | ((v_fused > qn) & (v_fused < qp)) != (
        (v_eager > qn) & (v_eager < qp))
    assert bool((at_end | ~mask_differs).all())
    # The step gradient from its formula on the kernels' v (the graphs' x (1/s), whose ends and ties may fall
    # on the other side of the eager x / s; the native kernels' x / s), summed in float64.
    v = (x / s if compiled == "native" else v_fused).double()
    level = torch.where(v.clamp(qn, qp) >= 0, torch.floor(v.clamp(qn, qp) + 0.5), -torch.floor(-v.clamp(qn, qp) + 0.5))
    local = torch.where(v <= qn, float(qn), torch.where(v >= qp, float(qp), level - v))
    expected = (grad.double() * local).sum() / math.sqrt(x.numel() * qp)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(ds_f.double(), expected, rtol=tolerance, atol=tolerance * float(grad.abs().sum())), (
        ds_f, expected)
    x_req = x.clone().requires_grad_()
    assert type(lsq_quantize(x_req, torch.tensor(step, dtype=dtype), qn, qp).grad_fn).__name__ == "FusedLSQBackward"


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
    for function in (sat.FusedSATWeightFunction, sat.SATWeightFunction):
        wi = w.clone().requires_grad_()
        out, s = function.apply(wi, steps, mode, quantize, n_out, integer)
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
    quantizer = sat.SATWeightQuantizer(sat.SATWeightSpec(range=15, apply_scaling=True), n_out=20)
    w = torch.randn(20, 8, requires_grad=True)
    assert type(quantizer(w).grad_fn).__name__ == "FusedSATWeightFunctionBackward"
    with torch.no_grad():
        assert quantizer(w).grad_fn is None
    assert type(quantizer(w.detach()).grad_fn).__name__ != "FusedSATWeightFunctionBackward"


def test_native_build_removes_a_stale_lock(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = kernels.native_build_name()
    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    built = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: built.append(kwargs["name"]))
    (folder / "lock").write_text("")
    kernels.build_native()  # a fresh lock: left to its owner
    assert (folder / "lock").exists() and built == [name]
    old = time.time() - kernels.STALE_LOCK_SECONDS - 60
    os.utime(folder / "lock", (old, old))
    kernels.build_native()
    assert not (folder / "lock").exists() and built == [name, name]
