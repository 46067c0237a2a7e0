"""The paired bound on an accuracy drop: how much worse than the unpruned model a pruned model can
be, at a stated confidence, from their predictions on the same images.

Both models see the same ``n`` images. Only the images on which they disagree carry information
about the drop: ``b`` where the unpruned model is right and the pruned one wrong, ``c`` the other
way round. The drop is ``delta = p_b - p_c`` (the two discordance rates), estimated by
``(b - c) / n``. The one-sided upper bound is the score bound of Tango (1998) for a paired
difference of proportions: the largest ``delta`` that a one-sided score test at level
``1 - confidence`` does not reject, with the nuisance rate ``p_c`` at its maximum-likelihood value
under that ``delta``. Its variance comes from the discordant images alone, so it is much tighter
than a bound on the pruned accuracy alone (McNemar's insight), and unlike the Wald bound it stays
sensible with few or no discordant images (b = c = 0 gives ``z^2 / (n + z^2)``).
"""

from __future__ import annotations

import math
from statistics import NormalDist

from ..errors import PrimeSVTError


def _nuisance(b: int, c: int, n: int, delta: float) -> float:
    """The maximum-likelihood ``p_c`` given ``p_b = p_c + delta``: the positive root of
    ``2n p^2 - B p - C = 0`` (Tango's closed form, from setting the log-likelihood's derivative
    to zero), kept inside the range where all three cell probabilities are valid."""
    rest = n - b - c
    big_b = b * (1.0 - delta) + c * (1.0 - 3.0 * delta) - 2.0 * rest * delta
    big_c = c * delta * (1.0 - delta)
    p = (big_b + math.sqrt(max(0.0, big_b * big_b + 8.0 * n * big_c))) / (4.0 * n)
    return min(max(p, max(0.0, -delta)), (1.0 - delta) / 2.0)


def _score(b: int, c: int, n: int, delta: float) -> float:
    p_c = _nuisance(b, c, n, delta)
    variance = n * (2.0 * p_c + delta - delta * delta)
    if variance <= 0.0:
        return -math.inf if b - c - n * delta < 0 else math.inf
    return (b - c - n * delta) / math.sqrt(variance)


def drop_upper_bound(b: int, c: int, n: int, confidence: float) -> float:
    """One-sided upper confidence bound of the true accuracy drop (see module docs): ``b`` images
    only the unpruned model gets right, ``c`` only the pruned one, ``n`` images in all."""
    if not 0.5 < confidence < 1.0:
        raise PrimeSVTError(f"confidence must lie in (0.5, 1), got {confidence}")
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise PrimeSVTError(f"need 0 <= b + c <= n images for the paired bound, got b={b}, c={c}, n={n}")
    z = NormalDist().inv_cdf(confidence)
    lo, hi = (b - c) / n, 1.0
    if b == n:
        return 1.0
    for _ in range(200):  # the score falls as delta grows: find where it crosses -z
        mid = (lo + hi) / 2.0
        if _score(b, c, n, mid) >= -z:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return hi


def min_images(max_drop: float, confidence: float) -> int:
    """The fewest images on which a model that disagrees with the unpruned one on no image at all
    can be confirmed within ``max_drop`` (``z^2 / (n + z^2) <= max_drop``): fewer images can
    confirm nothing."""
    z = NormalDist().inv_cdf(confidence)
    if max_drop <= 0.0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(z * z * (1.0 - max_drop) / max_drop)
