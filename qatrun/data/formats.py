"""Readers of the on-disk formats: IDX (MNIST), CIFAR binary records, image files.

Every reader returns ``uint8`` tensors laid out (N, C, H, W) and ``int64`` labels. Colour images are
kept in **BGR** channel order, the order OpenCV (hence N2D2) gives them: N2D2's per-channel
``RangeAffine`` values are written for that order, and ``ColorSpaceTransformation ColorSpace=RGB``
turns them into RGB for torchvision-style models.

Malformed files raise :class:`~qatrun.errors.DataError` naming the file and what was wrong.

IDX and CIFAR files are decoded once per process: the decoded tensors are kept in memory, keyed by the
file's path, size and modification time (a second provider, or a test after a training run, reads no
file again). Callers must not modify the returned tensors in place.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qatrun.errors import DataError, Location

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
CIFAR_IMAGE_BYTES = 3 * 32 * 32


_DECODED: dict[tuple[Any, ...], Any] = {}


def _cached(reader: Callable[..., Any], path: Path, *args: Any) -> Any:
    """``reader(path, *args)``, computed once per (file version, arguments) in this process."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}", Location(str(path))) from None
    key = (reader.__name__, str(path.resolve()), stat.st_size, stat.st_mtime_ns, *args)
    if key not in _DECODED:
        _DECODED[key] = reader(path, *args)
    return _DECODED[key]


def _read_bytes(path: Path) -> bytes:
    """Reads a file, decompressing it if its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, corrupt deflate stream, CRC
        raise DataError(f"cannot read {path}: {_reason(exc)}", Location(str(path))) from None


def _reason(exc: BaseException) -> str:
    """What went wrong, for a message (gzip's ``EOFError`` comes with a bare text)."""
    if isinstance(exc, EOFError):
        return f"the gzip stream is truncated ({exc})"
    if isinstance(exc, zlib.error):
        return f"the gzip stream is corrupt ({exc})"
    return str(exc)


def _idx_header(data: bytes, path: Path, magic: int) -> list[int]:
    """Checks the IDX magic number and returns the dimensions."""
    if len(data) < 8:
        raise DataError(f"{path} is not an IDX file (only {len(data)} bytes)", Location(str(path)))
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file of the expected kind: magic number {found}, expected {magic}",
            Location(str(path)),
        )
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{path} has {len(data)} bytes, its IDX header {dims} announces {expected}", Location(str(path))
        )
    return dims


def read_idx_images(path: Path) -> torch.Tensor:
    """Reads an IDX3 image file (raw or ``.gz``), once per process.

    Args:
        path: the file.

    Returns:
        (N, 1, H, W) uint8 (shared: do not modify in place).
    """
    return _cached(_decode_idx_images, path)


def _decode_idx_images(path: Path) -> torch.Tensor:
    data = _read_bytes(path)
    count, height, width = _idx_header(data, path, IDX_IMAGES_MAGIC)
    pixels = np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, height, width)
    return torch.from_numpy(pixels.copy())


def read_idx_labels(path: Path) -> torch.Tensor:
    """Reads an IDX1 label file (raw or ``.gz``), once per process.

    Args:
        path: the file.

    Returns:
        (N,) int64 (shared: do not modify in place).
    """
    return _cached(_decode_idx_labels, path)


def _decode_idx_labels(path: Path) -> torch.Tensor:
    data = _read_bytes(path)
    _idx_header(data, path, IDX_LABELS_MAGIC)
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=8).astype(np.int64))


def idx_count(path: Path) -> int:
    """Number of items of an IDX file, from its header only (a raw file is not read further)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                head = stream.read(8)
        else:
            with open(path, "rb") as stream:
                head = stream.read(8)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {_reason(exc)}", Location(str(path))) from None
    if len(head) < 8:
        raise DataError(f"{path} is not an IDX file (only {len(head)} bytes)", Location(str(path)))
    return int.from_bytes(head[4:8], "big")


def read_cifar(path: Path, label_bytes: int, label_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads a CIFAR binary file: records of ``label_bytes`` label bytes then 3072 pixel bytes.

    The pixels of a record are the R, G and B planes of a 32 x 32 image, each row-major; they are
    returned in BGR order (see the module docstring).

    Args:
        path: the file (``data_batch_1.bin``, ``train.bin``, ...).
        label_bytes: 1 for CIFAR-10, 2 for CIFAR-100 (coarse, fine).
        label_index: which label byte to keep.

    Returns:
        ``(images (N, 3, 32, 32) uint8 BGR, labels (N,) int64)`` (shared: do not modify in place).
    """
    return _cached(_decode_cifar, path, label_bytes, label_index)


def _decode_cifar(path: Path, label_bytes: int, label_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = _read_bytes(path)
    record = label_bytes + CIFAR_IMAGE_BYTES
    if not data:
        raise DataError(f"{path} is empty (no {record}-byte CIFAR record)", Location(str(path)))
    if len(data) % record:
        raise DataError(
            f"{path} has {len(data)} bytes, not a whole number of {record}-byte CIFAR records",
            Location(str(path)),
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    labels = torch.from_numpy(rows[:, label_index].astype(np.int64))
    rgb = rows[:, label_bytes:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(np.ascontiguousarray(rgb[:, ::-1])), labels


def cifar_count(path: Path, label_bytes: int) -> int:
    """Number of records of a CIFAR binary file, from its size."""
    return path.stat().st_size // (label_bytes + CIFAR_IMAGE_BYTES)


def read_image(path: Path) -> torch.Tensor:
    """Decodes an image file as OpenCV's ``imread(IMREAD_UNCHANGED)`` would lay it out.

    Gray images (PGM, gray PNG) keep one channel; colour images come in BGR order (BGRA with alpha);
    16-bit images are rejected (qatrun's pipeline is 8-bit).

    Args:
        path: an image file Pillow can read (PNG, PGM/PPM, JPEG, BMP, TIFF, ...).

    Returns:
        (C, H, W) uint8.
    """
    from PIL import Image  # Pillow comes with matplotlib; imported here so that IDX/CIFAR need not load it

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("1", "P"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode in ("LA", "PA"):
                image = image.convert("RGBA")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            elif mode not in ("L", "RGB", "RGBA"):
                raise DataError(f"{path}: pixel mode {mode} is not 8-bit gray or colour", Location(str(path)))
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # Pillow on unreadable files
        raise DataError(f"cannot decode image {path}: {exc}", Location(str(path))) from None
    if array.ndim == 2:
        return torch.from_numpy(array.copy())[None]
    bgr = array[..., [2, 1, 0, 3]] if array.shape[2] == 4 else array[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))


def write_idx_subset(source: Path, target: Path, count: int) -> None:
    """Writes the first ``count`` items of an IDX file (raw or ``.gz``) to ``target``, gzip-compressed with no
    time stamp: the same format with a smaller count, for test and benchmark subsets of a real data set."""
    data = _read_bytes(source)
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    item = int(np.prod(dims[1:]))
    start = 4 + 4 * ndim
    header = data[:4] + count.to_bytes(4, "big") + data[8:start]
    target.write_bytes(gzip.compress(header + data[start : start + count * item], mtime=0))



def write_mnist_subset(source: Path, folder: Path, learn: int, test: int) -> Path:
    """The first ``learn`` training and ``test`` test items of the four MNIST IDX files in ``source``, written
    into ``folder`` (created) by :func:`write_idx_subset`; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", learn), ("t10k", test)):
        for kind in ("images-idx3", "labels-idx1"):
            stem = f"{name}-{kind}-ubyte.gz"
            write_idx_subset(source / stem, folder / stem, count)
    return folder


# --------------------------------------------------------------------------------------------------
# N2D2's BinaryCvMat files (StimuliData's meanData.bin, AffineTransformation's operands)

_CV_64F = 6
_DEPTHS = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.int32, 5: np.float32, 6: np.float64}


def write_binary_mat(path: Path, image: torch.Tensor) -> None:
    """Writes a (C, H, W) image as ``BinaryCvMat`` (float64, channels interleaved)."""
    c, h, w = image.shape
    header = struct.pack("<iii", h, w, _CV_64F + ((c - 1) << 3))
    path.write_bytes(header + image.double().permute(1, 2, 0).contiguous().numpy().tobytes())


def read_binary_mat(path: Path) -> torch.Tensor:
    """Reads a ``BinaryCvMat`` file as a (C, H, W) float64 tensor.

    Raises:
        DataError: a truncated file or an unknown OpenCV type.
    """
    raw = path.read_bytes()
    if len(raw) < 12:
        raise DataError(f"{path}: not a BinaryCvMat file (shorter than its header)", Location(str(path)))
    rows, cols, kind = struct.unpack("<iii", raw[:12])
    depth, channels = kind & 7, (kind >> 3) + 1
    if depth not in _DEPTHS or rows < 1 or cols < 1:
        raise DataError(f"{path}: not a BinaryCvMat file (rows {rows}, cols {cols}, type {kind})",
                        Location(str(path)))
    dtype = np.dtype(_DEPTHS[depth])
    expected = rows * cols * channels * dtype.itemsize
    if len(raw) - 12 != expected:
        raise DataError(f"{path}: {rows}x{cols}x{channels} values need {expected} bytes after the header, found "
                        f"{len(raw) - 12}", Location(str(path)))
    array = np.frombuffer(raw, dtype=dtype, offset=12).reshape(rows, cols, channels).astype(np.float64)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
