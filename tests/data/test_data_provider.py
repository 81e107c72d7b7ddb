"""The stimuli provider: INI -> DataSpec -> Provider -> batches (small generated data sets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qatrun.data import DataSpec
from qatrun.data.provider import ImplicitScale, schedule
from qatrun.data.resize import resize_bilinear
from qatrun.data.transforms import Flip, RangeAffine, Rescale, SliceExtraction
from qatrun.errors import ConfigError, DataError
from tests.data.helpers import doc, mnist_folder, scaled


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mnist")
    mnist_folder(folder, 50, 12, gz=True)
    return folder


def spec_for(folder: Path, body: str, database: str = "") -> DataSpec:
    return DataSpec.from_doc(doc(f"[database]\nType=MNIST_IDX_Database\nDataPath={folder}\n{database}\n{body}"))


def collect(provider, partition: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*provider.loader(partition, **kwargs))
    return torch.cat(xs), torch.cat(ys)


def test_lenet_chain_rescale_then_divide(mnist_dir: Path) -> None:
    spec = spec_for(
        mnist_dir,
        """
        [env]
        SizeX=32
        SizeY=32
        BatchSize=8
        [env.Transformation_0]
        Type=RescaleTransformation
        Width=32
        Height=32
        [env.Transformation_1]
        Type=RangeAffineTransformation
        FirstOperator=Divides
        FirstValue=255.0
        """,
        "Validation=0.2",
    )
    assert spec.input_shape == (1, 32, 32) and spec.batch_size == 8
    provider = spec.open(seed=3)
    assert spec.document.section("env").raw("_EpochSize") == "40"
    assert {p: provider.size(p) for p in ("Learn", "Validation", "Test")} == {"Learn": 40, "Validation": 10, "Test": 12}
    assert provider.nb_classes == 10 and provider.labels == [str(k) for k in range(10)]
    loader = provider.loader("Test", shuffle=False)
    assert len(loader) == 2
    x, y = collect(provider, "Test", shuffle=False)
    _, _, test, test_labels = mnist_folder(mnist_dir / "again", 50, 12, gz=False)
    expected = scaled(resize_bilinear(torch.from_numpy(test)[:, None], 32, 32))
    assert x.dtype == torch.float32 and torch.equal(x, expected)
    assert y.tolist() == test_labels.tolist()
    # the cache stays 8-bit; the division runs per batch
    learn = provider._prepared["Learn"]
    assert learn.data.dtype == torch.uint8 and learn.per_batch == [RangeAffine("Divides", (255.0,))]


def test_implicit_scaling_and_signed_mapping(mnist_dir: Path) -> None:
    base = "[sp]\nSizeX=28\nSizeY=28\nBatchSize=64\n"
    x, _ = collect(spec_for(mnist_dir, base).open(0), "Test", shuffle=False)
    raw = torch.from_numpy(mnist_folder(mnist_dir / "b", 50, 12, gz=False)[2])[:, None]
    assert torch.equal(x, scaled(raw))
    signed = spec_for(mnist_dir, base + "ConfigSection=sp.config\n[sp.config]\nDataSignedMapping=1\n")
    x, _ = collect(signed.open(0), "Test", shuffle=False)
    assert torch.equal(x, raw.float() * torch.tensor(2 / 255, dtype=torch.float32) - 1)
    quantized = spec_for(mnist_dir, base + "ConfigSection=c\n[c]\nQuantizationLevels=3\n")
    x, _ = collect(quantized.open(0), "Test", shuffle=False)
    assert set(x.unique().tolist()) <= {0.0, 0.5, 1.0}


def test_order_rule_static_in_file_order_then_on_the_fly(mnist_dir: Path) -> None:
    spec = spec_for(
        mnist_dir,
        """
        [sp]
        SizeX=4
        SizeY=4
        [sp.OnTheFlyTransformation-a]
        Type=RangeAffineTransformation
        FirstOperator=Plus
        FirstValue=1
        [sp.Transformation-b]
        Type=RangeAffineTransformation
        FirstOperator=Multiplies
        FirstValue=2
        [sp.Transformation-c]
        Type=SliceExtractionTransformation
        Width=4
        Height=4
        [sp.other]
        Unrelated=1
        """,
    )
    assert [s.section.name for s in spec.stages] == [
        "sp.OnTheFlyTransformation-a",
        "sp.Transformation-b",
        "sp.Transformation-c",
    ]
    static, dynamic = spec.chain("Learn")
    assert static == [RangeAffine("Multiplies", (2.0,)), SliceExtraction(4, 4)]
    assert dynamic == [RangeAffine("Plus", (1.0,))]
    x, _ = collect(spec.open(0), "Test", shuffle=False)
    raw = torch.from_numpy(mnist_folder(mnist_dir / "c", 50, 12, gz=False)[2])[:, None, :4, :4]
    assert torch.equal(x, (raw.double() * 2 + 1).float())  # (x * 2) + 1, not (x + 1) * 2; no /255 (float)


def test_apply_to_filters_partitions(mnist_dir: Path) -> None:
    spec = spec_for(
        mnist_dir,
        """
        [sp]
        SizeX=28
        SizeY=28
        [sp.Transformation-learn]
        Type=FlipTransformation
        HorizontalFlip=1
        ApplyTo=LearnOnly
        [sp.Transformation-rest]
        Type=RangeAffineTransformation
        FirstOperator=Minus
        FirstValue=255
        ApplyTo=NoLearn
        """,
        "RandomPartitioning=0",
    )
    assert spec.chain("Learn")[0] == [Flip(horizontal=True)]
    assert spec.chain("Test")[0] == [RangeAffine("Minus", (255.0,))]
    provider = spec.open(0)
    learn, _ = collect(provider, "Learn", shuffle=False)
    test, _ = collect(provider, "Test", shuffle=False)
    train, _, raw_test, _ = mnist_folder(mnist_dir / "d", 50, 12, gz=False)
    assert torch.equal(learn, scaled(torch.from_numpy(train)[:, None].flip(-1)))
    assert torch.equal(test, (torch.from_numpy(raw_test)[:, None].double() - 255).float())


def test_stimuli_data_statistics_are_injected_and_used(mnist_dir: Path) -> None:
    text = """
        [sp]
        SizeX=28
        SizeY=28
        [sp.Transformation-1]
        Type=RangeAffineTransformation
        FirstOperator=Divides
        FirstValue=255.0
        [sp.StimuliData-normalize]
        [sp.Transformation-2]
        Type=RangeAffineTransformation
        FirstOperator=Minus
        FirstValue=[sp.StimuliData-normalize]_GlobalValue.mean
        SecondOperator=Divides
        SecondValue=[sp.StimuliData-normalize]_GlobalValue.stdDev
        """
    spec = spec_for(mnist_dir, text)
    assert spec.stages[2].transform == RangeAffine("Minus", (0.0,), "Divides", (1.0,))  # placeholders
    provider = spec.open(0)
    stats = spec.document.section("sp.StimuliData-normalize")
    learn = scaled(torch.from_numpy(mnist_folder(mnist_dir / "e", 50, 12, gz=False)[0])).double()
    mean, std = float(learn.mean()), float(learn.std(unbiased=False))
    assert float(stats.raw("_GlobalValue.mean")) == pytest.approx(mean, rel=1e-12)
    assert float(stats.raw("_GlobalValue.stdDev")) == pytest.approx(std, rel=1e-12)
    assert float(stats.raw("_GlobalValue.maxVal")) == float(learn.max())
    x, _ = collect(provider, "Learn", shuffle=False)
    assert abs(float(x.double().mean())) < 1e-6 and float(x.double().std(unbiased=False)) == pytest.approx(
        1.0, rel=1e-5
    )


def test_loader_shuffle_epochs_and_shards(mnist_dir: Path) -> None:
    provider = spec_for(mnist_dir, "[sp]\nSizeX=28\nSizeY=28\nBatchSize=7\n").open(seed=5)
    _, plain = collect(provider, "Learn", shuffle=False)
    _, a = collect(provider, "Learn", shuffle=True, epoch=0)
    _, b = collect(provider, "Learn", shuffle=True, epoch=0)
    _, c = collect(provider, "Learn", shuffle=True, epoch=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == sorted(plain.tolist())
    # shards: disjoint and complete slices of the same permutation; len() counts batches
    order = provider.loader("Learn", shuffle=True, epoch=2).order()
    shards = [provider.loader("Learn", shuffle=True, epoch=2, rank=r, world=3).order() for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(50))
    assert torch.equal(shards[1], order[1::3])
    sizes = [
        sum(len(y) for _, y in provider.loader("Learn", True, batch_size=4, rank=r, world=3, epoch=2)) for r in range(3)
    ]
    assert sizes == [17, 17, 16]
    assert [len(provider.loader("Learn", True, batch_size=4, rank=r, world=3)) for r in range(3)] == [5, 5, 4]


def test_random_static_transformations_are_not_cached(mnist_dir: Path) -> None:
    spec = spec_for(
        mnist_dir,
        "[sp]\nSizeX=20\nSizeY=20\n[sp.Transformation-crop]\nType=SliceExtractionTransformation\n"
        "Width=20\nHeight=20\nRandomOffsetX=1\nRandomOffsetY=1\n",
    )
    provider = spec.open(0)
    assert provider._prepared["Learn"].data.shape[-2:] == (28, 28)
    x0, _ = collect(provider, "Learn", shuffle=False, epoch=0)
    x1, _ = collect(provider, "Learn", shuffle=False, epoch=1)
    x0b, _ = collect(provider, "Learn", shuffle=False, epoch=0)
    assert torch.equal(x0, x0b) and not torch.equal(x0, x1)


def test_schedule_caches_geometry_defers_pointwise() -> None:
    data = torch.zeros(3, 1, 6, 6, dtype=torch.uint8)
    cache, rest = schedule(data, [Rescale(4, 4), RangeAffine("Divides", (255.0,))])
    assert cache.dtype == torch.uint8 and cache.shape == (3, 1, 4, 4) and rest == [RangeAffine("Divides", (255.0,))]
    cache, rest = schedule(data, [RangeAffine("Divides", (255.0,)), Rescale(4, 4)])
    assert cache.dtype == torch.float32 and cache.shape == (3, 1, 4, 4) and rest == []
    flip = Flip(random_horizontal=True)
    cache, rest = schedule(data, [flip, Rescale(4, 4)])
    assert cache.shape == (3, 1, 6, 6) and rest == [flip, Rescale(4, 4)]
    assert ImplicitScale()(torch.tensor([255], dtype=torch.uint8)).tolist() == [1.0]


def test_dir_database_files_through_workers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, size in (("a", (10, 12)), ("b", (7, 9))):
        (tmp_path / label).mkdir()
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / label / f"{k}.png")
    spec = DataSpec.from_doc(
        doc(
            f"""
            [database]
            Type=DIR_Database
            DataPath={tmp_path}
            Learn=0.67
            [sp]
            SizeX=6
            SizeY=5
            NbChannels=3
            BatchSize=2
            [sp.Transformation-1]
            Type=RescaleTransformation
            Width=6
            Height=5
            """
        )
    )
    provider = spec.open(0)
    assert provider.labels == ["a", "b"] and provider.size("Learn") == 4 and provider.size("Test") == 2
    x, y = collect(provider, "Test", shuffle=False)
    files = provider._prepared["Test"].files
    expected = torch.stack(
        [
            resize_bilinear(torch.from_numpy(np.asarray(Image.open(f))[..., ::-1].copy()).permute(2, 0, 1)[None], 5, 6)[
                0
            ]
            for f in files
        ]
    )
    assert torch.equal(x, scaled(expected)) and y.tolist() == [0, 1]


def test_load_in_memory_caches_after_the_static_prefix(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for label, sizes in (("a", [(10, 12), (8, 8)]), ("b", [(7, 9), (9, 7)])):
        (tmp_path / label).mkdir()
        for k, size in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(tmp_path / label / f"{k}.pgm")
    text = f"""
        [database]
        Type=DIR_Database
        DataPath={tmp_path}
        Learn=1.0
        LoadInMemory=1
        [sp]
        SizeX=4
        SizeY=4
        [sp.Transformation-1]
        Type=RescaleTransformation
        Width=4
        Height=4
        [sp.OnTheFlyTransformation-2]
        Type=FlipTransformation
        RandomHorizontalFlip=1
        """
    provider = DataSpec.from_doc(doc(text)).open(0)
    learn = provider._prepared["Learn"]
    assert learn.files is None and learn.data.shape == (4, 1, 4, 4) and learn.data.dtype == torch.uint8
    files = sorted(tmp_path.glob("*/*.pgm"))
    expected = torch.cat(
        [resize_bilinear(torch.from_numpy(np.asarray(Image.open(f)).copy())[None, None], 4, 4) for f in files]
    )
    assert torch.equal(learn.data, expected)
    x, _ = collect(provider, "Learn", shuffle=False)
    for k in range(4):
        assert torch.equal(x[k], scaled(expected[k])) or torch.equal(x[k], scaled(expected[k].flip(-1)))
    no_rescale = text.replace("Type=RescaleTransformation", "Type=FlipTransformation").replace(
        "Width=4\n        Height=4\n        [sp.On", "[sp.On"
    )
    with pytest.raises(DataError, match="images differ after the static transformations"):
        DataSpec.from_doc(doc(no_rescale)).open(0)


# ---------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("[database]\nType=MNIST_IDX_Database\n", ConfigError, "t.ini: Missing [sp] section (or [env]): the stimuli provider"),
        ("[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=32\nSizeY=32\n", DataError,
         "t.ini:3: [sp] the network input is 1x32x32 (NbChannels x SizeY x SizeX) but the Learn stimuli are 1x28x28 after "
         "the transformations (add a RescaleTransformation, PadCropTransformation or ColorSpaceTransformation)"),
        ("[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\n", ConfigError, "t.ini:3: [sp] SizeY: required key is missing"),
        ("[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\nBatchSize=0\n", ConfigError,
         "t.ini:6: [sp] BatchSize: must be positive, found 0"),
        ("[database]\nType=MNIST_IDX_Database\n[sp]\nSize=28 28\nSizeX=28\n", ConfigError,
         "t.ini:5: [sp] SizeX: give either Size or SizeX/SizeY/NbChannels"),
        ("[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\n[sp.ChannelTransformation-1]\nType=FlipTransformation\n",
         ConfigError, "t.ini:6: [sp.ChannelTransformation-1] this kind of stimuli-provider sub-section is not supported by qatrun"),
        ("[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\n[sp.MyTransformation]\nType=FlipTransformation\n",
         ConfigError, "t.ini:6: [sp.MyTransformation] Unknown StimuliProvider type (expected <sp>.Transformation*, "
         "<sp>.OnTheFlyTransformation* or <sp>.StimuliData*)"),
        ("[database]\nType=MNIST_IDX_Database\n[sp]\nSizeX=28\nSizeY=28\nConfigSection=c\n[c]\nStreamTensor=1\n",
         ConfigError, "t.ini:8: [c] StreamTensor: is not supported by qatrun"),
    ],
)  # fmt: skip
def test_spec_errors(text: str, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        DataSpec.from_doc(doc(text))
    assert type(info.value) is error and str(info.value) == message


def test_spec_reads_every_key_without_data(tmp_path: Path) -> None:
    d = doc(
        f"""
        [database]
        Type=CIFAR10_Database
        DataPath={tmp_path}/absent
        Validation=0.1
        [sp]
        SizeX=24
        SizeY=24
        NbChannels=3
        BatchSize=128
        CachePath={tmp_path}/cache
        ConfigSection=sp.config
        [sp.config]
        DataSignedMapping=0
        QuantizationLevels=256
        QuantizationMax=1.0
        [sp.Transformation-1]
        Type=PadCropTransformation
        Width=24
        Height=24
        [sp.OnTheFlyTransformation-2]
        Type=FlipTransformation
        RandomHorizontalFlip=1
        ApplyTo=LearnOnly
        """
    )
    spec = DataSpec.from_doc(d)  # no file is touched: the data set does not exist
    assert spec.input_shape == (3, 24, 24) and spec.batch_size == 128 and spec.quantization == (256, 0.0, 1.0)
    assert all(section.unconsumed() == [] for section in d.sections())
    with pytest.raises(DataError, match="data set not found"):
        spec.epoch_size()


def test_env_section_size_key_and_spiking_keys(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_for(
        mnist_dir, "[sp]\nSizeX=5\nSizeY=5\n[env]\nSize=28 28 1\nBatchSize=4\nStimulusType=JitteredPeriodic\n"
    )
    assert spec.section.name == "env" and spec.input_shape == (1, 28, 28)
    assert (
        "t.ini:11: warning: [env] StimulusType only drives N2D2's spiking simulator; qatrun ignores it"
        in capsys.readouterr().err
    )
    spec.open(0)
    assert spec.document.section("env").raw("_EpochSize") == "50"
