"""ConstraintPruner: exact and statistical accuracy cuts, the memory pre-check, single- and
multi-objective studies, and what a cut trial records."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.plugin import ConstraintPruner, PrioritizedSampler, SyntheticObjective
from primesvt_optuna.plugin.pruner import wilson_upper

optuna.logging.set_verbosity(optuna.logging.ERROR)
SIZES = {"a": 3000, "b": 1000}


def test_exact_cut_only_when_the_floor_is_out_of_reach():
    pruner = ConstraintPruner()
    # 60 of 100 seen, 100 left: at most 160/200 = 0.80 reachable
    assert pruner.accuracy_cut(60, 100, 200, floor=0.80) is None
    cut = pruner.accuracy_cut(59, 100, 200, floor=0.80)
    assert cut.kind == "accuracy" and cut.accuracy_bound == pytest.approx(0.795)
    assert pruner.accuracy_cut(0, 200, 200, floor=0.9) is None  # finished: not a cut, a verdict
    assert pruner.accuracy_cut(10, 100, 200, floor=None) is None  # floor not known yet
    assert ConstraintPruner(accuracy=False).accuracy_cut(0, 100, 200, floor=0.9) is None


def test_statistical_cut_fires_sooner_at_its_confidence():
    exact, stat = ConstraintPruner(), ConstraintPruner(confidence=0.99)
    # 70% right after 300 of 1000: the exact cut cannot rule out 0.80, the bound can
    assert exact.accuracy_cut(210, 300, 1000, floor=0.80) is None
    cut = stat.accuracy_cut(210, 300, 1000, floor=0.80, batches=10)
    assert cut.kind == "statistical" and cut.accuracy_bound < 0.80
    assert stat.accuracy_cut(235, 300, 1000, floor=0.80, batches=10) is None  # 78%: too close to call
    assert stat.accuracy_cut(10, 20, 1000, floor=0.9) is None  # fewer than min_images
    assert 0.7 < wilson_upper(70, 100, 0.99) < 0.82
    with pytest.raises(PrimeSVTError):
        ConstraintPruner(confidence=1.2)


def test_memory_precheck():
    pruner = ConstraintPruner()
    assert pruner.memory_cut(0.2, 0.3).kind == "memory"
    assert pruner.memory_cut(0.3, 0.3) is None and pruner.memory_cut(0.1, None) is None
    assert ConstraintPruner(memory=False).memory_cut(0.0, 0.5) is None


def _cut_trial(study):
    return next(t for t in study.trials if t.state == TrialState.PRUNED)


def test_multi_objective_cut_records_constraints_and_reason():
    objective = SyntheticObjective(SIZES, sensitivity={"a": 0.5, "b": 0.5}, memory_target=0.5, grid=[0.5, 0.9])
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=[0.5, 0.9]))
    study.optimize(objective)
    cut = _cut_trial(study)
    assert cut.constraints["accuracy"] > 0 and "memory" in cut.constraints
    attrs = cut.user_attrs
    assert attrs["cut_reason"].startswith("accuracy: at most") and attrs["feasible"] is False
    assert 0 < attrs["images_evaluated"] < 1000 and attrs["constraint_accuracy"] == cut.constraints["accuracy"]


def test_single_objective_study_uses_it_as_a_normal_pruner():
    objective = SyntheticObjective(SIZES, sensitivity={"a": 0.5, "b": 0.5}, memory_target=0.5, grid=[0.5, 0.9],
                                   single_objective=True, pruner=None)
    study = optuna.create_study(direction="maximize", pruner=ConstraintPruner(),
                                sampler=PrioritizedSampler(grid=[0.5, 0.9]))
    study.optimize(objective)
    cut = _cut_trial(study)
    assert cut.intermediate_values and cut.user_attrs["cut_reason"].startswith("accuracy")
    assert study.trials[0].user_attrs["phase"] == "reference" and study.trials[0].value == 0.0


def test_memory_cut_before_evaluation_for_complete_configurations():
    objective = SyntheticObjective(SIZES, memory_target=0.5, grid=[0.2, 0.8])
    study = optuna.create_study(directions=objective.directions)
    study.enqueue_trial({"rate:a": 0.0, "rate:b": 0.0}, user_attrs={"phase": "reference"})
    study.enqueue_trial({"rate:a": 0.2, "rate:b": 0.2})  # saves 20% < 50%: never evaluated
    study.optimize(objective, n_trials=2)
    cut = study.trials[1]
    assert cut.state == TrialState.PRUNED and cut.user_attrs["images_evaluated"] == 0
    assert cut.constraints == {"memory": pytest.approx(0.3)}  # accuracy unknown, so not set
    assert cut.user_attrs["cut_reason"].startswith("memory: predicted saving")
