"""N2D2 classification types qatrun adds for N2D2's model files: Caltech101/256_DIR_Database,
EqualizeTransformation, RandomAffineTransformation; and the label transformations it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qatrun.data import DataSpec
from qatrun.data.transforms import RandomAffine, equalize_hist
from qatrun.errors import ConfigError, DataError
from tests.data.helpers import doc, mnist_folder, scaled


def caltech_folder(root: Path, clutter: str) -> None:
    rng = np.random.default_rng(0)
    for category, count in (("accordion", 4), (clutter, 4), ("airplanes", 6), ("anchor", 4)):
        sub = root / category
        sub.mkdir(parents=True)
        for k in range(count):
            Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(sub / f"image_{k:04d}.jpg")


@pytest.mark.parametrize(("kind", "clutter"), [("Caltech101_DIR_Database", "BACKGROUND_Google"),
                                               ("Caltech256_DIR_Database", "257.clutter")])
@pytest.mark.parametrize("include", [0, 1])
def test_caltech_categories_and_clutter(tmp_path: Path, kind: str, clutter: str, include: int) -> None:
    caltech_folder(tmp_path / "cal", clutter)
    text = (f"[database]\nType={kind}\nDataPath={tmp_path / 'cal'}\nLearn=0.5\nValidation=0.25\nIncClutter={include}\n"
            "[sp]\nSizeX=5\nSizeY=5\nNbChannels=3\n")
    provider = DataSpec.from_doc(doc(text)).open(1)
    expected = sorted(["accordion", "airplanes", "anchor"] + ([clutter] if include else []))
    assert provider.labels == expected
    n = len(expected)  # per label, as many images as the rarest (4): 2 Learn, 1 Validation, 1 Test
    assert [provider.size(p) for p in ("Learn", "Validation", "Test")] == [2 * n, n, n]


def test_caltech_default_folder_is_n2d2s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N2D2_DATA", str(tmp_path))
    spec = DataSpec.from_doc(doc("[database]\nType=Caltech101_DIR_Database\nLearn=0.5\n[sp]\nSizeX=5\nSizeY=5\n"))
    with pytest.raises(DataError) as info:
        spec.database.sizes()
    assert f"in {tmp_path / '101_ObjectCategories'} ($N2D2_DATA/101_ObjectCategories)" in str(info.value)


def test_equalize_is_opencvs_equalize_hist(tmp_path: Path) -> None:
    train, _, _, _ = mnist_folder(tmp_path, 6, 2, gz=False)
    text = (f"[database]\nType=MNIST_IDX_Database\nDataPath={tmp_path}\n[sp]\nSizeX=28\nSizeY=28\n"
            "[sp.Transformation]\nType=EqualizeTransformation\n")
    x = torch.cat([x for x, _ in DataSpec.from_doc(doc(text)).open(0).loader("Learn", shuffle=False)])

    def reference(image: np.ndarray) -> np.ndarray:  # imgproc/src/histogram.cpp, EqualizeHistLut_Invoker
        hist = np.bincount(image.ravel(), minlength=256)
        first = int(np.nonzero(hist)[0][0])
        scale = np.float32(255.0) / np.float32(image.size - hist[first])
        lut, total = np.zeros(256, np.uint8), 0
        for value in range(first + 1, 256):
            total += hist[value]
            lut[value] = np.clip(np.rint(np.float32(total) * scale), 0, 255)
        return lut[image]

    expected = torch.from_numpy(np.stack([reference(image) for image in train]))[:, None]
    assert torch.equal(x, scaled(expected))
    flat = torch.full((1, 1, 3, 3), 9, dtype=torch.uint8)
    assert torch.equal(equalize_hist(flat), flat)  # one value: kept


def test_equalize_clahe_is_refused() -> None:
    base = ("[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\n"
            "[sp.Transformation]\nType=EqualizeTransformation\n")
    with pytest.raises(ConfigError) as info:
        DataSpec.from_doc(doc(base + "Method=CLAHE\n"))
    assert str(info.value) == ("t.ini:8: [sp.Transformation] Method: CLAHE is not implemented by qatrun (Standard is: "
                               "OpenCV's equalizeHist)")


def test_random_affine_with_fixed_draws_against_the_formula() -> None:
    t = RandomAffine((2.0, 2.0), (0.1, 0.1), (0.5, 0.5))
    p = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    expected = ((2.0 * p.double() / 255.0 + 0.1).clamp(0, 1) ** 0.5 * 255.0).round().to(torch.uint8)
    assert torch.equal(t(p, torch.Generator().manual_seed(0)), expected)
    never = RandomAffine((2.0, 2.0), (0.1, 0.1), (0.5, 0.5), 0.0, 0.0, 0.0)
    assert torch.equal(never(p, torch.Generator().manual_seed(0)), p)
    x = torch.rand(64, 1, 2, 2, dtype=torch.float64) * 0.5 + 0.1  # g x stays in [0, 1]: no clamp
    gains = (RandomAffine((0.5, 1.5))(x, torch.Generator().manual_seed(1)) / x).flatten(1)
    assert torch.allclose(gains, gains[:, :1].expand_as(gains), rtol=1e-12)  # one gain per image
    assert 0.5 <= float(gains.min()) < 0.7 and 1.3 < float(gains.max()) <= 1.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Type=RandomAffineTransformation\nGainRange=2 1\n",
         "t.ini:8: [sp.OnTheFlyTransformation] GainRange: expected two numbers, min max, found 2.0 1.0"),
        ("Type=RandomAffineTransformation\nGammaVarProb=1.5\n",
         "t.ini:8: [sp.OnTheFlyTransformation] GammaVarProb: expected a probability in [0, 1], found 1.5"),
        ("Type=LabelSliceExtractionTransformation\n",
         "t.ini:7: [sp.OnTheFlyTransformation] Type: LabelSliceExtractionTransformation transforms the pixel-wise "
         "labels of N2D2's segmentation; qatrun trains rate-based classifiers"),
    ],
    ids=["range", "probability", "label"],
)
def test_transformation_errors(body: str, message: str) -> None:
    base = "[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\n[sp.OnTheFlyTransformation]\n"
    with pytest.raises(ConfigError) as info:
        DataSpec.from_doc(doc(base + body))
    assert str(info.value) == message
