"""The prepare pass: swap a float network's layers for quantized ones, by module name.

:func:`quantize_module` quantizes one named module of any ``nn.Module`` tree with one quantizer spec: a
weight spec (``ROLE == "w"``) replaces the ``nn.Conv2d`` (or masked subclass), ``nn.Linear`` or
``nn.ConvTranspose2d`` of that name by its quantized counterpart; an activation spec (``ROLE == "a"``)
wraps the module of that name, whatever it computes (a ReLU, an ``nn.Identity``, a residual sum), in
:class:`QuantizedActivation`, which quantizes its output.

:func:`prepare` does it for the plans of an INI network: each plan's weight quantizer goes on the module
of the plan's name, its activation quantizer on the module the caller names in ``act_names`` (the
network builder's ``<name>_act``). A ``torch.fx.GraphModule`` keeps its graph: its ``call_module`` nodes
find the new modules under the old names. :func:`unprepare` swaps back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from torch import nn

from qatrun.errors import ConfigError, Location
from qatrun.quant.config import QuantPlan
from qatrun.quant.kernels import EAGER, Kernels, select_kernels
from qatrun.quant.modules import QUANTIZED_LAYERS, QuantizedActivation, QuantizedWeightLayer, weight_layout
from qatrun.quant.registry import build_act_quantizer, build_weight_quantizer
from qatrun.quant.spec import QuantSpec

Q = TypeVar("Q")


def _find(root: nn.Module, name: str, what: str, location: Location | None, section: str | None) -> nn.Module:
    try:
        if name:  # "" is the root itself, which no swap can replace
            return root.get_submodule(name)
    except AttributeError:
        pass
    raise ConfigError(f"{what}: the network has no module {name!r}", location, section)


def _placed(quantizer: Q, like: nn.Module, reference: nn.Module) -> Q:
    """``quantizer`` with the parameters' device and dtype of ``reference``, in the train/eval mode of ``like``."""
    assert isinstance(quantizer, nn.Module), type(quantizer)
    # An activation has no parameter itself: the quantizer's parameter and buffers follow the network's.
    parameter = next((p for p in reference.parameters() if p.is_floating_point()), None)
    if parameter is not None:
        quantizer.to(device=parameter.device, dtype=parameter.dtype)
    quantizer.train(like.training)
    return quantizer


def quantize_module(
    root: nn.Module,
    name: str,
    spec: QuantSpec,
    kernels: Kernels = EAGER,
    *,
    location: Location | None = None,
    section: str | None = None,
) -> nn.Module:
    """Quantizes the module ``name`` of ``root`` with ``spec``, in place.

    Args:
        root: the network (any module tree; names as ``root.get_submodule`` reads them, dots included).
        name: the module to quantize.
        spec: a weight spec (the module must be a Conv, Linear or ConvTranspose layer, swapped for its
            quantized version) or an activation spec (the module, any kind, is wrapped in
            :class:`QuantizedActivation`).
        kernels: the training step's kernels (:func:`qatrun.quant.select_kernels`).
        location: where the spec was written, for the errors.
        section: the INI section it comes from, for the errors.

    Returns:
        The new module, now at ``name``.

    Raises:
        ConfigError: no such module, a module already quantized, a layer without weights to quantize.
    """
    key = "QWeight" if spec.ROLE == "w" else "QAct"
    module = _find(root, name, key, location, section)
    if isinstance(module, (QuantizedWeightLayer, QuantizedActivation)):
        raise ConfigError(f"module {name!r} is already quantized", location, section, key)
    new: nn.Module
    if spec.ROLE == "a":
        quantizer = _placed(build_act_quantizer(spec, kernels=kernels), module, root)
        new = QuantizedActivation.from_float(module, quantizer)
    else:
        quantized_type = next((q for f, q in QUANTIZED_LAYERS.items() if isinstance(module, f)), None)
        if quantized_type is None:
            raise ConfigError(
                f"only Conv, Fc and Deconv layers have weights to quantize; {name!r} is a {type(module).__name__}",
                location, section, key,
            )
        n_out, channel_axis = weight_layout(module)
        if channel_axis != 0 and getattr(module, "groups", 1) != 1 and getattr(spec, "per_channel", False):
            raise ConfigError("PerChannel=1 is not supported on grouped Deconv layers", location, section)
        built = build_weight_quantizer(spec, n_out=n_out, channel_axis=channel_axis, kernels=kernels)
        weights = _placed(built, module, module)
        new = quantized_type.from_float(module, weights)
    root.set_submodule(name, new)
    return new


def prepare(
    gm: nn.Module,
    plans: Mapping[str, QuantPlan],
    act_names: Mapping[str, str],
    kernels: Kernels | None = None,
) -> nn.Module:
    """Swaps layers and activations for quantized versions, in place.

    Args:
        gm: the float network (a ``torch.fx.GraphModule``), free of quantization.
        plans: module name -> plan (from :func:`qatrun.quant.plan_for`); the plan's weight quantizer goes
            on that module.
        act_names: plan name -> the module whose output the plan's activation quantizer quantizes (for an
            INI network, ``qatrun.network.activation_names``); needed for every plan with an activation
            quantizer.
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
            quantize_module(gm, name, plan.weight, kernels, location=plan.location, section=plan.section)
        if plan.act is not None:
            act_name = act_names.get(name)
            if act_name is None:
                raise ConfigError(f"QAct: no activation module named for {name!r}", plan.location, plan.section)
            quantize_module(gm, act_name, plan.act, kernels, location=plan.location, section=plan.section)
    return gm


def unprepare(gm: nn.Module) -> nn.Module:
    """Swaps every quantized module back to its float original, in place (the inverse of :func:`prepare`)."""
    swaps = [
        (name, module)
        for name, module in gm.named_modules()
        if isinstance(module, (QuantizedWeightLayer, QuantizedActivation))
    ]
    for name, module in swaps:
        gm.set_submodule(name, module.to_float())
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
