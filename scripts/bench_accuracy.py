#!/usr/bin/env python3
"""Accuracy of the QAT recipes on MNIST: float, SAT at several bit widths, LSQ and MinMax, one table.

Every row is the ``qatrun`` command, run as a subprocess in a folder of its own, on the MNIST shipped with
qatrun (the full 60,000 learning and 10,000 test images; ``--quick`` cuts them):

* SAT rows are N2D2's two phases: ``models/LeNet-QAT-clamp.ini`` (tanh-clamped weights, float activations),
  then ``models/LeNet-QAT.ini`` started with ``-w`` from the clamped weights. ONE clamp run feeds every SAT
  row; the bit widths are ``-set`` overrides of the recipe's ``$W_RANGE`` / ``$A_RANGE`` (conv1 and fc2
  keep 8-bit weights in every SAT row, and the classifier's scores 8 bits).
* The float row is the same BatchNorm LeNet with its quantizer keys removed (written into the row's
  folder), learned in two phases like the others: phase 1 is shared with the LSQ and MinMax rows, which
  start from those float weights (LSQ and MinMax fine-tune a float network; SAT's phase 1 is its clamp).
* LSQ and MinMax rows use ``models/LeNet-QAT.ini`` with its method swapped (``QWeight=LSQ``...), written
  into the row's folder, so the network and the solver schedule are the SAT recipe's.

Each phase runs ``-learn-epoch N -set '$EPOCHS=N'`` (the recipes' cosine schedules end with the phase)
and tests at the end: the rate reported is that final test on the 10,000 MNIST test images.

    .venv/bin/python scripts/bench_accuracy.py --quick                 # smoke run, a minute or two
    .venv/bin/python scripts/bench_accuracy.py > bench.log 2>&1        # the full table
    .venv/bin/python scripts/bench_accuracy.py --workdir runs/bench    # the same, run folders kept
    .venv/bin/python scripts/bench_accuracy.py --rows sat-w4a4 --clamp-weights runs/bench/phase1-clamp/weights \\
        --set '$LR=0.02'                                                 # rerun one row from the kept clamp run

Writes ``bench_accuracy.json`` (``--json``) with every figure and the exact commands.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qatrun.data.formats import write_mnist_subset

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
CLAMP_INI = MODELS / "LeNet-QAT-clamp.ini"
QAT_INI = MODELS / "LeNet-QAT.ini"
MNIST = REPO / "qatrun" / "data" / "mnist"

# Defaults: SAT W4A4 totals 20 epochs over its two phases.
EPOCHS_CLAMP = 8
EPOCHS_QUANT = 12


@dataclass(frozen=True)
class Row:
    """One line of the table.

    Attributes:
        key: the ``--rows`` name.
        method: what the table shows.
        phase1: ``"clamp"`` (SAT's clamp run) or ``"float"`` (the BatchNorm LeNet without quantizers).
        derive: how phase 2's INI is made from ``models/LeNet-QAT.ini``: ``"SAT"`` (the file itself),
            ``"LSQ"``, ``"MinMax"`` (method swapped) or ``"float"`` (quantizers removed from the clamp INI).
        sets: ``-set`` overrides of phase 2.
    """

    key: str
    method: str
    phase1: str
    derive: str
    sets: tuple[str, ...] = ()


ROWS = (
    Row("float", "float (BN LeNet, no quantizers)", "float", "float"),
    Row("sat-w8a8", "SAT W8A8", "clamp", "SAT", ("$W_RANGE=255", "$A_RANGE=255")),
    Row("sat-w4a4", "SAT W4A4 (8-bit conv1, fc2)", "clamp", "SAT"),
    Row("sat-w2a2", "SAT W2A2 (8-bit conv1, fc2)", "clamp", "SAT", ("$W_RANGE=3", "$A_RANGE=3")),
    Row("sat-w1a8", "SAT W1A8 (8-bit conv1, fc2)", "clamp", "SAT", ("$W_RANGE=1", "$A_RANGE=255")),
    # LSQ learns its step sizes with the recipe's solver: at the SAT recipe's 0.1, conv1's weight step takes
    # updates larger than itself; 0.05 keeps them in scale.
    Row("lsq-w4a4", "LSQ W4A4 (8-bit conv1, fc2)", "float", "LSQ", ("$LR=0.05",)),
    Row("minmax-w8a8", "MinMax W8A8", "float", "MinMax", ("$W_RANGE=255", "$A_RANGE=255")),
)


@dataclass
class Phase:
    """One ``qatrun`` run."""

    command: list[str]
    folder: str
    epochs: int
    rate: float | None = None
    wall_s: float = 0.0
    returncode: int = 0
    weights: str | None = None


@dataclass
class Result:
    """A row's figures."""

    key: str
    method: str
    epochs_phase1: int
    epochs_phase2: int
    total_epochs: int
    rate: float | None
    wall_s: float
    phase1: dict = field(default_factory=dict)
    phase2: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- INI variants


_KEY_LINE = re.compile(r"^\s*([^;=\s\[][^=]*?)\s*=\s*(.*?)\s*(;.*)?$")
_SECTION_LINE = re.compile(r"^\[([^\]]+)\]")


def _key_of(line: str) -> str | None:
    match = _KEY_LINE.match(line)
    return match.group(1) if match else None


def float_ini(clamp_text: str) -> str:
    """The clamp network with every ``QWeight`` key removed: the float BatchNorm LeNet."""
    lines = [line for line in clamp_text.splitlines() if not (_key_of(line) or "").startswith("QWeight")]
    return "; Derived by scripts/bench_accuracy.py: models/LeNet-QAT-clamp.ini without quantizers.\n" + \
        "\n".join(lines) + "\n"


def method_ini(qat_text: str, method: str) -> str:
    """``models/LeNet-QAT.ini`` with SAT swapped for ``method`` (``LSQ`` or ``MinMax``).

    SAT-only keys (``ApplyScaling``, ``ApplyQuantization``, ``Alpha``) go. LSQ's steps take the recipe's
    alpha solver settings for both roles (its activation quantizer, unsigned, provides the ReLU as SAT's
    does). MinMax learns nothing: its solver keys go, and since its affine activation levels keep negative
    values, the BatchNorms and fc1 get ``ActivationFunction=Rectifier`` (where SAT's clip was the ReLU).
    """
    assert method in ("LSQ", "MinMax"), method
    out: list[str] = [f"; Derived by scripts/bench_accuracy.py: models/LeNet-QAT.ini with QWeight/QAct={method}."]
    solver_lines = [line for line in qat_text.splitlines() if (_key_of(line) or "").startswith("QActSolver")]
    solver_lines = list(dict.fromkeys(solver_lines))  # one copy of the block
    section = None
    for line in qat_text.splitlines():
        header = _SECTION_LINE.match(line)
        if header:
            section = header.group(1)
        key = _key_of(line) or ""
        if key in ("QWeight.ApplyScaling", "QWeight.ApplyQuantization", "QAct.Alpha"):
            continue
        if method == "MinMax" and key.startswith("QActSolver"):
            continue
        if key == "QWeight":
            out.append(f"QWeight={method}")
            if method == "LSQ":
                out += [s.replace("QActSolver", "QWeightSolver", 1) for s in solver_lines]
            continue
        if key == "QAct":
            out.append(f"QAct={method}")
            continue
        if method == "MinMax" and key == "ActivationFunction" and section in ("Bn_def",):
            out.append("ActivationFunction=Rectifier")
            continue
        out.append(line)
        if method == "MinMax" and header and section == "fc1":
            out.append("ActivationFunction=Rectifier")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------- runs


def mnist_subset(folder: Path, learn: int, test: int) -> Path:
    """The first ``learn`` training and ``test`` test images of the shipped MNIST, as IDX files."""
    return write_mnist_subset(MNIST, folder, learn, test)


def final_rate(output: str) -> float | None:
    """The last ``Final recognition rate: X%`` of a run's output."""
    lines = [line for line in output.splitlines() if line.startswith("Final recognition rate:")]
    return float(lines[-1].split(":")[1].split("%")[0]) if lines else None


def run_phase(ini: Path, folder: Path, epochs: int, sets: list[str], weights: str | None, log,
              options: list[str]) -> Phase:
    """``qatrun INI -learn-epoch N -set '$EPOCHS=N' [-w DIR] -test`` in ``folder``; the rate and the wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "qatrun", str(ini), "-learn-epoch", str(epochs), "-test", *options,
               "-set", f"$EPOCHS={epochs}"]
    for value in sets:
        command += ["-set", value]
    if weights:
        command += ["-w", weights]
    phase = Phase(command=command, folder=str(folder), epochs=epochs)
    print(f"$ (cd {folder} && {' '.join(_quote(c) for c in command)})", file=log, flush=True)
    start = time.monotonic()
    with open(folder / "qatrun.log", "w") as out:
        proc = subprocess.run(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, text=True)
    phase.wall_s = round(time.monotonic() - start, 1)
    phase.returncode = proc.returncode
    text = (folder / "qatrun.log").read_text()
    phase.rate = final_rate(text)
    for name in ("weights_validation", "weights"):  # with a Validation partition, the best weights
        if (folder / name).is_dir():
            phase.weights = str(folder / name)
            break
    status = f"{phase.rate}%" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}):\n{text[-3000:]}"
    print(f"  -> {status} in {phase.wall_s} s", file=log, flush=True)
    return phase


def reused_phase(weights: Path, epochs: int) -> Phase:
    """A phase 1 run earlier (``--clamp-weights``/``--float-weights``): its rate from its folder's log, if any."""
    folder = weights.resolve().parent
    phase = Phase(command=["(reused)"], folder=str(folder), epochs=epochs, weights=str(weights.resolve()))
    for name in ("qatrun.log", "log"):
        if (folder / name).is_file():
            phase.rate = final_rate((folder / name).read_text())
            break
    return phase


def _quote(arg: str) -> str:
    return f"'{arg}'" if re.search(r"[$\s\[\]]", arg) else arg


# ----------------------------------------------------------------------------------------------- the table


def format_table(results: list[Result]) -> str:
    header = ("method", "epochs (phase 1 + 2)", "total", "test rate", "wall (phase 1 + 2)")
    rows = [header]
    for r in results:
        rate = f"{r.rate:.2f}%" if r.rate is not None else "failed"
        rows.append((r.method, f"{r.epochs_phase1} + {r.epochs_phase2}", str(r.total_epochs), rate,
                     f"{r.phase1.get('wall_s', 0):.0f} s + {r.phase2.get('wall_s', 0):.0f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs-clamp", type=int, default=EPOCHS_CLAMP,
                        help=f"phase 1 epochs (clamp, or float) [{EPOCHS_CLAMP}]")
    parser.add_argument("--epochs-quant", type=int, default=EPOCHS_QUANT,
                        help=f"phase 2 epochs (quantized, or float) [{EPOCHS_QUANT}]")
    parser.add_argument("--rows", default=",".join(r.key for r in ROWS),
                        help="comma-separated rows among: " + ", ".join(r.key for r in ROWS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 epoch per phase on 6,000 learning and 1,000 test images")
    parser.add_argument("--seed", type=int, default=1, help="-seed of every run [1]")
    parser.add_argument("--set", action="append", default=[], metavar="'$VAR=V'",
                        help="extra -set override for every run (repeatable)")
    parser.add_argument("--clamp-weights", help="reuse this clamp weights folder instead of running phase 1")
    parser.add_argument("--float-weights", help="reuse this float weights folder instead of running phase 1")
    parser.add_argument("--workdir", help="where the run folders go (kept); default: a temporary folder, removed")
    parser.add_argument("--json", default="bench_accuracy.json", help="output file [bench_accuracy.json]")
    args = parser.parse_args(argv)
    known = {r.key for r in ROWS}
    args.rows = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in args.rows if k not in known]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    if args.quick:
        args.epochs_clamp = args.epochs_quant = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = sys.stdout
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_accuracy_"))
    work.mkdir(parents=True, exist_ok=True)
    sets = list(args.set)
    common = ["-seed", str(args.seed)]
    data_sets: list[str] = []
    if args.quick:
        subset = mnist_subset(work / "mnist-subset", 6000, 1000)
        data_sets = [f"[database]DataPath={subset}"]
    extra = data_sets + sets

    def phase(ini: Path, name: str, epochs: int, row_sets: tuple[str, ...] = (), weights: str | None = None):
        more = list(row_sets)
        return run_phase(ini, work / name, epochs, extra + more, weights, log, common)

    rows = [r for r in ROWS if r.key in args.rows]
    (work / "ini").mkdir(exist_ok=True)
    float_path = work / "ini" / "LeNet-BN-float.ini"
    float_path.write_text(float_ini(CLAMP_INI.read_text()))
    first: dict[str, Phase] = {}
    for kind, given in (("clamp", args.clamp_weights), ("float", args.float_weights)):
        if not any(r.phase1 == kind for r in rows):
            continue
        if given:
            first[kind] = reused_phase(Path(given), args.epochs_clamp)
            continue
        ini = CLAMP_INI if kind == "clamp" else float_path
        first[kind] = phase(ini, f"phase1-{kind}", args.epochs_clamp)

    results: list[Result] = []
    for row in rows:
        p1 = first[row.phase1]
        if row.derive == "SAT":
            ini = QAT_INI
        elif row.derive == "float":
            ini = float_path
        else:
            ini = work / "ini" / f"LeNet-QAT-{row.derive}.ini"
            ini.write_text(method_ini(QAT_INI.read_text(), row.derive))
        if p1.weights is None:
            p2 = Phase(command=[], folder="", epochs=args.epochs_quant, returncode=-1)
        else:
            p2 = phase(ini, f"phase2-{row.key}", args.epochs_quant, row.sets, p1.weights)
        results.append(Result(
            key=row.key, method=row.method, epochs_phase1=args.epochs_clamp, epochs_phase2=args.epochs_quant,
            total_epochs=args.epochs_clamp + args.epochs_quant, rate=p2.rate if p2.returncode == 0 else None,
            wall_s=round(p1.wall_s + p2.wall_s, 1), phase1=asdict(p1), phase2=asdict(p2),
        ))
        print(format_table(results[-1:]).splitlines()[-1], file=log, flush=True)

    table = format_table(results)
    print("\n" + table)
    Path(args.json).write_text(json.dumps({
        "quick": args.quick, "seed": args.seed, "sets": sets, "workdir": str(work),
        "rows": [asdict(r) for r in results],
    }, indent=2) + "\n")
    ok = all(r.rate is not None for r in results)
    if not args.workdir and ok:
        shutil.rmtree(work)
        print(f"\n{args.json} written")
    else:
        print(f"\n{args.json} written; run folders in {work}")
    return 0 if all(r.rate is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
