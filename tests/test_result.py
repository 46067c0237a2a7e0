"""What a study delivers: the selection rule (the largest saving among all trials that meet both
constraints, said when it is not the walk's commit) and the confident acceptance rule (a one-sided
lower confidence bound of the validation accuracy must meet the floor)."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective
from _paper_rule import PruningObjective, SyntheticObjective  # noqa: E402,F811 (the point rule)
from primesvt_optuna.plugin.constraints import (
    Constraints,
    clopper_pearson_lower,
    clopper_pearson_lower_bisect,
    lower_confidence_bound,
    wilson_lower,
)
from primesvt_optuna.plugin.result import result, select

optuna.logging.set_verbosity(optuna.logging.ERROR)
SIZES = {"a": 3000, "b": 2000, "c": 1000}


def walk_study(objective: SyntheticObjective) -> optuna.Study:
    """The paper's walk with its full sweep: every single-layer trial is in the study."""
    sampler = PrioritizedSampler(grid=objective.grid, sweep="full")
    study = optuna.create_study(directions=objective.directions, sampler=sampler)
    study.optimize(objective)
    return study


# ----- the selection rule ---------------------------------------------------------------------


def test_a_robustness_trial_that_beats_the_walks_commit_is_selected_and_said():
    """Largest-first commits the fragile big layer `a` at 0.3 (15% saved, target 10% met) and stops;
    its sweep already showed `b` alone at 0.9 saves 30% within the budget."""
    objective = SyntheticObjective(SIZES, sensitivity={"a": 0.1, "b": 0.01, "c": 0.5}, memory_target=0.1,
                                   grid=[0.3, 0.6, 0.9])
    study = walk_study(objective)
    state = study.sampler.walk_state(study)
    assert state.done and state.committed == {"rate:a": 0.3}

    res = result(study)
    best = study.trials[res.selected["trial"]]
    assert res.both_met and res.selected["rates"] == {"b": 0.9} and best.user_attrs["phase"] == "robustness"
    assert res.selected["memory_saving"] == pytest.approx(0.3)
    assert res.selected["walk_commit"] is False
    assert res.walk_commit == {"trial": state.selected_trial, "rates": {"a": 0.3}, "accuracy": 0.891,
                               "model_bytes": 20400, "memory_saving": pytest.approx(0.15), "both_met": True}
    assert f"the walk committed trial {state.selected_trial}" in res.message
    assert "Not the walk's commit" in res.markdown()
    assert res.to_dict()["walk_commit"]["trial"] == state.selected_trial
    # no feasible trial saves more, and it is the one with the fewest bytes
    feasible = [t for t in study.trials if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())]
    assert min(t.user_attrs["model_bytes"] for t in feasible) == res.selected["model_bytes"]


def test_the_walks_commit_is_the_selection_when_it_is_the_best():
    objective = SyntheticObjective(SIZES, sensitivity={"a": 0.01, "b": 0.5, "c": 0.5}, memory_target=0.3,
                                   grid=[0.3, 0.6, 0.9])
    study = walk_study(objective)
    res = result(study)
    assert res.selected["walk_commit"] is True and res.selected["trial"] == res.walk_commit["trial"]
    assert res.selected["rates"] == {"a": 0.9} and "walk committed" not in res.message


def test_when_nothing_meets_both_the_walks_commit_is_kept_and_flagged():
    objective = SyntheticObjective(SIZES, sensitivity={"a": 0.1, "b": 0.01, "c": 0.5}, memory_target=0.9,
                                   grid=[0.3, 0.6, 0.9])
    study = walk_study(objective)
    res = result(study)
    assert not res.both_met and res.selected["walk_commit"] is True
    assert res.selected["trial"] == study.sampler.walk_state(study).selected_trial
    assert "cannot both be met" in res.message and len(res.closest)


def _trial(number_bytes: int, accuracy: float, *, acc_violation: float = -0.01, memory: float = -0.1):
    return create_trial(
        state=TrialState.COMPLETE, values=[accuracy, float(number_bytes)],
        params={"rate:a": 0.5}, distributions={"rate:a": FloatDistribution(0.0, 0.9, step=0.1)},
        user_attrs={"accuracy": accuracy, "model_bytes": number_bytes, "memory_saving": 1 - number_bytes / 1000},
        system_attrs={"constraints:accuracy": acc_violation, "constraints:memory": memory},
    )


def test_ties_go_to_higher_accuracy_then_lower_trial_number():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for t in (_trial(700, 0.90), _trial(600, 0.90, acc_violation=0.01),  # fewer bytes, accuracy infeasible
              _trial(650, 0.91, memory=0.05),  # memory infeasible
              _trial(700, 0.92), _trial(700, 0.92), _trial(800, 0.99)):
        study.add_trial(t)
    trials = study.get_trials(deepcopy=False)
    assert select(trials).number == 3  # 700 bytes: 0.92 beats 0.90; trial 3 before its twin 4
    assert result(study).selected["trial"] == 3
    # a walk whose commit is the same configuration as the best keeps its commit
    assert select(trials, walk=trials[4], is_walk=True).number == 4
    assert select(trials, walk=trials[5], is_walk=True).number == 3
    # nothing feasible: a walk keeps its commit, another policy the accuracy-feasible fewest bytes
    infeasible = [t for t in trials if t.number in (1, 2)]
    assert select(infeasible, walk=infeasible[0], is_walk=True).number == 1
    assert select(infeasible).number == 2


# ----- the confident acceptance rule ----------------------------------------------------------


def test_clopper_pearson_on_a_known_binomial_case():
    """340 of 359 right (94.71%) meets a 93% floor as measured, but its exact one-sided 95% lower
    bound is 92.33%: the confident rule rejects it; a 92% floor it accepts."""
    bound = clopper_pearson_lower(340, 359, 0.95)
    assert bound == pytest.approx(0.923306, abs=1e-6)
    assert clopper_pearson_lower_bisect(340, 359, 0.95) == pytest.approx(bound, abs=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert scipy_stats.binom.sf(339, 359, bound) == pytest.approx(0.05, rel=1e-9)  # P(X >= 340 | p = L) = 5%
    assert clopper_pearson_lower(0, 359, 0.95) == 0.0 and clopper_pearson_lower_bisect(0, 10, 0.9) == 0.0
    assert clopper_pearson_lower(10, 10, 0.95) == pytest.approx(0.05 ** (1 / 10))

    point = Constraints(max_accuracy_drop=None, min_accuracy=0.93)
    confident = dataclasses.replace(point, accept="confident")
    assert point.accuracy_violation(340 / 359, None) < 0  # accepted as measured
    violation = confident.accuracy_violation(340 / 359, None, 359)
    assert violation == pytest.approx(0.93 - bound, abs=1e-12) and violation > 0
    assert dataclasses.replace(confident, min_accuracy=0.92).accuracy_violation(340 / 359, None, 359) < 0
    # the fewest right images the rule accepts at the 93% floor
    assert confident.required_accuracy(0.93, 359) * 359 == pytest.approx(343)
    assert clopper_pearson_lower(343, 359, 0.95) >= 0.93 > clopper_pearson_lower(342, 359, 0.95)
    # a max_accuracy_drop floor works the same way (base 98.33%, 3 points: floor 95.33%)
    drop = Constraints(max_accuracy_drop=0.03, accept="confident", confidence=0.9)
    assert drop.accuracy_violation(0.96, 0.9833, 359) == pytest.approx(
        0.9533 - clopper_pearson_lower(round(0.96 * 359), 359, 0.9), abs=1e-12)


def test_wilson_lower_bound():
    z = 1.6448536269514722  # one-sided 95%
    n, p = 359, 340 / 359
    expected = (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert wilson_lower(340, 359, 0.95) == pytest.approx(expected, abs=1e-12)
    assert lower_confidence_bound(340, 359, 0.95, "wilson") == pytest.approx(0.924082, abs=1e-6)
    wilson = Constraints(max_accuracy_drop=None, min_accuracy=0.93, accept="confident", interval="wilson")
    assert wilson.accuracy_violation(340 / 359, None, 359) > 0


def test_constraints_record_the_rule_and_refuse_bad_settings():
    assert Constraints().to_dict() == {"max_accuracy_drop": 0.03, "min_accuracy": None, "memory_target": None,
                                       "memory_budget": None}  # unchanged: recorded studies still resume
    confident = Constraints.from_dict({"max_accuracy_drop": 0.03, "accept": "confident", "confidence": 0.9})
    assert confident.to_dict()["accept"] == "confident" and Constraints.from_dict(confident.to_dict()) == confident
    assert "one-sided 90% Clopper-Pearson lower bound" in confident.describe()
    for bad, message in (({"accept": "lucky"}, "accept must be one of"), ({"confidence": 1.0}, "confidence"),
                         ({"interval": "normal"}, "interval must be one of")):
        with pytest.raises(PrimeSVTError, match=message):
            Constraints.from_dict({"max_accuracy_drop": 0.03, "accept": "confident", **bad})
    with pytest.raises(ValueError, match="number of evaluation images"):
        confident.accuracy_violation(0.9, 0.95)


def confident(objective: SyntheticObjective, **kwargs) -> SyntheticObjective:
    objective.constraints = dataclasses.replace(objective.constraints, accept="confident", **kwargs)
    return objective


def test_confident_acceptance_drives_the_walk_through_the_accuracy_constraint():
    def make(**kwargs):
        return SyntheticObjective(SIZES, sensitivity={"a": 0.02, "b": 0.05, "c": 0.3}, n_images=400,
                                  batch_size=50, grid=[0.3, 0.6, 0.9], **kwargs)

    plain = walk_study(make())
    study = walk_study(confident(make()))
    uncut = walk_study(confident(make(pruner=None)))
    n, floor = 400, 0.9 - 0.03
    assert study.user_attrs["primesvt:constraints"]["accept"] == "confident"
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE and trial.user_attrs["phase"] != "reference":
            k = round(trial.user_attrs["accuracy"] * n)
            bound = clopper_pearson_lower(k, n, 0.95)
            assert trial.user_attrs["accuracy_lower_bound"] == bound
            assert trial.constraints["accuracy"] == pytest.approx(floor - bound, abs=1e-12)  # a fraction, as before
        elif trial.state == TrialState.PRUNED and "accuracy" in trial.constraints:
            assert trial.constraints["accuracy"] > 0  # the exact cut rejects under the confident rule too

    def outcomes(s):
        return {tuple(sorted(t.params.items())): t.constraints["accuracy"] <= 0
                for t in s.trials if "accuracy" in t.constraints}

    # the exact early cut stays exact under the confident rule: the same verdicts, the same selection
    assert outcomes(study).items() <= outcomes(uncut).items()
    assert result(study).selected["rates"] == result(uncut).selected["rates"]
    assert sum(t.user_attrs.get("images_evaluated", 0) for t in study.trials) < \
        sum(t.user_attrs.get("images_evaluated", 0) for t in uncut.trials)
    # stricter than the point rule: every configuration it accepts the point rule accepts too
    point = outcomes(plain)
    assert all(point[key] for key, ok in outcomes(uncut).items() if ok and key in point)
    assert any(not ok and point.get(key) for key, ok in outcomes(uncut).items())
    sel = result(study).selected
    assert sel["accuracy_lower_bound"] >= floor and sel["memory_saving"] <= result(plain).selected["memory_saving"]


def test_every_sampler_applies_the_confident_rule_through_the_objective():
    objective = confident(SyntheticObjective(SIZES, sensitivity={"a": 0.02, "b": 0.05, "c": 0.3}, n_images=4000,
                                             batch_size=500, memory_target=0.2), interval="wilson")
    study = optuna.create_study(directions=objective.directions, sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({f"rate:{k}": 0.0 for k in SIZES}, user_attrs={"phase": "reference"})
    study.optimize(objective, n_trials=25)
    res = result(study)
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE and trial.number:
            bound = wilson_lower(round(trial.user_attrs["accuracy"] * 4000), 4000, 0.95)
            assert trial.constraints["accuracy"] == pytest.approx(0.87 - bound, abs=1e-12)
    assert res.both_met and res.selected["accuracy_lower_bound"] >= 0.87
