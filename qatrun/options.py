"""The names qatrun offers as choices, in one place: the command's options, the API's arguments and the
packages that act on them all read these tuples (standard library only, so that ``qatrun -h`` answers
without loading torch).
"""

from __future__ import annotations

RESCALING_MODES = ("Floating-point", "Fixed-point16", "Fixed-point32", "Single-shift", "Double-shift",
                   "Floating-point32")
"""``-act-rescaling-mode``: how the integer network rescales an accumulator (:mod:`qatrun.fuse.scaling`).
``Floating-point32`` is onnxruntime's QLinearConv arithmetic, for a fast integer-only ONNX file."""

ROUND_MODES = ("NONE", "RINTF")
"""``-wt-round-mode``, ``-b-round-mode``, ``-c-round-mode`` of N2D2's fusion (``-fuse-flavour n2d2``)."""

FUSE_FLAVOURS = ("exact", "n2d2")
"""``-fuse-flavour``: exact (the integer network computes what was trained) or N2D2's own conversion."""

EXPORT_KINDS = ("onnx", "onnx-qdq", "onnx-int", "c")
"""``-export``: the float network, the fake-quantized network as QDQ, the integer-only network, and that
network as C99 for microcontrollers (:mod:`qatrun.export.c`)."""

METRICS = (
    "Sensitivity", "Specificity", "Precision", "NegativePredictiveValue", "MissRate", "FallOut",
    "FalseDiscoveryRate", "FalseOmissionRate", "IU", "Accuracy", "F1Score", "Informedness", "Markedness",
)
"""``-valid-metric``: the per-class scores of N2D2's confusion matrix (:mod:`qatrun.train.metrics`)."""

CLIPPING_MODES = ("None", "MSE", "KL-Divergence", "Quantile")
"""``-act-clipping-mode``: how calibration clips an activation (:mod:`qatrun.calib.histogram`)."""

WEIGHT_CLIPPING_MODES = ("None", "MSE", "KL-Divergence")
"""``-wt-clipping-mode``: how calibration clips a layer's weights."""

KERNEL_MODES = ("auto", "compiled", "eager")
"""``-kernels`` / ``QATRUN_KERNELS``: the quantizers' training-step kernels (:mod:`qatrun.quant.kernels`)."""

OUT_OF_SCOPE_OPTIONS = {
    "-learn-stdp": "N2D2's STDP learning of spiking networks",
    "-present-time": "a setting of N2D2's spiking simulation",
    "-ts": "a setting of N2D2's spiking simulation",
}
"""N2D2 options for what qatrun does not do: refused by name, saying why (qatrun trains rate-based
classifiers)."""

PHASES = ("clamp", "float", "quantize")
"""The phases of a recipe (``-recipe-phase``, :mod:`qatrun.recipe`)."""
