"""Quantized layers: a float layer's parameters plus a quantizer, swapped in by :func:`qatrun.quant.prepare`.

``QuantConv2d``, ``QuantLinear`` and ``QuantConvTranspose2d`` compute with the weight quantizer's output
``Wq`` instead of the latent weights (biases are not quantized, as in N2D2). They share the float layer's
parameter objects, so the optimizer, the state dict keys (``weight``, ``bias``, ``mask``) and the weights
folders see the same tensors before and after the swap. A convolution with a 0/1 ``mask`` buffer (a
``Mapping`` connectivity) keeps masking: the latent weights are masked before quantization, so the
unconnected entries enter ``max|tanh W|`` and the SAT scale as the zeros N2D2 stores there, and ``Wq`` is
masked again.

With ``QWeight.Mode=Integer`` the layer computes ``y = (x * n) / (D S) + b`` with the integer levels n.

``QuantizedActivation(act, quantizer)`` applies the activation quantizer after the activation function,
where N2D2 applies ``QAct``. Each quantized module has ``from_float`` and ``to_float``; ``to_float``
gives back the original float module (same class, e.g. a masked convolution), holding the current
parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qatrun.quant.protocols import ActivationQuantizer, WeightQuantizer


class QuantizedWeightLayer:
    """What the three quantized layer classes share (a mixin over the torch layer class)."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_quantizer: WeightQuantizer
    training: bool

    @classmethod
    def from_float(cls, module: Any, quantizer: WeightQuantizer) -> nn.Module:
        """Wraps a float layer of this class's kind, parameters shared (each layer class defines it)."""
        raise NotImplementedError

    def _keep_float(self, float_module: nn.Module) -> None:
        # The float module is kept out of the module tree (no state dict entries, no second copy of the
        # parameters): to_float() returns it, re-pointed at the current parameters and buffers.
        object.__setattr__(self, "_float_module", float_module)

    def to_float(self) -> nn.Module:
        """The float module this layer was made from, holding the current parameters and buffers."""
        float_module: nn.Module = self.__dict__["_float_module"]
        for name in list(float_module._parameters):
            setattr(float_module, name, getattr(self, name))
        for name in list(float_module._buffers):
            float_module._buffers[name] = getattr(self, name)
        float_module.train(self.training)
        return float_module

    def latent_weight(self) -> Tensor:
        """The full-precision weights, masked if the layer has a ``mask`` buffer."""
        mask = getattr(self, "mask", None)
        return self.weight if mask is None else self.weight * mask

    def _mask_out(self, w: Tensor) -> Tensor:
        mask = getattr(self, "mask", None)
        return w if mask is None else w * mask

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weights Wq the layer computes with (N2D2's ``<cell>_quant_weights``)."""
        return self._mask_out(self.weight_quantizer(self.latent_weight()))

    def integer_weights(self) -> tuple[Tensor, Tensor]:
        """Integer weight levels (int64) and the float rescale, ``Wq = levels * rescale``.

        The rescale is 0-dim for per-tensor quantizers, per channel (broadcastable) otherwise.
        """
        with torch.no_grad():
            levels, rescale = self.weight_quantizer.integer_forward(self.latent_weight())
        return self._mask_out(levels).to(torch.int64), rescale

    def n2d2_files(self, cell_name: str) -> dict[str, Tensor]:
        """The weight quantizer's N2D2 files (``<cell>_alphaW_LSQ`` for LSQ; none for SAT)."""
        return self.weight_quantizer.n2d2_files(cell_name)

    def load_n2d2_file(self, stem: str, tensor: Tensor) -> None:
        """Gives one of :meth:`n2d2_files` back to the weight quantizer."""
        self.weight_quantizer.load_n2d2_file(stem, tensor)

    def _quantized_forward(self, x: Tensor, compute: Any, channel_dim: int) -> Tensor:
        """``compute(x, weight, bias)`` with Wq, or, in integer mode, with n then ``* rescale + bias``.

        ``channel_dim`` is the output's channel dimension (1 for convolutions, -1 for Linear).
        """
        if not self.weight_quantizer.integer:
            return compute(x, self.quantized_weight(), self.bias)
        levels, rescale = self.weight_quantizer.integer_forward(self.latent_weight())
        y = compute(x, self._mask_out(levels), None) * rescale
        if self.bias is None:
            return y
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        return y + self.bias.reshape(shape)


def _share_parameters(new: nn.Module, old: nn.Module) -> None:
    """Points ``new`` at ``old``'s parameters and buffers (same objects), buffer persistence kept."""
    new.weight = old.weight
    new.bias = old.bias
    for name, buffer in old.named_buffers(recurse=False):
        new.register_buffer(name, buffer, persistent=name not in old._non_persistent_buffers_set)
    new.train(old.training)


class QuantConv2d(QuantizedWeightLayer, nn.Conv2d):
    """``nn.Conv2d`` computing with quantized weights (see :meth:`from_float`)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, quantizer: WeightQuantizer) -> QuantConv2d:
        """Wraps a float convolution (parameters shared, ``mask`` buffer kept).

        Args:
            conv: an ``nn.Conv2d`` or subclass (a masked convolution has a ``mask`` buffer).
            quantizer: the weight quantizer (an ``nn.Module``).
        """
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )
        _share_parameters(new, conv)
        new.weight_quantizer = quantizer
        new._keep_float(conv)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self._quantized_forward(x, self._conv_forward, 1)


class QuantLinear(QuantizedWeightLayer, nn.Linear):
    """``nn.Linear`` computing with quantized weights (see :meth:`from_float`)."""

    @classmethod
    def from_float(cls, linear: nn.Linear, quantizer: WeightQuantizer) -> QuantLinear:
        """Wraps a float linear layer (parameters shared).

        Args:
            linear: an ``nn.Linear``.
            quantizer: the weight quantizer (an ``nn.Module``).
        """
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        _share_parameters(new, linear)
        new.weight_quantizer = quantizer
        new._keep_float(linear)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self._quantized_forward(x, F.linear, -1)


class QuantConvTranspose2d(QuantizedWeightLayer, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` computing with quantized weights (see :meth:`from_float`)."""

    @classmethod
    def from_float(cls, deconv: nn.ConvTranspose2d, quantizer: WeightQuantizer) -> QuantConvTranspose2d:
        """Wraps a float transposed convolution (parameters shared).

        Args:
            deconv: an ``nn.ConvTranspose2d``.
            quantizer: the weight quantizer (an ``nn.Module``).
        """
        new = cls(
            deconv.in_channels, deconv.out_channels, deconv.kernel_size, deconv.stride, deconv.padding,
            deconv.output_padding, deconv.groups, deconv.bias is not None, deconv.dilation, deconv.padding_mode,
            device="meta",
        )
        _share_parameters(new, deconv)
        new.weight_quantizer = quantizer
        new._keep_float(deconv)
        return new

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        output_padding = self._output_padding(
            x, output_size, list(self.stride), list(self.padding), list(self.kernel_size), 2, list(self.dilation)
        )

        def compute(inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
            return F.conv_transpose2d(
                inputs, weight, bias, self.stride, self.padding, output_padding, self.groups, self.dilation
            )

        return self._quantized_forward(x, compute, 1)


QUANTIZED_LAYERS: dict[type[nn.Module], type[QuantizedWeightLayer]] = {
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
    nn.ConvTranspose2d: QuantConvTranspose2d,
}
"""Float layer base class -> its quantized counterpart (matched with ``isinstance``: the three bases are
unrelated, so subclasses such as a masked convolution find their entry)."""


def weight_layout(module: nn.Module) -> tuple[int, int]:
    """``(n_out, channel_axis)`` of a float layer's weights.

    ``n_out`` is N2D2's SAT fan (``C_out kH kW`` for convolutions, ``N_out`` for Fc); ``channel_axis`` the
    weight axis indexing output channels (1 for a transposed convolution, whose weight is
    ``(C_in, C_out/groups, kH, kW)``).
    """
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return module.out_channels * kh * kw, 1
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.out_channels * kh * kw, 0
    assert isinstance(module, nn.Linear), type(module)
    return module.out_features, 0


class QuantizedActivation(nn.Module):
    """An activation function followed by an activation quantizer.

    Args:
        act: the float activation module (``nn.Identity`` for N2D2's ``Linear``), or any module whose
            output is to be quantized.
        quantizer: the activation quantizer (an ``nn.Module``).
    """

    quantizer: ActivationQuantizer

    def __init__(self, act: nn.Module, quantizer: ActivationQuantizer) -> None:
        super().__init__()
        self.act = act
        self.quantizer = quantizer

    @classmethod
    def from_float(cls, act: nn.Module, quantizer: ActivationQuantizer) -> QuantizedActivation:
        """Same as the constructor, the name of the module-swap pair."""
        return cls(act, quantizer)

    def to_float(self) -> nn.Module:
        """The activation function alone."""
        return self.act

    def n2d2_files(self, cell_name: str) -> dict[str, Tensor]:
        """The activation quantizer's N2D2 files (``<cell>_QAct_SAT_Alpha``, ``<cell>_QAct_LSQ_StepSize``)."""
        return self.quantizer.n2d2_files(cell_name)

    def load_n2d2_file(self, stem: str, tensor: Tensor) -> None:
        """Gives one of :meth:`n2d2_files` back to the activation quantizer."""
        self.quantizer.load_n2d2_file(stem, tensor)

    def forward(self, x: Tensor) -> Tensor:
        return self.quantizer(self.act(x))
