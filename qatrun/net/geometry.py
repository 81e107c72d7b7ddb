"""Kernel, stride, padding, dilation keys and N2D2's output-size formulas: reference/n2d2.md section 2.1.

Design note. Each 2-D quantity is read by priority: ``XDims`` (space-separated, width first, as N2D2 lists
dimensions x, y) > ``X`` (one value for both axes) > the per-axis keys (``KernelWidth``/``KernelHeight``,
``StrideX``/``StrideY``...). N2D2 silently drops a lower-priority key when a higher one is present; qatrun
says so as an error, since the user meant one of them.

Output sizes, per axis (``src/Cell/ConvCell.cpp``, ``PoolCell.cpp``, ``DeconvCell.cpp``):

    Conv    out = floor((in + 2·pad - (dil·(k - 1) + 1) + stride) / stride), then ceil(out / SubSample)
    Pool    out = floor((in + 2·pad - k + stride) / stride)
    Deconv  out = (in - 1)·stride - 2·pad + dil·(k - 1) + 1

Sub-sampling by s after a stride-S convolution keeps the outputs 0, s, 2s...: the same values and the same
count, ceil((floor(e/S) + 1)/s) = floor(e/(S·s)) + 1, as one convolution of stride S·s, which is what
qatrun builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qatrun.ini import REQUIRED, Key

if TYPE_CHECKING:
    from qatrun.ini import Section


@dataclass(frozen=True)
class Family:
    """The keys of one 2-D quantity, by priority.

    Attributes:
        dims: ``XDims`` (width height).
        scalar: ``X`` (both axes).
        x: the width key.
        y: the height key.
        what: what the keys give (for messages).
        minimum: the smallest valid value (1 for sizes and steps, None for paddings, which may be negative).
    """

    dims: Key
    scalar: Key
    x: Key
    y: Key
    what: str
    minimum: int | None = 1

    @property
    def keys(self) -> tuple[Key, ...]:
        return (self.dims, self.scalar, self.x, self.y)


def _family(
    dims: str, scalar: str, x: str, y: str, default: object, what: str, minimum: int | None = 1
) -> Family:
    return Family(
        Key(dims, "ints", (), f"{what}, width height (priority over {scalar} and the per-axis keys)"),
        Key(scalar, "int", 0, f"{what}, both axes (priority over {x}/{y})"),
        Key(x, "int", default, f"{what} along the width"),
        Key(y, "int", default, f"{what} along the height"),
        what,
        minimum,
    )


KERNEL = _family("KernelDims", "KernelSize", "KernelWidth", "KernelHeight", REQUIRED, "kernel size")
POOL = _family("PoolDims", "PoolSize", "PoolWidth", "PoolHeight", REQUIRED, "pooling window")
STRIDE = _family("StrideDims", "Stride", "StrideX", "StrideY", 1, "stride")
PADDING = _family(
    "PaddingDims", "Padding", "PaddingX", "PaddingY", 0, "zero padding on each side (may be negative)", None
)
DILATION = _family("DilationDims", "Dilation", "DilationX", "DilationY", 1, "dilation")
SUBSAMPLE = _family("SubSampleDims", "SubSample", "SubSampleX", "SubSampleY", 1, "output sub-sampling")


@dataclass(frozen=True)
class Pair:
    """A 2-D quantity and the key it was read from (for error messages).

    Attributes:
        h: the value along the height.
        w: the value along the width.
        key: the key name that gave it (``KernelDims``, ``StrideX``...).
    """

    h: int
    w: int
    key: str

    @property
    def hw(self) -> tuple[int, int]:
        return (self.h, self.w)


def read_pair(section: Section, family: Family) -> Pair:
    """Reads one 2-D quantity by priority, rejecting keys that the priority would ignore.

    Args:
        section: the layer section.
        family: which quantity.

    Returns:
        The (height, width) values and the key that gave them.

    Raises:
        ConfigError: a list of the wrong length, a value below the minimum, a missing required size,
            or two ways of giving the same quantity.
    """
    present = [key for key in family.keys if section.has(key.name)]
    if present and present[0] is family.dims:
        values = section.read(family.dims)
        if len(values) != 2:
            raise section.error(
                family.dims.name, f"expected 2 values (width height), found {len(values)}: qatrun builds 2-D cells"
            )
        pair = Pair(values[1], values[0], family.dims.name)
    elif present and present[0] is family.scalar:
        value = section.read(family.scalar)
        pair = Pair(value, value, family.scalar.name)
    elif family.x.default is REQUIRED and not present:
        raise section.error(
            None,
            f"the {family.what} is missing: give {family.dims.name}, {family.scalar.name}, or {family.x.name} "
            f"and {family.y.name}",
        )
    else:
        w, h = section.read(family.x), section.read(family.y)
        pair = Pair(h, w, family.x.name)
    if len(present) > 1 and present[0] in (family.dims, family.scalar):
        raise section.error(
            present[1].name, f"N2D2 ignores this key because {present[0].name} is given; keep one of them"
        )
    minimum = family.minimum
    if minimum is not None and min(pair.h, pair.w) < minimum:
        if pair.key == family.dims.name:
            raise section.error(pair.key, f"expected values >= {minimum}, found {pair.w} {pair.h}")
        key = pair.key if pair.key == family.scalar.name or pair.w < minimum else family.y.name
        raise section.error(key, f"expected a value >= {minimum}, found {min(pair.h, pair.w)}")
    return pair


def conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Conv output size along one axis (before sub-sampling)."""
    return (size + 2 * padding - (dilation * (kernel - 1) + 1) + stride) // stride


def subsample_out(size: int, subsample: int) -> int:
    """Output size after sub-sampling: ceil(size / subsample)."""
    return -(-size // subsample)


def pool_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Pool output size along one axis."""
    return (size + 2 * padding - kernel + stride) // stride


def deconv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Deconv (transposed convolution) output size along one axis."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1
