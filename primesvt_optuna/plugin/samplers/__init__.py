"""PrimeSVT's samplers, one class per module; shared claim/walk logic lives in ``_walk.py``."""

from ._prioritized import PrioritizedSampler
from ._random_order import RandomOrderSampler
from ._smallest_first import SmallestFirstSampler
from ._uniform import UniformSampler
from ._walk import ClaimSampler, WalkSampler, fail_stale_trials, rates_key

__all__ = [
    "ClaimSampler",
    "PrioritizedSampler",
    "RandomOrderSampler",
    "SmallestFirstSampler",
    "UniformSampler",
    "WalkSampler",
    "fail_stale_trials",
    "rates_key",
]
