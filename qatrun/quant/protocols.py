"""What qatrun asks of a quantizer and of a module holding N2D2 quantizer files, as ``typing.Protocol`` s.

A quantization method (:mod:`qatrun.quant.registry`) gives one ``nn.Module`` class per tensor role; the
layers, the prepare pass, the weights folders and the solvers use its instances through these interfaces
only. The classes of :mod:`.sat`, :mod:`.lsq` and :mod:`.minmax` satisfy them structurally (no base class).
All three are ``runtime_checkable``: ``isinstance`` tests that the methods and attributes exist, not their
signatures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol, runtime_checkable

from torch import Tensor

from qatrun.quant.kernels import Kernels


@runtime_checkable
class HoldsN2D2Files(Protocol):
    """State that N2D2 keeps in files of its own beside the weights (the SAT alpha, the LSQ step sizes).

    Quantizers, and the modules holding them (:class:`~qatrun.quant.QuantizedWeightLayer`,
    :class:`~qatrun.quant.QuantizedActivation`), write and read it through these two methods.
    """

    def n2d2_files(self, cell_name: str) -> dict[str, Tensor]:
        """File stem (``<cell>_QAct_SAT_Alpha``) -> its values; empty when nothing is kept."""
        ...

    def load_n2d2_file(self, stem: str, tensor: Tensor) -> None:
        """Takes back one of :meth:`n2d2_files`.

        Raises:
            DataError: a stem that is not this module's, or values of the wrong count.
        """
        ...


@runtime_checkable
class Quantizer(HoldsN2D2Files, Protocol):
    """What every quantizer (an ``nn.Module``) has, whichever tensor it quantizes.

    Attributes:
        PARAMETER_MIN: parameter name -> the lowest value the solver leaves it (LSQ's step size).
        kernels: the training step's kernels.
    """

    PARAMETER_MIN: ClassVar[Mapping[str, float]]
    kernels: Kernels

    def __call__(self, x: Tensor) -> Tensor: ...

    def describe(self) -> str:
        """A short label for the network summary: ``SAT a4``, ``LSQ w8``."""
        ...


@runtime_checkable
class ActivationQuantizer(Quantizer, Protocol):
    """An activation quantizer: ``quantizer(x)`` is the fake-quantized ``x``, same shape.

    Built as ``cls(spec, kernels=...)``.
    """


@runtime_checkable
class WeightQuantizer(Quantizer, Protocol):
    """A layer's weight quantizer: ``quantizer(w)`` is ``Wq``, the fake-quantized weights.

    Built as ``cls(spec, n_out=..., channel_axis=..., kernels=...)``.
    """

    @property
    def integer(self) -> bool:
        """True when the layer computes with the integer levels (``QWeight.Mode=Integer``)."""
        ...

    def integer_forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(levels, rescale)`` with ``Wq = levels * rescale`` (rescale 0-dim, or per channel)."""
        ...
