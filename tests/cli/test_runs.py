"""End-to-end runs of the command on real MNIST (a subset, to stay fast): learn, test, QAT, fusion."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

def run_qatrun(args: list[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m qatrun ARGS`` in ``cwd``; returns the finished process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "qatrun", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def final_rate(output: str) -> float:
    """The last ``Final recognition rate: X%`` of a run's output."""
    lines = [line for line in output.splitlines() if line.startswith("Final recognition rate:")]
    assert lines, output
    return float(lines[-1].split(":")[1].split("%")[0])


LENET = str(REPO / "models" / "LeNet.ini")
QAT_CLAMP = str(REPO / "models" / "LeNet-QAT-clamp.ini")
QAT = str(REPO / "models" / "LeNet-QAT.ini")


def _data(subset: Path) -> list[str]:
    return ["-set", f"[database]DataPath={subset}"]


def test_summary_prints_every_layer_and_totals(tmp_path: Path) -> None:
    proc = run_qatrun([LENET], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line and line.split()}
    assert rows["conv2"][3] == "16x10x10" and rows["conv2"][4] == "1,500"  # 60 kernels x 25, NoBias=1
    assert "Total parameters: 60,570" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the summary writes nothing


def test_set_override_reaches_the_network_and_errors_name_the_command_line(tmp_path: Path) -> None:
    proc = run_qatrun([LENET, "-set", "[fc1]NbOutputs=100"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:5] == ["fc1", "Fc", "conv3", "100x1x1", "12,000"] for line in proc.stdout.splitlines())
    proc = run_qatrun([LENET, "-set", "[fc1]NbOutputs=8.5"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: <command line>: [fc1] NbOutputs:"), proc.stderr


def test_float_learning_on_real_mnist(tmp_path: Path, mnist_subset: Path) -> None:
    proc = run_qatrun([LENET, "-learn-epoch", "1", "-test", "-seed", "3", *_data(mnist_subset)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 4,800 learning images, one epoch: a working LeNet is far above chance (10%).
    assert final_rate(proc.stdout) >= 85.0, proc.stdout[-2000:]
    for name in ("weights_validation", "weights_init", "seed.dat", "LeNet.ini.resolved"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "weights_validation" / "conv2_weights.syntxt").is_file()
    assert (tmp_path / "weights_validation" / "conv2_weights.distrib.png").is_file()
    resolved = (tmp_path / "LeNet.ini.resolved").read_text()
    assert "; seed: 3" in resolved and "torch" in resolved and "LeNet.ini:" in resolved
    assert "; kernels: eager" in resolved  # QATRUN_KERNELS=eager (tests/conftest.py), read once
    # Testing again from the saved weights gives the same rate.
    again = run_qatrun([LENET, "-test", "-seed", "3", *_data(mnist_subset)], tmp_path)
    assert again.returncode == 0, again.stderr
    assert final_rate(again.stdout) == final_rate(proc.stdout)


def test_two_phase_qat_then_exact_fusion(tmp_path: Path, mnist_subset: Path) -> None:
    data = _data(mnist_subset)
    phase1 = run_qatrun([QAT_CLAMP, "-learn-epoch", "1", "-seed", "5", *data], tmp_path)
    assert phase1.returncode == 0, phase1.stderr[-3000:]
    (tmp_path / "weights").rename(tmp_path / "weights_clamped")
    # Phase 1 runs the eager quantizer kernels (tests/conftest.py), phase 2 the compiled ones (the default
    # of a user's run): both through the real command.
    phase2 = run_qatrun([QAT, "-learn-epoch", "1", "-seed", "5", "-w", "weights_clamped", *data], tmp_path,
                        env={"QATRUN_KERNELS": "compiled"})
    assert phase2.returncode == 0, phase2.stderr[-3000:]
    rate = final_rate(phase2.stdout)
    # W4A4 after one short epoch per phase: a broken quantizer (all-zero levels, wrong grid, no gradient)
    # stays near chance.
    assert rate >= 85.0, phase2.stdout[-2000:]
    assert (tmp_path / "weights" / "bn1_QAct_SAT_Alpha.syntxt").is_file()
    assert "; kernels: native (CPU C++)" in (tmp_path / "LeNet-QAT.ini.resolved").read_text()  # named once, here
    fused = run_qatrun([QAT, "-test", "-qat-fuse", "-seed", "5", "-w", "weights", *data], tmp_path)
    assert fused.returncode == 0, fused.stderr[-3000:] + fused.stdout[-3000:]
    assert " 0 of 1000 predictions differ" in fused.stdout, fused.stdout[-2000:]
    assert final_rate(fused.stdout) == rate
    assert (tmp_path / "weights_quantized" / "conv2_weights.syntxt").is_file()
    assert (tmp_path / "fusion_report.txt").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one(tmp_path: Path, mnist_subset: Path) -> None:
    args = [LENET, "-learn-epoch", "4", "-test", "-seed", "7", *_data(mnist_subset)]
    single_dir, dist_dir = tmp_path / "single", tmp_path / "dist"
    single_dir.mkdir()
    dist_dir.mkdir()
    single = run_qatrun(args, single_dir)
    assert single.returncode == 0, single.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(_free_port()), "-m", "qatrun", *args],
        cwd=dist_dir, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Final recognition rate:") == 1  # rank 0 alone speaks
    print(f"torchrun 2 processes: {final_rate(proc.stdout)}%, one process: {final_rate(single.stdout)}%")
    # Not the same trajectory: each rank normalises BatchNorm over its half batch, and float sums in another
    # order drift apart over 4 epochs (one process alone gave 93.7% with 1 thread and 95.5% with 2). On 1,000
    # test images that noise is about 1 point; a run whose ranks do not train together stays far below.
    assert abs(final_rate(proc.stdout) - final_rate(single.stdout)) <= 3.0


def test_only_rank_0_writes(tmp_path: Path, mnist_subset: Path) -> None:
    """The two ranks run in different folders: everything lands in rank 0's, nothing in rank 1's."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        folder = tmp_path / f"rank{rank}"
        folder.mkdir()
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "qatrun", LENET, "-learn-epoch", "1", "-seed", "7",
             *_data(mnist_subset)], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert (tmp_path / "rank0" / "weights_validation").is_dir()
    assert list((tmp_path / "rank1").iterdir()) == []


def _wait_policy(code: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_openmp_defaults_apply_before_torch_and_yield_to_the_environment() -> None:
    code = ("import os; from qatrun.cli import apply_openmp_defaults; apply_openmp_defaults(); "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    assert _wait_policy(code, {}) == "ACTIVE"
    assert _wait_policy(code, {"OMP_WAIT_POLICY": "PASSIVE"}) == "PASSIVE"
    late = "import torch, os; " + code.split("; ", 1)[1]  # torch already loaded OpenMP: nothing to change
    assert _wait_policy(late, {}) == "None"
