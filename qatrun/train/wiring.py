"""Which INI solver updates which tensor of a built network.

Layer weights, biases and BatchNorm scales take ``Solvers.*`` / ``WeightsSolver.*`` / ``BiasSolver.*`` /
``ScaleSolver.*`` of their section; quantizer parameters (SAT alpha, LSQ steps) take ``QWeightSolver`` /
``QActSolver`` of the quantizer's plan. A quantizer parameter with a lower bound (the quantizer's
``PARAMETER_MIN``, e.g. LSQ's step size, which must stay positive) is clamped to it after every update,
inside any INI ``Clamping``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import fx, nn

from qatrun import quant
from qatrun.ini import Document
from qatrun.train.solver import SolverConfig

SolverTriple = tuple[str, nn.Parameter, SolverConfig]

# Parameter roles of each cell type: the attribute of the module and the INI solver that updates it.
ROLES = {
    "Conv": (("weight", "WeightsSolver"), ("bias", "BiasSolver")),
    "Deconv": (("weight", "WeightsSolver"), ("bias", "BiasSolver")),
    "Fc": (("weight", "WeightsSolver"), ("bias", "BiasSolver")),
    "BatchNorm": (("weight", "ScaleSolver"), ("bias", "BiasSolver")),
}


def solver_triples(doc: Document, gm: fx.GraphModule, plans: Mapping[str, quant.QuantPlan]) -> list[SolverTriple]:
    """Every learnable tensor of ``gm`` with the solver the INI gives it (and every solver key read).

    Args:
        doc: the INI the network was built from.
        gm: the network of :func:`qatrun.net.build`, quantized by ``plans``.
        plans: module name -> the plan it was quantized with.

    Returns:
        ``(name, parameter, solver)`` for each parameter, for :func:`qatrun.train.group_by_solver`.
    """
    triples: list[SolverTriple] = []
    for cell in gm.cells.values():
        module = gm.get_submodule(cell.module_name)
        for attr, role in ROLES.get(cell.type, ()):
            # An imported cell without an override section takes N2D2's default solver.
            config = SolverConfig.from_params(cell.section, doc.params(cell.section), role) \
                if cell.section is not None else SolverConfig()
            tensor = getattr(module, attr, None)
            if isinstance(tensor, nn.Parameter):
                triples.append((f"{cell.name}.{attr}", tensor, config))
        plan = plans.get(cell.module_name)
        if plan is None:
            continue
        if isinstance(module, quant.QuantizedWeightLayer):
            triples += _quantizer_triples(f"{cell.name}.QWeight", module.weight_quantizer, plan.weight_solver)
        if cell.act_name is not None:
            act = gm.get_submodule(cell.act_name)
            if isinstance(act, quant.QuantizedActivation):
                triples += _quantizer_triples(f"{cell.name}.QAct", act.quantizer, plan.act_solver)
    return triples


def _quantizer_triples(prefix: str, quantizer: quant.Quantizer,
                       plan: quant.SolverPlan | None) -> list[SolverTriple]:
    assert isinstance(quantizer, nn.Module), type(quantizer)
    config = SolverConfig.from_plan(plan)
    bounds = quantizer.PARAMETER_MIN
    triples = []
    for name, param in quantizer.named_parameters():
        bound = bounds.get(name)
        bounded = config
        if bound is not None and (config.clamp_min is None or config.clamp_min < bound):
            bounded = dataclasses.replace(config, clamp_min=bound)
        triples.append((f"{prefix}.{name}", param, bounded))
    return triples
