"""What one run of qatrun sets up around the network: the device, the process group under torchrun, the
seed, the console of rank 0, the run folder's lock, and the record that lets the run be reproduced.

    with Session.start(dev=None) as session, session.own_folder(out_dir, writes=True):
        seed = resolve_seed(0, out_dir, learning=True)
        session.say("...")                         # rank 0 alone prints
        if session.is_main:
            write_run_record(out_dir, ini_name, resolved_ini, seed, {"kernels": ...})

A run folder belongs to one run at a time. A run that writes into it (learning, fusion, export) holds
``.qatrun.lock`` (its pid, host and start time) from its start to its end; a second such run is refused at
once, naming the first. A lock whose run is gone (its pid no longer alive on this host) or that was written
on another host (whose pids cannot be probed from here: a run killed there would otherwise hold the folder
for ever) is stale and replaced, with a notice. A run that only tests writes nothing and takes no lock, so
that it works in a folder it cannot write to; it is refused all the same while a run holds the folder, since
it would test weights that are being rewritten. Under torchrun rank 0 alone takes the lock.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from qatrun import __version__
from qatrun.errors import RunError

SEED_FILE = "seed.dat"
LOCK_FILE = ".qatrun.lock"


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

    def barrier(self) -> None:
        """Under torchrun, waits until every rank is here (after rank 0 wrote files the others read)."""
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def say(self, line: str) -> None:
        """Console output; under torchrun, rank 0 alone speaks."""
        if self.is_main:
            print(line, flush=True)

    @contextmanager
    def own_folder(self, out_dir: Path, writes: bool) -> Iterator[None]:
        """Holds the run folder for this run (:func:`lock_folder`) when it ``writes`` into it; a run that
        does not write only checks that no run holds the folder. Under torchrun, rank 0 alone does either.

        Raises:
            RunError: another live run holds the folder, or its lock cannot be written.
        """
        if not self.is_main:
            yield
        elif writes:
            with lock_folder(out_dir):
                yield
        else:
            holder = folder_holder(out_dir)
            if holder is not None:
                raise RunError(holder.refusal(out_dir, "it would test weights that are being rewritten"))
            yield


# ------------------------------------------------------------------------------------------ the folder's lock


@dataclass(frozen=True)
class LockHolder:
    """The run a lock file names.

    Attributes:
        pid: its process id.
        host: the host it runs on.
        started: when it started (local time, as written).
    """

    pid: int
    host: str
    started: str

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        """The holder written by :func:`lock_folder`, or None for a file that is not one (stale)."""
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        pid = fields.get("pid", "")
        return cls(int(pid), fields.get("host", ""), fields.get("started", "?")) if pid.isdigit() else None

    def alive(self) -> bool:
        """Whether the run may still be running: its pid lives on this host (a zombie does not count)."""
        if self.host != socket.gethostname():
            return False  # another host's pids cannot be probed: stale (see the module's note)
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state != "Z"

    def refusal(self, out_dir: Path, why: str) -> str:
        """The message refusing a second run in the folder."""
        return (f"{Path(out_dir) / LOCK_FILE}: the folder is in use by the run of pid {self.pid} on {self.host}, "
                f"started {self.started}; {why}: wait for it to end, or run in another folder")


def folder_holder(out_dir: Path) -> LockHolder | None:
    """The live run holding ``out_dir``, or None (no lock, or a stale one)."""
    try:
        text = (Path(out_dir) / LOCK_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise write_error(err, Path(out_dir) / LOCK_FILE, "the run folder's lock", "read") from None
    holder = LockHolder.parse(text)
    return holder if holder is not None and holder.alive() else None


@contextmanager
def lock_folder(out_dir: Path, command: str | None = None) -> Iterator[Path]:
    """Holds ``out_dir/.qatrun.lock`` while the block runs; replaces a stale lock (see the module's note).

    The lock is created with ``O_EXCL``, so of two runs starting together one alone gets it. It is removed at
    the end, whatever happens, so that a run leaves the folder as it found it but for what it wrote.

    Raises:
        RunError: another live run holds the folder; the lock cannot be written (the path and the reason).
    """
    path = Path(out_dir) / LOCK_FILE
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={started}\n"
            f"command={command or 'qatrun ' + ' '.join(sys.argv[1:])}\n")
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _replace_stale(path, out_dir)
            continue
        except OSError as err:
            raise write_error(err, path, "the run folder's lock") from None
        break
    else:
        raise RunError(f"{path}: cannot take the run folder's lock: another run keeps taking it")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise write_error(err, path, "the run folder's lock") from None
    try:
        yield path
    finally:
        with suppress(OSError):
            if path.read_text(errors="replace") == text:  # still ours
                path.unlink()


def _replace_stale(path: Path, out_dir: Path) -> None:
    """Removes the lock at ``path`` if its run is gone; raises the refusal if it lives."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return  # its run just ended
    except OSError as err:
        raise write_error(err, path, "the run folder's lock", "read") from None
    holder = LockHolder.parse(text)
    if holder is not None and holder.alive():
        raise RunError(holder.refusal(out_dir, "a run folder belongs to one run"))
    who = f"pid {holder.pid} on {holder.host}, started {holder.started}" if holder else "unreadable"
    print(f"Notice: replacing the stale lock {path} ({who}): its run is no longer running", file=sys.stderr)
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise write_error(err, path, "the run folder's stale lock", "remove") from None


def write_error(err: OSError, path: Path, what: str, doing: str = "write") -> RunError:
    """A file-system failure as a user error naming the file and what it held: ``cannot write the run
    record 'x/LeNet.ini.resolved': No space left on device``."""
    reason = err.strerror or os.strerror(err.errno or errno.EIO)
    return RunError(f"cannot {doing} {what} '{path}': {reason}")


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
    if command is None:
        command = "qatrun " + " ".join(sys.argv[1:])
    lines = [f"; qatrun run record, {time.strftime('%Y-%m-%d %H:%M:%S')}", f"; command: {command}", f"; seed: {seed}"]
    lines += [f"; {k}: {v}" for k, v in {**versions(), **(settings or {})}.items()]
    path = out_dir / f"{ini_name}.resolved"
    write_files({out_dir / SEED_FILE: f"{seed}\n", path: "\n".join(lines) + "\n\n" + resolved_ini}, "the run record")
    return path


def write_files(contents: Mapping[Path, str], what: str) -> None:
    """Writes text files all or none: each to a temporary file beside it, then each renamed over its name.

    A failure (read-only folder, full disk) leaves every file as it was.

    Raises:
        RunError: a file cannot be written (its path, ``what`` it holds and the reason).
    """
    temps: dict[Path, Path] = {}
    path = next(iter(contents))
    try:
        for path, text in contents.items():
            temps[path] = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps[path].write_text(text)
        for path, temp in temps.items():
            os.replace(temp, path)
    except OSError as err:
        for temp in temps.values():
            with suppress(OSError):
                temp.unlink(missing_ok=True)
        raise write_error(err, path, what) from None
