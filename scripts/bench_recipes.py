#!/usr/bin/env python3
"""Accuracy, epochs and wall time of each recipe of configs/, applied unedited with ``-qat-flow``.

Each row is one command, ``qatrun NET.ini -recipe configs/R.ini -qat-flow -seed S`` in a folder of its own:
every phase of the recipe (its ``Epochs=``, or ``--epochs``), then fusion with verification. The table gives
the fake-quantized test rate after the last phase, the integer network's rate and the predictions that
differ from the fake-quantized network (exact reference), and the wall time of each phase.

* ``models/LeNet.ini`` on the full MNIST that ships with qatrun, at the recipes' own length;
* ``models/ResNet20-onnx.ini`` (the float ResNet-20 imported from ONNX) on the CIFAR-10 subset, a short run
  (``--resnet-epochs``, default 1 per phase), when the data are found (``N2D2_DATA``, else ``../shared/data``).

Two runs go side by side, one thread each (``--jobs``).

    .venv/bin/python scripts/bench_recipes.py                  # about 40 minutes on 2 cores
    .venv/bin/python scripts/bench_recipes.py --recipes sat-w4a4 --networks lenet

Writes ``bench_recipes.json`` and ``bench_recipes.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("sat-w8a8", "sat-w4a4", "sat-w2a2", "sat-weights-w4", "lsq-w4a4", "minmax-w8a8")
NETWORKS = {"lenet": ROOT / "models" / "LeNet.ini", "lenet-bn": ROOT / "models" / "LeNet-BN.ini",
            "resnet20-onnx": ROOT / "models" / "ResNet20-onnx.ini"}
_RATE = re.compile(r"^Final recognition rate: ([0-9.]+)%")
_PHASE = re.compile(r"^Phase (\d+) of (\d+), (\w+): (\d+) epochs")
_DIFFER = re.compile(r"in float64 \(the reference.*?\): (\d+) of (\d+) predictions differ")


def cifar_root() -> Path | None:
    for base in (os.environ.get("N2D2_DATA"), str(ROOT.parent / "shared" / "data")):
        if base and (Path(base) / "cifar10").is_dir():
            return Path(base)
    return None


NO_DELAY = "[all]\nQWeight.Delay=0\nQAct.Delay=0\n[ElemWise optional]\nQAct.Delay=0\n"
"""Lifts MinMax's 200-step delay for the short ResNet-20 runs (an epoch of the subset is 33 steps)."""


def run(network: str, recipe: str, epochs: str | None, seed: int, work: Path, env: dict[str, str],
        extra: tuple[str, ...] = ()) -> dict:
    label = recipe + ("-calib" if "-calib" in extra else "")
    folder = work / f"{network}-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "qatrun", str(NETWORKS[network]), "-recipe", str(ROOT / "configs" / f"{recipe}.ini"),
               "-qat-flow", "-seed", str(seed), *extra]
    if network == "resnet20-onnx" and recipe.startswith("minmax"):
        (folder / "no-delay.ini").write_text(NO_DELAY)
        command += ["-recipe", str(folder / "no-delay.ini")]
        label += " (no delay)"
    if epochs:
        command += ["-phase-epochs", epochs]
    start = time.monotonic()
    marks: list[tuple[str, int, float]] = []
    rates: list[float] = []
    differ = None
    lines = []
    with subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if (m := _PHASE.match(line)) is not None:
                marks.append((m.group(3), int(m.group(4)), time.monotonic()))
            elif (m := _RATE.match(line)) is not None:
                rates.append(float(m.group(1)))
            elif (m := _DIFFER.search(line)) is not None:
                differ = f"{m.group(1)} of {m.group(2)}"
    end = time.monotonic()
    (folder / "log.txt").write_text("".join(lines))
    if proc.returncode != 0:
        print(f"{' '.join(command)} failed ({proc.returncode}) in {folder}:\n{''.join(lines[-30:])}", flush=True)
        return {"network": network, "recipe": label, "command": " ".join(command[1:]), "error": proc.returncode,
                "phases": [], "fake_rate": None, "integer_rate": None, "differ": None, "wall_s": round(end - start, 1)}
    phases = []
    for i, (name, n, at) in enumerate(marks):
        until = marks[i + 1][2] if i + 1 < len(marks) else end
        phases.append({"phase": name, "epochs": n, "wall_s": round(until - at, 1)})
    integer = differ is not None
    row = {"network": network, "recipe": label, "command": " ".join(command[1:]), "phases": phases,
           "epochs": sum(p["epochs"] for p in phases), "fake_rate": rates[0] if rates else None,
           "integer_rate": rates[-1] if integer and len(rates) > 1 else None, "differ": differ,
           "wall_s": round(end - start, 1)}
    print(f"{network:14s} {label:15s} {row['fake_rate']}% integer {row['integer_rate']} ({differ}) "
          f"{row['wall_s']} s", flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--networks", default="lenet,resnet20-onnx")
    p.add_argument("--resnet-epochs", default="1,1", help="-phase-epochs of the ResNet-20 runs [1,1]")
    p.add_argument("--epochs", default=None, help="-phase-epochs of the LeNet runs [the recipes' own]")
    p.add_argument("--resnet-calib", type=int, default=0,
                   help="-calib N for the quantized phase of the ResNet-20 runs (0: none) [0]")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-recipes-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    jobs = []
    for network in args.networks.split(","):
        if network == "resnet20-onnx":
            root = cifar_root()
            if root is None:
                print("resnet20-onnx: no CIFAR-10 subset (N2D2_DATA or ../shared/data): skipped", flush=True)
                continue
            env["N2D2_DATA"] = str(root)
        for recipe in args.recipes.split(","):
            resnet = network == "resnet20-onnx"
            extra = ("-calib", str(args.resnet_calib)) if resnet and args.resnet_calib else ()
            jobs.append((network, recipe, args.resnet_epochs if resnet else args.epochs, extra))
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run(*job[:3], args.seed, work, env, job[3]), jobs))
    lines = ["| network | recipe | epochs (per phase) | fake-quantized | integer | differing | wall s (per phase) |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        if r.get("error") is not None:
            lines.append(f"| {r['network']} | {r['recipe']} | failed (exit {r['error']}) | | | | |")
            continue
        per = " + ".join(str(ph["epochs"]) for ph in r["phases"])
        walls = " + ".join(f"{ph['wall_s']:.0f}" for ph in r["phases"])
        integer = f"{r['integer_rate']:.2f}%" if r["integer_rate"] is not None else "-"
        fake = f"{r['fake_rate']:.2f}%" if r["fake_rate"] is not None else "-"
        lines.append(f"| {r['network']} | {r['recipe']} | {per} | {fake} | {integer} | "
                     f"{r['differ'] or '-'} | {walls} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_recipes.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1)
                                                 + "\n")
    (args.out / "bench_recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
