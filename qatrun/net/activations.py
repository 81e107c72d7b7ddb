"""Activation functions (``ActivationFunction=`` and ``ActivationFunction.X``): reference/n2d2.md section 2.5.

Design note. The formulas, with N2D2's parameter defaults:

    Linear          y = x, or clamp(x, -Clipping, Clipping) when Clipping != 0           (Clipping 0)
    Rectifier       y = x if x > 0 else LeakSlope·x, then min(y, Clipping) if Clipping > 0 (0, 0)
    Logistic        y = 1 / (1 + exp(-x))
    LogisticWithLoss  the same forward, identity backward (see layers.py)
    Saturation      y = clamp(x, -Threshold, Threshold)                                   (Threshold 1)
    Softplus        y = log(1 + exp(x))
    Swish           y = x · sigmoid(x)
    Tanh            y = tanh(Alpha·x)                                                      (Alpha 1)
    TanhLeCun       y = 1.7159 · tanh(2x/3)       (LeCun et al. 1998, "Efficient BackProp")

An ``ActivationFunction.X`` that the chosen function does not take is an error, as in N2D2 (``Unknown
parameter``). Where a torch module computes the same function it is used (``nn.ReLU``, ``nn.Hardtanh``...),
so graph passes recognise the usual patterns; ``Linear`` without clipping is ``nn.Identity``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from qatrun.ini import Key
from qatrun.net import layers

if TYPE_CHECKING:
    from qatrun.ini import Section

ACTIVATION = "ActivationFunction"

FUNCTIONS: dict[str, tuple[str, ...]] = {
    "Linear": ("Clipping",),
    "Rectifier": ("LeakSlope", "Clipping"),
    "Logistic": (),
    "LogisticWithLoss": (),
    "Saturation": ("Threshold",),
    "Softplus": (),
    "Swish": (),
    "Tanh": ("Alpha",),
    "TanhLeCun": (),
}

ACTIVATION_KEYS: dict[str, Key] = {
    key.name: key
    for key in (
        Key(ACTIVATION, "enum", "Linear", "the activation applied to the cell's output", tuple(FUNCTIONS)),
        Key(f"{ACTIVATION}.Clipping", "float", 0.0, "Linear: symmetric clamp; Rectifier: upper clip (0 = none)"),
        Key(f"{ACTIVATION}.LeakSlope", "float", 0.0, "Rectifier: slope for negative inputs"),
        Key(f"{ACTIVATION}.Threshold", "float", 1.0, "Saturation: clamp to [-Threshold, Threshold]"),
        Key(f"{ACTIVATION}.Alpha", "float", 1.0, "Tanh: y = tanh(Alpha x)"),
    )
}

LECUN_SCALE = 1.7159
LECUN_ALPHA = 2.0 / 3.0


def make_activation(name: str, params: dict[str, float]) -> nn.Module:
    """The module computing an activation function.

    Args:
        name: one of ``FUNCTIONS``.
        params: parameter name (without prefix) -> value, every parameter of the function present.
    """
    if name == "Linear":
        clip = params["Clipping"]
        return nn.Hardtanh(-abs(clip), abs(clip)) if clip != 0 else nn.Identity()
    if name == "Rectifier":
        leak, clip = params["LeakSlope"], params["Clipping"]
        if leak == 0 and clip <= 0:
            return nn.ReLU()
        if leak == 0:
            return nn.Hardtanh(0.0, clip)
        if clip <= 0:
            return nn.LeakyReLU(leak)
        return layers.Rectifier(leak, clip)
    if name == "Logistic":
        return nn.Sigmoid()
    if name == "LogisticWithLoss":
        return layers.LogisticWithLoss()
    if name == "Saturation":
        return nn.Hardtanh(-params["Threshold"], params["Threshold"])
    if name == "Softplus":
        return nn.Softplus()
    if name == "Swish":
        return nn.SiLU()
    if name == "Tanh":
        return nn.Tanh() if params["Alpha"] == 1.0 else layers.ScaledTanh(params["Alpha"])
    if name == "TanhLeCun":
        return layers.ScaledTanh(LECUN_ALPHA, LECUN_SCALE)
    raise AssertionError(name)


def read_activation(section: Section, default: str | None) -> tuple[str, nn.Module] | None:
    """Reads ``ActivationFunction=`` and its parameters from a layer section.

    Args:
        section: the layer section.
        default: the function when the key is absent (``Tanh`` for an Activation cell), or None for none.

    Returns:
        (function name, module), or None when the section has no activation.

    Raises:
        ConfigError: a parameter the function does not take, or parameters without a function.
    """
    given = [name for name in section.keys() if name.startswith(ACTIVATION + ".")]
    if section.has(ACTIVATION):
        name = section.read(ACTIVATION_KEYS[ACTIVATION])
    elif default is not None:
        name = default
    elif given:
        raise section.error(given[0], f"{given[0]} is given but the section has no {ACTIVATION}=")
    else:
        return None
    allowed = FUNCTIONS[name]
    for key in given:
        param = key[len(ACTIVATION) + 1 :]
        if param not in allowed:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameter"
            raise section.error(key, f"Unknown parameter: {key} ({name} {takes})")
    params = {param: section.read(ACTIVATION_KEYS[f"{ACTIVATION}.{param}"]) for param in allowed}
    return name, make_activation(name, params)
