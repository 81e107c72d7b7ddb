"""Checking an exported file against the qatrun network it came from, in onnxruntime (optimizations off).

Outputs are compared end to end: the largest difference, and the values beyond a tolerance (none for
the integer network, which must be bit-identical).

For the QDQ file that is not enough in a deep network. onnxruntime's convolutions sum in another order
than torch's, so a pre-activation within float32 rounding of a tie ``k + 1/2`` may quantize to the
other level; the next layers then see a different input and the flip spreads (on a random ResNet-20,
4 of a million activations flip in the first layer and a quarter of them differ by the last one). So the
QDQ check also runs *layer by layer*: the fake-quantized network is run with every quantized activation
replaced by onnxruntime's, and each activation is compared with what qatrun computes *from the same
inputs*. There, every difference must be one level at a tie of the float32 computation (the qatrun value
within :data:`TIE_WINDOW` levels of ``k + 1/2``), and the network outputs must agree within the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, fx

from qatrun.errors import RunError
from qatrun.export.onnx_graph import session

TOLERANCE = {"onnx": 1e-5, "onnx-qdq": 1e-4, "onnx-int": 0.0}  # times max(1, max |reference|)
TIE_WINDOW = 1e-3  # levels: a flip is a float32 tie when qatrun's x / scale is this close to k + 1/2
LAYER_CHECK_SAMPLES = 64  # the layer-by-layer QDQ check keeps every activation: on this many inputs at most


@dataclass
class LevelCheck:
    """The layer-by-layer QDQ check.

    Attributes:
        levels: activation values compared.
        flips: values whose level differs from qatrun's computed from the same inputs.
        off_tie: flips that are not at a float32 tie, or by more than one level (must be 0).
        max_abs_diff: largest output difference with onnxruntime's activations fed to qatrun's layers.
        differing: output values beyond the tolerance there (must be 0).
    """

    levels: int = 0
    flips: int = 0
    off_tie: int = 0
    max_abs_diff: float = 0.0
    differing: int = 0

    @property
    def ok(self) -> bool:
        """True when every difference is a float32 tie, and the outputs agree."""
        return self.off_tie == 0 and self.differing == 0


@dataclass
class ExportReport:
    """One written file and how it compared with the qatrun network in onnxruntime.

    Attributes:
        kind: ``onnx``, ``onnx-qdq`` or ``onnx-int``.
        path: the file.
        file_bytes: its size.
        samples: number of inputs compared.
        elements: number of output values compared.
        max_abs_diff: largest ``|onnxruntime - qatrun|`` over the outputs.
        differing: output values that differ by more than ``tolerance`` (any difference for ``onnx-int``).
        tolerance: the allowed difference (0 for ``onnx-int``).
        reference_max: largest ``|qatrun output|``, to read the difference against.
        layers: the layer-by-layer check (``onnx-qdq`` only).
        notes: what the writer did that the reader should know (layers written as float, fallbacks).
    """

    kind: str
    path: Path
    file_bytes: int
    samples: int
    elements: int
    max_abs_diff: float
    differing: int
    tolerance: float
    reference_max: float
    layers: LevelCheck | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The file computes what the qatrun network computes: bit for bit (``onnx-int``), within the
        tolerance (``onnx``), within the tolerance or up to float32 ties layer by layer (``onnx-qdq``)."""
        if self.differing == 0:
            return True
        return self.layers is not None and self.layers.ok

    def summary(self) -> str:
        """One line (two with a layer-by-layer check): kind, file, size and the comparison."""
        size = f"{self.file_bytes / 1024:,.1f} KiB"
        if self.kind == "onnx-int":
            verdict = "bit-identical to" if self.ok else f"{self.differing} of {self.elements} values differ from"
            check = f"{verdict} the integer network on {self.samples} inputs (max |diff| {self.max_abs_diff:.3g})"
        else:
            network = "float" if self.kind == "onnx" else "fake-quantized"
            check = (f"max |diff| {self.max_abs_diff:.3g} vs the {network} network (|y| up to "
                     f"{self.reference_max:.3g}) on {self.samples} inputs, {self.differing} of {self.elements} "
                     f"values beyond {self.tolerance:.3g}")
        lines = [f"{self.kind}: {self.path} ({size}): {check}"]
        if self.layers is not None and (self.differing or not self.layers.ok):
            c = self.layers
            lines.append(f"  layer by layer: {c.flips} of {c.levels:,} activation levels flipped, {c.off_tie} of "
                         f"them not at a float32 tie; outputs within {c.max_abs_diff:.3g} ({c.differing} values "
                         "beyond the tolerance)")
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    def raise_if_failed(self) -> None:
        """Raises RunError when the file does not compute what the qatrun network computes."""
        if not self.ok:
            raise RunError(f"the exported file does not match: {self.summary()}")


def as_arrays(value: object) -> list[np.ndarray]:
    """A network output (tensor or tuple of tensors) as a list of numpy arrays."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return [v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v) for v in values]


def compare(kind: str, reference: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[int, int, float, float, float]:
    """``(elements, differing, max |diff|, max |reference|, tolerance)`` of two lists of outputs.

    Raises:
        RunError: the outputs differ in number or shape (a writer bug, reported as such).
    """
    if len(reference) != len(outputs) or any(r.shape != o.shape for r, o in zip(reference, outputs)):
        raise RunError(f"{kind}: onnxruntime returned outputs of shapes {[o.shape for o in outputs]}, the network "
                       f"{[r.shape for r in reference]}")
    ref = np.concatenate([r.astype(np.float64).reshape(-1) for r in reference])
    out = np.concatenate([o.astype(np.float64).reshape(-1) for o in outputs])
    ref_max = float(np.abs(ref).max()) if ref.size else 0.0
    tolerance = TOLERANCE[kind] * max(1.0, ref_max)
    diff = np.abs(ref - out)
    max_diff = float(np.nanmax(diff)) if diff.size else 0.0
    if kind == "onnx-int":
        differing = int((ref != out).sum())  # exact: levels and float64 logits alike
    else:
        differing = int((~(diff <= tolerance)).sum())  # NaN on either side counts as differing
    return int(ref.size), differing, max_diff, ref_max, tolerance


class _Forced(fx.Interpreter):
    """Runs the network with the outputs of the given activation quantizer nodes substituted, recording
    what it computed for them and the quantizer's input (the value before rounding)."""

    def __init__(self, gm: fx.GraphModule, forced: dict[str, Tensor]) -> None:
        super().__init__(gm)
        self.forced = forced
        self.computed: dict[str, Tensor] = {}
        self.before: dict[str, Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name not in self.forced:
            return result
        args, _ = self.fetch_args_kwargs_from_env(n)
        self.before[n.name] = self.fetch_attr(str(n.target)).act(args[0])  # a QuantizedActivation
        self.computed[n.name] = result
        return self.forced[n.name]


def qdq_layer_check(
    gm: fx.GraphModule, path: str | Path, sample: Tensor, activations: dict[str, tuple[str, float]]
) -> LevelCheck:
    """The layer-by-layer QDQ check (module note) on at most :data:`LAYER_CHECK_SAMPLES` inputs.

    Args:
        gm: the fake-quantized network (CPU, eval mode).
        path: the QDQ file.
        sample: the inputs.
        activations: fx node name -> (the ONNX value of its DequantizeLinear, its scale).
    """
    sample = sample[:LAYER_CHECK_SAMPLES]
    model = onnx.load(str(path))
    n_outputs = len(model.graph.output)
    names = list(activations)
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(activations[name][0], onnx.TensorProto.FLOAT,
                                                                     None))
    results = session(model.SerializeToString()).run(None, {model.graph.input[0].name: sample.numpy()})
    ours = {name: torch.from_numpy(value) for name, value in zip(names, results[n_outputs:])}
    forced = _Forced(gm, ours)
    with torch.no_grad():
        reference = forced.run(sample)
    check = LevelCheck()
    for name in names:
        scale = activations[name][1]
        theirs = np.round(forced.computed[name].double().numpy() / scale)  # levels (minus the zero point)
        levels = np.round(ours[name].double().numpy() / scale)
        flipped = theirs != levels
        before = forced.before[name].double().numpy()[flipped] / scale
        at_tie = np.abs(np.abs(before - np.floor(before)) - 0.5) <= TIE_WINDOW  # the zero point is an integer
        check.levels += flipped.size
        check.flips += int(flipped.sum())
        check.off_tie += int((~at_tie | (np.abs(theirs - levels)[flipped] > 1)).sum())
    _, check.differing, check.max_abs_diff, _, _ = compare("onnx-qdq", as_arrays(reference), results[:n_outputs])
    return check
