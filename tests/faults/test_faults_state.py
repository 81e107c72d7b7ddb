"""Faults of state: interrupts, resumes (``-l``) and the atomic folder swap.

An interrupted run (SIGINT / SIGTERM after its first epoch line) must leave ``net_state/`` with its checksum
and no temporary folder; a resume must refuse a damaged state, or one of another network, with one line; a
folder swap interrupted at any instant must leave the old folder or the new one, and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qatrun
from qatrun.fuse import weights_folder
from qatrun import files
from qatrun.train.loop import state_seed
from tests.faults.conftest import LENET, QAT, assert_refused, copy_run, data_args, run_qatrun, snapshot

STIMULI = "4000"  # 32 steps of 128: 4 epochs of mnist_small's 800 Learn images


def _interrupt(folder: Path, mnist_small: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Starts LeNet learning without -seed, sends ``signum`` after its first epoch line, waits for its end."""
    args = [sys.executable, "-m", "qatrun", LENET, *data_args(mnist_small), "-learn", STIMULI, "-log", "100000"]
    proc = subprocess.Popen(args, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Learning #epoch 1"):
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, "".join(lines) + out, err)


def _no_stray(folder: Path) -> None:
    stray = [p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert stray == [], stray


@pytest.fixture(scope="module")
def interrupted(mnist_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose run (no -seed) was stopped by SIGINT: ``net_state/``, ``seed.dat`` and the rest."""
    folder = tmp_path_factory.mktemp("interrupted")
    proc = _interrupt(folder, mnist_small, signal.SIGINT)
    assert_refused(proc, "interrupted at epoch 2", "continue with -l net_state")
    return folder


def _seed(folder: Path) -> str:
    return (folder / "seed.dat").read_text().strip()


# ---------------------------------------------------------------------------------------------- interrupts


def test_sigint_saves_a_state_with_its_checksum(interrupted: Path) -> None:
    state = interrupted / "net_state" / "state.pt"
    digest, name = (interrupted / "net_state" / "state.pt.sha256").read_text().split()
    assert name == "state.pt" and digest == hashlib.sha256(state.read_bytes()).hexdigest()
    _no_stray(interrupted)


def test_state_seed_is_the_seed_of_the_run(interrupted: Path) -> None:
    assert state_seed(interrupted / "net_state") == int(_seed(interrupted))


def test_sigterm_then_resume_with_the_state_seed(mnist_small: Path, tmp_path: Path) -> None:
    proc = _interrupt(tmp_path, mnist_small, signal.SIGTERM)
    assert_refused(proc, "interrupted at epoch 2", "net_state")
    _no_stray(tmp_path)
    seed = str(state_seed(tmp_path / "net_state"))
    proc = run_qatrun([LENET, *data_args(mnist_small), "-learn", STIMULI, "-log", "100000", "-seed", seed,
                       "-l", "net_state"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Learning #epoch 4" in proc.stdout and "Final recognition rate" in proc.stdout
    _no_stray(tmp_path)


def test_resume_without_seed(interrupted: Path, mnist_small: Path, tmp_path: Path) -> None:
    work = copy_run(interrupted, tmp_path)
    proc = run_qatrun([LENET, *data_args(mnist_small), "-learn", STIMULI, "-log", "100000", "-l", "net_state"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- resumes refused


@pytest.mark.parametrize(("ini", "sets", "names"), [
    (QAT, [], ["bn1.weight"]),  # the first tensor of the QAT network that LeNet's state lacks
    (LENET, ["-set", "[fc1]NbOutputs=50"], ["fc1.weight", "84", "50"]),  # the first one of another shape
])
def test_state_of_another_network(ini: str, sets: list[str], names: list[str], interrupted: Path,
                                  mnist_small: Path, tmp_path: Path) -> None:
    work = copy_run(interrupted, tmp_path)
    before = snapshot(work / "net_state")
    proc = run_qatrun([ini, *data_args(mnist_small), *sets, "-learn", STIMULI, "-seed", _seed(work),
                       "-l", "net_state"], work)
    assert_refused(proc, "net_state", *names, before=before, folder=work / "net_state")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no checksum", "other checksum"])
def test_damaged_state(damage: str, interrupted: Path, mnist_small: Path, tmp_path: Path) -> None:
    work = copy_run(interrupted, tmp_path)
    state = work / "net_state" / "state.pt"
    data = bytearray(state.read_bytes())
    if damage == "flipped byte":
        data[len(data) * 2 // 3] ^= 0x10
        state.write_bytes(bytes(data))
    elif damage == "truncated":
        state.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "no checksum":
        (work / "net_state" / "state.pt.sha256").unlink()
    else:
        (work / "net_state" / "state.pt.sha256").write_text(f"{hashlib.sha256(b'x').hexdigest()}  state.pt\n")
    before = snapshot(work / "net_state")
    proc = run_qatrun([LENET, *data_args(mnist_small), "-learn", STIMULI, "-seed", _seed(work), "-l", "net_state"],
                      work)
    names = ["state.pt.sha256"] if damage == "no checksum" else ["net_state/state.pt", "checksum"]
    assert_refused(proc, *names, before=before, folder=work / "net_state")


# ---------------------------------------------------------------------------------------------- atomic swaps


def _interrupt_call(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, nth: int) -> None:
    """Makes the ``nth`` call of ``owner.name`` raise KeyboardInterrupt (as a Ctrl-C at that instant)."""
    original = getattr(owner, name)
    calls = []

    def interrupted(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


def _fused_report(mnist_small: Path) -> qatrun.IntegerNetwork:
    network = qatrun.load(QAT, data_args(mnist_small)[1::2], seed=1)
    network.gm.eval()
    with torch.no_grad():
        network.gm(torch.rand(4, 1, 32, 32))  # initialises the quantizers' data-driven values
    return network.fuse()


@pytest.mark.parametrize("nth", [1, 2])
def test_weights_quantized_swap_interrupted(nth: int, mnist_small: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    integer = _fused_report(mnist_small)
    target = tmp_path / "weights_quantized"
    integer.save(target)
    (target / "marker").write_text("old")
    before = snapshot(tmp_path)
    _interrupt_call(monkeypatch, Path, "rename", nth)
    with pytest.raises(KeyboardInterrupt):
        integer.save(target)
    assert snapshot(tmp_path) == before  # the old folder, whole, and nothing beside it


def test_weights_quantized_write_interrupted(mnist_small: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    integer = _fused_report(mnist_small)
    target = tmp_path / "weights_quantized"
    _interrupt_call(monkeypatch, weights_folder, "_write_into", 1)
    with pytest.raises(KeyboardInterrupt):
        integer.save(target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("nth", [1, 2])
def test_atomic_folder_swap_interrupted(nth: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "weights"
    target.mkdir()
    (target / "a.syntxt").write_text("old")
    before = snapshot(tmp_path)
    _interrupt_call(monkeypatch, Path, "rename", nth)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_folder(target) as tmp:
            (tmp / "a.syntxt").write_text("new")
    assert snapshot(tmp_path) == before


def test_swap_holds_signals_back(tmp_path: Path) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        with files.signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            held = list(received)
        assert held == [] and received == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
