"""The layer walk of the paper and its baselines: reference, robustness bounds, then one layer
at a time in a policy's order, each at the highest rate that keeps the accuracy constraint.

The walk uses a layer's robustness sweep only through its bound, so by default (``sweep="lazy"``)
it measures the bound when it reaches the layer, and only as far as the bound needs: rule
``highest`` evaluates the layer alone from the top rate down and stops at the first pass; rule
``contiguous`` from the bottom up, stopping at the first failure. Both give exactly the bound of
the full sweep, so the walk commits exactly the same rates; a layer the walk never reaches (the
memory target is met first) is never measured. ``sweep="full"`` measures every layer at every
rate first, as the paper does (the whole heatmap inside the study).

The claim/wait/stale machinery is in ``_claims.py``; a walk order is one method, ``_order``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.study import Study

from ...acceptance.confirm import SAFE_STEP_ATTR
from ...errors import PrimeSVTError
from ._claims import (ACCEPTED, FREE, HELD, REJECTED, Candidate, ClaimSampler, Decision, Done, Free, Snapshot, Wait,
                      memory_met, rates_key)


@dataclass
class Commit:
    layer: str  # parameter name
    rate: float
    trial: int | None  # the trial whose evaluation committed it (None for rate 0 / not a target)


@dataclass
class WalkState:
    """Where a walk stands: what is committed, which layer it waits on, the next free candidate."""

    candidate: Candidate | None = None
    done: bool = False
    memory_met: bool = False
    blocked_on: str | None = None
    committed: dict[str, float] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    bounds: dict[str, float | None] = field(default_factory=dict)
    selected_trial: int | None = None


def robustness_bound(grid: Sequence[float], passed: Sequence[bool], rule: str) -> float | None:
    """The highest rate the walk may try for a layer, from its robustness sweep.

    ``highest``: the highest grid rate at which the layer alone met the accuracy constraint.
    ``contiguous``: the highest rate up to which every rate met it (ignores lucky isolated passes).
    """
    bound = None
    for rate, ok in zip(grid, passed):
        if ok:
            bound = rate
        elif rule == "contiguous":
            break
    return bound


class WalkSampler(ClaimSampler):
    """Reference, robustness sweeps, then a walk over the target layers in ``_order``."""

    policy = "walk"

    def __init__(self, *, robustness_rule: str = "highest", walk_all: bool = False, sweep: str = "lazy",
                 **common: Any) -> None:
        """``common``: the arguments of every PrimeSVT sampler (see :class:`ClaimSampler`)."""
        super().__init__(**common)
        if robustness_rule not in ("highest", "contiguous"):
            raise PrimeSVTError(f"robustness_rule must be 'highest' or 'contiguous', got {robustness_rule!r}")
        if sweep not in ("lazy", "full"):
            raise PrimeSVTError(f"sweep must be 'lazy' or 'full', got {sweep!r}")
        self._rule = robustness_rule
        self._walk_all = walk_all
        self._sweep = sweep

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "robustness_rule": self._rule, "walk_all": self._walk_all, "sweep": self._sweep}

    def _order(self, layers: list[tuple[str, int]]) -> list[str]:
        """The walk order of the layers (given largest first)."""
        raise NotImplementedError

    def walk_state(self, study: Study) -> WalkState:
        """The walk as the study's trials define it (committed rates, bounds, what is pending)."""
        snap = self._snapshot(study, self._read(study), None)
        layers = self._layers(study, snap)
        return self._walk(snap, layers or [])

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        if snap.status(rates_key({})) == FREE:
            return Candidate(rates_key({}), "reference")
        layers = self._layers(study, snap)
        if layers is None:
            return Wait("the reference trial (the layer table is not known yet)")
        if not layers:
            return Free()
        state = self._walk(snap, layers)
        if state.candidate is not None:
            return state.candidate
        if state.done and state.memory_met and self._confirming(study) is not None:
            step = self._safe_step(study, snap, state)
            if step is not None:
                return step
        if state.done:
            saved = "memory target met" if state.memory_met else "every target layer walked"
            return Done(f"walk finished ({saved})")
        return Wait(f"the outcome of {state.blocked_on}")

    def _safe_step(self, study: Study, snap: Snapshot, state: WalkState) -> Candidate | Wait | None:
        """Under confirmed acceptance, once the walk has met the memory target: its last commit
        backed off to the lowest grid rate that still meets the target, evaluated once (the rates
        below are proposed first and cut for memory before any image is read). The walk stops at
        the first configuration meeting the target, and that one spent its layer's whole bound on
        the search images: alone on the ladder it fails its confirmation as often as not, and then
        nothing is delivered (the paper's walk on digits-2-64 commits ``rpe_conv`` 0.9, 19.8%,
        whose held-back bound is 7.0 points under absolute recalibration; 0.7, 15.3%, confirms at
        0.9). The step is recorded
        (:data:`~primesvt_optuna.acceptance.confirm.SAFE_STEP_ATTR`), so the ladder keeps it even
        where speculating workers or a full sweep evaluated it first as a robustness trial. The
        walk itself, and so the point rule's selection, is unchanged. None: decided (or nothing
        to back off)."""
        last = state.commits[-1] if state.commits else None
        if last is None or last.rate <= 0:
            return None
        before = {p: r for p, r in state.committed.items() if p != last.layer}
        for rate in sorted(r for r in self._grid if r < last.rate):  # the lowest first: the safest
            rates = {**before, last.layer: rate}
            key = rates_key(rates)
            status = snap.status(key)
            if status == FREE:
                return Candidate(key, "safe", last.layer, rate, rates, complete=True)
            if status == HELD:
                return Wait("the walk's safe step")
            if memory_met(snap.trial_for(key)) is False:
                continue  # misses the target (cut for memory before any image was read)
            stored = snap.key(key)  # on top of a base (the precision walk): the base included
            if study._storage.get_study_user_attrs(study._study_id).get(SAFE_STEP_ATTR) != stored:
                study._storage.set_study_user_attr(study._study_id, SAFE_STEP_ATTR, stored)
            return None
        return None

    def _walk(self, snap: Snapshot, layers: list[tuple[str, int]]) -> WalkState:
        state = WalkState()
        reference = rates_key({})
        if snap.status(reference) == FREE:
            state.candidate = Candidate(reference, "reference")
            return state
        if self._sweep == "full":
            for param, _ in layers:
                for rate in self._grid:
                    key = rates_key({param: rate})
                    if snap.status(key) == FREE:
                        state.candidate = Candidate(key, "robustness", param, rate, {param: rate})
                        return state
        state.selected_trial = getattr(snap.trial_for(reference), "number", None)
        if not self._walk_all and memory_met(snap.trial_for(reference)):
            state.done = state.memory_met = True
            return state
        for param in self._order(layers):
            known, bound, candidate = lazy_bound(snap, param, self._grid, self._rule)
            if not known:
                state.candidate = candidate
                state.blocked_on = f"the robustness of {param}"
                return state
            state.bounds[param] = bound
            decided: float | None = None
            first_free: Candidate | None = None
            pending_above = False
            for rate in sorted((r for r in self._grid if bound is not None and r <= bound), reverse=True):
                rates = {**state.committed, param: rate}
                key = rates_key(rates)
                status = snap.status(key)
                if status == ACCEPTED:
                    if not pending_above:
                        decided = rate
                    break
                if status == REJECTED:
                    continue
                pending_above = True
                if status == FREE and first_free is None:
                    first_free = Candidate(key, "walk", param, rate, rates)
            else:
                if not pending_above:
                    decided = 0.0
            if decided is None:
                state.candidate = first_free
                state.blocked_on = f"the walk at {param}"
                return state
            if decided > 0:
                state.committed[param] = decided
                trial = snap.trial_for(rates_key(state.committed))
                state.selected_trial = trial.number if trial is not None else None
                state.commits.append(Commit(param, decided, state.selected_trial))
            else:
                state.commits.append(Commit(param, 0.0, None))
            if not self._walk_all and memory_met(snap.trial_for(rates_key(state.committed))):
                state.done = state.memory_met = True
                return state
        state.done = True
        return state


def lazy_bound(snap: Snapshot, param: str, grid: Sequence[float], rule: str) -> tuple[bool, float | None, Candidate | None]:
    """(known, bound, the next single-layer rate to evaluate) for ``param``. The rates are read in
    the order the rule decides them (``highest``: top down, to the first pass; ``contiguous``:
    bottom up, to the first failure); rates after a pending one, up to that point, are offered to
    other workers speculatively, each at most once."""
    contiguous = rule == "contiguous"
    decider = REJECTED if contiguous else ACCEPTED
    pending, candidate = False, None
    for rate in grid if contiguous else reversed(grid):
        status = snap.status(rates_key({param: rate}))
        if status == decider:
            break
        if status in (FREE, HELD):
            pending = True
            if status == FREE and candidate is None:
                candidate = Candidate(rates_key({param: rate}), "robustness", param, rate, {param: rate})
    if pending:
        return False, None, candidate
    # rates past the deciding one may be unmeasured: they cannot change either rule's bound
    passed = [snap.status(rates_key({param: r})) == ACCEPTED for r in grid]
    return True, robustness_bound(grid, passed, rule), None
