"""Quantization-aware training: quantizer math, quantizer modules, INI plans and the prepare pass.

Typical use (the pipeline does this)::

    from qatrun import quant

    plans = {module_name(s): plan for s in layers if (plan := quant.plan_for(s, doc.params(s)))}
    kernels = quant.select_kernels("auto")           # once per run; kernels.describe() for the record
    gm = quant.prepare(gm, plans, kernels=kernels)   # Conv/Linear/activations swapped for quantized modules
    quant.describe(gm.conv1)                         # "SAT w8"

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
from qatrun.quant.prepare import activation_module_name, describe, prepare, unprepare
from qatrun.quant.protocols import ActivationQuantizer, HoldsN2D2Files, WeightQuantizer
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
    "QuantSpec",
    "QuantizedActivation",
    "QuantizedWeightLayer",
    "SATActSpec",
    "SATActivationQuantizer",
    "SATWeightQuantizer",
    "SATWeightSpec",
    "SolverPlan",
    "WeightQuantizer",
    "activation_module_name",
    "bits",
    "build_act_quantizer",
    "build_weight_quantizer",
    "describe",
    "method",
    "plan_for",
    "prepare",
    "select_kernels",
    "unprepare",
]
