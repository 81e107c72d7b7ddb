"""Input-channel -> output connectivity (``Mapping*`` keys): reference/n2d2.md section 2.3.

Design note. For each input ``p`` of a cell (C_p channels, O outputs) N2D2 builds a 0/1 matrix, written
with rows = input channels and columns = outputs, from the first of:

1. ``Mapping(p)=`` — the matrix itself, C_p·O values (LeNet-5's conv2 table, 6 x 16);
2. ``Mapping[(p)].NbGroups=g`` or ``Mapping[(p)].ChannelsPerGroup=c`` (g = C_p / c) — outputs and
   channels split into g equal blocks, block k of outputs seeing block k of channels
   (``ChannelsPerGroup=1`` with O = C_p is a depthwise convolution);
3. the canvas keys ``Mapping[(p)].Size/SizeX/SizeY`` [1], ``.Stride/StrideX/StrideY`` [1],
   ``.Offset/OffsetX/OffsetY`` [0], ``.NbIterations`` [0 = max(O, C_p)]: for i < NbIterations,
   x < SizeX, y < SizeY, set m[(OffsetY + i·StrideY + y) mod C_p, (OffsetX + i·StrideX + x) mod O] = 1
   (``Size=1`` with O = C_p is the identity: channel-wise pooling);
4. nothing: every output sees every channel.

A ``Mapping(p).X`` key overrides ``Mapping.X`` for that input. The matrices of all inputs are stacked (the
inputs' channels are concatenated). qatrun then builds the cheapest module that computes it: a plain
convolution when full, ``groups=g`` when block-diagonal, otherwise a masked convolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qatrun.ini import Key

if TYPE_CHECKING:
    from qatrun.ini import Section

MAPPING = "Mapping"

_TEMPLATE: dict[str, Key] = {
    key.name: key
    for key in (
        Key("NbGroups", "int", 0, "grouped connectivity: number of groups (0 = none)"),
        Key("ChannelsPerGroup", "int", 0, "grouped connectivity: input channels per group (1 = depthwise)"),
        Key("Size", "int", 1, "canvas pattern: block size along outputs and channels"),
        Key("SizeX", "int", 1, "canvas pattern: block size along outputs"),
        Key("SizeY", "int", 1, "canvas pattern: block size along channels"),
        Key("Stride", "int", 1, "canvas pattern: step of each iteration, both axes"),
        Key("StrideX", "int", 1, "canvas pattern: step along outputs"),
        Key("StrideY", "int", 1, "canvas pattern: step along channels"),
        Key("Offset", "int", 0, "canvas pattern: start, both axes"),
        Key("OffsetX", "int", 0, "canvas pattern: start along outputs"),
        Key("OffsetY", "int", 0, "canvas pattern: start along channels"),
        Key("NbIterations", "int", 0, "canvas pattern: iterations (0 = max(outputs, channels))"),
    )
}
_GROUPS = ("NbGroups", "ChannelsPerGroup")
_CANVAS = tuple(name for name in _TEMPLATE if name not in _GROUPS)


def _key(prefix: str, name: str) -> Key:
    return replace(_TEMPLATE[name], name=f"{prefix}.{name}")


MAPPING_KEYS: dict[str, Key] = {f"{MAPPING}.{name}": _key(MAPPING, name) for name in _TEMPLATE}


def matrix_key(parent: str) -> Key:
    """The key of an explicit matrix for one input: ``Mapping(<parent>)``."""
    return Key(f"{MAPPING}({parent})", "ints", (), f"0/1 connectivity matrix from {parent}, rows = channels")


def grouped(channels: int, outputs: int, groups: int) -> Tensor:
    """Block-diagonal (C, O) matrix of ``groups`` blocks (channels and outputs divisible by ``groups``)."""
    c = torch.arange(channels) // (channels // groups)
    o = torch.arange(outputs) // (outputs // groups)
    return c[:, None] == o[None, :]


def canvas(channels: int, outputs: int, size: tuple[int, int], stride: tuple[int, int],
           offset: tuple[int, int], iterations: int) -> Tensor:
    """N2D2's canvas pattern as a (C, O) matrix; each pair is (along outputs X, along channels Y)."""
    m = torch.zeros(channels, outputs, dtype=torch.bool)
    for i in range(iterations if iterations > 0 else max(outputs, channels)):
        for x in range(size[0]):
            for y in range(size[1]):
                m[(offset[1] + i * stride[1] + y) % channels, (offset[0] + i * stride[0] + x) % outputs] = True
    return m


def groups_of(connectivity: Tensor) -> int | None:
    """The number of groups g if a (O, C) connectivity is block-diagonal with g equal blocks, else None."""
    outputs, channels = connectivity.shape
    seen = int(connectivity[0].sum())  # output 0 sees the C/g channels of its group
    if seen == 0 or channels % seen or outputs % (channels // seen):
        return None
    groups = channels // seen
    return groups if torch.equal(connectivity, grouped(outputs, channels, groups)) else None


def _read(section: Section, parent: str, name: str) -> tuple[object, str] | None:
    """The value of ``Mapping(parent).name``, else of ``Mapping.name``, with the key read; None if neither."""
    for prefix in (f"{MAPPING}({parent})", MAPPING):
        if section.has(f"{prefix}.{name}"):
            return section.read(_key(prefix, name)), f"{prefix}.{name}"
    return None


def _axis_pair(section: Section, parent: str, stem: str, minimum: int) -> tuple[int, int]:
    both = _read(section, parent, stem)
    x = _read(section, parent, stem + "X")
    y = _read(section, parent, stem + "Y")
    if both is not None and (x or y):
        raise section.error((x or y)[1], f"N2D2 ignores this key because {both[1]} is given; keep one of them")
    for found in (both, x, y):
        if found is not None and found[0] < minimum:
            raise section.error(found[1], f"expected a value >= {minimum}, found {found[0]}")
    default = _TEMPLATE[stem].default
    if both is not None:
        return both[0], both[0]
    return (x[0] if x else default, y[0] if y else default)


def _groups(section: Section, parent: str, channels: int, outputs: int) -> int | None:
    nb = _read(section, parent, "NbGroups")
    per = _read(section, parent, "ChannelsPerGroup")
    if nb and per and nb[0] and per[0]:
        raise section.error(per[1], f"{nb[1]} and {per[1]} are mutually exclusive")
    if per and per[0]:
        if per[0] < 0 or channels % per[0]:
            raise section.error(per[1], f"{channels} input channels cannot be split in groups of {per[0]}")
        groups, key = channels // per[0], per[1]
    elif nb and nb[0]:
        if nb[0] < 0 or channels % nb[0]:
            raise section.error(nb[1], f"{channels} input channels cannot be split in {nb[0]} groups")
        groups, key = nb[0], nb[1]
    else:
        return None
    if outputs % groups:
        raise section.error(key, f"{outputs} outputs (NbOutputs) cannot be split in {groups} groups")
    return groups


def input_matrix(section: Section, parent: str, channels: int, outputs: int) -> Tensor | int:
    """The (C_p, O) connectivity of one input, rows = input channels as written in the INI.

    Returns the number of groups instead (1 = full) when it is block-diagonal by construction, so
    that the common cases build no matrix.

    Args:
        section: the layer section.
        parent: the input's name as written in ``Input=``.
        channels: C_p, the input's channels.
        outputs: O, the cell's outputs.

    Raises:
        ConfigError: a matrix of the wrong size or with values other than 0/1, inconsistent groups,
            or keys that N2D2 would ignore.
    """
    key = matrix_key(parent)
    canvas_given = [n for n in _CANVAS if _read(section, parent, n) is not None]
    groups = _groups(section, parent, channels, outputs)
    if section.has(key.name):
        values = section.read(key)
        if len(values) != channels * outputs:
            raise section.error(
                key.name,
                f"expected {channels} x {outputs} = {channels * outputs} values (rows = the {channels} channels "
                f"of {parent}, columns = the {outputs} outputs), found {len(values)}",
            )
        if any(v not in (0, 1) for v in values):
            raise section.error(key.name, "expected only 0 and 1 in the mapping matrix")
        ignored = canvas_given + [n for n in _GROUPS if _read(section, parent, n)]
        if ignored:
            name = _read(section, parent, ignored[0])[1]
            raise section.error(name, f"N2D2 ignores this key because {key.name} is given; keep one of them")
        return torch.tensor(values, dtype=torch.bool).view(channels, outputs)
    if groups is not None:
        if canvas_given:
            name = _read(section, parent, canvas_given[0])[1]
            raise section.error(name, "canvas keys and NbGroups/ChannelsPerGroup are mutually exclusive")
        return groups
    if canvas_given:
        iterations = _read(section, parent, "NbIterations")
        if iterations is not None and iterations[0] < 0:
            raise section.error(iterations[1], f"expected a value >= 0, found {iterations[0]}")
        return canvas(
            channels,
            outputs,
            _axis_pair(section, parent, "Size", 1),
            _axis_pair(section, parent, "Stride", 0),
            _axis_pair(section, parent, "Offset", 0),
            iterations[0] if iterations else 0,
        )
    return 1


@dataclass(frozen=True)
class Connectivity:
    """Which outputs see which input channels.

    Attributes:
        groups: g when the connectivity is block-diagonal with g equal blocks (1 = full), else None.
        mask: the (O, C) 0/1 matrix when it is not block-diagonal, else None.
        connected: the number of connected (output, channel) pairs.
    """

    groups: int | None
    mask: Tensor | None
    connected: int

    def matrix(self, outputs: int, channels: int) -> Tensor:
        """The (O, C) boolean matrix."""
        return self.mask if self.mask is not None else grouped(outputs, channels, self.groups)


def connectivity(section: Section, inputs: list[tuple[str, int]], outputs: int) -> Connectivity:
    """The connectivity of a cell over its concatenated inputs (C = sum of C_p).

    Args:
        section: the layer section.
        inputs: (name, channels) of each input, in ``Input=`` order.
        outputs: O.

    Raises:
        ConfigError: as ``input_matrix``, or a ``Mapping(x)`` naming no input of the cell.
    """
    names = [name for name, _ in inputs]
    for key in section.keys():
        if key.startswith(MAPPING + "("):
            parent = key[len(MAPPING) + 1 : key.find(")")] if ")" in key else key
            if parent not in names:
                raise section.error(key, f"{parent} is not an input of this cell (Input: {', '.join(names)})")
    blocks = [input_matrix(section, name, channels, outputs) for name, channels in inputs]
    channels = sum(c for _, c in inputs)
    if all(isinstance(block, int) for block in blocks) and (len(blocks) == 1 or set(blocks) == {1}):
        groups = blocks[0]  # the groups of a single input, or full connectivity from every input
        return Connectivity(groups, None, outputs * channels // groups)
    mask = torch.cat(
        [grouped(c, outputs, b) if isinstance(b, int) else b for b, (_, c) in zip(blocks, inputs)], dim=0
    ).T.contiguous()
    groups = groups_of(mask)
    connected = int(mask.sum())
    return Connectivity(groups, None if groups is not None else mask, connected)
