"""Small data sets written by the tests: IDX (raw, gz), CIFAR binary, image folders."""

from __future__ import annotations

import gzip
import textwrap
from pathlib import Path

import numpy as np
import torch

from qatrun.ini import Document, loads

INV_255 = torch.tensor(1.0 / 255.0, dtype=torch.float32)


def scaled(p: torch.Tensor) -> torch.Tensor:
    """8-bit values to [0, 1] as N2D2 computes it: ``p * float(1/255)`` in float32 (OpenCV convertTo)."""
    return p.float() * INV_255


def doc(text: str) -> Document:
    """An INI document from indented test text (path ``t.ini``)."""
    return loads(textwrap.dedent(text).lstrip("\n"), path="t.ini")


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    """Writes ``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` (``.gz`` if asked)."""
    n, h, w = images.shape
    image_bytes = (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, h, w)) + images.tobytes()
    label_bytes = (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
    for name, data in ((f"{prefix}-images-idx3-ubyte", image_bytes), (f"{prefix}-labels-idx1-ubyte", label_bytes)):
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def mnist_folder(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A tiny MNIST-like data set; returns (train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    train_labels = np.arange(n_train) % 10
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    test_labels = (np.arange(n_test) * 3) % 10
    write_idx(folder, "train", train, train_labels, gz)
    write_idx(folder, "t10k", test, test_labels, gz)
    return train, train_labels, test, test_labels


def cifar_records(n: int, label_bytes: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n CIFAR records; returns (bytes, labels (n, label_bytes), RGB images (n, 3, 32, 32))."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, label_bytes), dtype=np.uint8)
    rgb = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    data = np.concatenate([labels, rgb.reshape(n, -1)], axis=1).tobytes()
    return data, labels, rgb
