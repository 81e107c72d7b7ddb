"""The C export: written, compiled with the system cc, run, and every output equal to the integer network's,
on the SAT LeNet, the residual, MinMax and depthwise networks in integer and float rescaling modes, N2D2's
flavour, unconnected kernels; a changed constant is caught and named by layer; packing, the memory plan, the test-data file, no floating point in
the integer modes; 32-bit ARM under qemu and the Cortex-M4 size where the tools exist; the command."""

from __future__ import annotations

import copy
import re
import shutil
import struct
import sys
from pathlib import Path

import export_nets as nets
import numpy as np
import pytest
import torch

from qatrun.data.formats import write_mnist_subset
from qatrun.errors import RunError
from qatrun.export.c import export_c, write_export, write_test_data
from qatrun.export.c.__init__ import _reference, check_target
from qatrun.export.c.lower import lower, pack_layer, unpack
from qatrun.export.c.memory import check_plan, plan
from qatrun.export.c.toolchain import ARM, HOST, m4_size
from qatrun.fuse import FuseOptions

REPO = Path(__file__).resolve().parents[2]
needs_cc = pytest.mark.skipif(HOST.missing() is not None, reason=str(HOST.missing()))
needs_arm = pytest.mark.skipif(ARM.missing() is not None, reason=f"{ARM.missing()}")


# Depthwise and pointwise convolutions (MobileNet's block), strided and padded, global average pooling.
DEPTHWISE = """
[env]
SizeX=12
SizeY=12
NbChannels=3
BatchSize=8

[Conv_def]
Type=Conv
KernelDims=3 3
Padding=1
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=15
ConfigSection=common.config

[common.config]
NoBias=1

[Bn_def]
Type=BatchNorm
ActivationFunction=Linear
QAct=SAT
QAct.Alpha=4.0
QAct.Range=15

[conv1] Conv_def
Input=env
NbOutputs=8
QWeight.Range=255

[bn1] Bn_def
Input=conv1
NbOutputs=8

[dw] Conv_def
Input=bn1
NbOutputs=8
Stride=2
Mapping.ChannelsPerGroup=1

[dw_bn] Bn_def
Input=dw
NbOutputs=8

[pw] Conv_def
Input=dw_bn
KernelDims=1 1
Padding=0
NbOutputs=12

[pw_bn] Bn_def
Input=pw
NbOutputs=12

[pool]
Input=pw_bn
Type=Pool
Pooling=Average
PoolDims=6 6
NbOutputs=12
Mapping.ChannelsPerGroup=1

[fc]
Input=pool
Type=Fc
NbOutputs=10
ActivationFunction=Linear
QWeight=SAT
QWeight.Range=255
QWeight.ApplyScaling=1

[softmax]
Input=fc
Type=Softmax
NbOutputs=10
WithLoss=1

[softmax.Target]
"""
nets.TEXTS.setdefault("depthwise", DEPTHWISE)
nets.SHAPES.setdefault("depthwise", (3, 12, 12))


def integer(kind: str, mode: str) -> torch.fx.GraphModule:
    return nets.integer_network(kind, FuseOptions(rescaling=mode))


def predicted(int_gm: torch.fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    return int_gm(x).argmax(dim=1)


@needs_cc
@pytest.mark.parametrize(("kind", "mode"), [("lenet", "Floating-point"), ("residual", "Fixed-point16"),
                                            ("minmax", "Double-shift"), ("depthwise", "Floating-point32"),
                                            ("fmp", "Fixed-point16")])
def test_compiled_export_equals_the_integer_network(kind: str, mode: str, tmp_path: Path) -> None:
    int_gm = integer(kind, mode)
    x = nets.images(nets.SHAPES[kind], 24, seed=21)
    labels = predicted(int_gm, x)  # the C program must agree on every prediction: 100%
    report = export_c(int_gm, tmp_path / "c", x, labels, targets=("host",), m4=False)
    (host,) = report.checks
    assert report.ok and host.ran and host.differing_values == 0, report.summary()
    assert host.images == 24 and host.values == 24 * 10 and host.rate == 100.0
    for name in ("qatrun_network.h", "qatrun_network.c", "qatrun_rescale.h", "qatrun_test.c", "Makefile",
                 "test_data.bin", "memory_map.txt", "memory_map.png", "export_report.json"):
        assert (tmp_path / "c" / name).is_file(), name
    assert report.rom["total"] == sum(report.rom[part] for part in ("weights", "biases", "rescale", "tables"))
    assert (report.rom["tables"] > 0) == (kind == "fmp")
    assert report.ram["arena"] < report.ram["activations_float32"]


@needs_cc
def test_n2d2_flavour_with_rounded_weights(tmp_path: Path) -> None:
    """N2D2's fusion (RINTF weights, biases, clips): its clipped float32 rescale, in C, equal; unrounded
    weights have no C form (one-line error)."""
    rounded = FuseOptions(flavour="n2d2", weights_rounding="RINTF", biases_rounding="RINTF", clips_rounding="RINTF")
    x = nets.images(nets.SHAPES["lenet"], 16, seed=30)
    report = export_c(nets.integer_network("lenet", rounded), tmp_path / "c", x, targets=("host",), m4=False)
    assert report.ok and report.checks[0].ran, report.summary()
    with pytest.raises(RunError, match="conv1: its weights are not integers"):
        export_c(nets.integer_network("lenet", FuseOptions(flavour="n2d2")), tmp_path / "d", x, targets=())


@needs_cc
def test_unconnected_kernels_are_skipped(tmp_path: Path) -> None:
    """conv2 with two all-zero kernels (a partial Mapping): stored and computed without them, still exact."""
    int_gm = copy.deepcopy(integer("lenet", "Fixed-point16"))
    with torch.no_grad():
        int_gm.conv2.weight[1, 2] = 0
        int_gm.conv2.weight[3, 0] = 0
    x = nets.images(nets.SHAPES["lenet"], 16, seed=29)
    report = export_c(int_gm, tmp_path / "c", x, targets=("host",), m4=False)
    assert report.ok and report.checks[0].ran, report.summary()
    assert "conv2_conn" in (tmp_path / "c" / "qatrun_network.c").read_text()


@needs_cc
def test_a_changed_constant_is_found_and_named(tmp_path: Path) -> None:
    """One bias of conv2 changed in the source: outputs differ, the first image and the layer are named."""
    int_gm = integer("lenet", "Fixed-point16")
    x = nets.images(nets.SHAPES["lenet"], 16, seed=22)
    folder = tmp_path / "c"
    report = export_c(int_gm, folder, x, targets=(), m4=False)
    assert report.checks == []
    source = (folder / "qatrun_network.c").read_text()
    changed = re.sub(r"(static const int32_t conv2_b\[16\] = \{\n    )(-?\d+)",
                     lambda m: m.group(1) + str(int(m.group(2)) + 100000), source, count=1)
    assert changed != source
    (folder / "qatrun_network.c").write_text(changed)
    low = lower(int_gm, x[:2])
    plan(low)
    check = check_target(HOST, folder, low, int_gm, x, _reference(int_gm, x))
    assert check.differing_values > 0 and check.first_image == 0
    assert check.first_layer == "conv2 (+ pool2)", check.first_layer
    assert "first at image 0, layer conv2 (+ pool2)" in check.line()


def test_integer_modes_have_no_floating_point(tmp_path: Path) -> None:
    """MinMax ends with a quantized Fc: in Fixed-point16 the network source has no float type at all, and
    includes only <stdint.h>."""
    int_gm = integer("minmax", "Fixed-point16")
    write_export(int_gm, tmp_path, nets.images(nets.SHAPES["minmax"], 2, seed=23), "minmax")
    for name in ("qatrun_network.c", "qatrun_network.h"):
        text = (tmp_path / name).read_text()
        assert not re.search(r"\b(double|float)\b", text), name
        assert re.findall(r"#include <([^>]+)>", text) == ["stdint.h"], name
    assert "malloc" not in (tmp_path / "qatrun_network.c").read_text()


@pytest.mark.parametrize(("levels", "bits", "step"), [
    (np.arange(-15, 16, 2), 4, 2),            # SAT Default 4-bit: 2k - 15
    (np.arange(-255, 256, 2), 8, 2),          # SAT Default 8-bit
    (np.array([-1, 1]), 1, 2),                # binary
    (np.arange(-2, 2), 2, 1),                 # 2-bit symmetric range
    (np.arange(-7, 8), 4, 1),
    (np.arange(-300, 301), 16, 1),            # beyond 8 bits: raw int16
])
def test_packing_round_trip(levels: np.ndarray, bits: int, step: int) -> None:
    gen = np.random.default_rng(0)
    w = gen.choice(levels, size=(6, 5, 3, 3))
    w[0, 0] = levels.min()
    w[0, 1] = levels.max()  # the whole range appears
    packed = pack_layer(w, "layer")
    assert packed.bits == bits and packed.step == (step if bits <= 8 else 1) and packed.connected is None
    assert np.array_equal(unpack(packed, w.shape), w)
    if bits <= 8:
        assert packed.data.nbytes == -(-w.size * bits // 8)


def test_packing_skips_unconnected_pairs() -> None:
    """A partial mapping (all-zero kernels): only the connected kernels are stored."""
    w = np.random.default_rng(1).choice(np.arange(-15, 16, 2), size=(4, 3, 5, 5))
    w[1, 2] = 0
    w[3, 0] = 0
    packed = pack_layer(w, "conv2")
    assert packed.connected is not None and int(packed.connected.sum()) == 10
    assert packed.bits == 4 and packed.data.nbytes == 10 * 25 * 4 // 8
    assert np.array_equal(unpack(packed, w.shape), w)


def test_memory_plan_reuses_buffers() -> None:
    int_gm = integer("residual", "Floating-point")
    low = lower(int_gm, nets.images(nets.SHAPES["residual"], 2, seed=24))
    arena = plan(low)
    check_plan(low)
    tensors = [t for t in dict.fromkeys(low.tensors) if t.place == "arena"]
    assert arena < sum(t.nbytes for t in tensors)  # buffers are reused
    for step in low.steps:  # and no step can do with less than what it reads and writes at once
        alive = {id(t): t for t in [*step.inputs, step.output] if t.place == "arena"}
        assert arena >= sum(t.nbytes for t in alive.values())


def test_test_data_file(tmp_path: Path) -> None:
    pixels = np.arange(2 * 1 * 3 * 4, dtype=np.uint8).reshape(2, 1, 3, 4)
    size = write_test_data(tmp_path / "d.bin", pixels, np.array([7, -1]))
    raw = (tmp_path / "d.bin").read_bytes()
    assert size == len(raw) == 32 + 24 + 8
    assert raw[:8] == b"QTRNDATA" and struct.unpack("<6I", raw[8:32]) == (1, 2, 1, 3, 4, 0)
    assert raw[32:56] == pixels.tobytes() and struct.unpack("<2i", raw[56:]) == (7, -1)


def test_no_c_form_is_a_one_line_error() -> None:
    int_gm = integer("lenet", "Floating-point")
    with pytest.raises(RunError, match="unknown C export target 'avr'"):
        export_c(int_gm, "unused", nets.images(nets.SHAPES["lenet"], 2, seed=25), targets=("avr",))


@needs_cc
@needs_arm
def test_arm_under_qemu(tmp_path: Path) -> None:
    int_gm = integer("lenet", "Fixed-point16")
    x = nets.images(nets.SHAPES["lenet"], 16, seed=26)
    report = export_c(int_gm, tmp_path / "c", x, targets=("host", "arm"), m4=False)
    host, arm = report.checks
    assert arm.ran and report.ok, report.summary()
    assert arm.values == 160 and arm.checksum == host.checksum


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                    reason="arm-none-eabi-gcc not found (scripts/install_cross installs it)")
def test_cortex_m4_size(tmp_path: Path) -> None:
    int_gm = integer("lenet", "Fixed-point16")
    _, report = write_export(int_gm, tmp_path, nets.images(nets.SHAPES["lenet"], 2, seed=27), "lenet")
    size = m4_size(tmp_path)
    assert isinstance(size, dict), size
    assert size["text"] >= report.rom["total"] and size["bss"] == report.ram["arena"]


@needs_cc
def test_command_exports_c(tmp_path: Path) -> None:
    """``-qat-fuse -export c -db-export N`` through the command, on a small MNIST: the proof runs and passes;
    a float network is refused before anything is written."""
    import subprocess

    data = write_mnist_subset(REPO / "qatrun" / "data" / "mnist", tmp_path / "mnist", 64, 48)
    args = [sys.executable, "-m", "qatrun", str(REPO / "models" / "LeNet-QAT.ini"), "-qat-fuse",
            "-act-rescaling-mode", "Fixed-point32", "-export", "c", "-db-export", "12",
            "-set", f"[database]DataPath={data}"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "host: 12 images, all 120 outputs equal to the integer network's" in proc.stdout
    assert (tmp_path / "LeNet-QAT-c" / "qatrun_network.c").is_file()


def test_a_float_network_is_refused(tmp_path: Path) -> None:
    import qatrun

    network = qatrun.load(str(REPO / "models" / "LeNet.ini"))
    with pytest.raises(RunError, match="-export c needs a quantized network"):
        network.export("c", tmp_path / "c", nets.images((1, 32, 32), 2, seed=28))
    assert not (tmp_path / "c").exists()
