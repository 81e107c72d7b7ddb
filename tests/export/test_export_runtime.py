"""run_onnx / OnnxModule on loader-like batches, the report text, and the weight sizes."""

from __future__ import annotations

from pathlib import Path

import export_nets as nets
import pytest
import torch

from qatrun import train
from qatrun.export import OnnxModule, export, run_onnx, weight_sizes


@pytest.fixture(scope="module")
def int_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "lsq_int.onnx"
    x = nets.images(nets.SHAPES["lsq"], 8, seed=41)
    assert export("onnx-int", nets.network("lsq"), nets.integer_network("lsq"), path, x).ok
    return path


def test_run_onnx_yields_one_output_per_batch(int_file: Path) -> None:
    batches = [nets.images(nets.SHAPES["lsq"], n, seed=42 + n) for n in (5, 1, 7)]
    pairs = [(x, torch.zeros(x.shape[0], dtype=torch.int64)) for x in batches]
    int_gm = nets.integer_network("lsq")
    for optimize in (False, True):
        outputs = list(run_onnx(int_file, pairs, optimize=optimize))
        assert len(outputs) == 3
        for x, out in zip(batches, outputs):
            assert torch.equal(out, int_gm(x))
    assert torch.equal(next(run_onnx(int_file, batches[:1])), int_gm(batches[0]))  # bare inputs too


def test_onnx_module_tests_like_a_network(int_file: Path) -> None:
    x = nets.images(nets.SHAPES["lsq"], 24, seed=45)
    labels = nets.integer_network("lsq")(x).argmax(1)
    metrics = train.test(OnnxModule(int_file), [(x[:12], labels[:12]), (x[12:], labels[12:])])
    assert int(metrics.matrix.sum()) == 24 and int(metrics.matrix.trace()) == 24


def test_summary_lines(int_file: Path, tmp_path: Path) -> None:
    x = nets.images(nets.SHAPES["lsq"], 4, seed=46)
    report = export("onnx-int", nets.network("lsq"), nets.integer_network("lsq"), tmp_path / "i.onnx", x)
    assert report.summary().startswith(f"onnx-int: {tmp_path / 'i.onnx'} (")
    assert "bit-identical to the integer network on 4 inputs" in report.summary()
    report.raise_if_failed()
    report.differing = 1
    with pytest.raises(Exception, match="does not match.*1 of 40 values differ"):
        report.raise_if_failed()


def test_weight_sizes_of_lenet() -> None:
    sizes = weight_sizes(nets.network("lenet"))
    assert [(s.name, s.weights, s.bits) for s in sizes.layers] == [
        ("conv1", 150, 8), ("conv2", 2400, 4), ("conv3", 48000, 4), ("fc1", 10080, 4), ("fc2", 840, 8),
    ]
    assert sizes.float32_bytes == 4 * 61470 and sizes.int8_bytes == 61470
    assert sizes.packed_bytes == 150 + 1200 + 24000 + 5040 + 840
    assert sizes.other_bytes == 4 * 4 * (6 + 16 + 120)  # BatchNorm only: NoBias=1
    assert sizes.as_dict()["packed_bytes"] == sizes.packed_bytes


def test_weight_sizes_of_a_float_network() -> None:
    from qatrun.export.onnx_float import float_network

    sizes = weight_sizes(float_network(nets.network("lsq")))
    assert all(s.bits == 32 for s in sizes.layers)
    assert sizes.packed_bytes == sizes.float32_bytes == sizes.int8_bytes
