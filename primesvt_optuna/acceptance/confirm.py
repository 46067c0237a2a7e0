"""Confirmation: what a study delivers must meet the accuracy constraint on images that played no
part in choosing it, at a stated confidence.

The search (any policy) steps on the *search* part of the evaluation images under the point rule.
Its candidates are then confirmed on the held-back *confirmation* part, in a ladder fixed by the
search data alone, before any confirmation image is seen:

* the candidates are the search trials that meet the accuracy constraint by the point rule, of a
  layer alone (robustness trials) only its highest passing rate: idle workers evaluate lower rates
  of a layer speculatively, and the ladder must not depend on how many workers ran; their savings
  span from the memory target (0 without one) to the largest, ``s_max``;
* the savings ``s_j = s_min + (s_max - s_min) (j - 1) / (RUNGS - 1)`` (``j = 1 .. RUNGS``, from the
  smallest candidate saving to the largest) cut the candidates into bands; rung ``j`` is the
  candidate with the smallest search drop in band ``[s_j, s_{j+1})`` (the last band: ``s_max``
  itself; ties: fewer bytes, then lower trial number), and an empty band gives no rung, so the
  rungs keep the order of their savings. Rung 1 is the safest configuration near the memory
  target, the last the point rule's own selection (when no candidate meets the target, the ladder
  spans all of them). Bands, not "at least ``s_j``": the smallest search drop over every saving
  above the target is, among a hundred candidates, mostly the luckiest one, often far above the
  target, and the fixed sequence stops at its failure; the least pruned candidates are the ones
  most likely to pass, so they go first (measured in docs/results.md, "What can be confirmed");
* the unpruned model is evaluated on the confirmation part first, then the rungs from the first
  (the safest) upwards, each with the paired bound of :mod:`.bounds` at ``confidence``; the
  ladder stops at the first rung that fails and delivers the last one that passed.

Testing a fixed sequence and stopping at the first failure is the fixed-sequence procedure: the
chance that any rung whose true drop exceeds the budget passes is at most ``1 - confidence``
overall, with no correction for the number of rungs. More rungs cost confirmation images but no
confidence, and they step closer to what can be confirmed: with 4, a band that reaches from 68% to
90% saving offers only its safest candidate (72.8% on a digits-hard precision search) before the
search's own selection, which fails; 8 rungs offer 85.4% in between (docs/acceptance.md). A study
records its count (``primesvt:rungs``); one recorded without it keeps ``LEGACY_RUNGS``. Under a
``min_accuracy`` constraint a rung passes when the exact (Clopper-Pearson) lower bound of its
confirmation accuracy meets the floor.

Everything here is derived from trials in storage: a confirmation is a trial with phase
``confirm`` and a claim key ``confirm:<configuration>``, so K workers, a resume, reports and the
dashboard all see the same ladder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ..errors import PrimeSVTError
from .bounds import drop_upper_bound, min_images

CONFIRM = "confirm"
KEY_PREFIX = "confirm:"
RUNGS = 8
LEGACY_RUNGS = 4
"""The rungs of a study recorded before the count was a study setting (``primesvt:rungs``): its
ladder stays the one it was confirmed with."""
RUNGS_ATTR = "primesvt:rungs"
AUTO_HOLDOUT = "auto"
DEFAULT_HOLDOUT = AUTO_HOLDOUT
SEARCH_IMAGES = 200
"""``holdout="auto"``, pruning alone: the search keeps this many of the evaluation images, and at
least a fifth and at most half of them (:func:`auto_holdout`)."""
HOLDOUT_RANGE = (0.5, 0.8)
MIN_RUNG_IMAGES = 30  # below this the paired bound's normal approximation is not to be trusted


def study_rungs(attrs: Mapping[str, Any]) -> int:
    """The rung count a study's ladder uses, from its user attributes."""
    return int(attrs.get(RUNGS_ATTR) or LEGACY_RUNGS)


def safe_steps(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The configuration keys a study's ladder keeps whatever evaluated them (:data:`SAFE_STEP_ATTR`)."""
    step = attrs.get(SAFE_STEP_ATTR)
    return (step,) if step else ()


def confirm_key(search_key: str) -> str:
    """The claim key of the confirmation of a configuration (its search key, prefixed)."""
    return KEY_PREFIX + search_key


def is_confirmation(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get("phase") == CONFIRM


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: a search trial to confirm."""

    number: int  # 1 .. RUNGS
    trial: FrozenTrial
    rates: dict[str, float]

    @property
    def saving(self) -> float:
        return float(self.trial.user_attrs["memory_saving"])


def _search_ok(trial: FrozenTrial) -> bool:
    a = trial.user_attrs
    return (trial.state == TrialState.COMPLETE and not is_confirmation(trial) and a.get("accuracy_drop") is not None
            and a.get("model_bytes") is not None and trial.constraints.get("accuracy", math.inf) <= 0)


def _memory_met(trial: FrozenTrial) -> bool:
    violation = trial.constraints.get("memory")
    return violation is None or violation <= 0


SAFE_STEP_ATTR = "primesvt:safe_step"
"""The study attribute naming the walk's safe step (its configuration key): a candidate whatever
phase evaluated it (see :func:`ladder`)."""


def ladder(search_trials: Iterable[FrozenTrial], rates_of: Callable[[FrozenTrial], dict[str, float]],
           rungs: int = RUNGS, keep: Collection[str] = ()) -> list[Rung]:
    """The rungs to confirm, safest first (see module docs). ``keep``: configuration keys that are
    candidates even as a lower rate of a layer alone (the walk's safe step, which speculating
    workers or a full sweep may have evaluated first as a robustness trial)."""
    pool = [t for t in search_trials if _search_ok(t) and rates_of(t)]
    bounds: dict[str, FrozenTrial] = {}
    for t in pool:
        rates = rates_of(t)
        if t.user_attrs.get("phase") == "robustness" and len(rates) == 1:
            ((layer, rate),) = rates.items()
            if layer not in bounds or rate > rates_of(bounds[layer])[layer]:
                bounds[layer] = t
    pool = [t for t in pool if not (t.user_attrs.get("phase") == "robustness" and len(rates_of(t)) == 1)
            or t is bounds.get(next(iter(rates_of(t)))) or key_of_rates(rates_of(t)) in keep]
    if any(_memory_met(t) for t in pool):
        pool = [t for t in pool if _memory_met(t)]
    if not pool:
        return []
    savings = [float(t.user_attrs["memory_saving"]) for t in pool]
    low, high = min(savings), max(savings)
    chosen: list[Rung] = []
    steps = [low + (high - low) * (j - 1) / max(1, rungs - 1) - 1e-12 for j in range(1, rungs + 1)]
    for j, least in enumerate(steps, start=1):
        below = steps[j] if j < rungs else math.inf
        band = [t for t in pool if least <= float(t.user_attrs["memory_saving"]) < below]
        if not band:  # no candidate saves this much but less than the next step: no rung
            continue
        best = min(band, key=lambda t: (float(t.user_attrs["accuracy_drop"]), t.user_attrs["model_bytes"], t.number))
        if chosen and rates_of(chosen[-1].trial) == rates_of(best):
            chosen[-1] = Rung(j, chosen[-1].trial, chosen[-1].rates)
            continue
        chosen.append(Rung(j, best, rates_of(best)))
    return chosen


@dataclass(frozen=True)
class Verdict:
    """What the confirmation of one configuration found."""

    passed: bool
    bound: float  # upper bound of the drop (points as a fraction), or lower bound of the accuracy
    accuracy: float
    base_accuracy: float
    discordant: tuple[int, int]  # (b, c): right only unpruned, right only pruned
    images: int

    def attrs(self) -> dict[str, Any]:
        return {"confirmed": self.passed, "confirm_bound": self.bound, "confirm_accuracy": self.accuracy,
                "confirm_base_accuracy": self.base_accuracy, "confirm_discordant": list(self.discordant),
                "confirm_images": self.images}


def judge(reference: Sequence[bool], pruned: Sequence[bool], constraints: Any, confidence: float) -> Verdict:
    """The paired verdict of ``pruned`` against ``reference`` (per-image correctness on the same
    confirmation images) under the accuracy constraint."""
    n = len(reference)
    if n != len(pruned) or n == 0:
        raise PrimeSVTError(f"confirmation needs the same images for both models, got {n} and {len(pruned)}")
    b = sum(1 for r, p in zip(reference, pruned) if r and not p)
    c = sum(1 for r, p in zip(reference, pruned) if p and not r)
    accuracy, base = sum(map(bool, pruned)) / n, sum(map(bool, reference)) / n
    if constraints.min_accuracy is not None:
        from ..plugin.constraints import clopper_pearson_lower

        bound = clopper_pearson_lower(int(sum(map(bool, pruned))), n, confidence)
        return Verdict(bound >= constraints.min_accuracy - 1e-12, bound, accuracy, base, (b, c), n)
    bound = drop_upper_bound(b, c, n, confidence)
    return Verdict(bound <= constraints.max_accuracy_drop + 1e-12, bound, accuracy, base, (b, c), n)


@dataclass
class Ladder:
    """The ladder of a study as storage holds it: every rung with its confirmation trial (None
    while not evaluated), and what it delivers."""

    rungs: list[Rung]
    reference: FrozenTrial | None
    confirmations: dict[int, FrozenTrial] = field(default_factory=dict)  # rung number -> trial

    def verdict(self, rung: Rung) -> bool | None:
        trial = self.confirmations.get(rung.number)
        if trial is None:
            return None
        return bool(trial.user_attrs.get("confirmed")) if trial.state == TrialState.COMPLETE else False

    @property
    def delivered(self) -> Rung | None:
        """The last rung that passed before the first that failed."""
        last = None
        for rung in self.rungs:
            verdict = self.verdict(rung)
            if verdict is not True:
                break
            last = rung
        return last

    @property
    def done(self) -> bool:
        """Every rung that can still change the delivery has its verdict."""
        return not self.rungs or (self.reference is not None and self.next_rung() is None)

    def next_rung(self) -> Rung | None:
        """The first rung without a verdict, when every rung before it passed."""
        for rung in self.rungs:
            verdict = self.verdict(rung)
            if verdict is None:
                return rung
            if verdict is False:
                return None
        return None


def study_ladder(trials: Iterable[FrozenTrial], rates_of: Callable[[FrozenTrial], dict[str, float]], rungs: int = RUNGS,
                 keep: Collection[str] = ()) -> Ladder:
    """The ladder replayed from a study's trials: the rungs from the search trials (one per
    configuration, its lowest-numbered finished trial) and each rung's confirmation; a
    confirmation that died without an outcome (killed, interrupted) is none."""
    from ..plugin.samplers._claims import accuracy_outcome

    trials = sorted(trials, key=lambda t: t.number)
    search: dict[str, FrozenTrial] = {}
    for t in trials:  # as the samplers index them: a trial killed before its outcome is no evaluation
        if not is_confirmation(t) and accuracy_outcome(t) is not None:
            search.setdefault(key_of_rates(rates_of(t)), t)
    steps = ladder(search.values(), rates_of, rungs, keep)
    finished: dict[str, FrozenTrial] = {}
    for t in trials:
        if is_confirmation(t) and t.state.is_finished() and not t.user_attrs.get("interrupted") and (
                t.state != TrialState.FAIL or "fail_reason" in t.user_attrs):
            finished.setdefault(t.user_attrs.get("confirm_key") or "", t)
    reference = finished.get(confirm_key(key_of_rates({})))
    found = {r.number: finished[k] for r in steps if (k := confirm_key(key_of_rates(r.rates))) in finished}
    return Ladder(steps, reference, found)


def key_of_rates(rates: Mapping[str, float]) -> str:
    """The search key of a configuration (the claim machinery's ``rates_key``)."""
    from ..plugin.samplers._claims import rates_key

    return rates_key(rates)


SEARCH_DROPS = ("budget", "anticipate")
"""What the search steps by under confirmed acceptance: the user's whole budget, or the drop the
held-back images could still confirm (:func:`anticipated_drop`)."""


def anticipated_drop(max_drop: float, confirm_images: int, confidence: float) -> float:
    """The drop the search steps by under ``search_drop="anticipate"``: ``(k + 1/2) / n``, where
    ``k`` is the most images (of ``n`` held back) a configuration may lose, gaining none back, and
    still be confirmed within ``max_drop``. The search's point rule at this allowance keeps the
    candidates the confirmation can pass: with the whole budget the search picks, among hundreds
    of configurations, those that spent it to the last image on the search images, while the
    paired bound on 180 held-back images passes a loss of at most one image within 3 points. The
    half image lets a search part one image smaller or larger than the held-back part lose ``k``
    images too (one of 179 is more than one of 180)."""
    if confirm_images <= 0 or drop_upper_bound(0, 0, confirm_images, confidence) > max_drop + 1e-12:
        return 0.0
    lo, hi = 0, confirm_images  # the bound grows with k: the last k that passes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if drop_upper_bound(mid, 0, confirm_images, confidence) <= max_drop + 1e-12:
            lo = mid
        else:
            hi = mid - 1
    return min(max_drop, (lo + 0.5) / confirm_images)


def check_search_drop(rule: str, constraints: Any) -> str:
    """``rule``, refused with one line when it is unknown or does not apply to ``constraints``."""
    if rule not in SEARCH_DROPS:
        raise PrimeSVTError(f"search_drop must be one of {', '.join(SEARCH_DROPS)}, got {rule!r}")
    if rule != "budget" and (not constraints.confirmed or constraints.max_accuracy_drop is None):
        raise PrimeSVTError("search_drop = 'anticipate' needs accept = 'confirmed' and a max_accuracy_drop "
                            "(it sizes the search's allowance by the held-back images)")
    return rule


def with_search_drop(constraints: Any, rule: str, confirm_images: int) -> Any:
    """``constraints`` with the search's allowance of ``rule`` (``"budget"``: unchanged), refused
    with one line where it does not apply."""
    if check_search_drop(rule, constraints) == "budget":
        return constraints
    allowance = anticipated_drop(constraints.max_accuracy_drop, confirm_images, constraints.confidence)
    return replace(constraints, search_allowance=allowance)


def auto_holdout(images: int, quantizing: bool = False) -> float:
    """The share held back under ``holdout="auto"`` from ``images`` evaluation images: pruning
    alone, all but :data:`SEARCH_IMAGES`, within :data:`HOLDOUT_RANGE` (two decimals); with a
    precision grid (``quantizing``), half. Pruning: the search needs a fixed resolution (a 3-point
    budget is 6 of 200 images), the paired bound gains from every image held back; replayed on 30
    re-drawn splits, half is the best share on the 359-image digits splits and 0.8 on digits-hard's
    1,078, and the study confirms 40% there on 2 seeds of 3 instead of 1. Precision: the joint
    search steps through dozens of (rate, precision) settings per layer, and on digits-hard with
    0.8 held back it delivered a median 73.0% against 85.4% with half (docs/results.md, "How much
    to hold back")."""
    low, high = HOLDOUT_RANGE
    if quantizing:
        return low
    return round(min(high, max(low, 1.0 - SEARCH_IMAGES / max(1, images))), 2)


def resolve_holdout(holdout: float | str, images: int, quantizing: bool = False) -> float:
    """The held-back share of ``images`` evaluation images: ``"auto"`` (:func:`auto_holdout`) or a
    share, refused with one line when it is neither."""
    return auto_holdout(images, quantizing) if holdout == AUTO_HOLDOUT else check_share(holdout)


def check_holdout_setting(holdout: float | str) -> float | str:
    """``"auto"`` or a share in (0, 1), refused with one line otherwise."""
    return holdout if holdout == AUTO_HOLDOUT else check_share(holdout)


def check_share(holdout: float) -> float:
    """The held-back share, refused with one line when it is not a fraction strictly inside (0, 1)."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0.0 < holdout < 1.0:
        raise PrimeSVTError(f"holdout is the share of the evaluation images held back for confirmation and must "
                            f"lie in (0, 1) or be 'auto', got {holdout!r}")
    return float(holdout)


def check_holdout(holdout: float, confirm_images: int, constraints: Any, confidence: float) -> None:
    """Refuse, before any work, a held-back share or a confirmation part that cannot confirm
    anything: a model that agrees with the unpruned one on every image must be able to pass."""
    check_share(holdout)
    if not 0.5 < confidence < 1.0:
        raise PrimeSVTError(f"confidence must lie in (0.5, 1), got {confidence}")
    need = MIN_RUNG_IMAGES
    if constraints.max_accuracy_drop is not None:
        need = max(need, min_images(constraints.max_accuracy_drop, confidence))
    if confirm_images < need:
        raise PrimeSVTError(
            f"the confirmation part has {confirm_images} images, too few to confirm anything at "
            f"{100 * confidence:g}% (at least {need} needed for this accuracy budget): raise holdout, give more "
            "evaluation images, or accept a larger drop")
