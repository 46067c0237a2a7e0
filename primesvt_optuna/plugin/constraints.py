"""The names and the arithmetic every part of the plugin shares: the rate-parameter prefix, the
default rate grid, the user's accuracy/memory constraints and the attribute keys kept in storage.

Constraint values follow Optuna's convention (feasible when <= 0) and are fractions, so that
Optuna's samplers, which sum violations across keys, weigh accuracy and memory alike.

Three acceptance rules decide the accuracy constraint (``Constraints.accept``):

* ``"confirmed"`` (the objectives' and the command line's default): the search steps by the point
  rule on the search part of the evaluation images, and what the study delivers is confirmed on a
  held-back part with a paired bound on the drop (``primesvt_optuna.acceptance``);
* ``"point"`` (the paper's; a record without ``accept`` means it): ``accuracy = floor - measured
  accuracy``;
* ``"confident"``: ``accuracy = floor - L``, where ``L`` is a one-sided lower confidence bound, at
  level ``confidence`` (0.95 by default), of the accuracy measured on ``n`` evaluation images
  (``k = round(accuracy * n)`` of them right): the exact binomial (Clopper-Pearson) bound, the
  ``p`` with ``P(X >= k | n, p) = 1 - confidence`` (0 when ``k = 0``), or the Wilson score bound.
  It is still a fraction on the accuracy scale, <= 0 exactly when ``L`` meets the floor, so every
  sampler reading the ``accuracy`` constraint applies the stricter rule unchanged.

The floor itself (``base - max_accuracy_drop``, or ``min_accuracy``) is the same under both rules:
the unpruned model's accuracy is taken as measured.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from ..errors import PrimeSVTError

RATE_PREFIX = "rate:"
"""Every rate parameter is named ``rate:<layer>``, so samplers recognise it before anything else
is known about the study."""

DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
STUDY_PREFIX = "primesvt:"

# Storage keys: trial system attrs written by the samplers.
CLAIM = "primesvt:claim"
WORKER = "primesvt:worker"
OUTCOME = "primesvt:outcome"


def rate_param(layer: str) -> str:
    """The Optuna parameter name for a layer's pruning rate."""
    return f"{RATE_PREFIX}{layer}"


def layer_of(param: str) -> str:
    """The layer name behind a parameter name (the prefix stripped when present)."""
    return param[len(RATE_PREFIX):] if param.startswith(RATE_PREFIX) else param


def normalize_grid(grid: Iterable[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated rates rounded to 6 digits, without 0 (unpruned, always implied);
    each must lie in [0, 1)."""
    if isinstance(grid, (str, bytes)):
        raise PrimeSVTError(f"rate grid must be a list of numbers, got {grid!r}")
    try:
        values = sorted({round(float(r), 6) for r in grid})
    except (TypeError, ValueError):
        raise PrimeSVTError(f"rate grid must be a list of numbers, got {grid!r}") from None
    bad = [r for r in values if not 0.0 <= r < 1.0 or math.isnan(r)]
    if bad:
        raise PrimeSVTError(f"rate grid values must lie in [0, 1) (a fraction of each layer's filters); got {bad}")
    values = [r for r in values if r > 0.0]
    if not values:
        raise PrimeSVTError("rate grid is empty: give at least one rate in (0, 1), e.g. [0.1, 0.2, 0.3]")
    return tuple(values)


_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]i?)?[bB]?\s*$")
_UNITS = {None: 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_bytes(value: int | float | str) -> int:
    """``2MB`` = 2,000,000 bytes, ``2MiB`` = 2,097,152, a plain number is bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = _BYTES.match(str(value))
    if not match:
        raise PrimeSVTError(f"cannot read {value!r} as a size: use e.g. 2500000, '2.5MB', '512KiB'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower() if unit else None])


ACCEPT_RULES = ("point", "confident", "confirmed")
INTERVALS = ("clopper-pearson", "wilson")
DEFAULT_ACCEPT_CONFIDENCE = 0.95


def wilson_lower(correct: int, n: int, confidence: float) -> float:
    """One-sided Wilson score lower bound of a binomial proportion (0 for ``n = 0``)."""
    if n <= 0:
        return 0.0
    z = NormalDist().inv_cdf(confidence)
    p = correct / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n)))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def _upper_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, summed in log space (no SciPy needed)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def clopper_pearson_lower_bisect(correct: int, n: int, confidence: float) -> float:
    """The exact (Clopper-Pearson) one-sided lower bound by bisection on the binomial tail: the
    ``p`` with ``P(X >= correct | n, p) = 1 - confidence`` (the tail grows with ``p``)."""
    if correct <= 0:
        return 0.0
    alpha = 1.0 - confidence
    lo, hi = 0.0, correct / n
    for _ in range(200):
        mid = (lo + hi) / 2
        if _upper_tail(correct, n, mid) < alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return lo


@functools.lru_cache(maxsize=65536)
def clopper_pearson_lower(correct: int, n: int, confidence: float) -> float:
    """Exact binomial (Clopper-Pearson) one-sided lower confidence bound of ``correct / n``:
    ``Beta(1 - confidence; correct, n - correct + 1)`` quantile (SciPy when installed, else the
    bisection above); 0 when nothing is right."""
    if n <= 0 or correct <= 0:
        return 0.0
    try:
        from scipy.stats import beta
    except ImportError:  # pragma: no cover - scikit-learn brings SciPy
        return clopper_pearson_lower_bisect(correct, n, confidence)
    return float(beta.ppf(1.0 - confidence, correct, n - correct + 1))


def lower_confidence_bound(correct: int, n: int, confidence: float, interval: str = "clopper-pearson") -> float:
    """One-sided lower confidence bound of a binomial proportion (``interval``: see ``INTERVALS``)."""
    if interval == "wilson":
        return wilson_lower(correct, n, confidence)
    if interval == "clopper-pearson":
        return clopper_pearson_lower(int(correct), int(n), float(confidence))
    raise PrimeSVTError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")


@dataclass(frozen=True)
class Constraints:
    """The user's two constraints.

    ``search_allowance`` (confirmed acceptance only): the drop the search steps by on the search
    images, when smaller than the user's budget (None: the budget itself); the delivery is still
    confirmed against ``max_accuracy_drop`` (see :func:`~primesvt_optuna.acceptance.confirm.anticipated_drop`).

    Accuracy: ``max_accuracy_drop`` (fraction below the unpruned model's accuracy, 0.03 = 3 points)
    or ``min_accuracy`` (absolute floor). Memory: ``memory_target`` (fraction of the model's bytes
    to save) or ``memory_budget`` (bytes the pruned model may take); neither means "no memory
    constraint", and a walk then prunes every target layer.

    Acceptance (see module docs): ``accept="point"`` compares the measured accuracy with the
    floor; ``accept="confident"`` its one-sided lower confidence bound at ``confidence``
    (``interval``: ``"clopper-pearson"``, exact, or ``"wilson"``).
    """

    max_accuracy_drop: float | None = 0.03
    min_accuracy: float | None = None
    memory_target: float | None = None
    memory_budget: int | None = None
    accept: str = "point"
    confidence: float = DEFAULT_ACCEPT_CONFIDENCE
    interval: str = "clopper-pearson"
    search_allowance: float | None = None

    def __post_init__(self) -> None:
        if (self.max_accuracy_drop is None) == (self.min_accuracy is None):
            raise PrimeSVTError("give exactly one accuracy constraint: max_accuracy_drop or min_accuracy")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop < 1.0:
            raise PrimeSVTError(
                f"max_accuracy_drop must be a fraction in [0, 1) (0.03 = 3 points), got {self.max_accuracy_drop}"
            )
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise PrimeSVTError(f"min_accuracy must be a fraction in [0, 1], got {self.min_accuracy}")
        if self.memory_target is not None and self.memory_budget is not None:
            raise PrimeSVTError("give at most one memory constraint: memory_target or memory_budget")
        if self.memory_target is not None and not 0.0 <= self.memory_target < 1.0:
            raise PrimeSVTError(
                f"memory_target is the fraction of model bytes to save and must lie in [0, 1), got {self.memory_target}"
            )
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise PrimeSVTError(f"memory_budget must be a positive number of bytes, got {self.memory_budget}")
        if self.accept not in ACCEPT_RULES:
            raise PrimeSVTError(f"accept must be one of {', '.join(ACCEPT_RULES)}, got {self.accept!r}")
        if not (isinstance(self.confidence, (int, float)) and 0.5 < self.confidence < 1.0):
            raise PrimeSVTError(f"confidence (of the accuracy's lower bound) must lie in (0.5, 1), got {self.confidence}")
        if self.interval not in INTERVALS:
            raise PrimeSVTError(f"interval must be one of {', '.join(INTERVALS)}, got {self.interval!r}")
        if self.search_allowance is not None and not (
                self.confirmed and self.max_accuracy_drop is not None
                and 0.0 <= self.search_allowance <= self.max_accuracy_drop + 1e-12):
            raise PrimeSVTError("search_allowance (the drop the search steps by) applies to accept = 'confirmed' "
                                "with a max_accuracy_drop, and lies in [0, max_accuracy_drop]")

    @property
    def confident(self) -> bool:
        return self.accept == "confident"

    @property
    def confirmed(self) -> bool:
        return self.accept == "confirmed"

    @property
    def allowed_drop(self) -> float | None:
        """The drop the accuracy constraint allows below the unpruned model (None for a
        ``min_accuracy`` floor, whose allowance depends on the measured base)."""
        return self.max_accuracy_drop

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraints:
        known = {"max_accuracy_drop", "min_accuracy", "memory_target", "memory_budget", "accept", "confidence",
                 "interval", "search_allowance"}
        unknown = set(data) - known
        if unknown:
            raise PrimeSVTError(f"unknown constraint keys {sorted(unknown)}")
        data = dict(data)
        if data.get("memory_budget") is not None:
            data["memory_budget"] = parse_bytes(data["memory_budget"])
        if "max_accuracy_drop" not in data and data.get("min_accuracy") is not None:
            data["max_accuracy_drop"] = None
        for key in ("accept", "confidence", "interval", "search_allowance"):  # None: the default
            if key in data and data[key] is None:
                del data[key]
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The four constraint values, and the acceptance settings only when they are not the
        point rule (so studies recorded before the other rules existed still resume)."""
        data = asdict(self)
        if self.search_allowance is None:  # likewise: studies recorded before it resume
            del data["search_allowance"]
        if self.accept == "point":
            for key in ("accept", "confidence", "interval"):
                del data[key]
        elif self.confirmed:
            del data["interval"]
        return data

    def check_model(self, base_bytes: int) -> None:
        """A memory budget larger than the model is a mistake, not a trivially met constraint."""
        if self.memory_budget is not None and self.memory_budget > base_bytes:
            raise PrimeSVTError(
                f"memory_budget {self.memory_budget:,} bytes is larger than the unpruned model "
                f"({base_bytes:,} bytes): give a smaller budget or a memory_target fraction"
            )

    def accuracy_floor(self, base_accuracy: float | None) -> float | None:
        """The lowest acceptable accuracy (None while the base accuracy is not known yet)."""
        if self.min_accuracy is not None:
            return self.min_accuracy
        if base_accuracy is None:
            return None
        assert self.max_accuracy_drop is not None
        return base_accuracy - (self.max_accuracy_drop if self.search_allowance is None else self.search_allowance)

    def target_saving(self, base_bytes: int) -> float | None:
        """The memory saving asked for, as a fraction of the unpruned model's bytes."""
        if self.memory_budget is not None:
            return 1.0 - self.memory_budget / base_bytes
        return self.memory_target

    def accuracy_lower_bound(self, accuracy: float, images: int | None = None) -> float:
        """What the acceptance rule compares with the floor: the accuracy itself (point), or its
        one-sided lower confidence bound over ``images`` evaluation images (confident)."""
        if not self.confident:
            return accuracy
        if not images:
            raise ValueError("confident acceptance needs the number of evaluation images")
        n = int(images)
        return lower_confidence_bound(round(accuracy * n), n, self.confidence, self.interval)

    def floor_violation(self, floor: float, accuracy: float, images: int | None = None) -> float:
        """``floor - accuracy`` (point) or ``floor - lower bound`` (confident), rounded to 12 digits."""
        return round(floor - self.accuracy_lower_bound(accuracy, images), 12)

    def accuracy_violation(self, accuracy: float, base_accuracy: float | None, images: int | None = None) -> float:
        """``drop - budget`` (= floor - accuracy) under the point rule, ``floor - lower confidence
        bound`` under the confident one (``images``: how many the accuracy was measured on);
        <= 0 when the accuracy constraint holds."""
        floor = self.accuracy_floor(base_accuracy)
        if floor is None:
            raise ValueError("the base accuracy is needed for a max_accuracy_drop constraint")
        return self.floor_violation(floor, accuracy, images)

    def required_accuracy(self, floor: float | None, images: int) -> float | None:
        """The lowest measured accuracy over ``images`` images that the rule accepts: the floor
        (point), else ``k_min / images`` with ``k_min`` the fewest right images whose lower bound
        meets the floor (above 1 when none does). An early cut against it keeps its verdict exact."""
        if floor is None or not self.confident:
            return floor
        n = int(images)
        if n <= 0:
            return floor
        return _required_correct(self, float(floor), n) / n

    def memory_violation(self, saving: float, base_bytes: int) -> float | None:
        """``target - saving``; <= 0 when the memory constraint holds, None without a target."""
        target = self.target_saving(base_bytes)
        return None if target is None else round(target - saving, 12)

    def describe(self) -> str:
        acc = (
            f"accuracy drop <= {100 * self.max_accuracy_drop:.2f} points"
            if self.max_accuracy_drop is not None
            else f"accuracy >= {100 * self.min_accuracy:.2f}%"  # type: ignore[operator]
        )
        if self.memory_budget is not None:
            mem = f"model <= {self.memory_budget:,} bytes"
        elif self.memory_target is not None:
            mem = f"memory saving >= {100 * self.memory_target:.1f}%"
        else:
            mem = "no memory target (maximise the saving)"
        if self.confident:
            acc += (f" (accepted when the one-sided {100 * self.confidence:g}% "
                    f"{'Clopper-Pearson' if self.interval == 'clopper-pearson' else 'Wilson'} lower bound meets it)")
        elif self.confirmed:
            acc += f" (confirmed at {100 * self.confidence:g}% on held-back images"
            if self.search_allowance is not None:
                acc += f"; the search steps by {100 * self.search_allowance:.2f} points"
            acc += ")"
        return f"{acc}; {mem}"


@functools.lru_cache(maxsize=4096)
def _required_correct(constraints: Constraints, floor: float, n: int) -> int:
    """Fewest right images out of ``n`` that ``constraints`` accepts (``n + 1``: none)."""
    lo, hi = 0, n + 1  # the answer lies in [lo, hi]; the bound grows with the count right
    while lo < hi:
        mid = (lo + hi) // 2
        if constraints.floor_violation(floor, mid / n, n) <= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo
