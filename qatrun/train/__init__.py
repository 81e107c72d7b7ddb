"""N2D2 solvers and learning-rate policies, learn / validate / test loops, metrics, weights folders.

Typical use (the pipeline)::

    from qatrun import train

    solver = train.SolverConfig.from_params(section, doc.params(section), "WeightsSolver")
    optimizer = train.N2D2Optimizer(train.group_by_solver(triples), batch_size)
    io = train.EntriesIO(lambda: entries)                  # weights folders in N2D2's format
    result = train.learn(gm, provider, optimizer, train.LearnConfig(batch_size, epochs=10), io)
    metrics = train.test(gm, provider.loader("Test", False))
    print("\\n".join(metrics.test_lines()))                 # Final recognition rate: ...
"""

from __future__ import annotations

from qatrun.train.loop import (
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
    learn,
    load_state,
    loss_value,
    save_state,
    test,
)
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
from qatrun.train.weights import (
    Entry,
    atomic_folder,
    export_folder,
    file_path,
    import_folder,
    plot_distributions,
    read_values,
)

__all__ = [
    "ADAM_KEYS",
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
    "Progress",
    "Provider",
    "ROLES",
    "SGD_KEYS",
    "SOLVER_TYPES",
    "SolverConfig",
    "WeightsIO",
    "atomic_folder",
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
    "read_values",
    "save_state",
    "solver_group",
    "test",
    "write_confusion",
]
