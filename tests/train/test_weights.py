"""N2D2 weights folders: round trips, the golden N2D2 folder, N2D2's error texts, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
import torch

from qatrun.errors import DataError
from qatrun.train.weights import (
    Entry,
    atomic_folder,
    cell_file,
    export_folder,
    file_path,
    format_value,
    import_folder,
    read_values,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "n2d2-lenet-8b" / "weights_8b_SAT"  # N2D2's, shipped


def _lenet_entries(fill: float | None = None) -> list[Entry]:
    """The cells of LeNet-bn-SAT-8b with empty (or random) tensors of N2D2's shapes."""
    gen = torch.Generator().manual_seed(1)

    def t(*shape: int) -> torch.Tensor:
        return torch.full(shape, fill) if fill is not None else torch.randn(shape, generator=gen)

    entries = []
    for name, shape in [("conv1", (6, 1, 5, 5)), ("conv2", (16, 6, 5, 5)), ("conv3", (120, 16, 5, 5))]:
        entries.append(Entry(name, "conv", {"weights": t(*shape)}))
    for name, shape in [("fc1", (84, 120)), ("fc2", (10, 84))]:
        entries.append(Entry(name, "fc", {"weights": t(*shape)}))
    for name, n in [("bn1", 6), ("bn2", 16), ("bn3", 120)]:
        entries.append(Entry(name, "bn", {r: t(n) for r in ("scales", "biases", "means", "variances")}))
    for name in ("bn1", "bn2", "bn3", "fc1", "fc2"):
        entries.append(Entry(name, "scalar", {"QAct_SAT_Alpha": t(1)}))
    return entries


def test_golden_folder_reads_with_n2d2_shapes_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    entries = _lenet_entries(fill=float("nan"))
    assert import_folder(GOLDEN, entries) == []
    for entry in entries:
        for tensor in entry.tensors.values():
            assert not tensor.isnan().any(), entry.name
    by_name = {(e.name, e.kind): e for e in entries}
    conv1 = by_name["conv1", "conv"].tensors["weights"]
    assert conv1[0, 0, 0, :3].tolist() == pytest.approx([0.00156621, 0.0112854, -0.0425692], rel=1e-7)
    assert float(by_name["bn1", "scalar"].tensors["QAct_SAT_Alpha"]) == pytest.approx(5.99716)
    assert float(by_name["fc2", "scalar"].tensors["QAct_SAT_Alpha"]) == pytest.approx(8.9776)
    # the cached fake-quantized weights, never read by import, written back from explicit tensors
    for e in entries:
        if e.kind in ("conv", "fc"):
            stem = "quant_weights" if e.kind == "conv" else "quant_weights_quant"
            q = read_values(GOLDEN / f"{e.name}_{stem}.syntxt").to(torch.float32)
            e.tensors["quant_weights"] = q.view_as(e.tensors["weights"])
    export_folder(tmp_path / "out", entries)
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".syntxt")
    assert written == sorted(p.name for p in GOLDEN.iterdir())
    for name in written:
        assert (tmp_path / "out" / name).read_bytes() == (GOLDEN / name).read_bytes(), name


def test_round_trip_masked_conv_bn_scalars_with_10_digits(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, 3, 2, 2)
    for o, channels in enumerate([[0], [1, 2], [0, 1, 2], [2]]):
        mask[o, channels] = 1
    src = [
        Entry("a/conv:1", "conv", {"weights": torch.randn(4, 3, 2, 2, generator=gen),
                                   "biases": torch.randn(4, generator=gen)}, mask=mask, digits=10),
        Entry("fc", "fc", {"weights": torch.randn(5, 12, generator=gen, dtype=torch.float64)}, digits=10),
        Entry("bn", "bn", {r: torch.rand(3, generator=gen) for r in ("scales", "biases", "means", "variances")}),
        Entry("bn", "scalar", {"QAct_SAT_Alpha": torch.tensor(6.25), "QAct_LSQ_StepSize": torch.tensor([0.5])}),
    ]
    export_folder(tmp_path / "w", src)
    lines = cell_file(tmp_path / "w", "a/conv:1", "weights.syntxt").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [4, 8, 12, 4]  # only the connected channels
    assert lines[1].split()[0] == format_value(float(src[0].tensors["weights"][1, 1, 0, 0]), 10)
    assert (tmp_path / "w" / "a" / "conv_1_weights.distrib.dat").is_file()
    assert (tmp_path / "w" / "bn_QAct_SAT_Alpha.syntxt").read_text() == "6.25"

    dst = [
        Entry(e.name, e.kind, {k: torch.zeros_like(v) for k, v in e.tensors.items()}, mask=e.mask) for e in src
    ]
    import_folder(tmp_path / "w", dst)
    for s, d in zip(src, dst):
        for key, value in s.tensors.items():
            expected = value * s.mask if s.mask is not None and key == "weights" else value
            got = d.tensors[key]
            if s.digits == 10 and value.dtype == torch.float32:
                assert torch.equal(got, expected), key  # 10 digits carry a float32 exactly
            else:
                rtol = 1e-9 if s.digits == 10 else 1e-5
                torch.testing.assert_close(got, expected, rtol=rtol, atol=0)
    # 6 digits: a value written, read and written again is stable
    export_folder(tmp_path / "w2", dst)
    for name in ("bn_scales.syntxt", "bn_QAct_SAT_Alpha.syntxt"):
        assert (tmp_path / "w" / name).read_text() == (tmp_path / "w2" / name).read_text()


def test_float32_survives_10_digits_exactly(tmp_path: Path) -> None:
    w = torch.randn(3, 7, generator=torch.Generator().manual_seed(3))
    export_folder(tmp_path / "w", [Entry("fc", "fc", {"weights": w}, digits=10)])
    back = torch.zeros_like(w)
    import_folder(tmp_path / "w", [Entry("fc", "fc", {"weights": back})])
    assert torch.equal(back, w)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3 4 5", "Error while reading synaptic file: {}"),
        ("1 2 3 4 5 6 7", "Synaptic file size larger than expected: {}"),
        ("1 2 x 4 5 6", "Error while reading synaptic file: {} (could not convert string to float: 'x')"),
    ],
)
def test_wrong_size_messages(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "fc_weights.syntxt").write_text(text)
    with pytest.raises(DataError) as err:
        import_folder(tmp_path, [Entry("fc", "fc", {"weights": torch.zeros(2, 3)})])
    assert str(err.value) == message.format(tmp_path / "fc_weights.syntxt")


def test_missing_files_notice_under_ignore_but_biases_are_required(tmp_path: Path) -> None:
    entries = [Entry("c", "conv", {"weights": torch.ones(1, 1, 1, 1)}),
               Entry("c", "scalar", {"QAct_SAT_Alpha": torch.tensor(1.0)})]
    notes: list[str] = []
    missing = import_folder(tmp_path, entries, ignore_missing=True, notify=notes.append)
    assert missing == [tmp_path / "c_weights.syntxt", tmp_path / "c_QAct_SAT_Alpha.syntxt"]
    assert notes[0] == f"Notice: Could not open synaptic file: {tmp_path / 'c_weights.syntxt'}"
    assert entries[0].tensors["weights"].item() == 1.0
    with pytest.raises(DataError, match="Could not open synaptic file: .*c_weights.syntxt"):
        import_folder(tmp_path, entries)

    (tmp_path / "c_weights.syntxt").write_text("2 \n")
    with_bias = [Entry("c", "conv", {"weights": torch.ones(1, 1, 1, 1), "biases": torch.zeros(1)})]
    with pytest.raises(DataError, match=r"c_biases.syntxt \(the cell has biases: NoBias=0\)"):
        import_folder(tmp_path, with_bias, ignore_missing=True)


def test_single_file_form_weights_then_biases(tmp_path: Path) -> None:
    (tmp_path / "c.syntxt").write_text("1 2\n3 4\n-0.5 0.5\n")
    e = Entry("c", "conv", {"weights": torch.zeros(2, 2, 1, 1), "biases": torch.zeros(2)})
    import_folder(tmp_path, [e])
    assert e.tensors["weights"].flatten().tolist() == [1, 2, 3, 4] and e.tensors["biases"].tolist() == [-0.5, 0.5]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("conv1", "conv1"), ("a/b", "a/b"), ('x<y>z:"w"|?*', "x_y_z__w____"), ("tab\there", "tab_here")],
)
def test_file_path_sanitising(name: str, expected: str) -> None:
    assert file_path(name) == expected


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [(0.00156621, 6, "0.00156621"), (7.37946e-05, 6, "7.37946e-05"), (-0.0, 6, "-0"), (1.0, 6, "1"),
     (5.99716, 6, "5.99716"), (1 / 3, 10, "0.3333333333"), (123456789.0, 6, "1.23457e+08")],
)
def test_format_like_ostream(value: float, digits: int, text: str) -> None:
    assert format_value(value, digits) == text


def test_atomic_folder_replaces_or_keeps(tmp_path: Path) -> None:
    target = tmp_path / "weights"
    export_folder(target, [Entry("s", "scalar", {"A": torch.tensor(1.0)})])
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "s_A.syntxt").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "s_A.syntxt").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["weights"]
    export_folder(target, [Entry("t", "scalar", {"A": torch.tensor(3.0)})])
    assert sorted(os.listdir(target)) == ["t_A.syntxt"]


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_10_digits_carry_any_float32(value: float) -> None:
    text = format_value(value, 10)
    assert torch.tensor(float(text), dtype=torch.float32).item() == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_6_digit_text_is_stable_through_float32(value: float) -> None:
    """What N2D2 wrote with 6 digits, read into float32 and written again, is the same text."""
    text = format_value(value, 6)
    again = format_value(torch.tensor(float(text), dtype=torch.float32).item(), 6)
    assert again == text


def test_setter_receives_read_values_instead_of_in_place_writes(tmp_path: Path) -> None:
    (tmp_path / "a_QAct_LSQ_StepSize.syntxt").write_text("0.125")
    step = torch.tensor([1.0])
    got: list[tuple[str, list[float]]] = []
    entry = Entry("a", "scalar", {"QAct_LSQ_StepSize": step, "Other": torch.tensor([2.0])},
                  setter=lambda role, t: got.append((role, t.tolist())))
    import_folder(tmp_path, [entry], ignore_missing=True, notify=lambda _: None)
    assert got == [("QAct_LSQ_StepSize", [0.125])] and step.item() == 1.0  # the missing file: no call


def test_distribution_plots_one_png_per_distribution(tmp_path) -> None:
    from qatrun.train.weights import Entry, export_folder, plot_distributions

    weights = torch.linspace(-1, 1, 2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
    entry = Entry("conv1", "conv", {"weights": weights, "biases": torch.tensor([0.5, -0.5])})
    export_folder(tmp_path / "w", [entry])
    dats = sorted((tmp_path / "w").glob("*.distrib.dat"))
    pngs = plot_distributions(tmp_path / "w")
    assert [p.name for p in pngs] == [d.name[: -len(".dat")] + ".png" for d in dats]
    assert len(pngs) == 2  # weights and biases
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
