"""The CUDA path, checked in one short run: the quantizers' compiled kernels on the GPU against the CPU eager
quantizers on the same batch, then one timed epoch of QAT and of float training on the GPU.

    .venv/bin/python scripts/gpu_check.py                   # on a machine with a GPU; writes gpu_check.json
    .venv/bin/python scripts/gpu_check.py --device cpu      # the same comparisons on the CPU (a smoke test)

Networks: the SAT W4A4 LeNet (``models/LeNet-QAT.ini``), the same LeNet with LSQ (as scripts/bench_accuracy.py
derives it) and the SAT W4A4 ResNet-20 (``models/ResNet20-cifar10-W4A4.ini``, CIFAR-10 from ``N2D2_DATA``,
default ``../shared/data`` beside the repository; skipped when absent). For each: the largest output and
gradient differences of one training step (device, kernels ``compiled`` on CUDA) against the CPU eager one,
both built with the same seed, then seconds per epoch of QAT and of the float network on the device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("N2D2_DATA", str(ROOT.parent / "shared" / "data"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import qatrun  # noqa: E402
from qatrun import quant, train  # noqa: E402

SEED = 1
MODELS = ROOT / "models"


def lsq_ini(folder: Path) -> Path:
    from bench_accuracy import method_ini

    path = folder / "LeNet-QAT-LSQ.ini"
    path.write_text(method_ini((MODELS / "LeNet-QAT.ini").read_text(), "LSQ"))
    return path


def step(network: qatrun.Network, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward in training mode (Dropout off: its masks come from each device's own
    generator): the output and every parameter's gradient (on the CPU)."""
    gm = network.gm.train()
    for module in gm.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    gm.zero_grad()
    out = gm(x)
    nn.functional.cross_entropy(out.reshape(out.shape[0], -1), y).backward()
    grads = {name: p.grad.detach().cpu() for name, p in gm.named_parameters() if p.grad is not None}
    return out.detach().cpu(), grads


def compare(ini: Path, overrides: list[str], device: torch.device, kernels: str) -> dict[str, float]:
    reference = qatrun.load(ini, overrides, seed=SEED, kernels="eager")
    tested = qatrun.load(ini, overrides, seed=SEED, kernels=kernels, device=device).to(device)
    data = reference.open_data()
    x, y = next(iter(data.loader("Learn", False, batch_size=reference.spec.batch_size)))
    ref_out, ref_grads = step(reference, x, y)
    out, grads = step(tested, x.to(device), y.to(device))
    relative = max(float((grads[k] - g).abs().max() / g.abs().max().clamp(min=1e-30)) for k, g in ref_grads.items())
    return {"max_output_diff": float((out - ref_out).abs().max()), "max_grad_rel_diff": relative,
            "kernels": tested.kernels.describe(), "batch": int(x.shape[0])}


def epoch_seconds(ini: Path, overrides: list[str], device: torch.device, kernels: str, float_net: bool) -> float:
    network = qatrun.load(ini, overrides, seed=SEED, kernels=kernels, device=device)
    if float_net:
        quant.unprepare(network.gm)
    network.to(device)
    data = network.open_data()
    optimizer = torch.optim.SGD(network.gm.parameters(), lr=0.01, momentum=0.9)
    gm = network.gm.train()
    start = time.perf_counter()
    for x, y in data.loader("Learn", True, epoch=0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        out = gm(x)
        nn.functional.cross_entropy(out.reshape(out.shape[0], -1), y).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--no-epochs", action="store_true", help="the step comparisons only")
    args = parser.parse_args()
    device = torch.device(args.device)
    kernels = "compiled" if device.type == "cuda" else "auto"
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    nets = {"LeNet SAT W4A4": (MODELS / "LeNet-QAT.ini", []), "LeNet LSQ W4A4": (lsq_ini(work), ["$LR=0.05"])}
    cifar = Path(os.environ["N2D2_DATA"]) / "cifar10"
    if cifar.is_dir():
        nets["ResNet-20 SAT W4A4"] = (MODELS / "ResNet20-cifar10-W4A4.ini", [])
    else:
        print(f"ResNet-20 skipped: no CIFAR-10 in {cifar}")
    report: dict[str, object] = {"device": str(device), "torch": torch.__version__,
                                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    for name, (ini, overrides) in nets.items():
        row: dict[str, object] = compare(ini, overrides, device, kernels)
        if not args.no_epochs:
            qat = epoch_seconds(ini, overrides, device, kernels, float_net=False)
            flt = epoch_seconds(ini, overrides, device, kernels, float_net=True)
            row.update(qat_epoch_s=qat, float_epoch_s=flt, qat_over_float=qat / flt)
        report[name] = row
        print(name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    out_dir = os.environ.get("OUT")
    if out_dir:
        (Path(out_dir) / Path(args.out).name).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
