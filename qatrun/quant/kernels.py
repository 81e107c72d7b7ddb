"""Fused kernels for the quantizers' training step: native C++ on the CPU, ``torch.compile`` elsewhere.

Why. A QAT step calls every quantizer once forward and once backward per layer. Written as PyTorch
operations, SAT's activation forward and backward (LSQ's alike) are a dozen passes over memory (clip,
divide, scale, floor, compare, add, multiply; two compares, the gradient mask, the residue, the alpha
product and its sum), each with its own temporary: 17 ms for a 128x16x32x32 tensor on two CPU cores, where
the ReLU it replaces takes 1.1 ms forward and backward. The SAT weight quantizer is another 17 small
operations per layer; inside a training step, right after the convolutions have filled the caches with
activations, each such operation costs five to ten times its standalone time (LeNet's five weight
quantizers: 1.7 ms of a 9 ms step). One call per quantizer and direction is the cure, and the call itself
must be cheap: a ``torch.compile`` call costs 20 us standalone and 50-150 us inside the step (guards and
Python wrappers, all cold), which left LeNet's QAT step at 1.28 float steps.

On the CPU. ``native.cpp``, built once per machine with ``torch.utils.cpp_extension`` (about 30 s, cached
under ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``): one OpenMP loop per direction, the
SAT weight forward two passes around its max. The C++ computes the eager quantizers' arithmetic operation
for operation in the tensor's dtype (tanh and cosh from ATen itself, the SAT scale from sequential sums as
N2D2), so every value equals the eager function's to the bit; only the alpha and step gradients, one sum
over the tensor, are added in another order (in double). ``tests/quant/test_quant_kernels.py`` checks both.

On other devices (CUDA). The same formulas as plain tensor functions compiled by ``torch.compile``
(Inductor; Triton on CUDA), with the divisions replaced by multiplications with reciprocals: there the level
may differ from the eager one where the value before rounding lies within a float rounding of a tie.

The backward recomputes the levels from ``x`` instead of saving them: two fewer activation-sized tensors
per quantizer kept between forward and backward.

When. Only the training step uses the fused kernels (input that requires a gradient): evaluation, test,
fusion and export run the eager functions, which compute N2D2's own float order. ``QATRUN_KERNELS``:

* ``auto`` (default): fused where they build, eager otherwise. A failure (no C++ compiler, no Triton) is
  reported once as a warning and the process goes on eager;
* ``compiled``: fused, a build failure is an error;
* ``eager``: never built (the unit tests' setting, where a build costs more than it saves).
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from qatrun.errors import RunError
from qatrun.quant.rounding import round_half_away

MODES = ("auto", "compiled", "eager")
ENV = "QATRUN_KERNELS"
RECOMPILE_LIMIT = 256


# --------------------------------------------------------------------------------------------------
# The math, as plain tensor functions (what gets compiled)


def sat_act_forward(x: Tensor, alpha: Tensor, steps: int) -> Tensor:
    """SAT activation ``y = round(R (clip(x, 0, a) (1/a))) (a/R)``, ``a = |alpha|`` (the backward's levels,
    operation for operation)."""
    a = alpha.abs()
    level = round_half_away((torch.minimum(x.clamp(min=0), a) * (1 / a)) * steps)
    return level * (a / steps)


def sat_act_backward(x: Tensor, alpha: Tensor, grad: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """SAT activation gradients ``(dx, dalpha)`` from the input ``x`` and the output gradient."""
    a = alpha.abs()
    q = torch.minimum(x.clamp(min=0), a) * (1 / a)
    level = round_half_away(q * steps)
    grad_x = torch.where(torch.logical_and(x > 0, x <= a), grad, 0.0)
    local = torch.where(x >= a, 1.0, level * (1.0 / steps) - q)
    return grad_x, (grad * local).sum()


def lsq_forward(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """LSQ ``y = s round(clamp(x (1/s), Qn, Qp))``."""
    return step * round_half_away((x * (1 / step)).clamp(qn, qp))


def lsq_backward(x: Tensor, step: Tensor, grad: Tensor, qn: int, qp: int) -> tuple[Tensor, Tensor]:
    """LSQ gradients ``(dx, sum g dy/ds)`` (the step gradient before LSQ's gradient scale)."""
    v = x * (1 / step)
    level = round_half_away(v.clamp(qn, qp))
    grad_x = torch.where(torch.logical_and(v > qn, v < qp), grad, 0.0)
    local = torch.where(v <= qn, float(qn), torch.where(v >= qp, float(qp), level - v))
    return grad_x, (grad * local).sum()


# --------------------------------------------------------------------------------------------------
# Choosing and compiling


NATIVE_SOURCE = Path(__file__).with_name("native.cpp")
STALE_LOCK_SECONDS = 600
# The vector instructions of torch's own CPU kernels (ATen's Vectorized<T> picks them by these macros, as
# Inductor's generated code does).
NATIVE_ISA = {
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}


def native_cflags() -> list[str]:
    """The compiler flags: no fused multiply-add may change a rounding (``-ffp-contract=off``), OpenMP for
    ATen's parallel loops, and the vector ISA torch runs its kernels with on this CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    return ["-O3", "-ffp-contract=off", "-fopenmp", *NATIVE_ISA.get(capability, [])]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def native_build_name() -> str:
    """The extension's name: its source, the flags, torch's version and the CPU, hashed."""
    key = "\n".join([NATIVE_SOURCE.read_text(), " ".join(native_cflags()), torch.__version__, platform.machine(),
                     _cpu_flags()])
    return "qatrun_native_" + hashlib.sha1(key.encode()).hexdigest()[:16]


def build_native() -> ModuleType:
    """Builds (or loads the cached build of) ``native.cpp``; raises what the build raised."""
    from torch.utils import cpp_extension

    name = native_build_name()
    # The build runs ninja: the one pip installed beside this Python when none is on the PATH.
    here = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and shutil.which("ninja", path=here):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    # A build interrupted (Ctrl-C, a killed job) leaves torch's lock file behind, and the next build would
    # wait for it forever: a lock older than any build is stale.
    lock = folder / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
        lock.unlink(missing_ok=True)
    if not any(folder.glob(f"{name}*.so")):
        print("qatrun: building the native quantizer kernels (once per machine, about 30 s)", file=sys.stderr,
              flush=True)
    return cpp_extension.load(name=name, sources=[str(NATIVE_SOURCE)], extra_cflags=native_cflags(),
                              extra_ldflags=["-fopenmp"], verbose=False)


class _Kernels:
    """The fused versions of the kernels, built on first use; eager after a failure in ``auto`` mode."""

    def __init__(self) -> None:
        self._native: ModuleType | None = None
        self.native_on_cpu = True  # False: torch.compile on the CPU too (the tests of the CUDA formulas)
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._failed = False

    def mode(self) -> str:
        value = os.environ.get(ENV, "auto").strip() or "auto"
        if value not in MODES:
            raise RunError(f"{ENV}={value}: expected one of {', '.join(MODES)}")
        return value

    def _fused(self, fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
        if device.type == "cpu" and self.native_on_cpu:
            if self._native is None:
                self._native = build_native()
            return getattr(self._native, fn.__name__)
        compiled = self._compiled.get(fn.__name__)
        if compiled is None:
            # One specialisation per dtype and per constant argument (Range, QuantMode...): a network has a
            # few, a process that trains several networks (the tests) more than dynamo's default of 8.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            compiled = self._compiled[fn.__name__] = torch.compile(fn, dynamic=True, fullgraph=True)
        return compiled

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the fused kernel of ``fn`` (by name) unless the mode is ``eager`` or the build
        failed in ``auto``. The first argument is the tensor whose device decides."""
        mode = self.mode()
        if mode == "eager" or (self._failed and mode == "auto"):
            return fn(*args)
        try:
            return self._fused(fn, args[0].device)(*args)
        except Exception as error:  # noqa: BLE001 - any build failure (no C++ compiler, no Triton)
            if mode == "compiled":
                raise RunError(f"{ENV}=compiled: the fused quantizer kernels failed: {type(error).__name__}: "
                               f"{error}") from error
            self._failed = True
            warnings.warn(
                f"qatrun: fused quantizer kernels unavailable ({type(error).__name__}: {error}); running the "
                f"eager kernels (set {ENV}=eager to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args)


KERNELS = _Kernels()


def fused_enabled() -> bool:
    """True unless ``QATRUN_KERNELS=eager`` (the training step then tries the compiled kernels)."""
    return KERNELS.mode() != "eager"


class FusedSATActivation(torch.autograd.Function):
    """``apply(x, alpha, steps) -> y``: :class:`qatrun.quant.sat.SATActivationFunction` on fused kernels.

    Saves only ``x`` and ``alpha`` for the backward, which recomputes the levels. The scalars (``|alpha|``,
    its reciprocal) are computed inside the compiled functions: each eager operation on a 0-dim tensor costs
    about as much as a kernel on a small activation.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, steps: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        ctx.steps = steps
        return KERNELS.run(sat_act_forward, x, alpha, steps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        grad_x, grad_alpha = KERNELS.run(sat_act_backward, x, alpha, grad.contiguous(), ctx.steps)
        return grad_x, grad_alpha, None


class FusedLSQ(torch.autograd.Function):
    """``apply(x, step, qn, qp) -> y``: :class:`qatrun.quant.lsq.LSQFunction` on fused kernels."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, step)
        ctx.bounds = (qn, qp)
        return KERNELS.run(lsq_forward, x, step, qn, qp)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, step = ctx.saved_tensors
        qn, qp = ctx.bounds
        grad_x, total = KERNELS.run(lsq_backward, x, step, grad.contiguous(), qn, qp)
        return grad_x, (total * (1 / math.sqrt(x.numel() * qp))).reshape(step.shape), None, None
