"""A built network's N2D2 weights folder: which tensor of which module goes into which file.

:mod:`qatrun.train.weights` reads and writes the files of one :class:`~qatrun.train.weights.Entry`; this
module maps a network onto entries: a Conv/Deconv/Fc cell's weights and biases (and, once quantized, the
fake-quantized weights N2D2 also writes), a BatchNorm cell's four tensors, and the one-value files of its
quantizers (SAT activation alpha, LSQ step sizes).

N2D2 writes the values of a cell that has a quantizer with 10 significant digits and every other cell with
the ``ostream`` default of 6 (reference/n2d2.md, "weights folders"): :data:`QUANTIZED_DIGITS` and
:data:`FLOAT_DIGITS`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import fx, nn

from qatrun import net, quant
from qatrun.errors import DataError
from qatrun.train.weights import Entry, cell_file, export_folder, file_path, import_folder, read_values

FLOAT_DIGITS = 6
QUANTIZED_DIGITS = 10
WEIGHT_CELLS = ("Conv", "Deconv", "Fc")


def _layer_entry(cell: net.Cell, module: nn.Module) -> Entry:
    """A Conv/Deconv/Fc cell: weights (Fc: O x N), biases if any, the fake-quantized weights if quantized."""
    kind = "fc" if cell.type == "Fc" else "conv"
    weights = module.weight.data
    if kind == "fc":
        weights = weights.reshape(weights.shape[0], -1)
    tensors = {"weights": weights}
    if getattr(module, "bias", None) is not None:
        tensors["biases"] = module.bias.data
    quantized = isinstance(module, quant.QuantizedWeightLayer)
    if quantized:
        with torch.no_grad():
            tensors["quant_weights"] = module.quantized_weight().detach().reshape(weights.shape)
    mask = getattr(module, "mask", None) if kind == "conv" else None
    return Entry(cell.name, kind, tensors, mask, QUANTIZED_DIGITS if quantized else FLOAT_DIGITS)


def _batchnorm_entry(cell: net.Cell, module: nn.Module) -> Entry:
    return Entry(cell.name, "bn", {
        "scales": module.weight.data, "biases": module.bias.data,
        "means": module.running_mean, "variances": module.running_var,
    })


def quantizer_holders(gm: fx.GraphModule) -> list[tuple[str, quant.HoldsN2D2Files]]:
    """``(cell name, module)`` of every quantized layer and quantized activation of the network's cells."""
    found = []
    for cell in gm.cells.values():
        for name in (cell.module_name, cell.act_name):
            if name is None:
                continue
            module = gm.get_submodule(name)
            if isinstance(module, quant.HoldsN2D2Files):
                found.append((cell.name, module))
    return found


def weight_entries(gm: fx.GraphModule) -> list[Entry]:
    """The network's free parameters as weights-folder entries (tensors shared with the modules)."""
    entries: list[Entry] = []
    for cell in gm.cells.values():
        module = gm.get_submodule(cell.module_name)
        if cell.type in WEIGHT_CELLS:
            entries.append(_layer_entry(cell, module))
        elif cell.type == "BatchNorm":
            entries.append(_batchnorm_entry(cell, module))
    for cell_name, module in quantizer_holders(gm):
        for stem, tensor in module.n2d2_files(cell_name).items():
            assert stem.startswith(cell_name + "_"), stem
            entries.append(Entry(cell_name, "scalar", {stem[len(cell_name) + 1:]: tensor.detach().clone()}))
    return entries


class NetworkFolders:
    """Weights folders in N2D2's format for a built network, its quantizer files included.

    Args:
        gm: the network of :func:`qatrun.net.build` (quantized or not).
        ignore_missing: a file absent from a folder keeps the current value with a notice (N2D2's ``-w``)
            instead of failing.
    """

    def __init__(self, gm: fx.GraphModule, ignore_missing: bool = False) -> None:
        self.gm = gm
        self.ignore_missing = ignore_missing

    def save(self, folder: Path) -> None:
        """Writes the folder (atomically: a failed write leaves no half folder)."""
        export_folder(folder, weight_entries(self.gm))

    def load(self, folder: Path) -> None:
        """Reads the folder into the network.

        Raises:
            DataError: the folder is missing or holds no file of the network (even with ``ignore_missing``:
                a folder of another network, or an empty one, would otherwise leave every value as it was),
                one of its files is missing (unless ``ignore_missing``), or a file has the wrong number of
                values or a non-finite one.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"weights folder not found: {folder}")
        entries = [e for e in weight_entries(self.gm) if e.kind != "scalar"]
        quantizer_files = [
            (module, stem, folder / f"{file_path(stem)}.syntxt")
            for cell_name, module in quantizer_holders(self.gm) for stem in module.n2d2_files(cell_name)
        ]
        looked_for = [path for entry in entries for path in _main_files(folder, entry)]
        looked_for += [path for _, _, path in quantizer_files]
        if looked_for and not any(path.is_file() for path in looked_for):
            raise DataError(f"weights folder {folder} holds no file of this network (no {looked_for[0].name}, "
                            f"nor a file of any of its other {len(entries) + len(quantizer_files) - 1} cells)")
        import_folder(folder, entries, ignore_missing=self.ignore_missing)
        for module, stem, path in quantizer_files:
            if path.is_file():
                module.load_n2d2_file(stem, read_values(path))
            elif not self.ignore_missing:
                raise DataError(f"Could not open synaptic file: {path}")
            else:
                print(f"Notice: Could not open synaptic file: {path} (the INI value is kept)", file=sys.stderr)


def _main_files(folder: Path, entry: Entry) -> list[Path]:
    """The file(s) whose presence means the folder holds ``entry`` (its weights, or its BatchNorm scales)."""
    if entry.kind == "bn":
        return [cell_file(folder, entry.name, "scales.syntxt")]
    return [cell_file(folder, entry.name, "weights.syntxt"), Path(f"{folder}/{file_path(entry.name)}.syntxt")]
