"""qatrun's public API: a network from an INI file (or your own PyTorch module), its data, learning,
testing, N2D2 weights folders, the integer-only network, its verification and its exports.

    import qatrun

    network = qatrun.load("models/LeNet-QAT.ini", seed=1)     # built and checked; no data read
    print(network.summary())
    data = network.open_data()                                # the INI's database and transformations
    network.learn(data, epochs=1)                             # weights/ and LeNet-QAT's curves in out_dir
    print(network.test(data).recognition_rate)
    integer = network.fuse()                                  # BatchNorm and quantizers folded to integers
    assert integer.verify(data).ok                            # computes what was trained
    integer.export("LeNet-QAT-int.onnx", data)                # checked in onnxruntime at export
    print(qatrun.test_onnx("LeNet-QAT-int.onnx", data).recognition_rate)

This module composes the packages; each of them does its own job (:mod:`qatrun.ini` the dialect,
:mod:`qatrun.net` the graph, :mod:`qatrun.quant` the quantizers, :mod:`qatrun.data` the stimuli,
:mod:`qatrun.train` the loops and weights folders, :mod:`qatrun.fuse` the integer network,
:mod:`qatrun.export` the files). The ``qatrun`` command is argument parsing plus calls of these functions.

Every INI key is read while :func:`load` builds the network; once every stage has read what it honours,
a key left over is an error, before any data is loaded or any time is spent.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, fx, nn

from qatrun import calib, data, export, fuse, ini, net, quant, recipe, train
from qatrun.errors import ConfigError, DataError, RunError
from qatrun.export.c import CExportReport, export_c
from qatrun.options import EXPORT_KINDS

PathLike = str | os.PathLike[str]
Batches = Iterable[tuple[Tensor, Tensor]] | Iterable[Tensor]
EXPORT_SAMPLE = 64  # test images an exported file is checked on against qatrun's network


# ------------------------------------------------------------------------------------------ building


def quant_plans(doc: ini.Document, gm: fx.GraphModule) -> dict[str, quant.QuantPlan]:
    """The quantizers the INI gives the cells of ``gm`` (built from ``doc``), by module name.

    ``QWeight*`` come from the cell's section, ``QAct*`` from the section of its activation: the two differ
    for an imported ONNX cell whose ReLU has a section of its own (N2D2's override rule).
    """
    plans = {}
    for cell in gm.cells.values():
        weights = quant.plan_for(cell.section, doc.params(cell.section)) if cell.section is not None else None
        plan = weights
        if cell.act_section is not None:
            act = quant.plan_for(cell.act_section, doc.params(cell.act_section))
            if act is not None and act.act is not None:
                plan = act if weights is None else dataclasses.replace(weights, act=act.act,
                                                                       act_solver=act.act_solver)
        if plan is not None:
            plans[cell.module_name] = plan
    return plans


def activation_names(gm: fx.GraphModule) -> dict[str, str]:
    """Module name of each cell -> the module its activation quantizer wraps (the cell's activation)."""
    return {cell.module_name: net.activation_name(cell.module_name) for cell in gm.cells.values()}


def load(
    ini_path: PathLike,
    overrides: Sequence[str] = (),
    *,
    seed: int | None = None,
    kernels: str | quant.Kernels | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
    recipes: Sequence[PathLike | recipe.Recipe] = (),
    phase: str = "quantize",
) -> Network:
    """Reads an INI file and builds its network, quantizers and solvers; loads no data.

    Args:
        ini_path: the network description (N2D2 INI dialect).
        overrides: ``-set`` values, ``[Section]Key=value`` or ``$VAR=value``.
        seed: seeds torch's generator before the build (the fillers draw from it) and is the seed of the
            data partitions and the learning order; None: 1.
        kernels: the quantizers' training-step kernels, one of :data:`qatrun.options.KERNEL_MODES` or a
            :class:`qatrun.quant.Kernels`; None: ``QATRUN_KERNELS``, else ``auto``.
        device: where the network will learn (it is built on the CPU; :meth:`Network.to` moves it): the
            kernels are chosen for it.
        strict: a key that no stage reads is an error (N2D2 ignores most of them).
        recipes: recipe files (``configs/*.ini``, :mod:`qatrun.recipe`) applied in order to the INI, as if
            it held their keys (each with the recipe line as its origin).
        phase: the recipes' phase: ``quantize`` (every key), ``clamp`` or ``float`` (:mod:`qatrun.recipe`).

    Returns:
        The network.

    Raises:
        QatrunError: any configuration error, with its file and line.
    """
    seed = 1 if seed is None else seed
    chosen = kernels if isinstance(kernels, quant.Kernels) else quant.select_kernels(kernels, device)
    torch.manual_seed(seed)
    doc = ini.load(os.fspath(ini_path), overrides=list(overrides))
    spec = data.DataSpec.from_doc(doc)
    gm = net.build(doc, spec.input_shape)
    applied: list[recipe.Applied] = []
    if recipes:
        read = [r if isinstance(r, recipe.Recipe) else recipe.read(r) for r in recipes]
        for i, one in enumerate(read):
            applied.append(recipe.apply(one, doc, gm, phase, tuple(read[:i])))
        torch.manual_seed(seed)  # the same fillers as a build of an INI holding the recipes' keys
        gm = net.build(doc, spec.input_shape)
    missing_data = None
    try:  # from the data files' headers: solver schedules (QActSolver.* too) often refer to [sp]_EpochSize
        spec.inject_epoch_size()
    except DataError as err:
        missing_data = err  # the summary needs no data: a placeholder, and what reads it is listed
        spec.inject_unknown_epoch_size(err)
    try:
        plans = quant_plans(doc, gm)
        gm = quant.prepare(gm, plans, act_names=activation_names(gm), kernels=chosen)
        solvers = train.solver_triples(doc, gm, plans)
    except ConfigError as err:
        if missing_data is not None and "_EpochSize" in err.message:
            raise DataError(f"{err.message}: it is the number of learning stimuli, and the data set was not "
                            f"found ({missing_data})", err.location, err.section, err.key) from err
        raise
    if strict:
        doc.check_strict()
    return Network(path=Path(ini_path), doc=doc, spec=spec, gm=gm, plans=plans, solvers=solvers, seed=seed,
                   kernels=chosen, recipes=applied)


# ------------------------------------------------------------------------------------------ the network


@dataclass
class Network:
    """A network described by an INI file, built and checked (see :func:`load`).

    Attributes:
        path: the INI file.
        doc: the parsed INI (every value with its origin).
        spec: the data description (``[sp]``, the database, the transformations).
        gm: the network as a ``torch.fx.GraphModule``, quantizers in place, with ``gm.cells`` and
            ``gm.targets``.
        plans: module name -> its quantizers as the INI gives them.
        solvers: every learnable tensor with its INI solver.
        seed: the run's seed.
        kernels: the quantizers' training-step kernels.
        calibration: what :meth:`calibrate` found, once it has run.
        recipes: what each recipe given to :func:`load` set, in order.
    """

    path: Path
    doc: ini.Document
    spec: data.DataSpec
    gm: fx.GraphModule
    plans: dict[str, quant.QuantPlan]
    solvers: list[train.SolverTriple] = field(default_factory=list)
    seed: int = 1
    kernels: quant.Kernels = field(default_factory=lambda: quant.select_kernels("eager"))
    calibration: calib.Calibration | None = None
    recipes: list[recipe.Applied] = field(default_factory=list)

    # -------------------------------------------------------------------------------- description

    @property
    def quantized(self) -> bool:
        """Whether the INI quantizes any layer (``QWeight=`` / ``QAct=``), or calibration quantized it."""
        return bool(self.plans) or (self.calibration is not None and self.calibration.kind == "ptq")

    @property
    def target(self) -> net.Target:
        """The one target the network learns and is tested on.

        Raises:
            ConfigError: the network has more than one target.
        """
        targets = self.gm.targets
        if len(targets) != 1:
            raise ConfigError(f"qatrun learns and tests one target; the network has {len(targets)}",
                              targets[-1].section.location)
        return targets[0]

    @property
    def without_data(self) -> str | None:
        """Why the INI has no data set (no ``[database]``, or one without ``Type``), or None when it has one."""
        database = self.spec.database
        return database.reason() if isinstance(database, data.databases.NoDatabase) else None

    def pixel_images(self, count: int = 256, seed: int | None = None) -> Tensor:
        """``count`` random images of the network's input on the pixel grid (integers 0..255, divided by 255):
        what verification and the export checks run on when there is no data set."""
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return torch.randint(0, 256, (count, *self.spec.input_shape), generator=generator).float() / 255

    def require_quantized(self, asking: str, integer_form: bool = True) -> None:
        """Refuses what only a quantized network has (its integer form, its QDQ file) on a float one.

        Args:
            asking: what asks for it, the start of the message (``-qat-fuse needs``).
            integer_form: the integer network is asked for: the message points to ``-fuse``.

        Raises:
            RunError: the INI quantizes no layer.
        """
        if not self.quantized:
            hint = "; -fuse folds BatchNorm of a float network" if integer_form else ""
            raise RunError(f"{asking} a quantized network (QWeight= / QAct= in the INI){hint}")

    def summary(self) -> str:
        """One row per layer (type, inputs, output shape, parameters, MACs, quantizers), then the totals,
        and what calibration set, once it has run."""
        text = _format_summary(self.gm)
        for applied in self.recipes:
            text += "\n\n" + applied.describe()
        if self.calibration is not None:
            what = "quantized by" if self.calibration.kind == "ptq" else "activation quantizers started from"
            text += (f"\n\nCalibration ({what} {self.calibration.stimuli} stimuli of "
                     f"{self.calibration.partition}; {self.calibration.settings()}):\n"
                     + self.calibration.table())
        return text + self.spec.data_note()

    def to(self, device: torch.device | str) -> Network:
        """Moves the network to ``device``; returns itself."""
        self.gm.to(device)
        return self

    def write_record(self, out_dir: PathLike = ".", command: str | None = None) -> Path:
        """Writes ``seed.dat`` and ``<ini>.resolved`` (the INI with every value resolved and its origin,
        the seed, the package versions, the kernels) into ``out_dir``; returns the record's path."""
        settings = {"kernels": self.kernels.describe()}
        if self.calibration is not None:
            settings["calibration"] = self.calibration.describe()
        for i, applied in enumerate(self.recipes):
            settings[f"recipe {i + 1}"] = f"{applied.recipe.path} (phase {applied.phase})"
        return train.write_run_record(Path(out_dir), self.path.name, self.doc.dump_resolved(), self.seed,
                                      settings, command)

    # -------------------------------------------------------------------------------- data and weights

    def open_data(self, seed: int | None = None) -> data.Provider:
        """Loads, partitions and caches the INI's database (default seed: the network's)."""
        return self.spec.open(self.seed if seed is None else seed)

    def folders(self, ignore_missing: bool = False) -> train.NetworkFolders:
        """The network's N2D2 weights folders (reading and writing)."""
        return train.NetworkFolders(self.gm, ignore_missing=ignore_missing)

    def load_weights(self, folder: PathLike, ignore_missing: bool = False) -> None:
        """Reads an N2D2 weights folder (N2D2's or qatrun's), quantizer files included.

        Args:
            folder: the folder.
            ignore_missing: a missing file keeps the current value, with a notice (N2D2's ``-w``).

        Raises:
            DataError: a missing folder or file, or a file with the wrong number of values.
        """
        self.folders(ignore_missing).load(Path(folder))

    def check_resume(self, folder: PathLike) -> None:
        """Checks a ``net_state/`` folder before anything is written (``-l``): it holds a learning state, of
        this network (the same tensors), saved with this seed. :meth:`learn` then restores it.

        Raises:
            RunError: no readable state, another network's, or another seed's.
        """
        state = train.load_state(Path(folder))
        train.check_same_network(state["model"], self.gm, Path(folder) / train.loop.STATE_FILE)
        if state["seed"] != self.seed:
            raise RunError(f"-l {folder}: the state was saved with -seed {state['seed']}; resume with the same "
                           f"seed (not {self.seed})")

    def save_weights(self, folder: PathLike) -> None:
        """Writes the network's weights as an N2D2 weights folder, atomically."""
        self.folders().save(Path(folder))

    def load_saved_weights(self, data_: data.Provider, out_dir: PathLike = ".") -> Path | None:
        """N2D2's test without ``-w``: reloads ``weights_validation/`` (with a Validation set) or ``weights/``
        from ``out_dir``; returns the folder read, or None when there is none."""
        folder = Path(out_dir) / ("weights_validation" if data_.size("Validation") > 0 else "weights")
        if not folder.is_dir():
            return None
        self.load_weights(folder)
        return folder

    # -------------------------------------------------------------------------------- learning and testing

    def learn(
        self,
        data_: data.Provider,
        *,
        epochs: int = 0,
        stimuli: int = 0,
        out_dir: PathLike = ".",
        log_epoch: int = 1,
        log_stimuli: int = 1000,
        valid_metric: str = "Sensitivity",
        stop_valid: int = 0,
        resume: PathLike | None = None,
        test: bool = True,
        say: Callable[[str], None] = print,
    ) -> train.LearnResult:
        """N2D2's ``-learn-epoch`` / ``-learn``: learns with the INI's solvers, validates, keeps the best
        weights in ``out_dir`` (``weights/`` or ``weights_validation/``), reloads them and tests them.

        Args:
            data_: from :meth:`open_data`.
            epochs: passes over the Learn partition (``-learn-epoch``).
            stimuli: learning stimuli, used when ``epochs`` is 0 (``-learn``).
            out_dir: where the weights folders, ``net_state/`` and ``<target>.Target/`` go.
            log_epoch: epochs between validations (0: only at the end).
            log_stimuli: stimuli between validations with ``stimuli``.
            valid_metric: the score selecting the best weights (:data:`qatrun.options.METRICS`).
            stop_valid: stop after this many validations without improvement (0: never).
            resume: a ``net_state/`` folder an interrupted run saved (``-l``).
            test: test the reloaded best weights on the Test partition, if it has images.
            say: console output.

        Returns:
            What happened, the test metrics included.

        Raises:
            Interrupted: a signal arrived; the full state is in ``<out_dir>/net_state``.
        """
        self.spec.check_learnable()
        if train.rank() == 0:
            data_.write_statistics(out_dir)  # the StimuliData files N2D2 writes (meanData.bin ...), if asked for
        target = self.target
        batch_size = self.spec.batch_size
        cfg = train.LearnConfig(
            batch_size=batch_size, epochs=epochs, stimuli=stimuli, log_epoch=log_epoch, log_stimuli=log_stimuli,
            valid_metric=valid_metric, stop_valid=stop_valid, loss=target.loss, target_value=target.target_value,
            default_value=target.default_value, seed=self.seed, out_dir=Path(out_dir), target_name=target.cell,
            test_after=test,
        )
        if epochs and train.rank() == 0 and resume is None:
            note = self.schedule_note(epochs, data_.size("Learn"))
            if note:
                say(note)
        optimizer = train.N2D2Optimizer(train.group_by_solver(self.solvers), batch_size)
        meta = {"ini": self.doc.dump_resolved(), "seed": self.seed}
        result = train.learn(self.gm, data_, optimizer, cfg, self.folders(ignore_missing=True),
                             resume=None if resume is None else Path(resume), say=say, meta=meta)
        if train.rank() == 0 and result.best_folder is not None:
            train.plot_distributions(result.best_folder)  # once, at the end: drawing costs seconds
        return result

    def schedule_spans(self, epoch_size: int) -> dict[float, list[str]]:
        """The length in epochs of each decaying learning-rate schedule with an end (CosineDecay counts
        samples, PolyDecay updates, up to ``MaxIterations``), with the parameters following it."""
        spans: dict[float, list[str]] = {}
        if epoch_size <= 0:
            return spans
        batch = self.spec.batch_size
        for name, _, cfg in self.solvers:
            if cfg.max_iterations <= 0 or cfg.policy not in ("CosineDecay", "PolyDecay"):
                continue
            samples = cfg.max_iterations * (cfg.step_size if cfg.policy == "CosineDecay" else batch * cfg.iteration_size)
            spans.setdefault(round(samples / epoch_size, 2), []).append(name)
        return spans

    def schedule_note(self, epochs: int, epoch_size: int) -> str | None:
        """A notice when a learning-rate schedule of the INI ends before or after ``epochs`` epochs."""
        spans = {span: names for span, names in self.schedule_spans(epoch_size).items() if span != epochs}
        if not spans:
            return None
        parts = [f"{span:g} epochs ({names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''})"
                 for span, names in sorted(spans.items())]
        return (f"Notice: learning for {epochs} epochs, but the learning-rate schedule spans {', '.join(parts)}: "
                "it is cut short or never reaches its end (the INI's $EPOCHS sets the schedules of qatrun's "
                f"models: -set '$EPOCHS={epochs}')")

    def test(self, data_: data.Provider, partition: str = "Test") -> train.Metrics:
        """The network's scores on a partition (``-test``): recognition rate, confusion matrix, metrics."""
        return train.test(self.gm, data_.loader(partition, False))

    # -------------------------------------------------------------------------------- calibration

    def calibrate(
        self,
        data_: data.Provider,
        stimuli: int = -1,
        options: calib.CalibOptions | None = None,
        *,
        reload: PathLike | None = None,
        out_dir: PathLike | None = ".",
        say: Callable[[str], None] = print,
    ) -> calib.Calibration:
        """N2D2's ``-calib``: a float network becomes a quantized one (post-training quantization), or a
        quantized network's activation quantizers start from the data (before :meth:`learn`).

        Args:
            data_: the data; the stimuli are the first of the Validation partition, else (said through
                ``say``) of the Test partition for post-training quantization, as N2D2 (the test rate is
                then optimistic), and of the Learn partition for a QAT start (no test data touched).
            stimuli: how many (-1: the whole partition).
            options: bits and clipping modes (default: N2D2's, 8 bits, MSE).
            reload: a calibration folder to reuse instead of reading stimuli (``-calib-reload``); its
                histograms are used, the thresholds chosen again with ``options``.
            out_dir: where ``calibration/`` is written (None: not written).
            say: console output.

        Returns:
            The calibration (``.table()``; also :attr:`calibration`).

        Raises:
            RunError: a network already calibrated, an empty partition, a reload of other weights.
        """
        if self.calibration is not None:
            raise RunError("the network is calibrated already")
        options = options or calib.CalibOptions()
        # A network about to learn calibrates on learning data rather than the test data N2D2 falls back to.
        fallback = "Learn" if self.plans else "Test"
        partition = "Validation" if data_.size("Validation") > 0 else fallback
        reloaded = calib.load(Path(reload)) if reload is not None else None
        if reloaded is None and partition == "Test":
            say("Notice: no Validation partition: calibrating on the Test partition, so the test rate that "
                "follows is measured on the calibration data")
        elif reloaded is None and partition == "Learn":
            say("Notice: no Validation partition: the quantizers start from the first Learn stimuli")
        available = data_.size(partition)
        count = available if stimuli < 0 else min(stimuli, available)
        device = next((p.device for p in self.gm.parameters()), torch.device("cpu"))

        def batches() -> Iterable[Tensor]:
            left = count
            for x, _ in data_.loader(partition, False):
                if left <= 0:
                    break
                yield x[:left].to(device)
                left -= x.shape[0]

        if self.plans:
            result = calib.initialize(self.gm, batches, options, reloaded)
        else:
            result = calib.calibrate_float(self.gm, batches, options, self.kernels, reloaded)
        result.partition = result.partition or partition
        self.calibration = result
        if out_dir is not None:
            calib.save(result, Path(out_dir) / calib.FOLDER)
        return result

    # -------------------------------------------------------------------------------- integer network

    def fuse(self, options: fuse.FuseOptions | None = None, **settings: str) -> IntegerNetwork:
        """The integer-only network (``-qat-fuse``): BatchNorm and the quantizers folded into integer weights,
        integer biases and a per-channel rescale.

        Args:
            options: flavour, rescaling and round modes; or give them as keywords (``rescaling=...``).

        Raises:
            RunError: the network has no quantizer, or a part without an integer form.
        """
        self.require_quantized("-qat-fuse and -export onnx-int need")
        return integerize(self.gm, options or fuse.FuseOptions(**settings))

    def fold_batchnorm(self) -> tuple[fx.GraphModule, list[fuse.FoldedPair]]:
        """``-fuse`` on a float network: a copy with every BatchNorm folded into the layer before it."""
        return fuse.fold_batchnorm(self.gm)

    def export(self, kind: str, path: PathLike, data_: data.Provider | Tensor,
               integer: IntegerNetwork | None = None) -> export.ExportReport:
        """Writes an ONNX file and checks it in onnxruntime against this network (``-export``).

        Args:
            kind: ``onnx`` (the float network), ``onnx-qdq`` (fake-quantized), ``onnx-int`` (integer-only).
            path: the file.
            data_: the data (the first Test images are the check's input) or an input batch.
            integer: for ``onnx-int``, the integer network (default: :meth:`fuse` with default options).

        Returns:
            The check's report (``report.ok``; ``report.summary()``).
        """
        if kind not in EXPORT_KINDS:
            raise RunError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")
        if kind == "onnx-int":
            return (integer or self.fuse()).export(path, data_)
        if kind == "c":  # a folder of C99 sources, proven on the Test images (IntegerNetwork.export_c)
            self.require_quantized("-export c needs")
            return (integer or self.fuse()).export_c(path, data_)  # type: ignore[return-value]
        if kind == "onnx-qdq":
            self.require_quantized("-export onnx-qdq needs", integer_form=False)
        self.gm.eval()
        return export.export(kind, self.gm, None, Path(path), sample_batch(data_))


def sample_batch(source: data.Provider | Tensor, count: int = EXPORT_SAMPLE) -> Tensor:
    """The check input of an export: a tensor as given, else the first Test images (else Learn) of the data."""
    if isinstance(source, Tensor):
        return source
    partition = "Test" if source.size("Test") else "Learn"
    x, _ = next(iter(source.loader(partition, False, batch_size=count)))
    return x


# ------------------------------------------------------------------------------------------ integer network


class _AsScores(nn.Module):
    """The integer network's outputs (levels, int64) as float64 scores for the metrics."""

    def __init__(self, integer: nn.Module) -> None:
        super().__init__()
        self.integer = integer

    def forward(self, x: Tensor) -> Tensor:
        return self.integer(x).double()


@dataclass
class IntegerNetwork:
    """An integer-only network and the fake-quantized network it was made from (see :func:`integerize`).

    Attributes:
        module: the integer network: input x = p / 255 as the fake network takes it, output levels (int64),
            or float64 values for an unquantized output.
        report: the integer layers, their definitions and rescales.
        source: the fake-quantized network.
    """

    module: fx.GraphModule
    report: fuse.FuseReport
    source: fx.GraphModule

    def verify(self, batches: data.Provider | Batches, partition: str = "Test") -> fuse.VerifyReport:
        """Runs the fake-quantized and the integer network side by side and compares every layer.

        The reference is the fake-quantized network in float64 on the exact input, rounding ties decided in
        exact arithmetic: the function the training defined (see :mod:`qatrun.fuse.verify`).

        Args:
            batches: the data (its ``partition`` is used) or input batches (tensors or (x, y) pairs) in [0, 1].

        Returns:
            ``report.ok``: every integer level equals the exact one, each layer within its rescaling
            mode's bound; ``str(report)``: the predictions that differ and the largest difference per layer.
        """
        if isinstance(batches, data.Provider):
            batches = batches.loader(partition, False)
        return fuse.verify(self.source, self.module, self.report, batches)

    def test(self, data_: data.Provider, partition: str = "Test") -> train.Metrics:
        """The integer network's scores on a partition."""
        return train.test(_AsScores(self.module), data_.loader(partition, False))

    def save(self, folder: PathLike = "weights_quantized") -> Path:
        """Writes N2D2's ``weights_quantized/`` (plus the per-channel clip and scale,
        ``activation_scaling.csv``), atomically; returns the folder."""
        return fuse.write_weights_quantized(folder, self.report)

    def export(self, path: PathLike, data_: data.Provider | Tensor, input_kind: str = "float"
               ) -> export.ExportReport:
        """Writes the integer network as ONNX and checks it in onnxruntime, bit for bit.

        Args:
            path: the file.
            data_: the data (the first Test images are the check's input) or an input batch.
            input_kind: the file's input: ``float`` (x in [0, 1]) or ``uint8`` (the pixels).
        """
        return export.export("onnx-int", self.source, self.module, Path(path), sample_batch(data_), input_kind)

    def export_c(self, folder: PathLike, data_: data.Provider | Tensor, count: int | None = None,
                 targets: tuple[str, ...] = ("host", "arm")) -> CExportReport:
        """Writes the integer network as C99 for microcontrollers (``-export c``) and proves it: compiled with
        ``cc`` (and for a 32-bit ARM under qemu-arm, where installed), run on the test images, every output
        compared with this network's (:mod:`qatrun.export.c`).

        Args:
            folder: the export folder.
            data_: the data (its Test partition, else Learn) or an input batch.
            count: the first ``count`` Test images (``-db-export N``; default: all of them).
            targets: ``host`` and/or ``arm``; empty: write only.

        Returns:
            The report (``report.ok``; ``report.summary()``: ROM, RAM, the proof per target).
        """
        if isinstance(data_, Tensor):
            images, labels = (data_ if count is None else data_[:count]), None
        else:
            partition = "Test" if data_.size("Test") else "Learn"
            batches, total = [], 0
            for x, y in data_.loader(partition, False):
                batches.append((x, y))
                total += x.shape[0]
                if count is not None and total >= count:
                    break
            images = torch.cat([x for x, _ in batches])[:count]
            labels = torch.cat([torch.as_tensor(y) for _, y in batches])[:count]
        return export_c(self.module, folder, images, labels, targets=targets, title=Path(folder).name)


def integerize(gm: fx.GraphModule, options: fuse.FuseOptions | None = None) -> IntegerNetwork:
    """The integer-only form of a fake-quantized network, from an INI or from :func:`quantize`.

    Args:
        gm: the quantized network (evaluation mode is set here: BatchNorm with its running statistics).
        options: flavour, rescaling and round modes (default: exact, Floating-point).

    Raises:
        RunError: a part of the network has no integer-only form (the message names the module).
    """
    gm.eval()
    module, report = fuse.integerize(gm, options or fuse.FuseOptions())
    return IntegerNetwork(module, report, gm)


# ------------------------------------------------------------------------------------------ your own network


def quantize(
    model: nn.Module,
    quantizers: Mapping[str, quant.QuantSpec],
    *,
    kernels: str | quant.Kernels | None = None,
) -> fx.GraphModule:
    """Quantizes a PyTorch network you built: each named module gets the quantizer you give it.

    A weight spec (``quant.SATWeightSpec``, ``quant.LSQWeightSpec``, ``quant.MinMaxWeightSpec``) on an
    ``nn.Conv2d``, ``nn.Linear`` or ``nn.ConvTranspose2d`` quantizes its weights; an activation spec
    (``quant.SATActSpec`` ...) on an activation module (``nn.ReLU``, ``nn.Identity`` ...) quantizes its
    output. The network is traced by ``torch.fx`` first, so that :func:`integerize` can read its graph; its
    parameters are shared, not copied.

    Args:
        model: the float network; for :func:`integerize`, its input must lie in [0, 1] (pixels / 255).
        quantizers: module name (as in ``model.named_modules()``) -> quantizer settings.
        kernels: as for :func:`load`.

    Returns:
        The traced network, computing with quantized weights and activations; train it as any module
        (the quantizers' parameters, e.g. SAT's alpha, are among its parameters).

    Raises:
        ConfigError: a name that is not a module of ``model``, or a spec that does not fit its module.
    """
    chosen = kernels if isinstance(kernels, quant.Kernels) else quant.select_kernels(kernels)
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    for name, spec in quantizers.items():
        quant.quantize_module(gm, name, spec, kernels=chosen)
    return gm


def open_onnx(path: PathLike, data_: data.Provider) -> export.OnnxModule:
    """An ONNX file in onnxruntime, checked on the data: it loads, takes the data's images and runs on one.

    Raises:
        DataError: no such file, a file onnxruntime cannot read, an input of another shape, a failed run
            (each naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"-test-onnx: no such file: {path}")
    module = export.OnnxModule(path)
    sample = sample_batch(data_, 1)
    module.runner.check_input(tuple(sample.shape))
    module(sample)
    return module


def test_onnx(path: PathLike, data_: data.Provider, partition: str = "Test") -> train.Metrics:
    """An ONNX file's scores in onnxruntime on a partition of the data, with the INI's preprocessing
    (``-test-onnx``).

    Raises:
        DataError: see :func:`open_onnx`.
    """
    return train.test(open_onnx(path, data_), data_.loader(partition, False))


# ------------------------------------------------------------------------------------------ the summary


def _format_summary(gm: fx.GraphModule) -> str:
    header = ("layer", "type", "inputs", "output", "params", "MACs", "weights", "activation")
    table = [header]
    total_params = total_macs = total_bits = 0
    for row in net.summarize(gm):
        cell = gm.cells[row.name]
        module = gm.get_submodule(cell.module_name)
        wq = quant.describe(module)
        aq = quant.describe(gm.get_submodule(cell.act_name)) if cell.act_name is not None else None
        c, h, w = row.out_shape
        act = ", ".join(a for a in (row.activation, aq) if a)
        table.append((row.name, row.type, ",".join(row.inputs), f"{c}x{h}x{w}", f"{row.params:,}",
                      f"{row.macs:,}", wq or "-", act or "-"))
        total_params += row.params
        total_macs += row.macs
        total_bits += _stored_bits(module, row.params)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    numeric = {4, 5}
    lines = []
    for k, r in enumerate(table):
        cells = [r[i].rjust(widths[i]) if i in numeric else r[i].ljust(widths[i]) for i in range(len(r))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    lines += ["", f"Total parameters: {total_params:,}", f"Total MACs per image: {total_macs:,}",
              f"Size at float32: {_human(total_params * 32)}", f"Size at the configured bits: {_human(total_bits)}"]
    return "\n".join(lines)


def _stored_bits(module: nn.Module, params: int) -> int:
    """Bits to store a cell's parameters: weights at their quantizer's bits, everything else at 32."""
    if not isinstance(module, quant.QuantizedWeightLayer) or not getattr(module.weight_quantizer.spec,
                                                                         "apply_quantization", True):
        return params * 32
    mask = getattr(module, "mask", None)
    n_weight = int(mask.sum()) if mask is not None else module.weight.numel()
    return n_weight * quant.bits(module.weight_quantizer.spec) + (params - n_weight) * 32


def _human(bits: int) -> str:
    size = bits / 8
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"
