"""Settings shared by every test, and the one way to reach data that does not ship with qatrun."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

# The command-line runs (subprocesses, which inherit it) compare rates and files at atol 0, which fixes the
# order of the SAT alpha gradient's sum: they run the eager quantizer kernels unless a test asks otherwise
# (the two-phase CLI run, the README example). In-process tests choose their kernels as values
# (quant.select_kernels), tests/quant/test_quant_kernels.py the fused ones.
os.environ["QATRUN_KERNELS"] = "eager"

# What the suite needs and may ship lies in tests/ (golden/n2d2-lenet-8b: N2D2's numbers) and qatrun/data/mnist.
# The rest (the CIFAR-10 subset, N2D2's own files) is looked for beside the repository, never at a fixed path.
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str, str], Path]:
    """``shared_data(relative, what)`` -> the path of an item that does not ship, or skips the calling test.

    ``relative`` is a path as laid out in shared/: ``data/...`` for data sets, found in the folder
    ``$N2D2_DATA`` names (as the qatrun command finds them) else in ``shared/data``; anything else under
    shared/ (``golden/n2d2-lenet-8b/LeNet-bn-SAT-8b.ini``, N2D2's own file). ``what`` names the item in the
    skip reason: ``CIFAR-10 not found: set N2D2_DATA or put shared/ beside the repository``.
    """

    def find(relative: str, what: str) -> Path:
        first, _, rest = relative.partition("/")
        env = os.environ.get("N2D2_DATA")  # read at each call: tests may set it
        path = Path(env) / rest if first == "data" and env else SHARED / relative
        if not path.exists():
            hint = "set N2D2_DATA or put shared/ beside the repository" if first == "data" else (
                "put shared/ beside the repository")
            pytest.skip(f"{what} not found: {hint}")
        return path

    return find


@pytest.fixture
def cifar10(shared_data: Callable[[str, str], Path]) -> Path:
    """The CIFAR-10 subset's folder (``$N2D2_DATA/cifar10`` or ``shared/data/cifar10``), or skips the test."""
    return shared_data("data/cifar10", "CIFAR-10")
