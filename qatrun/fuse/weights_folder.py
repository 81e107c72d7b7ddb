"""``weights_quantized/``: the fused network's parameters in N2D2's format, plus what N2D2 leaves out.

Same files as N2D2 writes after ``-qat-sat`` (reference/n2d2.md §6.4, §8.1), for every fused Conv/Fc:

* ``<cell>_weights.syntxt``: one line per output, the connected kernels (Conv) or inputs (Fc) in
  PyTorch's flatten order, each value followed by a space; 6 significant digits as C++ ``ostream``
  (``%g``: N2D2's float32 integers print as ``-0`` where negative zero, as in its files);
* ``<cell>_biases.syntxt``: one value per line, for layers with a bias (every fused Conv).

N2D2 keeps the per-channel clip and scale in memory only; qatrun adds ``activation_scaling.csv``, with one
row per output channel (``layer,channel,clip,scale``: the columns of golden/n2d2-lenet-8b/derived, float32
values printed with 9 significant digits, float64 ones with 17), extended with ``offset,min,max`` for the
exact flavour and ``multiplier,shift`` for the integer rescaling modes; an empty clip means none. With
those, the files describe the whole integer network.

The folder is written atomically: into a temporary sibling directory, then renamed over the target, with
SIGINT / SIGTERM held back during the swap and the clean-up, so that an interrupt leaves the old folder or the
new one and no temporary or retired sibling. A layer with a non-finite weight or bias is refused before
anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from qatrun.errors import RunError
from qatrun.files import atomic_folder
from qatrun.fuse.graph import FusedLayer, FuseReport

SCALING_FILE = "activation_scaling.csv"
_FORBIDDEN = set('<>:"|?*')


def file_stem(name: str) -> str:
    """N2D2's ``Utils::filePath``: control characters and ``< > : " | ? *`` become ``_``."""
    return "".join("_" if ch in _FORBIDDEN or ord(ch) < 32 else ch for ch in name)


def format_value(value: float | int) -> str:
    """C++ ``ostream`` default formatting: 6 significant digits (``%g``); integers as they are."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _values(t: Tensor) -> list[float | int]:
    return t.tolist() if not t.is_floating_point() else [float(v) for v in t.double().tolist()]


def _weight_lines(layer: FusedLayer) -> list[str]:
    assert layer.layer is not None
    weight = layer.layer.weight
    lines = []
    for o in range(weight.shape[0]):
        row = weight[o]
        if layer.mask is not None and weight.dim() == 4:
            connected = layer.mask[o].flatten(1).any(dim=1)  # (C,) input channels connected to output o
            row = row[connected]
        lines.append("".join(format_value(v) + " " for v in _values(row.flatten())) + "\n")
    return lines


def _scaling_rows(layer: FusedLayer, exact: bool) -> list[list[str]]:
    assert layer.layer is not None
    p = layer.layer.requant
    digits = 9 if p.float32 else 17

    def number(v: float) -> str:
        return f"{v:.{digits}g}"

    rows = []
    for c in range(p.scale.shape[0]):
        row = [layer.name, str(c), "" if p.clip is None else number(float(p.clip[c])), number(float(p.scale[c]))]
        if exact:
            row += [number(float(p.offset[c])), str(p.lo), str(p.hi)]
        if p.multiplier is not None and p.shift is not None:
            row += [str(int(p.multiplier[c])), str(int(p.shift[c]))]
        rows.append(row)
    return rows


def write_weights_quantized(folder: str | os.PathLike[str], report: FuseReport) -> Path:
    """Writes the fused Conv/Fc layers of ``report`` as N2D2's ``weights_quantized/``, atomically.

    Args:
        folder: the target directory (replaced if it exists).
        report: from :func:`qatrun.fuse.integerize`.

    Returns:
        The folder written.
    """
    target = Path(folder)
    _refuse_non_finite(target, report)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(target) as staging:
        _write_into(staging, report)
    return target


def _refuse_non_finite(target: Path, report: FuseReport) -> None:
    for layer in report.layers:
        if layer.layer is None:
            continue
        tensors = {"weights": layer.layer.weight}
        if layer.layer.has_bias:
            tensors["biases"] = layer.layer.bias
        for role, tensor in tensors.items():
            flat = tensor.detach().reshape(-1)
            if flat.is_floating_point() and not bool(torch.isfinite(flat).all()):
                index = int((~torch.isfinite(flat)).nonzero()[0, 0])
                raise RunError(f"cannot write {target}: {layer.name} {role} holds {float(flat[index])} at index "
                               f"{index}; non-finite values are never written")


def _write_into(folder: Path, report: FuseReport) -> None:
    exact = report.options.flavour == "exact"
    header = ["layer", "channel", "clip", "scale"] + (["offset", "min", "max"] if exact else [])
    rows: list[list[str]] = []
    for layer in report.layers:
        if layer.layer is None:
            continue
        stem = file_stem(layer.name)
        (folder / f"{stem}_weights.syntxt").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}_weights.syntxt").write_text("".join(_weight_lines(layer)))
        if layer.layer.has_bias:
            bias = layer.layer.bias.to(torch.int64) if exact else layer.layer.bias  # exact: integers
            biases = "".join(format_value(v) + "\n" for v in _values(bias))
            (folder / f"{stem}_biases.syntxt").write_text(biases)
        rows += _scaling_rows(layer, exact)
    if any(len(row) > len(header) for row in rows):
        header += ["multiplier", "shift"]
    lines = [",".join(header)] + [",".join(row) for row in rows]
    (folder / SCALING_FILE).write_text("\n".join(lines) + "\n")


def read_scaling(path: str | os.PathLike[str]) -> dict[str, dict[str, Tensor]]:
    """Reads an ``activation_scaling.csv`` back: layer -> column -> (C,) float64 tensor (NaN for no clip)."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split(",")
    table: dict[str, dict[str, list[float]]] = {}
    for line in lines[1:]:
        fields = dict(zip(header, line.split(",")))
        columns = table.setdefault(fields["layer"], {})
        for key, value in fields.items():
            if key not in ("layer", "channel"):
                columns.setdefault(key, []).append(float(value) if value else float("nan"))
    return {layer: {k: torch.tensor(v, dtype=torch.float64) for k, v in cols.items()} for layer, cols in table.items()}
