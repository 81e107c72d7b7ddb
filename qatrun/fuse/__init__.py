"""fuse: BatchNorm folding, integer-only conversion, rescaling modes, verification, weights_quantized/.

    folded, pairs = fold_batchnorm(gm)                     # -fuse on a float network
    int_gm, report = integerize(gm, FuseOptions())         # -qat-fuse: exact, Floating-point
    result = verify(gm, int_gm, report, batches)           # differing predictions, LSB per layer
    write_weights_quantized("weights_quantized", report)   # N2D2's files + activation_scaling.csv
"""

from qatrun.fuse.fold import FoldedPair, fold_batchnorm, fold_bn_weights, fold_layer_bn
from qatrun.fuse.graph import FusedLayer, FuseReport, integerize
from qatrun.fuse.integerize import FuseOptions
from qatrun.fuse.scaling import mode_bound_lsb
from qatrun.fuse.verify import LayerCheck, VerifyReport, verify
from qatrun.fuse.weights_folder import write_weights_quantized
from qatrun.options import RESCALING_MODES, ROUND_MODES

__all__ = [
    "RESCALING_MODES",
    "ROUND_MODES",
    "FoldedPair",
    "FuseOptions",
    "FuseReport",
    "FusedLayer",
    "LayerCheck",
    "VerifyReport",
    "fold_batchnorm",
    "fold_bn_weights",
    "fold_layer_bn",
    "integerize",
    "mode_bound_lsb",
    "verify",
    "write_weights_quantized",
]
