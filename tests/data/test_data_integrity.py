"""The data are checked when they open: the folder read and how it was found, incomplete folders, labels
out of range, corrupt files, and failures in DataLoader workers as one line."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qatrun.data import DataSpec, formats
from qatrun.data.databases import SHIPPED_MNIST, database_from_section
from qatrun.data.provider import _read_files
from qatrun.errors import DataError
from tests.data.helpers import cifar_records, doc, mnist_folder

SP = "[sp]\nSizeX=28\nSizeY=28\n"


def open_mnist(database: str, seed: int = 0):
    return DataSpec.from_doc(doc(f"[database]\nType=MNIST_IDX_Database\n{database}\n{SP}")).open(seed)


def test_the_folder_read_and_how_it_was_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mnist_folder(tmp_path / "mine", 20, 5, gz=True)
    provider = open_mnist(f"DataPath={tmp_path / 'mine'}")
    assert (provider.source, provider.origin) == (tmp_path / "mine", "DataPath")
    mnist_folder(tmp_path / "n2d2" / "mnist", 20, 5, gz=False)
    monkeypatch.setenv("N2D2_DATA", str(tmp_path / "n2d2"))
    provider = open_mnist("")
    assert (provider.source, provider.origin) == (tmp_path / "n2d2" / "mnist", "$N2D2_DATA/mnist")
    monkeypatch.setenv("N2D2_DATA", str(tmp_path / "absent"))
    db = database_from_section(doc("[database]\nType=MNIST_IDX_Database\n").section("database"))
    assert db.locate()[0] == SHIPPED_MNIST and db.origin(SHIPPED_MNIST) == "copy shipped with qatrun"


def test_an_incomplete_folder_names_what_is_missing(tmp_path: Path) -> None:
    mnist_folder(tmp_path, 20, 5, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        open_mnist(f"DataPath={tmp_path}")
    assert str(info.value) == (
        f"t.ini:1: [database] MNIST_IDX_Database: the data folder {tmp_path} (DataPath) is incomplete: missing "
        "train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]. Put the four MNIST IDX files (from "
        "http://yann.lecun.com/exdb/mnist/, gzipped or not) in one of these folders, or set DataPath in [database]."
    )


def test_mnist_labels_are_checked_against_the_ten_classes(tmp_path: Path) -> None:
    mnist_folder(tmp_path, 20, 5, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[8 + 4], raw[8 + 9] = 10, 255
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as info:
        open_mnist(f"DataPath={tmp_path}")
    assert str(info.value) == (
        f"{path}: record 4 (0-based) has label 10, outside the 10 classes of MNIST_IDX_Database (0..9); "
        "2 record(s) are out of range"
    )


@pytest.mark.parametrize("coarse, label, accepted", [(1, 19, True), (1, 20, False), (0, 99, True), (0, 100, False)])
def test_cifar100_labels_are_checked_against_coarse_or_fine_classes(
    tmp_path: Path, coarse: int, label: int, accepted: bool
) -> None:
    data, _, _ = cifar_records(6, 2, seed=0)
    records = bytearray(data)
    records[2 * 3074 + (0 if coarse else 1)] = label
    (tmp_path / "train.bin").write_bytes(bytes(records))
    (tmp_path / "test.bin").write_bytes(cifar_records(3, 2, seed=1)[0])
    db = database_from_section(
        doc(f"[database]\nType=CIFAR100_Database\nDataPath={tmp_path}\nUseCoarse={coarse}\n").section("database")
    )
    if accepted:
        assert int(db.load(0).labels[2]) == label
        return
    with pytest.raises(DataError, match=rf"train.bin: record 2 \(0-based\) has label {label}, outside the"):
        db.load(0)


def test_corrupt_gzip_stream_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte.gz"
    packed = bytearray(gzip.compress(np.arange(5000, dtype=np.uint32).tobytes(), mtime=0))
    packed[10:74] = b"\xff" * 64  # the first deflate block: an invalid block type
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError, match=r"the gzip stream is corrupt \(Error -3 while decompressing data"):
        formats.read_idx_labels(path)


def test_empty_cifar_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "test_batch.bin"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        formats.read_cifar(path, 1, 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_undecodable_image_is_one_line_in_or_out_of_workers(tmp_path: Path, workers: int) -> None:
    files = []
    for k in range(6):
        files.append(tmp_path / f"{k}.png")
        Image.fromarray(np.full((4, 4), k, np.uint8)).save(files[-1])
    files[4].write_bytes(b"not an image")
    batches = list(torch.arange(6).split(2))
    with pytest.raises(DataError) as info:
        list(_read_files(files, batches, [], workers, (0,)))
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{files[4]}: cannot decode image {files[4]}")


def test_images_of_different_shapes_in_a_worker_batch_name_a_file_of_each(tmp_path: Path) -> None:
    files = []
    for k, size in enumerate((4, 4, 5, 4)):
        files.append(tmp_path / f"{k}.png")
        Image.fromarray(np.zeros((size, size), np.uint8)).save(files[-1])
    with pytest.raises(DataError) as info:
        list(_read_files(files, [torch.arange(4)], [], 2, (0,)))
    assert str(info.value) == (
        f"images of one batch differ after the static transformations ({files[0]}: 1x4x4 uint8, "
        f"{files[2]}: 1x5x5 uint8); add a RescaleTransformation or PadCropTransformation"
    )
