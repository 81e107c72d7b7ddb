"""BatchNorm folding in floating point: ``-fuse`` on a network without quantizers.

An inference BatchNorm after a convolution (or a fully connected layer) is an affine map per output
channel, so it folds into the layer's weights and bias (the scheme of ``torch/nn/utils/fusion.py``)::

    y  = W * x + b                          (the layer)
    z  = gamma (y - mean) / sqrt(var + eps) + beta
       = (f W) * x + f (b - mean) + beta,   f = gamma / sqrt(var + eps)
    W' = f W   (f broadcast over the output-channel axis),   b' = f (b - mean) + beta

``var`` is the running variance the BatchNorm normalises with at test time (N2D2 keeps the unbiased
estimate, as PyTorch does). The folded network computes the same function up to float rounding.

Where qatrun differs from N2D2: N2D2 only folds BatchNorm as part of its SAT integerization (``-qat-sat``,
see :mod:`qatrun.fuse.integerize`); on a float network ``-fuse`` is qatrun's own, kept separate so that
the folding math is testable on its own. The arithmetic is done in float64 and stored in the layer's
dtype, so the only error is the final rounding to float32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from qatrun.errors import RunError

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Modules that the folding pass looks through between a layer and its BatchNorm (the Linear activation
# the network builder places after every layer whose section has ActivationFunction=Linear).
TRANSPARENT = (nn.Identity,)


def refuse_non_finite(module: nn.Module, action: str) -> None:
    """Refuses a network with a ``nan`` or ``inf`` parameter or floating buffer, before anything is written.

    Args:
        module: the network.
        action: what would be done, for the message (``"fuse"``, ``"export onnx"``).

    Raises:
        RunError: ``"cannot <action>: <name> holds nan at index i (shape ...)"``, the first such tensor.
    """
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        bad = ~torch.isfinite(flat)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            shape = "x".join(map(str, tensor.shape)) or "scalar"
            raise RunError(f"cannot {action}: {name} holds {float(flat[index])} at index {index} (shape {shape}); "
                           "a non-finite parameter has no integer or exported form")


def bn_factor(running_var: Tensor, eps: float, gamma: Tensor | None, min_variance: float | None = None) -> Tensor:
    """The per-channel factor ``f = gamma / sqrt(var + eps)`` of a BatchNorm in evaluation, in float64.

    Args:
        running_var: the running variance (C,).
        eps: the BatchNorm's epsilon.
        gamma: its scale (C,); None without affine parameters (gamma = 1).
        min_variance: N2D2's fusion sets f = 0 where ``var <= min_variance`` (None: never).
    """
    var = running_var.double()
    f = torch.rsqrt(var + eps) if gamma is None else gamma.double() / torch.sqrt(var + eps)
    if min_variance is not None:
        f = torch.where(var > min_variance, f, torch.zeros_like(f))
    return f


def fold_bn_weights(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    gamma: Tensor | None,
    beta: Tensor | None,
    channel_axis: int = 0,
) -> tuple[Tensor, Tensor]:
    """Folds an inference BatchNorm into the weights and bias of the layer before it.

    Args:
        weight: the layer's weights, output channels along ``channel_axis``: (O, C, kH, kW) or (O, I).
        bias: (O,), or None for a layer without bias.
        running_mean: the BatchNorm's running mean (O,).
        running_var: its running variance (O,).
        eps: its epsilon.
        gamma: its scale (O,), None without affine parameters.
        beta: its shift (O,), None without affine parameters.
        channel_axis: the weight axis of the output channels (1 for a transposed convolution).

    Returns:
        ``(W', b')`` in ``weight``'s dtype, computed in float64.
    """
    f = bn_factor(running_var, eps, gamma)
    shape = [1] * weight.dim()
    shape[channel_axis] = -1
    folded_w = weight.double() * f.reshape(shape)
    b = torch.zeros_like(f) if bias is None else bias.double()
    folded_b = f * (b - running_mean.double())
    if beta is not None:
        folded_b = folded_b + beta.double()
    return folded_w.to(weight.dtype), folded_b.to(weight.dtype)


def fold_layer_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (Conv2d, Linear, ConvTranspose2d or a subclass) with ``bn`` folded in.

    The copy keeps the layer's class and buffers (a masked convolution keeps its ``mask``: masking
    commutes with a per-output-channel factor). It always has a bias.
    """
    assert isinstance(bn, BATCHNORMS), type(bn)
    if bn.running_mean is None or bn.running_var is None:
        raise RunError(f"cannot fold {type(bn).__name__} without running statistics (track_running_stats=False)")
    channel_axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
    weight, bias = fold_bn_weights(
        layer.weight.detach(), None if layer.bias is None else layer.bias.detach(),
        bn.running_mean, bn.running_var, bn.eps,
        None if bn.weight is None else bn.weight.detach(),
        None if bn.bias is None else bn.bias.detach(),
        channel_axis,
    )
    folded = copy.deepcopy(layer)
    folded.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
    folded.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
    return folded


@dataclass(frozen=True)
class FoldedPair:
    """One folded pattern: ``layer`` absorbed ``batchnorm`` (module names); ``skipped`` lists the
    transparent modules between them that were removed with it."""

    layer: str
    batchnorm: str
    skipped: tuple[str, ...] = ()


FOLDABLE = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]


def follow_to_bn(gm: fx.GraphModule, node: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
    """From a layer node, the transparent nodes then the BatchNorm node of a single-user chain, if any."""
    skipped: list[fx.Node] = []
    current = node
    while len(current.users) == 1:
        user = next(iter(current.users))
        module = _module(gm, user)
        if isinstance(module, BATCHNORMS):
            return skipped, user
        if not isinstance(module, TRANSPARENT):
            return None
        skipped.append(user)
        current = user
    return None


def fold_batchnorm(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[FoldedPair]]:
    """Folds every BatchNorm that directly follows a Conv/Fc (through Identity activations) into it.

    Works on a copy: ``gm`` is left as it was. A BatchNorm whose layer has other users, or that follows
    something else (a pool, a non-linear activation, an Add), is kept.

    Args:
        gm: the float network, in evaluation mode semantics (running statistics are used).

    Returns:
        ``(folded, pairs)``: the new GraphModule (the layer module replaced by its folded copy, the
        BatchNorm and the skipped Identity nodes removed) and what was folded, in graph order.
    """
    refuse_non_finite(gm, "fold BatchNorm")
    folded = copy.deepcopy(gm)
    pairs: list[FoldedPair] = []
    for node in list(folded.graph.nodes):
        if not isinstance(_module(folded, node), FOLDABLE):
            continue
        chain = follow_to_bn(folded, node)
        if chain is None:
            continue
        skipped, bn_node = chain
        layer_name, bn_name = str(node.target), str(bn_node.target)
        new_layer = fold_layer_bn(folded.get_submodule(layer_name), folded.get_submodule(bn_name))
        folded.set_submodule(layer_name, new_layer)
        bn_node.replace_all_uses_with(node)
        for dead in [bn_node, *reversed(skipped)]:
            folded.graph.erase_node(dead)
        pairs.append(FoldedPair(layer_name, bn_name, tuple(str(n.target) for n in skipped)))
    folded.graph.lint()
    folded.delete_all_unused_submodules()
    folded.recompile()
    return folded, pairs

