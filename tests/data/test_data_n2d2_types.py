"""N2D2 classification types qatrun adds for N2D2's model files: Caltech101/256_DIR_Database, CSV_Database,
EqualizeTransformation (equalizeHist and CLAHE, each against OpenCV's algorithm), RandomAffineTransformation,
ThresholdTransformation (with Otsu's level) and RangeClippingTransformation; and the label transformations it
refuses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qatrun.data import DataSpec
from qatrun.data.transforms import RandomAffine, RangeClipping, Threshold, clahe, equalize_hist
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


# A 9 x 11 image and OpenCV 4.14's createCLAHE(clip, (grid, grid)).apply of it (recorded with cv2).
CLAHE_IMAGE = [
    [139, 74, 229, 241, 169, 65, 6, 160, 149, 106, 38], [175, 188, 205, 175, 229, 98, 249, 10, 148, 95, 86],
    [147, 198, 66, 39, 106, 213, 171, 45, 167, 57, 69], [81, 55, 14, 153, 178, 215, 76, 52, 39, 250, 72],
    [215, 50, 161, 223, 112, 172, 161, 233, 38, 17, 89], [1, 221, 6, 242, 127, 143, 6, 60, 210, 94, 25],
    [166, 33, 249, 189, 12, 204, 33, 57, 124, 30, 199], [149, 202, 119, 72, 220, 3, 209, 122, 136, 147, 77],
    [133, 82, 115, 87, 162, 230, 70, 71, 240, 62, 47],
]
OPENCV_CLAHE = {
    (1.0, 3): [
        [128, 96, 239, 251, 159, 76, 16, 159, 168, 151, 32], [175, 191, 223, 175, 239, 112, 255, 28, 160, 131, 128],
        [143, 207, 80, 44, 120, 211, 175, 48, 183, 64, 96], [104, 64, 32, 144, 179, 221, 96, 62, 48, 255, 108],
        [207, 56, 144, 225, 108, 175, 159, 247, 52, 28, 128], [16, 211, 28, 245, 120, 139, 28, 85, 233, 128, 40],
        [143, 48, 255, 167, 40, 199, 64, 80, 144, 60, 239], [124, 183, 104, 83, 217, 16, 223, 134, 167, 193, 112],
        [120, 80, 96, 94, 163, 241, 104, 108, 255, 84, 72],
    ],
    (40.0, 2): [
        [102, 60, 246, 255, 149, 59, 4, 170, 174, 170, 51], [162, 178, 196, 162, 242, 102, 246, 11, 167, 153, 128],
        [110, 187, 51, 17, 99, 210, 178, 51, 198, 94, 102], [68, 36, 11, 122, 178, 221, 89, 59, 52, 255, 109],
        [216, 34, 136, 230, 103, 174, 171, 238, 44, 26, 131], [4, 226, 17, 250, 116, 137, 12, 68, 228, 136, 26],
        [157, 38, 255, 178, 26, 206, 39, 62, 155, 34, 221], [149, 195, 108, 66, 225, 16, 220, 139, 168, 208, 119],
        [128, 76, 94, 85, 170, 241, 72, 85, 252, 85, 51],
    ],
}


def clahe_reference(image: np.ndarray, clip: float, grid: int) -> np.ndarray:
    """OpenCV's clahe.cpp, pixel by pixel in numpy float32 (the scalar code path)."""
    h, w = image.shape
    ext = image
    if h % grid or w % grid:
        ext = np.pad(image, ((0, grid - h % grid), (0, grid - w % grid)), mode="reflect")  # REFLECT_101
    th, tw = ext.shape[0] // grid, ext.shape[1] // grid
    area = th * tw
    limit = max(int(clip * area / 256), 1) if clip > 0 else 0
    luts = np.zeros((grid, grid, 256), np.float32)
    for ty in range(grid):
        for tx in range(grid):
            hist = np.bincount(ext[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw].ravel(), minlength=256)
            if limit:
                clipped = int(np.maximum(hist - limit, 0).sum())
                hist = np.minimum(hist, limit) + clipped // 256
                residual, i = clipped % 256, 0
                step = max(256 // residual, 1) if residual else 1
                while i < 256 and residual > 0:
                    hist[i] += 1
                    i, residual = i + step, residual - 1
            scale = np.float32(255.0) / np.float32(area)
            luts[ty, tx] = np.clip(np.rint(np.cumsum(hist).astype(np.float32) * scale), 0, 255)
    out = np.zeros_like(image)
    for y in range(h):
        fy = np.float32(y) * (np.float32(1.0) / np.float32(th)) - np.float32(0.5)
        y1 = int(np.floor(fy))
        ya = np.float32(fy - np.float32(y1))
        y1, y2 = max(y1, 0), min(y1 + 1, grid - 1)
        for x in range(w):
            fx = np.float32(x) * (np.float32(1.0) / np.float32(tw)) - np.float32(0.5)
            x1 = int(np.floor(fx))
            xa = np.float32(fx - np.float32(x1))
            x1, x2 = max(x1, 0), min(x1 + 1, grid - 1)
            v = image[y, x]
            top = luts[y1, x1, v] * (np.float32(1) - xa) + luts[y1, x2, v] * xa
            bottom = luts[y2, x1, v] * (np.float32(1) - xa) + luts[y2, x2, v] * xa
            out[y, x] = np.clip(np.rint(top * (np.float32(1) - ya) + bottom * ya), 0, 255)
    return out


@pytest.mark.parametrize(("clip", "grid"), sorted(OPENCV_CLAHE))
def test_clahe_is_opencvs(clip: float, grid: int) -> None:
    image = torch.tensor(CLAHE_IMAGE, dtype=torch.uint8)[None, None]
    assert clahe(image, clip, grid)[0, 0].tolist() == OPENCV_CLAHE[(clip, grid)]


@pytest.mark.parametrize(("shape", "clip", "grid"), [((16, 16), 2.0, 4), ((21, 13), 3.0, 8), ((30, 24), 0.0, 3),
                                                     ((5, 40), 40.0, 8)])
def test_clahe_against_the_plain_reference(shape: tuple[int, int], clip: float, grid: int) -> None:
    image = np.random.default_rng(sum(shape)).normal(110, 30, shape).clip(0, 255).astype(np.uint8)
    assert np.array_equal(clahe(torch.from_numpy(image)[None, None], clip, grid)[0, 0].numpy(),
                          clahe_reference(image, clip, grid))


def test_equalize_clahe_keys(tmp_path: Path) -> None:
    mnist_folder(tmp_path, 4, 2, gz=False)
    text = (f"[database]\nType=MNIST_IDX_Database\nDataPath={tmp_path}\n[sp]\nSizeX=28\nSizeY=28\n"
            "[sp.Transformation]\nType=EqualizeTransformation\nMethod=CLAHE\nCLAHE_ClipLimit=2.0\nCLAHE_GridSize=4\n")
    provider = DataSpec.from_doc(doc(text)).open(0)
    x = torch.cat([x for x, _ in provider.loader("Test", shuffle=False)])
    raw = torch.from_numpy(mnist_folder(tmp_path / "again", 4, 2, gz=False)[2])[:, None]
    assert torch.equal(x, scaled(clahe(raw, 2.0, 4)))
    with pytest.raises(ConfigError) as info:
        DataSpec.from_doc(doc(text.replace("CLAHE_GridSize=4", "CLAHE_GridSize=0")))
    assert str(info.value) == ("t.ini:11: [sp.Transformation] CLAHE_GridSize: expected a positive number of tiles, "
                               "found 0")


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


def write_csv(path: Path, rows: list[tuple[list[float], str]], header: str = "", sep: str = ",") -> None:
    lines = [header] if header else []
    lines += [sep.join([*(repr(v) for v in values), label]) for values, label in rows]
    path.write_text("\n".join(lines) + "\n")


def csv_ini(path: Path, extra: str = "", size: int = 3) -> str:
    return (f"[database]\nType=CSV_Database\nDataPath={path}\n{extra}"
            f"[sp]\nSizeX={size}\nSizeY=1\nBatchSize=4\n")


def test_csv_values_labels_and_partitions_against_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = [([float(v) for v in rng.normal(size=3).round(4)], str(label)) for label in rng.choice([2, 10, 7], 40)]
    write_csv(tmp_path / "d.csv", rows, header="a,b,c,class")
    spec = DataSpec.from_doc(doc(csv_ini(tmp_path / "d.csv", "NbHeaderLines=1\nLearn=0.5\nValidation=0.25\n")))
    provider = spec.open(5)
    assert provider.labels == ["2", "7", "10"]  # numeric labels in numeric order
    assert [provider.size(p) for p in ("Learn", "Validation", "Test")] == [20, 10, 10]
    seen: list[tuple[tuple[float, ...], int]] = []
    for part in ("Learn", "Validation", "Test"):
        for x, y in provider.loader(part, shuffle=False):
            assert x.dtype == torch.float32 and x.shape[1:] == (1, 1, 3)  # as written: no 8-bit scaling
            seen += [(tuple(v.tolist()), int(t)) for v, t in zip(x[:, 0, 0], y)]
    expected = [(tuple(float(np.float32(v)) for v in values), ["2", "7", "10"].index(label)) for values, label in rows]
    assert sorted(seen) == sorted(expected)  # every line once, with its label


def test_csv_label_column_separators_and_names(tmp_path: Path) -> None:
    text = "cat 1.5 2\n\ndog;3;4\nbird\t5 6\n"  # label first, spaces, semicolons, tabs, a blank line
    (tmp_path / "d.csv").write_text(text)
    spec = DataSpec.from_doc(doc(csv_ini(tmp_path / "d.csv", "LabelColumn=0\nLearn=1\n", size=2)))
    provider = spec.open(0)
    assert provider.labels == ["bird", "cat", "dog"]
    x, y = next(iter(provider.loader("Learn", shuffle=False)))
    assert x[:, 0, 0].tolist() == [[1.5, 2.0], [3.0, 4.0], [5.0, 6.0]] and y.tolist() == [1, 2, 0]


@pytest.mark.parametrize(("content", "message"), [
    ("1,2,3,a\n1,2,b\n", "d.csv:2: 3 columns, where the lines above have 4"),
    ("1,2,3,a\n1,x,3,b\n", "d.csv:2: 'x' is not a number (the label is column -1)"),
    ("1,2,3,a\n1,inf,3,b\n", "d.csv:2: a value is not finite (nan or inf)"),
    ("\n\n", "d.csv: the CSV file holds no stimulus"),
])
def test_csv_bad_lines_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DataError) as info:
        DataSpec.from_doc(doc(csv_ini(tmp_path / "d.csv"))).open(0)
    assert str(info.value) == f"{tmp_path}/{message}"


@pytest.mark.parametrize(("extra", "message"), [
    ("", None),
    ("Learn=0.8\nValidation=0.5\n", "t.ini:4: [database] Learn: Learn + Validation + Test = 1.3 exceeds 1"),
    ("NbHeaderLines=-1\n", "t.ini:4: [database] NbHeaderLines: expected 0 or more, found -1"),
])
def test_csv_keys(tmp_path: Path, extra: str, message: str | None) -> None:
    write_csv(tmp_path / "d.csv", [([1.0, 2.0, 3.0], "a")] * 4)
    if message is None:
        assert DataSpec.from_doc(doc(csv_ini(tmp_path / "d.csv", extra))).open(0).size("Learn") == 4  # Learn=1
        return
    with pytest.raises(ConfigError) as info:
        DataSpec.from_doc(doc(csv_ini(tmp_path / "d.csv", extra)))
    assert str(info.value) == message


def test_csv_needs_its_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        DataSpec.from_doc(doc("[database]\nType=CSV_Database\n[sp]\nSizeX=3\nSizeY=1\n"))
    assert str(info.value) == ("t.ini:1: [database] DataPath: required key is missing (the CSV file; CSV_Database "
                               "has no default)")
    spec = DataSpec.from_doc(doc(csv_ini(tmp_path / "absent.csv")))
    with pytest.raises(DataError) as data_error:
        spec.open(0)
    assert "data set not found: looked for a CSV file (one stimulus per line) in" in str(data_error.value)


def threshold_reference(p: int, t: float, max_value: float, operation: str) -> int:
    """OpenCV's 8-bit threshold of one pixel, written from its documented rule (level floor(t), value round)."""
    level, top = math.floor(t), min(max(round(max_value), 0), 255)
    above = p > level
    return {"Binary": top if above else 0, "BinaryInverted": 0 if above else top,
            "Truncate": min(max(level, 0), 255) if above else p, "ToZero": p if above else 0,
            "ToZeroInverted": 0 if above else p}[operation]


@pytest.mark.parametrize("operation", ["Binary", "BinaryInverted", "Truncate", "ToZero", "ToZeroInverted"])
@pytest.mark.parametrize(("t", "max_value"), [(127.0, 255.0), (99.5, 1.0), (-3.0, 200.4), (255.0, 7.0), (0.0, 300.0)])
def test_threshold_on_8_bit_images_pixel_by_pixel(operation: str, t: float, max_value: float) -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = Threshold(t, False, operation, max_value)(x)
    assert y.dtype == torch.uint8
    assert y.flatten().tolist() == [threshold_reference(p, t, max_value, operation) for p in range(256)]


def test_threshold_on_float_data() -> None:
    x = torch.tensor([[[[-1.0, 0.25, 0.5, 0.75]]]])
    assert Threshold(0.5, False, "Binary", 2.0)(x).flatten().tolist() == [0.0, 0.0, 0.0, 2.0]
    assert Threshold(0.5, False, "Truncate", 1.0)(x).flatten().tolist() == [-1.0, 0.25, 0.5, 0.5]
    assert Threshold(0.3, False, "ToZeroInverted", 1.0)(x).flatten().tolist() == [-1.0, 0.25, 0.0, 0.0]


def otsu_reference(image: np.ndarray) -> int:
    """The level t maximising w0 w1 (mu0 - mu1)^2 over the classes <= t and > t, by brute force."""
    values = image.ravel().astype(np.float64)
    best, best_t = -1.0, 0
    for t in range(256):
        low, high = values[values <= t], values[values > t]
        if len(low) == 0 or len(high) == 0:
            continue
        between = len(low) * len(high) / len(values) ** 2 * (low.mean() - high.mean()) ** 2
        if between > best + 1e-9:
            best, best_t = between, t
    return best_t


def test_threshold_otsu_per_image(tmp_path: Path) -> None:
    train, _, _, _ = mnist_folder(tmp_path, 6, 2, gz=False)
    text = (f"[database]\nType=MNIST_IDX_Database\nDataPath={tmp_path}\n[sp]\nSizeX=28\nSizeY=28\n"
            "[sp.Transformation]\nType=ThresholdTransformation\nOtsuMethod=1\nMaxValue=255\n")
    x = torch.cat([x for x, _ in DataSpec.from_doc(doc(text)).open(0).loader("Learn", shuffle=False)])
    images = np.asarray(train)
    assert x.shape[0] == len(images)
    for got, image in zip(x, images):
        t = otsu_reference(image)
        assert torch.equal(got[0], torch.from_numpy(((image > t) * 1.0).astype(np.float32)))  # 255 -> 1.0


def test_range_clipping() -> None:
    x8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert RangeClipping(10.4, 200.6)(x8).flatten().tolist() == [min(max(p, 10), 201) for p in range(256)]
    xf = torch.linspace(-2, 2, 9).view(1, 1, 3, 3)
    assert torch.equal(RangeClipping(-0.5, 1.0)(xf), xf.clamp(-0.5, 1.0))


@pytest.mark.parametrize(("body", "message"), [
    ("Type=ThresholdTransformation\n", "t.ini:6: [sp.Transformation] Threshold: required key is missing (or write "
                                       "OtsuMethod=1)"),
    ("Type=RangeClippingTransformation\nRangeMin=0\n",
     "t.ini:6: [sp.Transformation] RangeMax: required key is missing"),
    ("Type=RangeClippingTransformation\nRangeMin=2\nRangeMax=1\n",
     "t.ini:9: [sp.Transformation] RangeMax: expected a value >= RangeMin (2), found 1"),
])
def test_threshold_and_range_clipping_keys(body: str, message: str) -> None:
    base = "[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\n[sp.Transformation]\n"
    with pytest.raises(ConfigError) as info:
        DataSpec.from_doc(doc(base + body))
    assert str(info.value) == message
