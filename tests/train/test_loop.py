"""The learn / test loops on a tiny model and an in-test provider: resume identity, seeds, early stop, files."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from qatrun.train.loop import (
    EntriesIO,
    Interrupted,
    LearnConfig,
    learn,
    load_state,
    loss_value,
)
from qatrun.train.loop import test as run_test  # imported under another name: pytest collects test*
from qatrun.train.solver import N2D2Optimizer, SolverConfig, group_by_solver
from qatrun.train.weights import Entry

BATCH = 8


class TinyProvider:
    """Learn 48 / Validation 16 / Test 16 samples of 1 x 4 x 4 images; label = quadrant of the brightest pixel.

    The order of an epoch depends only on (seed, epoch). ``interrupt_at=(epoch, batch)`` sends SIGTERM to this
    process when that batch is produced, as a user pressing Ctrl-C between two steps would.
    """

    def __init__(self, seed: int = 5, sizes: tuple[int, int, int] = (48, 16, 16),
                 interrupt_at: tuple[int, int] | None = None) -> None:
        gen = torch.Generator().manual_seed(1234)
        n = sum(sizes)
        self.x = torch.rand(n, 1, 4, 4, generator=gen)
        flat = self.x.flatten(1).argmax(dim=1)
        self.y = (flat // 8) * 2 + (flat % 4) // 2
        bounds = [0, sizes[0], sizes[0] + sizes[1], n]
        self.parts = {name: (bounds[i], bounds[i + 1]) for i, name in enumerate(("Learn", "Validation", "Test"))}
        self.seed = seed
        self.interrupt_at = interrupt_at

    def size(self, partition: str) -> int:
        lo, hi = self.parts[partition]
        return hi - lo

    def loader(self, partition: str, shuffle: bool, batch_size: int | None = None, rank: int = 0, world: int = 1,
               epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        lo, hi = self.parts[partition]
        order = torch.arange(lo, hi)
        if shuffle:
            order = order[torch.randperm(hi - lo, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))]
        shard = order[rank::world]  # as qatrun.data: rank r reads positions r, r + world, ... in batches
        size = batch_size or BATCH
        for k, start in enumerate(range(0, len(shard), size)):
            if partition == "Learn" and self.interrupt_at == (epoch, k):
                os.kill(os.getpid(), signal.SIGTERM)
            idx = shard[start : start + size]
            yield self.x[idx], self.y[idx]


class Tiny(nn.Module):
    def __init__(self, stochastic: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        # BatchNorm batch statistics and dropout masks are per rank: off for the distributed comparison
        self.bn = nn.BatchNorm2d(6) if stochastic else nn.Identity()
        self.drop = nn.Dropout(0.3) if stochastic else nn.Identity()  # dropout draws from the global RNG
        self.fc = nn.Linear(6 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).flatten(1)))


def _setup(seed: int = 0, stochastic: bool = True) -> tuple[Tiny, N2D2Optimizer, EntriesIO]:
    torch.manual_seed(seed)
    model = Tiny(stochastic)
    sgd = SolverConfig(learning_rate=0.05, momentum=0.9, decay=1e-4, policy="StepDecay", step_size=48, lr_decay=0.9)
    adam = SolverConfig(type="Adam", learning_rate=0.01)
    named = [(n, p, adam if n.startswith("bn") else sgd) for n, p in model.named_parameters()]
    optimizer = N2D2Optimizer(group_by_solver(named), BATCH)

    def entries() -> list[Entry]:
        return [
            Entry("conv", "conv", {"weights": model.conv.weight, "biases": model.conv.bias}),
            Entry("bn", "bn", {"scales": model.bn.weight, "biases": model.bn.bias, "means": model.bn.running_mean,
                               "variances": model.bn.running_var}),
            Entry("fc", "fc", {"weights": model.fc.weight, "biases": model.fc.bias}, digits=10),
        ]

    return model, optimizer, EntriesIO(entries)


def _config(tmp: Path, **kw: object) -> LearnConfig:
    base = dict(batch_size=BATCH, epochs=2, out_dir=tmp, target_name="out", plots=False, progress=False, seed=5)
    base.update(kw)
    return LearnConfig(**base)  # type: ignore[arg-type]


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    snap = {f"m.{k}": v.clone() for k, v in model.state_dict().items()}
    for i, (p, st) in enumerate(optimizer.state.items()):
        snap.update({f"o{i}.{k}": v.clone() for k, v in st.items()})
    return snap


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_interrupt_is_bit_identical(tmp_path: Path) -> None:
    lines: list[str] = []
    # weights=None: the best weights go through exact state_dict files, not 6-digit text
    model, opt, _ = _setup()
    straight = learn(model, TinyProvider(), opt, _config(tmp_path / "a", log_epoch=1), say=lines.append)
    expected = _snapshot(model, opt)

    model, opt, _ = _setup()
    with pytest.raises(Interrupted) as err:
        learn(model, TinyProvider(interrupt_at=(1, 2)), opt, _config(tmp_path / "b"), say=lambda _: None)
    state_dir = tmp_path / "b" / "net_state"
    assert str(err.value) == (f"interrupted at epoch 2, batch 3 (step 9); the learning state is saved in "
                              f"'{state_dir}': continue with -l {state_dir}")
    assert load_state(state_dir)["progress"]["step"] == 9
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    model, opt, _ = _setup(seed=99)  # a different initialisation: everything comes from the state
    resumed = learn(model, TinyProvider(), opt, _config(tmp_path / "b"), resume=state_dir, say=lambda _: None)
    _assert_identical(_snapshot(model, opt), expected)
    assert resumed.progress.history == straight.progress.history
    assert resumed.test is not None and straight.test is not None
    assert torch.equal(resumed.test.matrix, straight.test.matrix)
    a, b = (tmp_path / d / "out.Target" / "Success_learning.dat" for d in "ab")
    assert a.read_text() == b.read_text()
    assert lines[-3].startswith("Final recognition rate: ")


def test_same_seed_twice_is_identical_and_seeds_matter(tmp_path: Path) -> None:
    snaps = []
    for k, seed in enumerate((0, 0, 1)):
        model, opt, io = _setup(seed)
        learn(model, TinyProvider(), opt, _config(tmp_path / str(k), epochs=1, test_after=False), io,
              say=lambda _: None)
        snaps.append(_snapshot(model, opt))
    _assert_identical(snaps[0], snaps[1])
    assert not torch.equal(snaps[0]["m.fc.weight"], snaps[2]["m.fc.weight"])


def test_stop_valid_really_stops_and_best_weights_are_reloaded(tmp_path: Path) -> None:
    model, _, io = _setup()
    model.bn.momentum = 0.0  # with a zero learning rate too, every validation scores the same
    frozen = N2D2Optimizer(group_by_solver([(n, p, SolverConfig(learning_rate=0.0))
                                            for n, p in model.named_parameters()]), BATCH)
    lines: list[str] = []
    result = learn(model, TinyProvider(), frozen, _config(tmp_path, epochs=10, stop_valid=2, plots=True), io,
                   say=lines.append)
    assert result.stopped_early and result.progress.epoch == 3  # 1 best + 2 lower, then no 4th epoch
    assert result.best_folder == tmp_path / "weights_validation"
    assert sum(line.startswith("--- LOWER validation score: ") for line in lines) == 2
    assert sum(line.startswith("+++ BEST validation score: ") for line in lines) == 1
    assert "    'weights_validation' saved!" in lines
    assert len((tmp_path / "out.Target" / "Success_validation.dat").read_text().splitlines()) == 3
    for name in ("weights_init", "weights_validation"):
        assert (tmp_path / name / "fc_weights.syntxt").is_file()
    for name in ("Success_learning.png", "Success_validation.png", "ConfusionMatrix_validation.dat",
                 "ConfusionMatrix_test.dat"):
        assert (tmp_path / "out.Target" / name).is_file(), name


def test_best_weights_are_the_ones_reloaded(tmp_path: Path) -> None:
    model, opt, io = _setup()
    result = learn(model, TinyProvider(), opt, _config(tmp_path, epochs=3, test_after=False), io,
                   say=lambda _: None)
    reloaded = {k: v.clone() for k, v in model.state_dict().items()}
    io.load(result.best_folder)  # type: ignore[arg-type]
    for k, v in model.state_dict().items():
        assert torch.equal(v, reloaded[k]), k


def test_without_validation_weights_are_saved_each_log_epoch(tmp_path: Path) -> None:
    model, opt, io = _setup()
    lines: list[str] = []
    result = learn(model, TinyProvider(sizes=(48, 0, 16)), opt, _config(tmp_path, epochs=2), io, say=lines.append)
    assert result.best_folder == tmp_path / "weights" and lines.count("    'weights' saved!") == 2
    assert lines[0].startswith("Learning #epoch 1 ") and " p./s " in lines[0]


def test_learn_stimuli_mode_counts_steps_and_logs(tmp_path: Path) -> None:
    model, opt, io = _setup()
    lines: list[str] = []
    result = learn(model, TinyProvider(), opt, _config(tmp_path, epochs=0, stimuli=100, log_stimuli=40), io,
                   say=lines.append)
    assert result.progress.step == 13  # ceil(100 / 8), across 3 epochs of 6 batches
    assert len(result.progress.history) == 3  # after 40, 80 stimuli, and at the end


def test_test_metrics_match_a_manual_count() -> None:
    model, _, _ = _setup()
    provider = TinyProvider()
    metrics = run_test(model, provider.loader("Test", False))
    with torch.no_grad():
        model.eval()
        lo, hi = provider.parts["Test"]
        hits = int((model(provider.x[lo:hi]).argmax(1) == provider.y[lo:hi]).sum())
    assert metrics.count == 16 and metrics.recognition_rate == hits / 16
    assert model.training is False  # test() restores the mode it found


@pytest.mark.parametrize(("kind", "n"), [("ce", 3), ("ce", 8), ("mse", 3), ("mse", 8)])
def test_loss_gradient_is_n2d2_diff(kind: str, n: int) -> None:
    """N2D2 diff = target - output (MSE) or onehot - softmax (CE), summed over the batch; loss / B (B = 8)."""
    out = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    y = torch.arange(n) % 4
    loss_value(kind, out, y, batch_size=8, target_value=1.0, default_value=-0.5).backward()
    onehot = torch.nn.functional.one_hot(y, 4).double()
    if kind == "ce":
        diff = onehot - torch.softmax(out.detach(), dim=1)
    else:
        diff = torch.where(onehot > 0, 1.0, -0.5) - out.detach()
    torch.testing.assert_close(out.grad, -diff / 8, rtol=1e-14, atol=1e-15)


def test_bad_valid_metric_is_a_config_error(tmp_path: Path) -> None:
    from qatrun.errors import ConfigError

    with pytest.raises(ConfigError, match="-valid-metric: unknown metric 'Recall'"):
        _config(tmp_path, valid_metric="Recall")


def _distributed_worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        model, opt, _ = _setup(seed=rank, stochastic=False)  # rank 1 starts elsewhere: rank 0 is broadcast
        result = learn(model, TinyProvider(), opt, _config(Path(tmp) / "dist", epochs=2), say=lambda _: None)
        torch.save({"state": model.state_dict(), "matrix": result.test.matrix}, f"{tmp}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_learn_what_one_process_learns(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_distributed_worker, args=(str(tmp_path),), nprocs=2, start_method="fork")
    model, opt, _ = _setup(seed=0, stochastic=False)
    single = learn(model, TinyProvider(), opt, _config(tmp_path / "single", epochs=2), say=lambda _: None)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in model.state_dict().items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key  # ranks agree exactly
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-5, atol=1e-6)  # summation order only
    assert torch.equal(ranks[0]["matrix"], single.test.matrix)  # the test set split over ranks, summed


def _distributed_resume_worker(rank: int, tmp: str, phase: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/store-{phase}", rank=rank, world_size=2)
    try:
        model, opt, _ = _setup(seed=0)  # BatchNorm and dropout: per-rank statistics and random masks
        out = Path(tmp) / ("straight" if phase == "straight" else "cut")
        provider = TinyProvider(interrupt_at=(1, 2) if phase == "cut" and rank == 1 else None)
        resume = out / "net_state" if phase == "resume" else None
        try:
            learn(model, provider, opt, _config(out, test_after=False), resume=resume, say=lambda _: None)
        except Interrupted:
            assert phase == "cut"
            return
        torch.save(_snapshot(model, opt), f"{tmp}/{phase}{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_resume_bit_identical(tmp_path: Path) -> None:
    """A signal reaching one rank stops both at the same step; the resumed ranks end as the straight ones."""
    import torch.multiprocessing as mp

    for phase in ("straight", "cut", "resume"):
        mp.start_processes(_distributed_resume_worker, args=(str(tmp_path), phase), nprocs=2, start_method="fork")
    for rank in range(2):
        straight, resumed = (torch.load(tmp_path / f"{p}{rank}.pt", weights_only=True) for p in ("straight", "resume"))
        _assert_identical(resumed, straight)
