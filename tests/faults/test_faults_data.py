"""Faults in the data: incomplete folders, out-of-range labels, truncated or corrupt files, undecodable images.

Every case runs the real command on small real data (MNIST cut by ``mnist_small``, CIFAR records and image
folders made from it) with one fault, and asserts one ``error:`` line naming the offending file, exit status
2, no traceback, and no file changed.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qatrun.data import formats
from tests.faults.conftest import LENET, assert_refused, data_args, run_qatrun, snapshot

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
LENET_DATABASE = "[database]\nType=MNIST_IDX_Database\nValidation=0.2\n"


def copy_of(mnist_small: Path, tmp_path: Path) -> Path:
    """A private copy of the small MNIST, to damage."""
    return Path(shutil.copytree(mnist_small, tmp_path / "data"))


def refused(tmp_path: Path, args: list[str], data: Path, *names: str,
            env: dict[str, str] | None = None) -> str:
    """Runs ``qatrun ARGS`` in a fresh folder; asserts the refusal and that neither folder changed."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    before_data, before_work = snapshot(data), snapshot(work)
    proc = run_qatrun(args, work, timeout=120, env=env)
    line = assert_refused(proc, *names, before=before_data, folder=data)
    assert snapshot(work) == before_work, "the run wrote files"
    return line


def lenet_with(tmp_path: Path, database: str, sp: str = "") -> str:
    """LeNet.ini with another ``[database]`` section (and ``[sp]`` keys), written beside the data."""
    text = Path(LENET).read_text()
    assert LENET_DATABASE in text
    text = text.replace(LENET_DATABASE, database.rstrip("\n") + "\n")
    for line in sp.splitlines():
        key = line.split("=")[0]
        text, replaced = re.subn(rf"(?m)^{key}=.*$", line, text, count=1)
        if not replaced:
            text = text.replace("[sp]\n", f"[sp]\n{line}\n", 1)
    path = tmp_path / "net.ini"
    path.write_text(text)
    return str(path)


def idx_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def write_gz(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, mtime=0))


# ---------------------------------------------------------------------------------------------- MNIST folders


@pytest.mark.parametrize("gone", [TEST_LABELS, TRAIN_IMAGES])
def test_incomplete_data_path_is_an_error_not_the_shipped_mnist(tmp_path: Path, mnist_small: Path, gone: str) -> None:
    # before: the shipped MNIST was read instead (48000 learning images), exit 0
    data = copy_of(mnist_small, tmp_path)
    (data / gone).unlink()
    line = refused(tmp_path, [LENET, "-test", *data_args(data)], data, str(data), gone.removesuffix(".gz"),
                   "incomplete")
    assert "(DataPath)" in line


def test_data_path_that_does_not_exist_is_an_error_not_the_shipped_mnist(tmp_path: Path) -> None:
    # before: a DataPath with a typo trained and tested on the MNIST that ships with qatrun, exit 0
    typo = tmp_path / "mnsit"
    before = snapshot(tmp_path)
    proc = run_qatrun([LENET, "-test", *data_args(typo)], tmp_path)
    assert_refused(proc, str(typo), "(DataPath)", before=before, folder=tmp_path)


def test_incomplete_n2d2_data_folder_is_an_error(tmp_path: Path, mnist_small: Path) -> None:
    # before: the shipped MNIST was read instead, exit 0
    root = tmp_path / "n2d2_data"
    data = Path(shutil.copytree(mnist_small, root / "mnist"))
    (data / TRAIN_LABELS).unlink()
    line = refused(tmp_path, [LENET, "-test"], data, str(data), "train-labels-idx1-ubyte",
                   env={"N2D2_DATA": str(root)})
    assert "$N2D2_DATA/mnist" in line


def test_mnist_label_above_9_is_refused_when_the_data_open(tmp_path: Path, mnist_small: Path) -> None:
    # before: found only if the record was drawn (a crash in the loss) or counted as a wrong answer
    data = copy_of(mnist_small, tmp_path)
    raw = bytearray(idx_bytes(data / TEST_LABELS))
    raw[8 + 137] = 12
    write_gz(data / TEST_LABELS, bytes(raw))
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TEST_LABELS, "record 137", "label 12")


def test_idx_wrong_magic_number(tmp_path: Path, mnist_small: Path) -> None:
    data = copy_of(mnist_small, tmp_path)
    raw = idx_bytes(data / TRAIN_IMAGES)
    write_gz(data / TRAIN_IMAGES, (2049).to_bytes(4, "big") + raw[4:])
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TRAIN_IMAGES, "magic number 2049")


def test_idx_short_body(tmp_path: Path, mnist_small: Path) -> None:
    data = copy_of(mnist_small, tmp_path)
    write_gz(data / TEST_IMAGES, idx_bytes(data / TEST_IMAGES)[:-300])
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TEST_IMAGES, "announces")


def test_idx_fewer_labels_than_images(tmp_path: Path, mnist_small: Path) -> None:
    data = copy_of(mnist_small, tmp_path)
    formats.write_idx_subset(mnist_small / TRAIN_LABELS, data / TRAIN_LABELS, 999)
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TRAIN_LABELS, "999 labels for 1000 images")


def test_idx_images_of_another_size(tmp_path: Path, mnist_small: Path) -> None:
    # before: the error named the [sp] section and the network size, not the file
    data = copy_of(mnist_small, tmp_path)
    raw = idx_bytes(data / TEST_IMAGES)  # 200 images of 28x28 = 50 images of 56x56
    header = b"".join(v.to_bytes(4, "big") for v in (2051, 50, 56, 56))
    write_gz(data / TEST_IMAGES, header + raw[16:])
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TEST_IMAGES, "56x56")


def test_empty_raw_idx_file(tmp_path: Path, mnist_small: Path) -> None:
    data = copy_of(mnist_small, tmp_path)
    (data / TRAIN_LABELS).unlink()
    (data / "train-labels-idx1-ubyte").write_bytes(b"")
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, "train-labels-idx1-ubyte", "only 0 bytes")


def test_gz_that_is_not_gzip(tmp_path: Path, mnist_small: Path) -> None:
    data = copy_of(mnist_small, tmp_path)
    (data / TEST_LABELS).write_bytes(idx_bytes(data / TEST_LABELS))
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TEST_LABELS, "Not a gzipped file")


def test_truncated_gz(tmp_path: Path, mnist_small: Path) -> None:
    data = copy_of(mnist_small, tmp_path)
    packed = (data / TRAIN_IMAGES).read_bytes()
    (data / TRAIN_IMAGES).write_bytes(packed[: len(packed) // 2])
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TRAIN_IMAGES, "truncated")


@pytest.mark.parametrize("where, reason", [("start", "the gzip stream is corrupt"), ("middle", "CRC check failed")])
def test_corrupt_gz_stream(tmp_path: Path, mnist_small: Path, where: str, reason: str) -> None:
    # before: a corrupt deflate block (zlib.error) escaped as a traceback; a bad CRC was already one line
    data = copy_of(mnist_small, tmp_path)
    packed = bytearray((data / TRAIN_IMAGES).read_bytes())
    start = 10 if where == "start" else len(packed) // 2  # 10: the first deflate block, after the gzip header
    packed[start : start + 64] = bytes([0xFF if where == "start" else 0]) * 64
    (data / TRAIN_IMAGES).write_bytes(bytes(packed))
    refused(tmp_path, [LENET, "-test", *data_args(data)], data, TRAIN_IMAGES, reason)


# ---------------------------------------------------------------------------------------------- CIFAR files


def cifar_from_mnist(mnist_small: Path, folder: Path, train: int, test: int, label_bytes: int = 1) -> None:
    """CIFAR binary batches whose images are MNIST digits in the three planes (real labels)."""
    folder.mkdir()
    for name, images_file, labels_file, count in (
        ("data_batch_1.bin" if label_bytes == 1 else "train.bin", TRAIN_IMAGES, TRAIN_LABELS, train),
        ("test_batch.bin" if label_bytes == 1 else "test.bin", TEST_IMAGES, TEST_LABELS, test),
    ):
        digits = formats.read_idx_images(mnist_small / images_file)[:count].numpy()  # (n, 1, 28, 28)
        labels = formats.read_idx_labels(mnist_small / labels_file)[:count].numpy().astype(np.uint8)
        planes = np.zeros((count, 3, 32, 32), np.uint8)
        planes[:, :, 2:30, 2:30] = digits
        records = np.concatenate([np.repeat(labels[:, None], label_bytes, 1), planes.reshape(count, -1)], 1)
        (folder / name).write_bytes(records.tobytes())


CIFAR10 = "[database]\nType=CIFAR10_Database\nValidation=0.2\nDataPath={}\n"
CIFAR100 = "[database]\nType=CIFAR100_Database\nValidation=0.2\nDataPath={}\n"


def test_cifar_label_byte_out_of_range(tmp_path: Path, mnist_small: Path) -> None:
    # before: found only if the record was drawn
    data = tmp_path / "cifar"
    cifar_from_mnist(mnist_small, data, 100, 40)
    raw = bytearray((data / "test_batch.bin").read_bytes())
    raw[3 * 3073] = 10
    (data / "test_batch.bin").write_bytes(bytes(raw))
    net = lenet_with(tmp_path, CIFAR10.format(data), "NbChannels=3")
    refused(tmp_path, [net, "-test"], data, "test_batch.bin", "record 3", "label 10")


def test_cifar100_fine_label_out_of_range(tmp_path: Path, mnist_small: Path) -> None:
    # before: found only if the record was drawn
    data = tmp_path / "cifar"
    cifar_from_mnist(mnist_small, data, 100, 40, label_bytes=2)
    raw = bytearray((data / "train.bin").read_bytes())
    raw[7 * 3074 + 1] = 100  # the fine label of record 7
    (data / "train.bin").write_bytes(bytes(raw))
    net = lenet_with(tmp_path, CIFAR100.format(data), "NbChannels=3")
    refused(tmp_path, [net, "-test"], data, "train.bin", "record 7", "label 100")


def test_cifar_file_of_a_wrong_size(tmp_path: Path, mnist_small: Path) -> None:
    data = tmp_path / "cifar"
    cifar_from_mnist(mnist_small, data, 100, 40)
    with open(data / "data_batch_1.bin", "r+b") as stream:
        stream.truncate(100 * 3073 - 5)
    net = lenet_with(tmp_path, CIFAR10.format(data), "NbChannels=3")
    refused(tmp_path, [net, "-test"], data, "data_batch_1.bin", "not a whole number of 3073-byte")


def test_empty_cifar_test_batch(tmp_path: Path, mnist_small: Path) -> None:
    # before: an empty Test partition, exit 0
    data = tmp_path / "cifar"
    cifar_from_mnist(mnist_small, data, 100, 40)
    (data / "test_batch.bin").write_bytes(b"")
    net = lenet_with(tmp_path, CIFAR10.format(data), "NbChannels=3")
    refused(tmp_path, [net, "-test"], data, "test_batch.bin", "is empty")


def test_cifar_folder_without_test_batch(tmp_path: Path, mnist_small: Path) -> None:
    data = tmp_path / "cifar"
    cifar_from_mnist(mnist_small, data, 100, 40)
    (data / "test_batch.bin").unlink()
    net = lenet_with(tmp_path, CIFAR10.format(data), "NbChannels=3")
    line = refused(tmp_path, [net, "-test"], data, str(data), "test_batch.bin")
    assert "incomplete: missing test_batch.bin" in line


# ---------------------------------------------------------------------------------------------- image folders


def image_folder(mnist_small: Path, folder: Path, count: int, pad: int = 0) -> list[Path]:
    """``folder/<digit>/<k>.png``: the first ``count`` MNIST test digits as PNG files (``pad`` black pixels
    around them)."""
    digits = formats.read_idx_images(mnist_small / TEST_IMAGES)[:count, 0].numpy()
    digits = np.pad(digits, ((0, 0), (pad, pad), (pad, pad)))
    labels = formats.read_idx_labels(mnist_small / TEST_LABELS)[:count].tolist()
    files = []
    for k, (digit, label) in enumerate(zip(digits, labels)):
        path = folder / str(label) / f"{k:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit).save(path)
        files.append(path)
    return files


DIRECTORY = ("[database]\nType=DIR_Database\nDataPath={}\nLearn=0.5\nValidation=0.0\nRandomPartitioning=0\n"
             "EquivLabelPartitioning=0\n")


def test_undecodable_image_read_by_a_worker_is_one_line(tmp_path: Path, mnist_small: Path) -> None:
    # before: the error line was followed by the worker's traceback (17 lines)
    data = tmp_path / "images"
    files = image_folder(mnist_small, data, 120)
    # Learn and Test take the first and second half of each label in file order; spoil a late Test image of
    # label 7 (the first image of each partition is decoded in the main process when the data open).
    seven = [path for path in files if path.parent.name == "7"]
    bad = seven[-1]
    bad.write_bytes(b"this is not a PNG file" * 10)
    net = lenet_with(tmp_path, DIRECTORY.format(data))
    proc_args = [net, "-test"]
    line = refused(tmp_path, proc_args, data, str(bad))
    assert "cannot decode image" in line


def test_undecodable_first_image_is_one_line(tmp_path: Path, mnist_small: Path) -> None:
    data = tmp_path / "images"
    files = image_folder(mnist_small, data, 60)
    bad = sorted(files)[0]
    bad.write_bytes(b"")
    net = lenet_with(tmp_path, DIRECTORY.format(data))
    refused(tmp_path, [net, "-test"], data, str(bad), "cannot decode image")


def test_images_of_different_sizes_in_one_batch_are_one_line(tmp_path: Path, mnist_small: Path) -> None:
    # before: the worker's traceback followed the error line
    data = tmp_path / "images"
    files = image_folder(mnist_small, data, 120, pad=2)  # 32x32: LeNet's input, no RescaleTransformation
    late = [path for path in files if path.parent.name == "3"][-1]
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(late)
    net = lenet_with(tmp_path, DIRECTORY.format(data), "BatchSize=200")
    rescale = "[sp.Transformation-1]\nType=RescaleTransformation\nWidth=[sp]SizeX\nHeight=[sp]SizeY\n"
    Path(net).write_text(Path(net).read_text().replace(rescale, ""))
    refused(tmp_path, [net, "-test"], data, "images of one batch differ", f"{late}: 1x20x24")


# ---------------------------------------------------------------------------------------------- ILSVRC2012


def ilsvrc_folder(mnist_small: Path, folder: Path, val_lines: list[str]) -> None:
    """``train/<synset>/``, ``val/``, ``val.txt`` (given lines) and ``synsets.txt`` with the ten digits."""
    for path in image_folder(mnist_small, folder / "digits", 40):
        target = folder / "train" / f"n{path.parent.name}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    shutil.rmtree(folder / "digits")
    (folder / "val").mkdir()
    for k in range(4):
        shutil.copy(next((folder / "train").glob("*/*.png")), folder / "val" / f"v{k}.png")
    (folder / "val.txt").write_text("".join(line + "\n" for line in val_lines))
    (folder / "synsets.txt").write_text("".join(f"n{d} digit {d}\n" for d in range(10)))


ILSVRC = "[database]\nType=ILSVRC2012_Database\nDataPath={}\nLearn=1.0\n"


def test_ilsvrc_validation_label_out_of_range(tmp_path: Path, mnist_small: Path) -> None:
    # before: found only if the record was drawn
    data = tmp_path / "ilsvrc"
    ilsvrc_folder(mnist_small, data, ["v0.png 1", "v1.png 3", "v2.png 10", "v3.png 0"])
    net = lenet_with(tmp_path, ILSVRC.format(data))
    refused(tmp_path, [net, "-test"], data, f"{data / 'val.txt'}:3", "label 10")


def test_ilsvrc_malformed_validation_line(tmp_path: Path, mnist_small: Path) -> None:
    # before: a ValueError traceback
    data = tmp_path / "ilsvrc"
    ilsvrc_folder(mnist_small, data, ["v0.png 1", "v1.png"])
    net = lenet_with(tmp_path, ILSVRC.format(data))
    refused(tmp_path, [net, "-test"], data, f"{data / 'val.txt'}:2", "'v1.png'")


# ---------------------------------------------------------------------------------------------- interrupts


def test_interrupt_is_announced_once_not_once_per_worker(tmp_path: Path, mnist_small: Path) -> None:
    # before: every DataLoader worker inherited the learning loop's handler and printed the notice too
    data = tmp_path / "images"
    image_folder(mnist_small, data, 200)
    net = lenet_with(tmp_path, DIRECTORY.format(data), "BatchSize=4")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "qatrun", net, "-learn-epoch", "50"], cwd=work,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if children.read_text().split():  # DataLoader workers are reading images: learning has begun
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in out + err, err[-3000:]
    assert len([line for line in err.splitlines() if "SIGINT" in line]) == 1, err[-3000:]
