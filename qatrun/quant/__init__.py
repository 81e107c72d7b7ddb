"""Quantization-aware training: quantizer math, quantizer modules, INI plans and the prepare pass.

Typical use (``qatrun.load`` does this)::

    from qatrun import quant

    kernels = quant.select_kernels("auto", device)     # once per run; kernels.describe() for the record
    plans = {module_name(s): plan for s in layers if (plan := quant.plan_for(s, doc.params(s)))}
    gm = quant.prepare(gm, plans, act_names=qatrun.network.activation_names(gm), kernels=kernels)
    quant.describe(gm.conv1)                           # "SAT w8"

or, on a network of one's own, one module at a time::

    quant.quantize_module(model, "features.0", quant.SATWeightSpec(range=15), kernels)
    quant.quantize_module(model, "features.1", quant.SATActSpec(range=15), kernels)   # wraps the ReLU

Methods (``QWeight=``/``QAct=``): SAT (:mod:`.sat`), LSQ (:mod:`.lsq`), MinMax (:mod:`.minmax`); the
interfaces they satisfy: :mod:`.protocols`.
"""

from __future__ import annotations

from qatrun.quant.config import QuantPlan, SolverPlan, plan_for
from qatrun.quant.kernels import Kernels, select_kernels
from qatrun.quant.lsq import LSQActivationQuantizer, LSQActSpec, LSQWeightQuantizer, LSQWeightSpec
from qatrun.quant.minmax import MinMaxActivationQuantizer, MinMaxActSpec, MinMaxWeightQuantizer, MinMaxWeightSpec
from qatrun.quant.modules import (
    QuantConv2d,
    QuantConvTranspose2d,
    QuantizedActivation,
    QuantizedWeightLayer,
    QuantLinear,
)
from qatrun.quant.prepare import describe, prepare, quantize_module, unprepare
from qatrun.quant.protocols import ActivationQuantizer, HoldsN2D2Files, Quantizer, WeightQuantizer
from qatrun.quant.registry import METHODS, Method, build_act_quantizer, build_weight_quantizer, method
from qatrun.quant.sat import SATActivationQuantizer, SATActSpec, SATWeightQuantizer, SATWeightSpec
from qatrun.quant.spec import QuantSpec, bits

__all__ = [
    "ActivationQuantizer",
    "HoldsN2D2Files",
    "Kernels",
    "LSQActSpec",
    "LSQActivationQuantizer",
    "LSQWeightQuantizer",
    "LSQWeightSpec",
    "METHODS",
    "Method",
    "MinMaxActSpec",
    "MinMaxActivationQuantizer",
    "MinMaxWeightQuantizer",
    "MinMaxWeightSpec",
    "QuantConv2d",
    "QuantConvTranspose2d",
    "QuantLinear",
    "QuantPlan",
    "Quantizer",
    "QuantSpec",
    "QuantizedActivation",
    "QuantizedWeightLayer",
    "SATActSpec",
    "SATActivationQuantizer",
    "SATWeightQuantizer",
    "SATWeightSpec",
    "SolverPlan",
    "WeightQuantizer",
    "bits",
    "build_act_quantizer",
    "build_weight_quantizer",
    "describe",
    "method",
    "plan_for",
    "prepare",
    "quantize_module",
    "select_kernels",
    "unprepare",
]
