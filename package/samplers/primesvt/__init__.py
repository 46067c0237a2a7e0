"""PrimeSVT's samplers as an OptunaHub package: ``optunahub.load_module("samplers/primesvt")``.

Everything here is re-exported from the ``primesvt-optuna`` distribution (see requirements.txt);
no code is copied, so the loaded classes *are* ``primesvt_optuna``'s. The sampler names follow
``primesvt_optuna.plugin.samplers.__all__``: PrioritizedSampler (the paper's largest-first
walk), SmallestFirstSampler, RandomOrderSampler, UniformSampler, their bases ClaimSampler and
WalkSampler, ``from_settings`` and ``rates_key``.
"""

from primesvt_optuna.plugin import samplers as _samplers
from primesvt_optuna.plugin import ConstraintPruner, PruningObjective, SyntheticObjective
from primesvt_optuna.plugin.result import result
from primesvt_optuna.plugin.samplers import *  # noqa: F401,F403


# The samplers, then what a study with them needs: the objectives (a real checkpoint or the
# closed-form stand-in), the early-cut pruner and the configuration the walk selected.
__all__ = [*_samplers.__all__, "ConstraintPruner", "PruningObjective", "SyntheticObjective", "result"]
