"""Bilinear resizing exactly as OpenCV's ``cv::resize(..., INTER_LINEAR)`` computes it.

Design note
-----------
N2D2 transforms images with OpenCV in their own pixel type, so a ``RescaleTransformation`` of 8-bit
MNIST is ``cv::resize`` with ``INTER_LINEAR`` on ``uint8`` and yields ``uint8``. A float bilinear
interpolation rounded back to integers differs from it by one level on some pixels (7 and 23 pixels of
the two golden images of ``golden/n2d2-lenet-8b``), which is enough to flip a quantized activation. So
qatrun reproduces OpenCV's fixed-point algorithm (``imgproc/src/resize.cpp``, ``resizeGeneric_`` with
``HResizeLinear`` / ``VResizeLinear`` and the SIMD kernel ``VResizeLinearVec_32s8u``):

* Source coordinate of destination pixel ``d`` (half-pixel centres, no antialiasing), per axis::

      scale = 1 / (dst / src)                      # double, as cv::resize derives it
      f     = float32((d + 0.5) * scale - 0.5)
      s     = floor(f);  f = f - s                 # float32
      a0    = rint(float32(1 - f) * 2048)          # INTER_RESIZE_COEF_BITS = 11, half to even
      a1    = rint(f * 2048)

  Columns that fall outside the image are clamped with ``f = 0`` (``a0 = 2048``); rows are clamped by
  index only (their weights stay as computed, which gives the same result).
* Horizontal pass, exact integers: ``D[x] = a0 * S[s] + a1 * S[s + 1]`` (a float32 matmul, exact).
* Vertical pass, as the SIMD kernel rounds it (16-bit multiply-high, then a rounding shift by 2)::

      out = (((D0 >> 4) * b0 >> 16) + ((D1 >> 4) * b1 >> 16) + 2) >> 2,  saturated to [0, 255]

  This is not the exact rounding of the bilinear value: both products are truncated before the sum.

Checked against ``opencv-python-headless`` 4.6.0 (the OpenCV version N2D2 was built with for the golden
data) on 2 000 MNIST images at nine output sizes and on 300 random (size, channels) cases, up- and
down-scaling, 1 and 3 channels: every pixel equal. The golden ``env.dat`` of both test images is
reproduced on all 1 024 pixels (see ``tests/data/test_data_real.py``).

Float images take OpenCV's float path: the same coordinates, weights ``1 - f`` and ``f`` in float32,
``D0 * b0 + D1 * b1``, no rounding to integers. Bit-exact against OpenCV 4.6 without IPP (100 random
cases), which is how Debian builds it (the golden data's gcc 12.2 + OpenCV 4.6.0 is Debian 12's
toolchain); an IPP build differs by up to 2e-6 on [0, 1] data. Equal to
``interpolate(mode="bilinear", align_corners=False)`` up to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS
# Images per chunk of the 8-bit path: bounds the int32 intermediates to a few tens of MB.
_CHUNK = 8192


def _axis_coefficients(src: int, dst: int, inv_scale: float, clamp_weights: bool) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of one axis, computed in OpenCV's float32/double mix.

    Args:
        src: source length.
        dst: destination length.
        inv_scale: OpenCV's ``inv_scale`` (``fx``): ``dst / src`` unless a factor was given.
        clamp_weights: whether out-of-range positions get weights (1, 0) (columns) or keep theirs
            (rows, which OpenCV clamps by index only).

    Returns:
        ``(i0, i1, f)``: int64 indices and the float32 fraction ``f`` (weights ``1 - f`` and ``f``).
    """
    scale = 1.0 / inv_scale
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)
    s = s.astype(np.int64)
    if clamp_weights:
        f[(s < 0) | (s >= src - 1)] = 0.0
    i0 = torch.from_numpy(np.clip(s, 0, src - 1))
    i1 = torch.from_numpy(np.clip(s + 1, 0, src - 1))
    return i0, i1, torch.from_numpy(f)


def _fixed_point(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """11-bit weights ``rint(float32(1 - f) * 2048)``, ``rint(f * 2048)`` (half to even), int32."""
    w0 = torch.round((1.0 - f) * COEF_SCALE).to(torch.int32)
    w1 = torch.round(f * COEF_SCALE).to(torch.int32)
    return w0, w1


def _horizontal_matrix(cols: tuple[torch.Tensor, ...], w: int) -> torch.Tensor:
    """(w, W) float32 matrix of the 11-bit column weights: ``D = S @ A`` is the horizontal pass.

    Exact in float32: each output sums two products below 255 * 2048, and every partial sum is an
    integer below 2**24.
    """
    x0, x1, fx = cols
    a0, a1 = _fixed_point(fx)
    out = torch.arange(len(x0))
    matrix = torch.zeros(w, len(x0))
    matrix.index_put_((x0, out), a0.float(), accumulate=True)
    matrix.index_put_((x1, out), a1.float(), accumulate=True)
    return matrix


def _resize_u8_chunk(x: torch.Tensor, matrix: torch.Tensor, rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """OpenCV's fixed-point bilinear resize of a chunk of uint8 images (N, C, h, w)."""
    y0, y1, fy = rows
    b0, b1 = _fixed_point(fy)
    horizontal = x.float() @ matrix  # (N, C, h, W), units of 1/2048, exact integers
    # >> 4 then the 16-bit multiply-high of the SIMD kernel; the pack to int16 never saturates
    shifted = horizontal.mul_(1.0 / 16).floor_().to(torch.int32)
    top = shifted.index_select(-2, y0).mul_(b0[:, None]).bitwise_right_shift_(16)  # (N, C, H, W)
    bottom = shifted.index_select(-2, y1).mul_(b1[:, None]).bitwise_right_shift_(16)
    return top.add_(bottom).add_(2).bitwise_right_shift_(2).clamp_(0, 255).to(torch.uint8)


def _resize_float(x: torch.Tensor, cols: tuple[torch.Tensor, ...], rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """OpenCV's float bilinear resize: the same coordinates, weights ``1 - f`` and ``f`` in float."""
    x0, x1, fx = cols
    y0, y1, fy = rows
    fx, fy = fx.to(x.dtype), fy.to(x.dtype)[:, None]
    horizontal = x[..., x0] * (1 - fx) + x[..., x1] * fx  # (N, C, h, W)
    return horizontal[..., y0, :] * (1 - fy) + horizontal[..., y1, :] * fy


def resize_bilinear(
    x: torch.Tensor, height: int, width: int, fx: float | None = None, fy: float | None = None
) -> torch.Tensor:
    """Resizes a batch of images as ``cv::resize(INTER_LINEAR)`` does in their pixel type.

    Args:
        x: (N, C, h, w) images, ``uint8`` (fixed-point path, result ``uint8``) or floating point.
        height: output height.
        width: output width.
        fx: OpenCV's horizontal factor when the resize was asked as a factor (``Size()``, fx, fy);
            ``None``: ``width / w``, as when a size is given.
        fy: the vertical factor likewise.

    Returns:
        (N, C, height, width) images of the dtype of ``x``.
    """
    assert x.dim() == 4 and height > 0 and width > 0, (tuple(x.shape), height, width)
    n, c, h, w = x.shape
    if (h, w) == (height, width):
        return x  # cv::resize copies
    if n == 0:
        return x.new_empty((0, c, height, width))
    cols = _axis_coefficients(w, width, fx if fx is not None else width / w, clamp_weights=True)
    rows = _axis_coefficients(h, height, fy if fy is not None else height / h, clamp_weights=False)
    if x.dtype != torch.uint8:
        return _resize_float(x, cols, rows)
    matrix = _horizontal_matrix(cols, w)
    chunks = [_resize_u8_chunk(chunk, matrix, rows) for chunk in x.split(_CHUNK)]
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]
