"""ConstraintPruner: exact and statistical accuracy cuts, the memory pre-check, single- and
multi-objective studies, what a cut trial records, and the growing batch schedule (which never
changes an exact verdict, cuts a hopeless trial within tens of images, and takes the images in a
seeded order that every trial and process shares)."""

from __future__ import annotations

import random
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.plugin import ConstraintPruner, PrioritizedSampler, PruningObjective, SyntheticObjective, rate_param
from _paper_rule import PruningObjective, SyntheticObjective  # noqa: E402,F811 (the point rule)
from primesvt_optuna.plugin.pruner import batch_schedule, looks_of, wilson_upper

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
    cut = stat.accuracy_cut(210, 300, 1000, floor=0.80, looks=10)
    assert cut.kind == "statistical" and cut.accuracy_bound < 0.80
    assert stat.accuracy_cut(235, 300, 1000, floor=0.80, looks=10) is None  # 78%: too close to call
    # more looks, a stricter bound per look (Bonferroni): 75% right is cut after 1 look, not after 1000
    assert stat.accuracy_cut(225, 300, 1000, floor=0.80, looks=1) is not None
    assert stat.accuracy_cut(225, 300, 1000, floor=0.80, looks=1000) is None
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


# --- the batch schedule --------------------------------------------------------------------------


def test_batch_schedule_doubles_the_images_seen_up_to_the_batch_size():
    assert batch_schedule(359, 256, 32) == [32, 32, 64, 128, 103]
    assert batch_schedule(1000, 100, 16) == [16, 16, 32, 64] + [100] * 8 + [72]
    assert batch_schedule(359, 256, None) == batch_schedule(359, 256, 256) == [256, 103]  # plain batches
    assert batch_schedule(20, 256, 32) == [20] and batch_schedule(0, 256, 32) == []
    assert looks_of([32, 32, 64, 128, 103]) == [32, 64, 128, 256, 359]
    # batch_size = first_batch * 2^k: every look of plain batches is a look of the schedule
    for total in (359, 1078, 5000):
        assert set(looks_of(batch_schedule(total, 256, None))) <= set(looks_of(batch_schedule(total, 256, 32)))
    for bad in ((0, None), (256, 0)):
        with pytest.raises(PrimeSVTError):
            batch_schedule(100, *bad)
    # the statistical cut's confidence is split over the looks where it may fire: min_images <= seen < total
    stat = ConstraintPruner(confidence=0.99, min_images=64)
    assert stat.statistical_looks([32, 32, 64, 128, 103]) == 3  # after 64, 128 and 256 images
    assert stat.statistical_looks([256, 103]) == 1 and stat.statistical_looks([16]) == 1


def test_synthetic_trials_record_when_their_verdict_was_decided():
    # accuracy 0.9 everywhere it is evaluated, floor 0.3: the pass is certain after 300 right images
    objective = SyntheticObjective({"a": 3000, "b": 1000}, sensitivity={"a": 0.0, "b": 0.0}, min_accuracy=0.3,
                                   n_images=1000, batch_size=256, first_batch=32, grid=[0.5])
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=[0.5]))
    study.optimize(objective)
    reference, passed = study.trials[0], study.trials[1]
    assert reference.user_attrs["images_decided"] == reference.user_attrs["images_evaluated"] == 1000
    assert passed.state == TrialState.COMPLETE and passed.user_attrs["images_evaluated"] == 1000
    assert passed.user_attrs["images_decided"] == 512  # looks after 32, 64, 128, 256, 512: 0.9 * 512 >= 300
    assert study.user_attrs["primesvt:eval_schedule"]["looks"] == [32, 64, 128, 256, 512, 768, 1000]


def test_synthetic_hopeless_trial_is_cut_at_the_first_look():
    # nothing right at 0.9 and a floor of 0.87 on 200 images: out of reach after 27 wrong images
    kwargs = dict(sensitivity={"a": 2.0, "b": 2.0}, n_images=200, batch_size=128, grid=[0.9])
    for first_batch, images in ((32, 32), (None, 128)):
        objective = SyntheticObjective({"a": 3000, "b": 1000}, first_batch=first_batch, **kwargs)
        study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=[0.9]))
        study.optimize(objective)
        cut = [t for t in study.trials if t.state == TrialState.PRUNED]
        assert cut and all(t.user_attrs["images_evaluated"] == t.user_attrs["images_decided"] == images for t in cut)


# --- the batch schedule on a real model (the shipped digits baselines) ---------------------------


def _enqueued(objective: PruningObjective, configs: list[dict[str, float]]) -> optuna.Study:
    """The reference, then each configuration, as complete trials of one study."""
    study = optuna.create_study(directions=objective.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({rate_param(name): 0.0 for name, _ in objective.layers}, user_attrs={"phase": "reference"})
    for config in configs:
        study.enqueue_trial({rate_param(name): config.get(name, 0.0) for name, _ in objective.layers})
    study.optimize(objective, n_trials=len(configs) + 1)
    return study


def test_the_schedule_never_changes_an_exact_verdict_on_a_real_model():
    """Random configurations of the shipped digits-hard baseline, evaluated whole in plain batches
    without any cut, and in the growing schedule with the exact cut: every verdict is the same, a
    trial that is not cut has the very same accuracy, and some trials are cut, some pass."""
    common = dict(max_accuracy_drop=0.05, eval_images=128, batch_size=64)
    full = PruningObjective("digits-hard-2-64", first_batch=None, pruner=None, **common)
    scheduled = PruningObjective("digits-hard-2-64", first_batch=16, **common)
    assert scheduled.schedule == [16, 16, 32, 64] and full.schedule == [64, 64]
    rng = random.Random(0)
    layers = [name for name, _ in full.layers]
    configs = [{name: rng.choice([0.1, 0.3, 0.5, 0.7, 0.9]) for name in rng.sample(layers, rng.randint(1, 3))}
               for _ in range(24)]
    a, b = _enqueued(full, configs), _enqueued(scheduled, configs)
    assert a.user_attrs["primesvt:base_accuracy"] == b.user_attrs["primesvt:base_accuracy"]
    verdicts = []
    for ta, tb in zip(a.trials[1:], b.trials[1:]):
        assert ta.params == tb.params and ta.state == TrialState.COMPLETE
        feasible = ta.constraints["accuracy"] <= 0
        verdicts.append(feasible)
        if tb.state == TrialState.PRUNED:
            assert not feasible and tb.constraints["accuracy"] > 0
            assert tb.user_attrs["images_evaluated"] < 128
        else:
            assert tb.state == TrialState.COMPLETE and tb.values == ta.values
            assert tb.constraints == ta.constraints and tb.user_attrs["images_evaluated"] == 128
        assert tb.user_attrs["images_decided"] <= tb.user_attrs["images_evaluated"]
    assert any(verdicts) and not all(verdicts)
    assert any(t.state == TrialState.PRUNED for t in b.trials)


def test_a_hopeless_trial_is_cut_after_the_first_small_batch():
    objective = PruningObjective("digits-2-64", max_accuracy_drop=0.03, first_batch=32)  # 359 images
    assert objective.schedule == [32, 32, 64, 128, 103]
    study = _enqueued(objective, [{name: 0.9 for name, _ in objective.layers}])
    cut = study.trials[1]
    assert cut.state == TrialState.PRUNED and cut.user_attrs["cut_reason"].startswith("accuracy: at most")
    assert cut.user_attrs["images_evaluated"] == cut.user_attrs["images_decided"] == 32  # was 256 of 359


def test_the_evaluation_order_is_seeded_and_shared_by_every_trial_and_process():
    objective = PruningObjective("digits-2-64", first_batch=32)
    order = objective.eval_order
    assert sorted(order) == list(range(359)) and order != sorted(order)
    assert PruningObjective("digits-2-64", first_batch=32).eval_order == order  # another objective, same study
    assert PruningObjective("digits-2-64", first_batch=32, seed=1).eval_order != order
    assert PruningObjective("digits-2-64", first_batch=None).eval_order is None  # plain batches, subset order
    code = ("from primesvt_optuna.plugin import PruningObjective; "
            "print(PruningObjective('digits-2-64', first_batch=32, accept='point').eval_order)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.strip() == str(order)
