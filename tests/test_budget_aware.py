"""The budget-aware sampler (beyond the paper) and the maximize mode every PrimeSVT sampler has."""

from __future__ import annotations

import json
import threading

import optuna
import pytest
from optuna.trial import TrialState

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.plugin import BudgetAwareSampler, PrioritizedSampler, SyntheticObjective, UniformSampler
from _paper_rule import PruningObjective, SyntheticObjective  # noqa: E402,F811 (the point rule)
from primesvt_optuna.plugin.result import result
from primesvt_optuna.plugin.samplers._budget_aware import _gallop, _knapsack
from primesvt_optuna.plugin.samplers._claims import ACCEPTED, FREE, HELD, REJECTED

optuna.logging.set_verbosity(optuna.logging.ERROR)

GRID = [round(0.1 * i, 1) for i in range(1, 10)]
# the largest layer is fragile: alone it passes only at 0.2, using two thirds of the 3-point budget
SIZES = {"big": 4000, "mid": 3000, "small": 1000}
SENS = {"big": 0.5, "mid": 0.01, "small": 0.01}


def make(**kwargs) -> SyntheticObjective:
    return SyntheticObjective(SIZES, **{"sensitivity": SENS, "max_accuracy_drop": 0.03, "memory_target": 0.3,
                                        "grid": GRID, "n_images": 10000, "batch_size": 1000, **kwargs})


def run(sampler, obj=None, **kwargs) -> optuna.Study:
    obj = obj or make()
    study = optuna.create_study(directions=obj.directions, sampler=sampler)
    study.optimize(obj, **kwargs)
    return study


def test_finds_the_allocation_greedy_largest_first_cannot_see():
    """Largest-first commits big at 0.2 (2 of the 3 points), then mid at 0.9, and stops at the
    target (43.75%). Planning over all measurements puts mid and small at 0.9 first (1.6 points)
    and then fits big at 0.1: 50%. Both meet both constraints."""
    study = run(BudgetAwareSampler(grid=GRID))
    greedy, planned = result(run(PrioritizedSampler(grid=GRID))), result(study)
    # big's bound (0.2) is searched 0.9, 0.8, 0.6, 0.2 (doubling gaps), then back 0.4, 0.3: 6 trials, not 8
    assert [t.params["rate:big"] for t in study.trials if t.user_attrs["phase"] == "robustness"
            and t.params["rate:big"]] == [0.9, 0.8, 0.6, 0.2, 0.4, 0.3]
    assert greedy.both_met and planned.both_met
    assert greedy.selected["rates"] == {"big": 0.2, "mid": 0.9}
    assert planned.selected["rates"] == {"big": 0.1, "mid": 0.9, "small": 0.9}
    assert planned.selected["memory_saving"] == pytest.approx(0.5)
    assert planned.selected["memory_saving"] > greedy.selected["memory_saving"] + 0.05
    assert planned.selected["accuracy_drop"] <= 0.03


def test_a_plan_that_fails_is_repaired_by_backing_off_the_worst_bytes_per_point():
    """With interaction between layers the additive plan (all three at 0.9) fails on the model. The
    repair sequence backs off the layer buying the fewest bytes per point (small) one grid step at
    a time until dropped, then the next (mid). The search probes steps 0, 1, 3, 7, 15 (doubling
    gaps) and halves back (11, 9, 10) to the first that passes, step 10: 8 evaluations where
    step by step needs 11. The extension then tries small again: at its bound, then at the lowest
    rate, and both fail, so no rate between is tried."""
    obj = make(sensitivity={"big": 0.01, "mid": 0.01, "small": 0.01}, interaction=0.02)
    study = run(BudgetAwareSampler(grid=GRID), obj)
    phases = [t.user_attrs["phase"] for t in study.trials]
    plans = [{k.removeprefix("rate:"): v for k, v in t.params.items() if v}
             for t in study.trials if t.user_attrs["phase"] == "plan"]
    repair = [*({"big": 0.9, "mid": 0.9, "small": r} for r in reversed(GRID)),
              *({"big": 0.9, "mid": r} for r in reversed(GRID))]
    assert repair[10] == {"big": 0.9, "mid": 0.8}
    assert plans == [repair[i] for i in (0, 1, 3, 7, 15, 11, 9, 10)]
    assert phases[0] == "reference" and phases.count("reference") == 1
    assert phases[len(phases) - phases[::-1].index("plan"):][:1] == ["extend"]
    assert [t.params["rate:small"] for t in study.trials if t.user_attrs["phase"] == "extend"] == [0.9, 0.1]
    res = result(study)
    assert res.both_met and res.selected["rates"] == {"big": 0.9, "mid": 0.8}
    assert res.selected["accuracy_drop"] <= 0.03
    greedy = result(run(PrioritizedSampler(grid=GRID), make(sensitivity={"big": 0.01, "mid": 0.01, "small": 0.01},
                                                             interaction=0.02)))
    assert res.selected["memory_saving"] == pytest.approx(0.75)
    assert res.selected["memory_saving"] > greedy.selected["memory_saving"] + 0.2


def interacting(target: float | None, **kwargs) -> SyntheticObjective:
    """Layers that cost more together than alone: the plan (big 0.9, small 0.2) saves 52.2%."""
    return SyntheticObjective({"big": 5000, "mid": 3000, "small": 1000},
                              sensitivity={"big": 0.02, "mid": 0.02, "small": 0.1}, interaction=0.04,
                              max_accuracy_drop=0.03, memory_target=target, grid=GRID, n_images=10000, batch_size=1000,
                              **kwargs)


def test_a_plan_below_the_memory_target_falls_back_on_the_walk_from_the_measured_bounds():
    """Solo costs are additive in the plan, but here layers interact: the plan (big 0.9, small
    0.2: 52.2%) passes and misses the 60% target, and no extension on top of it passes beyond
    58.9% - 55.6%. Largest-first on top of its own commits finds big 0.9 + mid 0.3 (60.0%). With a
    target the sampler walks from the bounds it already measured (no layer measured alone again)
    and, since the walk met the target, extends the walk's commit; without one it never walks."""
    targeted = run(BudgetAwareSampler(grid=GRID), interacting(0.6))
    untargeted = run(BudgetAwareSampler(grid=GRID), interacting(None))
    phases = [t.user_attrs["phase"] for t in targeted.trials]
    others = [t.user_attrs["phase"] for t in untargeted.trials]
    assert "walk" in phases and "walk" not in others
    assert phases.index("walk") > phases.index("plan") and phases.count("robustness") == others.count("robustness")
    walked, planned = result(targeted), result(untargeted)
    assert planned.selected["rates"] == {"big": 0.9, "small": 0.2}
    assert walked.both_met and walked.selected["rates"] == {"big": 0.9, "mid": 0.3}
    assert walked.selected["memory_saving"] == pytest.approx(0.6)
    assert planned.selected["memory_saving"] == pytest.approx(0.5222, abs=1e-4)
    assert result(run(PrioritizedSampler(grid=GRID), interacting(0.6))).selected["rates"] == walked.selected["rates"]


def test_the_walk_starts_only_when_the_budget_left_after_the_plan_covers_measuring_its_layers_alone():
    """The walk needs big and mid (90% of each: 80% >= the 60% target); measuring them alone cost
    two evaluations. With exactly that many images left after the plan it walks, with one image
    less it extends the plan instead (and a walk that cannot finish would have starved it)."""
    unlimited = run(BudgetAwareSampler(grid=GRID), interacting(0.6))
    before = [t for t in unlimited.trials if t.user_attrs["phase"] in ("reference", "robustness", "plan")]
    alone = [t for t in before if t.user_attrs["phase"] == "robustness" and t.user_attrs["layer"] in ("big", "mid")]
    needed = sum(t.user_attrs["images_evaluated"] for t in before + alone)
    for budget, walks in ((needed, True), (needed - 1, False)):
        study = run(BudgetAwareSampler(grid=GRID, budget_images=budget), interacting(0.6))
        phases = [t.user_attrs["phase"] for t in study.trials]
        assert ("walk" in phases) is walks, (budget, phases)
        assert walks or "extend" in phases


def test_knapsack_is_exact_on_a_small_case():
    # (cost, saving) per rate; slack 1.0: a+c (0.5+0.5) beats b alone (1.0, less saving)
    options = (("a", ((0.5, (0.5, 10.0)),)), ("b", ((0.9, (1.0, 15.0)),)), ("c", ((0.5, (0.5, 10.0)),)))
    assert dict(_knapsack(options, 1.0)) == {"a": 0.5, "c": 0.5}
    assert dict(_knapsack(options, 0.99)) == {"a": 0.5}  # rounding up never exceeds the slack
    assert _knapsack(options, 0.0) == ()


@pytest.mark.parametrize("walks", [False, True])
def test_two_threads_claim_distinct_configurations_and_select_the_same(walks):
    objective = (lambda **kw: interacting(0.6, **kw)) if walks else make
    single = run(BudgetAwareSampler(grid=GRID), objective())
    shared = run(BudgetAwareSampler(grid=GRID, poll_interval=0.02), objective(delay=0.002), n_jobs=2)
    keys = [t.system_attrs["primesvt:claim"]["key"] for t in shared.trials if t.user_attrs["phase"] != "idle"]
    assert len(keys) == len(set(keys))
    assert ("walk" in [t.user_attrs["phase"] for t in shared.trials]) is walks
    assert result(shared).selected["rates"] == result(single).selected["rates"]


@pytest.mark.parametrize(("obj", "stop_after"), [(make(), 6), (interacting(0.6), 12)])  # 12: inside the walk
def test_resume_continues_the_plan(obj, stop_after):
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(directions=obj.directions, sampler=BudgetAwareSampler(grid=GRID), storage=storage,
                                study_name="s")
    study.optimize(obj, n_trials=stop_after)
    resumed = optuna.load_study(study_name="s", storage=storage, sampler=BudgetAwareSampler(grid=GRID))
    resumed.optimize(obj)
    assert result(resumed).selected["rates"] == result(run(BudgetAwareSampler(grid=GRID), obj)).selected["rates"]


@pytest.mark.parametrize("cls", [PrioritizedSampler, BudgetAwareSampler, UniformSampler])
def test_image_budget_is_never_exceeded(cls):
    obj = make()
    budget = 3 * obj.eval_images + 500
    kwargs = {"walk_all": True} if cls is PrioritizedSampler else {}
    study = run(cls(grid=GRID, budget_images=budget, **kwargs), obj)
    spent = sum(t.user_attrs.get("images_evaluated") or 0 for t in study.trials)
    assert spent <= budget
    assert study.trials[-1].user_attrs["phase"] == "idle" and "budget" in study.trials[-1].user_attrs["cut_reason"]


class Counting(SyntheticObjective):
    """Counts the images it really passes forward (evaluation and recalibration), whatever the
    trials record; ``recal`` images of BatchNorm recalibration per pruned model."""

    def __init__(self, *args, recal: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spent, self.recal, self._count = 0, recal, threading.Lock()

    def recalibration_images(self, rates):
        return self.recal if any(rate > 0 for rate in rates.values()) else 0

    def iter_batches(self, rates):
        with self._count:
            self.spent += self.recalibration_images(rates)
        for correct, n in super().iter_batches(rates):
            with self._count:
                self.spent += n
            yield correct, n


def counting(**kwargs) -> Counting:
    recal = kwargs.pop("recal", 0)
    return Counting(SIZES, recal=recal, **{"sensitivity": SENS, "max_accuracy_drop": 0.03, "memory_target": 0.3,
                                           "grid": GRID, "n_images": 10000, "batch_size": 1000, **kwargs})


@pytest.mark.parametrize("cls", [PrioritizedSampler, BudgetAwareSampler])
def test_image_budget_holds_with_workers_recalibration_and_failures(cls):
    """Every image passed forward counts, and the budget reserves the most one trial costs for
    every trial it starts: K workers starting at once, BatchNorm recalibration (which the
    reference, unpruned, does not do) and trials that fail after evaluating."""
    kwargs = {"walk_all": True} if cls is PrioritizedSampler else {}
    cases = [  # (objective, budget, optimize kwargs)
        (counting(delay=0.005), 25_000, {"n_jobs": 4}),
        (counting(recal=3000, sensitivity={"big": 0.01, "mid": 0.01, "small": 0.01}), 20_000, {}),
        (counting(nan=[("big", 0.9), ("big", 0.8)], sensitivity={"big": 0.01, "mid": 0.01, "small": 0.01}),
         35_000, {}),
    ]
    for obj, budget, opt in cases:
        study = run(cls(grid=GRID, budget_images=budget, poll_interval=0.02, **kwargs), obj, **opt)
        recorded = sum((t.user_attrs.get("images_evaluated") or 0) + (t.user_attrs.get("images_recalibrated") or 0)
                       for t in study.trials)
        assert obj.spent <= budget and recorded == obj.spent, (obj.recal, opt, obj.spent, recorded)
        assert study.user_attrs["primesvt:trial_images"] == obj.eval_images + obj.recal


def test_maximize_mode_goes_past_the_memory_target_within_its_budget():
    """Single shot stops at the target; with an image budget (and walk_all) the walk goes on and
    saves more, spending no more than the budget."""
    single = run(PrioritizedSampler(grid=GRID))
    budget = 60 * make().eval_images
    more = run(PrioritizedSampler(grid=GRID, walk_all=True, budget_images=budget))
    assert result(more).selected["memory_saving"] > result(single).selected["memory_saving"]
    assert sum(t.user_attrs.get("images_evaluated") or 0 for t in more.trials) <= budget


def test_budget_must_be_positive():
    for bad in (0, -5, 2.5, True):
        with pytest.raises(PrimeSVTError, match="budget_images"):
            BudgetAwareSampler(budget_images=bad)


def test_a_plan_below_the_memory_target_is_evaluated_not_cut_for_memory():
    """The plan and its extensions are steps towards a larger saving: the memory pre-check (which
    rejects complete configurations below the target unevaluated) must not cut them, or a target
    above the first plan could never be reached by extending it."""
    study = run(BudgetAwareSampler(grid=GRID), make(memory_target=0.7))
    steps = [t for t in study.trials if t.user_attrs.get("phase") in ("plan", "extend")]
    assert steps and all(t.user_attrs.get("images_evaluated", 0) > 0 for t in steps)
    assert not any(str(t.user_attrs.get("cut_reason", "")).startswith("memory") for t in study.trials)
    best = max((t for t in steps if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["constraint_accuracy"] <= 0),
               key=lambda t: t.user_attrs["memory_saving"])
    assert best.user_attrs["memory_saving"] == pytest.approx(0.5)  # mid and small at 0.9 + big at 0.2, as planned


class _Statuses:
    """A snapshot stand-in: the status of each configuration, by its rate of layer ``a``."""

    def __init__(self, statuses: dict[float, str]) -> None:
        self.statuses, self.asked = statuses, []

    def status(self, key: str) -> str:
        rate = dict(json.loads(key.removeprefix("rates:"))).get("a", 0.0)
        self.asked.append(rate)
        return self.statuses.get(rate, FREE)


@pytest.mark.parametrize(("passing", "probes", "found"), [
    (0.9, [0.9], 0),                                      # a robust layer: one evaluation
    (0.2, [0.9, 0.8, 0.6, 0.2, 0.4, 0.3], 7),              # doubling gaps, then halving back
    (None, [0.9, 0.8, 0.6, 0.2, 0.1], None),               # nothing passes: the last step decides
])
def test_gallop_probes_doubling_gaps_then_halves_back(passing, probes, found):
    steps = [{"a": r} for r in reversed(GRID)]
    snap = _Statuses({r: ACCEPTED if passing is not None and r <= passing else REJECTED for r in GRID})
    assert _gallop(snap, steps, "robustness", "a") == (True, found, None)
    assert snap.asked == probes


@pytest.mark.parametrize(("passing", "probes", "found"), [
    (0.9, [0.9], 0),                                       # the bound holds on top: one evaluation
    (None, [0.9, 0.1], None),                              # nothing passes: two evaluations, not five
    (0.2, [0.9, 0.1, 0.8, 0.6, 0.2, 0.4, 0.3], 7),         # something passes: the same gallop after
])
def test_gallop_with_last_second_asks_the_lowest_step_after_the_first_fails(passing, probes, found):
    steps = [{"a": r} for r in reversed(GRID)]
    snap = _Statuses({r: ACCEPTED if passing is not None and r <= passing else REJECTED for r in GRID})
    assert _gallop(snap, steps, "extend", "a", last_second=True) == (True, found, None)
    assert list(dict.fromkeys(snap.asked)) == probes  # distinct configurations, in the order first asked


def test_gallop_with_last_second_asks_for_the_lowest_step_next():
    steps = [{"a": r} for r in reversed(GRID)]
    known, found, candidate = _gallop(_Statuses({0.9: REJECTED}), steps, "extend", "a", last_second=True)
    assert (known, found) == (False, None) and candidate.rates == {"a": 0.1} and candidate.phase == "extend"
    assert _gallop(_Statuses({0.9: REJECTED, 0.1: HELD}), steps, "extend", "a", last_second=True) == (False, None, None)


def test_gallop_asks_for_the_next_probe_and_waits_on_a_held_one():
    steps = [{"a": r} for r in reversed(GRID)]
    known, found, candidate = _gallop(_Statuses({0.9: REJECTED, 0.8: REJECTED}), steps, "robustness", "a")
    assert (known, found) == (False, None) and candidate.rates == {"a": 0.6} and candidate.phase == "robustness"
    assert _gallop(_Statuses({0.9: REJECTED, 0.8: HELD}), steps, "robustness", "a") == (False, None, None)


def many_layers(**kwargs) -> SyntheticObjective:
    """Eight robust layers (each passes alone at 0.9, all together too), 1,000 images per evaluation."""
    sizes = {f"l{i}": 1000 * (9 - i) for i in range(1, 9)}
    return SyntheticObjective(sizes, **{"sensitivity": {n: 0.001 for n in sizes}, "max_accuracy_drop": 0.03,
                                        "grid": GRID, "n_images": 1000, "batch_size": 1000, **kwargs})


@pytest.mark.parametrize(("budget", "measured"), [(16_000, 8), (15_999, 7), (8_500, 4)])
def test_bounds_get_half_the_budget_when_one_evaluation_per_layer_would_cost_more(budget, measured):
    """8 layers x 1,000 images > half of 15,999: bound searches start, largest first, only until
    half the budget is spent (the reference and 7 bounds: 8,000 images), then the plan runs on the
    measured layers; at 16,000 every layer is measured. At 8,500 measuring every bound alone would
    spend the budget before any plan (1,000 + 8 x 1,000); capped, the plan of the 4 largest runs."""
    study = run(BudgetAwareSampler(grid=GRID, budget_images=budget), many_layers())
    bounds = [t.user_attrs["layer"] for t in study.trials if t.user_attrs["phase"] == "robustness"]
    assert bounds == [f"l{i}" for i in range(1, measured + 1)]
    assert "plan" in [t.user_attrs["phase"] for t in study.trials]
    assert result(study).selected["rates"] == {f"l{i}": 0.9 for i in range(1, measured + 1)}
    assert sum(t.user_attrs.get("images_evaluated") or 0 for t in study.trials) <= budget


def test_two_threads_cap_the_bounds_too():
    """With two workers a bound search in flight when half the budget is reached still finishes,
    so one layer more may be measured than one worker measures; none is claimed twice."""
    study = run(BudgetAwareSampler(grid=GRID, budget_images=15_999, poll_interval=0.02), many_layers(delay=0.002),
                n_jobs=2)
    keys = [t.system_attrs["primesvt:claim"]["key"] for t in study.trials if t.user_attrs["phase"] != "idle"]
    assert len(keys) == len(set(keys))
    bounds = [t.user_attrs["layer"] for t in study.trials if t.user_attrs["phase"] == "robustness"]
    assert sorted(bounds) in ([f"l{i}" for i in range(1, 8)], [f"l{i}" for i in range(1, 9)])
    assert "plan" in [t.user_attrs["phase"] for t in study.trials]
    assert sum(t.user_attrs.get("images_evaluated") or 0 for t in study.trials) <= 15_999
