"""The Optuna plugin: PrimeSVT's prioritized walk and its baselines as samplers, the pruning
objective with accuracy/memory constraints, the early-cut pruner, and the study's result."""

from .constraints import DEFAULT_GRID, RATE_PREFIX, Constraints, parse_bytes, rate_param
from .objective import PruningObjective, RateObjective
from .pruner import ConstraintPruner
from .samplers import (
    BudgetAwareSampler,
    PrioritizedSampler,
    RandomOrderSampler,
    SmallestFirstSampler,
    UniformSampler,
)
from .synthetic import SyntheticObjective

__all__ = [
    "DEFAULT_GRID",
    "RATE_PREFIX",
    "BudgetAwareSampler",
    "ConstraintPruner",
    "Constraints",
    "PrioritizedSampler",
    "PruningObjective",
    "RandomOrderSampler",
    "RateObjective",
    "SmallestFirstSampler",
    "SyntheticObjective",
    "UniformSampler",
    "parse_bytes",
    "rate_param",
]
