"""ConstraintPruner: end a trial as soon as its constraints say it cannot be feasible.

Two cuts, both recorded on the trial (constraint values, ``cut_reason``, images evaluated):

* **memory**, before any evaluation: a complete configuration (TPE, NSGA-II, uniform, a
  hand-enqueued trial) whose exactly predicted bytes miss the memory target. The walk's
  intermediate steps are not complete configurations and are never cut for memory.
* **accuracy**, at each *look* (the end of an evaluation batch): the *exact* cut fires once the
  floor is out of reach even if every remaining image were right, so the trial's verdict
  (infeasible) is the one a full evaluation would give and the walk's selection never changes.
  The optional *statistical* cut (``confidence=0.99``) fires once a one-sided Wilson upper bound
  on the accuracy of the remaining images cannot lift the final accuracy to the floor; its level
  is Bonferroni-split over the looks at which it may fire (``statistical_looks``: the scheduled
  looks with ``min_images <= seen < total``), so with probability at least ``confidence`` per
  trial (images in a seeded random order, a random sample of the evaluation subset) it only cuts
  trials a full evaluation would reject; it may change the selection.

The looks come from the objective's batch schedule (``batch_schedule``): by default a first small
batch of 32 images, then batches that double the images seen (32, 64, 128, ...) up to
``batch_size``, so a hopeless trial is cut after a few tens of images while a trial that survives
is still evaluated mostly in large batches. When ``batch_size`` is ``first_batch`` times a power
of two, the looks include every look plain ``batch_size`` batches would have (256, 512, ...), so
in the same image order the exact cut never needs more images than it did with plain batches.

``trial.report``/``trial.should_prune`` raise NotImplementedError in multi-objective studies, so
the objectives consult the pruner directly (``accuracy_cut``) and raise ``optuna.TrialPruned``.
In single-objective studies it is also a normal pruner for ``create_study(pruner=...)``: the
objective reports the running accuracy at step = images seen, and records ``eval_images``,
``eval_batches``, ``eval_looks`` and ``accuracy_floor`` as user attributes for ``prune`` to read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from optuna.pruners import BasePruner
from optuna.study import Study
from optuna.trial import FrozenTrial

from ..errors import PrimeSVTError


@dataclass(frozen=True)
class Cut:
    """Why a trial was cut, and the best accuracy it could still have reached."""

    kind: str  # "memory" | "accuracy" | "statistical"
    reason: str
    accuracy_bound: float | None = None


DEFAULT_FIRST_BATCH = 32


def batch_schedule(total: int, batch_size: int, first_batch: int | None = DEFAULT_FIRST_BATCH) -> list[int]:
    """Sizes of the evaluation batches over ``total`` images: ``first_batch``, then each batch as
    large as all the batches before it (the images seen double at every look), capped at
    ``batch_size``; the last batch takes what is left. ``first_batch`` None (or >= ``batch_size``):
    plain batches of ``batch_size`` (the evaluation before the schedule).

    >>> batch_schedule(359, 256, 32)  # looks after 32, 64, 128, 256 and 359 images
    [32, 32, 64, 128, 103]
    >>> batch_schedule(359, 256, None)
    [256, 103]
    """
    if batch_size < 1:
        raise PrimeSVTError(f"batch_size must be >= 1, got {batch_size}")
    if first_batch is not None and first_batch < 1:
        raise PrimeSVTError(f"first_batch must be >= 1 (or None: plain batches), got {first_batch}")
    size = batch_size if first_batch is None else min(first_batch, batch_size)
    sizes, seen, left = [], 0, int(total)
    while left > 0:
        sizes.append(min(size, left))
        seen += sizes[-1]
        left -= sizes[-1]
        size = min(seen, batch_size)
    return sizes


def looks_of(schedule: Sequence[int]) -> list[int]:
    """Images seen at each look (cumulative batch sizes)."""
    out, seen = [], 0
    for n in schedule:
        seen += int(n)
        out.append(seen)
    return out


def wilson_upper(correct: int, n: int, confidence: float) -> float:
    """One-sided Wilson score upper bound for a binomial proportion."""
    if n == 0:
        return 1.0
    z = NormalDist().inv_cdf(confidence)
    p = correct / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


class ConstraintPruner(BasePruner):
    """Cut trials that cannot meet the memory target or the accuracy floor (see module docs).

    Args:
        memory: reject complete configurations whose predicted bytes miss the memory target.
        accuracy: cut evaluations once the floor is out of reach (exact: never changes results).
        confidence: also cut when the floor is out of reach with this probability (e.g. 0.99);
            ``None`` (default) keeps only the exact cut.
        min_images: images to see before the statistical cut may fire.
    """

    def __init__(
        self, *, memory: bool = True, accuracy: bool = True, confidence: float | None = None, min_images: int = 64
    ) -> None:
        if confidence is not None and not 0.5 < confidence < 1.0:
            raise PrimeSVTError(f"confidence must lie in (0.5, 1), got {confidence}")
        self.memory = memory
        self.accuracy = accuracy
        self.confidence = confidence
        self.min_images = min_images

    @property
    def statistical(self) -> bool:
        return self.accuracy and self.confidence is not None

    def describe(self) -> str:
        parts = ["memory pre-check" if self.memory else "no memory pre-check"]
        if self.statistical:
            parts.append(f"statistical accuracy cut at {self.confidence:.1%} confidence (may change the selection)")
        elif self.accuracy:
            parts.append("exact accuracy cut (never changes the selection)")
        return ", ".join(parts)

    def memory_cut(self, saving: float, target: float | None) -> Cut | None:
        if not self.memory or target is None or saving >= target:
            return None
        return Cut("memory", f"memory: predicted saving {saving:.2%} < target {target:.2%} (not evaluated)")

    def statistical_looks(self, schedule: Sequence[int]) -> int:
        """How many looks of ``schedule`` (batch sizes) the statistical cut may fire at: those with
        ``min_images <= seen < total``; its Bonferroni split divides ``1 - confidence`` by this."""
        seen = looks_of(schedule)
        total = seen[-1] if seen else 0
        return max(1, sum(1 for s in seen if self.min_images <= s < total))

    def accuracy_cut(self, correct: int, seen: int, total: int, floor: float | None, looks: int = 1) -> Cut | None:
        """A cut when ``correct`` of ``seen`` (of ``total``) images rule the accuracy floor out;
        ``looks``: the number of looks the statistical cut's confidence is split over."""
        if not self.accuracy or floor is None or seen >= total:
            return None
        best = (correct + total - seen) / total
        if best < floor - 1e-12:
            return Cut(
                "accuracy",
                f"accuracy: at most {best:.4f} reachable after {seen}/{total} images, floor {floor:.4f}",
                best,
            )
        if self.confidence is not None and seen >= self.min_images:
            per_look = 1.0 - (1.0 - self.confidence) / max(1, looks)
            upper = wilson_upper(correct, seen, per_look)
            bound = (correct + upper * (total - seen)) / total
            if bound < floor:
                return Cut(
                    "statistical",
                    f"accuracy: {self.confidence:.1%}-confidence bound {bound:.4f} < floor {floor:.4f} "
                    f"after {seen}/{total} images",
                    bound,
                )
        return None

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Single-objective use: read the running accuracy reported at step = images seen."""
        step = trial.last_step
        attrs = trial.user_attrs
        if step is None or "eval_images" not in attrs:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return False
        correct = round(value * step)
        looks = attrs.get("eval_looks", attrs.get("eval_batches", 1))
        cut = self.accuracy_cut(correct, step, int(attrs["eval_images"]), attrs.get("accuracy_floor"), int(looks))
        return cut is not None
