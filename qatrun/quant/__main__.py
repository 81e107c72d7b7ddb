"""``python -m qatrun.quant --build-kernels``: builds the native quantizer kernels into this installation.

``scripts/bootstrap`` runs it once, after installing qatrun, so that no training run builds them
(:mod:`qatrun.quant.kernels`); ``--kernels-dir`` prints the folder of the build.
"""

from __future__ import annotations

import sys

from qatrun.quant.kernels import main

sys.exit(main())
