"""The stimuli provider (``[sp]`` or ``[env]``): from INI sections to batches of tensors.

Two stages, so that a summary can validate a configuration without touching data:

* :meth:`DataSpec.from_doc` reads and checks every key of ``[database]``, ``[sp]``/``[env]`` (and its
  ``ConfigSection``) and of every ``<sp>.Transformation*``, ``<sp>.OnTheFlyTransformation*`` and
  ``<sp>.StimuliData*`` section, in file order (reference/n2d2.md sections 1.8, 3.2).
* :meth:`DataSpec.open` loads the database, partitions it, applies the static transformations once,
  computes the ``StimuliData`` statistics, and injects ``[sp]_EpochSize``.

Scheduling of a partition's chain (``Transformation*`` in file order, then ``OnTheFlyTransformation*``,
then N2D2's implicit scaling of 8-bit data to [0, 1] and the optional input quantization):

* the longest deterministic prefix of the static list is applied once, to the whole partition, and
  cached. When the rest of that prefix is only pointwise (``RangeAffine Divides 255``, ...), the cache
  stays in 8 bits and those are applied per batch: exact, and 4x less memory;
* everything from the first random transformation on, the on-the-fly ones and the final scaling run
  per batch, on the batch tensor.

Images read from files on demand (``ILSVRC2012_Database``, ``DIR_Database`` without ``LoadInMemory``)
go through the static list per image in ``DataLoader`` workers, then per batch through the rest. With
``LoadInMemory=1`` each file is decoded once, taken through the deterministic static prefix on its own
(images may differ in size until a ``Rescale``), and the results are stacked: from there on it is the
in-memory path.

``StimuliData`` statistics (:mod:`qatrun.data.statistics`) are computed over the ``ApplyTo`` partitions
(default Learn) as the data stand at that point of the file (8-bit data as 0..255) and published as
``_GlobalValue.minVal``, ``.maxVal``, ``.mean``, ``.stdDev`` and ``_MinSize`` / ``_MaxSize`` /
``_MeanSize.dimX|dimY|dimZ``. ``from_doc`` injects neutral placeholders so that later sections referring
to them can be validated; ``open`` replaces them and reads those sections again.

Without the data set (absent, or no ``[database]``), :meth:`DataSpec.inject_unknown_epoch_size` puts a
placeholder in ``[sp]_EpochSize``: the network builds, every value read through a placeholder is listed
(:meth:`DataSpec.data_note`, under the summary), and learning with what was built from it is refused.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.utils.data

from qatrun.data import formats
from qatrun.data.databases import PARTITIONS, RATE_BASED, Database, NoDatabase, Stimuli, database_from_section
from qatrun.data.statistics import GLOBAL_VALUE, SIZES, Accumulator, Statistics, StimuliData
from qatrun.data.transforms import Affine, Shape, Transformation, applies_to, transformation_from_section
from qatrun.errors import ConfigError, DataError, Location, QatrunError
from qatrun.ini import Document, Key, Section, warn

PathLike = str | os.PathLike[str]

SIZE_X = Key("SizeX", "int", doc="network input width")
SIZE_Y = Key("SizeY", "int", doc="network input height")
SIZE = Key("Size", "ints", (), "network input size W H [C] (instead of SizeX, SizeY, NbChannels)")
NB_CHANNELS = Key("NbChannels", "int", 1, "network input channels")
BATCH_SIZE = Key("BatchSize", "int", 1, "stimuli per batch")
CACHE_PATH = Key("CachePath", "str", "", "N2D2's stimuli cache folder (qatrun caches in memory; accepted, unused)")
COMPOSITE_STIMULI = Key("CompositeStimuli", "bool", False, "pixel-wise labels (segmentation; not supported)")
DATA_SIGNED_MAPPING = Key("DataSignedMapping", "bool", False, "8-bit data scaled to [-1, 1] instead of [0, 1]")
QUANTIZATION_LEVELS = Key("QuantizationLevels", "int", 0, "quantize the input on this many levels (0: no)")
QUANTIZATION_MIN = Key("QuantizationMin", "float", 0.0, "lower bound of the input quantization")
QUANTIZATION_MAX = Key("QuantizationMax", "float", 1.0, "upper bound of the input quantization")
STREAM_TENSOR = Key("StreamTensor", "bool", False, "N2D2 streaming input (not supported)")
STREAM_LABEL = Key("StreamLabel", "bool", False, "N2D2 streaming labels (not supported)")
# [sp] keys N2D2 knows for features qatrun does not have: an error when present.
UNSUPPORTED_SP_KEYS = ("SizeD", "TargetSize", "TargetSizeX", "TargetSizeY", "TargetSizeD")
# [env] keys that only drive N2D2's spiking simulator: a warning, no effect on frame-based training.
SPIKING_ENV_KEYS = (
    "StimulusType", "DiscardedLateStimuli", "PeriodMeanMin", "PeriodMeanMax", "PeriodRelStdDev", "PeriodMin",
    "ReadAerData", "StopStimulusTime",
)  # fmt: skip

# Neutral stand-ins for the StimuliData properties until the data are opened: min 0, max 1, mean 0, std 1,
# sizes 1 (values read through them are listed by DataSpec.data_note).
PLACEHOLDERS = dict(zip(GLOBAL_VALUE + SIZES, (0.0, 1.0, 0.0, 1.0) + (1,) * len(SIZES)))
EPOCH_PLACEHOLDER = 1_000_000  # large: a schedule divided by the batch size stays positive
_STATS_CHUNK = 4096


# --------------------------------------------------------------------------------------------------
# Implicit steps at the end of every chain


@dataclass(frozen=True)
class ImplicitScale(Transformation):
    """N2D2's ``normalizeIntegersStimuli``: 8-bit data still 8-bit at the end become ``p * float(1/255)``
    in float32 (OpenCV's ``convertTo`` with a scale), or ``p * float(2/255) - 1`` with
    ``DataSignedMapping=1`` (the [-1, 1] mapping of reference/n2d2.md section 3.2)."""

    name: ClassVar[str] = "<implicit 8-bit scaling>"
    pointwise: ClassVar[bool] = True
    signed: bool = False

    def output_float(self, is_float: bool) -> bool:
        return True

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.signed:
            return x.float() * torch.tensor(2.0 / 255.0, dtype=torch.float32) - 1.0
        return x.float() * torch.tensor(1.0 / 255.0, dtype=torch.float32)


@dataclass(frozen=True)
class InputQuantization(Transformation):
    """``QuantizationLevels``: x clamped to [min, max] and rounded to one of ``levels`` evenly spaced values."""

    name: ClassVar[str] = "<input quantization>"
    pointwise: ClassVar[bool] = True
    levels: int = 0
    low: float = 0.0
    high: float = 1.0

    def output_float(self, is_float: bool) -> bool:
        return True

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        step = (self.high - self.low) / (self.levels - 1)
        y = ((x.double().clamp(self.low, self.high) - self.low) / step).round()
        return (y * step + self.low).float()


# --------------------------------------------------------------------------------------------------
# The specification


@dataclass
class Stage:
    """One ``<sp>.*`` sub-section, in file order.

    Attributes:
        section: the section.
        kind: ``"static"`` (``Transformation*``), ``"on_the_fly"`` or ``"statistics"`` (``StimuliData*``).
        transform: the transformation (``None`` for statistics).
        apply_to: the partitions it applies to (``ApplyTo``).
    """

    section: Section
    kind: str
    transform: Transformation | None = None
    apply_to: str = "All"
    statistics: StimuliData | None = None

    def read(self) -> None:
        """(Re-)reads the transformation (or the statistics' keys) from its section."""
        if self.kind == "statistics":
            self.statistics = StimuliData.from_section(self.section)
            self.apply_to = self.statistics.apply_to
        else:
            self.transform, self.apply_to = transformation_from_section(self.section)


def _classify(sp: str, name: str) -> str | None:
    """The stage kind of a ``<sp>.<suffix>`` section name, ``None`` if it is not a provider sub-section.

    Raises:
        ConfigError (via the caller): N2D2 sub-section kinds qatrun does not implement.
    """
    rules = (
        (f"{sp}.StimuliData*", "statistics"),
        (f"{sp}.Transformation*", "static"),
        (f"{sp}.OnTheFlyTransformation*", "on_the_fly"),
        (f"{sp}.ChannelTransformation*", "unsupported"),
        (f"{sp}.ChannelOnTheFlyTransformation*", "unsupported"),
        (f"{sp}.ChannelsTransformation*", "unsupported"),
        (f"{sp}.ChannelsOnTheFlyTransformation*", "unsupported"),
        (f"{sp}.Adversarial", "unsupported"),
        (f"{sp}.*Transformation*", "unknown"),
    )
    for pattern, kind in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return None


@dataclass
class DataSpec:
    """Everything the INI says about the data, validated, with no data read.

    Attributes:
        document: the INI document.
        section: the provider section (``[env]`` if present, else ``[sp]``).
        database: the ``[database]`` driver.
        input_shape: (C, H, W) the network receives.
        batch_size: ``BatchSize``.
        stages: the ``<sp>.*`` sub-sections in file order.
        signed: ``DataSignedMapping``.
        quantization: ``(levels, min, max)``; levels 0 = none.
    """

    document: Document
    section: Section
    database: Database
    input_shape: Shape
    batch_size: int
    stages: list[Stage]
    signed: bool = False
    quantization: tuple[int, float, float] = (0, 0.0, 1.0)
    missing: DataError | None = None  # why [sp]_EpochSize is a placeholder, if it is
    built_without_data: bool = False  # [sp]_EpochSize was a placeholder when the network was built

    @classmethod
    def from_doc(cls, doc: Document) -> DataSpec:
        """Reads ``[database]``, ``[sp]``/``[env]`` and their sub-sections (every key), loading no data.

        Raises:
            ConfigError: a missing section or key, a bad value, an unsupported feature.
        """
        if doc.get("cenv") is not None:
            raise doc.section("cenv").error(None, f"[cenv] drives N2D2's spiking simulator; {RATE_BASED} "
                                            "(their stimuli provider is [sp] or [env])")
        sp = doc.get("env") or doc.get("sp")
        if sp is None:
            raise ConfigError("Missing [sp] section (or [env]): the stimuli provider", Location(doc.path))
        database_section = doc.get("database")
        if database_section is None:
            warn("no database specified: the network is built, and learning or testing it is refused",
                 Location(doc.path))
            database: Database = NoDatabase.absent_from(Location(doc.path))
        else:
            database = database_from_section(database_section)
        input_shape, batch_size = _read_geometry(sp)
        signed, quantization = _read_parameters(doc, sp)
        stages = _read_stages(doc, sp)
        spec = cls(doc, sp, database, input_shape, batch_size, stages, signed, quantization)
        spec._check_static_shapes()
        return spec

    # ----------------------------------------------------------------------------------------------

    def epoch_size(self) -> int:
        """Number of Learn stimuli, from file headers/listings only (no image decoded).

        Raises:
            DataError: the data set is not found.
        """
        return self.database.sizes()["Learn"]

    def inject_epoch_size(self, size: int | None = None) -> int:
        """Publishes ``[<sp>]_EpochSize`` (the number of Learn stimuli) for later references."""
        size = self.epoch_size() if size is None else size
        self.section.inject("_EpochSize", size)
        self.missing = None
        return size

    def inject_unknown_epoch_size(self, missing: DataError) -> None:
        """Publishes a placeholder ``[<sp>]_EpochSize`` (1,000,000) when the data set is absent, so that the network
        builds; every value read through it is listed by :meth:`data_note` and learning is refused.

        Args:
            missing: why the size is unknown (the data set was not found).
        """
        self.section.inject("_EpochSize", EPOCH_PLACEHOLDER, placeholder=True)
        self.missing = missing
        self.built_without_data = True

    def check_learnable(self) -> None:
        """Refuses to learn with what was built from a placeholder ``[<sp>]_EpochSize``.

        Raises:
            DataError: the network was loaded while the data set was absent, and a value refers to the
                epoch size (a solver schedule): load it again now that the data are there.
        """
        if not self.built_without_data:
            return
        for value in self.document.provisional():
            if f"[{self.section.name}]_EpochSize" in value.sources:
                raise DataError(f"{value.key} refers to [{self.section.name}]_EpochSize, unknown when the network was "
                                "loaded (the data set was absent): load the INI again now that the data are there",
                                value.location, value.section or None, value.key)

    def data_note(self) -> str:
        """The lines the summary ends with: the values that depend on the data (empty if none).

        Those refer to ``[<sp>]_EpochSize`` while the data set is absent, or to a ``StimuliData``
        statistic, computed when the data are opened.
        """
        provisional = self.document.provisional()
        if not provisional:
            return ""
        lines = ["", "", "Values that depend on the data set (computed when the data are opened):"]
        for value in provisional:
            where = f"[{value.section}] {value.key}" if value.section else value.key
            lines.append(f"  {value.location}: {where} refers to {', '.join(value.sources)}")
        if self.missing is not None:
            lines.append(f"  the data set is absent here: {self.missing}")
        return "\n".join(lines)

    def chain(self, partition: str) -> tuple[list[Transformation], list[Transformation]]:
        """The static and on-the-fly transformations applying to a partition, in order."""
        static = [s.transform for s in self.stages if s.kind == "static" and applies_to(s.apply_to, partition)]
        dynamic = [s.transform for s in self.stages if s.kind == "on_the_fly" and applies_to(s.apply_to, partition)]
        return static, dynamic  # type: ignore[return-value]

    def finishing(self, is_float: bool) -> list[Transformation]:
        """The implicit steps after the chain: 8-bit scaling (if still 8-bit), input quantization."""
        steps: list[Transformation] = [] if is_float else [ImplicitScale(self.signed)]
        levels, low, high = self.quantization
        if levels > 0:
            steps.append(InputQuantization(levels, low, high))
        return steps

    def shape_error(self, partition: str, shape: Sequence[int]) -> DataError:
        """The error for stimuli whose shape after the transformations differs from the input size."""
        c, h, w = self.input_shape
        return DataError(
            f"the network input is {c}x{h}x{w} (NbChannels x SizeY x SizeX) but the {partition} stimuli are "
            f"{'x'.join(map(str, shape))} after the transformations (add a RescaleTransformation, "
            "PadCropTransformation or ColorSpaceTransformation)",
            self.section.location,
            self.section.name,
        )

    def _check_static_shapes(self) -> None:
        """With a database of known image size, checks every partition's output shape now."""
        shape = getattr(self.database, "raw_shape", None)
        if shape is None:
            return
        provisional = {value.section for value in self.document.provisional()}
        for partition in PARTITIONS:
            stages = [s for kind in ("static", "on_the_fly") for s in self.stages
                      if s.kind == kind and applies_to(s.apply_to, partition)]
            current: Shape | None = shape
            for stage in stages:
                assert stage.transform is not None
                changed = stage.transform.output_shape(current) if current is not None else None
                if stage.section.name in provisional and changed != current:
                    changed = None  # a size from StimuliData statistics: checked when the data are opened
                current = changed
            if current is not None and tuple(current) != self.input_shape:
                raise self.shape_error(partition, current)

    def open(self, seed: int) -> Provider:
        """Loads the data set, applies the static transformations, injects ``[<sp>]_EpochSize``.

        Args:
            seed: the run seed (partitioning; shuffling uses seed + epoch).

        Raises:
            DataError: missing or malformed data, or stimuli of the wrong size.
        """
        stimuli = self.database.load(seed)
        provider = Provider(self, stimuli, seed)
        self.inject_epoch_size(provider.size("Learn"))
        return provider


def _read_geometry(sp: Section) -> tuple[Shape, int]:
    """(C, H, W) and batch size from ``SizeX``/``SizeY``/``NbChannels`` (or ``Size``) and ``BatchSize``."""
    for key in UNSUPPORTED_SP_KEYS:
        if sp.has(key):
            sp.raw(key)
            raise sp.error(key, "is not supported by qatrun (2-D image classification only)")
    if sp.name == "env":
        for key in SPIKING_ENV_KEYS:
            if sp.has(key):
                sp.raw(key)
                warn(f"{key} only drives N2D2's spiking simulator; qatrun ignores it", sp.location_of(key), sp.name)
    if sp.has("Size"):
        for key in ("SizeX", "SizeY", "NbChannels"):
            if sp.has(key):
                raise sp.error(key, "give either Size or SizeX/SizeY/NbChannels")
        size = sp.read(SIZE)
        if len(size) not in (2, 3):
            raise sp.error("Size", f"expected W H or W H C, found {len(size)} numbers")
        width, height, channels = size[0], size[1], (size[2] if len(size) == 3 else 1)
    else:
        width, height, channels = sp.read(SIZE_X), sp.read(SIZE_Y), sp.read(NB_CHANNELS)
    batch_size = sp.read(BATCH_SIZE)
    for key, value in (("SizeX", width), ("SizeY", height), ("NbChannels", channels), ("BatchSize", batch_size)):
        if value <= 0:
            raise sp.error(key if sp.has(key) else "Size", f"must be positive, found {value}")
    sp.read(CACHE_PATH)
    if sp.read(COMPOSITE_STIMULI):
        raise sp.error("CompositeStimuli", f"pixel-wise labels are N2D2's segmentation; {RATE_BASED}")
    return (channels, height, width), batch_size


def _read_parameters(doc: Document, sp: Section) -> tuple[bool, tuple[int, float, float]]:
    """The provider parameters of ``[sp] ConfigSection=...``."""
    params = doc.params(sp)
    for key in (STREAM_TENSOR, STREAM_LABEL):
        if params.read(key):
            raise params.error(key.name, "is not supported by qatrun")
    signed = params.read(DATA_SIGNED_MAPPING)
    levels = params.read(QUANTIZATION_LEVELS)
    low, high = params.read(QUANTIZATION_MIN), params.read(QUANTIZATION_MAX)
    if levels == 1 or levels < 0:
        raise params.error("QuantizationLevels", f"must be 0 (none) or at least 2, found {levels}")
    if levels and not low < high:
        raise params.error("QuantizationMax", f"must exceed QuantizationMin ({low}), found {high}")
    return signed, (levels, low, high)


def _read_stages(doc: Document, sp: Section) -> list[Stage]:
    """Every ``<sp>.*`` provider sub-section in file order, read (statistics get placeholders)."""
    stages = []
    for candidate in doc.sections():
        kind = _classify(sp.name, candidate.name)
        if kind is None:
            continue
        section = doc.section(candidate.name)
        if kind == "unsupported":
            raise section.error(None, "this kind of stimuli-provider sub-section is not supported by qatrun")
        if kind == "unknown":
            raise section.error(
                None,
                "Unknown StimuliProvider type (expected <sp>.Transformation*, "
                "<sp>.OnTheFlyTransformation* or <sp>.StimuliData*)",
            )
        if kind == "statistics":
            for key, value in PLACEHOLDERS.items():
                section.inject(key, value, placeholder=True)
        stage = Stage(section, kind)
        stage.read()
        stages.append(stage)
    return stages


# --------------------------------------------------------------------------------------------------
# Prepared partitions and the provider


@dataclass
class Prepared:
    """One partition ready to batch.

    Attributes:
        labels: (n,) int64.
        data: (n, C, H, W) cache after the deterministic static prefix (in-memory data), else ``None``.
        files: the image files (on-demand data), else ``None``.
        per_image: static transformations applied per image when reading files.
        per_batch: transformations applied per batch, in order.
    """

    labels: torch.Tensor
    data: torch.Tensor | None = None
    files: list[Path] | None = None
    per_image: list[Transformation] = field(default_factory=list)
    per_batch: list[Transformation] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _apply(chain: Sequence[Transformation], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    for t in chain:
        x = t(x, generator)
    return x


def _apply_chunked(chain: Sequence[Transformation], x: torch.Tensor) -> torch.Tensor:
    """A deterministic chain over a whole partition, in chunks (bounded temporaries)."""
    if not chain or len(x) == 0:
        return x  # an empty partition is never read
    return torch.cat([_apply(chain, chunk, None) for chunk in x.split(_STATS_CHUNK)])


def schedule(data: torch.Tensor, static: Sequence[Transformation]) -> tuple[torch.Tensor, list[Transformation]]:
    """Applies the cacheable part of a static chain to a whole partition.

    Returns:
        ``(cache, rest)``: the cached tensor and the transformations still to apply per batch.
    """
    cache, pending = data, []
    for t in static:
        if pending and (any(p.random for p in pending) or t.random or t.pointwise):
            pending.append(t)  # after a random step everything is per batch; pointwise steps may wait
        elif pending:
            cache = _apply_chunked(pending + [t], cache)  # a geometric step needs the values: materialize
            pending = []
        elif t.random or (t.pointwise and cache.dtype == torch.uint8 and t.output_float(False)):
            pending.append(t)
        else:
            cache = _apply_chunked([t], cache)
    return cache, pending


class Provider:
    """The loaded data set: partitions ready to batch.

    Attributes:
        spec: the :class:`DataSpec` it was opened from.
        seed: the run seed.
        source: the folder the data were read from.
        origin: how that folder was found: ``DataPath``, ``$N2D2_DATA/<name>``, ``copy shipped with qatrun``.
    """

    def __init__(self, spec: DataSpec, stimuli: Stimuli, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self.source = stimuli.source
        self.origin = spec.database.origin(stimuli.source)
        self._names = stimuli.label_names
        self._nb_classes = max(len(stimuli.label_names), int(stimuli.labels.max()) + 1 if len(stimuli.labels) else 0)
        self._decoded: dict[Path, torch.Tensor] | None = {} if stimuli.in_memory else None
        self.statistics: dict[str, Statistics] = {}  # by StimuliData section
        self.images: dict[str, torch.Tensor] = {}  # meanData.bin / stdDevData.bin images, by N2D2's path
        self._prepared = self._prepare(stimuli)
        self._decoded = None

    @property
    def nb_classes(self) -> int:
        """Number of classes (labels are 0 .. nb_classes - 1)."""
        return self._nb_classes

    @property
    def labels(self) -> list[str]:
        """Class names by label (the label number as text where the data set has no names)."""
        return list(self._names) + [str(k) for k in range(len(self._names), self._nb_classes)]

    def size(self, partition: str) -> int:
        """Number of stimuli of ``Learn``, ``Validation`` or ``Test``."""
        return len(self._partition(partition))

    def _partition(self, name: str) -> Prepared:
        if name not in self._prepared:
            raise ValueError(f"unknown partition {name!r}; expected one of {', '.join(PARTITIONS)}")
        return self._prepared[name]

    # ----------------------------------------------------------------------------------------------

    def _prepare(self, stimuli: Stimuli) -> dict[str, Prepared]:
        """Walks the stages in file order: static steps per partition, statistics on Learn."""
        spec = self.spec
        prepared: dict[str, Prepared] = {}
        for name in PARTITIONS:
            index = stimuli.partitions[name]
            if stimuli.images is not None:
                prepared[name] = Prepared(stimuli.labels[index], data=stimuli.images[index])
            else:
                assert stimuli.files is not None
                prepared[name] = Prepared(stimuli.labels[index], files=[stimuli.files[int(k)] for k in index])
        pending: dict[str, list[Transformation]] = {name: [] for name in PARTITIONS}
        for k, stage in enumerate(spec.stages):
            if stage.kind == "statistics":
                self._flush(prepared, pending)
                self._statistics(stage, prepared)
                for later in spec.stages[k + 1 :]:
                    later.read()  # sees the real statistics now
                continue
            if isinstance(stage.transform, Affine):
                stage.transform = stage.transform.bind(self.images)
            if stage.kind == "static":
                for name in PARTITIONS:
                    if applies_to(stage.apply_to, name):
                        pending[name].append(stage.transform)  # type: ignore[arg-type]
        self._flush(prepared, pending)
        for name, part in prepared.items():
            _, dynamic = spec.chain(name)
            part.per_batch += dynamic
            is_float = _is_float(part, spec)
            part.per_batch += spec.finishing(is_float)
            self._check_shape(name, part)
        return prepared

    def _flush(self, prepared: dict[str, Prepared], pending: dict[str, list[Transformation]]) -> None:
        """Applies the static steps gathered so far (cache what can be cached)."""
        for name, part in prepared.items():
            steps, pending[name] = pending[name], []
            if part.files is not None and self._decoded is not None:
                steps = self._load_in_memory(part, steps)
            if part.data is not None:
                if any(t.random for t in part.per_batch):  # after a random step everything is per batch
                    part.per_batch += steps
                else:
                    part.data, part.per_batch = schedule(part.data, part.per_batch + steps)
            else:
                part.per_image += steps

    def _load_in_memory(self, part: Prepared, steps: list[Transformation]) -> list[Transformation]:
        """Decodes a partition's files (once per file), applies the deterministic prefix per image, stacks.

        Returns:
            The steps not applied yet.
        """
        assert part.files is not None and self._decoded is not None
        prefix = 0
        while prefix < len(steps) and not steps[prefix].random:
            prefix += 1
        images = []
        for path in part.files:
            if path not in self._decoded:
                self._decoded[path] = formats.read_image(path)
            images.append(_apply(steps[:prefix], self._decoded[path][None], None)[0])
        part.data = _stack(images, part.files)
        part.files = None
        return steps[prefix:]

    def _statistics(self, stage: Stage, prepared: dict[str, Prepared]) -> None:
        """Measures the stimuli of the stage's ``ApplyTo`` partitions at this point of the chain; injects
        the properties and keeps the statistics (:attr:`statistics`) and its images (:attr:`images`)."""
        section, spec = stage.section, stage.statistics
        assert spec is not None
        accumulator = Accumulator(spec)
        parts = [prepared[name] for name in PARTITIONS if applies_to(spec.apply_to, name)]
        for x in self._measured(parts):
            accumulator.add(x, section.location, section.name)
        if accumulator.needs_second_pass:  # a histogram of float values needs their range first
            for x in self._measured(parts):
                accumulator.add_histogram(x)
        stats = accumulator.result(section.location, section.name)
        for key, value in stats.properties().items():
            section.inject(key, repr(value))
        self.statistics[section.name] = stats
        self.images.update({os.path.normpath(path): image for path, image in stats.images().items()})

    def _measured(self, parts: Sequence[Prepared]) -> Iterator[torch.Tensor]:
        """The stimuli of ``parts`` as they stand (random steps drawn with the run seed), in batches."""
        generator = torch.Generator().manual_seed(self.seed)
        for part in parts:
            chunk = 1 if part.data is None else _STATS_CHUNK  # files: each image may have its own size
            for x, _ in self._iterate(part, part.per_batch, chunk, generator, per_image=part.per_image):
                yield x

    def write_statistics(self, folder: PathLike) -> list[Path]:
        """Writes the files N2D2's ``StimuliData`` sections write (``<section>/meanData.bin`` ...) into
        ``folder``; returns them."""
        return [path for stats in self.statistics.values() for path in stats.write(Path(folder))]

    def _check_shape(self, name: str, part: Prepared) -> None:
        if len(part) == 0:
            return
        x, _ = next(
            iter(self._iterate(part, part.per_batch, 1, torch.Generator().manual_seed(0), per_image=part.per_image))
        )
        if tuple(x.shape[1:]) != self.spec.input_shape:
            raise self.spec.shape_error(name, tuple(x.shape[1:]))

    def _iterate(
        self,
        part: Prepared,
        per_batch: Sequence[Transformation],
        batch_size: int,
        generator: torch.Generator,
        order: torch.Tensor | None = None,
        per_image: Sequence[Transformation] = (),
        workers: int = 0,
        seed_parts: tuple[int, ...] = (0,),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of (transformed x, labels) in ``order`` (default: partition order)."""
        order = torch.arange(len(part)) if order is None else order
        batches = order.split(batch_size)
        if part.data is not None:
            for index in batches:
                yield _apply(per_batch, part.data[index], generator), part.labels[index]
            return
        assert part.files is not None
        for index, x in _read_files(part.files, batches, per_image, workers, seed_parts):
            yield _apply(per_batch, x, generator), part.labels[index]

    def loader(
        self,
        partition: str,
        shuffle: bool,
        batch_size: int | None = None,
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
    ) -> Loader:
        """Batches of one partition.

        Args:
            partition: ``Learn``, ``Validation`` or ``Test``.
            shuffle: draw a permutation (generator seeded by seed + epoch), else partition order.
            batch_size: default ``BatchSize`` of the INI.
            rank: this process's rank in a distributed run.
            world: number of processes; rank r sees positions r, r + world, ... of the same order
                (disjoint, complete; sizes differ by at most one).
            epoch: the epoch (new permutation and new random augmentation each epoch).

        Returns:
            An iterable of ``(x float32 (N, C, H, W), y int64 (N,))`` with ``len()`` batches.
        """
        assert 0 <= rank < world, (rank, world)
        return Loader(self, self._partition(partition), shuffle, batch_size or self.spec.batch_size, rank, world, epoch)


def _is_float(part: Prepared, spec: DataSpec) -> bool:
    """Whether a partition's data are float after its chain (dtype tracking, no computation)."""
    if part.data is not None:
        is_float = part.data.dtype != torch.uint8
        chain = part.per_batch
    else:
        is_float, chain = False, part.per_image + part.per_batch
    for t in chain:
        is_float = t.output_float(is_float)
    return is_float


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (seed, epoch, rank, ...), well mixed."""
    state = np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class Loader:
    """One epoch of batches of a partition (see :meth:`Provider.loader`)."""

    def __init__(
        self, provider: Provider, part: Prepared, shuffle: bool, batch_size: int, rank: int, world: int, epoch: int
    ) -> None:
        self.provider = provider
        self.part = part
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.rank, self.world, self.epoch = rank, world, epoch

    def order(self) -> torch.Tensor:
        """Positions in the partition this rank reads, in reading order."""
        n = len(self.part)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.provider.seed + self.epoch))
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        n = len(range(self.rank, len(self.part), self.world))
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed_parts = (self.provider.seed, self.epoch, self.rank)
        generator = torch.Generator().manual_seed(mix_seed(*seed_parts))
        workers = 0 if self.part.files is None else min(4, os.cpu_count() or 1)
        batches = self.provider._iterate(
            self.part,
            self.part.per_batch,
            self.batch_size,
            generator,
            self.order(),
            self.part.per_image,
            workers,
            seed_parts,
        )
        for x, y in batches:
            yield x.float().contiguous(), y


@dataclass(frozen=True)
class _Failure:
    """A user error met in a ``DataLoader`` worker, carried back as a value.

    Raised there, it would come back as a new exception built from the worker's whole traceback text; as a
    value it crosses the process boundary intact and :func:`_read_files` raises it as one line.
    """

    message: str


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _quiet_worker(worker: int) -> None:
    """``worker_init_fn``: a worker leaves SIGINT / SIGTERM to the main process.

    Forked workers inherit the main process's handlers (the learning loop's "saving the learning state"
    notice): a Ctrl-C, sent to the whole process group, would be announced once per worker. The workers
    are forked with these signals blocked (:func:`_start_workers`), so one arriving before this function
    runs stays pending and is discarded here. The main process stops its workers itself.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _start_workers(loader: torch.utils.data.DataLoader) -> Iterator[torch.Tensor | _Failure]:
    """``iter(loader)``, forking its workers with SIGINT / SIGTERM blocked (see :func:`_quiet_worker`).

    A signal that arrives meanwhile is delivered to the main process once they are unblocked.
    """
    if loader.num_workers == 0 or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _FileDataset(torch.utils.data.Dataset):
    """Images decoded from files, each through the per-image static transformations."""

    def __init__(self, files: Sequence[Path], chain: Sequence[Transformation], seed_parts: tuple[int, ...]) -> None:
        self.files, self.chain, self.seed_parts = files, list(chain), seed_parts
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, k: int) -> tuple[Path, torch.Tensor | _Failure]:
        if self.generator is None:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            self.generator = torch.Generator().manual_seed(mix_seed(*self.seed_parts, worker))
        try:
            return self.files[k], _apply(self.chain, formats.read_image(self.files[k])[None], self.generator)[0]
        except QatrunError as err:
            return self.files[k], _Failure(str(err))


def _stack(images: list[torch.Tensor], files: Sequence[Path]) -> torch.Tensor:
    """Stacks images that must share one shape after the static transformations (else a DataError)."""
    first = (tuple(images[0].shape), images[0].dtype) if images else None
    for path, image in zip(files, images):
        if (tuple(image.shape), image.dtype) != first:
            raise DataError(
                f"images differ after the static transformations ({files[0]}: {'x'.join(map(str, first[0]))}, "
                f"{path}: {'x'.join(map(str, image.shape))}); add a RescaleTransformation or PadCropTransformation"
            )
    return torch.stack(images) if images else torch.zeros(0, dtype=torch.uint8)


def _collate(items: list[tuple[Path, torch.Tensor | _Failure]]) -> torch.Tensor | _Failure:
    """Stacks a batch (in the worker); a failure of one image, or images of different shapes, is a failure."""
    examples: dict[tuple[tuple[int, ...], torch.dtype], Path] = {}  # the first file of each shape
    for path, image in items:
        if isinstance(image, _Failure):
            return image
        examples.setdefault((tuple(image.shape), image.dtype), path)
    if len(examples) > 1:
        found = ", ".join(f"{path}: {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}"
                          for (shape, dtype), path in examples.items())
        return _Failure(
            f"images of one batch differ after the static transformations ({found}); "
            "add a RescaleTransformation or PadCropTransformation"
        )
    return torch.stack([image for _, image in items])  # type: ignore[misc]


def _read_files(
    files: Sequence[Path],
    batches: Sequence[torch.Tensor],
    chain: Sequence[Transformation],
    workers: int,
    seed_parts: tuple[int, ...],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decodes batches of files (in ``workers`` processes), yielding (positions, images)."""
    dataset = _FileDataset(files, chain, seed_parts)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_quiet_worker if workers else None,
    )
    for index, x in zip(batches, _start_workers(loader)):
        if isinstance(x, _Failure):
            raise DataError(x.message)
        yield index, x
