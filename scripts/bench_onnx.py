#!/usr/bin/env python3
"""onnxruntime latency (batch 1) and throughput (batch 256) of the float, QDQ and integer-only ONNX files.

    .venv/bin/python scripts/bench_onnx.py                 # table on stdout, bench_onnx.json
    .venv/bin/python scripts/bench_onnx.py --quick         # fewer repetitions
    .venv/bin/python scripts/bench_onnx.py --threads 1 --no-optimize

Networks: LeNet as models/LeNet-QAT.ini describes it (SAT W4A4, 8-bit first and last layers), and
ResNet-20 in SAT W4A4 (models/ResNet20-cifar10-W4A4.ini; where that file is absent, this script applies
the same to models/ResNet20-cifar10.ini through ``-set``-style overrides: 4-bit weights, 8-bit stem and
classifier, a 4-bit SAT quantizer after every BatchNorm and every residual sum). The weights are random (the INI's fillers); BatchNorm statistics
and quantizer state come from a few training-mode batches of random images. The timings are what they
measure; the outputs mean nothing.

Two integer-only files: ``int`` from the default fusion (Floating-point rescaling, float64 rescale operators)
and ``int-fp32`` from ``-act-rescaling-mode Floating-point32``, whose layers onnxruntime runs as QLinearConv.

The four files of a network are timed side by side: every repetition runs each of them in turn (the
order rotating), and the table reports the median over repetitions, and the throughput over the float
file's as the median of per-repetition ratios (each ratio from runs moments apart, which a shared machine's
varying load disturbs less). Each file is checked at export (onnxruntime, optimizations off) against the
qatrun network; the integer files are also compared bit for bit with the optimizations the benchmark uses.

Reading the numbers: the ``int`` file is made to be exact in the default mode, not fast: onnxruntime's CPU
ConvInteger has none of the blocked kernels of its float Conv (on ResNet-20 it alone takes longer than the
whole float network), and each layer's float64 rescale adds about six element-wise operators over the
activations. The ``int-fp32`` file is exact too, in its own rescaling mode, and runs onnxruntime's int8
kernels (its first convolution, with 8-bit weights, keeps ConvInteger). The QDQ file is the one
onnxruntime turns into int8 kernels when its optimizations are on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import fx, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qatrun  # noqa: E402
from qatrun import data, export, ini, net, quant  # noqa: E402
from qatrun.fuse import FuseOptions, integerize  # noqa: E402

KINDS = {"float": "onnx", "qdq": "onnx-qdq", "int": "onnx-int", "int-fp32": "onnx-int"}
FUSED = {"int": FuseOptions(), "int-fp32": FuseOptions(rescaling="Floating-point32")}
THROUGHPUT_BATCH = 256

SAT_ACT = ("QAct=SAT", "QAct.Range=15", "QAct.Alpha=4.0")
RESNET_SUMS = [f"res{stage}.{block}_sum" for stage in (1, 2, 3) for block in (1, 2, 3)]
RESNET_W4A4 = (
    [f"[{base}]{key}" for base in ("Conv3x3_def", "Conv1x1_def") for key in ("QWeight=SAT", "QWeight.Range=15")]
    + ["[conv1]QWeight.Range=255", "[Bn_def]ActivationFunction=Linear"]
    + [f"[{section}]{key}" for section in ("BnRelu_def", "Bn_def", *RESNET_SUMS) for key in SAT_ACT]
    + ["[fc]QWeight=SAT", "[fc]QWeight.Range=255", "[fc]QWeight.ApplyScaling=1"]
)
RESNET_VARIANT = ROOT / "models" / "ResNet20-cifar10-W4A4.ini"
MODELS = {
    "LeNet": (ROOT / "models" / "LeNet-QAT.ini", []),
    "ResNet-20": (RESNET_VARIANT, []) if RESNET_VARIANT.is_file()
    else (ROOT / "models" / "ResNet20-cifar10.ini", RESNET_W4A4),
}


def images(shape: tuple[int, ...], count: int, seed: int) -> torch.Tensor:
    """Random 8-bit images ``p / 255``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *shape), generator=gen).float() / 255


def build(path: Path, overrides: list[str]) -> tuple[fx.GraphModule, tuple[int, int, int]]:
    """The quantized network of an INI, random weights, state from random images, in eval mode."""
    doc = ini.load(str(path), overrides=overrides)
    spec = data.DataSpec.from_doc(doc)
    spec.inject_epoch_size(1)  # solver schedules may refer to [sp]_EpochSize; nothing here learns or reads data
    shape = spec.input_shape
    gm = net.build(doc, shape)
    gm = quant.prepare(gm, qatrun.quant_plans(doc, gm), act_names=qatrun.network.activation_names(gm))
    for module in gm.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative averages over the calibration batches
    gm.train()
    with torch.no_grad():
        for k in range(3):
            gm(images(shape, 64, 100 + k))
    return gm.eval(), shape


def mean_seconds(call: Callable[[], object], count: int) -> float:
    """Mean wall time of ``count`` calls."""
    start = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - start) / count


def measure(runners: dict[str, export.OnnxRunner], shape: tuple[int, ...], reps: int, calls: int) -> dict:
    """Per file: latency samples (ms, batch 1) and throughput samples (images/s, batch 256), interleaved."""
    one = images(shape, 1, 7)
    many = images(shape, THROUGHPUT_BATCH, 8)
    feeds = {kind: (r.feed(one), r.feed(many)) for kind, r in runners.items()}
    samples: dict[str, dict[str, list[float]]] = {kind: {"latency_ms": [], "throughput": []} for kind in runners}
    order = list(runners)
    for kind in order:  # warm-up: first runs allocate
        runners[kind].run_numpy(feeds[kind][0])
        runners[kind].run_numpy(feeds[kind][1])
    for rep in range(reps):
        for kind in order[rep % len(order):] + order[: rep % len(order)]:
            runner, (x1, xn) = runners[kind], feeds[kind]
            samples[kind]["latency_ms"].append(1e3 * mean_seconds(lambda: runner.run_numpy(x1), calls))
            samples[kind]["throughput"].append(THROUGHPUT_BATCH / mean_seconds(lambda: runner.run_numpy(xn), 1))
    return samples


def bench_model(name: str, args: argparse.Namespace, folder: Path) -> dict:
    """Builds, exports, checks and times one network."""
    path, overrides = MODELS[name]
    gm, shape = build(path, overrides)
    int_gms = {kind: integerize(gm, options)[0] for kind, options in FUSED.items()}
    sample = images(shape, 64, 9)
    result: dict = {"ini": str(path.relative_to(ROOT)), "overrides": overrides,
                    "weights": export.weight_sizes(gm).as_dict(), "files": {}}
    runners = {}
    for kind, export_kind in KINDS.items():
        file = folder / f"{name}_{kind}.onnx"
        report = export.export(export_kind, gm, int_gms.get(kind), file, sample)
        print(report.summary(), flush=True)
        runners[kind] = export.OnnxRunner(file, optimize=args.optimize, threads=args.threads)
        result["files"][kind] = {"bytes": report.file_bytes, "check_max_abs_diff": report.max_abs_diff,
                                 "check_differing": report.differing, "check_ok": report.ok, "notes": report.notes}
        if report.layers is not None:
            result["files"][kind]["layer_check"] = vars(report.layers)
    for kind, int_gm in int_gms.items():
        (out,) = runners[kind].run_numpy(runners[kind].feed(sample))
        result["files"][kind]["bit_identical_as_benchmarked"] = bool(np.array_equal(out, int_gm(sample).numpy()))
        if kind == "int-fp32":
            result["files"][kind]["qlinearconv_layers"] = count_ops(folder / f"{name}_{kind}.onnx")
    samples = measure(runners, shape, args.reps, args.calls)
    base = samples["float"]["throughput"]
    for kind, values in samples.items():
        ratios = [t / b for t, b in zip(values["throughput"], base)]
        result["files"][kind].update({
            "latency_ms": statistics.median(values["latency_ms"]),
            "throughput_img_s": statistics.median(values["throughput"]),
            "throughput_vs_float": statistics.median(ratios),
            "samples": values,
        })
    return result


def count_ops(path: Path) -> dict[str, int]:
    """How many nodes of each accumulating type a file has (which layers took the QLinearConv form)."""
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    return {op: ops.count(op) for op in ("QLinearConv", "ConvInteger", "MatMulInteger") if op in ops}


def table(results: dict) -> str:
    """The report as a fixed-width table."""
    header = ("model", "file", "size", "latency b=1", "throughput b=256", "vs float", "check")
    rows = [header]
    for model, result in results.items():
        for kind, f in result["files"].items():
            if kind.startswith("int"):
                check = "bit-identical" if f["check_ok"] else f"{f['check_differing']} values differ"
                check += "" if f["bit_identical_as_benchmarked"] else " (not with these optimizations)"
            else:
                check = f"max |diff| {f['check_max_abs_diff']:.2g}"
                layers = f.get("layer_check")
                if layers and layers["flips"]:
                    check += (f"; layer by layer {layers['flips']} of {layers['levels']:,} levels flipped, "
                              f"{layers['off_tie']} not at a float32 tie")
            rows.append((model, kind, f"{f['bytes'] / 1024:,.1f} KiB", f"{f['latency_ms']:.3f} ms",
                         f"{f['throughput_img_s']:,.0f} img/s", f"{f['throughput_vs_float']:.2f}x", check))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for model, result in results.items():
        w = result["weights"]
        lines.append(f"{model} weights: {w['weights']:,} = {w['float32_bytes'] / 1024:,.1f} KiB float32, "
                     f"{w['int8_bytes'] / 1024:,.1f} KiB int8, {w['packed_bytes'] / 1024:,.1f} KiB packed at "
                     f"their bits (+ {w['other_bytes'] / 1024:,.1f} KiB float32 biases and BatchNorm)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions (the median is reported)")
    parser.add_argument("--calls", type=int, default=20, help="batch-1 calls per repetition")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--no-optimize", dest="optimize", action="store_false",
                        help="run with onnxruntime's graph optimizations off (as the exactness checks do)")
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 5 calls")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dir", type=Path, default=None, help="where to write the ONNX files (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench_onnx.json"), help="the JSON report")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.calls = 3, 5
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    meta = {
        "load_average_start": os.getloadavg(),
        "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads or "default",
        "graph_optimizations": "all" if args.optimize else "off", "reps": args.reps, "calls": args.calls,
        "weights": "random (fillers), BatchNorm and quantizer state from random images: timings only",
    }
    print(f"onnxruntime {onnxruntime.__version__} on {os.cpu_count()} CPUs, threads {meta['threads']}, graph "
          f"optimizations {meta['graph_optimizations']}; {meta['weights']}; median of {args.reps} interleaved "
          "repetitions", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = {name: bench_model(name, args, folder) for name in args.models}
    print()
    print(table(results))
    meta["load_average_end"] = os.getloadavg()
    args.out.write_text(json.dumps({"meta": meta, "models": results}, indent=2) + "\n")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
