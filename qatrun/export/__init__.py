"""export: ONNX files of the float, fake-quantized (QDQ) and integer-only networks, each checked in onnxruntime.

    report = export("onnx-int", gm, int_gm, "model_int.onnx", x)   # writes, runs, compares
    print(report.summary())                                       # bit-identical? size?
    for out in run_onnx("model_int.onnx", test_loader): ...       # -test-onnx
    print(weight_sizes(gm).summary())                             # float32 / int8 / packed bytes

Kinds (:data:`KINDS`):

* ``onnx``: the float network (quantizers removed, latent weights), opset 13, checked against that float
  network: largest difference below ``1e-5 max(1, max|y|)``;
* ``onnx-qdq``: the fake-quantized network as QuantizeLinear/DequantizeLinear at each layer's bits,
  opset 21, checked against ``gm`` within ``1e-4 max(1, max|y|)`` (QuantizeLinear rounds half to even
  where SAT and LSQ round half away: they differ only within float32 rounding of a tie);
* ``onnx-int``: the integer-only network of :func:`qatrun.fuse.integerize`, opset 13, checked against
  ``int_gm``: bit-identical or failed.

Every check runs onnxruntime on the CPU with graph optimizations off (see :mod:`.onnx_graph`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, fx

from qatrun.errors import RunError
from qatrun.export.onnx_float import export_float, float_network
from qatrun.export.onnx_int import INPUT_KINDS, export_int
from qatrun.export.onnx_qdq import export_qdq
from qatrun.export.runtime import OnnxModule, OnnxRunner, run_onnx
from qatrun.export.sizes import LayerSize, WeightSizes, weight_sizes

KINDS = ("onnx", "onnx-qdq", "onnx-int")
TOLERANCE = {"onnx": 1e-5, "onnx-qdq": 1e-4, "onnx-int": 0.0}  # times max(1, max |reference|)


@dataclass
class ExportReport:
    """One written file and how it compared with the qatrun network in onnxruntime.

    Attributes:
        kind: one of :data:`KINDS`.
        path: the file.
        file_bytes: its size.
        samples: number of inputs compared.
        elements: number of output values compared.
        max_abs_diff: largest ``|onnxruntime - qatrun|`` over the outputs.
        differing: output values that differ by more than ``tolerance`` (any difference for ``onnx-int``).
        tolerance: the allowed difference (0 for ``onnx-int``).
        reference_max: largest ``|qatrun output|``, to read the difference against.
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
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no output value differs beyond the tolerance."""
        return self.differing == 0

    def summary(self) -> str:
        """One line: kind, file, size and the check (``bit-identical`` for the integer network)."""
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
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    def raise_if_failed(self) -> None:
        """Raises RunError when the file does not compute what the qatrun network computes."""
        if not self.ok:
            raise RunError(f"the exported file does not match: {self.summary()}")


def _outputs(value: object) -> list[np.ndarray]:
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
    differing = int((~(diff <= tolerance)).sum())  # NaN on either side counts as differing
    max_diff = float(np.nanmax(diff)) if diff.size else 0.0
    if kind == "onnx-int":
        differing = int((ref != out).sum())  # exact: levels and float64 logits alike
    return int(ref.size), differing, max_diff, ref_max, tolerance


def export(
    kind: str,
    gm: fx.GraphModule,
    int_gm: fx.GraphModule | None,
    path: str | Path,
    sample_input: Tensor,
    input_kind: str = "float",
) -> ExportReport:
    """Writes one ONNX file and checks it in onnxruntime against the qatrun network on ``sample_input``.

    Args:
        kind: ``onnx`` (float network), ``onnx-qdq`` (fake-quantized, QDQ) or ``onnx-int`` (integer-only).
        gm: the quantized network (``qatrun.quant.prepare`` applied; a float network for ``onnx``).
        int_gm: the integer network from :func:`qatrun.fuse.integerize` (needed for ``onnx-int`` only).
        path: the file to write.
        sample_input: a batch of inputs (N, C, H, W), x = p / 255 for ``onnx-int``.
        input_kind: ``onnx-int`` only: ``float`` (x) or ``uint8`` (p) as the file's input.

    Returns:
        The report: file size, largest difference and the number of differing values.

    Raises:
        RunError: an unknown kind, a missing int_gm, or a network part without an ONNX form.
    """
    if kind not in KINDS:
        raise RunError(f"unknown export kind {kind!r}; expected one of {', '.join(KINDS)}")
    if input_kind not in INPUT_KINDS:
        raise RunError(f"integer ONNX input must be one of {', '.join(INPUT_KINDS)}, found {input_kind!r}")
    path = Path(path)
    sample = sample_input.detach().cpu().float()
    network = copy.deepcopy(int_gm if kind == "onnx-int" else gm)
    if network is None:
        raise RunError("onnx-int export needs the integer network (run the fusion first: -qat-fuse)")
    network = network.cpu().eval()
    with torch.no_grad():
        if kind == "onnx":
            size, notes = export_float(network, path, sample)
            reference = float_network(network)(sample)
        elif kind == "onnx-qdq":
            size, notes = export_qdq(network, path, sample)
            reference = network(sample)
        else:
            size, notes = export_int(network, path, sample, input_kind), []
            reference = network(sample)
    runner = OnnxRunner(path)
    outputs = runner.run_numpy(runner.feed(sample))
    elements, differing, max_diff, ref_max, tolerance = compare(kind, _outputs(reference), outputs)
    return ExportReport(kind, path, size, sample.shape[0], elements, max_diff, differing, tolerance, ref_max, notes)


__all__ = [
    "ExportReport",
    "INPUT_KINDS",
    "KINDS",
    "LayerSize",
    "OnnxModule",
    "OnnxRunner",
    "WeightSizes",
    "compare",
    "export",
    "run_onnx",
    "weight_sizes",
]
