"""The ``qatrun`` command: N2D2-style options (single dash), one line per user error, exit status 2.

    qatrun NET.ini                                   # parse, build and print the network; loads no data
    qatrun NET.ini -learn-epoch 100                  # train
    qatrun NET.ini -test -qat-fuse -w weights        # fuse to integer-only, verify, test
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from qatrun import __version__
from qatrun.errors import QatrunError

ROUND_MODES = ("NONE", "RINTF")
# Floating-point32: onnxruntime QLinearConv arithmetic, for a fast integer-only ONNX (qatrun.fuse.scaling)
RESCALING_MODES = ("Floating-point", "Fixed-point16", "Fixed-point32", "Single-shift", "Double-shift",
                   "Floating-point32")
EXPORT_FORMATS = ("onnx", "onnx-qdq", "onnx-int")
VALID_METRICS = (
    "Sensitivity", "Specificity", "Precision", "NegativePredictiveValue", "MissRate", "FallOut",
    "FalseDiscoveryRate", "FalseOmissionRate", "IU", "Accuracy", "F1Score", "Informedness", "Markedness",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as a user error (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise QatrunError(f"{message} (see 'qatrun -h')")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qatrun",
        description="Quantization-aware training from N2D2-style INI files, down to an integer-only network.",
        allow_abbrev=False,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  qatrun models/LeNet.ini                       print the network\n"
            "  qatrun models/LeNet.ini -learn-epoch 10 -test train, then test\n"
            "  qatrun models/LeNet-QAT.ini -learn-epoch 10 -w weights_clamped\n"
            "  qatrun models/LeNet-QAT.ini -test -qat-fuse -w weights -export onnx-int"
        ),
    )
    p.add_argument("ini", metavar="NET.ini", help="network description (N2D2 INI dialect)")
    g = p.add_argument_group("general")
    g.add_argument("-h", "-help", action="help", help="show this help and exit")
    g.add_argument("-version", action="version", version=f"qatrun {__version__}")
    g.add_argument("-set", action="append", default=[], metavar="'[S]Key=V'",
                   help="override an INI value (repeatable), e.g. -set '[conv1]NbOutputs=32' or -set '$LR=0.1'")
    g.add_argument("-seed", type=int, default=0, help="random seed; 0 = time-based, written to seed.dat [0]")
    g.add_argument("-dev", type=int, default=None, help="CUDA device; -1 = CPU [the first GPU, else the CPU]")
    g.add_argument("-debug", action="store_true", help="show a traceback on errors")
    t = p.add_argument_group("learning")
    t.add_argument("-learn", type=int, default=0, metavar="N", help="learn on N stimuli")
    t.add_argument("-learn-epoch", type=int, default=0, metavar="N", help="learn for N epochs")
    t.add_argument("-log", type=int, default=1000, metavar="N", help="stimuli between validations with -learn [1000]")
    t.add_argument("-log-epoch", type=int, default=1, metavar="N", help="epochs between validations [1]")
    t.add_argument("-valid-metric", default="Sensitivity", choices=VALID_METRICS, metavar="METRIC",
                   help="validation score for best-model selection [Sensitivity]")
    t.add_argument("-stop-valid", type=int, default=0, metavar="N",
                   help="stop after N validations without improvement (0 = never) [0]")
    t.add_argument("-w", metavar="DIR", help="import weights from an N2D2 weights folder")
    t.add_argument("-l", metavar="DIR", help="resume from a saved state folder")
    t.add_argument("-test", action="store_true", help="test (after learning, if learning)")
    q = p.add_argument_group("fusion and export")
    q.add_argument("-qat-fuse", "-qat-sat", dest="qat_fuse", action="store_true",
                   help="fuse the quantized network into an integer-only one, verify it, test it")
    q.add_argument("-fuse", action="store_true", help="fold BatchNorm (float); means -qat-fuse with quantizers")
    q.add_argument("-fuse-flavour", choices=("exact", "n2d2"), default="exact",
                   help="exact: the integer network computes what was trained [exact]; n2d2: N2D2's own "
                        "fusion, with its rounding modes and its 8-bit Fc saturation")
    q.add_argument("-wt-round-mode", choices=ROUND_MODES, default="NONE", help="weights rounding [NONE]")
    q.add_argument("-b-round-mode", choices=ROUND_MODES, default="NONE", help="biases rounding [NONE]")
    q.add_argument("-c-round-mode", choices=ROUND_MODES, default="NONE", help="clips rounding [NONE]")
    q.add_argument("-act-rescaling-mode", choices=RESCALING_MODES, default="Floating-point",
                   metavar="MODE", help="rescaling: " + ", ".join(RESCALING_MODES) + " [Floating-point]")
    q.add_argument("-export", action="append", default=[], choices=EXPORT_FORMATS, metavar="FMT",
                   help="write an export (repeatable): " + ", ".join(EXPORT_FORMATS))
    q.add_argument("-test-onnx", metavar="FILE", help="test an ONNX file in onnxruntime with the INI's data")
    return p


OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "ACTIVE"}
"""OpenMP settings qatrun gives its own process unless the environment sets them.

An OpenMP worker thread that finds no work spins for a while, then sleeps, and waking it costs more than a
small operation. A QAT step has more short operations, with Python between them, than the float step, so
with the default policy its threads sleep and wake far more often: on two cores the SAT W4A4 ResNet-20 step
took 1.33 float steps with the default policy and 1.03 with active waiting, the float step the same 235 ms
(``scripts/bench_qat_overhead.py``, ResNet-20, 3 repetitions each). Active waiting keeps idle threads
spinning between operations: on a machine shared with other compute jobs, set ``OMP_WAIT_POLICY=PASSIVE``.
Under torchrun (``OMP_NUM_THREADS=1``) there is no worker thread to wait.
"""


def apply_openmp_defaults() -> None:
    """Sets :data:`OPENMP_DEFAULTS` where the environment has no value, before torch loads OpenMP."""
    if "torch" in sys.modules:  # OpenMP read its environment when torch was loaded: too late
        return
    for key, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs qatrun; returns the exit status (0 success, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "-debug" in argv
    try:
        args = build_parser().parse_args(argv)
        apply_openmp_defaults()
        from qatrun import pipeline  # imported here so that -h answers without loading torch

        return pipeline.run(args)
    except QatrunError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
