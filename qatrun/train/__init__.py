"""N2D2 solvers and learning-rate policies, learn / validate / test loops, metrics, weights folders.

Typical use (``qatrun.network`` composes these)::

    from qatrun import train

    triples = train.solver_triples(doc, gm, plans)          # every tensor with its INI solver
    optimizer = train.N2D2Optimizer(train.group_by_solver(triples), batch_size)
    io = train.NetworkFolders(gm)                          # weights folders in N2D2's format
    result = train.learn(gm, provider, optimizer, train.LearnConfig(batch_size, epochs=10), io)
    metrics = train.test(gm, provider.loader("Test", False))
    print("\\n".join(metrics.test_lines()))                 # Final recognition rate: ...
"""

from __future__ import annotations

from qatrun.train.loop import (
    Diverged,
    EntriesIO,
    Interrupted,
    LearnConfig,
    LearnResult,
    ModuleIO,
    Progress,
    Provider,
    WeightsIO,
    dist_info,
    evaluate,
    check_same_network,
    learn,
    load_state,
    loss_value,
    save_state,
    state_seed,
    test,
)
from qatrun.train.folders import NetworkFolders, quantizer_holders, weight_entries
from qatrun.train.metrics import METRICS, Metrics, confusion_update, per_class, write_confusion
from qatrun.train.solver import (
    ADAM_KEYS,
    LR_POLICIES,
    ROLES,
    SGD_KEYS,
    SOLVER_TYPES,
    N2D2Optimizer,
    SolverConfig,
    group_by_solver,
    learning_rate,
    solver_group,
)
from qatrun.train.session import Session, choose_device, rank, resolve_seed, versions, write_run_record
from qatrun.train.weights import (
    Entry,
    atomic_folder,
    export_folder,
    file_path,
    import_folder,
    plot_distributions,
    read_values,
)
from qatrun.train.wiring import SolverTriple, solver_triples

__all__ = [
    "ADAM_KEYS",
    "Diverged",
    "Entry",
    "EntriesIO",
    "Interrupted",
    "LR_POLICIES",
    "LearnConfig",
    "LearnResult",
    "METRICS",
    "Metrics",
    "ModuleIO",
    "N2D2Optimizer",
    "NetworkFolders",
    "Progress",
    "Provider",
    "ROLES",
    "SGD_KEYS",
    "SOLVER_TYPES",
    "Session",
    "SolverConfig",
    "SolverTriple",
    "WeightsIO",
    "atomic_folder",
    "check_same_network",
    "choose_device",
    "confusion_update",
    "dist_info",
    "evaluate",
    "export_folder",
    "file_path",
    "group_by_solver",
    "import_folder",
    "plot_distributions",
    "learn",
    "learning_rate",
    "load_state",
    "loss_value",
    "per_class",
    "quantizer_holders",
    "rank",
    "read_values",
    "resolve_seed",
    "save_state",
    "solver_group",
    "solver_triples",
    "state_seed",
    "test",
    "versions",
    "weight_entries",
    "write_confusion",
    "write_run_record",
]
