"""Transformations: exact small cases against plain references written from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qatrun.data import transforms as T
from qatrun.data.resize import resize_bilinear
from qatrun.errors import ConfigError
from tests.data.helpers import doc


def u8(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------
# Resize


def opencv_linear_u8_reference(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv::resize(INTER_LINEAR) on one uint8 gray image, pixel by pixel (see qatrun/data/resize.py)."""
    h, w = img.shape

    def coefficients(src: int, dst: int, clamp: bool) -> list[tuple[int, int, int, int]]:
        scale = 1.0 / (dst / src)
        out = []
        for d in range(dst):
            f = np.float32((d + 0.5) * scale - 0.5)
            s = math.floor(f)
            f = np.float32(f - np.float32(s))
            if clamp and (s < 0 or s >= src - 1):
                f = np.float32(0.0)
            w0 = int(np.rint(np.float32(np.float32(1.0) - f) * np.float32(2048)))
            w1 = int(np.rint(f * np.float32(2048)))
            out.append((min(max(s, 0), src - 1), min(max(s + 1, 0), src - 1), w0, w1))
        return out

    cols, rows = coefficients(w, width, True), coefficients(h, height, False)
    horizontal = [[int(img[y, x0]) * a0 + int(img[y, x1]) * a1 for (x0, x1, a0, a1) in cols] for y in range(h)]
    out = np.zeros((height, width), np.uint8)
    for i, (y0, y1, b0, b1) in enumerate(rows):
        for j in range(width):
            acc = (((horizontal[y0][j] >> 4) * b0) >> 16) + (((horizontal[y1][j] >> 4) * b1) >> 16)
            out[i, j] = min(255, max(0, (acc + 2) >> 2))
    return out


@pytest.mark.parametrize(
    "src, dst",
    [((28, 28), (32, 32)), ((5, 7), (3, 4)), ((4, 4), (9, 6)), ((6, 6), (3, 3)), ((1, 5), (3, 2)), ((7, 3), (7, 3))],
)
def test_resize_u8_matches_the_plain_reference(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = u8((2, 1, *src), seed=sum(src))
    out = resize_bilinear(x, *dst)
    assert out.dtype == torch.uint8 and out.shape == (2, 1, *dst)
    for k in range(2):
        assert np.array_equal(out[k, 0].numpy(), opencv_linear_u8_reference(x[k, 0].numpy(), *dst))


def test_resize_u8_channels_are_independent() -> None:
    x = u8((3, 3, 9, 11), seed=5)
    out = resize_bilinear(x, 13, 6)
    for c in range(3):
        assert torch.equal(out[:, c : c + 1], resize_bilinear(x[:, c : c + 1].contiguous(), 13, 6))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(1, 30), st.integers(1, 30), st.integers(0, 255))
def test_resize_u8_properties(h: int, w: int, height: int, width: int, value: int) -> None:
    constant = torch.full((1, 1, h, w), value, dtype=torch.uint8)
    assert torch.equal(
        resize_bilinear(constant, height, width), torch.full((1, 1, height, width), value, dtype=torch.uint8)
    )
    x = u8((1, 1, h, w), seed=h * 31 + w)
    fixed = resize_bilinear(x, height, width).int()
    exact = F.interpolate(x.double(), size=(height, width), mode="bilinear", align_corners=False).round().int()
    assert (fixed - exact).abs().max() <= 1  # truncations of the fixed point cost at most one level


def test_resize_float_is_bilinear() -> None:
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    ref = F.interpolate(x, size=(5, 12), mode="bilinear", align_corners=False)
    # OpenCV's weights are float32 even for double images: agreement to float32 precision
    torch.testing.assert_close(resize_bilinear(x, 5, 12), ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Borders, PadCrop, Rescale sizes


@pytest.mark.parametrize(
    "border, expected",
    [
        ("ReplicateBorder", [0, 0, 0, 0, 1, 2, 3, 3, 3]),
        ("ReflectBorder", [2, 1, 0, 0, 1, 2, 3, 3, 2]),
        ("MinusOneReflectBorder", [3, 2, 1, 0, 1, 2, 3, 2, 1]),
        ("WrapBorder", [1, 2, 3, 0, 1, 2, 3, 0, 1]),
        ("ConstantBorder", [-1, -1, -1, 0, 1, 2, 3, -1, -1]),
    ],
)
def test_border_indices(border: str, expected: list[int]) -> None:
    assert T.border_indices(4, 3, 2, border).tolist() == expected


@pytest.mark.parametrize(
    "size, width, height, border, additive, expected_shape",
    [((5, 7), 3, 3, "ConstantBorder", False, (3, 3)), ((3, 3), 6, 5, "ReplicateBorder", False, (5, 6)),
     ((4, 6), 2, 8, "MinusOneReflectBorder", False, (8, 2)), ((4, 4), 2, 2, "ReflectBorder", True, (6, 6))],
)  # fmt: skip
def test_pad_crop_centres(
    size: tuple[int, int], width: int, height: int, border: str, additive: bool, expected_shape: tuple[int, int]
) -> None:
    x = u8((2, 1, *size), seed=1)
    out = T.PadCrop(width, height, border, (7.0,), additive)(x)
    assert out.shape[-2:] == expected_shape
    h, w = size
    H, W = expected_shape
    # plain reference: crop offsets (h - H) // 2, then pad with left/top (W - w) // 2 using numpy's modes
    ref = x[0, 0].numpy()[max(0, (h - H) // 2) :][:H, max(0, (w - W) // 2) :][:, :W]
    ph, pw = H - ref.shape[0], W - ref.shape[1]
    mode = {
        "ConstantBorder": "constant",
        "ReplicateBorder": "edge",
        "ReflectBorder": "symmetric",
        "MinusOneReflectBorder": "reflect",
    }[border]
    pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    ref = np.pad(ref, pad, mode=mode, **({"constant_values": 7} if mode == "constant" else {}))
    assert np.array_equal(out[0, 0].numpy(), ref)


def test_pad_crop_mean_border_is_per_image_and_channel() -> None:
    x = torch.tensor([[[[0, 2], [4, 8]], [[1, 1], [1, 1]]]], dtype=torch.uint8)  # means 3.5 -> 4 (half even), 1
    out = T.PadCrop(4, 2, "MeanBorder")(x)
    assert out[0, 0].tolist() == [[4, 0, 2, 4], [4, 4, 8, 4]]
    assert out[0, 1].tolist() == [[1, 1, 1, 1]] * 2


@pytest.mark.parametrize(
    "shape, keep, fit, expected",
    [
        ((1, 28, 28), False, True, (1, 32, 40)),
        ((3, 375, 500), True, False, (3, 256, 341)),
        ((3, 375, 500), True, True, (3, 240, 320)),
    ],
)
def test_rescale_output_shape(
    shape: tuple[int, int, int], keep: bool, fit: bool, expected: tuple[int, int, int]
) -> None:
    t = T.Rescale(40, 32, keep, fit) if not keep else T.Rescale(320 if fit else 256, 240 if fit else 256, keep, fit)
    assert t.output_shape(shape) == expected


def test_rescale_keep_aspect_ratio_runs_the_factor() -> None:
    x = u8((1, 1, 6, 8), seed=2)
    out = T.Rescale(4, 4, keep_aspect_ratio=True, resize_to_fit=True)(x)
    assert out.shape == (1, 1, 3, 4) and torch.equal(out, resize_bilinear(x, 3, 4, 0.5, 0.5))


# ---------------------------------------------------------------------------------------------------
# Slices, crops, flips


def test_slice_extraction_fixed_offset() -> None:
    x = u8((2, 3, 8, 9), seed=3)
    out = T.SliceExtraction(4, 3, offset_x=2, offset_y=5)(x)
    assert torch.equal(out, x[:, :, 5:8, 2:6])


def test_slice_extraction_random_offsets_are_windows() -> None:
    x = u8((64, 1, 10, 10), seed=4)
    t = T.SliceExtraction(4, 4, random_offset_x=True, random_offset_y=True)
    assert t.random
    out = t(x, torch.Generator().manual_seed(0))
    again = t(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    offsets = set()
    for k in range(64):
        found = [(i, j) for i in range(7) for j in range(7) if torch.equal(out[k], x[k, :, i : i + 4, j : j + 4])]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 20


def test_slice_extraction_padding_and_errors() -> None:
    x = u8((1, 1, 4, 4), seed=5)
    out = T.SliceExtraction(3, 3, offset_x=2, offset_y=2, allow_padding=True, border_type="ConstantBorder")(x)
    assert out[0, 0].tolist() == [[x[0, 0, 2, 2], x[0, 0, 2, 3], 0], [x[0, 0, 3, 2], x[0, 0, 3, 3], 0], [0, 0, 0]]
    with pytest.raises(Exception, match="leaves the image of length 4"):
        T.SliceExtraction(3, 3, offset_x=2)(x)


def test_slice_extraction_zero_rotation_scaling_is_the_slice() -> None:
    x = u8((2, 1, 9, 9), seed=6)
    t = T.SliceExtraction(
        5,
        5,
        2,
        1,
        random_rotation=True,
        random_rotation_range=(0.0, 0.0),
        random_scaling=True,
        random_scaling_range=(1.0, 1.0),
    )
    assert torch.equal(t(x, torch.Generator().manual_seed(0)), x[:, :, 1:6, 2:7])


def test_flip_fixed_and_random() -> None:
    x = u8((200, 1, 3, 4), seed=7)
    assert torch.equal(T.Flip(horizontal=True)(x), x.flip(-1))
    assert torch.equal(T.Flip(vertical=True)(x), x.flip(-2))
    out = T.Flip(random_horizontal=True)(x, torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(out[k], x[k].flip(-1)) for k in range(200)])
    kept = torch.tensor([torch.equal(out[k], x[k]) for k in range(200)])
    assert bool((flipped | kept).all()) and 70 < int(flipped.sum()) < 130


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 40), st.integers(4, 40), st.floats(0.05, 1.0), st.floats(0.5, 2.0), st.integers(0, 1000))
def test_random_resize_crop_boxes_lie_inside(h: int, w: int, scale_min: float, ratio_max: float, seed: int) -> None:
    t = T.RandomResizeCrop(8, 8, scale_min, 1.0, 0.5, max(0.5, ratio_max))
    top, left, bh, bw = t.boxes(16, h, w, torch.Generator().manual_seed(seed)).unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (bh >= 1) & (bw >= 1) & (top + bh <= h) & (left + bw <= w)).all())


def test_random_resize_crop_full_box_is_a_resize() -> None:
    x = torch.rand(3, 2, 6, 6)
    out = T.RandomResizeCrop(4, 4)(x, torch.Generator().manual_seed(0))  # scale 1, ratio 1: the whole image
    torch.testing.assert_close(
        out, F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False), rtol=0, atol=1e-5
    )


def test_random_resize_crop_samples_only_inside_its_box() -> None:
    x = torch.zeros(1, 1, 8, 8)
    t = T.RandomResizeCrop(6, 6, 0.25, 0.25)  # a 4 x 4 box, upscaled
    top, left, bh, bw = t.boxes(1, 8, 8, torch.Generator().manual_seed(3))[0].tolist()
    x[..., top : top + bh, left : left + bw] = 1.0
    assert torch.equal(t(x, torch.Generator().manual_seed(3)), torch.ones(1, 1, 6, 6))


def test_distortion_without_amplitude_is_identity() -> None:
    x = u8((3, 2, 7, 5), seed=8)
    assert torch.equal(T.Distortion()(x, torch.Generator().manual_seed(0)), x)
    moved = T.Distortion(elastic_scaling=3.0, rotation=10.0, scaling=5.0)(x, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and not torch.equal(moved, x)


# ---------------------------------------------------------------------------------------------------
# Pointwise transformations


@pytest.mark.parametrize(
    "first, second, truncate, expected",
    [
        # float32 with OpenCV's scalar rules: "/ v" multiplies by float(1 / v)
        (("Divides", (255.0,)), None, False, [0.0, float(np.float32(10) * np.float32(1 / 255)), 1.0]),
        (("Minus", (128.0,)), ("Divides", (128.0,)), False, [-1.0, -118 / 128, 127 / 128]),
        (("Multiplies", (2.0,)), ("Plus", (-3.0,)), True, [0, 17, 255]),
        (
            ("Divides", (3.0,)),
            ("Multiplies", (0.1,)),
            False,
            [0.0, *(float(np.float32(np.float32(v) * np.float32(1 / 3)) * np.float32(0.1)) for v in (10, 255))],
        ),
    ],
)
def test_range_affine_table(first, second, truncate, expected) -> None:
    x = torch.tensor([0, 10, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = T.range_affine(x, first, second, truncate)
    assert out.dtype == (torch.uint8 if truncate else torch.float32)
    assert out.flatten().tolist() == torch.tensor(expected, dtype=out.dtype).tolist()


def test_range_affine_per_channel_in_current_order() -> None:
    x = torch.ones(1, 3, 1, 1)
    t = T.RangeAffine("Minus", (0.1, 0.2, 0.3), "Divides", (1.0, 2.0, 4.0))
    f = np.float32
    expected = [float((f(1) - f(v)) * f(1 / d)) for v, d in ((0.1, 1.0), (0.2, 2.0), (0.3, 4.0))]
    assert t(x).flatten().tolist() == expected


@pytest.mark.parametrize("norm", ["L1", "L2", "Linf", "MinMax"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_normalize_table(norm: str, per_channel: bool) -> None:
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]]]])
    out = T.normalize(x, norm, 2.0, -1.0, 1.0, per_channel).double()
    groups = [x[0, 0].flatten().double(), x[0, 1].flatten().double()] if per_channel else [x.flatten().double()]
    results = [out[0, 0].flatten(), out[0, 1].flatten()] if per_channel else [out.flatten()]
    for values, result in zip(groups, results):
        if norm == "MinMax":
            span = float(values.max() - values.min())
            ref = torch.full_like(values, -1.0) if span == 0 else (values - values.min()) / span * 2 - 1
        else:
            n = {"L1": values.abs().sum(), "L2": values.norm(), "Linf": values.abs().max()}[norm]
            ref = values * 2.0 / n
        torch.testing.assert_close(result, ref.float().double(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "bgr, hsv, ycrcb, gray",
    [
        # expected values: cv2.cvtColor of OpenCV 4.6 (BGR2HSV, BGR2YCrCb, BGR2GRAY)
        ((0, 0, 255), (0, 255, 255), (76, 255, 85), 76),
        ((0, 255, 0), (60, 255, 255), (150, 21, 43), 150),
        ((255, 0, 0), (120, 255, 255), (29, 107, 255), 29),
        ((90, 90, 90), (0, 0, 90), (90, 128, 128), 90),
        ((10, 200, 30), (57, 242, 200), (128, 58, 61), 128),
    ],
)
def test_color_conversions_8bit(bgr, hsv, ycrcb, gray) -> None:
    x = torch.tensor(bgr, dtype=torch.uint8).view(1, 3, 1, 1)
    assert T.bgr_to_hsv(x).flatten().tolist() == list(hsv)
    assert T.bgr_to_ycrcb(x).flatten().tolist() == list(ycrcb)
    assert T.bgr_to_gray(x).flatten().tolist() == [gray]
    assert T.ChannelExtraction("Gray")(x).flatten().tolist() == [gray]
    assert T.ChannelExtraction("Red")(x).flatten().tolist() == [bgr[2]]
    assert T.ChannelExtraction("Cb")(x).flatten().tolist() == [ycrcb[2]]
    assert T.ChannelExtraction("Saturation")(x).flatten().tolist() == [hsv[1]]


def test_ycrcb_formula_against_plain_reference() -> None:
    x = u8((1, 3, 8, 8), seed=9)
    out = T.bgr_to_ycrcb(x)
    for b, g, r, (y, cr, cb) in zip(*(x[0, k].flatten().tolist() for k in range(3)), out[0].reshape(3, -1).T.tolist()):
        ref_y = (b * 1868 + g * 9617 + r * 4899 + 8192) >> 14
        assert (y, cr, cb) == (ref_y, min(255, max(0, ((r - ref_y) * 11682 + (128 << 14) + 8192) >> 14)),
                               min(255, max(0, ((b - ref_y) * 9241 + (128 << 14) + 8192) >> 14)))  # fmt: skip
    back = T.ycrcb_to_bgr(out).int()
    assert (back - x.int()).abs().max() <= 2


def test_color_space_swaps_and_gray_expansion() -> None:
    x = u8((2, 3, 2, 2), seed=10)
    assert torch.equal(T.ColorSpace("RGB")(x), x.flip(1))
    assert torch.equal(T.ColorSpace("RGB_to_BGR")(x), x.flip(1))
    gray = u8((2, 1, 2, 2), seed=11)
    assert torch.equal(T.ColorSpace("BGR")(gray), gray.expand(-1, 3, -1, -1))
    hsv = T.ColorSpace("HSV")(x)
    assert (T.hsv_to_bgr(hsv).int() - x.int()).abs().max() <= 4


def test_hsv_float_range() -> None:
    pixels = torch.tensor(
        [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]
    )  # BGR: red, green, blue, gray
    hsv = T.bgr_to_hsv(pixels.view(4, 3, 1, 1))[:, :, 0, 0]
    assert hsv.tolist() == [[0.0, 1.0, 1.0], [120.0, 1.0, 1.0], [240.0, 1.0, 1.0], [0.0, 0.0, 0.5]]


# ---------------------------------------------------------------------------------------------------
# INI reading and ApplyTo


@pytest.mark.parametrize(
    "apply_to, expected",
    [
        ("All", "LVT"),
        ("LearnOnly", "L"),
        ("ValidationOnly", "V"),
        ("TestOnly", "T"),
        ("NoLearn", "VT"),
        ("NoValidation", "LT"),
        ("NoTest", "LV"),
    ],
)
def test_applies_to(apply_to: str, expected: str) -> None:
    assert "".join(p[0] for p in ("Learn", "Validation", "Test") if T.applies_to(apply_to, p)) == expected


def test_transformation_from_section_reads_every_key() -> None:
    d = doc(
        """
        [t]
        Type=SliceExtractionTransformation
        Width=24
        Height=20
        OffsetX=$(8 // 2)
        RandomOffsetY=1
        ApplyTo=LearnOnly
        """
    )
    t, apply_to = T.transformation_from_section(d.section("t"))
    assert (t, apply_to) == (T.SliceExtraction(24, 20, offset_x=4, random_offset_y=True), "LearnOnly")
    assert d.section("t").unconsumed() == []


@pytest.mark.parametrize(
    "body, message",
    [
        ("Type=Rescale\n", 't.ini:2: [t] Type: unknown transformation "Rescale"; qatrun implements: ' + ", ".join(T.TRANSFORMATIONS)),
        ("Type=RescaleTransformation\nWidth=32\n", "t.ini:1: [t] Height: required key is missing"),
        ("Type=RescaleTransformation\nWidth=32\nHeight=0\n", "t.ini:4: [t] Height: must be positive"),
        ("Type=FlipTransformation\nApplyTo=Learn\n", 't.ini:3: [t] ApplyTo: expected one of ' + ", ".join(T.APPLY_TO_CHOICES) + ', found "Learn"'),
        ("Type=ColorSpaceTransformation\nColorSpace=CIELab\n",
         "t.ini:3: [t] ColorSpace: CIELab is not implemented by qatrun; supported: " + ", ".join(T.COLOR_CONVERSIONS)),
        ("Type=RangeAffineTransformation\nFirstOperator=Divide\nFirstValue=255\n",
         't.ini:3: [t] FirstOperator: expected one of Plus, Minus, Multiplies, Divides, found "Divide"'),
    ],
)  # fmt: skip
def test_transformation_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        T.transformation_from_section(doc("[t]\n" + body).section("t"))
    assert str(info.value) == message
