"""What every quantizer setting has in common: the ``Range`` key, validation, bit widths.

A quantizer *spec* is a frozen dataclass holding the settings of one quantizer of one tensor role
(weights ``w`` or activations ``a``), read from ``QWeight.*`` or ``QAct.*`` keys. Each spec class lists
its keys in ``KEYS`` as ``(field, Key)`` pairs, with the key's suffix as name (``Range``, not
``QWeight.Range``): the config reader prefixes them. ``__post_init__`` validates and raises a
:class:`ConfigError` whose ``key`` is the offending suffix, which the reader turns into a located error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qatrun.errors import ConfigError
from qatrun.ini import Key

RANGE = Key("Range", "int", 255, "number of quantization steps (levels - 1): 1 binary, 15 4-bit, 255 8-bit")


@dataclass(frozen=True)
class QuantSpec:
    """Settings shared by every quantizer.

    Attributes:
        range: number of quantization steps (levels - 1), at least 1.
    """

    range: int = 255

    METHOD: ClassVar[str] = ""
    ROLE: ClassVar[str] = ""  # "w" (weights) or "a" (activations)
    KEYS: ClassVar[tuple[tuple[str, Key], ...]] = (("range", RANGE),)
    MIN_RANGE: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.range < self.MIN_RANGE:
            raise ConfigError(
                f"{self.METHOD} {self.role_name} need Range >= {self.MIN_RANGE}, found {self.range}", key="Range"
            )

    @classmethod
    def convert(cls, field: str, value: Any) -> Any:
        """Turns the value read for ``field`` into the field's value (identity unless a spec overrides it)."""
        return value

    @property
    def role_name(self) -> str:
        """``weights`` or ``activations``, for messages."""
        return "weights" if self.ROLE == "w" else "activations"


def bits(spec: QuantSpec | int) -> int:
    """Bits needed for the levels of a quantizer: ``ceil(log2(Range + 1))``.

    Args:
        spec: a quantizer spec, or a ``Range`` value.

    Returns:
        8 for Range 255, 4 for 15, 1 for 1.
    """
    steps = spec if isinstance(spec, int) else spec.range
    assert steps >= 1, steps
    # For R >= 1, R.bit_length() = floor(log2 R) + 1 = ceil(log2(R + 1)), without float logarithms.
    return steps.bit_length()
