"""export: ONNX files of the float, fake-quantized (QDQ) and integer-only networks, each checked in onnxruntime.

    report = export("onnx-int", gm, int_gm, "model_int.onnx", x)   # writes, runs, compares
    print(report.summary())                                       # bit-identical? size?
    for out in run_onnx("model_int.onnx", test_loader): ...       # -test-onnx
    print(weight_sizes(gm).summary())                             # float32 / int8 / packed bytes

Kinds (:data:`KINDS`):

* ``onnx``: the float network (quantizers removed, latent weights), opset 13, checked against that float
  network: largest difference below ``1e-5 max(1, max|y|)``;
* ``onnx-qdq``: the fake-quantized network as QuantizeLinear/DequantizeLinear at each layer's bits,
  opset 21, checked against ``gm`` within ``1e-4 max(1, max|y|)``, and layer by layer, where every
  activation level must equal qatrun's from the same inputs except at float32 ties (:mod:`.check`);
* ``onnx-int``: the integer-only network of :func:`qatrun.fuse.integerize`, opset 13, checked against
  ``int_gm``: bit-identical or failed.

Every check runs onnxruntime on the CPU with graph optimizations off (see :mod:`.onnx_graph`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, fx

from qatrun.errors import RunError
from qatrun.options import EXPORT_KINDS
from qatrun.export.check import ExportReport, LevelCheck, as_arrays, compare, qdq_layer_check
from qatrun.export.onnx_float import export_float, float_network
from qatrun.export.onnx_int import INPUT_KINDS, export_int
from qatrun.export.onnx_qdq import export_qdq
from qatrun.export.runtime import OnnxModule, OnnxRunner, run_onnx
from qatrun.export.sizes import LayerSize, WeightSizes, weight_sizes
from qatrun.fuse.fold import refuse_non_finite

KINDS = EXPORT_KINDS


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
        RunError: an unknown kind, a missing int_gm, a network part without an ONNX form, or a parameter
            that is not finite (refused before the file is written).
    """
    if kind not in KINDS:
        raise RunError(f"unknown export kind {kind!r}; expected one of {', '.join(KINDS)}")
    if input_kind not in INPUT_KINDS:
        raise RunError(f"integer ONNX input must be one of {', '.join(INPUT_KINDS)}, found {input_kind!r}")
    refuse_non_finite(gm, f"export {kind}")
    path = Path(path)
    sample = sample_input.detach().cpu().float()
    network = copy.deepcopy(int_gm if kind == "onnx-int" else gm)
    if network is None:
        raise RunError("onnx-int export needs the integer network (run the fusion first: -qat-fuse)")
    network = network.cpu().eval()
    layers = None
    with torch.no_grad():
        if kind == "onnx":
            size, notes = export_float(network, path, sample)
            reference = float_network(network)(sample)
        elif kind == "onnx-qdq":
            writer = export_qdq(network, path, sample)
            size, notes = writer.size, writer.notes
            reference = network(sample)
        else:
            size, notes = export_int(network, path, sample, input_kind), []
            reference = network(sample)
    runner = OnnxRunner(path)
    outputs = runner.run_numpy(runner.feed(sample))
    elements, differing, max_diff, ref_max, tolerance = compare(kind, as_arrays(reference), outputs)
    if kind == "onnx-qdq":
        layers = qdq_layer_check(network, path, sample, writer.activations)
    return ExportReport(kind, path, size, sample.shape[0], elements, max_diff, differing, tolerance, ref_max,
                        layers, notes)


__all__ = [
    "ExportReport",
    "LevelCheck",
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
