"""Shared pieces of the end-to-end command tests: a real MNIST subset and a way to run ``qatrun``."""

from __future__ import annotations

from pathlib import Path

import pytest

from qatrun.data.formats import write_mnist_subset

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "qatrun" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Genuine MNIST, cut to its first 6,000 training and 1,000 test images."""
    return write_mnist_subset(SHIPPED, tmp_path_factory.mktemp("mnist-subset"), 6000, 1000)
