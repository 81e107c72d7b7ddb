"""The ``qatrun`` command: N2D2-style options (single dash), one line per user error, exit status 2.

    qatrun NET.ini                                   # parse, build and print the network; loads no data
    qatrun NET.ini -learn-epoch 100                  # train
    qatrun NET.ini -test -qat-fuse -w weights        # fuse to integer-only, verify, test

Options are named in full: an unknown or misspelt one is refused by its name, with a did-you-mean. A value
follows its option as the next argument or after ``=`` (``-w DIR``, ``-w=DIR``, ``-learn-epoch=10``), never
glued to it (``-wDIR`` is an unknown option, not ``-w DIR``). Numbers are range-checked here, before anything
runs.

A run checks everything it was given (the command line, the INI, the data, ``-w``, ``-l``, ``-test-onnx``)
before it writes anything, so a refused run leaves its folder as it was. A run that only tests (``-test``,
``-test-onnx``) writes nothing at all, not even its record (it would overwrite the record of the run that
learnt the weights it tests), and works in a folder it cannot write to.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qatrun import __version__
from qatrun.errors import QatrunError, RunError, did_you_mean
from qatrun.options import (
    CLIPPING_MODES,
    EXPORT_KINDS,
    FUSE_FLAVOURS,
    KERNEL_MODES,
    METRICS,
    OUT_OF_SCOPE_OPTIONS,
    PHASES,
    RESCALING_MODES,
    ROUND_MODES,
    WEIGHT_CLIPPING_MODES,
)

class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as a user error (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise QatrunError(f"{message} (see 'qatrun -h')")

    def _parse_optional(self, arg_string: str) -> Any:
        """Refuses an argument that looks like an option but is none, by its name.

        argparse would take ``-learn-epochs`` for ``-l`` with the glued value ``earn-epochs``; here an
        option is its exact name, optionally followed by ``=VALUE``. A negative number (``-dev -1``) is a
        value, as for argparse.
        """
        if (arg_string.startswith("-") and arg_string != "-" and " " not in arg_string
                and not self._negative_number_matcher.match(arg_string)):
            name = arg_string.split("=", 1)[0]
            if name in OUT_OF_SCOPE_OPTIONS:
                raise QatrunError(f"{name} is {OUT_OF_SCOPE_OPTIONS[name]}; qatrun trains rate-based classifiers")
            if name not in self._option_string_actions:
                hint = did_you_mean(name, self._option_string_actions)
                raise QatrunError(f"unknown option '{name}'{hint} (see 'qatrun -h')")
        return super()._parse_optional(arg_string)


MAX_EPOCHS = 10**6
MAX_STIMULI = 10**12


def _integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``, else the option's one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse ``type``: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def _epoch_list(text: str) -> tuple[int, ...]:
    """An argparse ``type``: comma-separated epochs, each from 1 to :data:`MAX_EPOCHS`."""
    parse = _integer(1, MAX_EPOCHS)
    return tuple(parse(word) for word in text.split(","))


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
            "  qatrun models/LeNet-QAT.ini -test -qat-fuse -w weights -export onnx-int\n"
            "  qatrun models/LeNet.ini -calib -1 -w weights -test -qat-fuse   post-training quantization\n"
            "  qatrun models/LeNet-BN.ini -recipe configs/sat-w4a4.ini -qat-flow   every QAT phase, fused"
        ),
    )
    p.add_argument("ini", metavar="NET.ini", help="network description (N2D2 INI dialect)")
    g = p.add_argument_group("general")
    g.add_argument("-h", "-help", action="help", help="show this help and exit")
    g.add_argument("-version", action="version", version=f"qatrun {__version__}")
    g.add_argument("-set", action="append", default=[], metavar="'[S]Key=V'",
                   help="override an INI value (repeatable), e.g. -set '[conv1]NbOutputs=32' or -set '$LR=0.1'")
    g.add_argument("-seed", type=_integer(0, 2**31 - 1), default=0,
                   help="random seed; 0 = time-based, written to seed.dat [0]")
    g.add_argument("-dev", type=_integer(-1, 1023), default=None,
                   help="CUDA device; -1 = CPU [the first GPU, else the CPU]")
    g.add_argument("-kernels", choices=KERNEL_MODES, default=None,
                   help="quantizer training kernels: auto (native where they build), compiled (a build failure "
                        "is an error), eager [QATRUN_KERNELS, else auto]")
    g.add_argument("-debug", action="store_true", help="show a traceback on errors")
    r = p.add_argument_group("recipes (configs/*.ini) and the whole QAT flow")
    r.add_argument("-recipe", action="append", default=[], metavar="FILE",
                   help="apply a recipe to the INI without editing it (repeatable, in order)")
    r.add_argument("-recipe-phase", choices=PHASES, default=None, metavar="PHASE",
                   help="the recipes' phase: " + ", ".join(PHASES) + " [quantize]")
    r.add_argument("-qat-flow", action="store_true",
                   help="every phase of the recipes in one run: (calibration,) clamp or float phase into "
                        "weights_clamped/ or weights_float/, quantized phase into weights/, fusion with "
                        "verification into weights_quantized/, and the -export files")
    r.add_argument("-phase-epochs", type=_epoch_list, default=None, metavar="E1,E2",
                   help="-qat-flow: the epochs of each phase [the recipe's Epochs=]")
    t = p.add_argument_group("learning")
    t.add_argument("-learn", type=_integer(0, MAX_STIMULI), default=0, metavar="N", help="learn on N stimuli")
    t.add_argument("-learn-epoch", type=_integer(0, MAX_EPOCHS), default=0, metavar="N",
                   help="learn for N epochs")
    t.add_argument("-log", type=_integer(1, MAX_STIMULI), default=1000, metavar="N",
                   help="stimuli between validations with -learn [1000]")
    t.add_argument("-log-epoch", type=_integer(0, MAX_EPOCHS), default=1, metavar="N",
                   help="epochs between validations (0 = at the end only) [1]")
    t.add_argument("-valid-metric", default="Sensitivity", choices=METRICS, metavar="METRIC",
                   help="validation score for best-model selection [Sensitivity]")
    t.add_argument("-stop-valid", type=_integer(0, MAX_EPOCHS), default=0, metavar="N",
                   help="stop after N validations without improvement (0 = never) [0]")
    t.add_argument("-w", metavar="DIR", help="import weights from an N2D2 weights folder (-w DIR or -w=DIR)")
    t.add_argument("-l", metavar="DIR", help="resume from a saved state folder (-l DIR or -l=DIR)")
    t.add_argument("-test", action="store_true", help="test (after learning, if learning)")
    c = p.add_argument_group("calibration (post-training quantization, or QAT's starting values)")
    c.add_argument("-calib", type=_integer(-1, MAX_STIMULI), default=0, metavar="N",
                   help="calibrate on the first N stimuli of the Validation partition (-1 = all of it): a float "
                        "network is quantized from them (without Validation: from Test, as N2D2); a QAT network, "
                        "before -learn*, starts its activation quantizers from them (without Validation: from "
                        "Learn) [0 = no calibration]")
    c.add_argument("-calib-reload", action="store_true",
                   help="reuse the histograms of calibration/ instead of reading stimuli")
    c.add_argument("-nbbits", type=_integer(2, 8), default=8, metavar="N",
                   help="bits of the calibrated weights and activations [8]")
    c.add_argument("-act-clipping-mode", choices=CLIPPING_MODES, default="MSE", metavar="MODE",
                   help="activation clipping: " + ", ".join(CLIPPING_MODES) + " [MSE]")
    c.add_argument("-act-quantile-value", type=_fraction, default=0.9999, metavar="Q",
                   help="fraction of the values kept by the Quantile mode [0.9999]")
    c.add_argument("-wt-clipping-mode", choices=WEIGHT_CLIPPING_MODES, default="None", metavar="MODE",
                   help="weight clipping: " + ", ".join(WEIGHT_CLIPPING_MODES) + " [None]")
    c.add_argument("-act-rescale-per-output", type=_integer(0, 1), default=0, metavar="0|1",
                   help="1: one weight scale per output channel, else per layer [0]")
    q = p.add_argument_group("fusion and export")
    q.add_argument("-qat-fuse", "-qat-sat", dest="qat_fuse", action="store_true",
                   help="fuse the quantized network into an integer-only one, verify it, test it")
    q.add_argument("-fuse", action="store_true", help="fold BatchNorm (float); means -qat-fuse with quantizers")
    q.add_argument("-fuse-flavour", choices=FUSE_FLAVOURS, default="exact",
                   help="exact: the integer network computes what was trained [exact]; n2d2: N2D2's own "
                        "fusion, with its rounding modes and its 8-bit Fc saturation")
    q.add_argument("-wt-round-mode", choices=ROUND_MODES, default="NONE", help="weights rounding [NONE]")
    q.add_argument("-b-round-mode", choices=ROUND_MODES, default="NONE", help="biases rounding [NONE]")
    q.add_argument("-c-round-mode", choices=ROUND_MODES, default="NONE", help="clips rounding [NONE]")
    q.add_argument("-act-rescaling-mode", choices=RESCALING_MODES, default="Floating-point",
                   metavar="MODE", help="rescaling: " + ", ".join(RESCALING_MODES) + " [Floating-point]")
    q.add_argument("-export", action="append", default=[], choices=EXPORT_KINDS, metavar="FMT",
                   help="write an export (repeatable): " + ", ".join(EXPORT_KINDS))
    q.add_argument("-test-onnx", metavar="FILE", help="test an ONNX file in onnxruntime with the INI's data")
    q.add_argument("-db-export", type=_integer(-1, MAX_STIMULI), default=-1, metavar="N",
                   help="-export c: the Test images written with the C export and run by its proof "
                        "(-1 = all of them) [-1]")
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
        return run(args)
    except QatrunError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused (read-only folder, full disk): the path and the reason
        if debug:
            traceback.print_exc()
        where = f": '{err.filename}'" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------------------ the run
# Each step is one call of the public API (qatrun.network); what is printed comes from what it returns.


def run(args: argparse.Namespace) -> int:
    """Runs what the command line asks for; returns the exit status (3: a check failed)."""
    import qatrun  # here, so that -h and -version answer without loading torch

    if args.qat_flow:
        return _run_flow(args)
    if args.phase_epochs is not None:
        raise RunError("-phase-epochs sets the phases of -qat-flow; a single run takes -learn-epoch")
    if args.recipe_phase is not None and not args.recipe:
        raise RunError("-recipe-phase chooses the phase of the -recipe files: give one")
    phase = args.recipe_phase or "quantize"
    learning = bool(args.learn or args.learn_epoch)
    calibrating = bool(args.calib or args.calib_reload)
    acting = learning or calibrating or args.test or args.qat_fuse or args.fuse or args.export or args.test_onnx
    if not acting:
        print(qatrun.load(args.ini, args.set, kernels=args.kernels, recipes=args.recipe, phase=phase).summary())
        return 0
    writes = bool(learning or calibrating or args.qat_fuse or args.fuse or args.export)  # else: nothing written
    out_dir = Path(".")
    with qatrun.Session.start(args.dev) as session, session.own_folder(out_dir, writes):
        # -l alone resumes with the seed the state was learnt with (its partitions and data order).
        seed = qatrun.resolve_seed(args.seed or (qatrun.train.state_seed(Path(args.l)) if args.l else 0),
                                   out_dir, learning)
        network = qatrun.load(args.ini, args.set, seed=seed, kernels=args.kernels, device=session.device,
                              recipes=args.recipe, phase=phase)
        network.target  # noqa: B018 - one target, checked before any data is read
        _check_request(args, network, learning, calibrating)
        say = session.say
        say(network.summary())
        say(f"Using seed {seed} on {session.device}")
        if network.without_data and not (learning or calibrating or args.test or args.test_onnx):
            return _fuse_without_data(args, network, out_dir, session, say)
        data = network.open_data()
        _say_data(say, data)
        network.to(session.device)
        if args.w and args.w != "/dev/null":
            network.load_weights(args.w, ignore_missing=True)
            say(f"Weights imported from '{args.w}'")
        if args.l:
            network.check_resume(args.l)
        if args.test_onnx:
            qatrun.network.open_onnx(args.test_onnx, data)  # a bad file is refused before any time is spent
        if not learning and not args.w and not args.l:
            _reload_saved(network, data, out_dir, required="-calib" if calibrating else None)
        if calibrating:
            _calibrate(args, network, data, out_dir if session.is_main else None, say)
        if session.is_main and writes:
            network.write_record(out_dir)  # everything is checked: from here on, the run writes
        if learning:
            network.learn(data, epochs=args.learn_epoch, stimuli=args.learn, out_dir=out_dir,
                          log_epoch=args.log_epoch, log_stimuli=args.log, valid_metric=args.valid_metric,
                          stop_valid=args.stop_valid, resume=args.l, say=say)  # tests too
        elif args.test and not (args.qat_fuse or args.fuse):
            _say_lines(say, network.test(data).test_lines())
        if not session.is_main:
            return 0  # fusion, verification and export run once, on rank 0
        return _fuse_and_export(args, network, data, out_dir, say)


FLOW_STATE = "qat_flow.json"
PHASE_FOLDERS = {"clamp": "weights_clamped", "float": "weights_float"}


def _run_flow(args: argparse.Namespace) -> int:
    """``-qat-flow``: every phase of the recipes, then fusion, verification and the exports, in one run.

    Each phase is the run its manual command would be (``-recipe-phase P -learn-epoch E -set '$EPOCHS=E'``,
    ``-w`` from the phase before), on the same seed, so it writes the same files; a phase's weights move to
    ``weights_clamped/`` (``weights_float/``) as the manual flow's ``mv`` does. ``qat_flow.json`` records
    the phases done: after an interrupt, ``-qat-flow -l net_state`` skips them and resumes the one that was
    running.
    """
    import json

    import qatrun
    from qatrun.files import signals_deferred, swap_folder

    for option, given in (("-learn-epoch", args.learn_epoch), ("-learn", args.learn), ("-recipe-phase", args.recipe_phase),
                          ("-calib-reload", args.calib_reload)):
        if given:
            raise RunError(f"-qat-flow runs every phase itself: {option} does not apply (-phase-epochs sets the "
                           "epochs of each)")
    if not args.recipe:
        raise RunError("-qat-flow needs a -recipe FILE whose Phases= names the phases to run (configs/*.ini)")
    recipes = [qatrun.recipe.read(path) for path in args.recipe]
    flow = next((r for r in reversed(recipes) if r.phases), None)
    if flow is None:
        raise RunError(f"-qat-flow: none of the recipes names its phases (Phases= in {', '.join(args.recipe)})")
    phases = flow.phases
    epochs = args.phase_epochs or flow.epochs
    if not epochs:
        raise RunError(f"-qat-flow: {flow.path} gives no Epochs=: give -phase-epochs "
                       f"{','.join(['N'] * len(phases))}")
    if len(epochs) != len(phases):
        raise RunError(f"-phase-epochs: {len(epochs)} value(s) for the {len(phases)} phases of {flow.path} "
                       f"({' '.join(phases)})")
    out_dir = Path(".")
    state_path = out_dir / FLOW_STATE
    plan = {"ini": args.ini, "recipes": list(args.recipe), "phases": list(phases), "epochs": list(epochs)}
    with qatrun.Session.start(args.dev) as session, session.own_folder(out_dir, True):
        done: list[str] = []
        if args.l:
            if not state_path.is_file():
                raise RunError(f"-qat-flow -l: no '{state_path}' here: -l resumes a flow interrupted in this folder")
            state = json.loads(state_path.read_text())
            if {k: state.get(k) for k in plan} != plan:
                raise RunError(f"-qat-flow -l: '{state_path}' records another flow ({state.get('ini')}, recipes "
                               f"{state.get('recipes')}, phases {state.get('phases')}, epochs {state.get('epochs')})")
            done = list(state.get("done", []))
        seed = qatrun.resolve_seed(args.seed or (qatrun.train.state_seed(Path(args.l)) if args.l else 0), out_dir, True)
        networks = [qatrun.load(args.ini, [*args.set, f"$EPOCHS={e}"], seed=seed, kernels=args.kernels,
                                device=session.device, recipes=recipes, phase=phase)
                    for phase, e in zip(phases, epochs)]  # every phase checked before anything runs
        for network in networks:
            network.target  # noqa: B018 - one target, checked before any data is read
        final = networks[-1]
        integer_form = any(plan.act is not None for plan in final.plans.values())  # weights-only: none
        final_args = argparse.Namespace(**{**vars(args), "qat_fuse": integer_form, "test": True})
        _check_request(final_args, final, False, False)
        say = session.say
        say(final.summary())
        say(f"Using seed {seed} on {session.device}; phases: "
            + ", ".join(f"{phase} ({e} epochs)" for phase, e in zip(phases, epochs)))
        data = final.open_data()
        _say_data(say, data)
        learnt = "weights_validation" if data.size("Validation") > 0 else "weights"
        if integer_form:
            _check_delays(final, epochs[-1] * len(data.loader("Learn", True)), epochs[-1])
        resumed = next((i for i, phase in enumerate(phases) if phase not in done), len(phases))
        if args.w and resumed == 0 and args.w != "/dev/null":
            networks[0].load_weights(args.w, ignore_missing=True)
            say(f"Weights imported from '{args.w}'")
        if args.l:
            if resumed == len(phases):
                raise RunError(f"-qat-flow -l: '{state_path}' says every phase is done")
            networks[resumed].check_resume(args.l)
        for i, (phase, e, network) in enumerate(zip(phases, epochs, networks)):
            if phase in done:
                say(f"Phase {i + 1} of {len(phases)}, {phase}: done before ('{state_path}')")
                continue
            say(f"Phase {i + 1} of {len(phases)}, {phase}: {e} epochs")
            network.to(session.device)
            resume = args.l if i == resumed and args.l else None
            if i > 0 and resume is None:
                previous = out_dir / PHASE_FOLDERS[phases[i - 1]]
                network.load_weights(previous, ignore_missing=True)
                say(f"Weights imported from '{previous}'")
            if phase == "quantize" and args.calib and resume is None:
                _calibrate(args, network, data, out_dir if session.is_main else None, say)
            if session.is_main:
                network.write_record(out_dir)
            network.learn(data, epochs=e, out_dir=out_dir, log_epoch=args.log_epoch, valid_metric=args.valid_metric,
                          stop_valid=args.stop_valid, resume=resume, test=phase == "quantize", say=say)
            if session.is_main:
                if phase != "quantize":
                    target = out_dir / PHASE_FOLDERS[phase]
                    with signals_deferred():
                        swap_folder(out_dir / learnt, target, target.with_name(target.name + ".old"))
                    say(f"    '{out_dir / learnt}' moved to '{target}'")
                done.append(phase)
                state_path.write_text(json.dumps({**plan, "seed": seed, "done": done}, indent=1) + "\n")
            session.barrier()  # the other ranks read the folder rank 0 just moved
        if not session.is_main:
            return 0
        if not integer_form:
            say("No activation quantizer (weights only): the network has no integer-only form, no fusion")
        return _fuse_and_export(final_args, final, data, out_dir, say)


def _check_delays(network: Any, steps: int, epochs: int) -> None:
    """Refuses a quantized phase shorter than a quantizer's ``Delay``: it would end unquantized, and unfusable."""
    for name, plan in network.plans.items():
        for role, spec in (("QWeight", plan.weight), ("QAct", plan.act)):
            delay = getattr(spec, "delay", 0)
            if spec is not None and delay >= steps:
                raise RunError(f"-qat-flow: the quantized phase runs {steps} steps ({epochs} epochs), but {name}'s "
                               f"{role}.Delay is {delay} steps: it would end before quantizing; lower the Delay (a "
                               "recipe after the first can set it) or give more -phase-epochs")


PIXEL_IMAGES = 256


def _fuse_without_data(args: argparse.Namespace, network: Any, out_dir: Path, session: Any,
                       say: Callable[[str], None]) -> int:
    """``-qat-fuse`` / ``-fuse`` / ``-export`` of an INI without a data set (N2D2 builds such a network): the
    given weights, the integer network verified and the exports checked on random pixel images."""
    if not (args.qat_fuse or args.fuse or args.export):
        return 0
    if not args.w or args.w == "/dev/null":
        raise RunError(f"no data set ({network.without_data}): fusing and exporting need the trained weights, "
                       "-w FOLDER")
    network.load_weights(args.w, ignore_missing=True)
    say(f"Weights imported from '{args.w}'")
    images = network.pixel_images(PIXEL_IMAGES)
    say(f"Notice: no data set ({network.without_data}): the integer network and the exports are checked on "
        f"{PIXEL_IMAGES} random pixel images, not on test images")
    if not session.is_main:
        return 0
    network.write_record(out_dir)
    return _fuse_and_export(args, network, images, out_dir, say)


def _say_data(say: Callable[[str], None], data: Any) -> None:
    """Where the data came from and the size of each partition."""
    say(f"Database folder: {data.source} ({data.origin})")
    for part, label in (("Learn", "Learning"), ("Validation", "Validation"), ("Test", "Testing")):
        say(f"{label} database size: {data.size(part)} images")


def _check_request(args: argparse.Namespace, network: Any, learning: bool, calibrating: bool) -> None:
    """What the command line asks of the network that it cannot do, refused before anything is written."""
    if calibrating:
        if args.l:
            raise RunError("-calib cannot be combined with -l: the saved learning state holds the quantizers' "
                           "values already")
        if network.quantized and not learning:
            raise RunError("-calib on a quantized network (QWeight= / QAct= in the INI) sets its activation "
                           "quantizers' starting values for -learn or -learn-epoch; to quantize trained float "
                           "weights, give the float INI")
        if not network.quantized and learning:
            raise RunError("-calib quantizes a float network's trained weights; learn them first, then run "
                           "-calib N -w weights (or give a QAT INI, whose quantizers -calib starts)")
        return  # a float network is quantized by the calibration before it is fused or exported
    if args.qat_fuse or "onnx-int" in args.export:
        network.require_quantized("-qat-fuse needs" if args.qat_fuse else "-export onnx-int needs")
    if "c" in args.export:
        network.require_quantized("-export c needs")
    if "onnx-qdq" in args.export:
        network.require_quantized("-export onnx-qdq needs", integer_form=False)


def _say_lines(say: Callable[[str], None], lines: Sequence[str]) -> None:
    for line in lines:
        say(line)


def _reload_saved(network: Any, data: Any, out_dir: Path, required: str | None = None) -> None:
    """N2D2: a test without -w reloads ``weights_validation/`` (with a Validation set) or ``weights/``.

    Args:
        required: the option that needs trained weights (``-calib``): without any, an error.
    """
    folder = network.load_saved_weights(data, out_dir)
    if folder is not None:
        print(f"Weights imported from '{folder}'")
        return
    name = "weights_validation" if data.size("Validation") > 0 else "weights"
    if required:
        raise RunError(f"{required} needs trained weights: give -w FOLDER (there is no '{out_dir / name}' here)")
    print(f"Notice: no '{out_dir / name}' folder: testing the initial weights", file=sys.stderr)


def _calibrate(args: argparse.Namespace, network: Any, data: Any, out_dir: Path | None,
               say: Callable[[str], None]) -> None:
    """``-calib N`` / ``-calib-reload``: post-training quantization, or QAT's starting values."""
    import qatrun

    options = qatrun.CalibOptions(bits=args.nbbits, act_clipping=args.act_clipping_mode,
                                  quantile=args.act_quantile_value, wt_clipping=args.wt_clipping_mode,
                                  per_output=bool(args.act_rescale_per_output))
    reload = Path(qatrun.calib.FOLDER) if args.calib_reload else None
    say("Calculating calibration data range and histogram..." if reload is None
        else f"Reusing the calibration of '{reload}'...")
    result = network.calibrate(data, args.calib or -1, options, reload=reload, out_dir=out_dir, say=say)
    what = "Quantized" if result.kind == "ptq" else "Activation quantizers started"
    say(f"{what} from {result.stimuli} stimuli of {result.partition} ({result.settings()}):")
    say(result.table())
    if out_dir is not None:
        say(f"    '{out_dir / qatrun.calib.FOLDER}' saved!")


def _fuse_and_export(args: argparse.Namespace, network: Any, data: Any, out_dir: Path,
                     say: Callable[[str], None]) -> int:
    """``-qat-fuse`` / ``-fuse``, ``-export``, ``-test-onnx``."""
    import qatrun

    status = 0
    integer = None
    if args.qat_fuse or (args.fuse and network.quantized) or "onnx-int" in args.export or "c" in args.export:
        options = qatrun.FuseOptions(
            flavour=args.fuse_flavour, rescaling=args.act_rescaling_mode, weights_rounding=args.wt_round_mode,
            biases_rounding=args.b_round_mode, clips_rounding=args.c_round_mode,
        )
        integer = network.fuse(options)
        say("Integer-only network:")
        say(integer.report.summary())
        say(f"    '{integer.save(out_dir / 'weights_quantized')}' saved!")
        check = integer.verify(data if hasattr(data, "loader") else [data])  # a data set, or images
        say(str(check))
        (out_dir / "fusion_report.txt").write_text(f"{check}\n\n{integer.report.summary()}\n")
        if args.test:
            _say_lines(say, integer.test(data).test_lines())
        if not check.ok:
            print("error: the integer network does not compute what the fake-quantized network computes "
                  "within the bound of the rescaling mode (see fusion_report.txt)", file=sys.stderr)
            status = 3
    elif args.fuse:
        folded, pairs = network.fold_batchnorm()
        say(f"BatchNorm folded into {len(pairs)} layer(s)")
        if args.test:
            _say_lines(say, qatrun.train.test(folded, data.loader("Test", False)).test_lines())
    stem = Path(args.ini).stem
    names = {"onnx": f"{stem}.onnx", "onnx-qdq": f"{stem}-qdq.onnx", "onnx-int": f"{stem}-int.onnx",
             "c": f"{stem}-c"}
    for kind in dict.fromkeys(args.export):
        if kind == "c":  # the C export, proven on the first -db-export Test images (qatrun.export.c)
            report = integer.export_c(out_dir / names[kind], data, None if args.db_export < 0 else args.db_export)
        else:
            report = network.export(kind, out_dir / names[kind], data, integer)
        say(report.summary())
        if not report.ok:
            print(f"error: {names[kind]} does not compute what qatrun computes (see above)", file=sys.stderr)
            status = 3
    if args.test_onnx:
        metrics = qatrun.test_onnx(args.test_onnx, data)
        say(f"Testing '{args.test_onnx}' in onnxruntime:")
        _say_lines(say, metrics.test_lines())
    return status
