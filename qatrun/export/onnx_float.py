"""The float network as ONNX: the quantizers swapped back out, the latent weights, opset 13.

torch's TorchScript exporter writes it (``dynamo=False``, no constant folding, so each layer stays one
node holding its own weights); where it fails on a graph, qatrun's own writer
(:class:`~qatrun.export.onnx_qdq.QdqWriter` without quantizers) writes the same network.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import Tensor, fx

from qatrun.export.onnx_qdq import QdqWriter
from qatrun.quant import unprepare

OPSET = 13


def float_network(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with every quantized module swapped back for its float original, in eval mode."""
    copied = copy.deepcopy(gm)
    unprepare(copied)
    return copied.eval()


def export_float(gm: fx.GraphModule, path: str | Path, sample: Tensor) -> tuple[int, list[str]]:
    """Writes the float network of ``gm`` (quantized or not) as ONNX.

    Args:
        gm: the network.
        path: the ONNX file to write.
        sample: an input batch (the batch dimension is dynamic in the file).

    Returns:
        ``(file size in bytes, notes)``.
    """
    network = float_network(gm)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network, (sample,), buffer, dynamo=False, opset_version=OPSET, do_constant_folding=False,
                input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
            )
    except Exception as err:  # noqa: BLE001 - any exporter failure falls back to qatrun's writer
        size = QdqWriter(network, sample, quantized=False).write(path)
        return size, [f"torch's exporter failed ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                      "written by qatrun's graph writer"]
    Path(path).write_bytes(buffer.getvalue())
    return Path(path).stat().st_size, []
