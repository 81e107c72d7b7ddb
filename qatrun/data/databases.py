"""The ``[database]`` drivers: where the files are, how they are read and partitioned.

A driver reads its keys from ``[database]`` (``from_section``), finds its files (``DataPath``, else
``$N2D2_DATA/<name>`` as N2D2's ``N2D2_DATA()`` does; the first of these folders that exists must hold
them all), checks the labels against the number of classes, and returns a :class:`Stimuli`: the images (a
``uint8`` (N, C, H, W) tensor in memory, or a list of image files read on demand), the labels, and the
``Learn`` / ``Validation`` / ``Test`` partitions as index tensors (reference/n2d2.md section 3.1).

Partitioning: a fraction ``f`` of ``n`` stimuli is ``round(f * n)`` (half away from zero, as
``Utils::round``). With ``RandomPartitioning=1`` (the default) the stimuli drawn for ``Learn`` /
``Validation`` are a random subset chosen by a generator seeded with the run seed; partitions keep file
order within themselves, so a partition is a reproducible function of (files, fractions, seed). N2D2
draws from its own Mersenne-Twister stream, so the exact subsets differ from N2D2's; the sizes do not.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from qatrun.data import formats
from qatrun.errors import DataError, Location
from qatrun.ini import Key, Section, expand_env

PARTITIONS = ("Learn", "Validation", "Test")
SHIPPED_MNIST = Path(__file__).resolve().parent / "mnist"
IMAGE_EXTENSIONS = ("png", "pgm", "ppm", "pbm", "pnm", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")

TYPE = Key("Type", "str", doc="database driver (MNIST_IDX_Database, CIFAR10_Database, ...)")
DATA_PATH = Key("DataPath", "path", "", "folder holding the data set files (default $N2D2_DATA/<name>)")
RANDOM_PARTITIONING = Key("RandomPartitioning", "bool", True, "draw Learn/Validation at random (seeded)")
VALIDATION = Key("Validation", "float", 0.0, "fraction of the training stimuli kept for validation")
# Base keys of every N2D2 driver that only matter for features qatrun does not have: accepted at
# their default value, an error otherwise.
UNSUPPORTED_AT_DEFAULT = (
    Key("DefaultLabel", "str", "", "label of stimuli without one (ROI data)"),
    Key("ROIsMargin", "int", 0, "margin around ROIs"),
    Key("DataFileLabel", "bool", True, "labels come with the data files"),
    Key("TargetDataPath", "str", "", "folder of target (segmentation) data"),
    Key("MultiChannelMatch", "str", "", "multi-channel file pattern"),
    Key("MultiChannelReplace", "strs", (), "multi-channel file replacements"),
)
COMPOSITE_LABEL = Key(
    "CompositeLabel", "enum", "Auto", "how pixel-wise labels combine (no effect on image labels)",
    ("None", "Auto", "Default", "Disjoint", "Combine"),
)  # fmt: skip


def read_path(section: Section, key: Key, unset: list[DataError]) -> str:
    """A path key of ``[database]``, environment variables expanded (unset ones as nothing, as N2D2).

    Args:
        unset: receives the error naming the unset variables, raised when the data are looked for.
    """
    section.declare(key.name)
    text = section.raw(key.name, key.default)
    try:
        return expand_env(text, strict=True)
    except ValueError as exc:
        unset.append(DataError(str(exc), section.location_of(key.name), section.name, key.name))
        return expand_env(text)


def partition_fractions(settings: dict[str, Any]) -> tuple[float, float, float]:
    """``Learn``, ``Validation``, ``Test`` of a driver's settings, ``Test=-1`` meaning ``1 - Learn - Validation``."""
    learn, validation, test = (settings[key] for key in PARTITIONS)
    return learn, validation, (max(0.0, 1.0 - learn - validation) if test < 0 else test)


def round_half_away(value: float) -> int:
    """N2D2's ``Utils::round``: nearest integer, halves away from zero."""
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


def default_root(subdir: str) -> tuple[Path, str]:
    """N2D2's default data folder ``$N2D2_DATA/<subdir>`` (``/local/$USER/n2d2_data`` if unset).

    Returns:
        ``(path, how it was derived)`` for error messages.
    """
    base = os.environ.get("N2D2_DATA")
    if base:
        return Path(base) / subdir, f"$N2D2_DATA/{subdir}"
    user = os.environ.get("USER")
    local = Path("/local") / user / "n2d2_data" if user else Path("/local/n2d2_data")
    return local / subdir, f"N2D2's default when N2D2_DATA is unset, {local}/{subdir}"


@dataclass
class Stimuli:
    """What a driver loaded.

    Attributes:
        labels: (N,) int64 label of each stimulus.
        partitions: ``Learn`` / ``Validation`` / ``Test`` -> int64 indices into the stimuli.
        label_names: name of each class (its index is the label).
        source: the folder the data came from.
        images: (N, C, H, W) uint8 when held in memory, else ``None``.
        files: the image file of each stimulus, else ``None``.
        in_memory: decode the files once when the provider opens (``LoadInMemory=1``) rather than
            at every read.
    """

    labels: torch.Tensor
    partitions: dict[str, torch.Tensor]
    label_names: list[str]
    source: Path
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    in_memory: bool = False


def split(
    indices: torch.Tensor, fractions: Sequence[float], generator: torch.Generator | None, rest_to: int | None
) -> list[torch.Tensor]:
    """Partitions a pool by fractions, in order; each part keeps the pool order.

    Args:
        indices: the pool (int64).
        fractions: fraction of the pool for each part.
        generator: draws which stimuli go to which part; ``None`` takes them in order.
        rest_to: index of the part that also receives what rounding left over, or ``None``.

    Returns:
        One index tensor per fraction; disjoint.
    """
    n = len(indices)
    counts = [round_half_away(f * n) for f in fractions]
    if rest_to is not None:
        counts[rest_to] = n - (sum(counts) - counts[rest_to])
    assert all(c >= 0 for c in counts) and sum(counts) <= n, (counts, n)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    parts, start = [], 0
    for count in counts:
        chosen = order[start : start + count]
        parts.append(indices[chosen.sort().values])
        start += count
    return parts


@dataclass(frozen=True)
class Database:
    """Base of the drivers: the keys every driver reads, and the search for the data folder."""

    type_name: ClassVar[str]
    default_subdir: ClassVar[str]
    keys: ClassVar[tuple[Key, ...]] = ()
    fixed_settings: ClassVar[dict[str, Any]] = {}  # settings a driver has but takes no key for

    data_path: str
    random_partitioning: bool
    location: Location  # of the [database] header, for error messages
    section_name: str = "database"
    settings: dict[str, Any] = field(default_factory=dict)  # the driver's own keys, by INI name
    unset: DataError | None = field(default=None, compare=False)  # a path naming an unset variable

    @classmethod
    def from_section(cls, section: Section) -> Database:
        """Reads every key of ``[database]`` this driver honours; rejects the unsupported ones.

        A path that names an unset environment variable (``DataPath=${N2D2_DATA}/cifar10``) is an error
        when the data are looked for, not here: the summary needs no data.
        """
        unset: list[DataError] = []
        data_path = read_path(section, DATA_PATH, unset)
        random_partitioning = section.read(RANDOM_PARTITIONING)
        for key in UNSUPPORTED_AT_DEFAULT:
            if section.read(key) != key.default:
                raise section.error(key.name, f"is not supported by qatrun (only the default {key.default!r})")
        section.read(COMPOSITE_LABEL)
        own = {key.name: read_path(section, key, unset) if key.kind == "path" else section.read(key)
               for key in cls.keys}
        settings = {**cls.fixed_settings, **own}
        database = cls(data_path, random_partitioning, section.location, section.name, settings,
                       unset[0] if unset else None)
        database.validate(section)
        return database

    def validate(self, section: Section) -> None:
        """Checks option values (fractions in range, ...); raises ``section.error``."""

    def error(self, message: str) -> DataError:
        """A data error located at the ``[database]`` section (to ``raise``)."""
        return DataError(f"{self.type_name}: {message}", self.location, self.section_name)

    def _check_fraction(self, section: Section, key: str, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise section.error(key, f"must lie in [0, 1], found {value}")

    def _check_fractions(self, section: Section) -> None:
        """``Learn``, ``Validation`` and ``Test`` (``-1``: the rest) in [0, 1], together at most 1."""
        for key in PARTITIONS:
            if key != "Test" or self.settings[key] != -1.0:
                self._check_fraction(section, key, self.settings[key])
        total = sum(partition_fractions(self.settings))
        if total > 1.0 + 1e-9 or self.settings["Learn"] + self.settings["Validation"] > 1.0 + 1e-9:
            raise section.error("Learn", f"Learn + Validation + Test = {total:g} exceeds 1")

    def candidates(self) -> list[tuple[Path, str]]:
        """Folders to look in, with how each was derived."""
        if self.data_path:
            return [(Path(self.data_path), "DataPath")]
        return [default_root(self.default_subdir)]

    def required(self, folder: Path) -> list[Path] | None:
        """The files this driver needs in ``folder``, or ``None`` if they are not all there."""
        raise NotImplementedError

    def wanted(self) -> str:
        """The file names looked for, for the error message."""
        raise NotImplementedError

    def how_to_get(self) -> str:
        """One sentence telling the user how to provide the data."""
        raise NotImplementedError

    def missing(self, folder: Path) -> str:
        """What an existing ``folder`` lacks, for the error message (default: everything looked for)."""
        return self.wanted()

    def locate(self) -> tuple[Path, list[Path]]:
        """The first candidate folder that exists; it must hold the data set.

        A folder that exists but lacks a file is an error, never a reason to try the next candidate: the
        user's data are not silently replaced by another data set (the shipped MNIST is only used when no
        folder of theirs exists at all).

        Raises:
            DataError: the first existing folder is incomplete (the message names what is missing), or no
                candidate exists (the message names every folder tried and how to provide the files).
        """
        if self.unset is not None:
            raise self.unset
        tried = []
        for folder, how in self.candidates():
            files = self.required(folder)
            if files is not None:
                return folder, files
            if folder.is_dir():
                raise self.error(
                    f"the data folder {folder} ({how}) is incomplete: missing {self.missing(folder)}. "
                    f"{self.how_to_get()}"
                )
            tried.append(f"{folder} ({how})")
        raise self.error(f"data set not found: looked for {self.wanted()} in {'; '.join(tried)}. {self.how_to_get()}")

    def origin(self, folder: Path) -> str:
        """How ``folder``, found by :meth:`locate`, was derived (``DataPath``, ``$N2D2_DATA/mnist``, ...)."""
        return next((how for candidate, how in self.candidates() if candidate == folder), "DataPath")

    def check_labels(self, labels: torch.Tensor, nb_classes: int, path: Path) -> None:
        """Every label of ``path`` lies in ``0 .. nb_classes - 1``.

        Raises:
            DataError: naming the file, the first bad record (0-based) and its label.
        """
        bad = torch.nonzero((labels < 0) | (labels >= nb_classes)).flatten()
        if len(bad):
            record = int(bad[0])
            raise DataError(
                f"record {record} (0-based) has label {int(labels[record])}, outside the {nb_classes} classes "
                f"of {self.type_name} (0..{nb_classes - 1}); {len(bad)} record(s) are out of range",
                Location(str(path)),
            )

    def sizes(self) -> dict[str, int]:
        """Number of stimuli of each partition, without decoding images."""
        return {name: len(index) for name, index in self.partition(self.locate(), seed=0).items()}

    def partition(self, found: tuple[Path, list[Path]], seed: int) -> dict[str, torch.Tensor]:
        """The partitions (indices into the stimuli as :meth:`load` orders them)."""
        raise NotImplementedError

    def load(self, seed: int) -> Stimuli:
        """Reads the data set and partitions it (``seed`` drives ``RandomPartitioning``)."""
        raise NotImplementedError

    def generator(self, seed: int) -> torch.Generator | None:
        """The partitioning generator, ``None`` without ``RandomPartitioning``."""
        return torch.Generator().manual_seed(seed) if self.random_partitioning else None


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass(frozen=True)
class MnistIdx(Database):
    """``MNIST_IDX_Database``: IDX files, raw or ``.gz``; train -> Learn/Validation, t10k -> Test.

    Without ``DataPath``, when ``$N2D2_DATA/mnist`` does not exist, the copy shipped with qatrun
    (``qatrun/data/mnist``) is used; a ``DataPath`` that does not exist, or an existing folder that lacks one of
    the four files, is an error.
    """

    type_name: ClassVar[str] = "MNIST_IDX_Database"
    default_subdir: ClassVar[str] = "mnist"
    keys: ClassVar[tuple[Key, ...]] = (VALIDATION,)
    names: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    label_names: ClassVar[list[str]] = [str(digit) for digit in range(10)]
    raw_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    shipped: ClassVar[Path | None] = SHIPPED_MNIST

    def validate(self, section: Section) -> None:
        self._check_fraction(section, "Validation", self.settings["Validation"])

    def candidates(self) -> list[tuple[Path, str]]:
        found = super().candidates()
        # A DataPath the user wrote names their data: if it does not exist, that is an error, not the MNIST
        # that ships with qatrun (a typo would otherwise train on another data set).
        if self.shipped is not None and not self.data_path:
            found.append((self.shipped, "copy shipped with qatrun"))
        return found

    def _find(self, folder: Path, name: str) -> Path | None:
        """The file of ``name`` in ``folder``: N2D2's name, its ``.gz``, or the dotted spelling of some
        mirrors (``train-images.idx3-ubyte``)."""
        dotted = name.replace("-idx", ".idx")
        return _first_existing(folder, (name, name + ".gz", dotted, dotted + ".gz"))

    def required(self, folder: Path) -> list[Path] | None:
        files = [self._find(folder, name) for name in self.names]
        return None if None in files else files  # type: ignore[return-value]

    def missing(self, folder: Path) -> str:
        return ", ".join(f"{name}[.gz]" for name in self.names if self._find(folder, name) is None)

    def wanted(self) -> str:
        return ", ".join(f"{name}[.gz]" for name in self.names)

    def how_to_get(self) -> str:
        return (
            "Put the four MNIST IDX files (from http://yann.lecun.com/exdb/mnist/, gzipped or not) in one of "
            "these folders, or set DataPath in [database]."
        )

    def partition(self, found: tuple[Path, list[Path]], seed: int) -> dict[str, torch.Tensor]:
        files = found[1]
        n_train, n_test = formats.idx_count(files[0]), formats.idx_count(files[2])
        learn, validation = split(
            torch.arange(n_train),
            [1.0 - self.settings["Validation"], self.settings["Validation"]],
            self.generator(seed),
            1,
        )
        return {"Learn": learn, "Validation": validation, "Test": torch.arange(n_train, n_train + n_test)}

    def load(self, seed: int) -> Stimuli:
        folder, files = self.locate()
        images = [formats.read_idx_images(files[0]), formats.read_idx_images(files[2])]
        labels = [formats.read_idx_labels(files[1]), formats.read_idx_labels(files[3])]
        for image, image_path in zip(images, (files[0], files[2])):
            if tuple(image.shape[1:]) != self.raw_shape:
                raise DataError(
                    f"{self.type_name} images are {'x'.join(map(str, self.raw_shape[1:]))}, this IDX file holds "
                    f"{'x'.join(map(str, image.shape[2:]))} images",
                    Location(str(image_path)),
                )
        for image, label, path in zip(images, labels, (files[1], files[3])):
            if len(image) != len(label):
                raise DataError(f"{path} has {len(label)} labels for {len(image)} images", Location(str(path)))
            self.check_labels(label, len(self.label_names), path)
        return Stimuli(
            labels=torch.cat(labels),
            partitions=self.partition((folder, files), seed),
            label_names=list(self.label_names),
            source=folder,
            images=torch.cat(images),
        )


@dataclass(frozen=True)
class FashionMnistIdx(MnistIdx):
    """``Fashion_MNIST_IDX_Database``: Fashion-MNIST in the MNIST IDX layout."""

    type_name: ClassVar[str] = "Fashion_MNIST_IDX_Database"
    default_subdir: ClassVar[str] = "fashion-mnist/data/fashion"
    label_names: ClassVar[list[str]] = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip
    shipped: ClassVar[Path | None] = None

    def how_to_get(self) -> str:
        return (
            "Put the four Fashion-MNIST IDX files (github.com/zalandoresearch/fashion-mnist, data/fashion) in "
            "one of these folders, or set DataPath in [database]."
        )


def _read_names(path: Path | None, count: int) -> list[str]:
    """Class names, one per non-empty line, or the numbers when the file is absent."""
    if path is not None and path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) >= count:
            return names[:count]
    return [str(k) for k in range(count)]


@dataclass(frozen=True)
class Cifar10(Database):
    """``CIFAR10_Database``: binary batches; train -> Learn/Validation (or all Learn with
    ``UseTestForValidation=1``, the test set then also being Validation), test -> Test.

    File names: N2D2's ``data_batch_1..5.bin`` and ``test_batch.bin``; when they are absent, any
    ``data_batch_*.bin`` and one ``test_batch*.bin`` (e.g. the subset ``data_batch_1_first932.bin``).
    """

    type_name: ClassVar[str] = "CIFAR10_Database"
    default_subdir: ClassVar[str] = "cifar-10-batches-bin"
    keys: ClassVar[tuple[Key, ...]] = (
        VALIDATION,
        Key("UseTestForValidation", "bool", False, "all training images Learn; the test set is also Validation"),
    )
    label_bytes: ClassVar[int] = 1
    nb_classes: ClassVar[int] = 10
    raw_shape: ClassVar[tuple[int, int, int]] = (3, 32, 32)
    train_glob: ClassVar[str] = "data_batch_*.bin"
    test_glob: ClassVar[str] = "test_batch*.bin"

    def validate(self, section: Section) -> None:
        self._check_fraction(section, "Validation", self.settings["Validation"])
        if self.settings["UseTestForValidation"] and self.settings["Validation"] > 0:
            raise section.error(
                "Validation", "cannot be used with UseTestForValidation=1 (the test set is the validation set)"
            )

    def train_names(self) -> tuple[str, ...]:
        return tuple(f"data_batch_{k}.bin" for k in range(1, 6))

    def test_names(self) -> tuple[str, ...]:
        return ("test_batch.bin",)

    def required(self, folder: Path) -> list[Path] | None:
        train = [folder / name for name in self.train_names()]
        test = [folder / name for name in self.test_names()]
        if not all(path.is_file() for path in train):
            train = sorted(folder.glob(self.train_glob), key=_natural) if folder.is_dir() else []
        if not all(path.is_file() for path in test):
            found = sorted(folder.glob(self.test_glob)) if folder.is_dir() else []
            test = found if len(found) == 1 else []
        return train + test if train and test else None

    def wanted(self) -> str:
        return (
            f"{', '.join(self.train_names())}, {', '.join(self.test_names())} (or {self.train_glob}, {self.test_glob})"
        )

    def missing(self, folder: Path) -> str:
        lacking = []
        if not all((folder / name).is_file() for name in self.train_names()) and not list(folder.glob(self.train_glob)):
            lacking.append(f"{', '.join(self.train_names())} (or {self.train_glob})")
        if not all((folder / name).is_file() for name in self.test_names()):
            found = sorted(path.name for path in folder.glob(self.test_glob))
            if len(found) > 1:
                lacking.append(f"{', '.join(self.test_names())} (or a single {self.test_glob}; found {', '.join(found)})")
            elif not found:
                lacking.append(f"{', '.join(self.test_names())} (or {self.test_glob})")
        return ", ".join(lacking)

    def how_to_get(self) -> str:
        return (
            "Extract the CIFAR-10 binary version (cifar-10-binary.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html) "
            "into one of these folders, or set DataPath in [database]."
        )

    def label_index(self) -> int:
        return 0

    def names_file(self, folder: Path) -> Path | None:
        return folder / "batches.meta.txt"

    def partition(self, found: tuple[Path, list[Path]], seed: int) -> dict[str, torch.Tensor]:
        files = found[1]
        n_train = sum(formats.cifar_count(path, self.label_bytes) for path in files[:-1])
        n_test = formats.cifar_count(files[-1], self.label_bytes)
        test = torch.arange(n_train, n_train + n_test)
        if self.settings["UseTestForValidation"]:
            return {"Learn": torch.arange(n_train), "Validation": test, "Test": test}
        validation = self.settings["Validation"]
        learn, valid = split(torch.arange(n_train), [1.0 - validation, validation], self.generator(seed), 1)
        return {"Learn": learn, "Validation": valid, "Test": test}

    def load(self, seed: int) -> Stimuli:
        folder, files = self.locate()
        parts = [formats.read_cifar(path, self.label_bytes, self.label_index()) for path in files]
        for path, (_, labels) in zip(files, parts):
            self.check_labels(labels, self.nb_classes, path)
        return Stimuli(
            labels=torch.cat([labels for _, labels in parts]),
            partitions=self.partition((folder, files), seed),
            label_names=_read_names(self.names_file(folder), self.nb_classes),
            source=folder,
            images=torch.cat([images for images, _ in parts]),
        )


def _natural(path: Path) -> list[object]:
    """Sort key putting data_batch_2 before data_batch_10."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


@dataclass(frozen=True)
class Cifar100(Cifar10):
    """``CIFAR100_Database``: ``train.bin`` / ``test.bin``, records (coarse, fine) label then pixels."""

    type_name: ClassVar[str] = "CIFAR100_Database"
    default_subdir: ClassVar[str] = "cifar-100-binary"
    keys: ClassVar[tuple[Key, ...]] = (
        VALIDATION,
        Key("UseTestForValidation", "bool", False, "all training images Learn; the test set is also Validation"),
        Key("UseCoarse", "bool", False, "use the 20 coarse labels instead of the 100 fine ones"),
    )
    label_bytes: ClassVar[int] = 2
    train_glob: ClassVar[str] = "train*.bin"
    test_glob: ClassVar[str] = "test*.bin"

    @property
    def nb_classes(self) -> int:  # type: ignore[override]
        return 20 if self.settings["UseCoarse"] else 100

    def train_names(self) -> tuple[str, ...]:
        return ("train.bin",)

    def test_names(self) -> tuple[str, ...]:
        return ("test.bin",)

    def how_to_get(self) -> str:
        return (
            "Extract the CIFAR-100 binary version (cifar-100-binary.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html) "
            "into one of these folders, or set DataPath in [database]."
        )

    def label_index(self) -> int:
        return 0 if self.settings["UseCoarse"] else 1

    def names_file(self, folder: Path) -> Path | None:
        return folder / ("coarse_label_names.txt" if self.settings["UseCoarse"] else "fine_label_names.txt")


def list_images(folder: Path, depth: int, extensions: Sequence[str]) -> list[Path]:
    """Image files under ``folder`` down to ``depth`` sub-directory levels, sorted per directory."""
    allowed = {ext.lower().lstrip(".") for ext in extensions}
    found: list[Path] = []
    entries = sorted(folder.iterdir())
    found += [p for p in entries if p.is_file() and p.suffix.lower().lstrip(".") in allowed]
    if depth > 0:
        for sub in entries:
            if sub.is_dir():
                found += list_images(sub, depth - 1, extensions)
    return found


def split_per_label(
    labels: torch.Tensor, fractions: Sequence[float], generator: torch.Generator | None, equal: bool, complete: bool
) -> list[torch.Tensor]:
    """Per-label partitioning (``PerLabelPartitioning=1``): each label split by the fractions.

    Args:
        labels: (N,) label of each stimulus.
        fractions: Learn, Validation, Test fractions.
        generator: random draw, or ``None`` for file order.
        equal: ``EquivLabelPartitioning``: every label contributes as many stimuli as the rarest one.
        complete: the fractions sum to 1: the last part takes what rounding left.

    Returns:
        One sorted index tensor per fraction.
    """
    classes = labels.unique()
    pools = [torch.nonzero(labels == c).flatten() for c in classes]
    smallest = min(len(pool) for pool in pools)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for pool in pools:
        if equal and len(pool) > smallest:
            pool = pool[
                (torch.randperm(len(pool), generator=generator) if generator is not None else torch.arange(len(pool)))[
                    :smallest
                ]
                .sort()
                .values
            ]
        for k, part in enumerate(split(pool, fractions, generator, len(fractions) - 1 if complete else None)):
            parts[k].append(part)
    return [torch.cat(p).sort().values if p else torch.zeros(0, dtype=torch.int64) for p in parts]


@dataclass(frozen=True)
class Directory(Database):
    """``DIR_Database``: one label per sub-directory; images decoded with Pillow (BGR order).

    Label of a file: the names of its first ``LabelDepth`` directories below ``DataPath``, joined by
    ``/`` (prefixed with ``LabelName``); labels are numbered in sorted order.
    """

    type_name: ClassVar[str] = "DIR_Database"
    default_subdir: ClassVar[str] = ""
    keys: ClassVar[tuple[Key, ...]] = (
        Key("Learn", "float", doc="fraction of each label for Learn"),
        VALIDATION,
        Key("Test", "float", -1.0, "fraction for Test (default 1 - Learn - Validation)"),
        Key("Depth", "int", 1, "sub-directory levels searched for images"),
        Key("LabelName", "str", "", "prefix of every label name"),
        Key("LabelDepth", "int", 1, "sub-directory levels forming the label"),
        Key("PerLabelPartitioning", "bool", True, "apply the fractions within each label"),
        Key("EquivLabelPartitioning", "bool", True, "every label contributes as many stimuli as the rarest"),
        Key(
            "LoadInMemory",
            "bool",
            False,
            "decode every image once at start and cache it after the static transformations",
        ),
        Key("ValidExtensions", "strs", IMAGE_EXTENSIONS, "image file extensions"),
    )
    unsupported: ClassVar[tuple[str, ...]] = ("IgnoreMasks", "LoadMore", "ROIFile", "ROIDir", "ROIExtension")

    @classmethod
    def from_section(cls, section: Section) -> Database:
        for key in cls.unsupported:
            if section.has(key):
                section.raw(key)
                raise section.error(key, "is not supported by qatrun (no ROI or composite data)")
        if not section.has("DataPath"):
            raise section.error("DataPath", "required key is missing (DIR_Database has no default folder)")
        return super().from_section(section)

    @property
    def fractions(self) -> tuple[float, float, float]:
        """Learn, Validation, Test (default ``1 - Learn - Validation``)."""
        return partition_fractions(self.settings)

    def validate(self, section: Section) -> None:
        self._check_fractions(section)
        if self.settings["LabelDepth"] < 1:
            raise section.error(
                "LabelDepth", "must be at least 1 (qatrun trains classifiers: every image needs a label)"
            )
        if self.settings["Depth"] < self.settings["LabelDepth"]:
            raise section.error("Depth", f"must be at least LabelDepth ({self.settings['LabelDepth']})")

    def required(self, folder: Path) -> list[Path] | None:
        return [folder] if folder.is_dir() else None

    def wanted(self) -> str:
        return "a folder of one sub-folder of images per label"

    def how_to_get(self) -> str:
        return "Set DataPath in [database] to that folder."

    def catalog(self) -> tuple[Path, list[Path], torch.Tensor, list[str]]:
        """Lists the files and derives their labels (no decoding)."""
        folder, _ = self.locate()
        depth, prefix, label_depth = (self.settings[key] for key in ("Depth", "LabelName", "LabelDepth"))
        files = list_images(folder, depth, self.settings["ValidExtensions"])
        names = []
        for path in files:
            parts = path.relative_to(folder).parts[:-1]
            names.append("/".join(([prefix] if prefix else []) + list(parts[:label_depth])) if parts else "")
        files = [p for p, name in zip(files, names) if name]
        names = [name for name in names if name]
        if not files:
            raise self.error(
                f"no image in a label sub-folder of {folder} (extensions {' '.join(self.settings['ValidExtensions'])})"
            )
        label_names = sorted(set(names))
        labels = torch.tensor([label_names.index(name) for name in names], dtype=torch.int64)
        return folder, files, labels, label_names

    def partition(self, found: tuple[Path, list[Path]], seed: int) -> dict[str, torch.Tensor]:
        _, _, labels, _ = self.catalog()
        return self._partition(labels, seed)

    def _partition(self, labels: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        fractions = self.fractions
        complete = abs(sum(fractions) - 1.0) < 1e-9
        if self.settings["PerLabelPartitioning"]:
            parts = split_per_label(
                labels, fractions, self.generator(seed), self.settings["EquivLabelPartitioning"], complete
            )
        else:
            parts = split(torch.arange(len(labels)), fractions, self.generator(seed), 2 if complete else None)
        return dict(zip(PARTITIONS, parts))

    def load(self, seed: int) -> Stimuli:
        folder, files, labels, label_names = self.catalog()
        partitions = self._partition(labels, seed)
        return Stimuli(labels, partitions, label_names, folder, files=files, in_memory=self.settings["LoadInMemory"])


@dataclass(frozen=True)
class Caltech101(Directory):
    """``Caltech101_DIR_Database``: ``101_ObjectCategories/<category>/*.jpg``, one label per category, in
    sorted order; ``BACKGROUND_Google`` (the clutter category) only with ``IncClutter=1``. Partitioned per
    label as ``DIR_Database`` does by default (``Learn``, ``Validation``, Test the rest; every label gives as
    many images as the rarest).
    """

    type_name: ClassVar[str] = "Caltech101_DIR_Database"
    default_subdir: ClassVar[str] = "101_ObjectCategories"
    clutter: ClassVar[str] = "BACKGROUND_Google"
    keys: ClassVar[tuple[Key, ...]] = (
        Key("Learn", "float", doc="fraction of each category for Learn"),
        VALIDATION,
        Key("IncClutter", "bool", False, "include the clutter category"),
    )
    fixed_settings: ClassVar[dict[str, Any]] = {
        "Test": -1.0, "Depth": 1, "LabelName": "", "LabelDepth": 1, "PerLabelPartitioning": True,
        "EquivLabelPartitioning": True, "LoadInMemory": False, "ValidExtensions": IMAGE_EXTENSIONS,
    }

    @classmethod
    def from_section(cls, section: Section) -> Database:
        return super(Directory, cls).from_section(section)  # a default folder: DataPath is optional

    def how_to_get(self) -> str:
        return f"Extract {self.default_subdir} into one of these folders, or set DataPath in [database]."

    def catalog(self) -> tuple[Path, list[Path], torch.Tensor, list[str]]:
        folder, files, labels, names = super().catalog()
        if self.settings["IncClutter"] or self.clutter not in names:
            return folder, files, labels, names
        drop = names.index(self.clutter)
        keep = labels != drop
        kept = [path for path, flag in zip(files, keep.tolist()) if flag]
        return folder, kept, labels[keep] - (labels[keep] > drop).long(), names[:drop] + names[drop + 1:]


@dataclass(frozen=True)
class Caltech256(Caltech101):
    """``Caltech256_DIR_Database``: as ``Caltech101_DIR_Database`` in ``256_ObjectCategories``, whose
    clutter category is ``257.clutter``."""

    type_name: ClassVar[str] = "Caltech256_DIR_Database"
    default_subdir: ClassVar[str] = "256_ObjectCategories"
    clutter: ClassVar[str] = "257.clutter"


@dataclass(frozen=True)
class Ilsvrc2012(Database):
    """``ILSVRC2012_Database``: ``train/<synset>/*.JPEG`` (Learn fraction, rest Test) and ``val/`` with
    ``val.txt`` (``<file> <label index>`` per line) for Validation and, with ``UseValidationForTest=1``,
    Test. Classes: one synset per line of ``LabelPath`` (default ``<DataPath>/synsets.txt``), in order.
    """

    type_name: ClassVar[str] = "ILSVRC2012_Database"
    default_subdir: ClassVar[str] = "ILSVRC2012"
    keys: ClassVar[tuple[Key, ...]] = (
        Key("Learn", "float", doc="fraction of train/ for Learn (the rest is Test)"),
        Key("UseValidationForTest", "bool", True, "the validation images are also the Test set"),
        Key("BackgroundClass", "bool", False, "label 0 is a background class; synsets start at 1"),
        Key("LabelPath", "path", "", "synset list (default <DataPath>/synsets.txt)"),
    )

    def validate(self, section: Section) -> None:
        self._check_fraction(section, "Learn", self.settings["Learn"])

    def _needed(self, folder: Path) -> list[Path]:
        labels = Path(self.settings["LabelPath"]) if self.settings["LabelPath"] else folder / "synsets.txt"
        return [folder / "train", folder / "val", folder / "val.txt", labels]

    def required(self, folder: Path) -> list[Path] | None:
        needed = self._needed(folder)
        return needed if all(path.exists() for path in needed) else None

    def wanted(self) -> str:
        return "train/, val/, val.txt and synsets.txt (or LabelPath)"

    def missing(self, folder: Path) -> str:
        return ", ".join(str(path) for path in self._needed(folder) if not path.exists())

    def how_to_get(self) -> str:
        return "Extract ILSVRC2012 (image-net.org) into one of these folders, or set DataPath in [database]."

    def catalog(self) -> tuple[Path, list[Path], torch.Tensor, list[str], int]:
        """Files, labels, class names, and how many files are training images."""
        folder, (train_dir, val_dir, val_list, synsets_file) = self.locate()
        synsets = [line.split()[0] for line in synsets_file.read_text().splitlines() if line.strip()]
        names = [line.strip() for line in synsets_file.read_text().splitlines() if line.strip()]
        offset = 1 if self.settings["BackgroundClass"] else 0
        index = {synset: k + offset for k, synset in enumerate(synsets)}
        files, labels = [], []
        for synset in synsets:
            for path in list_images(train_dir / synset, 0, IMAGE_EXTENSIONS) if (train_dir / synset).is_dir() else []:
                files.append(path)
                labels.append(index[synset])
        n_train = len(files)
        for number, line in enumerate(val_list.read_text().splitlines(), 1):
            if line.strip():
                name, label = self._validation_record(val_list, number, line, len(synsets))
                files.append(val_dir / name)
                labels.append(label + offset)
        label_names = (["background"] if offset else []) + names
        return folder, files, torch.tensor(labels, dtype=torch.int64), label_names, n_train

    def _validation_record(self, path: Path, number: int, line: str, nb_synsets: int) -> tuple[str, int]:
        """``(file name, label index)`` of line ``number`` of ``val.txt``.

        Raises:
            DataError: the line is not ``<file> <label index>``, or the index names no synset.
        """
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise DataError(f"expected '<file> <label index>', found {line.strip()!r}", Location(str(path), number))
        label = int(fields[1])
        if label >= nb_synsets:
            raise DataError(
                f"label {label} of {fields[0]} is outside the {nb_synsets} synsets of the label file (0..{nb_synsets - 1})",
                Location(str(path), number),
            )
        return fields[0], label

    def partition(self, found: tuple[Path, list[Path]], seed: int) -> dict[str, torch.Tensor]:
        _, files, labels, _, n_train = self.catalog()
        return self._partition(n_train, len(files), seed)

    def _partition(self, n_train: int, n_total: int, seed: int) -> dict[str, torch.Tensor]:
        learn, rest = split(
            torch.arange(n_train), [self.settings["Learn"], 1.0 - self.settings["Learn"]], self.generator(seed), 1
        )
        validation = torch.arange(n_train, n_total)
        return {
            "Learn": learn,
            "Validation": validation,
            "Test": validation if self.settings["UseValidationForTest"] else rest,
        }

    def load(self, seed: int) -> Stimuli:
        folder, files, labels, label_names, n_train = self.catalog()
        return Stimuli(labels, self._partition(n_train, len(files), seed), label_names, folder, files=files)


@dataclass(frozen=True)
class Gtsrb(Database):
    """``GTSRB_DIR_Database``: the German Traffic Sign Recognition Benchmark as distributed.

    ``Final_Training/Images/<class>/*.ppm`` (43 folders ``00000`` .. ``00042``, the folder number is the
    label) -> Learn / Validation (``Validation`` fraction, drawn over all training images, as N2D2's
    ``partitionStimuli(1 - Validation, Validation, 0)``); ``Final_Test/Images/*.ppm`` with its labels in
    ``GT-final_test.csv`` (the file of the ``GTSRB_Final_Test_GT`` download, ``Filename;...;ClassId``) ->
    Test. Images are decoded on demand (BGR, each of its own size: add a ``RescaleTransformation``).
    """

    type_name: ClassVar[str] = "GTSRB_DIR_Database"
    default_subdir: ClassVar[str] = "GTSRB"
    keys: ClassVar[tuple[Key, ...]] = (
        VALIDATION,
        Key("ExtractROIs", "bool", False, "crop each image to the sign's box of the CSV files (not supported)"),
    )
    nb_classes: ClassVar[int] = 43
    train_dir: ClassVar[str] = "Final_Training/Images"
    test_dir: ClassVar[str] = "Final_Test/Images"
    test_labels: ClassVar[str] = "GT-final_test.csv"

    def validate(self, section: Section) -> None:
        self._check_fraction(section, "Validation", self.settings["Validation"])
        if self.settings["ExtractROIs"]:
            raise section.error("ExtractROIs", "is not supported by qatrun (only 0: the whole image)")

    def _needed(self, folder: Path) -> list[Path]:
        return [folder / self.train_dir, folder / self.test_dir, folder / self.test_dir / self.test_labels]

    def required(self, folder: Path) -> list[Path] | None:
        needed = self._needed(folder)
        return needed if all(path.exists() for path in needed) else None

    def wanted(self) -> str:
        return f"{self.train_dir}/, {self.test_dir}/ and {self.test_dir}/{self.test_labels}"

    def missing(self, folder: Path) -> str:
        return ", ".join(str(path) for path in self._needed(folder) if not path.exists())

    def how_to_get(self) -> str:
        return (
            "Extract GTSRB_Final_Training_Images.zip, GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip "
            "(benchmark.ini.rub.de) into one of these folders (GT-final_test.csv goes into Final_Test/Images), "
            "or set DataPath in [database]."
        )

    def catalog(self) -> tuple[Path, list[Path], torch.Tensor, int]:
        """Files, labels, and how many files are training images."""
        folder, (train_dir, test_dir, test_csv) = self.locate()
        files: list[Path] = []
        labels: list[int] = []
        for sub in sorted(p for p in train_dir.iterdir() if p.is_dir()):
            if not sub.name.isdigit() or int(sub.name) >= self.nb_classes:
                raise DataError(f"{sub}: expected class folders 00000 .. {self.nb_classes - 1:05d}",
                                Location(str(sub)))
            found = list_images(sub, 0, ("ppm",))
            files += found
            labels += [int(sub.name)] * len(found)
        n_train = len(files)
        for number, line in enumerate(test_csv.read_text().splitlines(), 1):
            fields = line.strip().split(";")
            if number == 1 and fields[0] == "Filename" or not line.strip():
                continue
            if len(fields) < 2 or not fields[-1].isdigit():
                raise DataError(f"expected 'Filename;...;ClassId', found {line.strip()!r}",
                                Location(str(test_csv), number))
            files.append(test_dir / fields[0])
            labels.append(int(fields[-1]))
        tensor = torch.tensor(labels, dtype=torch.int64)
        self.check_labels(tensor, self.nb_classes, test_csv)
        return folder, files, tensor, n_train

    def _partition(self, n_train: int, n_total: int, seed: int) -> dict[str, torch.Tensor]:
        validation = self.settings["Validation"]
        learn, valid = split(torch.arange(n_train), [1.0 - validation, validation], self.generator(seed), 1)
        return {"Learn": learn, "Validation": valid, "Test": torch.arange(n_train, n_total)}

    def partition(self, found: tuple[Path, list[Path]], seed: int) -> dict[str, torch.Tensor]:
        _, files, _, n_train = self.catalog()
        return self._partition(n_train, len(files), seed)

    def load(self, seed: int) -> Stimuli:
        folder, files, labels, n_train = self.catalog()
        names = [f"{k:05d}" for k in range(self.nb_classes)]
        return Stimuli(labels, self._partition(n_train, len(files), seed), names, folder, files=files)


CSV_SEPARATORS = re.compile(r"[,;\t ]+")


@dataclass(frozen=True)
class Csv(Database):
    """``CSV_Database``: one stimulus per line of a text file, its values separated by commas, semicolons,
    tabs or spaces, one column holding the label (``LabelColumn``, -1 the last, as N2D2's default).

    A stimulus of ``F`` values is a 1 x 1 x F float32 input (``[sp] SizeX=F``, ``SizeY=1``, ``NbChannels=1``),
    taken as written: no 8-bit scaling applies to it. Labels are numbered in sorted order (numeric order
    when every label is a number; ``label_names`` gives them back). The first ``NbHeaderLines`` lines and
    blank lines are skipped. ``Learn`` / ``Validation`` / ``Test`` are fractions of all the lines (``Test``
    by default what is left), drawn at random with ``RandomPartitioning=1``. A value that is no finite
    number, or a line with another number of columns, is an error naming the line.
    """

    type_name: ClassVar[str] = "CSV_Database"
    default_subdir: ClassVar[str] = ""
    keys: ClassVar[tuple[Key, ...]] = (
        Key("Learn", "float", 1.0, "fraction of the lines for Learn"),
        VALIDATION,
        Key("Test", "float", -1.0, "fraction for Test (default 1 - Learn - Validation)"),
        Key("LabelColumn", "int", -1, "the column of the label (0-based; negative counts from the end)"),
        Key("NbHeaderLines", "int", 0, "lines skipped at the top of the file"),
    )

    @classmethod
    def from_section(cls, section: Section) -> Database:
        if not section.has("DataPath"):
            raise section.error("DataPath", "required key is missing (the CSV file; CSV_Database has no default)")
        return super().from_section(section)

    def validate(self, section: Section) -> None:
        self._check_fractions(section)
        if self.settings["NbHeaderLines"] < 0:
            raise section.error("NbHeaderLines", f"expected 0 or more, found {self.settings['NbHeaderLines']}")

    def required(self, folder: Path) -> list[Path] | None:
        return [folder] if folder.is_file() else None

    def wanted(self) -> str:
        return "a CSV file (one stimulus per line)"

    def how_to_get(self) -> str:
        return "Set DataPath in [database] to the file."

    def read(self) -> tuple[Path, torch.Tensor, torch.Tensor, list[str]]:
        """The file, its (N, 1, 1, F) values, labels and label names."""
        path, _ = self.locate()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the CSV file: {getattr(exc, 'strerror', None) or exc}",
                            Location(str(path))) from None
        column, rows, names = self.settings["LabelColumn"], [], []
        for number, line in enumerate(lines, 1):
            if number <= self.settings["NbHeaderLines"] or not line.strip():
                continue
            fields = CSV_SEPARATORS.split(line.strip())
            where = Location(str(path), number)
            if rows and len(fields) != len(rows[0]) + 1:
                raise DataError(f"{len(fields)} columns, where the lines above have {len(rows[0]) + 1}", where)
            if not -len(fields) <= column < len(fields) or len(fields) < 2:
                raise DataError(f"LabelColumn={column} needs a line of at least 2 columns with that column, "
                                f"found {len(fields)}", where)
            names.append(fields.pop(column))
            try:
                values = [float(v) for v in fields]
            except ValueError:
                bad = next(v for v in fields if not _is_number(v))
                raise DataError(f"{bad!r} is not a number (the label is column {column})", where) from None
            if not all(math.isfinite(v) for v in values):
                raise DataError("a value is not finite (nan or inf)", where)
            rows.append(values)
        if not rows:
            raise DataError("the CSV file holds no stimulus", Location(str(path)))
        numeric = all(_is_number(name) for name in names)
        label_names = sorted(set(names), key=float if numeric else None)
        index = {name: k for k, name in enumerate(label_names)}
        labels = torch.tensor([index[name] for name in names], dtype=torch.int64)
        return path, torch.tensor(rows, dtype=torch.float32)[:, None, None, :], labels, label_names

    def _partition(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        fractions = partition_fractions(self.settings)
        complete = abs(sum(fractions) - 1.0) < 1e-9
        parts = split(torch.arange(n), fractions, self.generator(seed), 2 if complete else None)
        return dict(zip(PARTITIONS, parts))

    def partition(self, found: tuple[Path, list[Path]], seed: int) -> dict[str, torch.Tensor]:
        _, values, _, _ = self.read()
        return self._partition(len(values), seed)

    def load(self, seed: int) -> Stimuli:
        path, values, labels, label_names = self.read()
        return Stimuli(labels, self._partition(len(values), seed), label_names, path, images=values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class NoDatabase(Database):
    """No data set: a ``[database]`` without ``Type`` (N2D2's empty ``Database``, whose classes are the
    lines of ``LabelPath``), or no ``[database]`` at all (N2D2: "Warning: no database specified").

    The network is built, summarized, fused and exported as with a data set; what reads stimuli (learning,
    testing, verifying on the data, ``[sp]_EpochSize``) is refused with a :class:`DataError` saying so.
    """

    type_name: ClassVar[str] = "Database"
    default_subdir: ClassVar[str] = ""
    keys: ClassVar[tuple[Key, ...]] = (Key("LabelPath", "path", "", "class names, one per line (no stimuli)"),)
    absent: bool = False  # no [database] section at all

    @classmethod
    def absent_from(cls, location: Location) -> NoDatabase:
        """The database of an INI without ``[database]``."""
        return cls("", False, location, absent=True)

    def reason(self) -> str:
        if self.absent:
            return "the INI has no [database] section (N2D2: no database specified)"
        return "[database] has no Type (N2D2's empty database)"

    def error(self, message: str) -> DataError:
        return DataError(message, self.location, None if self.absent else self.section_name)

    def locate(self) -> tuple[Path, list[Path]]:
        fix = "add a [database] section with a Type" if self.absent else "give [database] a Type"
        raise self.error(f"no data set: {self.reason()}; learning and testing need one: {fix} "
                         f"({', '.join(DATABASES)})")

    def load(self, seed: int) -> Stimuli:
        self.locate()
        raise AssertionError("unreachable")


# Drivers N2D2 has for what qatrun does not do: refused by name, saying why.
OUT_OF_SCOPE_DATABASES: dict[str, str] = {
    "N_MNIST_Database": "event-based (spiking) data",
    "IMDBWIKI_Database": "face detection and age/gender regression data",
    "KITTI_Database": "object detection data",
    "KITTI_Object_Database": "object detection data",
    "KITTI_Road_Database": "road segmentation data",
    "Cityscapes_Database": "segmentation data",
    "DOTA_Database": "object detection data",
    "FDDB_Database": "face detection data",
    "GTSDB_DIR_Database": "traffic sign detection data",
    "Daimler_Database": "pedestrian detection data",
}
RATE_BASED = "qatrun trains rate-based classifiers"

# Drivers N2D2 has for classification data whose own layouts qatrun does not read: what to convert them to.
UNREAD_DATABASES: dict[str, tuple[str, str]] = {
    "CKP_Database": ("the Cohn-Kanade (CK+) facial expression sequences",
                     "put each labelled image in a sub-folder named after its expression and read the folder "
                     "with Type=DIR_Database"),
    "LITISRouen_Database": ("the LITIS Rouen audio scene spectrograms",
                            "save each spectrogram as an image in a sub-folder named after its scene and read "
                            "the folder with Type=DIR_Database"),
    "Actitracker_Database": ("the Actitracker accelerometer recordings",
                             "write each window of samples as one line of a CSV file, its activity last, and "
                             "read it with Type=CSV_Database"),
}

DATABASES: dict[str, type[Database]] = {
    cls.type_name: cls
    for cls in (MnistIdx, FashionMnistIdx, Cifar10, Cifar100, Ilsvrc2012, Directory, Gtsrb, Caltech101, Caltech256,
                Csv)
}
"""Registry: the ``[database] Type=`` value -> the driver."""


def database_from_section(section: Section) -> Database:
    """Reads ``[database]``; without ``Type``, the empty database (no data set).

    Raises:
        ConfigError: an unknown ``Type`` (listing the valid ones), an out-of-scope one (saying why), or a
            bad key.
    """
    if not section.has(TYPE.name):
        return NoDatabase.from_section(section)
    kind = section.read(TYPE)
    if kind in OUT_OF_SCOPE_DATABASES:
        raise section.error("Type", f"{kind} holds {OUT_OF_SCOPE_DATABASES[kind]}; {RATE_BASED}")
    if kind in UNREAD_DATABASES:
        what, fix = UNREAD_DATABASES[kind]
        raise section.error("Type", f"qatrun does not read {kind} ({what}) in its own layout: {fix}")
    cls = DATABASES.get(kind)
    if cls is None:
        raise section.error("Type", f'unknown database "{kind}"; qatrun implements: {", ".join(DATABASES)}')
    return cls.from_section(section)
