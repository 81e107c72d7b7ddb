#!/usr/bin/env python3
"""qatrun's float epoch against a minimal hand-written PyTorch loop: same model, data and batch size.

    .venv/bin/python scripts/bench_train.py                        # 3 full epochs each, bench_train.json
    .venv/bin/python scripts/bench_train.py --epochs-fraction 0.2  # a fifth of an epoch, for a quick look

Model: ``models/LeNet.ini`` built by ``qatrun.load`` (seeded, so every build has the same
initial weights). Data: the shipped MNIST Learn partition through ``qatrun.data``, opened once; both sides
read the same loader (``Learn``, shuffled, epoch 0), so they see the same batches in the same order, at the
INI's BatchSize.

A (qatrun): ``train.learn`` set up exactly as ``qatrun models/LeNet.ini -learn-epoch 1`` sets it up
(``N2D2Optimizer`` over the INI's solvers, N2D2 weights folders through ``Network.folders``), with the
progress bar, plots and the final test off. ``learn`` always validates and writes ``weights_validation/``
after the last epoch (``LearnConfig`` cannot turn that off), so the timed figure is the epoch loop alone:
from the moment ``learn`` opens the Learn loader to its exhaustion (data, forward, loss, backward, solver
update and ``learn``'s per-step bookkeeping). The whole ``learn`` call (weights_init written, epoch,
validation, weights written and reloaded) is reported beside it.

B (plain PyTorch): the same GraphModule built afresh with the same seed, ``torch.optim.SGD(lr, momentum)``
with the INI's LearningRate and Momentum, ``F.cross_entropy``, ``zero_grad / backward / step`` over the same
loader, timed the same way. B does less arithmetic than A: qatrun also applies the INI's weight decay,
clamping (``Solvers.Clamping``) and cosine rate, as N2D2 does.

The repetitions interleave A and B (A, B, A, B, ...) after one short untimed warm-up of each.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

import qatrun  # noqa: E402
from qatrun import train  # noqa: E402

INI = common.ROOT / "models" / "LeNet.ini"
SEED = 1


class TimedLoader:
    """A Learn loader cut to its first ``batches`` batches, timing one full pass over it."""

    def __init__(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], batches: int) -> None:
        self.loader = loader
        self.batches = batches
        self.seconds: float | None = None
        self.cpu_seconds: float | None = None
        self.images = 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, start_cpu = common.now(), common.cpu()
        for x, y in itertools.islice(self.loader, self.batches):
            self.images += x.shape[0]
            yield x, y
        # Reached only when the consumer asked for the batch after the last one: its work is done.
        self.seconds = common.now() - start
        self.cpu_seconds = common.cpu() - start_cpu


class TimedProvider:
    """The real provider, except that the Learn loader is a :class:`TimedLoader` (the last one is kept)."""

    def __init__(self, provider: object, fraction: float) -> None:
        self.provider = provider
        self.fraction = fraction
        self.last: TimedLoader | None = None

    def size(self, partition: str) -> int:
        return self.provider.size(partition)

    def loader(self, partition: str, shuffle: bool, batch_size: int | None = None, rank: int = 0, world: int = 1,
               epoch: int = 0) -> object:
        loader = self.provider.loader(partition, shuffle, batch_size, rank, world, epoch)
        if partition != "Learn":
            return loader
        self.last = TimedLoader(loader, batches_of(len(loader), self.fraction))
        return self.last


def batches_of(total: int, fraction: float) -> int:
    return max(1, math.ceil(total * fraction))


def build(overrides: list[str]) -> qatrun.Network:
    """The network as the command builds it, with the benchmark's fixed seed (the same initial weights)."""
    return qatrun.load(INI, overrides, seed=SEED)


def run_qatrun(provider: object, overrides: list[str], fraction: float) -> dict[str, float]:
    """A: one epoch through ``train.learn``, as ``qatrun NET.ini -learn-epoch 1`` runs it (qatrun.Network.learn)."""
    network = build(overrides)
    gm = network.gm
    target = gm.targets[0]
    timed = TimedProvider(provider, fraction)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as out:
        cfg = train.LearnConfig(
            batch_size=network.spec.batch_size, epochs=1, loss=target.loss, target_value=target.target_value,
            default_value=target.default_value, seed=SEED, out_dir=Path(out), target_name=target.cell,
            progress=False, plots=False, test_after=False,
        )
        optimizer = train.N2D2Optimizer(train.group_by_solver(network.solvers), network.spec.batch_size)
        io = network.folders(ignore_missing=True)
        meta = {"ini": network.doc.dump_resolved(), "seed": SEED}
        lines: list[str] = []
        start = common.now()
        train.learn(gm, timed, optimizer, cfg, io, say=lines.append, meta=meta)
        total = common.now() - start
    assert timed.last is not None and timed.last.seconds is not None, "learn did not finish its epoch"
    return {"epoch": timed.last.seconds, "epoch_cpu": timed.last.cpu_seconds, "learn_call": total,
            "images": timed.last.images}


def run_plain(provider: object, overrides: list[str], fraction: float) -> dict[str, float]:
    """B: the loop a PyTorch user writes, on the same GraphModule (fresh, same initial weights)."""
    network = build(overrides)
    model = network.gm
    solver = network.solvers[0][2]
    optimizer = torch.optim.SGD(model.parameters(), lr=solver.learning_rate, momentum=solver.momentum)
    timed = TimedProvider(provider, fraction)
    loader = timed.loader("Learn", True, network.spec.batch_size, epoch=0)
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert timed.last is not None and timed.last.seconds is not None
    return {"epoch": timed.last.seconds, "epoch_cpu": timed.last.cpu_seconds, "images": timed.last.images}


def same_initial_weights(overrides: list[str]) -> bool:
    """Two builds with the benchmark's seed hold the same weights (the premise of the comparison)."""
    a, b = build(overrides).gm.state_dict(), build(overrides).gm.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def loader_only(provider: object, batch_size: int, fraction: float) -> float:
    """Seconds to read the same batches without learning (the data part both sides share)."""
    timed = TimedProvider(provider, fraction)
    for _ in timed.loader("Learn", True, batch_size, epoch=0):
        pass
    assert timed.last is not None and timed.last.seconds is not None
    return timed.last.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs-fraction", type=float, default=1.0,
                        help="time this fraction of the Learn epoch (first batches of the same order) [1]")
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved repetitions [3]")
    parser.add_argument("--set", action="append", default=[], metavar="'[S]Key=V'", help="INI override")
    parser.add_argument("--threads", type=int, default=0, help="torch threads [torch's default]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    assert 0 < args.epochs_fraction <= 1, "--epochs-fraction must be in (0, 1]"

    load_start = common.say_load("start")
    env = common.environment()
    network = build(args.set)
    batch_size = network.spec.batch_size
    print(f"{INI.name}: BatchSize {batch_size}; opening the data (qatrun.data) ...", flush=True)
    start = common.now()
    provider = network.spec.open(SEED)
    print(f"data opened in {common.now() - start:.1f} s: Learn {provider.size('Learn')} images", flush=True)
    assert same_initial_weights(args.set), "two builds with one seed differ: the comparison would be unfair"

    warm = min(args.epochs_fraction, 0.02)  # a few batches each: first-touch allocations, lazy imports
    run_qatrun(provider, args.set, warm)
    run_plain(provider, args.set, warm)

    records: dict[str, list[dict[str, float]]] = {"qatrun": [], "plain": []}

    def measure(name: str, function: Callable[..., dict[str, float]]) -> Callable[[], float]:
        def call() -> float:
            record = function(provider, args.set, args.epochs_fraction)
            records[name].append(record)
            return record["epoch"]
        return call

    times = common.interleaved(
        [("qatrun", measure("qatrun", run_qatrun)), ("plain", measure("plain", run_plain))], args.repetitions
    )
    data_seconds = [loader_only(provider, batch_size, args.epochs_fraction) for _ in range(args.repetitions)]
    load_end = common.say_load("end")

    ratio = common.ratio_figures(times["qatrun"], times["plain"])
    cpu = {name: [r["epoch_cpu"] for r in recs] for name, recs in records.items()}
    cpu_ratio = common.ratio_figures(cpu["qatrun"], cpu["plain"])
    images = records["qatrun"][0]["images"]
    learn_calls = [r["learn_call"] for r in records["qatrun"]]
    median = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("A qatrun train.learn (epoch loop)", *[f"{t:.3f}" for t in times["qatrun"]], f"{median['qatrun']:.3f}",
         f"{images / median['qatrun']:.0f}"),
        ("B plain PyTorch loop", *[f"{t:.3f}" for t in times["plain"]], f"{median['plain']:.3f}",
         f"{images / median['plain']:.0f}"),
        ("  A, CPU seconds", *[f"{t:.3f}" for t in cpu["qatrun"]], f"{statistics.median(cpu['qatrun']):.3f}", ""),
        ("  B, CPU seconds", *[f"{t:.3f}" for t in cpu["plain"]], f"{statistics.median(cpu['plain']):.3f}", ""),
        ("  A's whole learn() call", *[f"{t:.3f}" for t in learn_calls], f"{statistics.median(learn_calls):.3f}", ""),
        ("  reading the batches alone", *[f"{t:.3f}" for t in data_seconds],
         f"{statistics.median(data_seconds):.3f}", ""),
    ]
    header = ("seconds", *[f"rep {r + 1}" for r in range(args.repetitions)], "median", "img/s")
    print()
    print(f"LeNet ({INI.name}), {images} images per epoch measured ({args.epochs_fraction:g} of the Learn "
          f"epoch), batch {batch_size}, {torch.get_num_threads()} threads")
    print(common.table(header, rows))
    print(f"ratio A/B: {ratio['ratio_of_medians']:.3f} (medians), {ratio['median_of_ratios']:.3f} "
          f"(median of per-repetition ratios {', '.join(f'{r:.3f}' for r in ratio['ratios'])}); target <= 1.15")
    print(f"CPU-time ratio A/B: {cpu_ratio['median_of_ratios']:.3f} (median of per-repetition ratios "
          f"{', '.join(f'{r:.3f}' for r in cpu_ratio['ratios'])})")

    common.write_json("bench_train.json", {
        "benchmark": "qatrun float epoch (train.learn) vs a minimal PyTorch loop",
        "environment": env,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "ini": str(INI.relative_to(common.ROOT)),
        "overrides": args.set,
        "batch_size": batch_size,
        "epochs_fraction": args.epochs_fraction,
        "images_per_measurement": images,
        "repetitions": args.repetitions,
        "seconds": {"qatrun_epoch": times["qatrun"], "plain_epoch": times["plain"],
                    "qatrun_learn_call": learn_calls, "batches_only": data_seconds},
        "cpu_seconds": {"qatrun_epoch": cpu["qatrun"], "plain_epoch": cpu["plain"]},
        "median_seconds": {"qatrun_epoch": median["qatrun"], "plain_epoch": median["plain"],
                           "qatrun_learn_call": statistics.median(learn_calls),
                           "batches_only": statistics.median(data_seconds)},
        "ratio_qatrun_over_plain": ratio,
        "cpu_ratio_qatrun_over_plain": cpu_ratio,
        "target": 1.15,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
