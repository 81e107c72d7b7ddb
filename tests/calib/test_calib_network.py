"""Calibration on a small network with BatchNorm and a residual Sum: folding, points, quantizers, the
integer network's verification, the saved calibration's round trip, and QAT starting values."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import qatrun
from qatrun import calib
from qatrun.errors import DataError, RunError
from qatrun.quant import LSQActivationQuantizer, MinMaxActivationQuantizer, QuantizedActivation, SATActivationQuantizer

NET = """
[database]
Type=MNIST_IDX_Database

[sp]
SizeX=12
SizeY=12
BatchSize=16

[sp.Transformation-1]
Type=RescaleTransformation
Width=12
Height=12

[conv1]
Input=sp
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs=6
ActivationFunction=Linear
{q}

[bn1]
Input=conv1
Type=BatchNorm
NbOutputs=6
ActivationFunction=Rectifier
{qa}

[conv2]
Input=bn1
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs=6
ActivationFunction=Linear
{q}

[bn2]
Input=conv2
Type=BatchNorm
NbOutputs=6
ActivationFunction=Linear
{qa}

[sum]
Input=bn2,bn1
Type=ElemWise
Operation=Sum
NbOutputs=6
ActivationFunction=Rectifier
{qa}

[pool]
Input=sum
Type=Pool
PoolDims=2 2
Stride=2
Pooling=Max
NbOutputs=6
Mapping.Size=1

[fc]
Input=pool
Type=Fc
NbOutputs=10
ActivationFunction=Linear
{q}

[softmax]
Input=fc
Type=Softmax
NbOutputs=10
WithLoss=1

[softmax.Target]
"""


def _network(tmp_path: Path, q: str = "", qa: str = "", seed: int = 1) -> qatrun.Network:
    path = tmp_path / f"net{abs(hash((q, qa)))}.ini"
    path.write_text(NET.format(q=q, qa=qa))
    network = qatrun.load(path, seed=seed, kernels="eager")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # BatchNorms as after training: their statistics and affine parameters are not 0/1
        for module in network.gm.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(6, generator=g) * 0.3)
                module.running_var.copy_(torch.rand(6, generator=g) + 0.5)
                module.weight.copy_(torch.randn(6, generator=g))
                module.bias.copy_(torch.randn(6, generator=g) * 0.2)
    network.gm.eval()
    return network


def _images(count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 1, 12, 12), generator=g).float() / 255


def _batches(seed: int = 5):
    x = _images(64, seed)
    return lambda: iter(x.split(16))


def test_folding_in_place_keeps_the_function_and_the_cells(tmp_path: Path) -> None:
    network = _network(tmp_path)
    x = _images(8, 0)
    before = network.gm(x)
    pairs = calib.fold_batchnorm_in_place(network.gm)
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]
    torch.testing.assert_close(network.gm(x), before, rtol=1e-5, atol=1e-5)
    assert "bn1" in network.summary()  # the graph and its cells are unchanged


def test_float_network_is_quantized_at_its_points_and_verified_exactly(tmp_path: Path) -> None:
    network = _network(tmp_path)
    x = _images(32, 9)
    reference = network.gm(x).argmax(1)
    result = calib.calibrate_float(network.gm, _batches(), calib.CalibOptions(bits=8))
    # conv1 and conv2 feed their BatchNorms (folded), so the points are the BatchNorms, the Sum and the Fc
    assert [p.name for p in result.points] == ["bn1", "bn2", "sum", "fc"]
    signed = {p.name: p.signed for p in result.points}
    assert signed == {"bn1": False, "bn2": True, "sum": False, "fc": True}
    sum_point = next(p for p in result.points if p.name == "sum")
    assert not sum_point.clip and sum_point.threshold == sum_point.hi  # a Sum is never clipped
    assert sum_point.observed == "pool"  # its only consumer is a max-pool
    for point in result.points:
        wrapped = network.gm.get_submodule(point.quantizer)
        assert isinstance(wrapped, QuantizedActivation) and isinstance(wrapped.quantizer, MinMaxActivationQuantizer)
        q = wrapped.quantizer
        assert float(q.running_max) == pytest.approx(point.threshold)
        assert float(q.running_min) == pytest.approx(-point.threshold if point.signed else 0.0)
    assert (network.gm(x).argmax(1) == reference).float().mean() >= 0.9  # 8 bits barely move the scores
    for rescaling in ("Floating-point", "Fixed-point16"):
        integer = qatrun.integerize(network.gm, qatrun.FuseOptions(rescaling=rescaling))
        report = integer.verify([x])
        assert report.ok, str(report)


def test_per_output_scales_and_4_bits(tmp_path: Path) -> None:
    network = _network(tmp_path)
    result = calib.calibrate_float(network.gm, _batches(), calib.CalibOptions(bits=4, per_output=True,
                                                                            act_clipping="KL-Divergence"))
    assert {p.steps for p in result.points} == {15}
    conv = network.gm.get_submodule("conv1")
    levels, unit = conv.integer_weights()
    assert unit.numel() == 6 and int(levels.abs().max()) == 7  # one scale per channel, levels -7..7
    assert qatrun.integerize(network.gm).verify([_images(16, 3)]).ok


def test_weight_clipping_cuts_an_outlier(tmp_path: Path) -> None:
    network = _network(tmp_path)
    with torch.no_grad():
        network.gm.get_submodule("fc").weight[0, 0] = 5.0  # one weight far beyond the others
    result = calib.calibrate_float(network.gm, _batches(), calib.CalibOptions(bits=4, wt_clipping="MSE"))
    assert result.weight_thresholds["fc"] < 5.0
    assert float(network.gm.get_submodule("fc").weight.detach().abs().max()) == pytest.approx(result.weight_thresholds["fc"])


def test_reload_gives_the_same_thresholds_and_refuses_other_weights(tmp_path: Path) -> None:
    first = _network(tmp_path)
    made = calib.calibrate_float(first.gm, _batches(), calib.CalibOptions(bits=8))
    folder = calib.save(made, tmp_path / "calibration", plots=True)
    assert (folder / "bn1.png").is_file() and (folder / "thresholds.dat").read_text().startswith("point")

    again = _network(tmp_path)  # the same weights
    reloaded = calib.calibrate_float(again.gm, None, calib.CalibOptions(bits=8), reloaded=calib.load(folder))
    assert [p.threshold for p in reloaded.points] == [p.threshold for p in made.points]
    x = _images(16, 4)
    assert torch.equal(again.gm(x), first.gm(x))

    # the same histograms with another clipping mode: the thresholds of a direct KL calibration
    kl_direct = calib.calibrate_float(_network(tmp_path).gm, _batches(), calib.CalibOptions(act_clipping="KL-Divergence"))
    kl_reload = calib.calibrate_float(_network(tmp_path).gm, None, calib.CalibOptions(act_clipping="KL-Divergence"),
                                      reloaded=calib.load(folder))
    assert [p.threshold for p in kl_reload.points] == [p.threshold for p in kl_direct.points]

    other = _network(tmp_path, seed=2)  # other weights
    with pytest.raises(RunError, match="made from other weights"):
        calib.calibrate_float(other.gm, None, calib.CalibOptions(), reloaded=calib.load(folder))
    with pytest.raises(DataError, match="no calibration in"):
        calib.load(tmp_path / "nowhere")
    (folder / "calibration.json").write_text("{")
    with pytest.raises(DataError, match="not a calibration"):
        calib.load(folder)


def test_a_quantized_network_is_refused_for_ptq(tmp_path: Path) -> None:
    network = _network(tmp_path, q="QWeight=SAT\nQWeight.Range=15")
    with pytest.raises(RunError, match="needs a float network"):
        calib.calibrate_float(network.gm, _batches(), calib.CalibOptions())


@pytest.mark.parametrize("method", ["SAT", "LSQ"])
def test_qat_quantizers_start_from_the_data(tmp_path: Path, method: str) -> None:
    qa = f"QAct={method}\nQAct.Range=15" + ("\nQAct.Alpha=8.0" if method == "SAT" else "")
    network = _network(tmp_path, q=f"QWeight={method}\nQWeight.Range=15", qa=qa)
    x = _images(64, 5)
    bn = network.gm.get_submodule("bn1")
    running = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    result = calib.initialize(network.gm, lambda: iter(x.split(16)), calib.CalibOptions(act_clipping="MSE"))
    # the BatchNorms normalised with the batches' statistics, and kept their running statistics
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert int(bn.num_batches_tracked) == running[2] and bn.momentum == 0.1
    bn1 = next(p for p in result.points if p.name == "bn1")
    q = network.gm.get_submodule("bn1_act").quantizer
    if method == "SAT":
        assert isinstance(q, SATActivationQuantizer)
        assert float(q.alpha.detach()) == pytest.approx(bn1.threshold) and bn1.before == "alpha 8"
        assert not bn1.signed
    else:
        assert isinstance(q, LSQActivationQuantizer)
        assert float(q.step.detach()) == pytest.approx(bn1.threshold / q.spec.bounds[1]) and bool(q.initialized)
    assert 0 < bn1.threshold <= bn1.hi
    assert result.kind == "qat" and "->" in result.table()
