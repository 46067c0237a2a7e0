"""The objectives: what a trial records, a real PruningObjective on the tiny preset with two
threads, TPE/NSGA-II on the same objective, and the study served by optuna-dashboard."""

from __future__ import annotations

import json
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
import torch
from optuna.trial import TrialState

from primesvt_optuna.data import make_spec
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import build_model
from primesvt_optuna.plugin import PrioritizedSampler, PruningObjective, SyntheticObjective
from _paper_rule import PruningObjective, SyntheticObjective  # noqa: E402,F811 (the point rule)
from primesvt_optuna.plugin.result import result
from primesvt_optuna.pruning import model_bytes

optuna.logging.set_verbosity(optuna.logging.ERROR)
SIZES = {"a": 3000, "b": 2000, "c": 1000}
TRIAL_ATTRS = {
    "phase", "layer", "rate", "accuracy", "accuracy_drop", "memory_saving", "model_bytes", "images_evaluated",
    "constraint_accuracy", "constraint_memory", "feasible", "wall_time", "images_decided",
}
STUDY_ATTRS = {"layers", "base_bytes", "base_accuracy", "checkpoint_sha256", "grid", "constraints", "policy", "seed"}


def synthetic(**kwargs) -> SyntheticObjective:
    return SyntheticObjective(SIZES, **{"memory_target": 0.3, "grid": [0.3, 0.6, 0.9], **kwargs})


def test_trials_and_study_record_the_documented_attributes():
    objective = synthetic()
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=objective.grid))
    study.optimize(objective)
    assert study.metric_names == ["accuracy", "model_bytes"]
    assert STUDY_ATTRS <= {k.removeprefix("primesvt:") for k in study.user_attrs}
    assert study.user_attrs["primesvt:layers"][0] == {"layer": "a", "params": 3000}
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert TRIAL_ATTRS <= set(trial.user_attrs)
            assert trial.user_attrs["constraint_accuracy"] == trial.constraints["accuracy"]
            assert trial.user_attrs["feasible"] == all(v <= 0 for v in trial.constraints.values())
            assert trial.values == [trial.user_attrs["accuracy"], trial.user_attrs["model_bytes"]]
    phases = [t.user_attrs["phase"] for t in study.trials]
    assert phases[0] == "reference" and set(phases) == {"reference", "robustness", "walk"}


def test_a_study_made_for_another_model_is_refused():
    study = optuna.create_study(directions=synthetic().directions, sampler=PrioritizedSampler(grid=[0.3, 0.6, 0.9]))
    study.optimize(synthetic(), n_trials=2)
    with pytest.raises(PrimeSVTError, match="checkpoint_sha256"):
        study.optimize(synthetic(base_accuracy=0.8), n_trials=1)
    with pytest.raises(PrimeSVTError, match="directions"):
        optuna.create_study(direction="maximize").optimize(synthetic(), n_trials=1)


def test_tpe_and_nsga2_work_on_the_objective_and_learn_from_cuts():
    for sampler in (optuna.samplers.TPESampler(seed=0, n_startup_trials=4), optuna.samplers.NSGAIISampler(seed=0)):
        objective = synthetic()
        study = optuna.create_study(directions=objective.directions, sampler=sampler)
        study.enqueue_trial({f"rate:{k}": 0.0 for k in SIZES}, user_attrs={"phase": "reference"})
        study.optimize(objective, n_trials=12)
        assert study.trials[0].user_attrs["phase"] == "reference"
        assert all(t.user_attrs["phase"] == "search" for t in study.trials[1:])
        cut = [t for t in study.trials if t.state == TrialState.PRUNED]
        assert all(t.constraints.get("memory", 0) > 0 or t.constraints.get("accuracy", 0) > 0 for t in cut)
        assert result(study).selected is not None


def test_without_a_reference_trial_the_base_accuracy_is_measured_once():
    objective = synthetic()
    study = optuna.create_study(directions=objective.directions, sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(objective, n_trials=3)
    assert study.user_attrs["primesvt:base_accuracy"] == objective.accuracy({})
    images = [t.user_attrs.get("images_evaluated", 0) for t in study.trials]
    assert max(images) >= 1000 + 1  # the first evaluated trial also measured the unpruned model


def test_cached_robustness_results_fill_their_trials_without_evaluation():
    objective = synthetic(robustness_cache={("a", 0.3): 0.895, ("b", 0.9): 0.5})
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=objective.grid))
    study.optimize(objective)
    cached = [t for t in study.trials if t.user_attrs.get("cached")]
    assert [(t.user_attrs["layer"], t.user_attrs["rate"]) for t in cached] == [("a", 0.3), ("b", 0.9)]
    assert all(t.user_attrs["images_evaluated"] == 0 for t in cached)
    assert cached[0].user_attrs["accuracy"] == 0.895


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({"preset": "digits-tiny"})


def test_real_objective_on_the_tiny_preset_with_two_threads(tiny_model):
    objective = PruningObjective(
        model=tiny_model, data=make_spec("digits", img_size=16), eval_images=48, batch_size=16, grid=[0.5],
        max_accuracy_drop=0.0, memory_target=0.3,
    )
    sampler = PrioritizedSampler(grid=[0.5], poll_interval=0.05, sweep="full")
    study = optuna.create_study(directions=objective.directions, sampler=sampler)
    study.optimize(objective, n_jobs=2)
    evaluated = [t for t in study.trials if t.user_attrs["phase"] != "idle"]
    keys = [t.system_attrs["primesvt:claim"]["key"] for t in evaluated]
    assert len(keys) == len(set(keys)) == len(evaluated) >= 1 + len(objective.layers)
    assert all(t.state.is_finished() for t in study.trials)
    assert sampler.walk_state(study).done
    selected = result(study).selected
    pruned = objective.engine.prune(selected["rates"])
    assert model_bytes(pruned) == selected["model_bytes"]  # the objective's bytes are the model's
    assert study.user_attrs["primesvt:checkpoint_sha256"].startswith("state:")


def test_optuna_dashboard_serves_trials_objective_names_and_constraints(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    objective = synthetic(grid=[0.5])
    study = optuna.create_study(directions=objective.directions, storage=storage,
                                sampler=PrioritizedSampler(grid=objective.grid))
    study.optimize(objective)
    app = optuna_dashboard.wsgi(storage)
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=f"/api/studies/{study._study_id}", REQUEST_METHOD="GET")
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"]
    data = json.loads(body)
    assert data["objective_names"] == ["accuracy", "model_bytes"]
    assert len(data["trials"]) == len(study.trials)
    served = {a["key"]: a["value"] for a in data["trials"][1]["user_attrs"]}
    assert {"constraint_accuracy", "constraint_memory", "feasible", "phase", "memory_saving"} <= set(served)
    assert served["phase"] == "robustness"
