#!/usr/bin/env python3
"""Post-training calibration on real data: one table per network, every row from the same float weights.

* LeNet (``models/LeNet.ini``) on the MNIST shipped with qatrun, float weights from ``-learn-epoch 3``
  (``$EPOCHS=3``, the 3 float epochs of N2D2's measured anchor);
* ResNet-20 (``models/ResNet20-cifar10.ini``) on the CIFAR-10 subset (``N2D2_DATA``, else ``../shared/data``),
  float weights from a short run (``--resnet-epochs``).

Each row calibrates a fresh copy of the float network on the whole Validation partition (``-calib -1``),
then gives the fake-quantized test rate, the integer network's test rate, and the verification of the
integer network against the fake-quantized one (the exact Floating-point rescaling: predictions that differ
against the float64 reference, which must be 0; against the float32 network as it runs).

    .venv/bin/python scripts/bench_calibration.py                       # both tables (ResNet-20: minutes)
    .venv/bin/python scripts/bench_calibration.py --networks lenet --quick
    .venv/bin/python scripts/bench_calibration.py --workdir runs/calib  # float runs kept and reused

Writes ``bench_calibration.json`` and ``bench_calibration.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qatrun  # noqa: E402
from qatrun import calib  # noqa: E402

ROWS = (  # (label, options)
    ("8-bit, None (max-abs), per layer", calib.CalibOptions(bits=8, act_clipping="None")),
    ("8-bit, MSE, per layer", calib.CalibOptions(bits=8, act_clipping="MSE")),
    ("8-bit, KL-Divergence, per layer", calib.CalibOptions(bits=8, act_clipping="KL-Divergence")),
    ("8-bit, Quantile 0.9999, per layer", calib.CalibOptions(bits=8, act_clipping="Quantile")),
    ("8-bit, MSE, per output", calib.CalibOptions(bits=8, act_clipping="MSE", per_output=True)),
    ("8-bit, KL-Divergence, per output", calib.CalibOptions(bits=8, act_clipping="KL-Divergence", per_output=True)),
    ("4-bit, MSE, per layer", calib.CalibOptions(bits=4, act_clipping="MSE")),
    ("4-bit, KL-Divergence, per layer", calib.CalibOptions(bits=4, act_clipping="KL-Divergence")),
    ("4-bit, MSE, per output", calib.CalibOptions(bits=4, act_clipping="MSE", per_output=True)),
    ("4-bit, MSE, per output, weights MSE", calib.CalibOptions(bits=4, per_output=True, wt_clipping="MSE")),
    ("2-bit, MSE, per output", calib.CalibOptions(bits=2, act_clipping="MSE", per_output=True)),
    ("2-bit, MSE, per output, weights MSE", calib.CalibOptions(bits=2, per_output=True, wt_clipping="MSE")),
)


@dataclass
class Row:
    label: str
    fake: float
    integer: float
    differ_exact: int
    differ_float32: int
    verified: bool
    calib_s: float
    verify_s: float


def _rate(metrics: object) -> float:
    return round(100 * float(metrics.recognition_rate), 2)  # type: ignore[attr-defined]


def _float_weights(ini: Path, sets: list[str], epochs: int, folder: Path, say) -> Path:
    weights = folder / "weights_validation"
    if weights.is_dir():
        say(f"reusing {weights}")
        return weights
    folder.mkdir(parents=True, exist_ok=True)
    network = qatrun.load(ini, [*sets, f"$EPOCHS={epochs}"], seed=1)
    data = network.open_data()
    start = time.time()
    network.learn(data, epochs=epochs, out_dir=folder, say=lambda s: None)
    say(f"float {ini.name}: {epochs} epochs in {time.time() - start:.0f} s")
    return weights


def bench(ini: Path, sets: list[str], weights: Path, rows, say) -> tuple[float, list[Row]]:
    network = qatrun.load(ini, sets, seed=1)
    data = network.open_data()
    network.load_weights(weights)
    float_rate = _rate(network.test(data))
    say(f"{ini.name}: float {float_rate}%  (calibration: {data.size('Validation')} Validation images, "
        f"test: {data.size('Test')} images)")
    results = []
    for label, options in rows:
        network = qatrun.load(ini, sets, seed=1)
        network.load_weights(weights)
        start = time.time()
        network.calibrate(data, -1, options, out_dir=None, say=lambda s: None)
        calib_s = time.time() - start
        fake = _rate(network.test(data))
        integer = network.fuse()
        start = time.time()
        report = integer.verify(data)
        verify_s = time.time() - start
        row = Row(label, fake, _rate(integer.test(data)), report.differing_predictions,
                  report.f32_differing_predictions, report.ok, round(calib_s, 1), round(verify_s, 1))
        say(f"  {label:40s} fake {row.fake:6.2f}%  integer {row.integer:6.2f}%  differ {row.differ_exact} "
            f"(float32 net: {row.differ_float32})  verified {row.verified}  [{calib_s:.0f} s + {verify_s:.0f} s]")
        results.append(row)
    return float_rate, results


def table(name: str, float_rate: float, rows: list[Row]) -> str:
    lines = [f"### {name}", "", f"float: {float_rate:.2f}%", "",
             "| calibration | fake-quantized | integer | drop from float | differing (exact / float32 net) | verified |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {r.fake:.2f}% | {r.integer:.2f}% | {float_rate - r.fake:+.2f} | "
                     f"{r.differ_exact} / {r.differ_float32} | {'OK' if r.verified else 'FAILED'} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default="lenet,resnet20", help="lenet, resnet20 or both")
    p.add_argument("--workdir", type=Path, help="keep the float runs here (reused when present)")
    p.add_argument("--resnet-epochs", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="three rows only")
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-calib-"))
    rows = ROWS[1:2] + ROWS[6:7] + ROWS[10:11] if args.quick else ROWS
    say = lambda s: print(s, flush=True)  # noqa: E731
    record: dict = {"command": " ".join(sys.argv), "networks": {}}
    text = []
    for name in args.networks.split(","):
        if name == "lenet":
            ini, sets, epochs = ROOT / "models" / "LeNet.ini", [], 3
        elif name == "resnet20":
            data_root = os.environ.get("N2D2_DATA") or str(ROOT.parent / "shared" / "data")
            os.environ["N2D2_DATA"] = data_root
            ini, sets, epochs = ROOT / "models" / "ResNet20-cifar10.ini", [], args.resnet_epochs
        else:
            raise SystemExit(f"unknown network {name!r}")
        weights = _float_weights(ini, sets, epochs, work / name, say)
        float_rate, results = bench(ini, sets, weights, rows, say)
        record["networks"][name] = {"ini": str(ini.relative_to(ROOT)), "float_epochs": epochs,
                                    "float": float_rate, "rows": [asdict(r) for r in results]}
        text.append(table(f"{ini.name}, float weights after {epochs} epochs (-seed 1)", float_rate, results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_calibration.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "bench_calibration.md").write_text("\n\n".join(text) + "\n")
    print("\n\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
