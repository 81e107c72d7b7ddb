"""Weight storage sizes: float32, 8-bit containers, and packed at each layer's own bits.

For every Conv/Fc/Deconv: ``n`` weights (the connected ones of a masked convolution) at 32 bits; in int8
containers (8 bits per quantized weight, 16 beyond 8 bits, 32 for unquantized layers); packed at the
quantizer's bits (``ceil(n bits / 8)`` bytes: 4-bit weights two per byte). Biases and BatchNorm
parameters stay float32 in every format and are counted apart (``other_bytes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from qatrun.quant import QuantizedWeightLayer, bits

WEIGHTED = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


@dataclass(frozen=True)
class LayerSize:
    """One layer's weights: its name, weight count and bits (32 when unquantized)."""

    name: str
    weights: int
    bits: int


@dataclass
class WeightSizes:
    """Sizes in bytes of a network's weights in the three storage formats."""

    layers: list[LayerSize] = field(default_factory=list)
    other_bytes: int = 0

    @property
    def weights(self) -> int:
        """Number of weights."""
        return sum(layer.weights for layer in self.layers)

    @property
    def float32_bytes(self) -> int:
        """Every weight at 32 bits."""
        return 4 * self.weights

    @property
    def int8_bytes(self) -> int:
        """Quantized weights in 8-bit containers (16-bit beyond 8 bits); unquantized ones at 32 bits."""
        return sum(layer.weights * (1 if layer.bits <= 8 else 2 if layer.bits <= 16 else 4) for layer in self.layers)

    @property
    def packed_bytes(self) -> int:
        """Every layer's weights packed at its own bits (4-bit: two per byte)."""
        return sum(math.ceil(layer.weights * layer.bits / 8) for layer in self.layers)

    def as_dict(self) -> dict[str, int]:
        """The totals, for JSON reports."""
        return {"weights": self.weights, "float32_bytes": self.float32_bytes, "int8_bytes": self.int8_bytes,
                "packed_bytes": self.packed_bytes, "other_bytes": self.other_bytes}

    def summary(self) -> str:
        """``weights: 61,470 = 240.1 KiB float32, 60.0 KiB int8, 31.3 KiB packed (+ 1.2 KiB float32 other)``."""
        kib = lambda n: f"{n / 1024:,.1f} KiB"  # noqa: E731
        return (f"weights: {self.weights:,} = {kib(self.float32_bytes)} float32, {kib(self.int8_bytes)} int8, "
                f"{kib(self.packed_bytes)} packed (+ {kib(self.other_bytes)} float32 biases and BatchNorm)")


def weight_bits(module: nn.Module) -> int:
    """Bits of a layer's stored weights: its quantizer's (``ceil(log2(Range + 1))``), 32 if unquantized or
    in the SAT clamp phase."""
    if not isinstance(module, QuantizedWeightLayer):
        return 32
    spec = module.weight_quantizer.spec  # type: ignore[attr-defined]
    return bits(spec) if getattr(spec, "apply_quantization", True) else 32


def weight_sizes(gm: nn.Module) -> WeightSizes:
    """The weight sizes of every Conv/Fc/Deconv of a network (quantized or float)."""
    sizes = WeightSizes()
    for name, module in gm.named_modules():
        if isinstance(module, WEIGHTED):
            mask = getattr(module, "mask", None)
            count = int(mask.sum()) if mask is not None else module.weight.numel()
            sizes.layers.append(LayerSize(name, count, weight_bits(module)))
            if module.bias is not None:
                sizes.other_bytes += 4 * module.bias.numel()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            sizes.other_bytes += 4 * 4 * module.num_features  # scale, bias, mean, variance
    return sizes
