"""Beyond the paper: spend the accuracy budget where it buys the most bytes."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial

from ...precision.grid import GRID
from ...precision.search import FLOAT_ONLY, check_precisions, precision_param
from ..constraints import layer_of
from ._claims import (ACCEPTED, FREE, HELD, Candidate, ClaimSampler, Decision, Done, Free, Snapshot, Wait, images_spent,
                      memory_met, rates_key)

RESOLUTION = 200
"""The accuracy slack is split into this many units for the knapsack (exact to 0.5%)."""

Choice = tuple[float, int]
"""One layer's setting: (rate, bit width; 0 is float)."""


class BudgetAwareSampler(ClaimSampler):
    """Measure every layer's robustness bound, plan the allocation that saves the most bytes within
    the accuracy budget, verify it on the model, repair it, then extend it.

    1. Trial 0 is the unpruned reference; then each layer alone, for the highest grid rate that
       meets the ``accuracy`` constraint (its bound; K workers measure different layers at once).
       When one full evaluation per layer would cost more than half the budget, bound searches
       start only until half of it is spent, largest layer first; the smaller layers stay
       unmeasured and out of the plan.
    2. *Plan*: from those single-layer trials, each layer's cost (how much of the accuracy slack it
       used alone: its ``accuracy`` constraint minus the reference's) and saving (from the
       ``memory`` constraint, else ``layer_sizes`` x rate); a multiple-choice knapsack (costs taken
       as additive) picks one rate or none per layer to save the most within the slack.
    3. *Verify and repair*: the plan is evaluated on the real model; if it fails the constraint,
       it is backed off along the repair sequence (each step backs off the layer that buys the
       fewest bytes per unit of cost, alone at its bound, by one grid step, dropping it below the
       lowest) to the first step that passes.
    3b. *A safe step* (confirmed acceptance only): the repair step furthest from the plan whose
       predicted saving still meets the memory target, evaluated once, so the confirmation ladder
       has a candidate near the target to start from (see ``_safe_step``).
    4. *Walk when the plan misses the memory target*: solo costs add up badly near the floor, so
       the paper's walk runs from the bounds already measured (largest layer first, each at the
       first rate up to its bound that passes on top of the walk's commits) until the target is
       met. A walk that meets it replaces the plan as the configuration to extend (it stopped at
       the target, so layers are left); one that does not leaves the plan. Without a target, or
       when the plan meets it, there is no walk.
    5. *Extend*: every layer not in the accepted configuration is tried on top of it, the most
       bytes per unit of cost first, at the highest rate up to its bound that still passes. On top
       of a configuration near the floor most extensions pass at no rate, so when the bound fails
       the lowest rate is tried next: two evaluations tell that nothing passes, where the gallop
       needs five on a 9-rate grid.

    Every search for "the first step that passes" (a bound, the repair, an extension) is
    :func:`_gallop`: the first step, then doubling gaps, then halving back. It takes the steps to
    pass from some point on and costs about 2 log2(k) evaluations where one step at a time costs
    k: on digits-hard one step at a time spent 58.6k of an 80k-image budget on the bounds.

    Greedy largest-first can spend the whole budget on a large, fragile layer; this plans over all
    the measurements first. It ignores the memory target while planning (it maximizes the saving)
    and uses it only to decide step 4; a selection then comes from
    :func:`~primesvt_optuna.plugin.result.result` as for any policy.
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

    With a precision grid (``precisions``, float included) a layer's setting is a (rate,
    precision) pair and every step above plans over pairs: the bound becomes one bound per
    precision, widest first (the highest rate that passes alone at that precision, 0 when it passes
    only unpruned; a narrower precision searches only up to the wider one's bound, and the search
    stops at the first precision that passes at no rate, since narrower ones pass no better); the
    knapsack takes every pair that passed alone as one option of its layer; the repair, walk and
    extension step through a layer's pairs ordered by the bytes they keep (``(1 - rate) x bits``),
    each pair at most its precision's bound. With float alone every step is the one above.

    Args:
        grid: the pruning rates in (0, 1) tried per layer.
        precisions: the precisions a layer may take, ``float`` included (default: float alone).
        layer_sizes: ``{parameter name: size}``; optional with PruningObjective.
        fallback, seed, wait_timeout, poll_interval, stale_after: as for the other PrimeSVT samplers.
        budget_images, budget_trials: stop before an evaluation would exceed either.
    """

    policy = "budget-aware"

    def __init__(self, *, precisions: Sequence[str] = FLOAT_ONLY, **common: Any) -> None:
        """``common``: the arguments of every PrimeSVT sampler (see :class:`ClaimSampler`)."""
        super().__init__(**common)
        self._precisions = check_precisions(precisions)
        self._bits = [GRID[p] or 0 for p in self._precisions]  # widest first

    def settings(self) -> dict[str, Any]:
        # float alone records nothing new: a study from before precisions resumes unchanged
        extra = {} if self._precisions == FLOAT_ONLY else {"precisions": list(self._precisions)}
        return {**super().settings(), **extra}

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        reference = snap.trial_for(rates_key({}))
        if reference is None:
            return Candidate(rates_key({}), "reference") if snap.status(rates_key({})) == FREE else Wait("the reference trial")
        layers = self._layers(study, snap)
        if layers is None:
            return Wait("the reference trial (the layer table is not known yet)")
        if not layers:
            return Free()
        pending, capped = False, self._bounds_capped(study, snap, layers)
        for param, _ in layers:  # every layer's bound; idle workers measure the next layers meanwhile
            if capped and all(snap.status(rates_key(self._solo(param, c))) == FREE for c in self._choices()):
                break  # its search has not started, nor has any smaller layer's: they stay unmeasured
            known, candidate = self._bound_search(snap, param)
            if candidate is not None:
                return candidate
            pending = pending or not known
        if pending:
            return Wait("the robustness of the last layers")
        options = {p: self._options(snap, reference, p, size) for p, size in layers}
        # a layer's settings run from its best (the most bytes saved, among those that passed alone:
        # with float alone its bound) down, each precision up to its bound: derived from the same
        # trials as its options, so a plan never holds a layer whose bound is unknown
        ladders = {p: self._ladder(o) for p, o in options.items()}
        best = {p: (ladder[0] if ladder else None) for p, ladder in ladders.items()}
        plan = dict(_knapsack(tuple((p, tuple(sorted(o.items()))) for p, o in options.items()), -_violation(reference)))
        plans = [plan]
        while plans[-1]:  # the repair sequence: back off the layer buying the fewest bytes per point
            chosen = dict(plans[-1])
            worst = min(chosen, key=lambda p: (_value(options[p][best[p]]), p))
            lower = ladders[worst][ladders[worst].index(chosen[worst]) + 1:]
            if lower:
                chosen[worst] = lower[0]
            else:
                chosen.pop(worst)
            plans.append(chosen)
        # not "complete": a plan or extension below the memory target is a step towards a larger
        # saving, so the memory pre-check must not reject it unevaluated
        steps = [self._config(c) for c in plans]
        known, found, candidate = _gallop(snap, steps, "plan")
        if not known:
            return candidate or Wait("the planned configuration")
        chosen = {} if found is None else plans[found]
        if found is not None and self._confirming(study) is not None:
            known, candidate = self._safe_step(snap, reference, plans, options, found)
            if not known:
                return candidate or Wait("the plan's safe step")
        if memory_met(snap.trial_for(rates_key(self._config(chosen)))) is False and self._walk_affordable(
                study, snap, layers, options, best, steps):
            known, walked, candidate = self._walk(snap, layers, ladders)
            if not known:
                return candidate or Wait("the walk from the bounds")
            if memory_met(snap.trial_for(rates_key(self._config(walked)))):
                chosen = walked  # it stopped at the target, so layers are left to extend it with
        quantizing = self._precisions != FLOAT_ONLY  # then a layer in the plan may still go narrower (or lower)
        extra = sorted((p for p in best if best[p] is not None and (quantizing or p not in chosen)),
                       key=lambda p: (-_value(options[p][best[p]]), -options[p][best[p]][1], p))
        for param in extra:  # extend, most bytes per point first, each layer from its best down
            tries = [{**chosen, param: c} for c in ladders[param] if param not in chosen or _kept(c) < _kept(chosen[param])]
            if not tries:
                continue
            known, found, candidate = _gallop(snap, [self._config(t) for t in tries], "extend", param, last_second=True)
            if not known:
                return candidate or Wait(f"the extension by {param}")
            if found is not None:
                chosen = tries[found]
        return Done("plan verified and extended as far as the budget allows")

    def _safe_step(self, snap: Snapshot, reference: FrozenTrial, plans: list[dict[str, Choice]],
                   options: dict[str, dict[Choice, tuple[float, float]]], found: int) -> tuple[bool, Candidate | None]:
        """Under confirmed acceptance: the repair step that backs the verified plan off the furthest
        while its predicted saving still meets the memory target, evaluated once. The plan
        maximizes the saving, so without it every candidate the confirmation ladder sees may lie
        far above the target, and the ladder's first rung (the safest candidate near the target)
        would be a configuration that spent the whole accuracy budget on the search images: on
        held-back images it fails as often as not and the ladder stops there.

        A step's predicted saving is the sum of its layers' savings alone, each scaled from the
        layer's measured bound (a share of the model's bytes, the unit of the memory constraint):
        fixed once the bounds are known, so the choice does not move as trials finish. Coupled
        layers' savings overlap, so the sum can overestimate: a step that misses the target (the
        memory pre-check refuses it before any image is evaluated) passes to the next, less
        backed-off one. A step of one layer that was not measured alone is passed over: evaluated,
        it would become one of that layer's options and change the plan it came from. (known, the
        step to evaluate; None while another worker holds it.)"""
        need = reference.constraints.get("memory")
        if need is None or need <= 0 or not memory_met(snap.trial_for(rates_key(self._config(plans[found])))):
            return True, None
        per_share = {}  # a layer's saving per share of its weights removed, from its measured bound
        for param, measured in options.items():
            if measured:
                widest = max(measured, key=lambda c: 1 - _kept(c))
                per_share[param] = measured[widest][1] / max(1e-12, 1 - _kept(widest))

        def predicted(plan: dict[str, Choice]) -> float:
            return sum(per_share[p] * (1 - _kept(c)) for p, c in plan.items())

        for plan in reversed(plans[found + 1:]):  # the furthest back-off first
            key = rates_key(self._config(plan))
            if not plan or predicted(plan) < need or (len(plan) == 1 and snap.status(key) == FREE):
                continue
            status = snap.status(key)
            if status == FREE:  # complete: the memory pre-check refuses it unevaluated when it misses the target
                return False, Candidate(key, "plan", rates=self._config(plan), complete=True)
            if status == HELD:
                return False, None
            if memory_met(snap.trial_for(key)) is not False:
                return True, None
            # solo savings overlap where layers are coupled (an MLP's two layers share its hidden
            # width), so the sum overestimates: the next, less backed-off step is tried
        return True, None

    # ----- (rate, precision) settings --------------------------------------------------------------
    def _choices(self) -> list[Choice]:
        """Every setting of one layer but the unpruned float one."""
        return [(r, b) for b in self._bits for r in (0.0, *self._grid) if r or b]

    @staticmethod
    def _solo(param: str, choice: Choice) -> dict[str, float]:
        """The configuration of ``param`` alone at ``choice`` (float-only: ``{param: rate}``)."""
        rate, bits = choice
        return {**({param: rate} if rate else {}), **({precision_param(layer_of(param)): float(bits)} if bits else {})}

    def _config(self, chosen: dict[str, Choice]) -> dict[str, float]:
        """The claim configuration of one setting per layer."""
        return {k: v for param, choice in chosen.items() for k, v in self._solo(param, choice).items()}

    def _bound_search(self, snap: Snapshot, param: str) -> tuple[bool, Candidate | None]:
        """Per precision, widest first, the highest rate at which ``param`` passes alone, at most
        the wider precision's bound. A quantized precision is first measured unpruned (the cheap
        option the plan most often wants); when that fails, narrower ones are not tried."""
        cap = self._grid[-1]
        for bits in self._bits:
            if bits:
                known, found, candidate = _gallop(snap, [self._solo(param, (0.0, bits))], "robustness", param)
                if not known:
                    return False, candidate
                if found is None:
                    break  # a narrower precision passes no better
            rates = [r for r in reversed(self._grid) if r <= cap]
            steps = [self._solo(param, (r, bits)) for r in rates] + ([self._solo(param, (0.0, bits))] if bits else [])
            found = None
            if rates:
                known, found, candidate = _gallop(snap, steps, "robustness", param)
                if not known:
                    return False, candidate
            cap = rates[found] if found is not None and found < len(rates) else 0.0
        return True, None

    def _ladder(self, options: dict[Choice, tuple[float, float]]) -> list[Choice]:
        """A layer's settings from the most bytes saved down: at each precision that passed alone,
        every rate up to its bound, ordered by the bytes kept, ``(1 - rate) x bits``."""
        bounds: dict[int, float] = {}
        for rate, bits in options:
            bounds[bits] = max(rate, bounds.get(bits, 0.0))
        found = [(r, b) for b, bound in bounds.items() for r in (0.0, *self._grid) if (r or b) and r <= bound]
        return sorted(found, key=lambda c: (_kept(c), -c[0], -c[1]))

    def _walk(self, snap: Snapshot, layers: list[tuple[str, int]], ladders: dict[str, list[Choice]]
              ) -> tuple[bool, dict[str, Choice], Candidate | None]:
        """(known, the walk's settings, the step to evaluate next): the paper's walk from the
        measured bounds, largest layer first, each at the first setting of its ladder that passes
        on top of the commits, until the memory target is met."""
        committed: dict[str, Choice] = {}
        for param, _ in layers:
            if not ladders[param]:
                continue
            tries = [{**committed, param: c} for c in ladders[param]]
            known, found, candidate = _gallop(snap, [self._config(t) for t in tries], "walk", param)
            if not known:
                return False, committed, candidate
            if found is not None:
                committed = tries[found]
                if memory_met(snap.trial_for(rates_key(self._config(committed)))):
                    break
        return True, committed, None

    def _bounds_capped(self, study: Study, snap: Snapshot, layers: list[tuple[str, int]]) -> bool:
        """Whether no further bound search may start: half the budget is spent on the reference
        and the bounds, and one full evaluation per layer would cost more than that half.

        A bound costs at least one evaluation (1.3 to 3 full evaluations' images in the
        comparison's studies), so there the bounds alone would take the budget and nothing would
        be planned (`digits-8-64` with recalibration: 45 layers at 871 images each against 50,000
        images selected one layer alone). The largest layers, measured first, then get half of
        the budget and the plan, its repair and extensions the other half. Both the cost and the
        images spent only grow, so once capped a study stays capped."""
        done = snap.finished()
        images, trials = self._search_budget(study)
        if trials is not None and 2 * len(layers) > trials and 2 * len(done) >= trials:
            return True
        if images is None:
            return False
        spent = [images_spent(t) for t in done]
        return 2 * len(layers) * self._trial_cost(study, spent) > images and 2 * sum(spent) >= images

    def _walk_affordable(self, study: Study, snap: Snapshot, layers: list[tuple[str, int]],
                         options: dict[str, dict[Choice, tuple[float, float]]], best: dict[str, Choice | None],
                         plan: list[dict[str, float]]) -> bool:
        """Whether the walk may reach the memory target within the budget left after the plan.

        The layers it needs are, largest first, those whose savings at their bounds (the most it
        can commit; coupled layers save less together) first add up to the target; none can,
        no walk. Its search on top of its commits is the one that found each bound alone, so it
        is taken to cost what measuring those layers alone did: the images and trials left after
        the reference, the bounds and the plan must cover that, or the budget goes to extending
        the plan. Everything counted here is finished before the walk starts, so every worker
        decides the same."""
        reference = snap.trial_for(rates_key({}))
        need, saved, prefix = float(reference.constraints["memory"]), 0.0, []
        for param, _ in layers:
            if options[param]:
                prefix.append(param)
                saved += options[param][best[param]][1]
                if saved >= need:
                    break
        else:
            return False

        def evaluated(configs: list[dict[str, float]], phase: str) -> list[FrozenTrial]:
            # by phase: a configuration the search skipped may be evaluated later, as a step of the walk
            found = (snap.trial_for(rates_key(c)) for c in configs)
            return [t for t in found if t is not None and t.user_attrs.get("phase") == phase]

        solo = {param: evaluated([self._solo(param, c) for c in self._choices()], "robustness") for param, _ in layers}
        spent = [reference, *(t for trials in solo.values() for t in trials), *evaluated(plan, "plan"),
                 *self._spent_before(snap, reference)]
        walk = [t for param in prefix for t in solo[param]]
        images, trials = self._search_budget(study)
        return ((images is None or images - sum(map(images_spent, spent)) >= sum(map(images_spent, walk)))
                and (trials is None or trials - len(spent) >= len(walk)))

    def _spent_before(self, snap: Snapshot, reference: FrozenTrial) -> list[FrozenTrial]:
        """Trials of a search that ran before this plan's reference (none here; the joint search's
        precision descent, where the plan runs on top of its base)."""
        return []

    def _options(self, snap: Snapshot, reference: FrozenTrial, param: str, size: int) -> dict[Choice, tuple[float, float]]:
        """{(rate, bits): (cost, saving)} of the settings of ``param`` that passed alone."""
        found = {}
        for choice in self._choices():
            key = rates_key(self._solo(param, choice))
            trial = snap.trial_for(key)
            if trial is not None and snap.status(key) == ACCEPTED:
                cost = max(0.0, _violation(trial) - _violation(reference))
                memory = trial.constraints.get("memory"), reference.constraints.get("memory")
                rate, bits = choice
                saving = memory[1] - memory[0] if None not in memory else size * (1 - (1 - rate) * (bits or 32) / 32)
                found[choice] = (cost, saving)
        return found


def _gallop(snap: Snapshot, steps: list[dict[str, float]], phase: str, param: str | None = None,
            last_second: bool = False) -> tuple[bool, int | None, Candidate | None]:
    """(known, index of the first step that passes or None when none does, the step to evaluate
    next: None while the step the search needs is held by another worker).

    ``steps`` run from the largest saving to the smallest, and are taken to pass from some point
    on: the search probes steps 0, 1, 3, 7, ... (doubling gaps) up to the first pass, then halves
    the gap back to the last failure. That is about 2 log2(k) evaluations where a step-by-step
    search would need k (a robustness bound at 0.2 of a 9-rate grid: 6 rather than 8); the first
    step is still tried first, so a robust layer or a plan that holds costs one evaluation.
    ``last_second``: when the first step fails, the last is probed next, and if it fails too
    nothing passes (two evaluations); if it passes, the gallop goes on as above.
    """
    if last_second and len(steps) > 1:  # nothing passes unless the last step does
        for i in (0, len(steps) - 1):
            status = _probe(snap, steps[i], phase, param)
            if isinstance(status, Candidate):
                return False, None, status
            if status == HELD:
                return False, None, None
            if status == ACCEPTED:
                break
        else:
            return True, None, None
    return first_flip(snap, steps, phase, lambda status: status == ACCEPTED, param)


def first_flip(snap: Snapshot, steps: list[dict[str, float]], phase: str, flipped: Callable[[str], bool],
               param: str | None = None) -> tuple[bool, int | None, Candidate | None]:
    """(known, index of the first step whose status ``flipped`` holds or None when no step's
    does, the step to evaluate next: None while another worker holds it), for ``steps`` taken to
    flip from some step on: probes 0, 1, 3, 7, ... (doubling gaps) up to the first flip, then
    halves the gap back to the last step that did not. :func:`_gallop` looks for the first pass,
    the joint search's precision descent for the first failure."""
    before, first, gap, i = -1, None, 1, 0
    while True:
        status = _probe(snap, steps[i], phase, param)
        if isinstance(status, Candidate):
            return False, None, status
        if status == HELD:
            return False, None, None
        if flipped(status):
            first = i
        else:
            before = i
        if first is None:  # doubling gaps up to the first flip
            if i == len(steps) - 1:
                return True, None, None
            i, gap = min(i + gap, len(steps) - 1), gap * 2
        elif first - before > 1:  # then halve the gap back to the last step that did not flip
            i = (before + first) // 2
        else:
            return True, first, None


def _probe(snap: Snapshot, step: dict[str, float], phase: str, param: str | None) -> str | Candidate:
    """The status of ``step``, or the candidate that evaluates it when nobody has."""
    key = rates_key(step)
    status = snap.status(key)
    if status == FREE:
        return Candidate(key, phase, param, step.get(param) if param is not None else None, dict(step))
    return status


def _kept(choice: Choice) -> float:
    """The bytes a setting keeps of its layer's weights, in float parameters: ``(1 - rate) x bits / 32``."""
    rate, bits = choice
    return (1 - rate) * (bits or 32) / 32


def _violation(trial: FrozenTrial) -> float:
    return float(trial.constraints.get("accuracy", 0.0))


def _value(option: tuple[float, float]) -> float:
    """Bytes bought per unit of cost (a free layer is worth the most)."""
    cost, saving = option
    return math.inf if cost <= 0 else saving / cost


@functools.lru_cache(maxsize=64)
def _knapsack(options: tuple[tuple[str, tuple[tuple[Choice, tuple[float, float]], ...]], ...],
              slack: float) -> tuple[tuple[str, Choice], ...]:
    """One setting or none per layer (``options``: per layer, (setting, (cost, saving)) pairs), the largest
    total saving with the summed costs within ``slack`` (costs rounded up to 1/RESOLUTION of the
    slack, so rounding never lets the plan exceed it). Cached: the measurements behind a plan
    never change, and every later decision of the study asks for the same plan."""
    if slack <= 0:
        return ()
    best = [0.0] * (RESOLUTION + 1)  # best[c]: the largest saving within c units
    picks: list[list[tuple[Choice | None, int]]] = []  # per layer and c: (setting, units it used)
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
