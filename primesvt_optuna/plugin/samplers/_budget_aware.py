"""Beyond the paper: spend the accuracy budget where it buys the most bytes."""

from __future__ import annotations

import functools
import math

from optuna.study import Study
from optuna.trial import FrozenTrial

from ._claims import ACCEPTED, FREE, HELD, REJECTED, Candidate, ClaimSampler, Decision, Done, Free, Snapshot, Wait, rates_key
from ._walk import lazy_bound

RESOLUTION = 200
"""The accuracy slack is split into this many units for the knapsack (exact to 0.5%)."""


class BudgetAwareSampler(ClaimSampler):
    """Measure every layer's robustness bound, plan the allocation that saves the most bytes within
    the accuracy budget, verify it on the model, repair it, then extend it.

    1. Trial 0 is the unpruned reference; then each layer alone, from the top grid rate down to
       the first rate that meets the ``accuracy`` constraint (its bound, as in the lazy walk; K
       workers measure different layers at once).
    2. *Plan*: from those single-layer trials, each layer's cost (how much of the accuracy slack it
       used alone: its ``accuracy`` constraint minus the reference's) and saving (from the
       ``memory`` constraint, else ``layer_sizes`` x rate); a multiple-choice knapsack (costs taken
       as additive) picks one rate or none per layer to save the most within the slack.
    3. *Verify and repair*: the plan is evaluated on the real model; while it fails the constraint,
       the layer that buys the fewest bytes per unit of cost (alone, at its bound) is backed off by
       one grid step (dropped below the lowest), and the result evaluated.
    4. *Extend*: every layer not in the accepted configuration is tried on top of it, largest
       saving first, from its bound downward, and kept at the first rate that still passes.

    Greedy largest-first can spend the whole budget on a large, fragile layer; this plans over all
    the measurements first. It ignores the memory target while planning (it maximizes the saving);
    a selection then comes from :func:`~primesvt_optuna.plugin.result.result` as for any policy.
    State lives in the study, workers and resume behave as for the other PrimeSVT samplers.

    Example:

        .. testcode::

            import optuna
            from primesvt_optuna.plugin import BudgetAwareSampler, SyntheticObjective

            objective = SyntheticObjective(
                {"big": 4000, "mid": 3000, "small": 1000},
                sensitivity={"big": 0.5, "mid": 0.01, "small": 0.01},
                max_accuracy_drop=0.03, memory_target=0.3, grid=[0.3, 0.6, 0.9],
            )
            study = optuna.create_study(directions=objective.directions, sampler=BudgetAwareSampler(grid=objective.grid))
            study.optimize(objective)  # stops by itself when the plan is extended as far as it goes

    Args:
        grid: the pruning rates in (0, 1) tried per layer.
        layer_sizes: ``{parameter name: size}``; optional with PruningObjective.
        fallback, seed, wait_timeout, poll_interval, stale_after: as for the other PrimeSVT samplers.
        budget_images, budget_trials: stop before an evaluation would exceed either.
    """

    policy = "budget-aware"

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        reference = snap.trial_for(rates_key({}))
        if reference is None:
            return Candidate(rates_key({}), "reference") if snap.status(rates_key({})) == FREE else Wait("the reference trial")
        layers = self._layers(study, snap)
        if layers is None:
            return Wait("the reference trial (the layer table is not known yet)")
        if not layers:
            return Free()
        bounds, pending = {}, False
        for param, _ in layers:  # every layer's bound; idle workers measure the next layers meanwhile
            known, bound, candidate = lazy_bound(snap, param, self._grid, "highest")
            if candidate is not None:
                return candidate
            pending = pending or not known
            bounds[param] = bound
        if pending:
            return Wait("the robustness of the last layers")
        sizes = dict(layers)
        options = {p: self._options(snap, reference, p, sizes[p]) for p in bounds}
        config = dict(_knapsack(tuple((p, tuple(sorted(o.items()))) for p, o in options.items()), -_violation(reference)))
        while True:  # verify and repair
            status = snap.status(rates_key(config))
            if status == FREE:
                # not "complete": a plan or extension below the memory target is a step towards a
                # larger saving, so the memory pre-check must not reject it unevaluated
                return Candidate(rates_key(config), "plan", None, None, dict(config))
            if status == HELD:
                return Wait("the planned configuration")
            if status == ACCEPTED:
                break
            worst = min(config, key=lambda p: (_value(options[p][bounds[p]]), p))
            lower = [r for r in self._grid if r < config[worst]]
            if lower:  # back off the layer that buys the fewest bytes per point by one grid step
                config[worst] = lower[-1]
            else:
                config.pop(worst)
        extra = sorted((p for p in bounds if p not in config and bounds[p] is not None),
                       key=lambda p: -options[p][bounds[p]][1])
        for param in extra:  # extend, each layer from its bound down
            for rate in sorted((r for r in self._grid if r <= bounds[param]), reverse=True):
                trial = {**config, param: rate}
                status = snap.status(rates_key(trial))
                if status == FREE:
                    return Candidate(rates_key(trial), "extend", param, rate, trial)
                if status == HELD:
                    return Wait(f"the extension by {param}")
                if status == ACCEPTED:
                    config = trial
                    break
                assert status == REJECTED
        return Done("plan verified and extended as far as the budget allows")

    def _options(self, snap: Snapshot, reference: FrozenTrial, param: str, size: int) -> dict[float, tuple[float, float]]:
        """{rate: (cost, saving)} of the rates of ``param`` that passed alone."""
        found = {}
        for rate in self._grid:
            trial = snap.trial_for(rates_key({param: rate}))
            if trial is not None and snap.status(rates_key({param: rate})) == ACCEPTED:
                cost = max(0.0, _violation(trial) - _violation(reference))
                memory = trial.constraints.get("memory"), reference.constraints.get("memory")
                saving = memory[1] - memory[0] if None not in memory else size * rate
                found[rate] = (cost, saving)
        return found


def _violation(trial: FrozenTrial) -> float:
    return float(trial.constraints.get("accuracy", 0.0))


def _value(option: tuple[float, float]) -> float:
    """Bytes bought per unit of cost (a free layer is worth the most)."""
    cost, saving = option
    return math.inf if cost <= 0 else saving / cost


@functools.lru_cache(maxsize=64)
def _knapsack(options: tuple[tuple[str, tuple[tuple[float, tuple[float, float]], ...]], ...],
              slack: float) -> tuple[tuple[str, float], ...]:
    """One rate or none per layer (``options``: per layer, (rate, (cost, saving)) pairs), the largest
    total saving with the summed costs within ``slack`` (costs rounded up to 1/RESOLUTION of the
    slack, so rounding never lets the plan exceed it). Cached: the measurements behind a plan
    never change, and every later decision of the study asks for the same plan."""
    if slack <= 0:
        return ()
    best = [0.0] * (RESOLUTION + 1)  # best[c]: the largest saving within c units
    picks: list[list[tuple[float | None, int]]] = []  # per layer and c: (rate, units it used)
    for _, choices in options:
        new, pick = list(best), [(None, 0)] * (RESOLUTION + 1)
        for rate, (cost, saving) in choices:
            need = math.ceil(cost / slack * RESOLUTION - 1e-9)
            for c in range(need, RESOLUTION + 1):
                if best[c - need] + saving > new[c] + 1e-12:
                    new[c], pick[c] = best[c - need] + saving, (rate, need)
        best = new
        picks.append(pick)
    chosen, c = [], RESOLUTION
    for (param, _), pick in zip(reversed(options), reversed(picks)):
        rate, need = pick[c]
        if rate is not None:
            chosen.append((param, rate))
            c -= need
    return tuple(reversed(chosen))
