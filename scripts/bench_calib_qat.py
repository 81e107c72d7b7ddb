#!/usr/bin/env python3
"""Time to accuracy of the SAT W4A4 LeNet recipe, as it is and started from calibration, side by side.

For each seed, three runs of N2D2's two phases (``models/LeNet-QAT-clamp.ini``, then ``models/LeNet-QAT.ini``
with ``-w`` from the clamped weights), each phase ``-learn-epoch N -set '$EPOCHS=N' -test`` on the full
MNIST shipped with qatrun:

* ``recipe``: the recipe as it is, 8 + 12 epochs, activation quantizers from the INI's ``QAct.Alpha``;
* ``calibrated``: the same recipe in fewer epochs (``--short``, default 4 + 6), the quantized phase started
  with ``-calib N`` (its activation quantizers' alphas from the first N Learn stimuli: LeNet-QAT has no
  Validation set; the clamp phase has no activation quantizer to start);
* ``short``: the same short schedule without calibration, which tells what calibration itself buys.

The rows of one seed run one after the other, so that the machine's load touches them alike.

    .venv/bin/python scripts/bench_calib_qat.py                      # seeds 1 2 3 (about an hour on 2 cores)
    .venv/bin/python scripts/bench_calib_qat.py --seeds 1 --short 2,3

Writes ``bench_calib_qat.json`` and ``bench_calib_qat.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLAMP = ROOT / "models" / "LeNet-QAT-clamp.ini"
QAT = ROOT / "models" / "LeNet-QAT.ini"


def final_rate(text: str) -> float | None:
    lines = [line for line in text.splitlines() if line.startswith("Final recognition rate:")]
    return float(lines[-1].split(":")[1].split("%")[0]) if lines else None


def phase(ini: Path, folder: Path, epochs: int, seed: int, calib: int, weights: Path | None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "qatrun", str(ini), "-learn-epoch", str(epochs), "-set", f"$EPOCHS={epochs}",
               "-test", "-seed", str(seed)]
    if calib:
        command += ["-calib", str(calib)]
    if weights is not None:
        command += ["-w", str(weights)]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.monotonic() - start
    (folder / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {folder}:\n{proc.stderr[-2000:]}")
    return {"command": command[1:], "epochs": epochs, "wall_s": round(wall, 1), "rate": final_rate(proc.stdout)}


def run(kind: str, epochs: tuple[int, int], seed: int, calib: int, work: Path) -> dict:
    folder = work / f"seed{seed}-{kind}"
    p1 = phase(CLAMP, folder / "clamp", epochs[0], seed, 0, None)  # the clamp phase has no activation quantizer
    p2 = phase(QAT, folder / "quant", epochs[1], seed, calib, folder / "clamp" / "weights")
    row = {"kind": kind, "seed": seed, "epochs": f"{epochs[0]} + {epochs[1]}", "total_epochs": sum(epochs),
           "rate": p2["rate"], "wall_s": round(p1["wall_s"] + p2["wall_s"], 1), "phase1": p1, "phase2": p2}
    print(f"seed {seed} {kind:10s} {row['epochs']:7s} {row['rate']}%  {row['wall_s']} s", flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--short", default="4,6", help="epochs of the two phases of the short runs [4,6]")
    p.add_argument("--calib", type=int, default=10000, help="calibration stimuli per phase [10000]")
    p.add_argument("--kinds", default="recipe,calibrated,short")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    short = tuple(int(v) for v in args.short.split(","))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-calib-qat-"))
    plans = {"recipe": ((8, 12), 0), "calibrated": (short, args.calib), "short": (short, 0)}
    rows = []
    for seed in args.seeds:
        for kind in args.kinds.split(","):
            epochs, calib = plans[kind]
            rows.append(run(kind, epochs, seed, calib, work))
    lines = ["| seed | run | epochs (clamp + quantized) | test rate | wall s |", "|---:|---|---|---:|---:|"]
    lines += [f"| {r['seed']} | {r['kind']} | {r['epochs']} | {r['rate']:.2f}% | {r['wall_s']:.0f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_calib_qat.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows},
                                                                indent=1) + "\n")
    (args.out / "bench_calib_qat.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
