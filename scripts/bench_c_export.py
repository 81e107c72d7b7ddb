#!/usr/bin/env python3
"""The C export (``-export c``) measured: ROM and RAM against the float32 weights and the sum of all
activations, the Cortex-M4 text/data/bss, and images per second of the compiled C on this CPU beside
onnxruntime's integer and float files at batch 1 (one thread each), with the proof of every export.

    .venv/bin/python scripts/bench_c_export.py --lenet-weights run/weights         # bench_c_export.{json,md}
    .venv/bin/python scripts/bench_c_export.py --quick --networks lenet             # 200 images, no ARM

Networks: the SAT W4A4 LeNet of models/LeNet-QAT.ini (weights from ``--lenet-weights``, a weights folder of
the README's recipe; without it the INI's initial weights), ResNet-20 W4A4 (models/ResNet20-cifar10-W4A4.ini,
residual) and MobileNet-v1 (models/MobileNet-v1-cifar10.ini made W4A4 through overrides, depthwise), both on
the CIFAR-10 data that ``N2D2_DATA`` (or a ``shared/data`` folder beside the repository) provides, with their
initial weights and BatchNorm statistics from a few training-mode batches: their sizes and speeds are what
they measure, their recognition rates mean nothing. Each export is proven on ``--images`` Test images on the
host (and under qemu-arm with ``--arm``) before it is timed.

The C is timed by the wall clock around its harness (``qatrun_test -repeat R`` against a run without
``-repeat``, about 3,000 images; the better of two); onnxruntime by the mean wall time of ``--calls`` runs of
one image, graph optimizations on, one intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qatrun  # noqa: E402
from qatrun.export.c import export_c  # noqa: E402
from qatrun.export.runtime import OnnxRunner  # noqa: E402

MOBILENET_W4A4 = ["[Conv_def]QWeight=SAT", "[Conv_def]QWeight.Range=15", "[BnRelu_def]QAct=SAT",
                  "[BnRelu_def]QAct.Range=15", "[BnRelu_def]QAct.Alpha=6.0", "[BnRelu_def]ActivationFunction=Linear",
                  "[conv1]QWeight.Range=255", "[fc]QWeight=SAT", "[fc]QWeight.Range=255",
                  "[fc]QWeight.ApplyScaling=1"]
NETWORKS = {
    "lenet": ("LeNet W4A4 (SAT)", ROOT / "models" / "LeNet-QAT.ini", []),
    "resnet20": ("ResNet-20 W4A4 (SAT, residual)", ROOT / "models" / "ResNet20-cifar10-W4A4.ini", []),
    "mobilenet": ("MobileNet-v1 W4A4 (SAT, depthwise)", ROOT / "models" / "MobileNet-v1-cifar10.ini", MOBILENET_W4A4),
}


def load(key: str, weights: str | None) -> tuple[qatrun.Network, object, str]:
    """The network, its data, and where its weights came from."""
    _, ini, overrides = NETWORKS[key]
    network = qatrun.load(str(ini), overrides, seed=1)
    data = network.open_data()
    if key == "lenet" and weights:
        network.load_weights(weights)
        return network, data, f"trained ({weights})"
    network.gm.train()  # BatchNorm statistics and quantizer state from a few batches; no weight update
    with torch.no_grad():
        for k, (x, _) in enumerate(data.loader("Learn", False)):
            network.gm(x)
            if k == 3:
                break
    network.gm.eval()
    return network, data, "initial (random fillers, BatchNorm statistics from 4 batches)"


def ort_ms(path: Path, x: torch.Tensor, calls: int) -> float:
    """Mean milliseconds per image of one onnxruntime run at batch 1 (optimizations on, one thread)."""
    runner = OnnxRunner(path, optimize=True, threads=1)
    feeds = [runner.feed(x[k:k + 1]) for k in range(min(calls, x.shape[0]))]
    runner.run_numpy(feeds[0])
    start = time.perf_counter()
    for k in range(calls):
        runner.run_numpy(feeds[k % len(feeds)])
    return 1e3 * (time.perf_counter() - start) / calls


def c_wall_ms(folder: Path, count: int, runs: int = 3000) -> float:
    """Wall milliseconds per image of the compiled harness: ``-repeat R`` against a run without, so that
    reading the images and starting the program drop out (the same clock as onnxruntime's)."""
    program = [str((folder / "qatrun_test_host").resolve()), "test_data.bin"]
    repeat = max(1, runs // max(1, count))

    def wall(extra: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(program + extra, cwd=folder, check=True, capture_output=True)
        return time.perf_counter() - start

    base = min(wall([]) for _ in range(2))
    timed = min(wall(["-repeat", str(repeat)]) for _ in range(2))
    return 1e3 * max(timed - base, 0.0) / (repeat * count)


def bench(key: str, mode: str, args: argparse.Namespace, folder: Path) -> dict:
    title, _, _ = NETWORKS[key]
    network, data, origin = load(key, args.lenet_weights)
    integer = network.fuse(rescaling=mode)
    targets = ("host", "arm") if args.arm else ("host",)
    out = folder / f"{key}-{mode}"
    batches, total = [], 0
    for xb, yb in data.loader("Test", False):
        batches.append((xb, torch.as_tensor(yb)))
        total += xb.shape[0]
        if total >= args.images:
            break
    images = torch.cat([b for b, _ in batches])[:args.images]
    labels = torch.cat([b for _, b in batches])[:args.images]
    report = export_c(integer.module, out / "c", images, labels, targets=targets, title=key)
    x = images[:max(1, min(args.calls, images.shape[0]))]
    int_file, float_file = out / "int.onnx", out / "float.onnx"
    integer.export(int_file, x[:16])
    network.export("onnx", float_file, x[:16])
    c_ms = c_wall_ms(out / "c", images.shape[0])
    row = {
        "network": title, "key": key, "mode": mode, "weights": origin, "ok": report.ok,
        "proof": [c.line().strip() for c in report.checks], "rom": report.rom, "ram": report.ram, "m4": report.m4,
        "c_ms": c_ms, "ort_int_ms": ort_ms(int_file, x, args.calls), "ort_float_ms": ort_ms(float_file, x, args.calls),
        "c_rate": report.checks[0].rate,
    }
    print(f"{title} {mode}: {report.summary()}\n  C {c_ms:.4f} ms, onnxruntime int {row['ort_int_ms']:.4f} ms, "
          f"float {row['ort_float_ms']:.4f} ms per image", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| network | mode | ROM (weights) | float32 weights | RAM (arena) | activations at float32 | Cortex-M4 text/data/bss "
        "| C images/s | onnxruntime int images/s | onnxruntime float images/s | proof |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m4 = r["m4"]
        m4_text = f"{m4['text']:,} / {m4['data']:,} / {m4['bss']:,}" if isinstance(m4, dict) else "n/a"
        proof = "; ".join(r["proof"])
        lines.append(
            f"| {r['network']} | {r['mode']} | {r['rom']['total']:,} ({r['rom']['weights']:,}) | "
            f"{r['rom']['float32_weights']:,} | {r['ram']['total']:,} ({r['ram']['arena']:,}) | "
            f"{r['ram']['activations_float32']:,} | {m4_text} | {1e3 / r['c_ms']:,.0f} | "
            f"{1e3 / r['ort_int_ms']:,.0f} | {1e3 / r['ort_float_ms']:,.0f} | {proof} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="lenet,resnet20,mobilenet")
    parser.add_argument("--modes", default="Floating-point,Fixed-point16,Single-shift")
    parser.add_argument("--lenet-weights", help="weights folder of the SAT W4A4 LeNet (README recipe)")
    parser.add_argument("--images", type=int, default=1000, help="Test images of each proof [1000]")
    parser.add_argument("--calls", type=int, default=500, help="onnxruntime runs timed [500]")
    parser.add_argument("--arm", action="store_true", help="prove under qemu-arm too")
    parser.add_argument("--quick", action="store_true", help="200 images, 200 calls")
    parser.add_argument("--out", default="bench_c_export", help="stem of the .json and .md files")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.calls = 200, 200
    os.environ.setdefault("N2D2_DATA", str(ROOT.parent / "shared" / "data"))
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.networks.split(","):
            for mode in args.modes.split(","):
                try:
                    rows.append(bench(key, mode, args, Path(tmp)))
                except qatrun.QatrunError as e:
                    skipped.append(f"{key} {mode}: {e}")
                    print(f"skipped {key} {mode}: {e}", file=sys.stderr)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "cc": os.environ.get("CC", "cc")}
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows, "skipped": skipped}, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(table(rows) + "\n" + "".join(f"\nskipped: {s}" for s in skipped) + "\n")
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
