"""The prepare pass: swap a float network's layers for quantized ones, by module name.

``prepare(gm, plans)`` takes the float ``torch.fx.GraphModule`` (or any module tree) and a map from
module name to :class:`QuantPlan`. For a plan with weights it replaces the ``nn.Conv2d`` (or masked
subclass), ``nn.Linear`` or ``nn.ConvTranspose2d`` of that name by its quantized counterpart; for a plan
with activations it wraps the module ``<name>_act`` (the activation the network builder places after a
layer whose section has ``ActivationFunction=``) in :class:`QuantizedActivation`. The graph itself is
unchanged: its ``call_module`` nodes find the new modules under the old names. ``unprepare`` swaps back.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from qatrun.errors import ConfigError
from qatrun.quant.config import QuantPlan
from qatrun.quant.kernels import Kernels, select_kernels
from qatrun.quant.modules import QUANTIZED_LAYERS, QuantizedActivation, QuantizedWeightLayer, weight_layout
from qatrun.quant.registry import build_act_quantizer, build_weight_quantizer

ACT_SUFFIX = "_act"


def activation_module_name(module_name: str) -> str:
    """The name of the activation module that follows layer ``module_name``."""
    return module_name + ACT_SUFFIX


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _find(root: nn.Module, name: str, plan: QuantPlan, what: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"{what}: the network has no module {name!r}", plan.location, plan.section) from None


def _quantize_weights(root: nn.Module, name: str, plan: QuantPlan, kernels: Kernels) -> None:
    assert plan.weight is not None
    module = _find(root, name, plan, "QWeight")
    if isinstance(module, QuantizedWeightLayer):
        raise ConfigError(f"module {name!r} is already quantized", plan.location, plan.section, "QWeight")
    for float_type, quantized_type in QUANTIZED_LAYERS.items():
        if isinstance(module, float_type):
            break
    else:
        raise ConfigError(
            f"only Conv, Fc and Deconv layers have weights to quantize; {name!r} is a {type(module).__name__}",
            plan.location, plan.section, "QWeight",
        )
    n_out, channel_axis = weight_layout(module)
    groups = getattr(module, "groups", 1)
    if channel_axis != 0 and groups != 1 and getattr(plan.weight, "per_channel", False):
        raise ConfigError("PerChannel=1 is not supported on grouped Deconv layers", plan.location, plan.section)
    quantizer = build_weight_quantizer(plan.weight, n_out=n_out, channel_axis=channel_axis, kernels=kernels)
    quantizer.to(device=module.weight.device, dtype=module.weight.dtype)
    quantizer.train(module.training)
    _replace(root, name, quantized_type.from_float(module, quantizer))


def _quantize_activation(root: nn.Module, name: str, plan: QuantPlan, kernels: Kernels) -> None:
    assert plan.act is not None
    act_name = activation_module_name(name)
    act = _find(root, act_name, plan, "QAct")
    if isinstance(act, QuantizedActivation):
        raise ConfigError(f"module {act_name!r} is already quantized", plan.location, plan.section, "QAct")
    quantizer = build_act_quantizer(plan.act, kernels=kernels)
    # The quantizer's parameter and buffers follow the network's (an activation has no parameter itself).
    reference = next((p for p in root.parameters() if p.is_floating_point()), None)
    if reference is not None:
        quantizer.to(device=reference.device, dtype=reference.dtype)
    quantizer.train(act.training)
    _replace(root, act_name, QuantizedActivation.from_float(act, quantizer))


def prepare(gm: nn.Module, plans: Mapping[str, QuantPlan], kernels: Kernels | None = None) -> nn.Module:
    """Swaps layers and activations for quantized versions, in place.

    Args:
        gm: the float network (a ``torch.fx.GraphModule``), free of quantization.
        plans: module name -> plan (from :func:`qatrun.quant.plan_for`).
        kernels: the training step's kernels of every quantizer; None: :func:`select_kernels`, that is
            ``QATRUN_KERNELS`` read once, here (``auto`` when unset).

    Returns:
        ``gm`` itself, now computing with quantized weights and activations.

    Raises:
        ConfigError: a named module is missing or has no weights to quantize.
    """
    kernels = select_kernels() if kernels is None else kernels
    for name, plan in plans.items():
        if plan.weight is not None:
            _quantize_weights(gm, name, plan, kernels)
        if plan.act is not None:
            _quantize_activation(gm, name, plan, kernels)
    return gm


def unprepare(gm: nn.Module) -> nn.Module:
    """Swaps every quantized module back to its float original, in place (the inverse of :func:`prepare`)."""
    swaps = [
        (name, module)
        for name, module in gm.named_modules()
        if isinstance(module, (QuantizedWeightLayer, QuantizedActivation))
    ]
    for name, module in swaps:
        _replace(gm, name, module.to_float())
    return gm


def describe(module: nn.Module) -> str | None:
    """A short label of a module's quantizer for the network summary (``SAT w8``, ``SAT a4``, ``LSQ w4``).

    Returns:
        None for a module without a quantizer.
    """
    if isinstance(module, QuantizedWeightLayer):
        return module.weight_quantizer.describe()
    if isinstance(module, QuantizedActivation):
        return module.quantizer.describe()
    return None
