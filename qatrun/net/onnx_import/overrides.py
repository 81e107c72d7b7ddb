"""Override sections of an imported graph: the one a node reads, what it may set, and those naming no node.

N2D2's resolution (``DeepNetGenerator::ONNX_processGraph``): a cell's settings come from the section named
after its first output, else from ``[<onnx>:<Kind>_def]`` for Kind in :data:`DEFAULT_KINDS`; the chosen
section is read like a hand-made layer's (ConfigSection cell parameters, fillers, and later ``QWeight*``
and solvers by their packages). Geometry always comes from the graph: a geometry key there is an error,
where N2D2 ignores it (:func:`check_override`). After every import, :func:`check_overrides` rejects the
sections that look like overrides but name no node, which N2D2 silently ignores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qatrun.errors import did_you_mean
from qatrun.net.activations import ACTIVATION
from qatrun.net.builder import SOURCES
from qatrun.net.cells import CELL_TYPES, DATA_TYPE, MODEL, TYPE, check_placement
from qatrun.net.fillers import FILLER_KEYS

if TYPE_CHECKING:
    from qatrun.ini import Document, Section
    from qatrun.net.onnx_import.importer import Importer
    from qatrun.net.onnx_import.loading import OnnxFile

DEFAULT_KINDS = ("Conv", "Fc", "BatchNorm", "Pool", "Dropout", "LRN")
"""Kinds with a default override section ``[<onnx>:<Kind>_def]`` (N2D2 has none for activations)."""

_WEIGHT_KINDS = ("Conv", "Deconv", "Fc")
_FILLER_NAMES = {name for table in FILLER_KEYS.values() for name in table}


def settings(imp: Importer, node: Any, kind: str) -> tuple[Section | None, Any]:
    """The override section of a cell (per-node, else the kind's default) and its ConfigSection map."""
    output = node.output_values[0]
    section = named_section(imp, output)
    if section is None and kind in DEFAULT_KINDS:
        section = imp.doc.get(f"{imp.file.section.name}:{kind}_def")
    if section is None:
        return None, None
    imp.file.matched[section.name] = section
    imp.file.configured.add(section.name)
    check_override(imp, section, node, kind)
    section.read(MODEL)
    if section.read(DATA_TYPE) != "Float32":
        raise section.error(DATA_TYPE.name, "qatrun computes in Float32 only")
    params = imp.doc.params(section)
    cell_type = CELL_TYPES.get(kind)
    if cell_type is not None:
        params.declare(*(key.name for key in cell_type.params))
        check_placement(cell_type, section, params)
    if kind in _WEIGHT_KINDS:
        section.declare(*_FILLER_NAMES)
    return section, params


def named_section(imp: Importer, output: str) -> Section | None:
    """The section named after a node output, recorded as matched (check_overrides leaves it alone)."""
    section = imp.doc.get(output)
    if section is not None:
        imp.file.matched[section.name] = section
    return section


def check_override(imp: Importer, section: Section, node: Any, kind: str) -> None:
    """Rejects geometry keys, and an activation where one follows the node (it is set in that one's section)."""
    graph_keys = _graph_keys(kind)
    for key in section.keys():
        if key in graph_keys or key.startswith("Mapping") or key == TYPE.name:
            raise section.error(
                key, f"the geometry of {imp.node_label(node)} comes from the ONNX graph: {key} cannot be "
                "overridden"
            )
        if (key == ACTIVATION or key.startswith(ACTIVATION + ".")) and node.output_values[0] in imp.plan.activated:
            raise section.error(
                key, f"the activation of an imported cell comes from the graph (N2D2 ignores {key} here): set "
                "it in a section named after the output of the Relu that follows the node"
            )


def _graph_keys(kind: str) -> set[str]:
    """Keys of a hand-made layer section that an imported node takes from the graph instead."""
    cell_type = CELL_TYPES.get(kind)
    names = {"NbOutputs"}
    if cell_type is not None:
        names |= {name for key in cell_type.keys for name in key.names}
    return names - _FILLER_NAMES


def check_overrides(doc: Document, files: list[OnnxFile], layer_sections: Mapping[str, Section]) -> None:
    """Rejects sections that look like overrides but name no node (after every import).

    A section is taken for an override when it inherits from an ONNX default section or from the base of
    an override that matched (``[relu7]ReluQ_def`` next to ``[relu0]ReluQ_def``), or when its name is
    close to a node output; a section named after a node qatrun makes no cell of (glue, ignored) is an
    error too. Layers, their ConfigSections, base sections, data sections and targets are left alone.

    Raises:
        ConfigError: at the section header, with a did-you-mean over the node outputs.
    """
    if not files:
        return
    outputs = [output for onnx_file in files for output in onnx_file.outputs]
    kinds = {output: kind for onnx_file in files for output, kind in onnx_file.kinds.items()}
    matched = {name: section for onnx_file in files for name, section in onnx_file.matched.items()}
    onnx_names = [onnx_file.section.name for onnx_file in files]
    anchors = {f"{name}:{kind}_def" for name in onnx_names for kind in DEFAULT_KINDS}
    anchors |= {base for section in matched.values() for base in section.bases}
    readers = [s for name, s in layer_sections.items() if name not in onnx_names]
    readers += [onnx_file.matched[name] for onnx_file in files for name in onnx_file.configured]
    skipped = {source.name for section in readers for source in doc.params(section).sources}
    skipped |= {base for section in doc.sections() for base in section.bases}
    skipped |= set(matched) | set(layer_sections) | set(SOURCES) | {"database"}
    for section in doc.sections():
        name = section.name
        if name in skipped or section.template is not None or ".Target" in name \
                or name.startswith(tuple(f"{source}." for source in SOURCES)):
            continue
        _check_default_name(section, onnx_names)
        if name in kinds:
            what = _NO_SETTINGS.get(kinds[name], f"is a {kinds[name]} cell")
            raise section.error(None, f"node '{name}' {what}: the section has nothing to set")
        if did_you_mean(name, outputs, cutoff=0.8) or set(section.bases) & anchors:
            raise section.error(
                None, f"names no node of the ONNX graph imported by [{'], ['.join(onnx_names)}] (an override "
                f"section is named after a node's first output){did_you_mean(name, outputs)}"
            )


_NO_SETTINGS = {
    "glue": "is no cell (qatrun keeps the node as it is)",
    "ignored": "is in Ignore=",
    "identity": "is an Identity (skipped)",
    "folded": "is an Add folded into the bias of the MatMul before it",
}


def _check_default_name(section: Section, onnx_names: list[str]) -> None:
    """``[<onnx>:<Kind>_def]``: the ONNX section must exist and Kind have a default."""
    prefix, colon, kind = section.name.rpartition(":")
    if not colon or not kind.endswith("_def"):
        return
    kind = kind[: -len("_def")]
    if prefix in onnx_names and kind in DEFAULT_KINDS:
        return  # a default that no node of its kind needed
    defaults = ", ".join(f"{k}_def" for k in DEFAULT_KINDS)
    if prefix in onnx_names:
        raise section.error(
            None, f"N2D2 has no default section {kind}_def (defaults: {defaults}); the settings of a Relu go in a "
            f"section named after its output{did_you_mean(kind + '_def', [k + '_def' for k in DEFAULT_KINDS])}"
        )
    if kind in DEFAULT_KINDS:
        raise section.error(
            None, f"[{prefix}] is no ONNX section: defaults are named [<ONNX section>:<Kind>_def]"
            f"{did_you_mean(prefix, onnx_names)}"
        )
