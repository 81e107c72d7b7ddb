"""N2D2 weights folders, both ways (reference/n2d2.md §8.1).

A folder holds text files named after the cells (``Utils::filePath``: control characters and ``< > : " | ? *``
become ``_``; ``/`` is kept and makes sub-directories):

==================================  =================================================================
``<cell>_weights.syntxt``           Conv: one line per output channel, for each *connected* input channel
                                    its kH*kW kernel in row-major order (= ``weight[o].flatten()`` when all
                                    channels are connected); Fc: one line per output, C*H*W inputs. Each
                                    value is followed by a space.
``<cell>_biases.syntxt``            one value per line (Conv/Fc with ``NoBias=0``; BN beta)
``<cell>_quant_weights.syntxt``     Conv fake-quantized weights (written, never read);
``<cell>_quant_weights_quant.syntxt``  the Fc ones (N2D2's name)
``<cell>_scales|means|variances``   BatchNorm gamma, running mean, running (unbiased) variance, one per line
``<cell>_<what>.syntxt``            a scalar (``QAct_SAT_Alpha``, ``QAct_LSQ_StepSize``, ``alphaW_LSQ``):
                                    one number, no newline
``<cell>_weights.distrib.dat``      all weights sorted ascending, one per line (also ``_biases``,
                                    ``_weights_quant``)
==================================  =================================================================

Values are printed like C++ ``ostream`` (``%g``) with 6 significant digits, or 10 for cells that have a
quantizer (N2D2 raises the precision there); the shipped golden folder, written by an older N2D2, uses 6
everywhere. Reading follows ``ConvCell::importFreeParameters``: whitespace-separated values; too few is
``Error while reading synaptic file: F``, too many ``Synaptic file size larger than expected: F``; a missing
weights file is tolerated under ``-w`` (a notice) but a missing biases file of a cell with biases is not.

The network is described by plain :class:`Entry` records (cell name, kind, tensors), so this module knows
nothing of the graph. Folders are written atomically: into ``<dir>.tmp-<pid>``, then renamed over ``<dir>``.

Non-finite values go neither way: a ``nan`` or ``inf`` in a file read is an error naming the file and the
value's line and index (N2D2 reads them without a word), and a folder is not written when one of its tensors
holds one (the error names the cell and the tensor), so that a diverged run can never pass for a saved one.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from qatrun.errors import DataError, RunError
from qatrun.files import atomic_folder

KINDS = ("conv", "fc", "bn", "scalar")
# Files of each kind, in the order N2D2 reads them; conv/fc biases are present only for NoBias=0.
_BN_ROLES = ("scales", "biases", "means", "variances")
_QUANT_FILE = {"conv": "quant_weights", "fc": "quant_weights_quant"}
_FORBIDDEN = set('<>:"|?*')


@dataclass
class Entry:
    """One cell's free parameters, as tensors shared with the model (import copies into them).

    Attributes:
        name: the cell (INI section) name; the file stem before sanitising.
        kind: ``"conv"`` (weights O x C/groups x kH x kW: a grouped or depthwise convolution stores exactly
            its connected channels), ``"fc"`` (weights O x N, N = C*H*W flattened channel-major, as N2D2),
            ``"bn"`` or ``"scalar"``.
        tensors: conv/fc: ``weights``, optional ``biases`` (present means ``NoBias=0``), optional
            ``quant_weights`` (written only); bn: ``scales``, ``biases``, ``means``, ``variances``; scalar: one
            or more ``{suffix: tensor of one element}``, written to ``<name>_<suffix>.syntxt``.
        mask: conv only: a 0/1 tensor of the weights' shape; input channels whose kernel is all zero for an
            output are not connected to it and are absent from that output's line.
        digits: significant digits when writing (6; 10 for cells with a quantizer).
        setter: if given, import reads into copies and calls ``setter(role, tensor)`` for each role read,
            instead of writing into ``tensors`` in place (for state that must know it was loaded, e.g. an LSQ
            step size that is otherwise initialised from the data).
    """

    name: str
    kind: str
    tensors: dict[str, torch.Tensor]
    mask: torch.Tensor | None = None
    digits: int = 6
    setter: Callable[[str, torch.Tensor], None] | None = None

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        if self.kind in ("conv", "fc"):
            assert "weights" in self.tensors, self.name
            assert set(self.tensors) <= {"weights", "biases", "quant_weights"}, self.tensors.keys()
        elif self.kind == "bn":
            assert set(self.tensors) == set(_BN_ROLES), self.tensors.keys()
        else:
            assert all(t.numel() == 1 for t in self.tensors.values()), self.name
        assert self.mask is None or (self.kind == "conv" and self.mask.shape == self.tensors["weights"].shape)


def file_path(name: str) -> str:
    """N2D2's ``Utils::filePath``: control characters and ``< > : " | ? *`` become ``_``; ``/`` is kept."""
    return "".join("_" if ord(ch) < 32 or ch == "\x7f" or ch in _FORBIDDEN else ch for ch in name)


def cell_file(folder: str | os.PathLike[str], name: str, suffix: str) -> Path:
    """``<folder>/<filePath(name)>_<suffix>``, a name with ``/`` landing in a sub-directory of ``folder``."""
    # Concatenated, not joined: a cell name starting with "/" stays inside the folder, as in N2D2.
    return Path(f"{os.fspath(folder)}/{file_path(name)}_{suffix}")


def format_value(value: float, digits: int) -> str:
    """A number as C++ ``ostream << value`` prints it with ``precision(digits)`` (``%g``)."""
    return format(value, f".{digits}g")


# ---------------------------------------------------------------------------------------------- layouts


def _connected(entry: Entry) -> torch.Tensor | None:
    """O x C booleans: input channel c feeds output o (``None``: all connected)."""
    if entry.mask is None:
        return None
    return entry.mask.flatten(2).ne(0).any(dim=2)


def _weight_rows(entry: Entry, weights: torch.Tensor) -> list[torch.Tensor]:
    """One 1-D tensor per output line: the connected kernels of that output, in channel order."""
    flat = weights.detach().reshape(weights.shape[0], -1).to(torch.float64)
    connected = _connected(entry)
    if connected is None:
        return list(flat)
    per_channel = weights.detach().to(torch.float64).flatten(2)  # O x C x kH*kW
    return [per_channel[o][connected[o]].flatten() for o in range(weights.shape[0])]


def _line(values: torch.Tensor, digits: int) -> str:
    return "".join(format_value(v, digits) + " " for v in values.tolist()) + "\n"


def _column(values: torch.Tensor, digits: int) -> str:
    return "".join(format_value(v, digits) + "\n" for v in values.detach().flatten().tolist())


# ---------------------------------------------------------------------------------------------- export


def export_folder(folder: str | os.PathLike[str], entries: Iterable[Entry], *, distrib: bool = True) -> None:
    """Writes an N2D2 weights folder, replacing ``folder`` atomically.

    Args:
        folder: the folder to (re)create, e.g. ``weights_validation``.
        entries: the cells' parameters.
        distrib: also write the ``*.distrib.dat`` weight distributions.
    """
    entries = list(entries)
    for entry in entries:
        check_finite(entry, f"cannot save the weights folder {os.fspath(folder)}")
    with atomic_folder(folder) as tmp:
        for entry in entries:
            write_entry(tmp, entry, distrib=distrib)


def non_finite_index(tensor: torch.Tensor) -> int | None:
    """The row-major index of the first ``nan`` / ``inf`` of a tensor (``None``: all finite)."""
    if not tensor.is_floating_point():
        return None
    bad = ~torch.isfinite(tensor.detach().reshape(-1))
    if not bool(bad.any()):
        return None
    return int(bad.nonzero()[0, 0])


def check_finite(entry: Entry, context: str) -> None:
    """Refuses an entry with a non-finite value.

    Raises:
        DataError: ``"<context>: <cell> <role> holds nan at index i (shape ...)"``.
    """
    for role, tensor in entry.tensors.items():
        index = non_finite_index(tensor)
        if index is not None:
            value = float(tensor.detach().reshape(-1)[index])
            shape = "x".join(map(str, tensor.shape)) or "scalar"
            raise DataError(f"{context}: {entry.name} {role} holds {value} at index {index} (shape {shape}); "
                            "non-finite values are never written")


def write_entry(folder: str | os.PathLike[str], entry: Entry, *, distrib: bool = True) -> None:
    """Writes one cell's files into an existing folder (sub-directories are created as needed)."""
    digits = entry.digits
    files: dict[str, str] = {}
    if entry.kind in ("conv", "fc"):
        weights = entry.tensors["weights"]
        files["weights.syntxt"] = "".join(_line(row, digits) for row in _weight_rows(entry, weights))
        if "biases" in entry.tensors:
            files["biases.syntxt"] = _column(entry.tensors["biases"], digits)
        if "quant_weights" in entry.tensors:
            quant = entry.tensors["quant_weights"]
            files[f"{_QUANT_FILE[entry.kind]}.syntxt"] = "".join(
                _line(row, digits) for row in _weight_rows(entry, quant)
            )
        if distrib:
            files.update(_distributions(entry))
    elif entry.kind == "bn":
        for role in _BN_ROLES:
            files[f"{role}.syntxt"] = _column(entry.tensors[role], digits)
    else:
        for suffix, tensor in entry.tensors.items():
            files[f"{suffix}.syntxt"] = format_value(float(tensor.detach().reshape(())), digits)
    for suffix, text in files.items():
        path = cell_file(folder, entry.name, suffix)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as err:  # a full disk, a folder turned read-only: the file named, one line
            raise RunError(f"cannot write the weights file '{path}': {err.strerror or err}") from None


def _distributions(entry: Entry) -> dict[str, str]:
    """``<cell>_weights.distrib.dat`` & co: every (connected) value sorted ascending, 10 digits."""
    roles = {"weights": "weights", "biases": "biases", "quant_weights": "weights_quant"}
    out = {}
    for role, stem in roles.items():
        if role not in entry.tensors:
            continue
        tensor = entry.tensors[role]
        values = torch.cat(_weight_rows(entry, tensor)) if role != "biases" else tensor.detach().flatten()
        out[f"{stem}.distrib.dat"] = _column(values.to(torch.float64).sort().values, 10)
    return out


# ---------------------------------------------------------------------------------------------- import


def read_values(path: str | os.PathLike[str]) -> torch.Tensor:
    """All whitespace-separated numbers of a text file, as float64 (``-0`` accepted, ``nan`` and ``inf`` not).

    Raises:
        DataError: the file cannot be read, holds something that is not a number, or a non-finite number
            (the message gives its line and its index among the file's values).
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Could not open synaptic file: {os.fspath(path)} ({exc})") from None
    values: list[float] = []
    for line_number, line in enumerate(text.splitlines(), 1):
        for token in line.split():
            try:
                value = float(token)
            except ValueError as exc:
                raise DataError(f"Error while reading synaptic file: {os.fspath(path)} ({exc})") from None
            if not math.isfinite(value):
                raise DataError(f"{os.fspath(path)}:{line_number}: value {len(values)} is {token}: a weights "
                                "file must hold finite numbers")
            values.append(value)
    return torch.tensor(values, dtype=torch.float64)


def _fill(path: Path, values: torch.Tensor, targets: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    """Copies ``values`` into the targets in order, checking N2D2's size rules.

    Each target is ``(tensor, positions)``: ``positions`` a boolean mask of the tensor's elements that are
    stored (``None``: all of them, in row-major order).
    """
    needed = sum(t.numel() if m is None else int(m.sum()) for t, m in targets)
    if values.numel() < needed:
        raise DataError(f"Error while reading synaptic file: {path}")
    if values.numel() > needed:
        raise DataError(f"Synaptic file size larger than expected: {path}")
    start = 0
    with torch.no_grad():
        for tensor, positions in targets:
            if positions is None:
                chunk = values[start : start + tensor.numel()]
                tensor.copy_(chunk.view(tensor.shape))
                start += tensor.numel()
            else:
                count = int(positions.sum())
                # boolean-mask assignment fills the True positions in row-major order
                tensor[positions] = values[start : start + count].to(tensor.dtype)
                start += count


def _weight_positions(entry: Entry) -> torch.Tensor | None:
    connected = _connected(entry)
    if connected is None:
        return None
    weights = entry.tensors["weights"]
    return connected[:, :, None, None].expand(weights.shape).contiguous()


def import_folder(
    folder: str | os.PathLike[str],
    entries: Iterable[Entry],
    *,
    ignore_missing: bool = False,
    notify: Callable[[str], None] | None = None,
) -> list[Path]:
    """Reads an N2D2 weights folder into the entries' tensors (in place).

    Args:
        folder: the folder, e.g. the ``-w`` argument.
        entries: the cells to read; files of other cells in the folder are ignored, as in N2D2.
        ignore_missing: tolerate missing files (``-w``, ``-w-ignore``): the cell keeps its values and a notice
            is given. A missing biases file of a cell that has biases is an error even then.
        notify: receives each notice (default: printed on stderr).

    Returns:
        The files that were missing.

    Raises:
        DataError: a file is missing (when not tolerated), malformed or of the wrong size.
    """
    missing: list[Path] = []

    def absent(path: Path) -> None:
        if not ignore_missing:
            raise DataError(f"Could not open synaptic file: {path}")
        missing.append(path)
        (notify or _stderr)(f"Notice: Could not open synaptic file: {path}")

    for entry in entries:
        # with a setter, read into copies and hand them over (e.g. an LSQ step size that must know it was loaded)
        tensors = entry.tensors if entry.setter is None else {k: v.detach().clone() for k, v in entry.tensors.items()}
        if entry.kind in ("conv", "fc"):
            read = _import_weights(folder, entry, tensors, absent)
        elif entry.kind == "bn":
            read = _import_bn(folder, entry, tensors, absent)
        else:
            read = _import_scalars(folder, entry, tensors, absent)
        if entry.setter is not None:
            for role in read:
                entry.setter(role, tensors[role])
    return missing


def _import_weights(
    folder: str | os.PathLike[str], entry: Entry, tensors: dict[str, torch.Tensor], absent: Callable[[Path], None]
) -> list[str]:
    weights = (tensors["weights"], _weight_positions(entry))
    biases = tensors.get("biases")
    single = Path(f"{os.fspath(folder)}/{file_path(entry.name)}.syntxt")
    if single.is_file():  # N2D2's one-file form: the weights, then the biases
        targets = [weights] + ([(biases, None)] if biases is not None else [])
        _fill(single, read_values(single), targets)
        return ["weights"] + (["biases"] if biases is not None else [])
    path = cell_file(folder, entry.name, "weights.syntxt")
    if not path.is_file():
        absent(path)
        return []
    _fill(path, read_values(path), [weights])
    if biases is None:
        return ["weights"]
    path = cell_file(folder, entry.name, "biases.syntxt")
    if not path.is_file():
        raise DataError(f"Could not open synaptic file: {path} (the cell has biases: NoBias=0)")
    _fill(path, read_values(path), [(biases, None)])
    return ["weights", "biases"]


def _import_bn(
    folder: str | os.PathLike[str], entry: Entry, tensors: dict[str, torch.Tensor], absent: Callable[[Path], None]
) -> list[str]:
    paths = {role: cell_file(folder, entry.name, f"{role}.syntxt") for role in _BN_ROLES}
    if not paths["scales"].is_file():
        absent(paths["scales"])
        return []
    for role, path in paths.items():
        if not path.is_file():
            raise DataError(f"Could not open synaptic file: {path}")
        _fill(path, read_values(path), [(tensors[role], None)])
    return list(_BN_ROLES)


def _import_scalars(
    folder: str | os.PathLike[str], entry: Entry, tensors: dict[str, torch.Tensor], absent: Callable[[Path], None]
) -> list[str]:
    read = []
    for suffix, tensor in tensors.items():
        path = cell_file(folder, entry.name, f"{suffix}.syntxt")
        if path.is_file():
            _fill(path, read_values(path), [(tensor, None)])
            read.append(suffix)
        else:
            absent(path)
    return read


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def plot_distributions(folder: str | os.PathLike[str]) -> list[Path]:
    """Draws a histogram PNG beside every ``*.distrib.dat`` of a weights folder (N2D2's distribution plots).

    Returns:
        The PNG files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dat in sorted(Path(folder).rglob("*.distrib.dat")):
        values = read_values(dat).to(torch.float64)
        if values.numel() == 0:
            continue
        mean, std = float(values.mean()), float(values.std()) if values.numel() > 1 else 0.0
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(values.numpy(), bins=min(256, max(10, values.numel() // 4)))
        ax.set_title(f"{dat.name[:-len('.distrib.dat')]}  (mean {mean:.4g}, std {std:.4g}, n {values.numel()})")
        ax.set_xlabel("value")
        ax.set_ylabel("count")
        fig.tight_layout()
        png = dat.with_suffix(".png")
        fig.savefig(png, dpi=80)
        plt.close(fig)
        written.append(png)
    return written
