"""Precision by the drift proxy, then the budget-aware plan prunes on top: the joint search."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial

from ...errors import PrimeSVTError
from ...precision.grid import GRID
from ...precision.search import FLOAT_ONLY, check_precisions, precision_param
from ._aq4svit import lowest_drift_step, proxy_start
from ._budget_aware import BudgetAwareSampler, first_flip
from ._claims import ACCEPTED, Candidate, Decision, Snapshot, Wait
from ._precision_walk import decide_on_top


class JointSampler(BudgetAwareSampler):
    """Per-layer precision first, ordered by membrane-potential drift per byte and found by
    galloping; then :class:`BudgetAwareSampler`'s plan prunes on top of it.

    1. Trial 0 is the unpruned float reference.
    2. *Precision*: the AQ4SViT order (each step lowers by one precision the layer with the
       smallest drift added per byte saved, from the objective's ``primesvt:precision_proxy``)
       gives a sequence of ever narrower configurations. Where AQ4SViT evaluates them one by one
       and stops at the first failure, this gallops over the sequence (steps 1, 2, 4, 8, ... up to
       the first failure, then halving back: about 2 log2(k) evaluations for k steps, taken to
       pass up to some step) to the last step that passes, freezes the layer whose step failed at
       its precision there, and gallops over the order of the layers left; until no step is left.
       The last configuration that passed is the *base*. Galloping from the widest end leaves
       passing configurations at savings spread from low to high, which the confirmation ladder
       needs as its safer rungs.
    3. *Pruning on top*: the budget-aware plan (bounds, knapsack, repair, extension; float-only
       steps) runs with the base as its unpruned model, as the precision walk does for the paper's
       walk; its slack is what the base left of the accuracy budget.

    The image budget, K workers, resume and the confirmation ladder are those of every PrimeSVT
    sampler; the precisions and the rates of every trial are Optuna parameters.

    Example:

        .. testcode::

            import optuna
            from primesvt_optuna.plugin import SyntheticObjective
            from primesvt_optuna.plugin.samplers import JointSampler

            grid = ("float", "int8", "int4", "int2")
            objective = SyntheticObjective({"fc1": 4000, "fc2": 4000, "proj": 500}, precisions=grid,
                                           max_accuracy_drop=0.03, grid=[0.3, 0.6, 0.9])
            study = optuna.create_study(directions=objective.directions,
                                        sampler=JointSampler(grid=objective.grid, precisions=grid))
            study.optimize(objective)

    Args:
        precisions: the precision grid, float and at least one narrower precision.
        grid, layer_sizes, fallback, seed, wait_timeout, poll_interval, stale_after, budget_images,
            budget_trials: as for the other PrimeSVT samplers.
    """

    policy = "joint"

    def __init__(self, *, precisions: Sequence[str] = ("float", "int8", "int4", "int2"), **common: Any) -> None:
        """``common``: the arguments of every PrimeSVT sampler (see :class:`ClaimSampler`)."""
        super().__init__(**common)  # the pruning on top plans over rates alone
        self._descent = check_precisions(precisions)
        if self._descent == FLOAT_ONLY:
            raise PrimeSVTError("the joint search lowers precisions: give a grid with int8, int4 or int2")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "precisions": list(self._descent)}

    def base(self, study: Study, snap: Snapshot) -> Decision | dict[str, float]:
        """The precision configuration the pruning starts from, or the decision still to be
        taken to know it."""
        started = proxy_start(self, study, snap)
        if not isinstance(started, tuple):
            return started
        proxy, current = started
        frozen: set[str] = set()
        while True:
            sequence: list[tuple[str, dict[str, int]]] = []  # (layer lowered, configuration after)
            state = dict(current)
            while (step := lowest_drift_step(proxy, self._descent, state, frozen)) is not None:
                state = {**state, step: state[step] + 1}
                sequence.append((step, state))
            if not sequence:
                return self._precision_config(current)
            known, last, candidate = _last_passing(snap, [self._precision_config(c) for _, c in sequence])
            if not known:
                return candidate or Wait("the precision descent")
            if last >= 0:
                current = sequence[last][1]
            if last == len(sequence) - 1:
                return self._precision_config(current)
            frozen.add(sequence[last + 1][0])

    def _precision_config(self, current: dict[str, int]) -> dict[str, float]:
        return {precision_param(layer): float(GRID[self._descent[i]]) for layer, i in current.items() if i}

    def _spent_before(self, snap: Snapshot, reference: FrozenTrial) -> list[FrozenTrial]:
        # the float reference and the descent: the plan's own reference is the base, one of them
        return [t for t in snap.finished() if t.user_attrs.get("phase") in ("reference", "precision")
                and t.number != reference.number]

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        base = self.base(study, snap)
        if not isinstance(base, dict):
            return base
        return decide_on_top(snap, base, functools.partial(super()._next, study))


def _last_passing(snap: Snapshot, steps: list[dict[str, float]]) -> tuple[bool, int, Candidate | None]:
    """(known, index of the last step that passes, -1 when the first fails; the step to evaluate
    next, None while another worker holds it) of ``steps`` taken to pass up to some step: the
    first failure, galloped from the first step (:func:`first_flip`), less one."""
    known, failed, candidate = first_flip(snap, steps, "precision", lambda status: status != ACCEPTED)
    return known, len(steps) - 1 if failed is None else failed - 1, candidate
