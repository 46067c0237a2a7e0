"""Confirmed acceptance, the default: what a study delivers meets the accuracy constraint on images
the search never saw, at the stated confidence.

* the paired bound (``acceptance.bounds``) has its closed forms and covers the true drop;
* on a SyntheticObjective that simulates each image's correctness (``noise``), the default's
  delivery keeps its *true* drop within budget in at least 93% of 200 seeds, where the point
  rule's selection does in at most 80%;
* the ladder is a function of the search trials alone and stops at the first failure;
* K workers and a resume deliver what one worker delivers; a worker killed during confirmation
  resumes without evaluating any confirmation twice;
* bad settings end in one line before any work.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

import _synthetic_walk as walk
from primesvt_optuna.acceptance.bounds import drop_upper_bound, min_images
from primesvt_optuna.acceptance.confirm import (CONFIRM, LEGACY_RUNGS, auto_holdout, RUNGS, Ladder, anticipated_drop, ladder, safe_steps,
                                                study_ladder,
                                                study_rungs)
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.plugin import BudgetAwareSampler, PrioritizedSampler, PruningObjective, SyntheticObjective
from primesvt_optuna.plugin.result import result
from primesvt_optuna.plugin.samplers._claims import _claimed_rates, rates_key

SIZES = {"a": 4000, "b": 3000, "c": 2000, "d": 1000, "e": 800, "f": 600}
SENSITIVITY = {"a": 0.02, "b": 0.025, "c": 0.015, "d": 0.03, "e": 0.04, "f": 0.05}
GRID = (0.3, 0.5, 0.7, 0.9)
BUDGET = 0.03


def test_paired_bound_closed_forms_and_order() -> None:
    z2 = 1.6448536269514722 ** 2
    assert drop_upper_bound(0, 0, 180, 0.95) == pytest.approx(z2 / (180 + z2), abs=1e-9)
    assert drop_upper_bound(180, 0, 180, 0.95) == 1.0
    bounds = [drop_upper_bound(b, 3, 359, 0.95) for b in range(3, 20)]
    assert all(x < y for x, y in zip(bounds, bounds[1:])), "more images lost only can raise the bound"
    assert all(drop_upper_bound(b, 3, 359, 0.95) > (b - 3) / 359 for b in range(3, 20))
    assert drop_upper_bound(8, 4, 359, 0.99) > drop_upper_bound(8, 4, 359, 0.95) > drop_upper_bound(8, 4, 359, 0.6)
    # only the discordant images carry variance: far tighter than the same drop with many of them
    assert drop_upper_bound(4, 0, 359, 0.95) < drop_upper_bound(40, 36, 359, 0.95)
    assert min_images(0.03, 0.95) == 88 and drop_upper_bound(0, 0, 88, 0.95) <= 0.03 < drop_upper_bound(0, 0, 87, 0.95)
    with pytest.raises(PrimeSVTError, match=r"confidence must lie in \(0.5, 1\)"):
        drop_upper_bound(1, 0, 10, 1.0)


@pytest.mark.parametrize(("n", "lose", "gain"), [(180, 0.04, 0.01), (359, 0.03, 0.02), (540, 0.02, 0.0)])
def test_paired_bound_covers_the_true_drop(n: int, lose: float, gain: float) -> None:
    """2,000 draws of (b, c) from the true discordance rates: the 95% bound lies above the true
    drop ``lose - gain`` in at least 93% of them (score bounds are near, not exactly, nominal)."""
    rng = np.random.default_rng(n)
    draws = rng.multinomial(n, [lose, gain, 1 - lose - gain], size=2000)
    covered = np.mean([drop_upper_bound(int(b), int(c), n, 0.95) >= lose - gain for b, c, _ in draws])
    assert covered >= 0.93, covered


def _deliver(seed: int, accept: str) -> tuple[float | None, float]:
    """(true drop of the delivery, saving), (None, 0) when nothing is delivered."""
    objective = SyntheticObjective(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=BUDGET, memory_target=0.3,
                                   n_images=2000, noise=0.02, noise_seed=seed, accept=accept, grid=GRID, pruner=None)
    study = optuna.create_study(directions=objective.directions, sampler=BudgetAwareSampler(grid=GRID))
    study.optimize(objective)
    found = result(study)
    if not found.both_met:
        return None, 0.0
    rates = found.selected["rates"]
    return objective.base_accuracy - objective.true_accuracy(rates), found.selected["memory_saving"]


def test_the_default_keeps_its_true_drop_within_budget_where_the_point_rule_does_not() -> None:
    """200 seeds of per-image sampling error (each seed draws every image's correctness again):
    the point rule's selection (the largest search saving whose measured drop fits) exceeds the
    budget in truth most of the time (the winner's curse); the default's delivery keeps its true
    drop within it in >= 93% of the seeds, and delivers something in a fair share of them."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = range(200)
    point = [_deliver(seed, "point") for seed in seeds]
    confirmed = [_deliver(seed, "confirmed") for seed in seeds]
    assert all(drop is not None for drop, _ in point), "the point rule always selects something here"
    point_held = np.mean([drop <= BUDGET + 1e-9 for drop, _ in point])
    held = np.mean([drop is None or drop <= BUDGET + 1e-9 for drop, _ in confirmed])
    delivered = [saving for drop, saving in confirmed if drop is not None]
    assert point_held <= 0.80, point_held
    assert held >= 0.93, held
    assert len(delivered) >= 50 and min(delivered) >= 0.3, "a delivery meets the memory target"


def _trial(number: int, drop: float, saving: float, rates: dict[str, float], memory_met: bool = True,
           phase: str = "search") -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        params={f"rate:{k}": v for k, v in rates.items()},
        distributions={f"rate:{k}": optuna.distributions.FloatDistribution(0.0, 0.9) for k in rates},
        values=[0.9 - drop, 100.0], user_attrs={"accuracy_drop": drop, "accuracy": 0.9 - drop, "model_bytes": 100,
                                                "memory_saving": saving, "phase": phase},
        system_attrs={"constraints:accuracy": drop - BUDGET, "constraints:memory": -1.0 if memory_met else 1.0},
    )
    trial.number = number
    return trial


def test_the_ladder_climbs_from_the_safest_configuration_that_meets_the_target() -> None:
    """Rung 1: the smallest search drop among those meeting the target; the last rung: the largest
    saving; in between, evenly spaced savings; one configuration is one rung; below the target or
    over the budget, no rung."""
    trials = [
        _trial(1, 0.001, 0.05, {"a": 0.3}, memory_met=False),  # misses the target: no rung
        _trial(2, 0.005, 0.30, {"a": 0.5}),
        _trial(3, 0.010, 0.40, {"a": 0.7}),
        _trial(4, 0.020, 0.50, {"a": 0.9}),
        _trial(5, 0.029, 0.60, {"a": 0.9, "b": 0.3}),
        _trial(6, 0.040, 0.70, {"a": 0.9, "b": 0.9}),  # over the budget on the search images
    ]
    rungs = ladder(trials, _claimed_rates, rungs=4)
    assert [(r.number, r.trial.number) for r in rungs] == [(1, 2), (2, 3), (3, 4), (4, 5)]
    steps = Ladder(rungs, reference=trials[0])
    assert steps.next_rung() is rungs[0] and steps.delivered is None and not steps.done
    passed, failed = (_trial(9, 0, 0, {}, phase=CONFIRM) for _ in range(2))
    passed.user_attrs["confirmed"], failed.user_attrs["confirmed"] = True, False
    steps.confirmations = {1: passed, 2: passed, 3: failed}
    assert steps.delivered is rungs[1] and steps.done and steps.next_rung() is None, "stops at the first failure"


def test_a_lucky_search_drop_far_above_the_target_does_not_go_first() -> None:
    """Rungs come from saving bands: the least pruned candidates go first, so a configuration whose
    search drop was lucky (0 at 62% saving) cannot become rung 1 and stop the ladder at its
    failure; the point rule's selection is still the last rung."""
    trials = [
        _trial(1, 0.010, 0.30, {"a": 0.5}),
        _trial(2, 0.012, 0.35, {"a": 0.6}),
        _trial(3, 0.000, 0.62, {"a": 0.9, "b": 0.5}),
        _trial(4, 0.029, 0.65, {"a": 0.9, "b": 0.6}),
    ]
    rungs = ladder(trials, _claimed_rates, rungs=4)
    assert [r.trial.number for r in rungs] == [1, 3, 4]
    assert [r.number for r in rungs] == [1, 3, 4], "rung 2's band is empty: it repeats rung 3's choice, one rung"


@pytest.mark.parametrize(("target", "extra"), [(0.1, 0), (0.3, 0), (0.4, 1), (0.5, 1)])
def test_budget_aware_gives_the_ladder_a_safe_step_near_the_target(target: float, extra: int) -> None:
    """Under confirmed acceptance the budget-aware plan (which maximizes the saving: 71% here) is
    backed off along its repair sequence to the last step still predicted to meet the memory
    target: the ladder's first rung then meets the target and saves far less than the plan. A
    one-layer step that was measured alone costs nothing (10%, 30%: the layer's bound is the
    step); otherwise it is one more evaluation, and the point rule's search never makes it."""
    def plans(accept: str) -> tuple[list[float], optuna.Study]:
        objective = SyntheticObjective(SIZES, sensitivity={k: v / 2 for k, v in SENSITIVITY.items()},
                                       max_accuracy_drop=BUDGET, memory_target=target, n_images=2000, noise=0.02,
                                       noise_seed=0, grid=GRID, pruner=None, accept=accept,
                                       **({"holdout": 0.5} if accept == "confirmed" else {}))
        study = optuna.create_study(directions=objective.directions, sampler=BudgetAwareSampler(grid=GRID))
        study.optimize(objective)
        return [t.user_attrs["memory_saving"] for t in study.trials if t.user_attrs.get("phase") == "plan"], study

    point, _ = plans("point")
    confirmed, study = plans("confirmed")
    assert confirmed[: len(point)] == point and len(confirmed) == len(point) + extra
    first = study_ladder(study.trials, _claimed_rates).rungs[0]
    assert target <= first.saving < max(point) - 0.15, (first.saving, point)


def test_an_empty_band_gives_no_rung_so_the_rungs_keep_their_order() -> None:
    """Candidates at 30%, 75% and 90% (the last the luckiest): the band [50%, 70%) is empty and gives
    no rung, so 90% is tried after 75%, not before it."""
    trials = [_trial(1, 0.010, 0.30, {"a": 0.5}), _trial(2, 0.020, 0.75, {"a": 0.9, "b": 0.5}),
              _trial(3, 0.005, 0.90, {"a": 0.9, "b": 0.9})]
    assert [(r.number, r.trial.number) for r in ladder(trials, _claimed_rates, rungs=4)] == [(1, 1), (3, 2), (4, 3)]


@pytest.mark.parametrize("sampler", [BudgetAwareSampler, PrioritizedSampler])
def test_a_search_its_image_budget_ended_is_finished(sampler: type) -> None:
    """A budget too small for the whole search: the sampler stops, confirms what it has, and the
    result calls the search finished (it asked for one more trial than the budget holds)."""
    objective = SyntheticObjective(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=BUDGET, memory_target=0.7,
                                   n_images=2000, grid=GRID, pruner=None, holdout=0.5)
    study = optuna.create_study(directions=objective.directions,
                                sampler=sampler(grid=GRID, budget_images=(4 + RUNGS + 1) * 1000 + 500))
    study.optimize(objective)
    found = result(study)
    searched = [t for t in study.trials if t.user_attrs.get("phase") not in (CONFIRM, "idle")]
    assert len(searched) == 4 and found.finished and not found.message.startswith("Search not finished"), found.message


def _study(url: str, name: str, k: int) -> dict:
    study = walk.create(url, name, walk.make_sampler())
    study.optimize(walk.make_objective(), n_jobs=k)
    return walk.summary(study)


@pytest.mark.parametrize("k", [1, 2])
def test_threads_and_a_resume_deliver_the_one_worker_confirmation(tmp_path, k: int) -> None:
    """Two threads, and a study stopped mid-confirmation then resumed: the same confirmations, the
    same delivery, no confirmation evaluated twice."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    reference = walk.expected()
    assert reference["confirm_trials"], "the reference confirms something"
    got = _study(f"sqlite:///{tmp_path}/k.db", "k", k)
    assert (got["selected"], got["confirmed"], got["duplicates"]) == (reference["selected"], reference["confirmed"], [])
    assert len(got["confirm_trials"]) == len(reference["confirm_trials"])

    url = f"sqlite:///{tmp_path}/resume.db"
    first = walk.create(url, "resume", walk.make_sampler())
    stop_at = reference["confirm_trials"][0]
    first.optimize(walk.make_objective(), n_trials=stop_at + 1)  # the unpruned model's confirmation only
    assert [t.user_attrs.get("phase") for t in first.trials].count(CONFIRM) == 1
    resumed = _study(url, "resume", 1)
    assert (resumed["selected"], resumed["confirmed"], resumed["duplicates"]) == (
        reference["selected"], reference["confirmed"], [])


@pytest.mark.slow
@pytest.mark.parametrize("point", ["claimed", "after_trial"])
def test_a_worker_killed_during_confirmation_resumes_without_a_duplicate(tmp_path, point: str) -> None:
    """Killed once a rung's confirmation is claimed, or evaluated but not yet stored: the same
    command delivers the uninterrupted selection and evaluates no confirmation twice."""
    reference = walk.expected()
    number = reference["confirm_trials"][1]
    url, script = f"sqlite:///{tmp_path}/study.db", str(Path(walk.__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIMESVT_FAULT")}
    killed = subprocess.run([sys.executable, script, url, "kill", "1", "0"], capture_output=True, text=True,
                            env={**env, "PRIMESVT_FAULT": f"{point}@{number}"}, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done = subprocess.run([sys.executable, script, url, "kill", "1", "0"], capture_output=True, text=True, env=env,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert (got["selected"], got["confirmed"], got["duplicates"]) == (reference["selected"], reference["confirmed"], [])
    assert "RUNNING" not in got["states"]


@pytest.mark.parametrize(("budget", "n", "k"), [(0.03, 180, 1), (0.03, 539, 9), (0.015, 180, 0), (0.02, 400, 3)])
def test_the_anticipated_drop_is_the_largest_loss_the_held_back_images_still_confirm(budget, n, k) -> None:
    assert anticipated_drop(budget, n, 0.95) == (k + 0.5) / n
    assert drop_upper_bound(k, 0, n, 0.95) <= budget < drop_upper_bound(k + 1, 0, n, 0.95)
    # k images lost of a search part one image smaller still pass, k + 1 of one image larger do not
    assert k / (n - 1) <= anticipated_drop(budget, n, 0.95) < (k + 1) / (n + 1)


def test_anticipate_steps_the_search_by_the_anticipated_drop_and_confirms_against_the_budget() -> None:
    """The search's accuracy constraint uses the allowance (every accepted search trial lost at
    most that much), the study records it, and the confirmation still judges the whole budget."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    objective = SyntheticObjective(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=BUDGET, memory_target=0.3,
                                   grid=GRID, n_images=2000, noise=0.02, noise_seed=3, pruner=None,
                                   search_drop="anticipate", holdout=0.5)
    allowance = anticipated_drop(BUDGET, 1000, 0.95)
    assert objective.constraints.search_allowance == allowance < BUDGET
    study = optuna.create_study(directions=objective.directions, sampler=BudgetAwareSampler(grid=GRID))
    study.optimize(objective)
    assert study.user_attrs["primesvt:constraints"]["search_allowance"] == allowance
    searched = [t for t in study.trials if t.user_attrs.get("phase") not in (None, CONFIRM)
                and t.user_attrs.get("accuracy_drop") is not None]
    assert searched and all((t.constraints["accuracy"] <= 0) == (t.user_attrs["accuracy_drop"] <= allowance + 1e-9)
                            for t in searched if "accuracy" in t.constraints)
    res = result(study)
    assert res.both_met and res.selected["accuracy_drop"] <= allowance + 1e-9
    assert res.selected["confirmation"]["bound"] <= BUDGET  # judged against the user's budget
    budget = SyntheticObjective(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=BUDGET, n_images=1000)
    assert budget.constraints.search_allowance is None and "search_allowance" not in budget.constraints.to_dict()


def test_the_automatic_share_keeps_200_search_images_within_half_and_four_fifths_when_pruning() -> None:
    """``holdout="auto"`` (the default): pruning alone, all but 200 evaluation images are held back,
    at least half and at most 0.8 of them; with a precision grid, half; the objectives resolve it
    from their own evaluation images and grid."""
    assert [auto_holdout(n) for n in (80, 359, 400, 600, 1000, 1078, 50_000)] == [0.5, 0.5, 0.5, 0.67, 0.8, 0.8, 0.8]
    synthetic = SyntheticObjective(SIZES, n_images=1000)
    assert (synthetic.holdout, synthetic.confirm_images, synthetic.eval_images) == (0.8, 800, 200)
    assert SyntheticObjective(SIZES, n_images=400).holdout == 0.5
    assert auto_holdout(1078, quantizing=True) == 0.5  # with a precision grid: half
    assert SyntheticObjective(SIZES, n_images=1000, precisions=("float", "int8")).holdout == 0.5
    assert SyntheticObjective(SIZES, n_images=1000, holdout=0.3).confirm_images == 300
    digits = PruningObjective("digits-2-64", eval_images=300)  # 300 images: all but 200 is a third, so half
    assert (digits.holdout, digits.split["holdout"]) == (0.5, 0.5)
    assert abs(digits.confirm_images - 150) <= 1 and digits.confirm_images + digits.eval_images == 300  # whole groups


def test_bad_settings_end_in_one_line_before_any_work() -> None:
    with pytest.raises(PrimeSVTError, match=r"^holdout is the share .* must lie in \(0, 1\) or be 'auto', got 1.0$"):
        SyntheticObjective(SIZES, holdout=1.0)
    with pytest.raises(PrimeSVTError, match=r"must lie in \(0, 1\) or be 'auto', got 'half'$"):
        SyntheticObjective(SIZES, holdout="half")
    with pytest.raises(PrimeSVTError, match=r"^confidence .*must lie in \(0.5, 1\), got 0.5"):
        SyntheticObjective(SIZES, confidence=0.5)
    with pytest.raises(PrimeSVTError, match=r"^the confirmation part has 40 images, too few to confirm anything at "
                                            r"95% \(at least 88 needed"):
        SyntheticObjective(SIZES, n_images=80)
    with pytest.raises(PrimeSVTError, match=r"^the confirmation part has \d+ images, too few"):
        PruningObjective("digits-2-64", eval_images=100, holdout=0.2)
    with pytest.raises(PrimeSVTError, match=r"^search_drop = 'anticipate' needs accept = 'confirmed'"):
        SyntheticObjective(SIZES, accept="point", search_drop="anticipate")
    with pytest.raises(PrimeSVTError, match=r"^search_drop must be one of budget, anticipate, got 'half'$"):
        SyntheticObjective(SIZES, search_drop="half")


def test_a_study_under_the_point_rule_has_no_confirmation() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    objective = SyntheticObjective(SIZES, sensitivity=SENSITIVITY, memory_target=0.3, accept="point", grid=GRID)
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=GRID))
    study.optimize(objective)
    assert CONFIRM not in {t.user_attrs.get("phase") for t in study.trials}
    assert "confirmation" not in (result(study).selected or {})
    assert math.isclose(result(study).selected["memory_saving"], max(
        t.user_attrs["memory_saving"] for t in study.trials if t.user_attrs.get("feasible")))
    assert study_ladder(study.trials, _claimed_rates).rungs, "its search trials would still make a ladder"


def test_a_study_records_its_rung_count_and_an_older_study_keeps_four() -> None:
    """New studies confirm along RUNGS rungs and record it; a study confirmed before the count was
    recorded keeps the four rungs it was confirmed with (its delivery does not change on resume)."""
    def run(older: bool) -> optuna.Study:
        objective = SyntheticObjective(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=BUDGET, memory_target=0.2,
                                       n_images=2000, grid=GRID, pruner=None)
        study = optuna.create_study(directions=objective.directions, sampler=BudgetAwareSampler(grid=GRID))
        if older:  # what an older version had written before its first trial ended
            study.set_user_attr("primesvt:constraints", objective.constraints.to_dict())
        study.optimize(objective)
        return study

    new, old = run(older=False), run(older=True)
    assert new.user_attrs["primesvt:rungs"] == RUNGS == 8 and old.user_attrs["primesvt:rungs"] == LEGACY_RUNGS == 4
    assert study_rungs({}) == LEGACY_RUNGS
    for study, count in ((new, RUNGS), (old, LEGACY_RUNGS)):
        steps = {r.number: r.rates for r in study_ladder(study.trials, _claimed_rates, count).rungs}
        confirmed = {t.user_attrs["rung"]: _claimed_rates(t) for t in study.trials
                     if t.user_attrs.get("phase") == CONFIRM and t.user_attrs.get("rung")}
        assert confirmed and all(steps[n] == rates for n, rates in confirmed.items())  # the recorded ladder's rungs
        assert result(study).selected["confirmation"]["rung"] in steps


@pytest.mark.parametrize("sweep", ["lazy", "full"])
def test_the_walk_backs_its_last_commit_off_to_a_safe_step_under_confirmation(sweep: str) -> None:
    """Under confirmed acceptance the paper's walk, once it meets the target, evaluates its last
    commit at the lowest grid rate that still meets the target (the rates below are cut for
    memory before any image is read), records it, and the ladder starts from it, also where the
    full sweep had evaluated that configuration already as a robustness trial. The walk's own
    commits are those of the point rule, which never makes the step."""
    def run(accept: str) -> tuple[optuna.Study, PrioritizedSampler]:
        objective = SyntheticObjective(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=BUDGET, memory_target=0.2,
                                       n_images=2000, grid=GRID, accept=accept)  # the default pruner: memory pre-check
        sampler = PrioritizedSampler(grid=GRID, sweep=sweep)
        study = optuna.create_study(directions=objective.directions, sampler=sampler)
        study.optimize(objective)
        return study, sampler

    study, sampler = run("confirmed")
    point, point_sampler = run("point")
    state, plain = sampler.walk_state(study), point_sampler.walk_state(point)
    assert state.committed == plain.committed and state.memory_met
    last = state.commits[-1]
    safe = [t for t in study.trials if t.user_attrs.get("phase") == "safe"]
    assert not [t for t in point.trials if t.user_attrs.get("phase") == "safe"]
    before = {p: r for p, r in state.committed.items() if p != last.layer}
    lowest = min(r for r in GRID if r < last.rate and _meets_target(study, {**before, last.layer: r}))
    step = {**before, last.layer: lowest}
    assert study.user_attrs["primesvt:safe_step"] == rates_key(step)
    for t in safe:  # below the step: cut for memory, nothing read; the step itself evaluated
        rate = _claimed_rates(t)[last.layer]
        assert rate <= lowest and (t.user_attrs.get("images_evaluated", 0) == 0) == (rate < lowest), t.user_attrs
    evaluated = [t for t in study.trials if _claimed_rates(t) == step and t.user_attrs.get("phase") != CONFIRM]
    assert len(evaluated) == 1 and evaluated[0].user_attrs["phase"] == ("safe" if sweep == "lazy" else "robustness")
    assert study_ladder(study.trials, _claimed_rates, RUNGS, safe_steps(study.user_attrs)).rungs[0].rates == step


def _meets_target(study: optuna.Study, rates: dict[str, float]) -> bool:
    """Whether the study's trial of ``rates`` (any phase) meets the memory target."""
    return any(_claimed_rates(t) == rates and t.constraints.get("memory", 1) <= 0 for t in study.trials)
