"""The registry of cell types: each ``Type=`` name maps to its key tables and its builder.

A builder module (``conv.py``, ``pool.py``...) declares its tables next to its code and registers a
:class:`CellType`. The graph builder (``graph.py``) does the work every cell shares: it resolves the
inputs, checks where cell parameters were written (reference/n2d2.md section 1.4), reads the activation,
and calls the builder with a :class:`Context` holding the section, the ConfigSection parameters and the
input shapes. The builder returns the module, the output shape and the cost.

A cell type may instead write a whole sub-network from one section (``Type=ONNX``, ``onnx_import/``):
it registers ``subnetwork``, which reads such a section before the build order is known and returns a
:class:`Subnetwork`; ``graph.py`` asks it the names of the values it will provide (which ``Input=`` of
other layers may then use), has it write its cells in its turn, and finally calls the type's
``after_build`` with all its subnetworks, for checks that need the whole network (override sections
that match nothing). ``graph.py`` knows no such type by name.

Placement rules (section 1.4): geometry, mapping, fillers and activation are read from the layer section
(inherited keys included); cell *parameters* (``NoBias``, ``Epsilon``, ``Dropout``...) only from the
``ConfigSection``. N2D2 silently ignores a cell parameter written in the layer section; qatrun rejects it.
Keys of other stages (``QWeight*``, ``QAct*``, solver keys) are left for the quant and train packages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from torch import nn

from qatrun.errors import ConfigError, did_you_mean
from qatrun.ini import REQUIRED, Key

if TYPE_CHECKING:
    from qatrun.ini import Document, Params, Section
    from qatrun.net.builder import Cell, GraphBuilder

Shape = tuple[int, int, int]
"""(C, H, W) of one sample."""

INPUT = Key("Input", "str", REQUIRED, "comma-separated inputs of the layer (sp, env, cenv = the network input)")
TYPE = Key("Type", "str", REQUIRED, "the cell type (Conv, Fc, Pool, BatchNorm...)")
MODEL = Key("Model", "str", "", "N2D2's implementation (Frame, Frame_CUDA): no effect in qatrun")
DATA_TYPE = Key("DataType", "enum", "Float32", "the cell's number type", ("Float16", "Float32", "Float64"))
CONFIG_SECTION = Key("ConfigSection", "str", "", "comma-separated sections holding the cell parameters")
NB_OUTPUTS = Key("NbOutputs", "int", REQUIRED, "number of output channels")

COMMON_KEYS = (INPUT, TYPE, MODEL, DATA_TYPE, CONFIG_SECTION)

INPUT_WINDOW_KEYS = tuple(
    Key(name, "int", 0, f"{doc} (only 0 is supported)")
    for name, doc in (
        ("InputOffsetX", "first input column read"),
        ("InputOffsetY", "first input row read"),
        ("InputWidth", "input columns read (0 = all)"),
        ("InputHeight", "input rows read (0 = all)"),
    )
)

RATE_BASED = "qatrun trains rate-based classifiers"
"""The reason every out-of-scope construct is refused with."""

OUT_OF_SCOPE_TYPES: dict[str, str] = {
    "Anchor": "the anchors of N2D2's object detection (Faster R-CNN)",
    "Proposal": "the region proposals of N2D2's object detection (Faster R-CNN)",
    "RP": "the region proposal network of N2D2's object detection (Faster R-CNN)",
    "ROIPooling": "the region-of-interest pooling of N2D2's object detection (Faster R-CNN)",
    "ObjectDet": "the detection output of N2D2's object detection (SSD)",
    "TargetBias": "the bias of N2D2's detection targets",
    "LSTM": "a recurrent layer (N2D2's LSTM, for sequences)",
    "Distance": "a distance-to-centroids layer (N2D2's Distance cell, for metric learning)",
    "Unpool": "the max-unpooling of N2D2's encoder-decoder (segmentation) networks",
    "Threshold": "the thresholding of N2D2's segmentation outputs into binary maps (it has no gradient)",
}
"""N2D2 cell types for what qatrun does not do, with what they are."""

NOT_BUILT_TYPES: dict[str, str] = {
    "Transformation": "a stimuli transformation run inside the network: qatrun applies transformations to the "
                      "stimuli only; move it to a [sp.Transformation-N] section (its Transformation= value as "
                      "Type=, with the same keys)",
}
"""N2D2 cell types qatrun does not build, with what to write instead."""

SPIKING_PARAMETERS = frozenset({
    "Threshold", "BipolarThreshold", "Leak", "Refractory", "TerminateDelta", "ThresholdMin", "ThresholdMax",
    "ThresholdRelInit", "ThresholdAdaptation", "WeightsRelInit", "WeightsMinMean", "WeightsMaxMean",
    "WeightsMinVarSlope", "WeightsMaxVarSlope", "WeightsMinVarOrigin", "WeightsMaxVarOrigin", "EnableStdp",
    "IncomingDelay", "SynapticDelay", "EmitDelay", "Inhibition", "InhibitRefractory", "EnableLateralInhibition",
})
"""Cell parameters of N2D2's spiking neurons (the Spike models and their STDP learning)."""

SPIKING = "a parameter of N2D2's spiking neurons (Spike models, STDP learning)"


def spiking_key(name: str) -> bool:
    """Whether a key is a parameter of N2D2's spiking neurons (``Threshold``, ``Stdp*`` ...)."""
    return name in SPIKING_PARAMETERS or name.startswith(("Stdp", "STDP"))


def spiking_model(model: str) -> bool:
    """Whether a ``Model`` / ``DefaultModel`` value names N2D2's spiking simulation (``Spike``,
    ``Spike_RRAM``, ``Spike_PCM``, ``Spike_Analog`` ...)."""
    return model.startswith("Spike")


# Families of keys read by other stages: left unconsumed here (strict mode runs after every stage).
FOREIGN_PREFIXES = ("QWeight", "QAct", "Solvers", "WeightsSolver", "BiasSolver", "ScaleSolver")


@dataclass(frozen=True)
class Source:
    """One input of a cell.

    Attributes:
        name: as written in ``Input=`` (``sp``/``env``/``cenv`` for the network input).
        shape: its (C, H, W).
    """

    name: str
    shape: Shape


@dataclass
class Context:
    """What a builder sees.

    Attributes:
        section: the layer section.
        params: its ConfigSection parameter map.
        sources: its inputs, in ``Input=`` order.
        shape: the (C, H, W) the module receives (channels of several inputs concatenated; for Fc, the
            shape before flattening).
        type_name: the cell's ``Type=``.
    """

    section: Section
    params: Params
    sources: tuple[Source, ...]
    shape: Shape
    type_name: str

    def read(self, key: Key) -> object:
        """A layer-section key (typed, consumed)."""
        return self.section.read(key)

    def param(self, key: Key) -> object:
        """A cell parameter from the ConfigSection (typed, consumed)."""
        return self.params.read(key)

    def error(self, key: str | None, message: str) -> ConfigError:
        """An error located at a layer-section key (or the section header)."""
        return self.section.error(key, message)

    def nb_outputs(self, equal_to_channels: bool = False) -> int:
        """Reads ``NbOutputs`` (>= 1); optionally checks it equals the input channels.

        Raises:
            ConfigError: a non-positive value, or a mismatch with the input channels.
        """
        value = self.read(NB_OUTPUTS)
        if value < 1:
            raise self.error(NB_OUTPUTS.name, f"expected a positive number of outputs, found {value}")
        channels = self.shape[0]
        if equal_to_channels and value != channels:
            raise self.error(
                NB_OUTPUTS.name,
                f"{self.type_name} keeps the number of channels: NbOutputs must equal the number of input "
                f"channels ({channels}), found {value}",
            )
        return value

    def check_input_window(self) -> None:
        """Reads ``InputOffsetX/Y``, ``InputWidth/Height`` and rejects anything but the whole input."""
        for key in INPUT_WINDOW_KEYS:
            if self.read(key) != 0:
                raise self.error(key.name, "only 0 (the whole input) is supported by qatrun")


@dataclass
class Built:
    """What a builder returns.

    Attributes:
        module: the cell's module (named after the section in the graph).
        out_shape: (C, H, W) of its output.
        macs: multiply-accumulates per image (Conv/Deconv/Fc; 0 for the others).
        params: the cell parameters read from the ConfigSection (for export and reports).
        pre_pad: (left, right, top, bottom) crop or pad applied before the module (Conv with a negative
            padding), or None.
    """

    module: nn.Module
    out_shape: Shape
    macs: int = 0
    params: dict[str, object] = field(default_factory=dict)
    pre_pad: tuple[int, int, int, int] | None = None


class Subnetwork(Protocol):
    """A layer section whose cell type writes several cells itself, as read before the build.

    Its own name is no value: in another layer's ``Input=`` it only orders that layer after it (the
    values it provides are read by their own names).
    """

    def provides(self, layer_sections: Mapping[str, Section]) -> tuple[str, ...]:
        """The names of the values it will write, which later layers' ``Input=`` may name.

        Raises:
            ConfigError: a name that a layer section has too.
        """
        ...

    def no_value(self, reader: Section) -> ConfigError:
        """The error for a layer whose ``Input=`` names only subnetwork sections (nothing to read)."""
        ...

    def write(self, doc: Document, builder: GraphBuilder, inputs: tuple[str, ...]) -> dict[str, Cell]:
        """Writes its cells into the network, in its turn of the build order.

        Args:
            doc: the INI document.
            builder: the network being written; every value it provides is in ``builder.values`` after.
            inputs: the section's ``Input=`` names.

        Returns:
            The cells written, by name, in the order written.
        """
        ...


INPUT_MODES = ("one", "concat", "flatten", "many")


@dataclass(frozen=True)
class CellType:
    """One ``Type=`` name.

    Attributes:
        name: the ``Type=`` value.
        build: the builder of one cell; None for a type that writes a sub-network (``subnetwork``).
        keys: the keys it reads from the layer section (besides ``COMMON_KEYS``).
        params: the cell parameters it reads from the ConfigSection.
        inputs: ``one`` (a single input), ``concat`` (channels of the inputs concatenated), ``flatten``
            (inputs flattened C·H·W and concatenated), ``many`` (each input a separate argument).
        spatial: the module needs (N, C, H, W) input (an Fc output is reshaped to (N, C, 1, 1)).
        output: the rank of the module's output: ``image`` (N, C, H, W), ``flat`` (N, C) or ``same`` as
            its input.
        activation: None if the cell has no ``ActivationFunction``, ``""`` if optional (no default),
            else the default function name.
        subnetwork: for a type whose section writes several cells: reads such a section (all of them are
            read, in file order, before any cell is built).
        after_build: with ``subnetwork``, called once every cell is built, with the document, this type's
            subnetworks in file order and the layer sections; checks that need the whole network.
    """

    name: str
    build: Callable[[Context], Built] | None
    keys: tuple[Key, ...] = ()
    params: tuple[Key, ...] = ()
    inputs: str = "one"
    spatial: bool = True
    output: str = "image"
    activation: str | None = None
    subnetwork: Callable[[Section], Subnetwork] | None = None
    after_build: Callable[[Document, Sequence[Subnetwork], Mapping[str, Section]], None] | None = None

    def __post_init__(self) -> None:
        assert (self.build is None) != (self.subnetwork is None), self.name
        assert self.after_build is None or self.subnetwork is not None, self.name
        assert self.inputs in INPUT_MODES, self.inputs
        assert self.output in ("image", "flat", "same"), self.output
        assert self.output != "same" or not self.spatial, self.name


CELL_TYPES: dict[str, CellType] = {}


def register(cell_type: CellType) -> CellType:
    """Adds a cell type to the registry (once per name)."""
    assert cell_type.name not in CELL_TYPES, cell_type.name
    CELL_TYPES[cell_type.name] = cell_type
    return cell_type


def cell_generators() -> list[str]:
    """The names of the types that build one cell (N2D2's cell generators), sorted."""
    return sorted(name for name, cell_type in CELL_TYPES.items() if cell_type.build is not None)


def all_param_names() -> set[str]:
    """Every cell parameter name of every registered type."""
    return {key.name for cell_type in CELL_TYPES.values() for key in cell_type.params}


def check_placement(cell_type: CellType, section: Section, params: Params) -> None:
    """Enforces the placement rules of reference/n2d2.md section 1.4.

    Raises:
        ConfigError: a cell parameter written in the layer section (N2D2 silently ignores it), or a
            ConfigSection key that is no parameter of this cell type (N2D2: ``Unknown parameter``).
    """
    section_keys = {key.name for key in cell_type.keys}
    for name in sorted(all_param_names() - section_keys):
        if section.has(name):
            raise section.error(
                name,
                f"N2D2 reads {name} only from a ConfigSection (it silently ignores it in the layer section): "
                f"move it to the section named by ConfigSection=",
            )
    known = [key.name for key in cell_type.params]
    for name in params.keys():
        if name.startswith(FOREIGN_PREFIXES) or name.startswith("_") or name in known:
            continue
        message = f"Unknown parameter: {name} (a {cell_type.name} cell"
        message += f" takes {', '.join(known)})" if known else " takes no parameters)"
        raise params.error(name, message + did_you_mean(name, known))
