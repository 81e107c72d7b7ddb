#!/usr/bin/env python
"""Exports qatrun's float ResNet-20 (models/ResNet20-cifar10.ini) to ONNX, the input of the ONNX QAT example.

    N2D2_DATA=/path/to/data qatrun models/ResNet20-cifar10.ini -learn-epoch 30  # writes weights_validation/
    .venv/bin/python scripts/export_resnet20_onnx.py --weights weights_validation models/onnx/resnet20-cifar10.onnx

The network is built from the INI exactly as the command builds it (the same ``torch.fx.GraphModule``),
the weights folder is read with :class:`qatrun.train.NetworkFolders`, and the module is exported in eval
mode with torch's TorchScript exporter (``dynamo=False, opset_version=13, do_constant_folding=False``,
design.md section 8: the dynamo exporter writes operators onnx2torch cannot read, and constant folding
would merge each BatchNorm into its convolution, leaving no BatchNormalization node to quantize). The
GraphModule exports directly: its Softmax-with-loss passes the logits through, so the graph ends at the
Fc. The input is ``x`` (N x 3 x 32 x 32, N dynamic), the output ``logits``.

Node outputs: the exporter names them after the module scope and the operator (``/res1_1_conv1/Conv_output_0``).
They are renamed here to plain names, as in the model-zoo files N2D2's examples import
(``resnetv15_conv0_fwd``), because N2D2 names each imported cell, and each override section, after its
node's first output: ``conv1``, ``bn1``, ``bn1_relu``, ``res1_1_conv1`` ... ``res3_3_sum``,
``res3_3_sum_relu``, ``pool``, ``flatten``, ``fc`` (the module name; ``<cell>_act`` becomes ``<cell>_relu``).

Finally the file runs in onnxruntime on random and on real-looking inputs and is compared with the torch
module: the largest absolute difference is printed, and the script fails above ``--tolerance``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qatrun import data, ini, net, train  # noqa: E402  (the checkout, not an installed copy)
from qatrun.net import layers  # noqa: E402

DEFAULT_INI = ROOT / "models" / "ResNet20-cifar10.ini"


def build(ini_path: Path, weights: Path | None) -> tuple[torch.fx.GraphModule, tuple[int, int, int]]:
    """The float network of the INI (with a weights folder's values if given, in eval mode) and its input (C, H, W).

    Built from the document alone (no data read): the solver keys, which refer to the data set's size,
    play no part in an export.
    """
    doc = ini.load(str(ini_path))
    spec = data.DataSpec.from_doc(doc)
    gm = net.build(doc, spec.input_shape)
    if weights is not None:
        train.NetworkFolders(gm).load(weights)
    else:  # N2D2's initial variance 0 makes an untrained 20-layer stack overflow in eval mode: use 1
        for module in gm.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_var.fill_(1.0)
    return gm.eval(), tuple(spec.input_shape)  # type: ignore[return-value]


class PlainAdd(nn.Module):
    """``a + b``: an ElemWise Sum with unit weights and no shifts, as one ONNX Add node."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def plain_view(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the network whose residual sums export as one ``Add`` node each.

    qatrun's ElemWise computes ``sum_i w_i x_i + s_i`` with per-channel coefficient buffers, which the
    exporter writes as Gather, Reshape, Mul and Add nodes; an imported graph would keep those Muls by
    constants as glue, which is not what a model-zoo ResNet looks like and has no integer form. A Sum of
    two inputs with unit weights and zero shifts is ``a + b``: it is swapped for :class:`PlainAdd`, under
    the same module name, so the node keeps the cell's name. Anything else is left as it is.
    """
    view = copy.deepcopy(gm)
    for name, module in list(view.named_children()):
        if isinstance(module, layers.ElemWise) and module.op == "Sum" and module.weights.shape[0] == 2 \
                and bool((module.weights == 1).all()) and not bool(module.shifts.any()):
            setattr(view, name, PlainAdd())
    return view.eval()


def short_names(model: onnx.ModelProto) -> dict[str, str]:
    """Renames every node output after its module: ``/res1_1_bn1_act/Relu_output_0`` -> ``res1_1_bn1_relu``.

    A node outside any module (``/Flatten``) takes its operator's name in lower case. Graph inputs and
    outputs keep their names. Returns old -> new.
    """
    keep = {value.name for value in (*model.graph.input, *model.graph.output)}
    names: dict[str, str] = {}
    taken = set(keep)
    for node in model.graph.node:
        old = node.output[0]
        if old in keep:
            continue
        parts = node.name.strip("/").split("/")
        base = parts[0] if len(parts) > 1 else parts[0].lower()
        if base.endswith("_act"):
            base = base[: -len("_act")] + "_relu"
        new, k = base, 1
        while new in taken:  # two nodes in one module (none in ResNet-20, but keep names unique)
            k += 1
            new = f"{base}_{k}"
        taken.add(new)
        names[old] = new
    for node in model.graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
    for info in model.graph.value_info:
        info.name = names.get(info.name, info.name)
    return names


def export(gm: torch.nn.Module, path: Path, shape: tuple[int, int, int]) -> onnx.ModelProto:
    """Writes the module as ONNX (opset 13, no constant folding, dynamic batch) with plain node names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter announces itself as legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            gm, torch.zeros(1, *shape), str(path), dynamo=False, opset_version=13, do_constant_folding=False,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        )
    model = onnx.load(str(path))
    short_names(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def compare(gm: torch.nn.Module, path: Path, shape: tuple[int, int, int], batch: int = 16) -> float:
    """Largest |onnxruntime - torch| over a batch of uniform [0, 1] images (the range the network is fed)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = gm(x).numpy()
    found = session.run(None, {"x": x.numpy()})[0]
    assert found.shape == expected.shape, (found.shape, expected.shape)
    return float(np.abs(found - expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the ONNX file to write")
    parser.add_argument("--ini", type=Path, default=DEFAULT_INI, help=f"the float network [{DEFAULT_INI.name}]")
    parser.add_argument("--weights", type=Path, help="an N2D2 weights folder written by qatrun (else the fillers)")
    parser.add_argument("--seed", type=int, default=0, help="fillers' seed when no weights are given [0]")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |onnxruntime - torch| accepted")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    gm, shape = build(args.ini, args.weights)
    gm = plain_view(gm)
    model = export(gm, args.output, shape)
    ops = sorted({node.op_type for node in model.graph.node})
    print(f"wrote {args.output}: {len(model.graph.node)} nodes ({', '.join(ops)}), "
          f"{args.output.stat().st_size:,} bytes")
    difference = compare(gm, args.output, shape)
    print(f"onnxruntime vs torch on 16 images: max |difference| = {difference:.3g}")
    if difference > args.tolerance:
        print(f"error: the ONNX file differs from the torch module by more than {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
