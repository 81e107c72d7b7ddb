"""``<sp>.StimuliData*`` sections: statistics of the stimuli at that point of the transformation chain.

N2D2's ``StimuliData`` (reference/n2d2.md sections 1.7, 1.8) reads the stimuli of the partitions named
by ``ApplyTo`` (default ``LearnOnly``) through the transformations written before the section, and
publishes, for later references:

* ``_GlobalValue.minVal``, ``.maxVal``, ``.mean``, ``.stdDev``: over every value of every stimulus (8-bit
  data as 0..255; the standard deviation of the population);
* ``_MinSize.dimX`` / ``.dimY`` / ``.dimZ``, ``_MaxSize.*``, ``_MeanSize.*``: width, height and channels.

Keys (each 0 by default): ``LogSizeRange`` counts the stimuli of each size, ``LogValueRange`` counts the
values (one bin per 8-bit value, else 100 bins over [min, max]), ``MeanData`` and ``StdDevData`` compute
the mean and the standard deviation image, pixel by pixel, over the stimuli (they must share one size).
N2D2 writes the two images as ``<section>/meanData.bin`` and ``<section>/stdDevData.bin``; an
``AffineTransformation`` later in the file may subtract or divide by them under those names, and qatrun
hands it the images it computed (nothing is written when the data are opened: :meth:`Statistics.write`
writes the files N2D2 writes).

The ``.bin`` files use N2D2's ``BinaryCvMat`` layout: rows, columns and the OpenCV type as int32, then
the values row by row, channels interleaved (float64 here, type ``CV_64FC(c)``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qatrun.data.formats import write_binary_mat
from qatrun.data.transforms import APPLY_TO_CHOICES
from qatrun.errors import DataError, Location
from qatrun.ini import Key, Section

APPLY_TO = Key("ApplyTo", "enum", "LearnOnly", "partitions whose stimuli are measured", APPLY_TO_CHOICES)
LOG_SIZE_RANGE = Key("LogSizeRange", "bool", False, "count the stimuli of each size (sizeRange.dat)")
LOG_VALUE_RANGE = Key("LogValueRange", "bool", False, "histogram of the values (valueRange.dat)")
MEAN_DATA = Key("MeanData", "bool", False, "the mean image over the stimuli (meanData.bin)")
STD_DEV_DATA = Key("StdDevData", "bool", False, "the standard deviation image over the stimuli (stdDevData.bin)")
KEYS = (APPLY_TO, LOG_SIZE_RANGE, LOG_VALUE_RANGE, MEAN_DATA, STD_DEV_DATA)

GLOBAL_VALUE = ("_GlobalValue.minVal", "_GlobalValue.maxVal", "_GlobalValue.mean", "_GlobalValue.stdDev")
SIZES = tuple(f"_{which}Size.{dim}" for which in ("Min", "Max", "Mean") for dim in ("dimX", "dimY", "dimZ"))
MEAN_FILE, STD_DEV_FILE = "meanData.bin", "stdDevData.bin"
FLOAT_BINS = 100


@dataclass(frozen=True)
class StimuliData:
    """The keys of one ``<sp>.StimuliData*`` section.

    Attributes:
        name: the section name (N2D2's output folder).
        apply_to: the partitions measured (``ApplyTo``).
        log_size_range, log_value_range, mean_data, std_dev_data: the optional outputs.
    """

    name: str
    apply_to: str = "LearnOnly"
    log_size_range: bool = False
    log_value_range: bool = False
    mean_data: bool = False
    std_dev_data: bool = False

    @classmethod
    def from_section(cls, section: Section) -> StimuliData:
        """Reads every key (a key N2D2's ``StimuliData`` lacks is left for strict mode)."""
        return cls(section.name, *(section.read(key) for key in KEYS))

    def files(self) -> dict[str, str]:
        """The images it makes, by the relative path N2D2 writes them to (``<section>/meanData.bin``)."""
        made = {MEAN_FILE: self.mean_data, STD_DEV_FILE: self.std_dev_data}
        return {f"{self.name}/{name}": name for name, wanted in made.items() if wanted}


@dataclass
class Statistics:
    """What one ``StimuliData`` section measured.

    Attributes:
        spec: its keys.
        count: stimuli measured.
        min_value, max_value, mean, std_dev: over every value.
        sizes: ``(width, height, channels)`` -> number of stimuli of that size.
        histogram: ``(bin lower edges, counts)`` with ``LogValueRange``, else None.
        mean_image, std_dev_image: (C, H, W) float64 with ``MeanData`` / ``StdDevData``, else None.
    """

    spec: StimuliData
    count: int
    min_value: float
    max_value: float
    mean: float
    std_dev: float
    sizes: Counter[tuple[int, int, int]] = field(default_factory=Counter)
    histogram: tuple[torch.Tensor, torch.Tensor] | None = None
    mean_image: torch.Tensor | None = None
    std_dev_image: torch.Tensor | None = None

    def properties(self) -> dict[str, float]:
        """The injected properties, by key (``_GlobalValue.mean`` ...)."""
        dims = list(zip(*[(w, h, c) for (w, h, c), n in self.sizes.items()]))
        total = sum(self.sizes.values())
        mean_size = [sum(d * n for d, n in zip(dim, self.sizes.values())) / total for dim in dims]
        values = [self.min_value, self.max_value, self.mean, self.std_dev]
        values += [min(dim) for dim in dims] + [max(dim) for dim in dims] + mean_size
        return dict(zip(GLOBAL_VALUE + SIZES, values))

    def images(self) -> dict[str, torch.Tensor]:
        """The mean / standard deviation images by the path N2D2 writes them to."""
        found = {MEAN_FILE: self.mean_image, STD_DEV_FILE: self.std_dev_image}
        return {f"{self.spec.name}/{name}": image for name, image in found.items() if image is not None}

    def write(self, folder: Path) -> list[Path]:
        """Writes N2D2's files of this section into ``folder/<section>/`` (none without a log or an image
        asked for); returns them."""
        out = folder / self.spec.name
        if not (self.images() or self.spec.log_size_range or self.histogram is not None):
            return []
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for relative, image in self.images().items():
            written.append(folder / relative)
            write_binary_mat(written[-1], image)
        if self.spec.log_size_range:
            written.append(out / "sizeRange.dat")
            rows = sorted(self.sizes.items())
            written[-1].write_text("".join(f"{w} {h} {c} {n}\n" for (w, h, c), n in rows))
        if self.histogram is not None:
            written.append(out / "valueRange.dat")
            edges, counts = self.histogram
            written[-1].write_text("".join(f"{float(e)!r} {int(n)}\n" for e, n in zip(edges, counts)))
        return written


class Accumulator:
    """Sums over batches of stimuli (N, C, H, W), one pass; a second pass fills a float histogram."""

    def __init__(self, spec: StimuliData) -> None:
        self.spec = spec
        self.count = 0
        self.values = 0
        self.total = 0.0
        self.squares = 0.0
        self.low, self.high = float("inf"), float("-inf")
        self.sizes: Counter[tuple[int, int, int]] = Counter()
        self.byte_counts: torch.Tensor | None = torch.zeros(256, dtype=torch.int64)
        self.pixel_sum: torch.Tensor | None = None
        self.pixel_squares: torch.Tensor | None = None
        self.float_counts = torch.zeros(FLOAT_BINS, dtype=torch.int64)

    def add(self, x: torch.Tensor, where: Location, section: str) -> None:
        """Adds a batch."""
        n, c, h, w = x.shape
        values = x.double()
        self.count += n
        self.values += values.numel()
        self.total += float(values.sum())
        self.squares += float(values.square().sum())
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        self.sizes[(w, h, c)] += n
        if x.dtype != torch.uint8:
            self.byte_counts = None
        elif self.byte_counts is not None and self.spec.log_value_range:
            self.byte_counts += torch.bincount(x.flatten().long(), minlength=256)
        if self.spec.mean_data or self.spec.std_dev_data:
            if self.pixel_sum is None:
                self.pixel_sum = torch.zeros((c, h, w), dtype=torch.float64)
                self.pixel_squares = torch.zeros((c, h, w), dtype=torch.float64)
            if tuple(self.pixel_sum.shape) != (c, h, w):
                size = "x".join(map(str, self.pixel_sum.shape))
                raise DataError(f"MeanData / StdDevData need stimuli of one size: found {size} and {c}x{h}x{w} "
                                "(add a RescaleTransformation before this section)", where, section)
            self.pixel_sum += values.sum(dim=0)
            self.pixel_squares += values.square().sum(dim=0)  # type: ignore[operator]

    def add_histogram(self, x: torch.Tensor) -> None:
        """Second pass (float data with ``LogValueRange``): 100 bins over [min, max]."""
        span = self.high - self.low
        index = ((x.double().flatten() - self.low) / (span if span > 0 else 1.0) * FLOAT_BINS).long()
        self.float_counts += torch.bincount(index.clamp(0, FLOAT_BINS - 1), minlength=FLOAT_BINS)

    @property
    def needs_second_pass(self) -> bool:
        return self.spec.log_value_range and self.byte_counts is None

    def result(self, where: Location, section: str) -> Statistics:
        """The statistics.

        Raises:
            DataError: no stimulus was measured.
        """
        if self.count == 0:
            raise DataError(f"no stimulus in the {self.spec.apply_to} partitions: no statistics to compute",
                            where, section)
        mean = self.total / self.values
        std = max(0.0, self.squares / self.values - mean * mean) ** 0.5
        stats = Statistics(self.spec, self.count, self.low, self.high, mean, std, self.sizes)
        if self.spec.log_value_range:
            if self.byte_counts is not None:
                stats.histogram = (torch.arange(256, dtype=torch.float64), self.byte_counts)
            else:
                step = (self.high - self.low) / FLOAT_BINS
                stats.histogram = (self.low + step * torch.arange(FLOAT_BINS, dtype=torch.float64), self.float_counts)
        if self.pixel_sum is not None:
            mean_image = self.pixel_sum / self.count
            if self.spec.mean_data:
                stats.mean_image = mean_image
            if self.spec.std_dev_data:
                variance = self.pixel_squares / self.count - mean_image.square()  # type: ignore[operator]
                stats.std_dev_image = variance.clamp(min=0.0).sqrt()
        return stats
