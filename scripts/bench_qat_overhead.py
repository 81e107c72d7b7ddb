#!/usr/bin/env python3
"""The cost of QAT: qatrun's SAT W4A4 training step over the float step of the same network, and torch.ao's.

    .venv/bin/python scripts/bench_qat_overhead.py                       # both networks, bench_qat_overhead.json
    .venv/bin/python scripts/bench_qat_overhead.py --networks LeNet --target-seconds 2
    .venv/bin/python scripts/bench_qat_overhead.py --profile             # then where the QAT step spends its time

Networks (random initial weights from the INI's fillers, with a fixed seed; real data through ``qatrun.data``):

* LeNet: ``models/LeNet-QAT.ini`` (SAT W4A4, 8-bit conv1 and fc2, batch 256, MNIST);
* ResNet-20: ``models/ResNet20-cifar10-W4A4.ini`` when it exists, else ``models/ResNet20-cifar10.ini`` with
  SAT W4A4 applied through ``-set``-style overrides (the recipe of ``scripts/bench_onnx.py``: 4-bit weights,
  8-bit stem and classifier, a 4-bit SAT quantizer after every BatchNorm and every residual sum; batch 128),
  on the CIFAR-10 subset (``N2D2_DATA``, default ``../shared/data`` beside the repository).

Three variants of each network, each built by ``qatrun.load`` with the same seed:

* float: the QAT network with its quantizers swapped back out (``quant.unprepare``): the same graph, the
  same layers and initial weights, no quantizer; where a SAT activation quantizer was the ReLU (its clip at
  0 after a ``Linear`` activation, the QAT INIs' convention), a ``nn.ReLU`` takes its place;
* qatrun QAT: the network as the INI describes it, its quantizers given the kernels of
  ``quant.select_kernels()`` (the process's ``QATRUN_KERNELS``, default ``auto``: the fused quantizer kernels
  of ``qatrun.quant.kernels``, native C++ on the CPU, built when qatrun was installed); ``--eager`` adds the
  same network on ``quant.select_kernels("eager")`` as a fourth variant;
* torch.ao: the float network made plain for torch.ao (the ``Identity`` modules of N2D2's ``Linear``
  activations removed, so that Conv-BatchNorm(-ReLU) fuse, and unit-weight ElemWise sums turned into
  ``+``), then FX-mode QAT: ``prepare_qat_fx`` with ``get_default_qat_qconfig_mapping("x86")`` (8-bit fused
  fake-quantizers with moving-average observers, per-channel weights, BatchNorm folded into the convolution
  during training). Eager ``prepare_qat`` would need QuantStub/DeQuantStub and hand-fused modules; FX mode
  does both on the GraphModule.

All three take the same step: forward, qatrun's loss (cross-entropy / B), backward, ``train.N2D2Optimizer``
with each parameter's INI solver (torch.ao's fused modules keep the original parameter objects). Only the
steps are timed (the batches are read beforehand and cycled), a fixed number per measurement, chosen so that
the float measurement lasts about ``--target-seconds``; the repetitions interleave float / QAT / torch.ao.
Each measurement rebuilds its model from the seeded initial weights and takes one untimed step first, so all
measurements of a variant do the same computation.

OpenMP: the script applies the qatrun command's defaults (``qatrun.cli.OPENMP_DEFAULTS``:
``OMP_WAIT_POLICY=ACTIVE`` unless the environment sets it) before torch loads, so every variant runs as under
``qatrun``. Otherwise idle worker threads fall asleep between the QAT step's many short operations and each
wake-up costs more than the operation; ``OMP_WAIT_POLICY=PASSIVE`` shows that case. ``--threads 1`` measures
the code alone.
"""

from __future__ import annotations

import argparse
import math
import operator
import os
import statistics
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The qatrun command's OpenMP settings (qatrun.cli.OPENMP_DEFAULTS, unless the environment sets them), applied
# before torch loads OpenMP, so that all variants run as under the command.
from qatrun.cli import apply_openmp_defaults  # noqa: E402  (imports no torch)

apply_openmp_defaults()

import torch  # noqa: E402
from torch import fx, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

import qatrun  # noqa: E402
from qatrun import quant, train  # noqa: E402
from qatrun.net.layers import ElemWise  # noqa: E402

SEED = 1
MODELS = common.ROOT / "models"
DATA = common.ROOT.parent / "shared" / "data"  # the default N2D2_DATA: the shared data beside the repository
SAT_ACT = ("QAct=SAT", "QAct.Range=15", "QAct.Alpha=4.0")
RESNET_SUMS = [f"res{stage}.{block}_sum" for stage in (1, 2, 3) for block in (1, 2, 3)]
RESNET_W4A4 = (  # the same recipe as scripts/bench_onnx.py
    [f"[{base}]{key}" for base in ("Conv3x3_def", "Conv1x1_def") for key in ("QWeight=SAT", "QWeight.Range=15")]
    + ["[conv1]QWeight.Range=255", "[Bn_def]ActivationFunction=Linear"]
    + [f"[{section}]{key}" for section in ("BnRelu_def", "Bn_def", *RESNET_SUMS) for key in SAT_ACT]
    + ["[fc]QWeight=SAT", "[fc]QWeight.Range=255", "[fc]QWeight.ApplyScaling=1"]
)
VARIANTS = ("float", "qatrun-QAT", "torch.ao")
EAGER = "qatrun-eager"  # --eager: qatrun's QAT on the eager kernels (no fused quantizer kernels)


def network_recipes() -> dict[str, tuple[Path, list[str]]]:
    resnet = MODELS / "ResNet20-cifar10-W4A4.ini"
    return {
        "LeNet": (MODELS / "LeNet-QAT.ini", []),
        "ResNet-20": (resnet, []) if resnet.is_file() else (MODELS / "ResNet20-cifar10.ini", RESNET_W4A4),
    }


@dataclass
class Trainee:
    """A model, its optimizer and what was done to build it."""

    model: nn.Module
    optimizer: train.N2D2Optimizer
    note: str


def build(ini: Path, overrides: list[str], kernels: quant.Kernels | str = "eager") -> qatrun.Network:
    return qatrun.load(ini, overrides, seed=SEED, kernels=kernels)


def optimizer_for(model: nn.Module, network: qatrun.Network) -> tuple[train.N2D2Optimizer, int]:
    """The INI's solvers for the model's parameters (matched by identity); unmatched ones take the first solver.

    Returns:
        The optimizer and the number of parameters that had no solver of their own.
    """
    solvers = {id(param): (name, config) for name, param, config in network.solvers}
    default = network.solvers[0][2]
    triples, unmatched = [], 0
    for name, param in model.named_parameters():
        found = solvers.get(id(param))
        unmatched += found is None
        triples.append((found[0] if found else name, param, found[1] if found else default))
    return train.N2D2Optimizer(train.group_by_solver(triples), network.spec.batch_size), unmatched


def float_network(network: qatrun.Network) -> tuple[fx.GraphModule, int]:
    """The QAT network without its quantizers, in place: ``quant.unprepare``, then a ReLU wherever a SAT
    activation quantizer followed a ``Linear`` activation (its clip at 0 is the network's ReLU there; without
    it the float network would have no non-linearity at all).

    Returns:
        The float GraphModule and the number of ReLUs put back.
    """
    gm = network.gm
    relus = [
        name for name, module in gm.named_modules()
        if isinstance(module, quant.QuantizedActivation) and isinstance(module.quantizer, quant.SATActivationQuantizer)
        and isinstance(module.act, nn.Identity)
    ]
    quant.unprepare(gm)
    for name in relus:
        parent, _, attr = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, nn.ReLU())
    return gm, len(relus)


def float_trainee(ini: Path, overrides: list[str]) -> Trainee:
    network = build(ini, overrides)
    model, relus = float_network(network)
    optimizer, unmatched = optimizer_for(model, network)
    assert unmatched == 0, unmatched
    return Trainee(model, optimizer, f"quant.unprepare of the QAT network, {relus} SAT clips as ReLU")


def qat_trainee(ini: Path, overrides: list[str], kernels: quant.Kernels) -> Trainee:
    network = build(ini, overrides, kernels)
    optimizer = train.N2D2Optimizer(train.group_by_solver(network.solvers), network.spec.batch_size)
    quantizers = sum(1 for m in network.gm.modules() if quant.describe(m) is not None)
    return Trainee(network.gm, optimizer, f"{quantizers} qatrun quantizers, {kernels.describe()} kernels")


def plain_for_torch_ao(gm: fx.GraphModule) -> tuple[fx.GraphModule, str]:
    """The float GraphModule in the form torch.ao's FX QAT expects: no Identity nodes, sums as ``+``."""
    removed = summed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
        elif (isinstance(module, ElemWise) and module.op == "Sum" and len(node.args) == 2
              and bool((module.weights == 1).all()) and bool((module.shifts == 0).all())):
            with gm.graph.inserting_after(node):
                add = gm.graph.call_function(operator.add, tuple(node.args))
            node.replace_all_uses_with(add)
            gm.graph.erase_node(node)
            summed += 1
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, f"{removed} Identity removed, {summed} ElemWise sums as +"


def torch_ao_trainee(ini: Path, overrides: list[str], example: torch.Tensor) -> Trainee:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    network = build(ini, overrides)
    gm, note = plain_for_torch_ao(float_network(network)[0])
    gm.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = prepare_qat_fx(gm, get_default_qat_qconfig_mapping("x86"), example_inputs=(example,))
    optimizer, unmatched = optimizer_for(prepared, network)
    fake_quants = sum(1 for m in prepared.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase))
    return Trainee(prepared, optimizer, f"prepare_qat_fx x86; {note}; {fake_quants} fake-quantizers"
                   + (f"; {unmatched} parameters without an INI solver" if unmatched else ""))


def step(trainee: Trainee, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """One training step as ``train.learn`` takes it: forward, loss / B, backward, N2D2 update."""
    out = trainee.model(x)
    out = out.flatten(1) if out.dim() > 2 else out
    loss = train.loss_value("ce", out, y, batch_size)
    loss.backward()
    trainee.optimizer.step()
    return loss.detach()


def timed_steps(trainee: Trainee, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int,
                batch_size: int, cpu: list[float]) -> float:
    """Wall seconds of ``steps`` steps (cycling the batches); the process CPU seconds go to ``cpu``."""
    trainee.model.train()
    start, start_cpu = common.now(), common.cpu()
    losses = [step(trainee, *batches[k % len(batches)], batch_size) for k in range(steps)]
    total = torch.stack(losses).sum().item()  # every step done (a no-op on the CPU, a sync on a GPU)
    seconds = common.now() - start
    cpu.append(common.cpu() - start_cpu)
    if not math.isfinite(total):
        print(f"   warning: non-finite loss ({trainee.note})", flush=True)
    return seconds


def read_batches(network: qatrun.Network, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    provider = network.spec.open(SEED)
    batches = []
    for x, y in provider.loader("Learn", True, epoch=0):
        batches.append((x, y))
        if len(batches) == count:
            break
    return batches


def bench_network(name: str, ini: Path, overrides: list[str], args: argparse.Namespace, kernels: quant.Kernels,
                  ) -> dict:
    print(f"\n== {name}: {ini.name}" + (f" with {len(overrides)} overrides" if overrides else ""), flush=True)
    network = build(ini, overrides)
    batch_size = network.spec.batch_size
    start = common.now()
    batches = read_batches(network, args.batches)
    print(f"   {len(batches)} batches of {batch_size} read in {common.now() - start:.1f} s", flush=True)
    makers: dict[str, Callable[[], Trainee]] = {
        "float": lambda: float_trainee(ini, overrides),
        "qatrun-QAT": lambda: qat_trainee(ini, overrides, kernels),
        "torch.ao": lambda: torch_ao_trainee(ini, overrides, batches[0][0][:2]),
        EAGER: lambda: qat_trainee(ini, overrides, quant.select_kernels("eager")),
    }
    variants = VARIANTS + ((EAGER,) if args.eager else ())
    trainees = {v: makers[v]() for v in variants}
    for v, t in trainees.items():
        print(f"   {v:<11} {t.note}", flush=True)

    # Warm-up (first-call costs), then a per-step estimate that fixes the step count.
    estimate = {}
    for v, t in trainees.items():
        timed_steps(t, batches, 2, batch_size, [])
        estimate[v] = timed_steps(t, batches, 2, batch_size, []) / 2
    steps = args.steps or max(3, math.ceil(args.target_seconds / estimate["float"]))
    print("   per-step estimate: " + ", ".join(f"{v} {s * 1e3:.0f} ms" for v, s in estimate.items())
          + f" -> {steps} steps per measurement", flush=True)

    cpu: dict[str, list[float]] = {v: [] for v in variants}

    def measure(variant: str) -> float:
        # Every measurement starts from the initial weights: the same computation each time, and no drift
        # into a diverged state (torch.ao's fused Conv-BatchNorm diverges on these solvers after ~40 steps).
        trainees[variant] = makers[variant]()
        timed_steps(trainees[variant], batches, 1, batch_size, [])  # the new modules' first call, untimed
        return timed_steps(trainees[variant], batches, steps, batch_size, cpu[variant])

    times = common.interleaved([(v, lambda v=v: measure(v)) for v in variants], args.repetitions,
                               label=f"{name} ")
    result = {
        "ini": str(ini.relative_to(common.ROOT)),
        "overrides": overrides,
        "batch_size": batch_size,
        "steps_per_measurement": steps,
        "distinct_batches": len(batches),
        "notes": {v: t.note for v, t in trainees.items()},
        "seconds": times,
        "cpu_seconds": cpu,
        "median_seconds": {v: statistics.median(s) for v, s in times.items()},
        "median_ms_per_step": {v: statistics.median(s) / steps * 1e3 for v, s in times.items()},
        "qat_over_float": common.ratio_figures(times["qatrun-QAT"], times["float"]),
        "torch_ao_over_float": common.ratio_figures(times["torch.ao"], times["float"]),
        "qat_over_torch_ao": common.ratio_figures(times["qatrun-QAT"], times["torch.ao"]),
        "cpu_qat_over_float": common.ratio_figures(cpu["qatrun-QAT"], cpu["float"]),
        "cpu_torch_ao_over_float": common.ratio_figures(cpu["torch.ao"], cpu["float"]),
        "kernels": kernels.describe(),
    }
    if args.eager:
        result["eager_over_float"] = common.ratio_figures(times[EAGER], times["float"])
    if args.profile:
        result["profile"] = profile(trainees, batches, batch_size, min(steps, 10))
    return result


def profile(trainees: dict[str, Trainee], batches: list, batch_size: int, steps: int) -> dict[str, str]:
    """torch.profiler tables (self CPU time per op) of the float and QAT steps."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    tables = {}
    for v in ("float", "qatrun-QAT"):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_steps(trainees[v], batches, steps, batch_size, [])
        averages = prof.key_averages()
        tables[v] = averages.table(sort_by="self_cpu_time_total", row_limit=25)
        print(f"\n--- profile, {v}, {steps} steps (self CPU time per op)\n{tables[v]}", flush=True)
        # The quantizers are autograd Functions: their forward and backward appear as events of their own.
        functions = [e for e in averages
                     if e.key.endswith(("Function", "FunctionBackward")) and not e.key.startswith("autograd::")]
        for e in sorted(functions, key=lambda e: -e.cpu_time_total):
            print(f"    {e.key:<40} {e.cpu_time_total / 1e3 / steps:8.2f} ms per step ({e.count} calls)")
    return tables


def report(results: dict[str, dict]) -> None:
    header = ("network", "batch", "steps", "float ms/step", "QAT ms/step", "torch.ao ms/step",
              "QAT/float", "torch.ao/float", "QAT/torch.ao")
    rows = []
    for name, r in results.items():
        ms = r["median_ms_per_step"]
        rows.append((name, str(r["batch_size"]), str(r["steps_per_measurement"]), f"{ms['float']:.1f}",
                     f"{ms['qatrun-QAT']:.1f}", f"{ms['torch.ao']:.1f}",
                     f"{r['qat_over_float']['median_of_ratios']:.3f}",
                     f"{r['torch_ao_over_float']['median_of_ratios']:.3f}",
                     f"{r['qat_over_torch_ao']['median_of_ratios']:.3f}"))
    print("\nmedians over the repetitions; ratios are medians of the per-repetition ratios")
    print(common.table(header, rows))
    for name, r in results.items():
        q, a = r["qat_over_float"], r["torch_ao_over_float"]
        cq, ca = r["cpu_qat_over_float"], r["cpu_torch_ao_over_float"]
        verdict = "within" if q["median_of_ratios"] <= 1.25 else "ABOVE"
        faster = "qatrun" if r["qat_over_torch_ao"]["median_of_ratios"] < 1 else "torch.ao"
        print(f"{name}: QAT/float {q['median_of_ratios']:.3f} (ratio of medians {q['ratio_of_medians']:.3f}; "
              f"per rep {', '.join(f'{x:.3f}' for x in q['ratios'])}) {verdict} the 1.25 target; "
              f"torch.ao/float {a['median_of_ratios']:.3f} (per rep {', '.join(f'{x:.3f}' for x in a['ratios'])}); "
              f"faster QAT: {faster}; CPU-time ratios QAT/float {cq['median_of_ratios']:.3f}, "
              f"torch.ao/float {ca['median_of_ratios']:.3f}")
        if "eager_over_float" in r:
            e = r["eager_over_float"]
            print(f"{name}: qatrun QAT on the eager kernels over float {e['median_of_ratios']:.3f} "
                  f"(per rep {', '.join(f'{x:.3f}' for x in e['ratios'])})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="LeNet,ResNet-20", help="comma-separated [LeNet,ResNet-20]")
    parser.add_argument("--target-seconds", type=float, default=5.0,
                        help="seconds of the float measurement, which sets the step count [5]")
    parser.add_argument("--steps", type=int, default=0, help="steps per measurement (overrides --target-seconds)")
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved repetitions [3]")
    parser.add_argument("--batches", type=int, default=16, help="distinct batches read and cycled [16]")
    parser.add_argument("--eager", action="store_true",
                        help="also time qatrun's QAT on the eager kernels (the unfused quantizer functions)")
    parser.add_argument("--profile", action="store_true", help="profile the float and QAT steps afterwards")
    parser.add_argument("--threads", type=int, default=0, help="torch threads [torch's default]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("N2D2_DATA", str(DATA))
    kernels = quant.select_kernels()  # the process's QATRUN_KERNELS (default auto), read once
    print(f"qatrun QAT kernels: {kernels.describe()}", flush=True)

    load_start = common.say_load("start")
    env = common.environment()
    recipes = network_recipes()
    results = {}
    for name in args.networks.split(","):
        ini, overrides = recipes[name]
        results[name] = bench_network(name, ini, overrides, args, kernels)
    load_end = common.say_load("end")
    report(results)
    common.write_json("bench_qat_overhead.json", {
        "benchmark": "qatrun SAT W4A4 QAT step vs float step vs torch.ao FX QAT (x86 qconfig)",
        "environment": env,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "repetitions": args.repetitions,
        "target_seconds": args.target_seconds,
        "targets": {"qat_over_float_max": 1.25, "qatrun_faster_than_torch_ao": True},
        "networks": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
