"""Shared pieces of the end-to-end command tests: a real MNIST subset and a way to run ``qatrun``."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "qatrun" / "data" / "mnist"


def _idx_subset(source: Path, target: Path, count: int) -> None:
    """Writes the first ``count`` items of an IDX file (gzip), keeping its header format."""
    raw = gzip.decompress(source.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    item = 1
    for d in dims[1:]:
        item *= d
    header = raw[:4] + count.to_bytes(4, "big") + raw[8: 4 + 4 * ndim]
    body = raw[4 + 4 * ndim: 4 + 4 * ndim + count * item]
    target.write_bytes(gzip.compress(header + body, mtime=0))


@pytest.fixture(scope="session")
def mnist_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Genuine MNIST, cut to its first 6,000 training and 1,000 test images."""
    folder = tmp_path_factory.mktemp("mnist-subset")
    for name, count in (("train", 6000), ("t10k", 1000)):
        for kind in ("images-idx3", "labels-idx1"):
            stem = f"{name}-{kind}-ubyte.gz"
            _idx_subset(SHIPPED / stem, folder / stem, count)
    return folder
