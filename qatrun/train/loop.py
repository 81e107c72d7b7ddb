"""The learn / validate / test loops of N2D2's ``-learn-epoch``, ``-learn`` and ``-test`` (reference/n2d2.md §7-8).

Plain functions over an explicit :class:`Progress` (step, epoch, batch within the epoch, best score). One step:
forward, loss, backward, N2D2 solver update (:class:`~qatrun.train.solver.N2D2Optimizer`, which consumes the
gradients it applies). The loss is the per-sample loss *summed* over the batch and divided by the nominal batch
size B, which is N2D2's normalisation (its diffs are batch sums, its SGD rate is divided by B):

* ``"ce"`` (Softmax ``WithLoss=1``): cross-entropy of the logits;
* ``"mse"`` (other targets): ``0.5 * sum((y - t)^2) / B`` with t = TargetValue at the label, DefaultValue
  elsewhere, whose gradient is N2D2's ``diff = t - y``.

Validation every ``-log-epoch`` epochs (or ``-log`` stimuli with ``-learn``) on the Validation partition selects
the best weights by ``-valid-metric`` into ``weights_validation/``; without a Validation partition the weights
go to ``weights/`` at each log point. ``-stop-valid N`` stops after N validations in a row without
improvement (N2D2 only leaves an inner loop there and keeps learning; qatrun stops). After learning, the best
weights are reloaded (and tested).

A loss that is not finite (``nan``, ``inf``: a learning rate too large) stops learning with a :class:`Diverged`
error naming the epoch and the step. The losses are checked every few steps (one host synchronisation) and
always before anything is written (a log point, the end of an epoch, an interrupt), so the weights folders
on disk keep the last weights saved before the bad step and ``nan`` is never taken for a best score.

Interrupts: SIGINT / SIGTERM set a flag that is checked between steps; the full state (model, solver buffers
and counters, progress, RNG states, seed) is then saved to ``net_state/`` with the sha256 of ``state.pt`` in
``state.pt.sha256``, and :class:`Interrupted` is raised. A resume refuses a damaged state (the checksum) and
a state of another network (the first tensor whose name or shape differs); :func:`state_seed` gives the seed a
resume must run with.
``learn(..., resume=dir)`` continues from it: the batches already done in the interrupted epoch are skipped, so
an interrupted and resumed run is bit-for-bit the uninterrupted one on CPU. This needs loaders whose order is a
function of (seed, epoch) only, not of torch's global random state.

Distributed (``torch.distributed`` initialised, e.g. by torchrun): the model is broadcast from rank 0, each
rank reads its shard in batches of B / world (``provider.loader(..., B // world, rank, world)``), gradients are
summed over ranks (the loss is normalised by the global nominal batch B) and BatchNorm running statistics
averaged after each step (one message), confusion matrices are summed, and only rank 0 prints and writes files
(an interrupted state keeps the random state of every rank).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qatrun.errors import ConfigError, RunError
from qatrun.train.metrics import METRICS, Metrics, confusion_update, percent, write_confusion
from qatrun.train.weights import Entry, atomic_folder, export_folder, import_folder, non_finite_index

LOSSES = ("ce", "mse")
STATE_FILE = "state.pt"
CHECKSUM_FILE = STATE_FILE + ".sha256"
STATE_FORMAT = 1
_DIST_CHECK_EVERY = 4  # steps between the ranks' agreements on a pending interrupt
_LOSS_CHECK_EVERY = 16  # steps between the checks that the losses are finite (each syncs the host)


class Provider(Protocol):
    """The data the loops read (``qatrun.data``'s stimuli provider)."""

    def loader(
        self, partition: str, shuffle: bool, batch_size: int | None = None, rank: int = 0, world: int = 1,
        epoch: int = 0,
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(x: N x C x H x W float, y: N int64 labels)`` of a partition, this rank's shard."""
        ...

    def size(self, partition: str) -> int:
        """Number of stimuli of ``Learn``, ``Validation`` or ``Test``."""
        ...


class WeightsIO(Protocol):
    """Saves the model's weights into a folder and reads them back (an N2D2 weights folder for a network of qatrun.load)."""

    def save(self, folder: Path) -> None:
        """Writes the folder (atomically)."""
        ...

    def load(self, folder: Path) -> None:
        """Reads the folder into the model."""
        ...


@dataclass
class EntriesIO:
    """:class:`WeightsIO` over N2D2 weights folders, from a function returning the network's entries."""

    entries: Callable[[], list[Entry]]
    ignore_missing: bool = False

    def save(self, folder: Path) -> None:
        export_folder(folder, self.entries())

    def load(self, folder: Path) -> None:
        import_folder(folder, self.entries(), ignore_missing=self.ignore_missing)


@dataclass
class ModuleIO:
    """:class:`WeightsIO` for a plain module: its ``state_dict`` in ``<folder>/state_dict.pt``."""

    model: nn.Module

    def save(self, folder: Path) -> None:
        state = self.model.state_dict()
        for name, tensor in state.items():
            index = non_finite_index(tensor)
            if index is not None:
                raise RunError(f"cannot save {folder}: {name} holds {float(tensor.reshape(-1)[index])} at index "
                               f"{index}; non-finite values are never written")
        with atomic_folder(folder) as tmp:
            torch.save(state, tmp / "state_dict.pt")

    def load(self, folder: Path) -> None:
        self.model.load_state_dict(torch.load(folder / "state_dict.pt", weights_only=True))


@dataclass(frozen=True)
class LearnConfig:
    """How to learn (the CLI options of N2D2's ``learn_epoch`` / ``learn``).

    Attributes:
        batch_size: the nominal batch size B (``[sp] BatchSize``), global over ranks.
        epochs: ``-learn-epoch``: shuffled passes over the Learn partition.
        stimuli: ``-learn``: learning stimuli (``ceil(N / B)`` steps), used when ``epochs`` is 0.
        log_epoch: ``-log-epoch``: epochs between validations (0: only at the end).
        log_stimuli: ``-log``: stimuli between validations with ``stimuli``.
        valid_metric: ``-valid-metric``: the score selecting the best weights, one of :data:`METRICS`.
        stop_valid: ``-stop-valid``: stop after this many validations in a row without improvement (0: never).
        loss: ``"ce"`` or ``"mse"`` (see the module note).
        target_value: MSE target at the label (N2D2 ``TargetValue``).
        default_value: MSE target elsewhere (N2D2 ``DefaultValue``).
        seed: ``-seed``, recorded in the state so that a resume uses the same data order.
        out_dir: where the weights folders, ``net_state/`` and ``<target>.Target/`` go.
        target_name: the target cell, naming ``<target>.Target/``.
        window: ``-ws``: stimuli of the running success rate.
        progress: show a progress bar (``None``: when stderr is a terminal).
        plots: draw the learning and validation curves (PNG) at the end.
        test_after: after learning, test the reloaded best weights on the Test partition.
    """

    batch_size: int
    epochs: int = 0
    stimuli: int = 0
    log_epoch: int = 1
    log_stimuli: int = 1000
    valid_metric: str = "Sensitivity"
    stop_valid: int = 0
    loss: str = "ce"
    target_value: float = 1.0
    default_value: float = 0.0
    seed: int = 0
    out_dir: Path = Path(".")
    target_name: str = "target"
    window: int = 10000
    progress: bool | None = None
    plots: bool = True
    test_after: bool = True

    def __post_init__(self) -> None:
        if self.valid_metric not in METRICS:
            raise ConfigError(f"-valid-metric: unknown metric '{self.valid_metric}' (valid: {', '.join(METRICS)})")
        assert self.loss in LOSSES, self.loss
        assert self.batch_size >= 1 and self.epochs >= 0 and self.stimuli >= 0, self
        assert self.log_epoch >= 0 and self.log_stimuli >= 1 and self.stop_valid >= 0, self

    @property
    def total_steps(self) -> int | None:
        """Steps of a ``-learn`` run (``None`` for ``-learn-epoch``)."""
        return None if self.epochs else math.ceil(self.stimuli / self.batch_size)


@dataclass
class Progress:
    """Where learning stands; everything a resume needs besides the tensors.

    Attributes:
        step: optimizer steps done.
        epoch: the current epoch (0-based).
        batch: batches done in the current epoch.
        seen: learning stimuli seen (all ranks).
        best: best validation score so far (``None`` before the first validation).
        stale: validations in a row without improvement.
        history: ``(seen, score)`` of every validation (``Success_validation.dat``).
        epoch_log: per batch of the current epoch: ``(size, correct, loss)`` once the epoch's stats were
            synchronised (at an interrupt).
        done: learning finished (the epochs ran out or ``-stop-valid`` stopped it).
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    seen: int = 0
    best: float | None = None
    stale: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    epoch_log: list[tuple[int, int, float]] = field(default_factory=list)
    done: bool = False


@dataclass
class LearnResult:
    """What :func:`learn` did.

    Attributes:
        progress: the final progress.
        best_folder: the weights folder reloaded at the end.
        stopped_early: ``-stop-valid`` stopped learning.
        test: the test metrics of the reloaded weights (``test_after`` and a Test partition), else ``None``.
    """

    progress: Progress
    best_folder: Path | None
    stopped_early: bool
    test: Metrics | None


class Interrupted(RunError):
    """Learning was interrupted (Ctrl-C, SIGTERM) and its state saved."""


class Diverged(RunError):
    """The loss became ``nan`` or infinite; learning stopped before writing anything of the bad step."""


# ---------------------------------------------------------------------------------------------- losses


def loss_value(
    kind: str, out: torch.Tensor, y: torch.Tensor, batch_size: int, target_value: float = 1.0,
    default_value: float = 0.0,
) -> torch.Tensor:
    """The batch loss: per-sample losses summed, divided by the nominal batch size (see the module note).

    Args:
        kind: ``"ce"`` or ``"mse"``.
        out: N x K outputs (logits for ``"ce"``).
        y: N labels.
        batch_size: the nominal (global) batch size B.
        target_value: MSE target at the label.
        default_value: MSE target elsewhere.
    """
    if kind == "ce":
        if out.shape[0] == batch_size:  # a full batch: the mean is sum / B, in one kernel
            return F.cross_entropy(out, y)
        return F.cross_entropy(out, y, reduction="sum") / batch_size
    target = torch.full_like(out, default_value)
    target.scatter_(1, y[:, None], target_value)
    return 0.5 * (out - target).square().sum() / batch_size


def _flat(out: torch.Tensor) -> torch.Tensor:
    """N x K scores of a target output (a N x K x 1 x 1 map is flattened)."""
    return out.flatten(1) if out.dim() > 2 else out


# ---------------------------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world)``: ``(0, 1)`` unless ``torch.distributed`` is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sums tensors over ranks in place, as one flat message."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _sync_step(optimizer: torch.optim.Optimizer, model: nn.Module, world: int) -> None:
    """Sums the gradients over ranks and averages the floating buffers (BatchNorm running statistics), so
    that every rank holds the same state after each step (as one message)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    with torch.no_grad():
        _all_reduce_sum(grads + buffers)
        if buffers:
            torch._foreach_div_(buffers, float(world))


def _broadcast_model(model: nn.Module) -> None:
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor, 0)


def _any_rank(flag: bool, device: torch.device, world: int) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------- test


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Metrics:
    """Confusion matrix of the model (in eval mode) over batches, summed over ranks when distributed."""
    device = _device(model)
    was_training = model.training
    model.eval()
    matrix: torch.Tensor | None = None
    try:
        for x, y in batches:
            out = _flat(model(x.to(device, non_blocking=True)))
            if matrix is None:
                matrix = torch.zeros(out.shape[1], out.shape[1], dtype=torch.int64, device=device)
            confusion_update(matrix, y.to(device, non_blocking=True), out.argmax(dim=1))
    finally:
        model.train(was_training)
    _, world = dist_info()
    if world > 1:
        classes = torch.tensor([0 if matrix is None else matrix.shape[0]], device=device)
        torch.distributed.all_reduce(classes, op=torch.distributed.ReduceOp.MAX)
        if matrix is None:
            matrix = torch.zeros(int(classes), int(classes), dtype=torch.int64, device=device)
        torch.distributed.all_reduce(matrix)
    return Metrics(matrix.cpu() if matrix is not None else torch.zeros(0, 0, dtype=torch.int64))


def test(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Metrics:
    """Tests the model on a loader (N2D2 ``test()``): top-1 rate and confusion metrics.

    Print ``metrics.test_lines()`` for N2D2's ``Final recognition rate: ...`` report.
    """
    return evaluate(model, loader)


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------- state


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress, seed: int,
    meta: dict[str, Any] | None = None, rng: list[dict[str, Any]] | None = None,
) -> None:
    """Writes everything a resume needs into ``folder/state.pt`` (atomically).

    Args:
        folder: e.g. ``net_state``.
        model: the model (its ``state_dict``).
        optimizer: the solvers (buffers and counters; the configurations come from the INI on resume).
        progress: where learning stands.
        seed: the run's ``-seed`` (the data order depends on it).
        meta: anything else worth keeping with the state (the resolved INI, versions), plain data.
        rng: the random states of every rank (default: this process's).
    """
    state = {
        "format": STATE_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
        "rng": rng if rng is not None else [_rng_states()],
        "seed": seed,
        "meta": meta or {},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    with atomic_folder(folder) as tmp:
        (tmp / STATE_FILE).write_bytes(data)
        (tmp / CHECKSUM_FILE).write_text(f"{hashlib.sha256(data).hexdigest()}  {STATE_FILE}\n")


def load_state(folder: Path) -> dict[str, Any]:
    """Reads a state written by :func:`save_state`, checked against its sha256.

    Raises:
        RunError: the folder holds no state, no checksum, a state that does not match its checksum, or a
            file that is not a state.
    """
    path = Path(folder) / STATE_FILE
    side = Path(folder) / CHECKSUM_FILE
    if not path.is_file():
        raise RunError(f"no saved learning state in '{folder}' (expected {path})")
    if not side.is_file():
        raise RunError(f"{path}: no checksum beside it ({side}): not a complete learning state")
    data = path.read_bytes()
    expected = side.read_text().split()
    if not expected or hashlib.sha256(data).hexdigest() != expected[0].lower():
        raise RunError(f"{path}: the file does not match its checksum in {side}: the state is damaged")
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # a foreign file: a user error, not a bug
        raise RunError(f"cannot read the learning state {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise RunError(f"{path}: unsupported state format {found!r}")
    return state


def state_seed(folder: Path) -> int:
    """The seed a saved state was learnt with: a resume (``-l``) runs with it (the Validation partition and
    the data order depend on it).

    Raises:
        RunError: as :func:`load_state`.
    """
    return int(load_state(folder)["seed"])


def check_same_network(saved: dict[str, torch.Tensor], model: nn.Module, source: Path) -> None:
    """Refuses a saved ``state_dict`` of another network, naming the first tensor that differs.

    Raises:
        RunError: a tensor is missing on either side or has another shape.
    """
    here = model.state_dict()

    def shape(t: Any) -> str:  # an extra state may be no tensor
        return "x".join(map(str, getattr(t, "shape", ()))) or "scalar"

    for name, tensor in here.items():
        if name not in saved:
            raise RunError(f"{source} was saved by another network: it has no tensor {name} ({shape(tensor)} here)")
        if shape(saved[name]) != shape(tensor):
            raise RunError(f"{source} was saved by another network: tensor {name} is {shape(saved[name])} there, "
                           f"{shape(tensor)} here")
    for name, tensor in saved.items():
        if name not in here:
            raise RunError(f"{source} was saved by another network: its tensor {name} ({shape(tensor)}) is not in "
                           "this one")


def _restore(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, seed: int, rank: int, source: Path
) -> Progress:
    check_same_network(state["model"], model, source / STATE_FILE)
    if state["seed"] != seed:
        raise RunError(f"{source} was saved with -seed {state['seed']}; resume with the same seed (not {seed})")
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise RunError(f"{source / STATE_FILE} was saved with other solvers: {exc}") from None
    rng = state["rng"]
    _set_rng_states(rng[rank] if rank < len(rng) else rng[0])  # a different world size reuses rank 0's
    progress = Progress(**state["progress"])
    progress.history = [tuple(h) for h in progress.history]  # type: ignore[misc]
    progress.epoch_log = [tuple(e) for e in progress.epoch_log]  # type: ignore[misc]
    return progress


@contextlib.contextmanager
def interrupt_guard() -> Iterator[Callable[[], bool]]:
    """Turns SIGINT / SIGTERM into a flag checked between steps (yields ``requested() -> bool``).

    The first signal restores the previous handlers, so a second Ctrl-C stops at once. Outside the main
    thread no handler can be installed and the flag stays false.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        requested.set()
        print(f"\n{signal.Signals(signum).name}: saving the learning state after this step "
              "(send it again to stop at once)", file=sys.stderr)
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield requested.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------- learning


@dataclass
class _Run:
    """What one call of :func:`learn` works with."""

    model: nn.Module
    provider: Provider
    optimizer: torch.optim.Optimizer
    cfg: LearnConfig
    weights: WeightsIO
    progress: Progress
    device: torch.device
    rank: int
    world: int
    has_validation: bool
    say: Callable[[str], None]
    meta: dict[str, Any]
    # device-side per-batch stats of the current epoch: sizes (host ints), correct counts, losses
    sizes: list[int] = field(default_factory=list)
    correct: list[torch.Tensor] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    checked: int = 0  # the losses[:checked] are known to be finite
    stopped_early: bool = False

    @property
    def target_dir(self) -> Path:
        return self.cfg.out_dir / f"{self.cfg.target_name}.Target"

    @property
    def writes(self) -> bool:
        return self.rank == 0


def learn(
    model: nn.Module,
    provider: Provider,
    optimizer: torch.optim.Optimizer,
    cfg: LearnConfig,
    weights: WeightsIO | None = None,
    resume: Path | None = None,
    say: Callable[[str], None] = print,
    meta: dict[str, Any] | None = None,
) -> LearnResult:
    """N2D2's ``learn_epoch`` (or ``learn``): learn, validate, keep the best, reload it, test it.

    Args:
        model: the network, on its device, returning the target's N x K outputs.
        provider: the Learn / Validation / Test data.
        optimizer: usually a :class:`~qatrun.train.solver.N2D2Optimizer` built with ``cfg.batch_size``.
        cfg: the options.
        weights: how weights folders are written and read (default: the module's ``state_dict``).
        resume: a ``net_state`` folder to continue from (``-l``).
        say: console output (rank 0 only).
        meta: plain data saved with an interrupted state (the resolved INI, versions).

    Returns:
        What happened.

    Raises:
        Interrupted: a signal arrived; the state is in ``<out_dir>/net_state``.
    """
    rank, world = dist_info()
    if cfg.batch_size % world:
        raise RunError(f"the batch size {cfg.batch_size} is not a multiple of the {world} processes")
    run = _Run(
        model=model, provider=provider, optimizer=optimizer, cfg=cfg, weights=weights or ModuleIO(model),
        progress=Progress(), device=_device(model), rank=rank, world=world,
        has_validation=provider.size("Validation") > 0, say=say if rank == 0 else (lambda _: None),
        meta=meta or {},
    )
    if resume is not None:
        run.progress = _restore(load_state(resume), model, optimizer, cfg.seed, rank, Path(resume))
    elif world > 1:
        _broadcast_model(model)
    _start(run, fresh=resume is None)
    run.progress.done = run.progress.done or (cfg.epochs == 0 and cfg.stimuli == 0)
    model.train()
    with interrupt_guard() as requested:
        while not run.progress.done:
            _learn_epoch(run, requested)
    if run.writes and cfg.plots:
        _plot_curves(run)
    best = _reload_best(run)
    tested = None
    if cfg.test_after and provider.size("Test") > 0:
        tested = test(model, provider.loader("Test", False, cfg.batch_size // world, rank=rank, world=world))
        if run.writes:
            write_confusion(run.target_dir / "ConfusionMatrix_test.dat", tested.matrix)
        for line in tested.test_lines():
            run.say(line)
    return LearnResult(progress=run.progress, best_folder=best, stopped_early=run.stopped_early, test=tested)


def _local_batch(run: _Run) -> int:
    """Each rank reads 1/world of the nominal (global) batch."""
    return run.cfg.batch_size // run.world


def _start(run: _Run, fresh: bool) -> None:
    if not run.writes:
        return
    run.target_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        run.weights.save(run.cfg.out_dir / "weights_init")
        (run.target_dir / "Success_learning.dat").write_text("")


def _learn_epoch(run: _Run, requested: Callable[[], bool]) -> None:
    """One pass over the Learn partition (or the rest of it after a resume)."""
    p, cfg = run.progress, run.cfg
    loader = run.provider.loader("Learn", True, _local_batch(run), rank=run.rank, world=run.world, epoch=p.epoch)
    batches = iter(loader)
    for _ in range(p.batch):  # a resumed epoch: skip the batches already learnt
        next(batches)
    bar = _progress_bar(run)
    start = time.perf_counter()
    try:
        for x, y in batches:
            _learn_step(run, x, y)
            bar.update(x.shape[0] * run.world)
            if p.step % _LOSS_CHECK_EVERY == 0:
                _check_losses(run)
            if cfg.total_steps is not None and _stimuli_log_point(run):
                _log_point(run)
            if p.done:
                break
            if _interrupt_requested(run, requested):
                _interrupt(run)
    finally:
        bar.close()
    _end_of_epoch(run, time.perf_counter() - start)


def _interrupt_requested(run: _Run, requested: Callable[[], bool]) -> bool:
    """The signal flag; when distributed, agreed between ranks every few steps (each check syncs the host)."""
    if run.world == 1:
        return requested()
    return run.progress.step % _DIST_CHECK_EVERY == 0 and _any_rank(requested(), run.device, run.world)


def _learn_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> None:
    cfg, p = run.cfg, run.progress
    x = x.to(run.device, non_blocking=True)
    y = y.to(run.device, non_blocking=True)
    out = _flat(run.model(x))
    loss = loss_value(cfg.loss, out, y, cfg.batch_size, cfg.target_value, cfg.default_value)
    loss.backward()
    if run.world > 1:
        _sync_step(run.optimizer, run.model, run.world)
    run.optimizer.step()
    run.sizes.append(x.shape[0])
    run.correct.append((out.detach().argmax(dim=1) == y).sum())
    run.losses.append(loss.detach())
    p.step += 1
    p.batch += 1
    p.seen += x.shape[0] * run.world


def _check_losses(run: _Run) -> None:
    """Raises :class:`Diverged` if a loss since the last check is not finite (all ranks agree)."""
    fresh = run.losses[run.checked:]
    if not fresh:
        return
    finite = torch.isfinite(torch.stack(fresh))
    bad = not bool(finite.all())
    run.checked = len(run.losses)
    if not _any_rank(bad, run.device, run.world):
        return
    p = run.progress
    if bad:
        first = int((~finite).nonzero()[0, 0])
        back = len(fresh) - first - 1  # steps done after the bad one
        value = f"{float(fresh[first]):g}"
    else:
        back, value = 0, "not finite on another rank"
    raise Diverged(
        f"the loss is {value} at epoch {p.epoch + 1}, step {p.step - back} (batch {p.batch - back} of the epoch): "
        "learning stopped; the weights folders keep the weights saved before it (is the learning rate too large?)"
    )


def _stimuli_log_point(run: _Run) -> bool:
    """``-learn N``: a validation every ``-log`` stimuli, and the end after ``ceil(N / B)`` steps."""
    p, cfg = run.progress, run.cfg
    assert cfg.total_steps is not None
    if p.step >= cfg.total_steps:
        p.done = True
        return True
    return p.step * cfg.batch_size // cfg.log_stimuli > (p.step - 1) * cfg.batch_size // cfg.log_stimuli


def _end_of_epoch(run: _Run, seconds: float) -> None:
    """Logs the epoch (or the part of it that ran) and validates at ``-log-epoch`` points."""
    p, cfg = run.progress, run.cfg
    stats = _epoch_stats(run)
    if run.writes:
        _append_learning_curve(run, stats)
    _say_epoch(run, stats, seconds)
    if p.done:  # -learn N ended inside the epoch, or -stop-valid
        return
    p.epoch += 1
    p.batch = 0
    p.epoch_log = []
    if cfg.total_steps is not None:
        return
    last = p.epoch >= cfg.epochs
    if last or (cfg.log_epoch > 0 and p.epoch % cfg.log_epoch == 0):
        _log_point(run)
    p.done = p.done or last


def _epoch_stats(run: _Run) -> list[tuple[int, int, float]]:
    """``(size, correct, loss)`` per batch of the epoch: one host synchronisation per epoch."""
    p = run.progress
    _check_losses(run)
    if run.correct:
        correct = torch.stack(run.correct).tolist()
        losses = torch.stack(run.losses).double().tolist()
        p.epoch_log += list(zip(run.sizes, correct, losses))
    run.sizes, run.correct, run.losses = [], [], []
    run.checked = 0
    return p.epoch_log


def _say_epoch(run: _Run, stats: list[tuple[int, int, float]], seconds: float) -> None:
    window = _running_success(stats, run.cfg.window)
    rate = sum(s for s, _, _ in stats) * run.world / max(seconds, 1e-9)
    loss = sum(l for _, _, l in stats) / max(len(stats), 1)
    lr = run.optimizer.param_groups[0].get("lr", 0.0) if run.optimizer.param_groups else 0.0
    minutes, secs = divmod(int(seconds), 60)
    run.say(
        f"Learning #epoch {run.progress.epoch + 1} {percent(window[-1] if window else 0.0)}% duration "
        f"{minutes:02d}:{secs:02d} min at {rate:.2f} p./s (loss {loss:.6g}, lr {lr:.6g})"
    )


def _running_success(stats: list[tuple[int, int, float]], window: int) -> list[float]:
    """Success rate over the last ``window`` stimuli after each batch (N2D2 ``-ws``)."""
    out, sizes, hits = [], 0, 0
    start = 0
    for k, (size, correct, _) in enumerate(stats):
        sizes += size
        hits += correct
        while start < k and sizes - stats[start][0] >= window:
            sizes -= stats[start][0]
            hits -= stats[start][1]
            start += 1
        out.append(hits / max(sizes, 1))
    return out


def _append_learning_curve(run: _Run, stats: list[tuple[int, int, float]]) -> None:
    """``Success_learning.dat``: ``#stimuli batch-success running-success loss`` per batch."""
    seen = run.progress.seen - sum(s for s, _, _ in stats) * run.world
    lines = []
    for (size, correct, loss), running in zip(stats, _running_success(stats, run.cfg.window)):
        seen += size * run.world
        lines.append(f"{seen} {correct / max(size, 1):.6g} {running:.6g} {loss:.6g}\n")
    with open(run.target_dir / "Success_learning.dat", "a") as f:
        f.writelines(lines)


def _log_point(run: _Run) -> None:
    """Validation and best-weights selection, or periodic ``weights/`` without a Validation partition."""
    p, cfg = run.progress, run.cfg
    _check_losses(run)
    if not run.has_validation:
        if run.writes:
            run.weights.save(cfg.out_dir / "weights")
        run.say("    'weights' saved!")
        _barrier(run.world)
        return
    loader = run.provider.loader("Validation", False, _local_batch(run), rank=run.rank, world=run.world)
    metrics = evaluate(run.model, loader)
    score = metrics.score(cfg.valid_metric)
    run.say("Validation" + "." * 20)
    if p.best is None or score > p.best:
        p.best, p.stale = score, 0
        if run.writes:
            run.weights.save(cfg.out_dir / "weights_validation")
        run.say(f"+++ BEST validation score: {percent(score)}% [{cfg.valid_metric}]")
        run.say("    'weights_validation' saved!")
    else:
        p.stale += 1
        run.say(f"--- LOWER validation score: {percent(score)}% [{cfg.valid_metric}] (best was {percent(p.best)}%)")
    for line in metrics.metric_lines():
        run.say(line)
    p.history.append((p.seen, score))
    if run.writes:
        _write_validation(run, metrics)
    _barrier(run.world)
    if cfg.stop_valid and p.stale >= cfg.stop_valid:
        run.say(f"Stopping: no better validation score for {p.stale} validations in a row (-stop-valid)")
        run.stopped_early = p.done = True


def _write_validation(run: _Run, metrics: Metrics) -> None:
    lines = "".join(f"{seen} {score:.10g}\n" for seen, score in run.progress.history)
    (run.target_dir / "Success_validation.dat").write_text(lines)
    write_confusion(run.target_dir / "ConfusionMatrix_validation.dat", metrics.matrix)


def _interrupt(run: _Run) -> None:
    folder = run.cfg.out_dir / "net_state"
    _epoch_stats(run)
    rng = [_rng_states()]
    if run.world > 1:
        rng = [{} for _ in range(run.world)]
        torch.distributed.all_gather_object(rng, _rng_states())
    if run.writes:
        save_state(folder, run.model, run.optimizer, run.progress, run.cfg.seed, run.meta, rng)
    _barrier(run.world)
    p = run.progress
    raise Interrupted(
        f"interrupted at epoch {p.epoch + 1}, batch {p.batch} (step {p.step}); the learning state is saved in "
        f"'{folder}': continue with -l {folder}"
    )


def _reload_best(run: _Run) -> Path | None:
    folder = run.cfg.out_dir / ("weights_validation" if run.has_validation else "weights")
    if not folder.exists():
        return None
    run.weights.load(folder)
    return folder


# ---------------------------------------------------------------------------------------------- display


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(run: _Run) -> Any:
    """A tqdm bar in images per second, on rank 0 and a terminal only."""
    enabled = run.cfg.progress if run.cfg.progress is not None else sys.stderr.isatty()
    if not enabled or not run.writes:
        return _NoBar()
    from tqdm import tqdm

    total = run.provider.size("Learn")
    bar = tqdm(total=total, initial=min(run.progress.batch * run.cfg.batch_size, total), unit="img",
               unit_scale=True, desc=f"Learning #epoch {run.progress.epoch + 1}", leave=False, file=sys.stderr)
    return bar


def _plot_curves(run: _Run) -> None:
    """``Success_learning.png`` and ``Success_validation.png`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learning = _read_columns(run.target_dir / "Success_learning.dat")
    for name, columns, ylabel in (
        ("Success_learning", learning, "running success"),
        ("Success_validation", _read_columns(run.target_dir / "Success_validation.dat"), run.cfg.valid_metric),
    ):
        if not columns:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(columns[0], columns[2] if name == "Success_learning" else columns[1])
        ax.set_xlabel("# stimuli")
        ax.set_ylabel(ylabel)
        ax.grid(True)
        fig.tight_layout()
        fig.savefig(run.target_dir / f"{name}.png")
        plt.close(fig)


def _read_columns(path: Path) -> list[list[float]]:
    if not path.is_file():
        return []
    rows = [[float(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()]
    return [list(col) for col in zip(*rows)] if rows else []
