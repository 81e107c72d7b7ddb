"""N2D2 transformations (``Type=<Name>Transformation``) as batched tensor functions.

Design note
-----------
N2D2 applies its transformations to one OpenCV image at a time, in the image's own pixel type
(reference/n2d2.md section 3.3). qatrun applies them to a batch (N, C, H, W) at once and keeps the same
pixel-type rule: a batch is either ``uint8`` ("8-bit data": geometric operations round back to 8 bits,
as OpenCV does, and the implicit scaling to [0, 1] is still to come) or ``float32`` (a transformation
such as ``RangeAffine`` changed the range; no implicit scaling afterwards).

Each transformation is a frozen dataclass read from its INI section by ``from_section`` and called as
``t(x, generator)``. Class attributes tell the provider how it may be scheduled:

* ``random``: the output depends on the generator (random offsets, flips, crops, distortions). The
  provider never caches the output of a random transformation, even in the static list: N2D2 redraws
  them at every read unless a stimuli cache is configured.
* ``pointwise``: each output value depends only on the same input value (and channel). The provider
  may apply these per batch after a cache kept in 8 bits, which is exact and keeps memory 4x smaller.

Where qatrun differs from N2D2 (documented per class): random geometry is sampled with a bilinear
``grid_sample`` in float (OpenCV's ``warpAffine``/``remap`` use a fixed-point table; random
augmentation need not be bit-exact); ``ColorSpace`` implements the conversions to and from BGR, RGB,
HSV and YCrCb.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from qatrun.data.formats import read_binary_mat, read_image
from qatrun.data.resize import resize_bilinear
from qatrun.errors import DataError
from qatrun.ini import Key, Section

Shape = tuple[int, int, int]
"""(C, H, W) of one stimulus."""

APPLY_TO_CHOICES = ("LearnOnly", "ValidationOnly", "TestOnly", "NoLearn", "NoValidation", "NoTest", "All")
TYPE = Key("Type", "str", doc="<Name>Transformation")
APPLY_TO = Key("ApplyTo", "enum", "All", "partitions the transformation applies to", APPLY_TO_CHOICES)

BORDER_TYPES = (
    "ConstantBorder",
    "ReplicateBorder",
    "ReflectBorder",
    "WrapBorder",
    "MinusOneReflectBorder",
    "MeanBorder",
)


def applies_to(apply_to: str, partition: str) -> bool:
    """Whether ``ApplyTo=<apply_to>`` includes a partition (``Learn``, ``Validation``, ``Test``)."""
    if apply_to == "All":
        return True
    if apply_to.endswith("Only"):
        return apply_to[: -len("Only")] == partition
    assert apply_to.startswith("No"), apply_to
    return apply_to[len("No") :] != partition


# --------------------------------------------------------------------------------------------------
# Pure helpers


def _round_like(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Back to the input's pixel type: uint8 values are rounded (half to even) and saturated."""
    if like.dtype == torch.uint8:
        return y.round().clamp_(0, 255).to(torch.uint8)
    return y.to(like.dtype)


def border_indices(n: int, before: int, after: int, border: str) -> torch.Tensor:
    """Source index of each output position of an axis padded by ``before``/``after`` (OpenCV rules).

    Args:
        n: source length.
        before: positions added before the first (negative values crop).
        after: positions added after the last.
        border: one of :data:`BORDER_TYPES`; ``ConstantBorder``/``MeanBorder`` give -1 outside.

    Returns:
        (before + n + after,) int64 indices into the source, -1 where a constant is written.
    """
    i = torch.arange(-before, n + after)
    if border in ("ConstantBorder", "MeanBorder"):
        return torch.where((i >= 0) & (i < n), i, torch.full_like(i, -1))
    if border == "ReplicateBorder":
        return i.clamp(0, n - 1)
    if border == "WrapBorder":
        return i % n
    if border == "ReflectBorder":  # fedcba|abcdefgh|hgfedcb
        j = i % (2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)
    assert border == "MinusOneReflectBorder", border  # gfedcb|abcdefgh|gfedcba
    if n == 1:
        return torch.zeros_like(i)
    j = i % (2 * n - 2)
    return torch.where(j < n, j, 2 * n - 2 - j)


def _fill_values(x: torch.Tensor, border: str, values: Sequence[float]) -> torch.Tensor:
    """Per-sample, per-channel constant of a Constant/Mean border: (N, C, 1, 1) of x's dtype."""
    n, c = x.shape[:2]
    if border == "MeanBorder":
        fill = x.double().mean(dim=(2, 3), keepdim=True)
    else:
        per_channel = [values[k] if len(values) > 1 else values[0] for k in range(c)] if values else [0.0] * c
        fill = torch.tensor(per_channel, dtype=torch.float64).view(1, c, 1, 1).expand(n, c, 1, 1)
    return _round_like(fill, x)


def pad_crop(
    x: torch.Tensor, top: int, bottom: int, left: int, right: int, border: str, values: Sequence[float] = ()
) -> torch.Tensor:
    """Pads (positive amounts) or crops (negative) each side, with an OpenCV border rule.

    Args:
        x: (N, C, H, W).
        top, bottom, left, right: rows/columns added on each side.
        border: one of :data:`BORDER_TYPES`.
        values: per-channel constant for ``ConstantBorder`` (one value is used for every channel).

    Returns:
        (N, C, H + top + bottom, W + left + right), dtype of x.
    """
    h, w = x.shape[-2:]
    rows = border_indices(h, top, bottom, border)
    cols = border_indices(w, left, right, border)
    y = x[..., rows.clamp(min=0), :][..., cols.clamp(min=0)]
    outside = (rows < 0)[:, None] | (cols < 0)[None, :]
    if outside.any():
        y = torch.where(outside, _fill_values(x, border, values), y)
    return y


def _sample(x: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Bilinear sampling of x at pixel coordinates (N, H, W); outside the image: ``fill``.

    Args:
        x: (N, C, h, w), uint8 or float.
        src_x, src_y: (N, H, W) source coordinates in pixels (pixel centres at integers).
        fill: value written where the sample falls outside the image.

    Returns:
        (N, C, H, W), dtype of x (uint8 results rounded).
    """
    h, w = x.shape[-2:]
    grid = torch.stack(((src_x + 0.5) * (2.0 / w) - 1.0, (src_y + 0.5) * (2.0 / h) - 1.0), dim=-1)
    xf = x.float()
    y = F.grid_sample(xf, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    if fill != 0.0:
        weight = F.grid_sample(torch.ones_like(xf[:, :1]), grid.float(), mode="bilinear", align_corners=False)
        y = y + (1.0 - weight) * fill
    return _round_like(y, x)


def _uniform(generator: torch.Generator | None, n: int, low: float, high: float) -> torch.Tensor:
    """n draws of U(low, high) in float64."""
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (``cv::getGaussianKernel``)."""
    i = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


# --------------------------------------------------------------------------------------------------
# Transformations


@dataclass(frozen=True)
class Transformation:
    """Base of every transformation: the INI ``Type`` name and scheduling properties."""

    name: ClassVar[str]
    keys: ClassVar[tuple[Key, ...]] = ()
    random: ClassVar[bool] = False
    pointwise: ClassVar[bool] = False

    @classmethod
    def from_section(cls, section: Section) -> Transformation:
        """Reads the transformation's keys (every key of ``cls.keys``, in the order of the fields)."""
        assert len(cls.keys) == len(fields(cls)), cls
        values = [section.read(key) for key in cls.keys]
        return cls(*values)._validated(section)

    def _validated(self, section: Section) -> Transformation:
        """Checks values that the key kinds cannot (hook for subclasses); returns self."""
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def output_shape(self, shape: Shape) -> Shape | None:
        """The (C, H, W) produced from ``shape``; ``None`` when it depends on the data."""
        return shape

    def output_float(self, is_float: bool) -> bool:
        """Whether the output is float given whether the input is (8-bit data stays 8-bit by default)."""
        return is_float


WIDTH = Key("Width", "int", doc="output width")
HEIGHT = Key("Height", "int", doc="output height")


@dataclass(frozen=True)
class Rescale(Transformation):
    """``RescaleTransformation``: resize with OpenCV's bilinear interpolation (exact on 8-bit data).

    With ``KeepAspectRatio=1`` both axes use one factor, ``min(W/w, H/h)`` (``ResizeToFit=1``, the image
    fits inside W x H) or ``max`` (``ResizeToFit=0``: the shorter side reaches its target). As
    ``cv::resize(src, dst, Size(), f, f)``: the size is ``round(w * f)`` and the coordinates use ``f``.
    """

    name: ClassVar[str] = "RescaleTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        WIDTH,
        HEIGHT,
        Key("KeepAspectRatio", "bool", False, "keep the aspect ratio"),
        Key("ResizeToFit", "bool", True, "with KeepAspectRatio: fit inside (1) or cover (0) the size"),
    )
    width: int
    height: int
    keep_aspect_ratio: bool = False
    resize_to_fit: bool = True

    def _validated(self, section: Section) -> Transformation:
        if self.width <= 0 or self.height <= 0:
            raise section.error("Width" if self.width <= 0 else "Height", "must be positive")
        return self

    def _factor(self, h: int, w: int) -> float:
        pick = min if self.resize_to_fit else max
        return pick(self.width / w, self.height / h)

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        if not self.keep_aspect_ratio:
            return (c, self.height, self.width)
        f = self._factor(h, w)
        return (c, round(h * f), round(w * f))  # cvRound: half to even, as Python's round

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c, h, w = x.shape[1:]
        _, height, width = self.output_shape((c, h, w))
        factor = self._factor(h, w) if self.keep_aspect_ratio else None
        return resize_bilinear(x, height, width, factor, factor)


@dataclass(frozen=True)
class PadCrop(Transformation):
    """``PadCropTransformation``: centre crop and/or pad to Width x Height (``AdditiveWH``: add them)."""

    name: ClassVar[str] = "PadCropTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        WIDTH,
        HEIGHT,
        Key("BorderType", "enum", "MinusOneReflectBorder", "how padded pixels are made", BORDER_TYPES),
        Key("BorderValue", "floats", (0.0, 0.0, 0.0), "ConstantBorder value per channel"),
        Key("AdditiveWH", "bool", False, "Width/Height are added to the image size"),
    )
    width: int
    height: int
    border_type: str = "MinusOneReflectBorder"
    border_value: tuple[float, ...] = (0.0, 0.0, 0.0)
    additive_wh: bool = False

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        if self.additive_wh:
            return (c, h + self.height, w + self.width)
        return (c, self.height, self.width)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c, h, w = x.shape[1:]
        _, height, width = self.output_shape((c, h, w))
        # Crop first (offset (w - W) // 2), then pad (left = (W - w) // 2), as N2D2 does.
        crop_left, crop_top = max(0, (w - width) // 2), max(0, (h - height) // 2)
        x = x[..., crop_top : crop_top + height, crop_left : crop_left + width]
        h, w = x.shape[-2:]
        left, top = (width - w) // 2, (height - h) // 2
        return pad_crop(x, top, height - h - top, left, width - w - left, self.border_type, self.border_value)


@dataclass(frozen=True)
class SliceExtraction(Transformation):
    """``SliceExtractionTransformation``: a Width x Height slice at (OffsetX, OffsetY).

    ``RandomOffsetX/Y=1`` draw the offset uniformly in ``[0, w - Width]`` per image; ``RandomRotation``
    and ``RandomScaling`` rotate/scale the sampling window about its centre (angle in
    ``RandomRotationRange`` degrees, factor in ``RandomScalingRange``), bilinear, outside pixels from
    ``BorderValue``. ``AllowPadding=1`` pads the image with ``BorderType`` where the slice leaves it.
    """

    name: ClassVar[str] = "SliceExtractionTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        WIDTH,
        HEIGHT,
        Key("OffsetX", "int", 0, "left column of the slice"),
        Key("OffsetY", "int", 0, "top row of the slice"),
        Key("RandomOffsetX", "bool", False, "draw OffsetX uniformly per image"),
        Key("RandomOffsetY", "bool", False, "draw OffsetY uniformly per image"),
        Key("RandomRotation", "bool", False, "rotate the slice by a random angle"),
        Key("RandomRotationRange", "floats", (0.0, 360.0), "angle range in degrees"),
        Key("RandomScaling", "bool", False, "scale the slice by a random factor"),
        Key("RandomScalingRange", "floats", (0.8, 1.2), "scaling factor range"),
        Key("AllowPadding", "bool", False, "pad the image where the slice leaves it"),
        Key("BorderType", "enum", "MinusOneReflectBorder", "padding rule with AllowPadding", BORDER_TYPES),
        Key("BorderValue", "floats", (0.0, 0.0, 0.0), "ConstantBorder value per channel"),
    )
    width: int
    height: int
    offset_x: int = 0
    offset_y: int = 0
    random_offset_x: bool = False
    random_offset_y: bool = False
    random_rotation: bool = False
    random_rotation_range: tuple[float, ...] = (0.0, 360.0)
    random_scaling: bool = False
    random_scaling_range: tuple[float, ...] = (0.8, 1.2)
    allow_padding: bool = False
    border_type: str = "MinusOneReflectBorder"
    border_value: tuple[float, ...] = (0.0, 0.0, 0.0)

    def _validated(self, section: Section) -> Transformation:
        for key, value in (
            ("RandomRotationRange", self.random_rotation_range),
            ("RandomScalingRange", self.random_scaling_range),
        ):
            if len(value) != 2 or value[0] > value[1]:
                raise section.error(key, f"expected two numbers min max, found {' '.join(map(str, value))}")
        return self

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.random_offset_x or self.random_offset_y or self.random_rotation or self.random_scaling

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], self.height, self.width)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.allow_padding:
            extra_x = max(0, self.offset_x + self.width - w) if not self.random_offset_x else max(0, self.width - w)
            extra_y = max(0, self.offset_y + self.height - h) if not self.random_offset_y else max(0, self.height - h)
            x = pad_crop(x, 0, extra_y, 0, extra_x, self.border_type, self.border_value)
            h, w = x.shape[-2:]
        if self.width > w or self.height > h:
            raise DataError(
                f"{self.name}: slice {self.width}x{self.height} is larger than the {w}x{h} image (set AllowPadding=1)"
            )
        ox = self._offsets(n, w, self.width, self.offset_x, self.random_offset_x, generator)
        oy = self._offsets(n, h, self.height, self.offset_y, self.random_offset_y, generator)
        if self.random_rotation or self.random_scaling:
            return self._warped(x, ox, oy, generator)
        rows = oy[:, None] + torch.arange(self.height)  # (N, H)
        cols = ox[:, None] + torch.arange(self.width)  # (N, W)
        index = torch.arange(n)[:, None, None]
        return x.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

    def _offsets(
        self, n: int, size: int, extent: int, offset: int, random: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        if random:
            return torch.randint(0, size - extent + 1, (n,), generator=generator)
        if offset < 0 or offset + extent > size:
            raise DataError(
                f"{self.name}: slice at offset {offset} of length {extent} leaves the image of length {size} "
                "(set AllowPadding=1)"
            )
        return torch.full((n,), offset, dtype=torch.int64)

    def _warped(
        self, x: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        n = x.shape[0]
        angle = (
            _uniform(generator, n, *self.random_rotation_range)
            if self.random_rotation
            else torch.zeros(n, dtype=torch.float64)
        )
        scale = (
            _uniform(generator, n, *self.random_scaling_range)
            if self.random_scaling
            else torch.ones(n, dtype=torch.float64)
        )
        cx = ox + (self.width - 1) / 2
        cy = oy + (self.height - 1) / 2
        u = (torch.arange(self.width, dtype=torch.float64) - (self.width - 1) / 2)[None, None, :]
        v = (torch.arange(self.height, dtype=torch.float64) - (self.height - 1) / 2)[None, :, None]
        cos, sin = torch.cos(torch.deg2rad(angle))[:, None, None], torch.sin(torch.deg2rad(angle))[:, None, None]
        s = scale[:, None, None]
        src_x = cx[:, None, None] + s * (cos * u - sin * v)
        src_y = cy[:, None, None] + s * (sin * u + cos * v)
        return _sample(x, src_x, src_y, self.border_value[0] if self.border_value else 0.0)


@dataclass(frozen=True)
class RandomResizeCrop(Transformation):
    """``RandomResizeCropTransformation``: torchvision's ``RandomResizedCrop``, per image.

    Ten tries of an area fraction in U(ScaleMin, ScaleMax) and a log-uniform aspect ratio in
    [RatioMin, RatioMax]; the first box that fits is cropped, else a centre crop clamped to the ratio
    range; then a bilinear resize to Width x Height (``grid_sample`` on the box, rounded on 8-bit data).
    """

    name: ClassVar[str] = "RandomResizeCropTransformation"
    random: ClassVar[bool] = True
    keys: ClassVar[tuple[Key, ...]] = (
        WIDTH,
        HEIGHT,
        Key("ScaleMin", "float", 1.0, "smallest area fraction"),
        Key("ScaleMax", "float", 1.0, "largest area fraction"),
        Key("RatioMin", "float", 1.0, "smallest aspect ratio w/h"),
        Key("RatioMax", "float", 1.0, "largest aspect ratio w/h"),
    )
    width: int
    height: int
    scale_min: float = 1.0
    scale_max: float = 1.0
    ratio_min: float = 1.0
    ratio_max: float = 1.0

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], self.height, self.width)

    def boxes(self, n: int, h: int, w: int, generator: torch.Generator | None) -> torch.Tensor:
        """(N, 4) int64 boxes (top, left, height, width) drawn as torchvision does."""
        tries = 10
        area = h * w * _uniform(generator, n * tries, self.scale_min, self.scale_max).view(n, tries)
        log_ratio = _uniform(generator, n * tries, math.log(self.ratio_min), math.log(self.ratio_max)).view(n, tries)
        ratio = torch.exp(log_ratio)
        bw = torch.sqrt(area * ratio).round().long()
        bh = torch.sqrt(area / ratio).round().long()
        ok = (bw > 0) & (bh > 0) & (bw <= w) & (bh <= h)
        first = torch.where(ok.any(1), ok.long().argmax(1), torch.full((n,), -1))
        # fallback: whole image clamped to the ratio range, centred
        in_ratio = w / h
        if in_ratio < self.ratio_min:
            fw, fh = w, round(w / self.ratio_min)
        elif in_ratio > self.ratio_max:
            fw, fh = round(h * self.ratio_max), h
        else:
            fw, fh = w, h
        pick = first.clamp(min=0)[:, None]
        bw = torch.where(first >= 0, bw.gather(1, pick)[:, 0], torch.full((n,), fw))
        bh = torch.where(first >= 0, bh.gather(1, pick)[:, 0], torch.full((n,), fh))
        top = (torch.rand(n, generator=generator, dtype=torch.float64) * (h - bh + 1)).floor().long()
        left = (torch.rand(n, generator=generator, dtype=torch.float64) * (w - bw + 1)).floor().long()
        top = torch.where(first >= 0, top, (h - bh) // 2)
        left = torch.where(first >= 0, left, (w - bw) // 2)
        return torch.stack((top, left, bh, bw), dim=1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        top, left, bh, bw = self.boxes(n, h, w, generator).double().unbind(1)
        j = torch.arange(self.width, dtype=torch.float64)[None, None, :]
        i = torch.arange(self.height, dtype=torch.float64)[None, :, None]
        # half-pixel centres inside the box, clamped to the box as cv::resize of the crop clamps
        u = (j + 0.5) * (bw / self.width)[:, None, None] - 0.5
        v = (i + 0.5) * (bh / self.height)[:, None, None] - 0.5
        src_x = left[:, None, None] + torch.minimum(u.clamp(min=0), (bw - 1)[:, None, None])
        src_y = top[:, None, None] + torch.minimum(v.clamp(min=0), (bh - 1)[:, None, None])
        return _sample(x, src_x.expand(n, self.height, self.width), src_y.expand(n, self.height, self.width))


@dataclass(frozen=True)
class Flip(Transformation):
    """``FlipTransformation``: fixed and/or random (p = 0.5 per image) horizontal/vertical flips."""

    name: ClassVar[str] = "FlipTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        Key("HorizontalFlip", "bool", False, "always flip left-right"),
        Key("VerticalFlip", "bool", False, "always flip top-bottom"),
        Key("RandomHorizontalFlip", "bool", False, "flip left-right with probability 0.5"),
        Key("RandomVerticalFlip", "bool", False, "flip top-bottom with probability 0.5"),
    )
    horizontal: bool = False
    vertical: bool = False
    random_horizontal: bool = False
    random_vertical: bool = False

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.random_horizontal or self.random_vertical

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for axis, fixed, random in (
            (-1, self.horizontal, self.random_horizontal),
            (-2, self.vertical, self.random_vertical),
        ):
            if fixed:
                x = x.flip(axis)
            if random:
                draw = torch.rand(x.shape[0], generator=generator) < 0.5
                x = torch.where(draw[:, None, None, None], x.flip(axis), x)
        return x


# Every ColorSpace value N2D2 knows; qatrun implements those in COLOR_CONVERSIONS.
COLOR_SPACES = (
    "BGR", "RGB", "HSV", "HLS", "YCrCb", "CIELab", "CIELuv",
    "RGB_to_BGR", "RGB_to_HSV", "RGB_to_HLS", "RGB_to_YCrCb", "RGB_to_CIELab", "RGB_to_CIELuv",
    "HSV_to_BGR", "HSV_to_RGB", "HLS_to_BGR", "HLS_to_RGB", "YCrCb_to_BGR", "YCrCb_to_RGB",
    "CIELab_to_BGR", "CIELab_to_RGB", "CIELuv_to_BGR", "CIELuv_to_RGB",
)  # fmt: skip


def _swap_rb(x: torch.Tensor) -> torch.Tensor:
    return x[:, [2, 1, 0]]


def _to_three(x: torch.Tensor) -> torch.Tensor:
    """Gray -> 3 equal channels; BGRA -> BGR (OpenCV's GRAY2BGR / BGRA2BGR)."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    return x[:, :3]


def bgr_to_gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV BGR2GRAY: 8-bit in 15-bit fixed point ``(3735 B + 19235 G + 9798 R + 2**14) >> 15``."""
    if x.dtype == torch.uint8:
        b, g, r = x.to(torch.int32).unbind(1)
        return ((b * 3735 + g * 19235 + r * 9798 + (1 << 14)) >> 15).to(torch.uint8)[:, None]
    b, g, r = x.unbind(1)
    return (0.114 * b + 0.587 * g + 0.299 * r)[:, None]


def bgr_to_ycrcb(x: torch.Tensor) -> torch.Tensor:
    """OpenCV BGR2YCrCb (8-bit: 14-bit fixed point; float: Y, then (R - Y) 0.713 + d, (B - Y) 0.564 + d)."""
    if x.dtype == torch.uint8:
        b, g, r = x.to(torch.int32).unbind(1)
        y = (b * 1868 + g * 9617 + r * 4899 + (1 << 13)) >> 14
        half = (128 << 14) + (1 << 13)
        cr = ((r - y) * 11682 + half) >> 14
        cb = ((b - y) * 9241 + half) >> 14
        return torch.stack((y, cr, cb), 1).clamp_(0, 255).to(torch.uint8)
    b, g, r = x.unbind(1)
    y = 0.114 * b + 0.587 * g + 0.299 * r
    return torch.stack((y, (r - y) * 0.713 + 0.5, (b - y) * 0.564 + 0.5), 1)


def ycrcb_to_bgr(x: torch.Tensor) -> torch.Tensor:
    """OpenCV YCrCb2BGR (8-bit: 14-bit fixed point)."""
    if x.dtype == torch.uint8:
        y, cr, cb = x.to(torch.int32).unbind(1)
        cr, cb = cr - 128, cb - 128
        rnd = 1 << 13
        b = y + ((cb * 29049 + rnd) >> 14)
        g = y + ((cb * -5636 + cr * -11698 + rnd) >> 14)
        r = y + ((cr * 22987 + rnd) >> 14)
        return torch.stack((b, g, r), 1).clamp_(0, 255).to(torch.uint8)
    y, cr, cb = x.unbind(1)
    cr, cb = cr - 0.5, cb - 0.5
    return torch.stack((y + 1.773 * cb, y - 0.714 * cr - 0.344 * cb, y + 1.403 * cr), 1)


def bgr_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """OpenCV BGR2HSV: 8-bit gives H in [0, 180) (degrees / 2), S, V in [0, 255]; float H in [0, 360)."""
    if x.dtype == torch.uint8:
        b, g, r = x.to(torch.int64).unbind(1)
        v = torch.maximum(torch.maximum(r, g), b)
        diff = v - torch.minimum(torch.minimum(r, g), b)
        shift = 12
        sdiv = torch.where(
            v > 0, torch.round((255 << shift) / v.clamp(min=1)), torch.zeros_like(v, dtype=torch.float64)
        ).long()
        hdiv = torch.where(
            diff > 0, torch.round((180 << shift) / (6.0 * diff.clamp(min=1))), torch.zeros_like(v, dtype=torch.float64)
        ).long()
        s = (diff * sdiv + (1 << (shift - 1))) >> shift
        h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
        h = (h * hdiv + (1 << (shift - 1))) >> shift
        h = torch.where(h < 0, h + 180, h)
        return torch.stack((h, s, v), 1).clamp_(0, 255).to(torch.uint8)
    b, g, r = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.where(v > 0, diff / v.clamp(min=1e-30), torch.zeros_like(v))
    safe = diff.clamp(min=1e-30)
    h = torch.where(
        v == r, (g - b) * 60 / safe, torch.where(v == g, (b - r) * 60 / safe + 120, (r - g) * 60 / safe + 240)
    )
    h = torch.where(diff > 0, h, torch.zeros_like(h))
    return torch.stack((torch.where(h < 0, h + 360, h), s, v), 1)


def hsv_to_bgr(x: torch.Tensor) -> torch.Tensor:
    """OpenCV HSV2BGR computed in float64 (8-bit H is degrees / 2; results rounded).

    On 8-bit data OpenCV's float32 evaluation differs by one level on a few pixels (5 of 5 120 random).
    """
    eight_bit = x.dtype == torch.uint8
    h, s, v = x.double().unbind(1)
    if eight_bit:
        h, s, v = h * 2.0, s / 255.0, v / 255.0
    h = torch.remainder(h / 60.0, 6.0)
    sector = h.floor()
    f = h - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]  # (r, g, b) per sector
    r = g = b = torch.zeros_like(v)
    for k, (rk, gk, bk) in enumerate(table):
        here = sector == k
        r, g, b = torch.where(here, rk, r), torch.where(here, gk, g), torch.where(here, bk, b)
    bgr = torch.stack((b, g, r), 1)
    return _round_like(bgr * 255.0, x) if eight_bit else bgr.to(x.dtype)


COLOR_CONVERSIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "BGR": _to_three,
    "RGB": lambda x: _swap_rb(_to_three(x)),
    "RGB_to_BGR": lambda x: _swap_rb(_to_three(x)),
    "HSV": lambda x: bgr_to_hsv(_to_three(x)),
    "RGB_to_HSV": lambda x: bgr_to_hsv(_swap_rb(_to_three(x))),
    "HSV_to_BGR": hsv_to_bgr,
    "HSV_to_RGB": lambda x: _swap_rb(hsv_to_bgr(x)),
    "YCrCb": lambda x: bgr_to_ycrcb(_to_three(x)),
    "RGB_to_YCrCb": lambda x: bgr_to_ycrcb(_swap_rb(_to_three(x))),
    "YCrCb_to_BGR": ycrcb_to_bgr,
    "YCrCb_to_RGB": lambda x: _swap_rb(ycrcb_to_bgr(x)),
}


@dataclass(frozen=True)
class ColorSpace(Transformation):
    """``ColorSpaceTransformation``: OpenCV colour conversions (input assumed BGR unless ``RGB_to_*``)."""

    name: ClassVar[str] = "ColorSpaceTransformation"
    pointwise: ClassVar[bool] = True
    keys: ClassVar[tuple[Key, ...]] = (Key("ColorSpace", "enum", doc="target colour space", choices=COLOR_SPACES),)
    color_space: str

    def _validated(self, section: Section) -> Transformation:
        if self.color_space not in COLOR_CONVERSIONS:
            raise section.error(
                "ColorSpace",
                f"{self.color_space} is not implemented by qatrun; supported: {', '.join(COLOR_CONVERSIONS)}",
            )
        return self

    def output_shape(self, shape: Shape) -> Shape:
        return (3, shape[1], shape[2])

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return COLOR_CONVERSIONS[self.color_space](x)


OPERATORS = ("Plus", "Minus", "Multiplies", "Divides")


def range_affine(
    x: torch.Tensor, first: tuple[str, Sequence[float]], second: tuple[str, Sequence[float]] | None, truncate: bool
) -> torch.Tensor:
    """``f(x) = (x op1 v1) op2 v2`` with per-channel value lists, in float32 as OpenCV computes it.

    OpenCV applies a scalar to a float matrix in float32: ``+ v`` and ``- v`` add ``float(v)``,
    ``* v`` multiplies by ``float(v)`` and ``/ v`` multiplies by ``float(1 / v)`` (``convertTo`` with a
    scale). So ``Divides 255`` gives ``p * float(1/255)``, which differs from the correctly rounded
    ``p / 255`` by one ulp on some values: the golden ``env.dat`` of N2D2 shows the former on every
    pixel. With ``truncate`` on 8-bit data the result is rounded and saturated back to 8 bits (the
    data stay "8-bit": the implicit scaling to [0, 1] still applies afterwards).
    """
    c = x.shape[1]
    y = x.float()
    for op, values in (first, second) if second is not None else (first,):
        assert len(values) in (1, c), (values, c)
        operand = [1.0 / v if op == "Divides" else v for v in values]
        v = torch.tensor(operand, dtype=torch.float64).float().view(1, -1, 1, 1)
        if op == "Plus":
            y = y + v
        elif op == "Minus":
            y = y - v
        else:  # Multiplies, Divides
            y = y * v
    if truncate and x.dtype == torch.uint8:
        return y.round().clamp(0, 255).to(torch.uint8)
    return y


@dataclass(frozen=True)
class RangeAffine(Transformation):
    """``RangeAffineTransformation``: ``(x FirstOperator FirstValue) SecondOperator SecondValue``.

    Values are one number or one per channel, in the current channel order. ``Truncate=1`` keeps 8-bit
    data 8-bit (rounded, saturated).
    """

    name: ClassVar[str] = "RangeAffineTransformation"
    pointwise: ClassVar[bool] = True
    keys: ClassVar[tuple[Key, ...]] = (
        Key("FirstOperator", "enum", doc="Plus, Minus, Multiplies or Divides", choices=OPERATORS),
        Key("FirstValue", "floats", doc="one value, or one per channel"),
        Key("SecondOperator", "enum", "Plus", "operator applied after the first", OPERATORS),
        Key("SecondValue", "floats", (), "one value, or one per channel (empty: no second operation)"),
        Key("Truncate", "bool", False, "keep 8-bit data 8-bit (round and saturate)"),
    )
    first_operator: str
    first_value: tuple[float, ...]
    second_operator: str = "Plus"
    second_value: tuple[float, ...] = ()
    truncate: bool = False

    def _validated(self, section: Section) -> Transformation:
        if not self.first_value:
            raise section.error("FirstValue", "expected one value or one per channel, found none")
        return self

    def output_float(self, is_float: bool) -> bool:
        return is_float or not self.truncate

    def check_channels(self, channels: int) -> str | None:
        """An error message if a value list does not match the channel count, else None."""
        for key, values in (("FirstValue", self.first_value), ("SecondValue", self.second_value)):
            if len(values) > 1 and len(values) != channels:
                return f"{key} has {len(values)} values for {channels} channels"
        return None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        message = self.check_channels(x.shape[1])
        if message:
            raise DataError(f"{self.name}: {message}")
        second = (self.second_operator, self.second_value) if self.second_value else None
        return range_affine(x, (self.first_operator, self.first_value), second, self.truncate)


def normalize(x: torch.Tensor, norm: str, value: float, low: float, high: float, per_channel: bool) -> torch.Tensor:
    """``cv::normalize`` per image (per channel if asked): L1/L2/Linf to ``value``, or MinMax to [low, high].

    As OpenCV: a norm (or range) below DBL_EPSILON gives scale 0 (the image becomes 0, or ``low``).
    """
    dims = (2, 3) if per_channel else (1, 2, 3)
    y = x.double()
    eps = 2.220446049250313e-16
    if norm == "MinMax":
        lo, hi = y.amin(dim=dims, keepdim=True), y.amax(dim=dims, keepdim=True)
        span = hi - lo
        scale = torch.where(span > eps, (high - low) / span.clamp(min=eps), torch.zeros_like(span))
        return (y * scale + (low - lo * scale)).float()
    if norm == "L1":
        n = y.abs().sum(dim=dims, keepdim=True)
    elif norm == "L2":
        n = y.square().sum(dim=dims, keepdim=True).sqrt()
    else:
        n = y.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(n > eps, value / n.clamp(min=eps), torch.zeros_like(n))
    return (y * scale).float()


@dataclass(frozen=True)
class Normalize(Transformation):
    """``NormalizeTransformation``: per-image ``cv::normalize`` (result in float)."""

    name: ClassVar[str] = "NormalizeTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        Key("Norm", "enum", "MinMax", "L1, L2, Linf or MinMax", ("L1", "L2", "Linf", "MinMax")),
        Key("NormValue", "float", 1.0, "target norm for L1/L2/Linf"),
        Key("NormMin", "float", 0.0, "MinMax lower bound"),
        Key("NormMax", "float", 1.0, "MinMax upper bound"),
        Key("PerChannel", "bool", False, "normalise each channel separately"),
    )
    norm: str = "MinMax"
    norm_value: float = 1.0
    norm_min: float = 0.0
    norm_max: float = 1.0
    per_channel: bool = False

    def output_float(self, is_float: bool) -> bool:
        return True

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return normalize(x, self.norm, self.norm_value, self.norm_min, self.norm_max, self.per_channel)


@dataclass(frozen=True)
class Distortion(Transformation):
    """``DistortionTransformation``: elastic distortion plus random scaling and rotation (Simard et al. 2003).

    Per image: a displacement field U(-1, 1) per pixel and axis, smoothed by a Gaussian of
    ``ElasticGaussianSize`` taps and ``ElasticSigma``, times ``ElasticScaling``; scale factors
    1 + U(-Scaling, Scaling)/100 per axis; an angle U(-Rotation, Rotation) degrees about the centre.
    Bilinear resampling, 0 outside. ``IgnoreMissingData`` concerns missing pixels, which qatrun's
    databases never have.
    """

    name: ClassVar[str] = "DistortionTransformation"
    random: ClassVar[bool] = True
    keys: ClassVar[tuple[Key, ...]] = (
        Key("ElasticGaussianSize", "int", 15, "Gaussian kernel size of the elastic field"),
        Key("ElasticSigma", "float", 6.0, "Gaussian sigma of the elastic field"),
        Key("ElasticScaling", "float", 0.0, "elastic displacement amplitude in pixels (0: none)"),
        Key("Scaling", "float", 0.0, "random scaling amplitude in percent"),
        Key("Rotation", "float", 0.0, "random rotation amplitude in degrees"),
        Key("IgnoreMissingData", "bool", True, "leave missing pixels alone (qatrun data have none)"),
    )
    elastic_gaussian_size: int = 15
    elastic_sigma: float = 6.0
    elastic_scaling: float = 0.0
    scaling: float = 0.0
    rotation: float = 0.0
    ignore_missing_data: bool = True

    def _validated(self, section: Section) -> Transformation:
        if self.elastic_gaussian_size <= 0 or self.elastic_gaussian_size % 2 == 0:
            raise section.error("ElasticGaussianSize", "must be a positive odd number")
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        u = torch.arange(w, dtype=torch.float64)[None, None, :] - (w - 1) / 2
        v = torch.arange(h, dtype=torch.float64)[None, :, None] - (h - 1) / 2
        sx = 1 + _uniform(generator, n, -self.scaling, self.scaling)[:, None, None] / 100
        sy = 1 + _uniform(generator, n, -self.scaling, self.scaling)[:, None, None] / 100
        angle = torch.deg2rad(_uniform(generator, n, -self.rotation, self.rotation))[:, None, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        src_x = (cos * u - sin * v) * sx + (w - 1) / 2
        src_y = (sin * u + cos * v) * sy + (h - 1) / 2
        if self.elastic_scaling > 0:
            field = torch.rand(n, 2, h, w, generator=generator, dtype=torch.float64) * 2 - 1
            k = _gaussian_kernel(self.elastic_gaussian_size, self.elastic_sigma)
            pad = self.elastic_gaussian_size // 2
            field = F.conv2d(F.pad(field.view(-1, 1, h, w), (pad, pad, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
            field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode="replicate"), k.view(1, 1, -1, 1)).view(n, 2, h, w)
            src_x = src_x + self.elastic_scaling * field[:, 0]
            src_y = src_y + self.elastic_scaling * field[:, 1]
        return _sample(x, src_x.expand(n, h, w), src_y.expand(n, h, w))


CS_CHANNELS = ("Blue", "Green", "Red", "Hue", "Saturation", "Value", "Gray", "Y", "Cb", "Cr")


@dataclass(frozen=True)
class ChannelExtraction(Transformation):
    """``ChannelExtractionTransformation``: one channel of a BGR image, or of its HSV / YCrCb / gray form."""

    name: ClassVar[str] = "ChannelExtractionTransformation"
    pointwise: ClassVar[bool] = True
    keys: ClassVar[tuple[Key, ...]] = (Key("CSChannel", "enum", doc="channel to keep", choices=CS_CHANNELS),)
    cs_channel: str

    def output_shape(self, shape: Shape) -> Shape:
        return (1, shape[1], shape[2])

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        channel = self.cs_channel
        if channel == "Gray":
            return bgr_to_gray(_to_three(x)) if x.shape[1] != 1 else x
        x = _to_three(x)
        if channel in ("Blue", "Green", "Red"):
            k = ("Blue", "Green", "Red").index(channel)
            return x[:, k : k + 1].contiguous()
        if channel in ("Hue", "Saturation", "Value"):
            k = ("Hue", "Saturation", "Value").index(channel)
            return bgr_to_hsv(x)[:, k : k + 1].contiguous()
        k = ("Y", "Cr", "Cb").index(channel)
        return bgr_to_ycrcb(x)[:, k : k + 1].contiguous()


def equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``equalizeHist`` on each channel of each 8-bit image.

    With ``i0`` the smallest value present and ``n`` the pixel count, value ``i`` becomes
    ``round(float(cdf(i) - cdf(i0)) * float(255 / (n - h(i0))))`` in float32 (half to even), ``i0``
    becomes 0; an image of one value keeps it.
    """
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    counts = torch.zeros(n * c, 256, dtype=torch.int64).scatter_add_(1, flat, torch.ones_like(flat))
    first = (counts > 0).to(torch.int64).argmax(dim=1, keepdim=True)  # i0
    low = counts.gather(1, first)
    total = h * w
    scale = (torch.tensor(255.0, dtype=torch.float32) / (total - low).clamp(min=1).float())
    lut = ((counts.cumsum(dim=1) - low).float() * scale).round().clamp(0, 255).to(torch.uint8)
    lut = torch.where(low == total, first.to(torch.uint8).expand(-1, 256), lut)
    return lut.gather(1, flat).reshape(n, c, h, w)


def _reflect101(n: int, after: int) -> torch.Tensor:
    """Source indices of an axis of length n extended by ``after`` positions, ``BORDER_REFLECT_101``."""
    return border_indices(n, 0, after, "MinusOneReflectBorder")


def clahe(x: torch.Tensor, clip_limit: float, grid: int) -> torch.Tensor:
    """OpenCV's CLAHE (``createCLAHE(clip_limit, (grid, grid)).apply``) on each channel of 8-bit images.

    As ``imgproc/src/clahe.cpp``: an image whose size is not a multiple of the grid is extended by
    ``grid - size % grid`` rows *and* columns (even along an axis that divides: OpenCV's rule), reflected;
    each tile's histogram is clipped at ``max(int(clip_limit * area / 256), 1)`` (0: no clip) and the
    excess spread evenly, the remainder one count every ``max(256 // remainder, 1)`` bins from bin 0; the
    tile's table is ``round(cumsum * float(255 / area))``; each pixel interpolates bilinearly the tables
    of the four nearest tile centres, in float32, and is rounded half to even. Checked equal to OpenCV
    4.14 on 300 random images of 2 to 89 pixels a side, grids 1 to 9, clip limits 0 to 100.

    Args:
        x: (N, C, H, W) uint8.
        clip_limit: the contrast limit (OpenCV's ``clipLimit``).
        grid: tiles per side.

    Returns:
        (N, C, H, W) uint8.
    """
    n, c, h, w = x.shape
    planes = x.reshape(n * c, h, w)
    if h % grid or w % grid:
        planes = planes[:, _reflect101(h, grid - h % grid)][:, :, _reflect101(w, grid - w % grid)]
    th, tw = planes.shape[1] // grid, planes.shape[2] // grid
    area = th * tw
    tiles = planes.reshape(n * c, grid, th, grid, tw).permute(0, 1, 3, 2, 4).reshape(n * c, grid, grid, area)
    hist = torch.zeros(n * c, grid, grid, 256, dtype=torch.int64)
    hist.scatter_add_(3, tiles.long(), torch.ones_like(tiles, dtype=torch.int64))  # (P, ty, tx, 256)
    limit = max(int(clip_limit * area / 256), 1) if clip_limit > 0 else 0
    if limit:
        clipped = (hist - limit).clamp(min=0).sum(dim=3, keepdim=True)
        batch = clipped // 256
        residual = clipped - batch * 256
        step = (256 // residual.clamp(min=1)).clamp(min=1)
        bins = torch.arange(256)
        hist = hist.clamp(max=limit) + batch + ((bins % step == 0) & (bins // step < residual)).long()
    lut_scale = torch.tensor(255.0, dtype=torch.float32) / area
    lut = (hist.cumsum(dim=3).float() * lut_scale).round().clamp(0, 255)  # (P, ty, tx, 256), integers
    half = torch.tensor(0.5, dtype=torch.float32)
    fy = torch.arange(h, dtype=torch.float32) * (torch.tensor(1.0, dtype=torch.float32) / th) - half
    fx = torch.arange(w, dtype=torch.float32) * (torch.tensor(1.0, dtype=torch.float32) / tw) - half
    y1, x1 = torch.floor(fy).long(), torch.floor(fx).long()
    ya, xa = fy - y1.float(), fx - x1.float()  # weights of the second tile
    y2, x2 = (y1 + 1).clamp(max=grid - 1), (x1 + 1).clamp(max=grid - 1)
    y1, x1 = y1.clamp(min=0), x1.clamp(min=0)
    plane = torch.arange(n * c)[:, None, None]
    value = x.reshape(n * c, h, w).long()

    def table(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        return lut[plane, ty[None, :, None], tx[None, None, :], value]  # (P, H, W)

    top = table(y1, x1) * (1.0 - xa) + table(y1, x2) * xa
    bottom = table(y2, x1) * (1.0 - xa) + table(y2, x2) * xa
    y = top * (1.0 - ya)[:, None] + bottom * ya[:, None]
    return y.round().clamp(0, 255).to(torch.uint8).reshape(n, c, h, w)


@dataclass(frozen=True)
class Equalize(Transformation):
    """``EqualizeTransformation``: histogram equalization of each channel of 8-bit images, OpenCV's
    ``equalizeHist`` (``Method=Standard``, :func:`equalize_hist`) or CLAHE (``Method=CLAHE``,
    :func:`clahe`, with ``CLAHE_ClipLimit`` and ``CLAHE_GridSize``)."""

    name: ClassVar[str] = "EqualizeTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        Key("Method", "enum", "Standard", "Standard (equalizeHist) or CLAHE", ("Standard", "CLAHE")),
        Key("CLAHE_ClipLimit", "float", 40.0, "CLAHE contrast limit"),
        Key("CLAHE_GridSize", "int", 8, "CLAHE tiles per side"),
    )
    method: str = "Standard"
    clahe_clip_limit: float = 40.0
    clahe_grid_size: int = 8

    def _validated(self, section: Section) -> Transformation:
        if self.clahe_grid_size < 1:
            raise section.error("CLAHE_GridSize", f"expected a positive number of tiles, found {self.clahe_grid_size}")
        if self.clahe_clip_limit < 0:
            raise section.error("CLAHE_ClipLimit", f"expected a limit >= 0, found {self.clahe_clip_limit}")
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise DataError(f"{self.name} equalizes 8-bit images; a transformation before it made the data float")
        if self.method == "CLAHE":
            return clahe(x, self.clahe_clip_limit, self.clahe_grid_size)
        return equalize_hist(x)


def _ranged(generator: torch.Generator | None, n: int, bounds: Sequence[float], probability: float,
            neutral: float) -> torch.Tensor:
    """n draws of U(bounds), each kept with ``probability`` (else ``neutral``): (n, 1, 1, 1) float64."""
    value = _uniform(generator, n, bounds[0], bounds[1])
    kept = torch.rand(n, generator=generator, dtype=torch.float64) < probability
    return torch.where(kept, value, torch.full_like(value, neutral)).view(n, 1, 1, 1)


@dataclass(frozen=True)
class RandomAffine(Transformation):
    """``RandomAffineTransformation``: per image, ``y = (g x + b) ^ gamma`` with a gain ``g``, a bias ``b``
    and a ``gamma`` drawn uniformly in ``GainRange``, ``BiasRange`` and ``GammaRange``, each drawn with its
    probability (``*VarProb``, else 1, 0, 1).

    The values are taken on [0, 1]: 8-bit data as ``p / 255`` and back to 8 bits rounded, float data as
    they are; ``g x + b`` is clamped to [0, 1] before the gamma. Random augmentation: qatrun draws from
    torch's generator, not N2D2's stream. N2D2's per-channel ranges (``GainRange[k]``...) and
    ``ChannelsMask`` are not implemented (strict mode reports them), nor ``DisjointGamma=1``.
    """

    name: ClassVar[str] = "RandomAffineTransformation"
    random: ClassVar[bool] = True
    keys: ClassVar[tuple[Key, ...]] = (
        Key("GainRange", "floats", (1.0, 1.0), "gain interval"),
        Key("BiasRange", "floats", (0.0, 0.0), "bias interval (on values in [0, 1])"),
        Key("GammaRange", "floats", (1.0, 1.0), "gamma interval"),
        Key("GainVarProb", "float", 1.0, "probability of drawing a gain"),
        Key("BiasVarProb", "float", 1.0, "probability of drawing a bias"),
        Key("GammaVarProb", "float", 1.0, "probability of drawing a gamma"),
        Key("DisjointGamma", "bool", False, "gamma or gain and bias, not both (only 0)"),
    )
    gain_range: tuple[float, ...] = (1.0, 1.0)
    bias_range: tuple[float, ...] = (0.0, 0.0)
    gamma_range: tuple[float, ...] = (1.0, 1.0)
    gain_var_prob: float = 1.0
    bias_var_prob: float = 1.0
    gamma_var_prob: float = 1.0
    disjoint_gamma: bool = False

    def _validated(self, section: Section) -> Transformation:
        for key, bounds in (("GainRange", self.gain_range), ("BiasRange", self.bias_range),
                            ("GammaRange", self.gamma_range)):
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise section.error(key, f"expected two numbers, min max, found {' '.join(map(str, bounds))}")
        if self.gamma_range[0] <= 0:
            raise section.error("GammaRange", f"a gamma must be positive, found {self.gamma_range[0]}")
        for key, p in (("GainVarProb", self.gain_var_prob), ("BiasVarProb", self.bias_var_prob),
                       ("GammaVarProb", self.gamma_var_prob)):
            if not 0.0 <= p <= 1.0:
                raise section.error(key, f"expected a probability in [0, 1], found {p}")
        if self.disjoint_gamma:
            raise section.error("DisjointGamma", "only 0 is implemented by qatrun")
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        gain = _ranged(generator, n, self.gain_range, self.gain_var_prob, 1.0)
        bias = _ranged(generator, n, self.bias_range, self.bias_var_prob, 0.0)
        gamma = _ranged(generator, n, self.gamma_range, self.gamma_var_prob, 1.0)
        eight_bit = x.dtype == torch.uint8
        v = x.double() / 255.0 if eight_bit else x.double()
        y = (gain * v + bias).clamp(0.0, 1.0) ** gamma
        return (y * 255.0).round().to(torch.uint8) if eight_bit else y.to(x.dtype)


def _u8(value: float) -> int:
    """A value as an 8-bit level: rounded half to even, saturated to [0, 255] (OpenCV's ``saturate_cast``)."""
    return min(max(round(value), 0), 255)


THRESHOLD_OPERATIONS = ("Binary", "BinaryInverted", "Truncate", "ToZero", "ToZeroInverted")


def otsu_threshold(image: torch.Tensor) -> int:
    """Otsu's threshold of one 8-bit plane: the level t maximising the between-class variance of the
    classes ``<= t`` and ``> t`` (the first such level; OpenCV's ``THRESH_OTSU``)."""
    hist = torch.bincount(image.flatten().long(), minlength=256).double()
    p = hist / hist.sum()
    levels = torch.arange(256, dtype=torch.float64)
    w0 = torch.cumsum(p, 0)
    mu0 = torch.cumsum(p * levels, 0)
    mu = mu0[-1]
    w1 = 1.0 - w0
    valid = (w0 > 1e-12) & (w1 > 1e-12)
    between = torch.where(valid, (mu * w0 - mu0) ** 2 / (w0 * w1).clamp(min=1e-300), torch.zeros_like(w0))
    return int(torch.argmax(between))


def threshold(x: torch.Tensor, thresh: float | torch.Tensor, max_value: float, operation: str) -> torch.Tensor:
    """``cv::threshold`` with a fixed level: ``src > thresh`` selects, per operation, ``max_value`` or 0
    (``Binary``, ``BinaryInverted``), ``thresh`` or ``src`` (``Truncate``), ``src`` or 0 (``ToZero``,
    ``ToZeroInverted``). On 8-bit data the level is ``floor(thresh)`` and the values ``round(max_value)``,
    saturated, as OpenCV's 8-bit path."""
    if x.dtype == torch.uint8:
        t = torch.floor(torch.as_tensor(thresh, dtype=torch.float64))
        high = _u8(max_value)
        top, level = torch.tensor(high, dtype=torch.uint8), t.clamp(0, 255).to(torch.uint8)
    else:
        t = torch.as_tensor(thresh, dtype=torch.float64)
        top, level = torch.tensor(max_value, dtype=x.dtype), t.to(x.dtype)
    above = x.double() > t
    zero = torch.zeros((), dtype=x.dtype)
    if operation == "Binary":
        return torch.where(above, top, zero)
    if operation == "BinaryInverted":
        return torch.where(above, zero, top)
    if operation == "Truncate":
        return torch.where(above, level, x)
    if operation == "ToZero":
        return torch.where(above, x, zero)
    assert operation == "ToZeroInverted", operation
    return torch.where(above, zero, x)


@dataclass(frozen=True)
class Threshold(Transformation):
    """``ThresholdTransformation``: OpenCV's ``threshold`` on each image, at ``Threshold`` or, with
    ``OtsuMethod=1``, at Otsu's level of the image (8-bit, one channel). Keeps the pixel type."""

    name: ClassVar[str] = "ThresholdTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        Key("Threshold", "float", 0.0, "the level (ignored with OtsuMethod=1)"),
        Key("OtsuMethod", "bool", False, "take each image's Otsu level instead"),
        Key("Operation", "enum", "Binary", "what each value becomes", THRESHOLD_OPERATIONS),
        Key("MaxValue", "float", 1.0, "the value of Binary and BinaryInverted"),
    )
    threshold: float = 0.0
    otsu_method: bool = False
    operation: str = "Binary"
    max_value: float = 1.0

    def _validated(self, section: Section) -> Transformation:
        if not self.otsu_method and not section.has("Threshold"):
            raise section.error("Threshold", "required key is missing (or write OtsuMethod=1)")
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.otsu_method:
            return threshold(x, self.threshold, self.max_value, self.operation)
        if x.dtype != torch.uint8 or x.shape[1] != 1:
            raise DataError(f"{self.name}: OtsuMethod=1 needs 8-bit images of one channel (found "
                            f"{'8-bit' if x.dtype == torch.uint8 else 'float'} data of {x.shape[1]} channels)")
        return torch.cat([threshold(image[None], otsu_threshold(image), self.max_value, self.operation)
                          for image in x])


@dataclass(frozen=True)
class RangeClipping(Transformation):
    """``RangeClippingTransformation``: every value clamped to [``RangeMin``, ``RangeMax``] (both required
    here); 8-bit data stay 8-bit (the bounds rounded, saturated)."""

    name: ClassVar[str] = "RangeClippingTransformation"
    pointwise: ClassVar[bool] = True
    keys: ClassVar[tuple[Key, ...]] = (
        Key("RangeMin", "float", doc="the lowest value kept"),
        Key("RangeMax", "float", doc="the highest value kept"),
    )
    range_min: float
    range_max: float

    def _validated(self, section: Section) -> Transformation:
        if self.range_min > self.range_max:
            raise section.error("RangeMax",
                                f"expected a value >= RangeMin ({self.range_min:g}), found {self.range_max:g}")
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.clamp(_u8(self.range_min), _u8(self.range_max))
        return x.clamp(self.range_min, self.range_max)


# N2D2's other image transformations (signal processing, morphology, noise): refused by name, saying what to do.
UNIMPLEMENTED_TRANSFORMATIONS = tuple(f"{name}Transformation" for name in (
    "Apodization", "CentroidCrop", "CompressionNoise", "DCT", "DFT", "Filter", "GradientFilter", "MagnitudePhase",
    "MorphologicalReconstruction", "Morphology", "Reshape", "StripeRemove", "Trim", "WallisFilter",
))

# Transformations of N2D2's segmentation labels: refused by name, saying why.
LABEL_TRANSFORMATIONS = ("LabelExtractionTransformation", "LabelFilterTransformation",
                         "LabelSliceExtractionTransformation", "ExpandLabelTransformation")

MATRIX_EXTENSIONS = (".bin",)


@dataclass(frozen=True)
class Affine(Transformation):
    """``AffineTransformation``: ``(x FirstOperator M1) SecondOperator M2``, element by element, with M1 and
    M2 matrices of the image's size read from files (``FirstValue`` / ``SecondValue``).

    A file is N2D2's ``BinaryCvMat`` (``.bin``, as ``StimuliData`` writes ``meanData.bin``) or an image
    (read as ``imread`` does: BGR, 8-bit values). Relative paths are relative to the current folder, as in
    N2D2. ``<StimuliData section>/meanData.bin`` and ``/stdDevData.bin`` of a ``StimuliData`` section
    written earlier with ``MeanData=1`` / ``StdDevData=1`` are the images that section computed
    (:meth:`bind`). A one-channel matrix applies to every channel. Computed in float64, result float32.
    """

    name: ClassVar[str] = "AffineTransformation"
    keys: ClassVar[tuple[Key, ...]] = (
        Key("FirstOperator", "enum", doc="Plus, Minus, Multiplies or Divides", choices=OPERATORS),
        Key("FirstValue", "path", doc="file of the first matrix (.bin or an image)"),
        Key("SecondOperator", "enum", "Plus", "operator applied after the first", OPERATORS),
        Key("SecondValue", "path", "", "file of the second matrix (empty: no second operation)"),
    )
    first_operator: str
    first_value: str
    second_operator: str = "Plus"
    second_value: str = ""
    matrices: tuple[torch.Tensor, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_section(cls, section: Section) -> Transformation:
        values = [section.read(key) for key in cls.keys]
        if not values[1]:
            raise section.error("FirstValue", "expected the file of a matrix, found nothing")
        return cls(*values)

    def output_float(self, is_float: bool) -> bool:
        return True

    def operands(self) -> tuple[tuple[str, str], ...]:
        """``(operator, file)`` pairs, in order."""
        pairs = ((self.first_operator, self.first_value), (self.second_operator, self.second_value))
        return tuple((op, path) for op, path in pairs if path)

    def bind(self, computed: dict[str, torch.Tensor]) -> Affine:
        """The transformation with its matrices: images ``StimuliData`` computed, else the files.

        Raises:
            DataError: a file that does not exist or cannot be read.
        """
        matrices = []
        for _, written in self.operands():
            key = os.path.normpath(written)
            if key in computed:
                matrices.append(computed[key])
                continue
            path = Path(written)
            if not path.is_file():
                raise DataError(f"{self.name}: no such matrix file: {written} (relative paths are relative to the "
                                "current folder; a StimuliData section makes <section>/meanData.bin with MeanData=1)")
            is_mat = path.suffix.lower() in MATRIX_EXTENSIONS
            matrices.append(read_binary_mat(path) if is_mat else read_image(path).double())
        return dataclasses.replace(self, matrices=tuple(matrices))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        assert len(self.matrices) == len(self.operands()), "AffineTransformation used before bind()"
        y = x.double()
        for (op, path), m in zip(self.operands(), self.matrices):
            c, h, w = x.shape[1:]
            if m.shape[0] not in (1, c) or tuple(m.shape[1:]) != (h, w):
                size = "x".join(map(str, m.shape))
                raise DataError(f"{self.name}: the matrix of {path} is {size} (C x H x W), the stimuli are "
                                f"{c}x{h}x{w} at this point")
            y = affine_step(y, op, m)
        return y.float()


def affine_step(y: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    """``y op m`` element by element, ``m`` (C or 1, H, W) broadcast over the batch (float64)."""
    if op == "Plus":
        return y + m
    if op == "Minus":
        return y - m
    if op == "Multiplies":
        return y * m
    return y / m


TRANSFORMATIONS: dict[str, type[Transformation]] = {
    cls.name: cls
    for cls in (
        Rescale,
        PadCrop,
        SliceExtraction,
        RandomResizeCrop,
        Flip,
        ColorSpace,
        RangeAffine,
        Normalize,
        Distortion,
        ChannelExtraction,
        Affine,
        Equalize,
        RandomAffine,
        Threshold,
        RangeClipping,
    )
}
"""Registry: the ``Type=`` value -> the transformation class."""


def transformation_from_section(section: Section) -> tuple[Transformation, str]:
    """Reads a ``<sp>.Transformation*`` section.

    Returns:
        ``(transformation, apply_to)``.

    Raises:
        ConfigError: unknown ``Type`` (listing the valid ones) or a bad key.
    """
    kind = section.read(TYPE)
    if kind in LABEL_TRANSFORMATIONS:
        raise section.error("Type", f"{kind} transforms the pixel-wise labels of N2D2's segmentation; qatrun trains "
                            "rate-based classifiers")
    if kind in UNIMPLEMENTED_TRANSFORMATIONS:
        raise section.error("Type", f"{kind} is an N2D2 transformation qatrun does not implement: apply it to the "
                            "images beforehand (and read them with DIR_Database), or remove this section")
    cls = TRANSFORMATIONS.get(kind)
    if cls is None:
        raise section.error("Type", f'unknown transformation "{kind}"; qatrun implements: {", ".join(TRANSFORMATIONS)}')
    apply_to = section.read(APPLY_TO)
    return cls.from_section(section), apply_to
