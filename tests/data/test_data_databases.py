"""Database drivers on small files written here: formats, partitions, missing-data errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qatrun.data import formats
from qatrun.data.databases import DATABASES, MnistIdx, database_from_section, split, split_per_label
from qatrun.errors import ConfigError, DataError
from tests.data.helpers import cifar_records, doc, mnist_folder


def database(text: str):
    return database_from_section(doc(text).section("database"))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_raw_and_gz(tmp_path: Path, gz: bool) -> None:
    train, train_labels, test, test_labels = mnist_folder(tmp_path, 30, 7, gz)
    db = database(f"[database]\nType=MNIST_IDX_Database\nDataPath={tmp_path}\nRandomPartitioning=0\nValidation=0.2\n")
    stimuli = db.load(seed=0)
    assert stimuli.source == tmp_path
    assert stimuli.images.dtype == torch.uint8 and stimuli.images.shape == (37, 1, 28, 28)
    assert np.array_equal(stimuli.images[:30, 0].numpy(), train)
    assert np.array_equal(stimuli.images[30:, 0].numpy(), test)
    assert stimuli.labels.tolist() == train_labels.tolist() + test_labels.tolist()
    # in order without RandomPartitioning: Learn = first round(0.8 * 30) = 24, Validation the rest
    assert stimuli.partitions["Learn"].tolist() == list(range(24))
    assert stimuli.partitions["Validation"].tolist() == list(range(24, 30))
    assert stimuli.partitions["Test"].tolist() == list(range(30, 37))
    assert db.sizes() == {"Learn": 24, "Validation": 6, "Test": 7}


@pytest.mark.parametrize("gz", [False, True])
def test_idx_subset_keeps_the_first_items(tmp_path: Path, gz: bool) -> None:
    train, train_labels, _, _ = mnist_folder(tmp_path / "full", 30, 7, gz)
    suffix = ".gz" if gz else ""
    (tmp_path / "sub").mkdir()
    for kind in ("images-idx3", "labels-idx1"):
        formats.write_idx_subset(tmp_path / "full" / f"train-{kind}-ubyte{suffix}",
                                 tmp_path / "sub" / f"train-{kind}-ubyte.gz", 12)
    images = formats.read_idx_images(tmp_path / "sub" / "train-images-idx3-ubyte.gz")
    labels = formats.read_idx_labels(tmp_path / "sub" / "train-labels-idx1-ubyte.gz")
    assert images.shape == (12, 1, 28, 28) and np.array_equal(images[:, 0].numpy(), train[:12])
    assert labels.tolist() == train_labels[:12].tolist()


def test_mnist_idx_bad_magic_and_size(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes((2049).to_bytes(4, "big") + bytes(4))
    with pytest.raises(DataError) as info:
        formats.read_idx_images(bad)
    assert str(info.value) == f"{bad}: {bad} is not an IDX file of the expected kind: magic number 2049, expected 2051"
    bad.write_bytes((2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (2, 3, 3)) + bytes(17))
    with pytest.raises(DataError, match=r"has 33 bytes, its IDX header \[2, 3, 3\] announces 34"):
        formats.read_idx_images(bad)


@pytest.mark.parametrize("label_bytes, kind", [(1, "CIFAR10_Database"), (2, "CIFAR100_Database")])
def test_cifar_binary(tmp_path: Path, label_bytes: int, kind: str) -> None:
    names = (
        ["data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"] if label_bytes == 1 else ["train.bin", "test.bin"]
    )
    expected_images, expected_labels = [], []
    for k, name in enumerate(names):
        data, labels, rgb = cifar_records(3 + k, label_bytes, seed=k)
        (tmp_path / name).write_bytes(data)
        expected_images.append(rgb[:, ::-1])  # stored BGR, as OpenCV/N2D2
        expected_labels.append(labels[:, -1])  # CIFAR-100: the fine label (2nd byte) by default
    db = database(f"[database]\nType={kind}\nDataPath={tmp_path}\n")
    stimuli = db.load(seed=3)
    assert np.array_equal(stimuli.images.numpy(), np.concatenate(expected_images))
    assert stimuli.labels.tolist() == np.concatenate(expected_labels).tolist()
    n_test = len(expected_labels[-1])
    n = len(stimuli.labels)
    assert stimuli.partitions["Test"].tolist() == list(range(n - n_test, n))
    assert sorted(stimuli.partitions["Learn"].tolist()) == list(range(n - n_test))


def test_cifar100_coarse_labels(tmp_path: Path) -> None:
    data, labels, _ = cifar_records(4, 2, seed=1)
    (tmp_path / "train.bin").write_bytes(data)
    (tmp_path / "test.bin").write_bytes(data)
    (tmp_path / "coarse_label_names.txt").write_text("\n".join(f"c{k}" for k in range(20)) + "\n")
    stimuli = database(f"[database]\nType=CIFAR100_Database\nDataPath={tmp_path}\nUseCoarse=1\n").load(0)
    assert stimuli.labels[:4].tolist() == labels[:, 0].tolist()
    assert stimuli.label_names[:2] == ["c0", "c1"] and len(stimuli.label_names) == 20


def test_cifar10_subset_names_by_glob_and_test_for_validation(tmp_path: Path) -> None:
    for name, n in (("data_batch_1_first5.bin", 5), ("data_batch_2_first5.bin", 5), ("test_batch_first4.bin", 4)):
        (tmp_path / name).write_bytes(cifar_records(n, 1, seed=n)[0])
    (tmp_path / "batches.meta.txt").write_text(
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"
    )
    db = database(f"[database]\nType=CIFAR10_Database\nDataPath={tmp_path}\nUseTestForValidation=1\n")
    stimuli = db.load(seed=0)
    assert stimuli.label_names[0] == "airplane" and len(stimuli.label_names) == 10
    assert stimuli.partitions["Learn"].tolist() == list(range(10))
    assert stimuli.partitions["Validation"].tolist() == stimuli.partitions["Test"].tolist() == list(range(10, 14))


def _write_tree(root: Path) -> dict[str, int]:
    """cat/ with 3 PNG (colour), dog/ with 4 PGM (gray): returns per-label counts."""
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(root / "cat" / f"{k}.png")
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(root / "dog" / f"{k}.pgm")
    (root / "notes.txt").write_text("not an image")
    return {"cat": 3, "dog": 4}


def test_dir_database_reads_png_bgr_and_pgm(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    db = database(f"[database]\nType=DIR_Database\nDataPath={tmp_path}\nLearn=1.0\nEquivLabelPartitioning=0\n")
    stimuli = db.load(seed=0)
    assert stimuli.label_names == ["cat", "dog"]
    assert stimuli.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert [p.name for p in stimuli.files] == ["0.png", "1.png", "2.png", "0.pgm", "1.pgm", "2.pgm", "3.pgm"]
    rgb = np.asarray(Image.open(tmp_path / "cat" / "1.png"))
    assert np.array_equal(formats.read_image(stimuli.files[1]).numpy(), rgb[..., ::-1].transpose(2, 0, 1))
    gray = formats.read_image(stimuli.files[4])
    assert gray.shape == (1, 6, 5) and np.array_equal(gray[0].numpy(), np.asarray(Image.open(stimuli.files[4])))
    assert stimuli.partitions["Learn"].tolist() == list(range(7))


def test_dir_database_per_label_fractions_equal_labels(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    db = database(f"[database]\nType=DIR_Database\nDataPath={tmp_path}\nLearn=0.4\nValidation=0.3\n")
    parts = db.load(seed=1).partitions
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    # EquivLabelPartitioning: 3 per label; Learn round(1.2)=1, Validation round(0.9)=1, Test the rest 1
    for name in ("Learn", "Validation", "Test"):
        assert torch.bincount(labels[parts[name]], minlength=2).tolist() == [1, 1], name
    assert not set(parts["Learn"].tolist()) & set(parts["Test"].tolist())


def test_dir_database_in_memory_flag(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    stimuli = database(f"[database]\nType=DIR_Database\nDataPath={tmp_path}\nLearn=0.5\nLoadInMemory=1\n").load(0)
    assert stimuli.in_memory and stimuli.images is None and len(stimuli.files) == 7


def test_fashion_mnist_reads_the_idx_layout(tmp_path: Path) -> None:
    train, _, _, test_labels = mnist_folder(tmp_path, 6, 3, gz=False)
    stimuli = database(f"[database]\nType=Fashion_MNIST_IDX_Database\nDataPath={tmp_path}\n").load(0)
    assert np.array_equal(stimuli.images[:6, 0].numpy(), train) and stimuli.labels[6:].tolist() == test_labels.tolist()
    assert stimuli.label_names[0] == "T-shirt/top" and stimuli.label_names[9] == "Ankle boot"


def test_ilsvrc2012_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    synsets = ["n01440764", "n01443537", "n01484850"]
    (tmp_path / "synsets.txt").write_text("".join(f"{s} class {k}\n" for k, s in enumerate(synsets)))
    for k, synset in enumerate(synsets):
        (tmp_path / "train" / synset).mkdir(parents=True)
        for j in range(4):
            Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(
                tmp_path / "train" / synset / f"{synset}_{j}.JPEG", format="PNG"
            )
    (tmp_path / "val").mkdir()
    for j in range(3):
        Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(
            tmp_path / "val" / f"v{j}.JPEG", format="PNG"
        )
    (tmp_path / "val.txt").write_text("v0.JPEG 2\nv1.JPEG 0\nv2.JPEG 1\n")
    db = database(f"[database]\nType=ILSVRC2012_Database\nDataPath={tmp_path}\nLearn=0.75\nBackgroundClass=1\n")
    stimuli = db.load(seed=0)
    assert stimuli.label_names == ["background", "n01440764 class 0", "n01443537 class 1", "n01484850 class 2"]
    assert stimuli.labels.tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [3, 1, 2]
    assert len(stimuli.partitions["Learn"]) == 9
    assert stimuli.partitions["Validation"].tolist() == stimuli.partitions["Test"].tolist() == [12, 13, 14]
    assert formats.read_image(stimuli.files[13]).shape == (3, 5, 6)
    rest = database(f"[database]\nType=ILSVRC2012_Database\nDataPath={tmp_path}\nLearn=0.75\nUseValidationForTest=0\n")
    parts = rest.load(seed=0).partitions
    assert len(parts["Test"]) == 3 and not set(parts["Test"].tolist()) & set(parts["Learn"].tolist())
    assert max(parts["Test"].tolist()) < 12


# ---------------------------------------------------------------------------------------------------
# Partitioning


@pytest.mark.parametrize(
    "n, fractions, rest", [(10, [0.8, 0.2], 1), (7, [0.5, 0.5], 1), (9, [0.3, 0.3, 0.4], 2), (5, [0.0, 1.0], 1)]
)
@pytest.mark.parametrize("seed", [None, 0, 7])
def test_split_is_deterministic_disjoint_complete(n: int, fractions: list[float], rest: int, seed: int | None) -> None:
    def run() -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return [p.tolist() for p in split(torch.arange(n), fractions, generator, rest)]

    parts = run()
    assert parts == run()
    flat = [k for p in parts for k in p]
    assert sorted(flat) == list(range(n))
    assert all(p == sorted(p) for p in parts)
    assert len(parts[0]) == int(np.floor(fractions[0] * n + 0.5))
    if seed is None:
        assert flat == list(range(n))


def test_split_seeds_differ() -> None:
    a = split(torch.arange(100), [0.5, 0.5], torch.Generator().manual_seed(1), 1)[0]
    b = split(torch.arange(100), [0.5, 0.5], torch.Generator().manual_seed(2), 1)[0]
    assert a.tolist() != b.tolist()


def test_split_per_label_without_equal() -> None:
    labels = torch.tensor([0] * 10 + [1] * 4)
    learn, validation, test = split_per_label(labels, [0.5, 0.25, 0.25], None, equal=False, complete=True)
    assert learn.tolist() == [0, 1, 2, 3, 4, 10, 11]
    assert validation.tolist() == [5, 6, 7, 12]  # round(2.5) = 3 (half away from zero), round(1.0) = 1
    assert test.tolist() == [8, 9, 13]


def test_mnist_random_partition_depends_on_seed(tmp_path: Path) -> None:
    mnist_folder(tmp_path, 40, 2, gz=True)
    db = database(f"[database]\nType=MNIST_IDX_Database\nDataPath={tmp_path}\nValidation=0.25\n")
    a, b, c = db.load(1).partitions, db.load(1).partitions, db.load(2).partitions
    assert a["Validation"].tolist() == b["Validation"].tolist() != c["Validation"].tolist()
    assert len(a["Learn"]) == 30 and sorted(a["Learn"].tolist() + a["Validation"].tolist()) == list(range(40))


# ---------------------------------------------------------------------------------------------------
# Errors


def test_missing_cifar_names_paths_and_section(tmp_path: Path) -> None:
    db = database(f"; CIFAR\n[database]\nType=CIFAR10_Database\nDataPath={tmp_path}/none\n")
    with pytest.raises(DataError) as info:
        db.load(0)
    assert str(info.value) == (
        f"t.ini:2: [database] CIFAR10_Database: data set not found: looked for data_batch_1.bin, data_batch_2.bin, "
        f"data_batch_3.bin, data_batch_4.bin, data_batch_5.bin, test_batch.bin (or data_batch_*.bin, test_batch*.bin) "
        f"in {tmp_path}/none (DataPath). Extract the CIFAR-10 binary version (cifar-10-binary.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html) into one of these folders, or set DataPath in [database]."
    )


def test_missing_mnist_tries_n2d2_data_then_the_shipped_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N2D2_DATA", str(tmp_path))
    db = database("[database]\nType=MNIST_IDX_Database\n")
    assert db.candidates()[-1][1] == "copy shipped with qatrun"
    monkeypatch.setattr(MnistIdx, "shipped", None)
    with pytest.raises(DataError) as info:
        db.sizes()
    assert str(info.value) == (
        "t.ini:1: [database] MNIST_IDX_Database: data set not found: looked for train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] in "
        f"{tmp_path}/mnist ($N2D2_DATA/mnist). Put the four MNIST IDX files (from http://yann.lecun.com/exdb/mnist/, "
        "gzipped or not) in one of these folders, or set DataPath in [database]."
    )


def test_missing_fashion_mnist_without_n2d2_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("N2D2_DATA", raising=False)
    monkeypatch.setenv("USER", "someone")
    db = database("[database]\nType=Fashion_MNIST_IDX_Database\n")
    with pytest.raises(
        DataError, match=r"in /local/someone/n2d2_data/fashion-mnist/data/fashion \(N2D2's default when "
    ):
        db.load(0)


@pytest.mark.parametrize(
    "body, message",
    [
        ("Type=MNIST\n", 't.ini:2: [database] Type: unknown database "MNIST"; qatrun implements: ' + ", ".join(DATABASES)),
        ("Type=MNIST_IDX_Database\nValidation=1.5\n", "t.ini:3: [database] Validation: must lie in [0, 1], found 1.5"),
        ("Type=MNIST_IDX_Database\nROIsMargin=3\n", "t.ini:3: [database] ROIsMargin: is not supported by qatrun (only the default 0)"),
        ("Type=DIR_Database\nLearn=0.5\n", "t.ini:1: [database] DataPath: required key is missing (DIR_Database has no default folder)"),
        ("Type=DIR_Database\nDataPath=/x\nLearn=0.7\nValidation=0.5\n", "t.ini:4: [database] Learn: Learn + Validation + Test = 1.2 exceeds 1"),
        ("Type=DIR_Database\nDataPath=/x\nLearn=0.7\nROIFile=a.json\n", "t.ini:5: [database] ROIFile: is not supported by qatrun (no ROI or composite data)"),
        ("Type=CIFAR10_Database\nValidation=0.1\nUseTestForValidation=1\n",
         "t.ini:3: [database] Validation: cannot be used with UseTestForValidation=1 (the test set is the validation set)"),
    ],
)  # fmt: skip
def test_database_key_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        database("[database]\n" + body)
    assert str(info.value) == message
