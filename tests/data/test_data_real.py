"""Real data: the shipped MNIST, N2D2's preprocessed golden inputs, the shared CIFAR-10 subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qatrun.data import DataSpec, formats
from qatrun.data.databases import SHIPPED_MNIST
from qatrun.data.transforms import Rescale
from qatrun.ini import loads
from tests.data.helpers import doc, scaled, write_idx

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "n2d2-lenet-8b"  # N2D2's logged inputs and the INI of their network
GOLDEN_POSITIONS = (3593, 9194)  # N2D2's test positions 0 and 1 of the golden run (the README of GOLDEN)


def read_dat(path: Path) -> list[str]:
    """The whitespace-separated tokens of an N2D2 ``-log-outputs`` file."""
    return path.read_text().split()


def test_shipped_mnist_sizes_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N2D2_DATA", str(REPO / "absent"))  # no DataPath, no $N2D2_DATA/mnist: the shipped copy
    spec = DataSpec.from_doc(
        doc("[database]\nType=MNIST_IDX_Database\nRandomPartitioning=0\n[sp]\nSizeX=28\nSizeY=28\n")
    )
    provider = spec.open(seed=1)
    assert provider.source == SHIPPED_MNIST
    assert provider.size("Learn") == 60000 and provider.size("Test") == 10000 and provider.size("Validation") == 0
    learn, test = provider._prepared["Learn"], provider._prepared["Test"]
    # qatrun/data/mnist/README.md
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(learn.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert learn.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert round(float(learn.data.double().mean()), 3) == 33.318


@pytest.fixture(scope="module")
def t10k() -> torch.Tensor:
    return formats.read_idx_images(SHIPPED_MNIST / "t10k-images-idx3-ubyte.gz")


@pytest.mark.parametrize("stimulus", [0, 1])
def test_rescale_reproduces_opencv_on_the_golden_inputs(t10k: torch.Tensor, stimulus: int) -> None:
    image = t10k[GOLDEN_POSITIONS[stimulus]][None]  # (1, 1, 28, 28)
    outputs = GOLDEN / "outputs"
    golden = torch.tensor([float(v) for v in read_dat(outputs / f"fused_NONE/stimulus{stimulus}/env.dat")]).view(32, 32)
    ours = Rescale(32, 32)(image)[0, 0].double()
    floating = F.interpolate(image.double(), size=(32, 32), mode="bilinear", align_corners=False).round()[0, 0]
    matched, float_matched = int((ours == golden).sum()), int((floating == golden).sum())
    # The golden README: a float half-pixel bilinear misses 7 and 23 pixels; the fixed point misses none.
    assert float_matched == 1024 - (7, 23)[stimulus]
    assert matched == 1024 >= float_matched
    # fakequant env.dat is p * float(1/255) in float32, printed with 6 significant digits; the correctly
    # rounded p / 255 prints differently on 4 and 7 pixels
    inputs = scaled(ours).double()
    assert [f"{v:.6g}" for v in inputs.flatten().tolist()] == read_dat(
        outputs / f"fakequant/stimulus{stimulus}/env.dat"
    )
    divided = (ours / 255).float().double()
    misses = sum(
        a != b
        for a, b in zip(
            [f"{v:.6g}" for v in divided.flatten().tolist()],
            read_dat(outputs / f"fakequant/stimulus{stimulus}/env.dat"),
        )
    )
    assert misses == (4, 7)[stimulus]


def test_golden_ini_through_the_provider(t10k: torch.Tensor, tmp_path: Path) -> None:
    # The golden INI as N2D2 ran it, on the genuine t10k set (its positions 3593 and 9194 are the golden
    # stimuli) and, to keep the test fast on a loaded machine, only the first 1 000 training images.
    train = formats.read_idx_images(SHIPPED_MNIST / "train-images-idx3-ubyte.gz")[:1000, 0].numpy()
    train_labels = formats.read_idx_labels(SHIPPED_MNIST / "train-labels-idx1-ubyte.gz")[:1000].numpy()
    test_labels = formats.read_idx_labels(SHIPPED_MNIST / "t10k-labels-idx1-ubyte.gz").numpy()
    write_idx(tmp_path, "train", train, train_labels, gz=False)
    write_idx(tmp_path, "t10k", t10k[:, 0].numpy(), test_labels, gz=False)
    ini = GOLDEN / "network.ini"
    text = ini.read_text().replace("Type=MNIST_IDX_Database", f"Type=MNIST_IDX_Database\nDataPath={tmp_path}")
    d = loads(text, path=str(ini))
    spec = DataSpec.from_doc(d)
    assert spec.input_shape == (1, 32, 32) and spec.batch_size == 256
    provider = spec.open(seed=1)
    assert provider.source == tmp_path and d.section("env").raw("_EpochSize") == "1000"
    assert sum(len(y) for _, y in provider.loader("Learn", shuffle=True)) == 1000
    x, _ = next(iter(provider.loader("Test", shuffle=False, batch_size=10000)))
    outputs = GOLDEN / "outputs/fakequant"
    for stimulus, position in enumerate(GOLDEN_POSITIONS):
        printed = [f"{v:.6g}" for v in x[position, 0].double().flatten().tolist()]
        assert printed == read_dat(outputs / f"stimulus{stimulus}/env.dat")


def test_cifar10_subset(cifar10: Path) -> None:
    spec = DataSpec.from_doc(
        doc(
            f"[database]\nType=CIFAR10_Database\nDataPath={cifar10}\n[sp]\nSizeX=32\nSizeY=32\nNbChannels=3\nBatchSize=100\n"
        )
    )
    assert spec.epoch_size() == 4660
    provider = spec.open(seed=0)
    assert (provider.size("Learn"), provider.size("Validation"), provider.size("Test")) == (4660, 0, 932)
    assert provider.labels == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    test = provider._prepared["Test"]
    assert torch.bincount(test.labels).tolist() == [97, 78, 94, 95, 85, 84, 105, 96, 98, 100]  # its README
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    raw = np.fromfile(cifar10 / "test_batch_first932.bin", np.uint8).reshape(-1, 3073)
    x, y = next(iter(provider.loader("Test", shuffle=False)))
    assert x.shape == (100, 3, 32, 32) and y[:5].tolist() == [3, 8, 8, 0, 6]
    bgr = raw[:100, 1:].reshape(100, 3, 32, 32)[:, ::-1]
    assert torch.equal(x, scaled(torch.from_numpy(bgr.copy())))
