"""Settings shared by every test."""

from __future__ import annotations

import os

# The unit tests compare the SAT alpha gradient with plain references at atol 0, which fixes the order of its
# sum: they run the eager quantizer kernels. tests/quant/test_quant_kernels.py and the two-phase CLI run set
# QATRUN_KERNELS themselves to test the compiled ones. Subprocesses inherit the setting.
os.environ["QATRUN_KERNELS"] = "eager"
