"""StimuliData sections (N2D2's keys, defaults and outputs), AffineTransformation and GTSRB_DIR_Database,
each against a plain reference computed here."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qatrun.data import DataSpec
from qatrun.data.formats import read_binary_mat, write_binary_mat
from qatrun.data.statistics import StimuliData
from qatrun.errors import ConfigError, DataError
from tests.data.helpers import doc, mnist_folder, scaled

N_TRAIN, N_TEST = 40, 10


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A tiny MNIST folder; (folder, train images (N, 1, 28, 28) uint8, test images)."""
    folder = tmp_path_factory.mktemp("mnist")
    train, _, test, _ = mnist_folder(folder, N_TRAIN, N_TEST, gz=False)
    return folder, torch.from_numpy(train)[:, None], torch.from_numpy(test)[:, None]


def spec_for(folder: Path, body: str, validation: float = 0.0) -> DataSpec:
    database = (f"[database]\nType=MNIST_IDX_Database\nDataPath={folder}\nValidation={validation}\n"
                "RandomPartitioning=0\n")
    return DataSpec.from_doc(doc(database + "[sp]\nSizeX=28\nSizeY=28\n" + body))


def collect(provider, partition: str) -> torch.Tensor:
    return torch.cat([x for x, _ in provider.loader(partition, shuffle=False)])


def injected(spec: DataSpec, section: str) -> dict[str, float]:
    found = spec.document.section(section)
    keys = [key for key in found.keys() if key.startswith(("_GlobalValue", "_MinSize", "_MaxSize", "_MeanSize"))]
    return {key: float(found.raw(key)) for key in keys}


# ------------------------------------------------------------------------------------------ StimuliData


def test_defaults_measure_the_learn_partition(mnist) -> None:
    folder, train, _ = mnist
    spec = spec_for(folder, "[sp.StimuliData-raw]\n", validation=0.25)
    assert spec.stages[0].statistics == StimuliData("sp.StimuliData-raw")  # ApplyTo=LearnOnly, every log off
    provider = spec.open(0)
    learn = train[:30].double()  # RandomPartitioning=0: Learn is the first 1 - 0.25 of the training images
    values = injected(spec, "sp.StimuliData-raw")
    assert values["_GlobalValue.minVal"] == float(learn.min()) and values["_GlobalValue.maxVal"] == float(learn.max())
    assert values["_GlobalValue.mean"] == pytest.approx(float(learn.mean()), rel=1e-12)
    assert values["_GlobalValue.stdDev"] == pytest.approx(float(learn.std(unbiased=False)), rel=1e-12)
    for which in ("Min", "Max", "Mean"):
        assert (values[f"_{which}Size.dimX"], values[f"_{which}Size.dimY"], values[f"_{which}Size.dimZ"]) == (28, 28, 1)
    stats = provider.statistics["sp.StimuliData-raw"]
    assert stats.count == 30 and stats.sizes == Counter({(28, 28, 1): 30})
    assert stats.histogram is None and stats.mean_image is None and stats.std_dev_image is None
    assert provider.images == {}


@pytest.mark.parametrize(
    ("apply_to", "rows"),
    [("All", slice(0, N_TRAIN + N_TEST)), ("TestOnly", slice(N_TRAIN, N_TRAIN + N_TEST)),
     ("NoLearn", slice(30, N_TRAIN + N_TEST)), ("ValidationOnly", slice(30, N_TRAIN))],
)
def test_apply_to_chooses_the_partitions_measured(mnist, apply_to: str, rows: slice) -> None:
    folder, train, test = mnist
    spec = spec_for(folder, f"[sp.StimuliData]\nApplyTo={apply_to}\n", validation=0.25)
    spec.open(0)
    measured = torch.cat([train, test]).double()[rows]
    assert injected(spec, "sp.StimuliData")["_GlobalValue.mean"] == pytest.approx(float(measured.mean()), rel=1e-12)


def test_outputs_of_every_key_on_8_bit_data(mnist, tmp_path: Path) -> None:
    folder, train, _ = mnist
    body = "[sp.StimuliData-all]\nLogSizeRange=1\nLogValueRange=1\nMeanData=1\nStdDevData=1\n"
    provider = spec_for(folder, body).open(0)
    stats = provider.statistics["sp.StimuliData-all"]
    learn = train.double()
    edges, counts = stats.histogram
    assert torch.equal(edges, torch.arange(256, dtype=torch.float64))
    assert torch.equal(counts, torch.from_numpy(np.bincount(train.numpy().ravel(), minlength=256)))
    assert torch.allclose(stats.mean_image, learn.mean(dim=0), rtol=1e-12, atol=0)
    assert torch.allclose(stats.std_dev_image, learn.std(dim=0, unbiased=False), rtol=1e-9, atol=1e-9)
    written = provider.write_statistics(tmp_path)
    out = tmp_path / "sp.StimuliData-all"
    assert sorted(p.name for p in written) == ["meanData.bin", "sizeRange.dat", "stdDevData.bin", "valueRange.dat"]
    assert (out / "sizeRange.dat").read_text() == f"28 28 1 {N_TRAIN}\n"
    assert torch.equal(read_binary_mat(out / "meanData.bin"), stats.mean_image)
    assert (out / "valueRange.dat").read_text().splitlines()[0] == f"0.0 {int(counts[0])}"


def test_value_range_of_float_data_has_100_bins(mnist) -> None:
    folder, train, _ = mnist
    body = ("[sp.Transformation-1]\nType=RangeAffineTransformation\nFirstOperator=Divides\nFirstValue=255\n"
            "[sp.StimuliData]\nLogValueRange=1\n")
    stats = spec_for(folder, body).open(0).statistics["sp.StimuliData"]
    values = (train.float() * torch.tensor(1 / 255, dtype=torch.float32)).double().numpy().ravel()
    low, high = values.min(), values.max()
    index = np.clip(((values - low) / (high - low) * 100).astype(np.int64), 0, 99)
    edges, counts = stats.histogram
    assert torch.equal(counts, torch.from_numpy(np.bincount(index, minlength=100)))
    assert float(edges[0]) == low and len(edges) == 100


def test_statistics_feed_later_sections_as_n2d2s_cifar_10_file_does(mnist) -> None:
    folder, train, _ = mnist
    body = ("[sp.StimuliData-normalize]\n"
            "[sp.Transformation-1]\nType=RangeAffineTransformation\nFirstOperator=Minus\n"
            "FirstValue=[sp.StimuliData-normalize]_GlobalValue.mean\nSecondOperator=Divides\n"
            "SecondValue=[sp.StimuliData-normalize]_GlobalValue.stdDev\n")
    spec = spec_for(folder, body)
    note = spec.data_note()  # read with the placeholders: listed as depending on the data
    assert "t.ini:13: [sp.Transformation-1] FirstValue refers to [sp.StimuliData-normalize]_GlobalValue.mean" in note
    x = collect(spec.open(0), "Learn").double()
    assert abs(float(x.mean())) < 1e-6 and float(x.std(unbiased=False)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[sp.StimuliData]\nApplyTo=Learn\n",
         't.ini:10: [sp.StimuliData] ApplyTo: expected one of LearnOnly, ValidationOnly, TestOnly, NoLearn, '
         'NoValidation, NoTest, All, found "Learn"'),
        ("[sp.StimuliData]\nMeanData=yes\n", 't.ini:10: [sp.StimuliData] MeanData: expected 0 or 1, found "yes"'),
    ],
)
def test_stimuli_data_key_errors(mnist, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec_for(mnist[0], body)
    assert str(info.value) == message


def test_unknown_stimuli_data_key_is_an_unknown_key(mnist) -> None:
    spec = spec_for(mnist[0], "[sp.StimuliData]\nMeanDat=1\n")
    with pytest.raises(ConfigError) as info:
        spec.document.check_strict()
    assert str(info.value) == "t.ini:10: [sp.StimuliData] MeanDat: unknown key 'MeanDat' (did you mean 'MeanData'?)"


# ------------------------------------------------------------------------------------------ AffineTransformation


def test_affine_subtracts_the_mean_image_stimuli_data_computed(mnist) -> None:
    folder, train, test = mnist
    body = ("[sp.StimuliData-mean]\nMeanData=1\nStdDevData=1\n"
            "[sp.Transformation-1]\nType=AffineTransformation\nFirstOperator=Minus\n"
            "FirstValue=sp.StimuliData-mean/meanData.bin\nSecondOperator=Divides\n"
            "SecondValue=sp.StimuliData-mean/stdDevData.bin\n")
    provider = spec_for(folder, body).open(0)
    mean = train.double().mean(dim=0)
    std = train.double().std(dim=0, unbiased=False)
    stats = provider.statistics["sp.StimuliData-mean"]
    assert torch.equal(provider.images["sp.StimuliData-mean/meanData.bin"], stats.mean_image)
    # the reference, with the statistics' own images (the sums agree with torch's to rounding only)
    assert torch.allclose(stats.mean_image, mean, rtol=1e-12, atol=0)
    assert torch.equal(collect(provider, "Learn"), ((train.double() - stats.mean_image) / stats.std_dev_image).float())
    assert torch.equal(collect(provider, "Test"), ((test.double() - stats.mean_image) / stats.std_dev_image).float())
    assert torch.allclose(stats.std_dev_image, std, rtol=1e-9, atol=1e-9)


def test_affine_reads_binary_mat_and_image_files(mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, train, _ = mnist
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the current folder, as in N2D2
    offset = torch.arange(28 * 28, dtype=torch.float64).view(1, 28, 28) / 7
    write_binary_mat(tmp_path / "offset.bin", offset)
    gain = np.random.default_rng(1).integers(1, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gain).save(tmp_path / "gain.png")
    body = ("[sp.Transformation-1]\nType=AffineTransformation\nFirstOperator=Plus\nFirstValue=offset.bin\n"
            "SecondOperator=Multiplies\nSecondValue=gain.png\n")
    x = collect(spec_for(folder, body).open(0), "Learn")
    reference = ((train.double() + offset) * torch.from_numpy(gain).double()).float()
    assert torch.equal(x, reference)


def test_affine_errors_come_when_the_data_are_opened(mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _, _ = mnist
    monkeypatch.chdir(tmp_path)
    body = "[sp.Transformation-1]\nType=AffineTransformation\nFirstOperator=Minus\nFirstValue=mean.bin\n"
    spec = spec_for(folder, body)  # the summary needs no matrix file
    with pytest.raises(DataError) as info:
        spec.open(0)
    assert str(info.value).startswith("AffineTransformation: no such matrix file: mean.bin (relative paths are")
    write_binary_mat(tmp_path / "mean.bin", torch.zeros(3, 28, 28, dtype=torch.float64))
    with pytest.raises(DataError) as info:
        spec_for(folder, body).open(0)
    assert str(info.value) == ("AffineTransformation: the matrix of mean.bin is 3x28x28 (C x H x W), the stimuli are "
                               "1x28x28 at this point")
    with pytest.raises(ConfigError) as info:
        spec_for(folder, body.replace("FirstOperator=Minus\n", ""))
    assert str(info.value) == "t.ini:9: [sp.Transformation-1] FirstOperator: required key is missing"


def test_binary_mat_layout_is_rows_cols_type_then_interleaved_channels(tmp_path: Path) -> None:
    values = np.arange(2 * 3 * 3, dtype=np.float32)  # rows 2, cols 3, 3 channels (CV_32FC3 = 5 + (2 << 3))
    (tmp_path / "m.bin").write_bytes(struct.pack("<iii", 2, 3, 5 + (2 << 3)) + values.tobytes())
    mat = read_binary_mat(tmp_path / "m.bin")
    assert mat.shape == (3, 2, 3)
    assert mat[:, 1, 2].tolist() == [15.0, 16.0, 17.0]  # pixel (row 1, col 2): channels interleaved
    write_binary_mat(tmp_path / "back.bin", mat)
    assert torch.equal(read_binary_mat(tmp_path / "back.bin"), mat)


# ------------------------------------------------------------------------------------------ GTSRB_DIR_Database


def gtsrb_folder(root: Path) -> dict[str, np.ndarray]:
    """3 training classes (sizes vary), 4 test images with GT-final_test.csv; returns RGB arrays by path."""
    rng = np.random.default_rng(0)
    written = {}
    for label, count in ((0, 3), (1, 2), (2, 3)):
        sub = root / "Final_Training" / "Images" / f"{label:05d}"
        sub.mkdir(parents=True)
        for k in range(count):
            rgb = rng.integers(0, 256, (6 + k, 7 + k, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(sub / f"00000_{k:05d}.ppm")
            written[f"{label:05d}/{k}"] = rgb
    test = root / "Final_Test" / "Images"
    test.mkdir(parents=True)
    lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for k, label in enumerate((2, 0, 1, 2)):
        rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(test / f"{k:05d}.ppm")
        lines.append(f"{k:05d}.ppm;8;8;1;1;7;7;{label}")
        written[f"test/{k}"] = rgb
    (test / "GT-final_test.csv").write_text("\n".join(lines) + "\n")
    return written


GTSRB_SP = """[database]
Type=GTSRB_DIR_Database
DataPath={root}
Validation=0.25
[sp]
SizeX=8
SizeY=8
NbChannels=3
[sp.StimuliData-sizes]
ApplyTo=NoTest
LogSizeRange=1
[sp.Transformation-1]
Type=RescaleTransformation
Width=8
Height=8
"""


def test_gtsrb_partitions_labels_and_pixels(tmp_path: Path) -> None:
    written = gtsrb_folder(tmp_path / "GTSRB")
    spec = DataSpec.from_doc(doc(GTSRB_SP.format(root=tmp_path / "GTSRB")))
    assert spec.database.sizes() == {"Learn": 6, "Validation": 2, "Test": 4}
    provider = spec.open(3)
    assert provider.nb_classes == 43 and provider.labels[:2] == ["00000", "00001"]
    sizes = provider.statistics["sp.StimuliData-sizes"].sizes  # before the Rescale: each image its size
    assert sizes == Counter({(7, 6, 3): 3, (8, 7, 3): 3, (9, 8, 3): 2})  # Learn and Validation: 8 images
    x, y = zip(*provider.loader("Test", shuffle=False))
    assert torch.cat(y).tolist() == [2, 0, 1, 2]
    bgr = torch.from_numpy(written["test/1"][:, :, ::-1].copy()).permute(2, 0, 1)
    assert torch.equal(torch.cat(x)[1], scaled(bgr))  # 8x8 already: the Rescale keeps it
    _, learn_y = zip(*provider.loader("Learn", shuffle=False))
    _, valid_y = zip(*provider.loader("Validation", shuffle=False))
    assert sorted(torch.cat(learn_y + valid_y).tolist()) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_gtsrb_errors(tmp_path: Path) -> None:
    gtsrb_folder(tmp_path / "GTSRB")
    (tmp_path / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv").unlink()
    spec = DataSpec.from_doc(doc(GTSRB_SP.format(root=tmp_path / "GTSRB")))
    with pytest.raises(DataError) as info:
        spec.open(0)
    missing = tmp_path / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv"
    assert f"is incomplete: missing {missing}. Extract GTSRB_Final_Training_Images.zip" in str(info.value)
    with pytest.raises(ConfigError) as info:
        DataSpec.from_doc(doc(GTSRB_SP.format(root=tmp_path).replace("Validation=0.25", "ExtractROIs=1")))
    assert str(info.value) == "t.ini:4: [database] ExtractROIs: is not supported by qatrun (only 0: the whole image)"


def test_sizes_from_statistics_are_checked_when_the_data_are_opened(mnist) -> None:
    folder, train, _ = mnist
    body = ("[sp.StimuliData-size]\n[sp.Transformation-1]\nType=PadCropTransformation\n"
            "Width=[sp.StimuliData-size]_MaxSize.dimX\nHeight=[sp.StimuliData-size]_MaxSize.dimY\n")
    spec = spec_for(folder, body)  # the placeholder size (1) is not held against the input size
    assert torch.equal(collect(spec.open(0), "Learn"), scaled(train))
