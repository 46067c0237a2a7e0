"""primesvt-optuna: PrimeSVT memory-aware structured pruning of Spiking Vision Transformers.

The public API is importable from here; names load lazily so that ``primesvt --help`` does not
pay for torch and Optuna.

Example:
    >>> import optuna
    >>> from primesvt_optuna import PrioritizedSampler, PruningObjective
    >>> objective = PruningObjective("digits-2-64", max_accuracy_drop=0.03, memory_target=0.4)
    >>> study = optuna.create_study(sampler=PrioritizedSampler(), directions=objective.directions)
    >>> study.optimize(objective)  # the sampler stops the study when the walk is done
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _quiet  # noqa: F401  (first: drops torch's "Triton not available" log lines)

__version__ = "0.1.0"

_EXPORTS = {
    "PruningObjective": "plugin", "SyntheticObjective": "plugin", "ConstraintPruner": "plugin",
    "PrioritizedSampler": "plugin", "UniformSampler": "plugin", "RandomOrderSampler": "plugin",
    "SmallestFirstSampler": "plugin", "BudgetAwareSampler": "plugin", "Constraints": "plugin", "RATE_PREFIX": "plugin",
    "Engine": "pruning", "prune": "pruning", "model_bytes": "pruning", "deployment_memory": "pruning",
    "build_model": "models", "PRESETS": "models",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "shipped": "checkpoint",
    "load_splits": "data", "evaluate": "training", "finetune": "training", "train": "training",
    "PrimeSVTError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'primesvt_optuna' has no attribute {name!r}")
