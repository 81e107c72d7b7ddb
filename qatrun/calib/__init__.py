"""Post-training calibration (N2D2's ``-calib``): activation histograms, clipping thresholds, a float network
quantized from them, and QAT quantizers started from them.

    from qatrun import calib

    options = calib.CalibOptions(bits=8, act_clipping="MSE")
    result = calib.calibrate_float(gm, lambda: batches, options)     # gm now holds MinMax quantizers
    print(result.table())
    calib.save(result, "calibration")                                  # -calib-reload reads it back

:mod:`.histogram` has the threshold searches, :mod:`.calibrate` the passes over the network, :mod:`.store`
the files.
"""

from __future__ import annotations

from qatrun.calib.calibrate import (
    Calibration,
    CalibOptions,
    Point,
    calibrate_float,
    fold_batchnorm_in_place,
    initialize,
    parameters_digest,
)
from qatrun.calib.histogram import CLIPPING_MODES, WEIGHT_CLIPPING_MODES, Histogram, threshold
from qatrun.calib.store import FOLDER, load, save

__all__ = [
    "CLIPPING_MODES",
    "FOLDER",
    "Calibration",
    "CalibOptions",
    "Histogram",
    "Point",
    "WEIGHT_CLIPPING_MODES",
    "calibrate_float",
    "fold_batchnorm_in_place",
    "initialize",
    "load",
    "parameters_digest",
    "save",
    "threshold",
]
