"""``Type=ONNX`` as a cell type: the registry hooks through which ``graph.build`` imports a graph.

To ``graph.build`` an ONNX section is a layer section whose type writes a sub-network
(:class:`~qatrun.net.cells.Subnetwork`) instead of one cell:

* ``subnetwork``: when the layer sections are read, the file is loaded (loading.py); the first output of
  every node is then a name other layers' ``Input=`` may use, and a layer section with such a name is an
  error;
* ``write``: in the section's turn of the build order, the graph is written into the builder
  (importer.py); it reads the network input, so ``Input=`` must name ``sp`` (or ``env``, ``cenv``);
* ``after_build``: once every cell is built, override sections that name no node are errors
  (overrides.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from qatrun.net.builder import SOURCES
from qatrun.net.cells import INPUT, CellType, register
from qatrun.net.onnx_import.importer import Importer
from qatrun.net.onnx_import.loading import FILE_KEYS, ONNX, OnnxFile, load
from qatrun.net.onnx_import.overrides import check_overrides

if TYPE_CHECKING:
    from qatrun.errors import ConfigError
    from qatrun.ini import Document, Section
    from qatrun.net.builder import Cell, GraphBuilder
    from qatrun.net.cells import Subnetwork


class OnnxImport:
    """One ``Type=ONNX`` section, read: the subnetwork of its graph.

    Args:
        onnx_file: the section and the graph its file holds.
    """

    def __init__(self, onnx_file: OnnxFile) -> None:
        self.file = onnx_file

    @classmethod
    def read(cls, section: Section) -> OnnxImport:
        """Reads the section and its file (the ``subnetwork`` hook).

        Raises:
            ConfigError: a bad key, a missing or unreadable file, an unknown ``Ignore`` name.
        """
        return cls(load(section))

    def provides(self, layer_sections: Mapping[str, Section]) -> tuple[str, ...]:
        """The node outputs, for ``Input=<node output>`` of the INI layers after the import.

        Raises:
            ConfigError: a layer section named like a node output.
        """
        for output in self.file.outputs:
            if output in layer_sections:
                raise layer_sections[output].error(
                    None, f"[{output}] is a layer (it has Input=) and a node output of the graph imported by "
                    f"[{self.file.section.name}]: rename the layer"
                )
        return tuple(self.file.outputs)

    def no_value(self, reader: Section) -> ConfigError:
        """``Input=onnx`` alone: the layer must name the node output it reads (``Input=onnx,<node>``)."""
        name = self.file.section.name
        return reader.error(
            INPUT.name, f"[{name}] imports an ONNX graph: name the node output to read after it "
            f"(Input={name},<node output>)"
        )

    def write(self, doc: Document, builder: GraphBuilder, inputs: tuple[str, ...]) -> dict[str, Cell]:
        """Writes the graph into the network being built.

        Args:
            doc: the INI document (override sections are looked up in it).
            builder: the network being written; every node output that is an image or a vector becomes a
                value later layers can read (``Input=<node output>``).
            inputs: the section's ``Input=`` names.

        Returns:
            The imported cells by name (the node's first output), in graph order.

        Raises:
            ConfigError: at the ``File`` key for the graph's faults (an operator onnx2torch cannot convert,
                an input size that differs from ``[sp]``...), at the offending key of an override section.
        """
        section = self.file.section
        if len(inputs) != 1 or inputs[0] not in SOURCES:
            raise section.error(
                INPUT.name, f"an ONNX graph reads the network input: expected Input=sp (or env, cenv), found "
                f"{','.join(inputs)}"
            )
        return Importer(doc, self.file, builder, inputs[0]).run()


def _after_build(doc: Document, imports: Sequence[Subnetwork], layer_sections: Mapping[str, Section]) -> None:
    """Rejects the override sections that name no node of any imported graph (overrides.py)."""
    files = [imported.file for imported in imports if isinstance(imported, OnnxImport)]
    assert len(files) == len(imports), "graph.build passes a cell type its own subnetworks"
    check_overrides(doc, files, layer_sections)


register(CellType(ONNX, None, FILE_KEYS, subnetwork=OnnxImport.read, after_build=_after_build))
