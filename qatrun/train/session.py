"""What one run of qatrun sets up around the network: the device, the process group under torchrun, the
seed, the console of rank 0, and the record that lets the run be reproduced.

    with Session.start(dev=None) as session:      # joins torchrun's process group if there is one
        seed = resolve_seed(0, out_dir, learning=True)
        session.say("...")                         # rank 0 alone prints
        if session.is_main:
            write_run_record(out_dir, ini_name, resolved_ini, seed, {"kernels": ...})
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from qatrun import __version__
from qatrun.errors import RunError

SEED_FILE = "seed.dat"


def choose_device(dev: int | None) -> torch.device:
    """``-dev``: None = the first GPU if there is one, else the CPU; -1 = the CPU; N = GPU N (an error if absent)."""
    if dev is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if dev < 0:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev >= count:
        raise RunError(f"-dev {dev}: no such CUDA device ({count} found; use -dev -1 for the CPU)")
    return torch.device(f"cuda:{dev}")


def _join_process_group(device: torch.device) -> torch.device:
    """Joins the process group when started by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or torch.distributed.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank() -> int:
    """This process's rank under torchrun, 0 otherwise."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


@dataclass(frozen=True)
class Session:
    """The device and the process group of a run.

    Attributes:
        device: where the network computes (under torchrun with CUDA, this rank's GPU).
    """

    device: torch.device

    @classmethod
    @contextmanager
    def start(cls, dev: int | None = None) -> Iterator[Session]:
        """Chooses the device (:func:`choose_device`), joins torchrun's process group if started by it, and
        leaves the group at the end."""
        device = _join_process_group(choose_device(dev))
        try:
            yield cls(device)
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that prints and writes files."""
        return rank() == 0

    def say(self, line: str) -> None:
        """Console output; under torchrun, rank 0 alone speaks."""
        if self.is_main:
            print(line, flush=True)


def resolve_seed(seed: int, out_dir: Path, learning: bool) -> int:
    """``-seed``: 0 means time-based, except that a run that does not learn re-reads ``seed.dat`` (N2D2).

    Under torchrun every process takes rank 0's seed, so that all build the same network and data order.
    """
    seed_file = Path(out_dir) / SEED_FILE
    if not seed:
        text = seed_file.read_text().strip() if not learning and seed_file.is_file() else ""
        seed = int(text) if text.isdigit() else int(time.time()) % 2**31 or 1
    if torch.distributed.is_initialized():
        shared = torch.tensor([seed], dtype=torch.int64)
        torch.distributed.broadcast(shared, src=0)
        seed = int(shared.item())
    return seed


def versions() -> dict[str, str]:
    """The versions a result depends on: qatrun, Python, torch, numpy."""
    import numpy

    return {"qatrun": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__}


def write_run_record(out_dir: Path, ini_name: str, resolved_ini: str, seed: int,
                     settings: Mapping[str, str] | None = None, command: str | None = None) -> Path:
    """Writes ``seed.dat`` and ``<ini>.resolved``: everything needed to reproduce the run.

    Args:
        out_dir: the run's folder.
        ini_name: the INI's file name (the record is ``<ini_name>.resolved``).
        resolved_ini: the INI with every value resolved and its origin (``Document.dump_resolved``).
        seed: the seed the run used.
        settings: further facts of the run, one line each (e.g. the quantizer kernels).
        command: the command line (default: this process's arguments).

    Returns:
        The record's path.
    """
    out_dir = Path(out_dir)
    (out_dir / SEED_FILE).write_text(f"{seed}\n")
    if command is None:
        command = "qatrun " + " ".join(sys.argv[1:])
    lines = [f"; qatrun run record, {time.strftime('%Y-%m-%d %H:%M:%S')}", f"; command: {command}", f"; seed: {seed}"]
    lines += [f"; {k}: {v}" for k, v in {**versions(), **(settings or {})}.items()]
    path = out_dir / f"{ini_name}.resolved"
    path.write_text("\n".join(lines) + "\n\n" + resolved_ini)
    return path
