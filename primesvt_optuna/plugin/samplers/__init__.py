"""PrimeSVT's samplers, one class per module; the claim/wait/stale machinery lives in ``_claims.py``, the layer walk in ``_walk.py``."""

from ._aq4svit import AQ4SViTSampler
from ._budget_aware import BudgetAwareSampler
from ._joint import JointSampler
from ._precision_walk import PrecisionWalkSampler
from ._prioritized import PrioritizedSampler
from ._random_order import RandomOrderSampler
from ._smallest_first import SmallestFirstSampler
from ._uniform import UniformSampler
from ._claims import ClaimSampler, rates_key
from ._walk import WalkSampler

__all__ = [
    "AQ4SViTSampler",
    "BudgetAwareSampler",
    "ClaimSampler",
    "JointSampler",
    "PrecisionWalkSampler",
    "PrioritizedSampler",
    "RandomOrderSampler",
    "SmallestFirstSampler",
    "UniformSampler",
    "WalkSampler",
    "from_settings",
    "rates_key",
]

_POLICIES = {
    cls.policy: cls
    for cls in (PrioritizedSampler, SmallestFirstSampler, RandomOrderSampler, UniformSampler, BudgetAwareSampler,
                AQ4SViTSampler, PrecisionWalkSampler, JointSampler)
}


def from_settings(settings: dict) -> ClaimSampler | None:
    """The PrimeSVT sampler a study was run with, rebuilt from its ``primesvt:sampler`` attribute
    (so a report or ``primesvt export`` can replay the walk from storage alone); None for other
    samplers (TPE, NSGA-II)."""
    cls = _POLICIES.get(settings.get("policy"))
    if cls is None:
        return None
    kwargs = {"grid": settings["grid"], "layer_sizes": settings.get("layer_sizes"), "seed": settings.get("seed"),
              "budget_images": settings.get("budget_images"), "budget_trials": settings.get("budget_trials")}
    if "precisions" in settings:  # recorded only by a search over precisions
        kwargs["precisions"] = settings["precisions"]
    if issubclass(cls, WalkSampler):
        # studies from before the lazy sweep ran the full one
        kwargs.update(robustness_rule=settings["robustness_rule"], walk_all=settings["walk_all"],
                      sweep=settings.get("sweep", "full"))
    return cls(**kwargs)
