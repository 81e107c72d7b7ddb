"""Composes the stages of one run: INI -> network -> quantizers -> data -> learn/test -> fuse -> export.

This is the only module that imports every package. Each stage reads its own INI keys; once every stage
has read what it honours, ``Document.check_strict`` turns any key left over into an error, before any
data is loaded or any time is spent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from qatrun import __version__, data, export, fuse, ini, net, quant, train
from qatrun.errors import ConfigError, DataError, RunError


@dataclass
class Network:
    """What the INI describes, built and checked, with no data loaded."""

    doc: ini.Document
    spec: data.DataSpec
    gm: torch.fx.GraphModule
    plans: dict
    solvers: list[tuple[str, nn.Parameter, train.SolverConfig]] = field(default_factory=list)


def build_network(ini_path: str, overrides: list[str]) -> Network:
    """Parses the INI, builds the quantized graph and reads every key of every stage.

    Args:
        ini_path: the network INI.
        overrides: ``-set`` values, ``[Section]Key=value`` or ``$VAR=value``.

    Returns:
        The network, ready for data.

    Raises:
        QatrunError: on any configuration error, with its file and line.
    """
    doc = ini.load(ini_path, overrides=overrides)
    spec = data.DataSpec.from_doc(doc)
    gm = net.build(doc, spec.input_shape)
    missing_data = None
    try:  # from the data files' headers: solver schedules (QActSolver.* too) often refer to [sp]_EpochSize
        spec.inject_epoch_size()
    except DataError as err:
        missing_data = err  # the summary needs no data, unless a value refers to the epoch size
    try:
        plans = quant_plans(doc, gm)
        gm = quant.prepare(gm, plans)
        network = Network(doc=doc, spec=spec, gm=gm, plans=plans)
        network.solvers = solver_triples(network)
    except ConfigError as err:
        if missing_data is not None and "_EpochSize" in err.message:
            raise DataError(f"{err.message}: it is the number of learning stimuli, and the data set was not "
                            f"found ({missing_data})", err.location, err.section, err.key) from err
        raise
    return network


def quant_plans(doc: ini.Document, gm: torch.fx.GraphModule) -> dict[str, quant.QuantPlan]:
    """The quantizers the INI gives the cells of ``gm`` (built from ``doc``), by module name, for
    ``quant.prepare``."""
    plans = {}
    for cell in gm.cells.values():
        plan = _quant_plan(doc, cell)
        if plan is not None:
            plans[net.module_name(cell.name)] = plan
    return plans


def _quant_plan(doc: ini.Document, cell: net.Cell) -> quant.QuantPlan | None:
    """A cell's quantizers: ``QWeight*`` from its section, ``QAct*`` from the section of its activation.

    The two differ for an imported ONNX cell whose ReLU has a section of its own (N2D2's override rule).
    """
    weights = quant.plan_for(cell.section, doc.params(cell.section)) if cell.section is not None else None
    act_section = getattr(cell, "act_section", None)
    if act_section is None:
        return weights
    act = quant.plan_for(act_section, doc.params(act_section))
    if act is None or act.act is None:
        return weights
    return dataclasses.replace(weights, act=act.act, act_solver=act.act_solver) if weights is not None else act


# Parameter roles of each cell type: the attribute of the module and the INI solver that updates it.
_ROLES = {
    "Conv": (("weight", "WeightsSolver"), ("bias", "BiasSolver")),
    "Deconv": (("weight", "WeightsSolver"), ("bias", "BiasSolver")),
    "Fc": (("weight", "WeightsSolver"), ("bias", "BiasSolver")),
    "BatchNorm": (("weight", "ScaleSolver"), ("bias", "BiasSolver")),
}


def solver_triples(network: Network) -> list[tuple[str, nn.Parameter, train.SolverConfig]]:
    """Every learnable tensor with the solver the INI gives it (and every solver key read).

    Layer weights, biases and BatchNorm scales take ``Solvers.*`` / ``WeightsSolver.*`` / ``BiasSolver.*``
    / ``ScaleSolver.*``; quantizer parameters (SAT alpha, LSQ steps) take ``QWeightSolver`` / ``QActSolver``.
    """
    gm, doc = network.gm, network.doc
    triples: list[tuple[str, nn.Parameter, train.SolverConfig]] = []
    for cell in gm.cells.values():
        name = net.module_name(cell.name)
        module = gm.get_submodule(name)
        params = doc.params(cell.section) if cell.section is not None else None
        for attr, role in _ROLES.get(cell.type, ()):
            # An imported cell without an override section takes N2D2's default solver.
            config = train.SolverConfig.from_params(cell.section, params, role) if params is not None \
                else train.SolverConfig()
            tensor = getattr(module, attr, None)
            if isinstance(tensor, nn.Parameter):
                triples.append((f"{cell.name}.{attr}", tensor, config))
        plan = network.plans.get(name)
        if plan is None:
            continue
        weight_quantizer = getattr(module, "weight_quantizer", None)
        if weight_quantizer is not None:
            triples += _quantizer_triples(f"{cell.name}.QWeight", weight_quantizer, plan.weight_solver)
        if cell.act_module is not None:
            act = gm.get_submodule(name + "_act")
            act_quantizer = getattr(act, "quantizer", None)
            if act_quantizer is not None:
                triples += _quantizer_triples(f"{cell.name}.QAct", act_quantizer, plan.act_solver)
    return triples


def _quantizer_triples(prefix: str, quantizer: nn.Module, plan: quant.SolverPlan | None,
                       ) -> list[tuple[str, nn.Parameter, train.SolverConfig]]:
    """A quantizer's parameters with their solver; a parameter with a lower bound (the quantizer's
    ``PARAMETER_MIN``, e.g. LSQ's step size) is clamped to it after each update, inside any ``Clamping``."""
    config = train.SolverConfig.from_plan(plan)
    bounds: dict[str, float] = getattr(quantizer, "PARAMETER_MIN", {})
    triples = []
    for name, param in quantizer.named_parameters():
        bound = bounds.get(name)
        bounded = config
        if bound is not None and (config.clamp_min is None or config.clamp_min < bound):
            bounded = dataclasses.replace(config, clamp_min=bound)
        triples.append((f"{prefix}.{name}", param, bounded))
    return triples


def format_summary(network: Network) -> str:
    """One row per layer, then the totals, as ``qatrun NET.ini`` prints them."""
    gm = network.gm
    rows = net.summarize(gm)
    header = ("layer", "type", "inputs", "output", "params", "MACs", "weights", "activation")
    table = [header]
    total_params = total_macs = 0
    total_bits = 0
    for row in rows:
        cell = gm.cells[row.name]
        wq = quant.describe(gm.get_submodule(net.module_name(cell.name)))
        aq = quant.describe(gm.get_submodule(net.module_name(cell.name) + "_act")) if cell.act_module else None
        c, h, w = row.out_shape
        act = ", ".join(a for a in (row.activation, aq) if a)
        table.append((row.name, row.type, ",".join(row.inputs), f"{c}x{h}x{w}", f"{row.params:,}",
                      f"{row.macs:,}", wq or "-", act or "-"))
        total_params += row.params
        total_macs += row.macs
        total_bits += _stored_bits(gm, cell, row.params)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    numeric = {4, 5}
    lines = []
    for k, r in enumerate(table):
        cells = [r[i].rjust(widths[i]) if i in numeric else r[i].ljust(widths[i]) for i in range(len(r))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    lines.append("")
    lines.append(f"Total parameters: {total_params:,}")
    lines.append(f"Total MACs per image: {total_macs:,}")
    lines.append(f"Size at float32: {_human(total_params * 32)}")
    lines.append(f"Size at the configured bits: {_human(total_bits)}")
    return "\n".join(lines)


def _stored_bits(gm: torch.fx.GraphModule, cell, params: int) -> int:
    """Bits to store a cell's parameters: weights at their quantizer's bits, everything else at 32."""
    module = gm.get_submodule(net.module_name(cell.name))
    weight = getattr(module, "weight", None)
    quantizer = getattr(module, "weight_quantizer", None)
    if weight is None or quantizer is None or not getattr(quantizer.spec, "apply_quantization", True):
        return params * 32
    weight_bits = quant.bits(quantizer.spec)
    mask = getattr(module, "mask", None)
    n_weight = int(mask.sum()) if mask is not None else weight.numel()
    return n_weight * weight_bits + (params - n_weight) * 32


def _human(bits: int) -> str:
    size = bits / 8
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")




# ------------------------------------------------------------------------------------------- weights folders


def weight_entries(network: Network) -> list[train.Entry]:
    """The network's free parameters as N2D2 weights-folder entries (tensors shared with the modules)."""
    entries: list[train.Entry] = []
    gm = network.gm
    for cell in gm.cells.values():
        module = gm.get_submodule(net.module_name(cell.name))
        if cell.type in ("Conv", "Deconv", "Fc"):
            tensors = {"weights": module.weight.data}
            if getattr(module, "bias", None) is not None:
                tensors["biases"] = module.bias.data
            quantized = hasattr(module, "quantized_weight")
            if quantized:
                with torch.no_grad():
                    tensors["quant_weights"] = module.quantized_weight().detach()
            kind = "fc" if cell.type == "Fc" else "conv"
            weights = module.weight.data
            if kind == "fc":
                weights = weights.reshape(weights.shape[0], -1)
                tensors["weights"] = weights
                if "quant_weights" in tensors:
                    tensors["quant_weights"] = tensors["quant_weights"].reshape(weights.shape[0], -1)
            mask = getattr(module, "mask", None)
            entries.append(train.Entry(cell.name, kind, tensors, mask if kind == "conv" else None,
                                       10 if quantized else 6))
        elif cell.type == "BatchNorm":
            entries.append(train.Entry(cell.name, "bn", {
                "scales": module.weight.data, "biases": module.bias.data,
                "means": module.running_mean, "variances": module.running_var,
            }))
    for stem, tensor in _quantizer_files(network).items():
        cell, _, suffix = stem.partition("|")
        entries.append(train.Entry(cell, "scalar", {suffix: tensor}))
    return entries


def _quantizer_modules(network: Network) -> list[tuple[str, nn.Module]]:
    """(cell name, module holding quantizer state) for every quantized layer and activation."""
    gm = network.gm
    found = []
    for cell in gm.cells.values():
        name = net.module_name(cell.name)
        for module_name in (name, name + "_act"):
            try:
                module = gm.get_submodule(module_name)
            except AttributeError:
                continue
            if hasattr(module, "n2d2_files"):
                found.append((cell.name, module))
    return found


def _quantizer_files(network: Network) -> dict[str, torch.Tensor]:
    """``"<cell>|<suffix>"`` -> scalar tensor of the quantizer files N2D2 writes (SAT alpha, LSQ steps)."""
    files = {}
    for cell, module in _quantizer_modules(network):
        for stem, tensor in module.n2d2_files(cell).items():
            assert stem.startswith(cell + "_"), stem
            files[f"{cell}|{stem[len(cell) + 1:]}"] = tensor.detach().clone()
    return files


class NetworkIO:
    """Weights folders in N2D2's format for the whole network, quantizer files included."""

    def __init__(self, network: Network, ignore_missing: bool = False) -> None:
        self.network = network
        self.ignore_missing = ignore_missing

    def save(self, folder: Path) -> None:
        train.export_folder(folder, weight_entries(self.network))

    def load(self, folder: Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"weights folder not found: {folder}")
        entries = [e for e in weight_entries(self.network) if e.kind != "scalar"]
        train.import_folder(folder, entries, ignore_missing=self.ignore_missing)
        for cell, module in _quantizer_modules(self.network):
            for stem in module.n2d2_files(cell):
                path = folder / f"{train.file_path(stem)}.syntxt"
                if path.is_file():
                    module.load_n2d2_file(stem, train.read_values(path))
                elif not self.ignore_missing:
                    raise DataError(f"Could not open synaptic file: {path}")
                else:
                    print(f"Notice: Could not open synaptic file: {path} (the INI value is kept)", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ the run


def _device(dev: int | None) -> torch.device:
    """``-dev``: None = the first GPU if there is one, else the CPU; -1 = the CPU; N = GPU N (an error if absent)."""
    if dev is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if dev < 0:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev >= count:
        raise RunError(f"-dev {dev}: no such CUDA device ({count} found; use -dev -1 for the CPU)")
    return torch.device(f"cuda:{dev}")


def _seed(args: argparse.Namespace, out_dir: Path, learning: bool) -> int:
    """``-seed``: 0 means time-based, except that a run that does not learn re-reads ``seed.dat`` (N2D2).

    Under torchrun every process takes rank 0's seed, so that all build the same network and data order.
    """
    seed_file = out_dir / "seed.dat"
    if args.seed:
        seed = args.seed
    elif not learning and seed_file.is_file() and seed_file.read_text().strip().isdigit():
        seed = int(seed_file.read_text().strip())
    else:
        seed = int(time.time()) % 2**31 or 1
    if torch.distributed.is_initialized():
        shared = torch.tensor([seed], dtype=torch.int64)
        torch.distributed.broadcast(shared, src=0)
        seed = int(shared.item())
    return seed


def _init_distributed(device: torch.device) -> torch.device:
    """Joins the process group when started by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or torch.distributed.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _record_run(network: Network, args: argparse.Namespace, seed: int, out_dir: Path) -> None:
    """Everything needed to reproduce the run: seed, command, versions, the resolved INI with origins."""
    (out_dir / "seed.dat").write_text(f"{seed}\n")
    import numpy

    versions = {"qatrun": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__}
    lines = [f"; qatrun run record, {time.strftime('%Y-%m-%d %H:%M:%S')}",
             f"; command: qatrun {' '.join(sys.argv[1:])}", f"; seed: {seed}"]
    lines += [f"; {k}: {v}" for k, v in versions.items()]
    record = "\n".join(lines) + "\n\n" + network.doc.dump_resolved()
    (out_dir / f"{Path(args.ini).name}.resolved").write_text(record)


def _say(line: str) -> None:
    """Console output; under torchrun, rank 0 alone speaks."""
    if _rank() == 0:
        print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    """Runs what the command line asks for; returns the exit status."""
    learning = bool(args.learn or args.learn_epoch)
    acting = learning or args.test or args.qat_fuse or args.fuse or args.export or args.test_onnx
    out_dir = Path(".")
    if not acting:
        network = build_network(args.ini, args.set)
        network.doc.check_strict()
        print(format_summary(network))
        return 0
    device = _init_distributed(_device(args.dev))
    try:
        return _act(args, out_dir, device, learning)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _act(args: argparse.Namespace, out_dir: Path, device: torch.device, learning: bool) -> int:
    """Learning, testing, fusion and export (the run once the network is known to be well described)."""
    seed = _seed(args, out_dir, learning)
    torch.manual_seed(seed)  # fillers draw from the global generator
    network = build_network(args.ini, args.set)
    network.doc.check_strict()
    if len(network.gm.targets) != 1:
        raise ConfigError(f"qatrun learns and tests one target; the network has {len(network.gm.targets)}",
                          network.gm.targets[-1].section.location)
    _say(format_summary(network))
    _say(f"Using seed {seed} on {device}")
    provider = network.spec.open(seed)
    for part in ("Learn", "Validation", "Test"):
        _say(f"{'Learning' if part == 'Learn' else 'Testing' if part == 'Test' else part} database size: "
             f"{provider.size(part)} images")
    if _rank() == 0:
        _record_run(network, args, seed, out_dir)
    gm = network.gm.to(device)
    io = NetworkIO(network, ignore_missing=True)
    if args.w and args.w != "/dev/null":
        io.load(Path(args.w))
        _say(f"Weights imported from '{args.w}'")
    target = gm.targets[0]
    if learning:
        cfg = train.LearnConfig(
            batch_size=network.spec.batch_size, epochs=args.learn_epoch, stimuli=args.learn,
            log_epoch=args.log_epoch, log_stimuli=args.log, valid_metric=args.valid_metric,
            stop_valid=args.stop_valid, loss=target.loss, target_value=target.target_value,
            default_value=target.default_value, seed=seed, out_dir=out_dir, target_name=target.cell,
            test_after=bool(args.test) or provider.size("Test") > 0,
        )
        optimizer = train.N2D2Optimizer(train.group_by_solver(network.solvers), network.spec.batch_size)
        resume = Path(args.l) if args.l else None
        meta = {"ini": network.doc.dump_resolved(), "seed": seed}
        result = train.learn(gm, provider, optimizer, cfg, io, resume=resume, say=_say, meta=meta)  # tests too
        if _rank() == 0 and result.best_folder is not None:
            train.plot_distributions(result.best_folder)  # once, at the end: drawing costs seconds
        metrics = None
    else:
        if not args.w and not args.l:
            _auto_load(io, provider, out_dir)
        metrics = None
        if args.test and not (args.qat_fuse or args.fuse):
            metrics = train.test(gm, provider.loader("Test", False))
    if metrics is not None:
        for line in metrics.test_lines():
            _say(line)
    status = 0
    if _rank() != 0:
        return status  # fusion, verification and export run once, on rank 0
    int_gm = None
    if args.qat_fuse or (args.fuse and network.plans) or "onnx-int" in args.export:
        if not network.plans:
            raise RunError("-qat-fuse and -export onnx-int need a quantized network (QWeight= / QAct= in the INI); "
                           "-fuse folds BatchNorm of a float network")
        status, int_gm = _fuse_integer(network, args, provider, out_dir)
    elif args.fuse:
        folded, pairs = fuse.fold_batchnorm(gm)
        _say(f"BatchNorm folded into {len(pairs)} layer(s)")
        if args.test:
            for line in train.test(folded, provider.loader("Test", False)).test_lines():
                _say(line)
    if args.export:
        status = max(status, _export(network, args, provider, out_dir, int_gm))
    if args.test_onnx:
        _test_onnx(Path(args.test_onnx), provider)
    return status


def _sample_batch(provider: data.Provider, count: int = 64) -> torch.Tensor:
    """The first Test images (else Learn), as the exported files' check input."""
    partition = "Test" if provider.size("Test") else "Learn"
    x, _ = next(iter(provider.loader(partition, False, batch_size=count)))
    return x


def _export(network: Network, args: argparse.Namespace, provider: data.Provider, out_dir: Path,
            int_gm: nn.Module | None) -> int:
    """``-export``: writes each file, runs it in onnxruntime against qatrun's network, reports."""
    stem = Path(args.ini).stem
    names = {"onnx": f"{stem}.onnx", "onnx-qdq": f"{stem}-qdq.onnx", "onnx-int": f"{stem}-int.onnx"}
    if "onnx-qdq" in args.export and not network.plans:
        raise RunError("-export onnx-qdq needs a quantized network (QWeight= / QAct= in the INI)")
    sample = _sample_batch(provider)
    network.gm.eval()
    status = 0
    for kind in dict.fromkeys(args.export):
        report = export.export(kind, network.gm, int_gm, out_dir / names[kind], sample)
        _say(report.summary())
        if not report.ok:
            print(f"error: {names[kind]} does not compute what qatrun computes (see above)", file=sys.stderr)
            status = 3
    return status


def _test_onnx(path: Path, provider: data.Provider) -> None:
    """``-test-onnx FILE``: the Test partition through onnxruntime, with the INI's preprocessing."""
    if not path.is_file():
        raise DataError(f"-test-onnx: no such file: {path}")
    model = export.OnnxModule(path)
    metrics = train.test(model, provider.loader("Test", False))
    _say(f"Testing '{path}' in onnxruntime:")
    for line in metrics.test_lines():
        _say(line)


class _AsFloat(nn.Module):
    """The integer network's outputs (levels, int64) as float64 scores for the metrics."""

    def __init__(self, int_gm: nn.Module) -> None:
        super().__init__()
        self.int_gm = int_gm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.int_gm(x).double()


def _fuse_integer(network: Network, args: argparse.Namespace, provider: data.Provider, out_dir: Path
                  ) -> tuple[int, nn.Module]:
    """``-qat-fuse``: integer-only network, verified against the fake-quantized one on the Test partition."""
    options = fuse.FuseOptions(
        flavour=args.fuse_flavour, rescaling=args.act_rescaling_mode, weights_rounding=args.wt_round_mode,
        biases_rounding=args.b_round_mode, clips_rounding=args.c_round_mode,
    )
    gm = network.gm
    gm.eval()
    int_gm, report = fuse.integerize(gm, options)
    _say("Integer-only network:")
    _say(report.summary())
    folder = fuse.write_weights_quantized(out_dir / "weights_quantized", report)
    _say(f"    '{folder}' saved!")
    result = fuse.verify(gm, int_gm, report, provider.loader("Test", False))
    text = str(result)
    _say(text)
    (out_dir / "fusion_report.txt").write_text(text + "\n\n" + report.summary() + "\n")
    if args.test:
        metrics = train.test(_AsFloat(int_gm), provider.loader("Test", False))
        for line in metrics.test_lines():
            _say(line)
    if not result.ok:
        print("error: the integer network does not compute what the fake-quantized network computes "
              "within the bound of the rescaling mode (see fusion_report.txt)", file=sys.stderr)
        return 3, int_gm
    return 0, int_gm


def _auto_load(io: NetworkIO, provider: data.Provider, out_dir: Path) -> None:
    """N2D2: a test without -w reloads ``weights_validation/`` (with a Validation set) or ``weights/``."""
    folder = out_dir / ("weights_validation" if provider.size("Validation") > 0 else "weights")
    if folder.is_dir():
        io.load(folder)
        print(f"Weights imported from '{folder}'")
    else:
        print(f"Notice: no '{folder}' folder: testing the initial weights", file=sys.stderr)
