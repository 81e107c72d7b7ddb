"""What the benchmark scripts share: the run's environment, interleaved timing, tables and the JSON record.

Every benchmark measures its variants side by side in one process: repetition r runs variant A, then B
(then C), so that a change in the machine's load touches every variant alike; the figures are medians over
the repetitions, and each ratio is given both as the ratio of the medians and as the median of the
per-repetition ratios (the pairs share their moment of the run, so the latter is the less noisy one on a
shared machine).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the system has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def environment() -> dict[str, Any]:
    """Versions, threads, cores and the date: what a reader needs to compare two runs."""
    import numpy

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        # OpenMP's wait policy changes a loaded machine's figures by an order of magnitude (see the report)
        "env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
    }


def say_load(label: str) -> tuple[float, float, float]:
    """Prints and returns the load average, e.g. at the start and at the end of a run."""
    load = load_average()
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"load average ({label}): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY {policy}", flush=True)
    return load


def interleaved(
    variants: Sequence[tuple[str, Callable[[], float]]], repetitions: int, label: str = ""
) -> dict[str, list[float]]:
    """Runs the variants in turn, ``repetitions`` times (A, B, A, B, ...); each call returns its seconds.

    Returns:
        Variant name -> the seconds of each repetition, in order.
    """
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for rep in range(repetitions):
        for name, measure in variants:
            seconds = measure()
            times[name].append(seconds)
            print(f"  {label}rep {rep + 1}/{repetitions}  {name:<12} {seconds:8.3f} s  "
                  f"(load {load_average()[0]:.2f})", flush=True)
    return times


def ratio_figures(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """``median(N) / median(D)`` and the median of the per-repetition ratios ``N_r / D_r``."""
    pairs = [n / d for n, d in zip(numerator, denominator)]
    return {
        "ratio_of_medians": statistics.median(numerator) / statistics.median(denominator),
        "median_of_ratios": statistics.median(pairs),
        "ratios": pairs,
    }


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def write_json(name: str, record: dict[str, Any]) -> Path:
    """Writes the record as ``name`` in the current directory and returns its path."""
    path = Path.cwd() / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures written to {path}")
    return path


def now() -> float:
    """The benchmark clock (wall time)."""
    return time.perf_counter()


def cpu() -> float:
    """CPU seconds of this process, all threads: less sensitive than wall time to other work on the machine
    (though threads that spin while waiting for a core still count)."""
    return time.process_time()
