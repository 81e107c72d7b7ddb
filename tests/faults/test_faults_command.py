"""Faults of the command line, the run folder and the file system: each refused on one line naming the option,
file or value (exit 2, no traceback), with the folder left as it was wherever nothing should change.

A value follows its option as the next argument or after ``=``; a number out of range is refused while the
command line is parsed, before torch is even imported. A run that writes into its folder holds
``.qatrun.lock`` for its duration; a run that only tests writes nothing and needs no write access. A full disk
is simulated by a ``sitecustomize`` shim (:func:`enospc_env`) that makes writes under a folder fail with
``ENOSPC``, and for real on a 64 KiB tmpfs where ``mount`` works.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.faults.conftest import LENET, QAT, assert_refused, data_args, run_qatrun, snapshot

LOCK = ".qatrun.lock"


def _prior_record(folder: Path) -> dict[str, str]:
    """A folder as an earlier run left it: its seed and its record."""
    (folder / "seed.dat").write_text("7\n")
    (folder / "LeNet.ini.resolved").write_text("; qatrun run record of an earlier run\n")
    return snapshot(folder)


def _write_lock(folder: Path, pid: int, host: str | None = None,
                started: str = "2026-01-01 00:00:00 UTC") -> None:
    (folder / LOCK).write_text(f"pid={pid}\nhost={host or socket.gethostname()}\nstarted={started}\n")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process (until the system reuses it)
    return proc.pid


# ------------------------------------------------------------------------------------------ the command line


@pytest.mark.parametrize(("args", "names"), [
    pytest.param(["-learn-epochs", "100"], ["'-learn-epochs'", "did you mean '-learn-epoch'"],
                 id="misspelt-with-value"),
    pytest.param(["-learn-epochs"], ["'-learn-epochs'", "did you mean '-learn-epoch'"], id="misspelt-alone"),
    pytest.param(["--test"], ["'--test'", "did you mean '-test'"], id="double-dash"),
    pytest.param(["-lnet_state"], ["'-lnet_state'"], id="value-glued-to-l"),
    pytest.param(["-wweights", "-test"], ["'-wweights'"], id="value-glued-to-w"),
    pytest.param(["-test", "-tset-onnx", "x.onnx"], ["'-tset-onnx'", "did you mean '-test-onnx'"],
                 id="misspelt-among-valid"),
])
def test_unknown_option_is_refused_by_its_name(tmp_path: Path, mnist_small: Path, args: list[str],
                                               names: list[str]) -> None:
    before = snapshot(tmp_path)
    proc = run_qatrun([LENET, *args, *data_args(mnist_small)], tmp_path)
    line = assert_refused(proc, *names, before=before, folder=tmp_path)
    assert "unknown option" in line


@pytest.mark.parametrize(("args", "option", "value"), [
    pytest.param(["-learn-epoch", "-1"], "-learn-epoch", "-1", id="learn-epoch-negative"),
    pytest.param(["-learn-epoch", "1" + "0" * 30], "-learn-epoch", "1" + "0" * 30, id="learn-epoch-huge"),
    pytest.param(["-learn", "1" + "0" * 30], "-learn", "1" + "0" * 30, id="learn-huge"),
    pytest.param(["-learn", "10**30"], "-learn", "10**30", id="learn-not-an-integer"),
    pytest.param(["-learn-epoch", "1", "-log-epoch", "-3"], "-log-epoch", "-3", id="log-epoch-negative"),
    pytest.param(["-learn", "100", "-log", "0"], "-log", "0", id="log-zero"),
    pytest.param(["-learn-epoch", "1", "-seed", "-5"], "-seed", "-5", id="seed-negative"),
    pytest.param(["-test", "-seed", "99999999999999999999"], "-seed", "99999999999999999999", id="seed-huge"),
    pytest.param(["-learn-epoch", "1", "-stop-valid", "-2"], "-stop-valid", "-2", id="stop-valid-negative"),
    pytest.param(["-test", "-dev", "-7"], "-dev", "-7", id="dev-below-cpu"),
])
def test_number_out_of_range_is_refused_at_parsing(tmp_path: Path, mnist_small: Path, args: list[str],
                                                   option: str, value: str) -> None:
    before = _prior_record(tmp_path)
    proc = run_qatrun([LENET, *args, *data_args(mnist_small)], tmp_path, timeout=300)
    assert_refused(proc, f"argument {option}:", value, before=before, folder=tmp_path)


def test_value_after_equals_is_taken(tmp_path: Path, mnist_small: Path) -> None:
    proc = run_qatrun([LENET, "-seed=3", "-w=/dev/null", "-test", *data_args(mnist_small)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using seed 3 " in proc.stdout
    assert "Final recognition rate:" in proc.stdout


# ------------------------------------------------------------------------- nothing written before it is valid


@pytest.mark.parametrize(("args", "names"), [
    pytest.param(["-learn-epoch", "1", "-w", "nowhere"], ["nowhere"], id="missing-w"),
    pytest.param(["-learn-epoch", "1", "-l", "nowhere"], ["nowhere"], id="missing-l"),
    pytest.param(["-qat-fuse"], ["-qat-fuse", "quantized"], id="qat-fuse-of-a-float-network"),
    pytest.param(["-export", "onnx-qdq"], ["onnx-qdq", "quantized"], id="qdq-of-a-float-network"),
])
def test_refused_run_leaves_the_folder_as_it_was(tmp_path: Path, mnist_small: Path, args: list[str],
                                                 names: list[str]) -> None:
    before = _prior_record(tmp_path)
    proc = run_qatrun([LENET, *args, *data_args(mnist_small)], tmp_path)
    assert_refused(proc, *names, before=before, folder=tmp_path)


def test_l_of_a_file_that_is_no_state_leaves_the_folder_as_it_was(tmp_path: Path, mnist_small: Path) -> None:
    state = tmp_path / "net_state"
    state.mkdir()
    (state / "state.pt").write_bytes(b"not a torch file")
    before = _prior_record(tmp_path)
    proc = run_qatrun([LENET, "-learn-epoch", "1", "-seed", "7", "-l", "net_state", *data_args(mnist_small)],
                      tmp_path)
    assert_refused(proc, "net_state", before=before, folder=tmp_path)


def test_test_only_run_writes_nothing(tmp_path: Path, mnist_small: Path) -> None:
    before = _prior_record(tmp_path)
    proc = run_qatrun([LENET, "-test", *data_args(mnist_small)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using seed 7 " in proc.stdout  # seed.dat re-read, not rewritten
    assert snapshot(tmp_path) == before


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` made read-only: by its mode, or for root (whom modes do not stop) by a read-only bind mount."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only folder as root: {mounted.stderr.decode().strip()}")
    try:
        if os.access(folder, os.W_OK) and subprocess.run(["touch", str(folder / ".probe")]).returncode == 0:
            (folder / ".probe").unlink()
            pytest.skip("the read-only bind mount is writable here")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_test_only_run_works_in_a_read_only_folder(tmp_path: Path, mnist_small: Path) -> None:
    before = _prior_record(tmp_path)
    with read_only(tmp_path):
        proc = run_qatrun([LENET, "-test", *data_args(mnist_small)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Final recognition rate:" in proc.stdout
    assert snapshot(tmp_path) == before


def test_learning_in_a_read_only_folder_names_the_path(tmp_path: Path, mnist_small: Path) -> None:
    before = _prior_record(tmp_path)
    with read_only(tmp_path):
        proc = run_qatrun([LENET, "-learn-epoch", "1", *data_args(mnist_small)], tmp_path)
    line = assert_refused(proc, LOCK, before=before, folder=tmp_path)
    assert "Read-only file system" in line or "Permission denied" in line


# ------------------------------------------------------------------------------------------ a full disk


SHIM = '''
"""Test shim: opening a file for writing under $FAULT_ENOSPC_DIR whose name contains $FAULT_ENOSPC_MATCH
fails with ENOSPC, as on a full disk."""
import builtins, errno, io, os

_DIR = os.environ["FAULT_ENOSPC_DIR"]
_MATCH = os.environ.get("FAULT_ENOSPC_MATCH", "")


def _full(file, writing):
    if not writing or not isinstance(file, (str, bytes, os.PathLike)):
        return False
    path = os.path.abspath(os.fsdecode(file))
    return path.startswith(_DIR + os.sep) and _MATCH in os.path.basename(path)


def _refuse(file):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(file))


_io_open = io.open
_os_open = os.open


def _open(file, mode="r", *args, **kwargs):
    if _full(file, any(c in mode for c in "wax+")):
        _refuse(file)
    return _io_open(file, mode, *args, **kwargs)


def _low_open(file, flags, *args, **kwargs):
    if _full(file, flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
        _refuse(file)
    return _os_open(file, flags, *args, **kwargs)


builtins.open = io.open = _open
os.open = _low_open
'''


def enospc_env(tmp_path: Path, folder: Path, match: str) -> dict[str, str]:
    """The environment under which writes of files named ``*match*`` under ``folder`` fail with ENOSPC."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(textwrap.dedent(SHIM))
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "FAULT_ENOSPC_DIR": str(folder.resolve()), "FAULT_ENOSPC_MATCH": match}


def test_full_disk_while_writing_the_record_leaves_it_as_it_was(tmp_path: Path, mnist_small: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    before = _prior_record(run_dir)
    env = enospc_env(tmp_path, run_dir, ".resolved")
    proc = run_qatrun([LENET, "-learn-epoch", "1", *data_args(mnist_small)], run_dir, env=env)
    line = assert_refused(proc, "LeNet.ini.resolved", "No space left on device", before=before, folder=run_dir)
    assert "run record" in line


def test_full_disk_while_saving_weights_names_the_file(tmp_path: Path, mnist_small: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = enospc_env(tmp_path, run_dir, "_weights")
    proc = run_qatrun([LENET, "-learn-epoch", "1", *data_args(mnist_small)], run_dir, env=env)
    assert_refused(proc, "_weights", "No space left on device")
    assert not (run_dir / LOCK).exists()


def test_full_disk_on_a_real_small_tmpfs_names_the_file(tmp_path: Path, mnist_small: Path) -> None:
    run_dir = tmp_path / "tiny"
    run_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(run_dir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = run_qatrun([LENET, "-learn-epoch", "1", *data_args(mnist_small)], run_dir)
        assert_refused(proc, "No space left on device")
        assert not (run_dir / LOCK).exists()
    finally:
        subprocess.run(["umount", str(run_dir)], check=True)


# ------------------------------------------------------------------------------------------ one run per folder


def test_second_run_in_a_folder_in_use_is_refused_naming_the_first(tmp_path: Path, mnist_small: Path) -> None:
    args = [LENET, "-learn-epoch", "1", "-seed", "3", *data_args(mnist_small)]
    first = subprocess.Popen([sys.executable, "-m", "qatrun", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / LOCK).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / LOCK).exists(), "the first run took no lock"
        second = run_qatrun(args, tmp_path)
        assert_refused(second, f"pid {first.pid}", "started", LOCK)
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert out.count("Final recognition rate:") == 1
    assert not (tmp_path / LOCK).exists()


def test_test_only_run_is_refused_while_a_run_holds_the_folder(tmp_path: Path, mnist_small: Path) -> None:
    _write_lock(tmp_path, os.getpid(), started="2026-05-05 05:05:05 UTC")  # this test's process: alive
    before = _prior_record(tmp_path)
    proc = run_qatrun([LENET, "-test", *data_args(mnist_small)], tmp_path)
    assert_refused(proc, f"pid {os.getpid()}", "2026-05-05 05:05:05", before=before, folder=tmp_path)


@pytest.mark.parametrize("holder", ["dead-pid", "other-host", "garbage"])
def test_stale_lock_is_replaced(tmp_path: Path, mnist_small: Path, holder: str) -> None:
    if holder == "dead-pid":
        _write_lock(tmp_path, _dead_pid())
    elif holder == "other-host":
        _write_lock(tmp_path, os.getpid(), host="elsewhere.invalid")
    else:
        (tmp_path / LOCK).write_bytes(b"\x00\xff not a lock")
    proc = run_qatrun([LENET, "-fuse", "-w", "/dev/null", *data_args(mnist_small)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stale lock" in proc.stderr
    assert not (tmp_path / LOCK).exists()
    assert (tmp_path / "LeNet.ini.resolved").is_file()


# ------------------------------------------------------------------------------------------ -test-onnx


def _onnx_file(path: Path, shape: list[int | str], reshape_to: list[int] | None = None) -> Path:
    """A tiny ONNX model taking ``shape`` (Flatten, or a Reshape to ``reshape_to``)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if reshape_to is None:
        nodes, inits = [helper.make_node("Flatten", ["x"], ["y"])], []
    else:
        inits = [helper.make_tensor("shape", TensorProto.INT64, [len(reshape_to)], reshape_to)]
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_onnx_of_garbage_bytes_names_the_file(tmp_path: Path, mnist_small: Path) -> None:
    (tmp_path / "garbage.onnx").write_bytes(os.urandom(4096))
    before = snapshot(tmp_path)
    proc = run_qatrun([LENET, "-test-onnx", "garbage.onnx", *data_args(mnist_small)], tmp_path)
    line = assert_refused(proc, "garbage.onnx", before=before, folder=tmp_path)
    assert "cannot read" in line and "ONNX model" in line


def test_onnx_of_another_input_shape_names_the_file_and_both_shapes(tmp_path: Path, mnist_small: Path) -> None:
    _onnx_file(tmp_path / "cifar.onnx", ["N", 3, 32, 32])
    before = snapshot(tmp_path)
    proc = run_qatrun([LENET, "-test-onnx", "cifar.onnx", *data_args(mnist_small)], tmp_path)
    assert_refused(proc, "cifar.onnx", "(N, 3, 32, 32)", "(1, 32, 32)", before=before, folder=tmp_path)


def test_onnx_that_fails_to_run_names_the_file(tmp_path: Path, mnist_small: Path) -> None:
    _onnx_file(tmp_path / "bad.onnx", ["N", "C", "H", "W"], reshape_to=[-1, 13])  # 784 pixels: no row of 13
    before = snapshot(tmp_path)
    proc = run_qatrun([LENET, "-test-onnx", "bad.onnx", *data_args(mnist_small)], tmp_path)
    line = assert_refused(proc, "bad.onnx", before=before, folder=tmp_path)
    assert "cannot run" in line


def test_bad_onnx_is_refused_before_learning(tmp_path: Path, mnist_small: Path) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01garbage")
    before = _prior_record(tmp_path)
    proc = run_qatrun([QAT, "-learn-epoch", "1", "-test-onnx", "garbage.onnx", *data_args(mnist_small)], tmp_path)
    assert_refused(proc, "garbage.onnx", before=before, folder=tmp_path)
    assert "Final recognition rate" not in proc.stdout
