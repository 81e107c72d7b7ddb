"""The quantizers' training-step kernels: which implementation of each formula runs, chosen once per run.

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

One definition. Each formula is defined once, by a plain tensor function of :mod:`qatrun.quant.sat` or
:mod:`qatrun.quant.lsq` (``sat_act_forward``, ``sat_act_backward``, ``lsq_forward``, ``lsq_backward``,
``sat_weight_forward``, ``sat_weight_backward``). The quantizers' autograd functions call
:meth:`Kernels.run` with that function, and the run's :class:`Kernels` value decides what computes it:

* ``eager``: the function itself;
* ``native`` (CPU tensors): the function of the same name in ``native.cpp``, one OpenMP loop per direction
  (the SAT weight forward: two passes around its max). The C++ restates the Python arithmetic operation for
  operation in the tensor's dtype (tanh and cosh from ATen itself, the SAT scale from sequential sums as
  N2D2), so every value equals the definition's to the bit; only the alpha and step gradients, one sum over
  the tensor, are added in another order (in double). ``tests/quant/test_quant_kernels.py`` checks both;
* ``compiled`` (other devices, CUDA): the function itself compiled by ``torch.compile`` (Inductor; Triton on
  CUDA), with ``dynamic=True`` and a recompile limit of its own (:data:`RECOMPILE_LIMIT`). The generated
  code may round an operation differently (a division as a product with the reciprocal, a fused
  multiply-add), so a level may differ from the eager one where the value before rounding lies within a
  float rounding of a tie; the tests bound that, compiling the definitions on the CPU.

The backward recomputes the levels from ``x`` instead of saving them: two fewer activation-sized tensors
per quantizer kept between forward and backward.

When. Only the training step uses the fused kernels (input that requires a gradient,
:meth:`Kernels.for_step`): evaluation, test, fusion and export run the definitions as they are, N2D2's own
float order. The mode (``QATRUN_KERNELS``, or the caller's ``mode``) is read once, by
:func:`select_kernels`, and the value it returns goes to ``quant.prepare`` and from there to every
quantizer module:

* ``auto`` (default): fused where they build, eager otherwise. A failure (no C++ compiler, no Triton) is
  reported once as a warning and the run goes on eager;
* ``compiled``: fused, a build failure is an error;
* ``eager``: never built (the unit tests' setting, where a build costs more than it saves).

Where the native kernels live. ``python -m qatrun.quant --build-kernels`` (run by ``scripts/bootstrap``
once it has installed qatrun) builds them with ``torch.utils.cpp_extension`` (about 40 s) into
:func:`native_directory`: ``<sys.prefix>/share/qatrun/native/<name>``, inside the virtual environment (or
``~/.cache/qatrun/native/<name>`` where the prefix is not writable), ``<name>`` a hash of the source, the
compiler flags, torch's version and the CPU. A run imports the library from there, without a compiler; an
installation that was never built (plain ``pip install``) builds it at the first training step, as a
message says.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from qatrun.errors import RunError
from qatrun.options import KERNEL_MODES

ENV = "QATRUN_KERNELS"
BACKENDS = ("native", "compiled", "eager")
# One specialisation per dtype and per constant argument (Range, QuantMode...): a network has a few, a
# process that trains several networks (the tests) more than dynamo's default of 8. Given to each
# torch.compile call, not set in dynamo's global configuration.
RECOMPILE_LIMIT = 256
LABELS = {"native": "native (CPU C++)", "compiled": "compiled (torch.compile)", "eager": "eager"}


# --------------------------------------------------------------------------------------------------
# The value a run carries


@dataclass
class _Cache:
    """What a :class:`Kernels` value loads and learns while it runs."""

    native: ModuleType | None = None
    compiled: dict[Callable[..., Any], Callable[..., Any]] = field(default_factory=dict)
    failure: str | None = None  # auto mode: why the run went back to the eager functions


@dataclass(frozen=True)
class Kernels:
    """The training-step kernels of one run, held by every quantizer module (see the module's notes).

    Made by :func:`select_kernels`. Its fields never change; what it loads (the native library), compiles
    and, in ``auto`` mode, a failure that sent it back to the eager functions are kept in a cache of its
    own, which copies of a network (``copy.deepcopy``) share with it.

    Attributes:
        mode: ``auto``, ``compiled`` or ``eager``, as asked for.
        backend: ``native`` (native.cpp for CPU tensors, the compiled definitions for others),
            ``compiled`` (the compiled definitions for every tensor) or ``eager``.
        origin: where the mode came from (``QATRUN_KERNELS``, ``kernels``), for messages.
    """

    mode: str = "eager"
    backend: str = "eager"
    origin: str = "kernels"
    _cache: _Cache = field(default_factory=_Cache, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert self.mode in KERNEL_MODES and self.backend in BACKENDS, (self.mode, self.backend)
        assert (self.mode == "eager") == (self.backend == "eager"), (self.mode, self.backend)

    def __deepcopy__(self, memo: dict[int, object]) -> Kernels:
        return self  # a value: a copied network runs the same kernels

    def __reduce__(self) -> tuple[type[Kernels], tuple[str, str, str]]:
        # A pickled network (torch.save of the module) carries the choice, not the loaded library.
        return Kernels, (self.mode, self.backend, self.origin)

    def describe(self) -> str:
        """What runs, for the run's record: ``native (CPU C++)``, ``compiled (torch.compile)``, ``eager`` or,
        after a failure in ``auto`` mode, ``eager (native kernels failed: ...)``."""
        if self._cache.failure is not None:
            return f"eager ({self._cache.failure})"
        return LABELS[self.backend]

    def for_step(self, *tensors: Tensor) -> Kernels:
        """These kernels where autograd records a training step through one of ``tensors``, else the eager
        ones (evaluation, test, fusion and export compute the definitions' own float order)."""
        if self.backend != "eager" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return self
        return EAGER

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` computed by these kernels.

        Args:
            fn: the definition of a formula (a tensor function of ``sat.py`` or ``lsq.py``); its native
                counterpart has the same name.
            args: its arguments; the first is the tensor whose device decides native or compiled.

        Raises:
            RunError: in ``compiled`` mode, the fused kernels failed to build or to run.
        """
        if self.backend == "eager" or self._cache.failure is not None:
            return fn(*args)
        native = self.backend == "native" and args[0].device.type == "cpu"
        try:
            fused = getattr(self._native(), fn.__name__) if native else self._compiled(fn)
            return fused(*args)
        except Exception as error:  # noqa: BLE001 - any build failure (no C++ compiler, no Triton)
            self._fall_back("native kernels" if native else "torch.compile", error)
            return fn(*args)

    def _load_built(self) -> None:
        """Imports the native library now where it is built (the run then knows what it runs); a missing
        build is left to the first training step."""
        if self.backend != "native":
            return
        try:
            self._cache.native = load_native(build=False)
        except Exception as error:  # noqa: BLE001 - a library that does not load (another torch ABI)
            self._fall_back("native kernels", error)

    def _native(self) -> ModuleType:
        if self._cache.native is None:
            self._cache.native = load_native()
        assert self._cache.native is not None
        return self._cache.native

    def _compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        compiled = self._cache.compiled.get(fn)
        if compiled is None:
            compiled = torch.compile(  # type: ignore[call-overload]  # torch 2.13's overloads omit recompile_limit
                fn, dynamic=True, fullgraph=True, recompile_limit=RECOMPILE_LIMIT
            )
            self._cache.compiled[fn] = compiled
        return compiled

    def _fall_back(self, what: str, error: Exception) -> None:
        """``compiled`` mode: the error as a RunError; ``auto``: one warning, and eager from now on."""
        reason = f"{what} failed: {type(error).__name__}: {_first_line(error)}"
        if self.mode == "compiled":
            raise RunError(f"{self.origin}=compiled: the fused quantizer kernels failed: {type(error).__name__}: "
                           f"{error}") from error
        self._cache.failure = reason
        warnings.warn(
            f"qatrun: fused quantizer kernels unavailable ({reason}); running the eager kernels (set {ENV}=eager "
            f"to skip the attempt; python -m qatrun.quant --build-kernels shows the build)",
            RuntimeWarning,
            stacklevel=3,
        )


EAGER = Kernels()
"""The eager kernels: the definitions as they are (what a quantizer built without kernels runs)."""


def select_kernels(mode: str | None = None, device: torch.device | str = "cpu") -> Kernels:
    """The training-step kernels of one run, decided once.

    Args:
        mode: ``auto``, ``compiled`` or ``eager`` (:data:`qatrun.options.KERNEL_MODES`); None reads
            ``QATRUN_KERNELS`` (unset or empty: ``auto``).
        device: the device the run trains on: on the CPU the fused kernels are native.cpp's (imported now
            where they are built), elsewhere the definitions compiled by ``torch.compile``.

    Returns:
        The value to give ``quant.prepare`` (``kernels=``); ``describe()`` names it for the run's record.

    Raises:
        RunError: an unknown mode, naming where it came from and the valid ones; in ``compiled`` mode, a
            native build that does not import.
    """
    origin = ENV if mode is None else "kernels"
    if mode is None:
        mode = os.environ.get(ENV, "").strip() or "auto"
    if mode not in KERNEL_MODES:
        raise RunError(f"{origin}={mode}: expected one of {', '.join(KERNEL_MODES)}")
    if mode == "eager":
        return Kernels("eager", "eager", origin)
    kernels = Kernels(mode, "native" if torch.device(device).type == "cpu" else "compiled", origin)
    kernels._load_built()
    return kernels


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


# --------------------------------------------------------------------------------------------------
# The native library: its name, its folder, building and importing it


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


def _writable(path: Path) -> bool:
    """Whether ``path`` can be created: its nearest existing ancestor is writable."""
    for folder in (path, *path.parents):
        if folder.exists():
            return os.access(folder, os.W_OK)
    return False


def native_directory() -> Path:
    """This installation's folder of the native build: ``<sys.prefix>/share/qatrun/native/<name>`` (the
    virtual environment's), or ``~/.cache/qatrun/native/<name>`` where the prefix is not writable."""
    name = native_build_name()
    installed = Path(sys.prefix) / "share" / "qatrun" / "native" / name
    if installed.is_dir() or _writable(installed):
        return installed
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "qatrun" / "native" / name


def _library(directory: Path) -> Path:
    return directory / f"{native_build_name()}.so"  # the file name cpp_extension gives the build on Linux


def import_native(library: Path) -> ModuleType:
    """Imports a built library (a Python extension module named after its file)."""
    name = library.stem
    loader = importlib.machinery.ExtensionFileLoader(name, str(library))
    spec = importlib.util.spec_from_file_location(name, library, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """The build runs ``ninja`` from the PATH: when the PATH has none, the one pip installed beside this
    Python is put first for the duration of the build, and the PATH restored after it."""
    here = str(Path(sys.executable).parent)
    saved = os.environ.get("PATH")
    if shutil.which("ninja") is None and shutil.which("ninja", path=here):
        os.environ["PATH"] = here + os.pathsep + (saved or "")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


def build_native(directory: Path) -> ModuleType:
    """Builds ``native.cpp`` into ``directory`` (ninja does nothing where it is up to date) and imports it;
    raises what the build raised."""
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    # A build interrupted (Ctrl-C, a killed job) leaves torch's lock file behind, and the next build would
    # wait for it forever: a lock older than any build is stale.
    lock = directory / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
        lock.unlink(missing_ok=True)
    with _ninja_on_path():
        return cpp_extension.load(name=native_build_name(), sources=[str(NATIVE_SOURCE)],
                                  extra_cflags=native_cflags(), extra_ldflags=["-fopenmp"],
                                  build_directory=str(directory), verbose=False)


def load_native(directory: Path | None = None, *, build: bool = True) -> ModuleType | None:
    """The native kernels, imported from ``directory`` (default :func:`native_directory`) where built there.

    Args:
        directory: the build folder.
        build: build a missing library first (with a message: about 40 s); False returns None instead.

    Raises:
        Exception: whatever the build or the import raised.
    """
    directory = native_directory() if directory is None else directory
    library = _library(directory)
    if library.is_file():
        return import_native(library)
    if not build:
        return None
    print(f"qatrun: building the native quantizer kernels into {directory} (once per installation, about 40 s)",
          file=sys.stderr, flush=True)
    return build_native(directory)


def main(argv: list[str] | None = None) -> int:
    """``python -m qatrun.quant``: builds the native kernels into this installation, or names their folder.

    Returns:
        0, or 1 where the build failed; one line on stderr either way (a run then falls back to eager).
    """
    parser = argparse.ArgumentParser(prog="python -m qatrun.quant",
                                     description="qatrun's native quantizer kernels (qatrun/quant/native.cpp)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--build-kernels", action="store_true",
                       help="build them into this installation (scripts/bootstrap runs this once)")
    group.add_argument("--kernels-dir", action="store_true", help="print the folder of their build")
    args = parser.parse_args(argv)
    directory = native_directory()
    if args.kernels_dir:
        print(directory)
        return 0
    if _library(directory).is_file():
        print(f"qatrun: the native quantizer kernels are built in {directory}", file=sys.stderr)
        return 0
    print(f"qatrun: building the native quantizer kernels into {directory} (about 40 s) ... ", end="",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        build_native(directory)
    except Exception as error:  # noqa: BLE001 - reported in one line: training falls back to eager
        print(f"failed ({type(error).__name__}: {_first_line(error)}); training on the CPU will run the eager "
              f"quantizers ({ENV}=auto)", file=sys.stderr)
        return 1
    print(f"done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0
