"""Adaptive BatchNorm recalibration: only BatchNorm buffers change, bit for bit reproducibly, as a
cumulative average; the objective counts its images, records it on the study and leaves the
engine's model alone."""

from __future__ import annotations

import copy
import math

import optuna
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron

from primesvt_optuna.data import load_splits, make_spec
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import build_model
from primesvt_optuna.plugin import BudgetAwareSampler, PrioritizedSampler, PruningObjective
from _paper_rule import PruningObjective, SyntheticObjective  # noqa: E402,F811 (the point rule)
from primesvt_optuna.pruning import Engine
from primesvt_optuna.pruning.recalibrate import (BATCH_SIZE, RelativeReference, batchnorms, bn_statistics, recalibrate_bn,
                                                 recalibration_set)
from primesvt_optuna.pruning.structure import structure_of
from primesvt_optuna.training import evaluate, iter_correct

optuna.logging.set_verbosity(optuna.logging.ERROR)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model({"preset": "digits-tiny"}).eval()
    return model, load_splits(make_spec("digits", img_size=16))


def _pruned(model):
    engine = Engine(copy.deepcopy(model))
    return engine.prune({name: 0.5 for name in engine.layers[:3]})


def test_only_batchnorm_buffers_change_and_bit_for_bit(tiny):
    model, splits = tiny
    first, second = _pruned(model), _pruned(model)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    bn_names = {name for name, m in first.named_modules() if m in set(batchnorms(first))}
    assert bn_names  # the preset has BatchNorm layers to recalibrate

    seen = recalibrate_bn(first, splits.train, images=100, seed=3)
    assert seen == 100
    after = first.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[0] in bn_names and k.rsplit(".", 1)[1] in BN_BUFFERS for k in changed)
    for name in bn_names:  # every BatchNorm re-estimated: two batches (64 + 36), cumulative average
        assert int(after[f"{name}.num_batches_tracked"]) == math.ceil(100 / BATCH_SIZE)
        assert f"{name}.running_mean" in changed
    assert not first.training and all(m.momentum == 0.1 for m in batchnorms(first))  # modes and momentum back

    assert recalibrate_bn(second, splits.train, images=100, seed=3) == 100
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in after.items())  # reproducible, bit for bit
    other = _pruned(model)
    recalibrate_bn(other, splits.train, images=100, seed=4)  # another seed: other images
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in after.items())


def test_a_refused_recalibration_leaves_every_batchnorm_as_it_was(tiny):
    """One BatchNorm that does not track statistics refuses the call; the ones before it used to
    be reset (statistics zeroed, momentum None) before the refusal."""
    model = copy.deepcopy(tiny[0])
    norms = batchnorms(model)
    norms[-1].track_running_stats = False
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [m.momentum for m in norms]
    with pytest.raises(PrimeSVTError, match="does not track running statistics"):
        recalibrate_bn(model, tiny[1].train, images=32)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [m.momentum for m in norms] == momenta


def test_running_statistics_are_the_cumulative_average_of_the_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), neuron.LIFNode(step_mode="s")).eval()
    model[1].running_mean.fill_(5.0)
    data = torch.utils.data.TensorDataset(torch.randn(150, 1, 6, 6), torch.zeros(150, dtype=torch.long))
    recalibrate_bn(model, data, images=150, seed=0, batch_size=64)
    chosen = recalibration_set(data, 150, 0)
    with torch.no_grad():
        means, variances = [], []
        for start in range(0, 150, 64):
            x = torch.stack([chosen[i][0] for i in range(start, min(start + 64, 150))])
            y = model[0](x)
            means.append(y.mean((0, 2, 3)))
            variances.append(y.var((0, 2, 3), unbiased=True))
    assert torch.allclose(model[1].running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var, torch.stack(variances).mean(0), atol=1e-6)
    assert int(model[1].num_batches_tracked) == 3 and model[1].momentum == 0.1
    assert float(model[2].v) == 0.0  # neuron state reset after the last batch


def test_neuron_state_is_reset_between_batches(tiny):
    """A membrane state left over from an earlier forward pass (same batch shape) does not leak into
    the statistics, and batch 2 does not see batch 1's state: each batch is as if alone."""
    model, splits = tiny
    a, b, c = _pruned(model), _pruned(model), _pruned(model)
    with torch.no_grad():
        b(torch.stack([splits.train[i][0] for i in range(64)]))  # leftover state of a 64-image batch
    for m in (a, b):
        recalibrate_bn(m, splits.train, images=128, seed=0)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    # two batches, recalibrated together or as two one-batch passes averaged by hand
    chosen = recalibration_set(splits.train, 128, 0)
    halves = []
    for part in (range(0, 64), range(64, 128)):
        m = _pruned(model)
        recalibrate_bn(m, torch.utils.data.Subset(chosen, list(part)))
        halves.append(m.state_dict())
    for name in {n for n, mod in c.named_modules() if mod in set(batchnorms(c))}:
        for buffer in ("running_mean", "running_var"):
            key = f"{name}.{buffer}"
            assert torch.allclose(a.state_dict()[key], (halves[0][key] + halves[1][key]) / 2, atol=1e-5)


def test_recalibration_set_is_seeded_and_bounded(tiny):
    _, splits = tiny
    assert recalibration_set(splits.train, 10, 1).indices == recalibration_set(splits.train, 10, 1).indices
    assert recalibration_set(splits.train, 10, 1).indices != recalibration_set(splits.train, 10, 2).indices
    assert len(recalibration_set(splits.train, 10**6, 0)) == len(splits.train)
    with pytest.raises(PrimeSVTError, match="at least one image"):
        recalibration_set(splits.train, 0, 0)


def test_objective_recalibrates_pruned_trials_counts_the_images_and_records_it(tiny):
    model, splits = tiny
    spec = make_spec("digits", img_size=16)
    kwargs = dict(model=model, data=spec, eval_images=48, batch_size=16, grid=[0.5], max_accuracy_drop=0.05,
                  memory_target=0.3, pruner=None)
    objective = PruningObjective(**kwargs, recalibrate_bn=70, recalibrate_rule="relative")
    engine_state = {k: v.clone() for k, v in objective.engine.model.state_dict().items()}
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=[0.5]))
    study.optimize(objective, n_trials=3)
    assert study.user_attrs["primesvt:recalibrate_bn"] == {"images": 70, "batch_size": BATCH_SIZE, "seed": 0,
                                                          "rule": "relative"}
    reference, *pruned = study.trials
    # the unpruned reference is evaluated as it is; it is charged the relative rule's one
    # recalibration of the unpruned model
    assert reference.user_attrs["images_recalibrated"] == 70
    assert reference.user_attrs["accuracy"] == evaluate(model, objective.eval_set)
    unpruned = RelativeReference(model, splits.train, images=70, seed=0)
    for trial in pruned:
        assert trial.user_attrs["images_recalibrated"] == 70 and trial.user_attrs["images_evaluated"] == 48
        rates = {k.removeprefix("rate:"): v for k, v in trial.params.items() if v > 0}
        expected = objective.engine.prune(rates)
        recalibrate_bn(expected, splits.train, images=70, seed=0, relative_to=unpruned.statistics(structure_of(expected)))
        assert trial.user_attrs["accuracy"] == evaluate(expected, objective.eval_set, batch_size=16)
    # the engine's own model is never touched: its exactness guarantees are about the plain model
    assert all(torch.equal(v, objective.engine.model.state_dict()[k]) for k, v in engine_state.items())

    plain = PruningObjective(**kwargs)
    with pytest.raises(PrimeSVTError, match="recalibrate_bn"):  # a study never mixes settings
        study.optimize(plain, n_trials=1)
    fresh = optuna.create_study(directions=plain.directions, sampler=PrioritizedSampler(grid=[0.5]))
    fresh.optimize(plain, n_trials=2)
    assert fresh.user_attrs["primesvt:recalibrate_bn"] is None
    assert all(t.user_attrs["images_recalibrated"] == 0 for t in fresh.trials)
    with pytest.raises(PrimeSVTError, match="number of training images"):
        PruningObjective(**kwargs, recalibrate_bn=-1)
    with pytest.raises(PrimeSVTError, match="recalibrate_rule must be one of auto, relative, absolute, got 'both'"):
        PruningObjective(**kwargs, recalibrate_bn=70, recalibrate_rule="both")
    assert objective.recalibration_probe is None  # a rule named: nothing measured before the study

    absolute = PruningObjective(**kwargs, recalibrate_bn=70, recalibrate_rule="absolute")  # EagleEye's rule
    with pytest.raises(PrimeSVTError, match="recalibrate_bn"):  # not the relative study's setting
        study.optimize(absolute, n_trials=1)
    other = optuna.create_study(directions=absolute.directions, sampler=PrioritizedSampler(grid=[0.5]))
    other.optimize(absolute, n_trials=3)
    assert other.user_attrs["primesvt:recalibrate_bn"] == {"images": 70, "batch_size": BATCH_SIZE, "seed": 0}
    assert other.trials[0].user_attrs["images_recalibrated"] == 0
    trial = other.trials[1]
    expected = objective.engine.prune({k.removeprefix("rate:"): v for k, v in trial.params.items() if v > 0})
    recalibrate_bn(expected, splits.train, images=70, seed=0)
    assert trial.user_attrs["accuracy"] == evaluate(expected, absolute.eval_set, batch_size=16)


def test_an_objective_built_from_a_model_leaves_the_callers_model_alone(tiny):
    """It used to put the caller's model in eval mode on the CPU and prune from that very object,
    so training it further changed the study's unpruned reference behind its identity hash."""
    model = copy.deepcopy(tiny[0]).train()  # the fixture's model is shared by the module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective = PruningObjective(model=model, data=make_spec("digits", img_size=16), eval_images=48, batch_size=16,
                                 grid=[0.5], max_accuracy_drop=0.05, memory_target=0.05, pruner=None)
    assert model.training and not objective.engine.model.training
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    kept = objective.engine.model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in before.items())


def test_a_comparison_reads_the_test_split_on_the_recalibrated_model(tiny):
    """The test accuracy a comparison reports is that of the model its study evaluated (pruned,
    then recalibrated), as `primesvt export` rebuilds it, not the plain pruned model."""
    from primesvt_optuna.reporting.compare import test_accuracy

    model, splits = tiny
    objective = PruningObjective(model=model, data=make_spec("digits", img_size=16), eval_images=48, batch_size=16,
                                 grid=[0.5], max_accuracy_drop=0.99, memory_target=0.05, pruner=None,
                                 recalibrate_bn=70, recalibrate_rule="relative")
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=[0.5]))
    study.optimize(objective, n_trials=3)
    report = test_accuracy(objective, study)
    rates = report["rates"]
    assert rates  # a pruned configuration was selected
    recalibrated = objective.engine.prune(rates)
    unpruned = RelativeReference(model, splits.train, images=70, seed=0)
    recalibrate_bn(recalibrated, splits.train, images=70, seed=0, relative_to=unpruned.statistics(structure_of(recalibrated)))
    assert report["accuracy"] == evaluate(recalibrated, splits.test, batch_size=16)
    assert report["accuracy"] != evaluate(objective.engine.prune(rates), splits.test, batch_size=16)


def test_relative_recalibration_moves_the_trained_statistics_by_the_change_only(tiny):
    """Relative rule: an unchanged model keeps its statistics (absolute recalibration replaces them
    with a few hundred images' estimate), and a pruned model's statistics are its trained ones
    moved by (its recalibrated - the unpruned model's recalibrated), in its own channels."""
    model, splits = tiny
    reference = RelativeReference(model, splits.train, images=70, seed=1)
    assert reference.images == 70
    trained = bn_statistics(model)

    same = copy.deepcopy(model)
    assert recalibrate_bn(same, splits.train, images=70, seed=1, relative_to=reference.statistics(None)) == 70
    for name, (mean, var) in bn_statistics(same).items():
        assert torch.allclose(mean, trained[name][0], atol=1e-6) and torch.allclose(var, trained[name][1], rtol=1e-5)
    assert any(not torch.allclose(reference.statistics(None)[n][0], trained[n][0]) for n in trained)  # absolute moves

    pruned = _pruned(model)
    plain = bn_statistics(pruned)  # the trained statistics in the pruned model's channels
    absolute = copy.deepcopy(pruned)
    recalibrate_bn(absolute, splits.train, images=70, seed=1)
    cut = reference.statistics(structure_of(pruned))
    recalibrate_bn(pruned, splits.train, images=70, seed=1, relative_to=cut)
    moved = {n: (plain[n][0].shape != trained[n][0].shape) for n in plain}
    assert any(moved.values())  # some BatchNorm lost channels: the reference was cut to match
    recalibrated = bn_statistics(absolute)
    for name, (mean, var) in bn_statistics(pruned).items():
        assert torch.allclose(mean, plain[name][0] + recalibrated[name][0] - cut[name][0], atol=1e-6)
        assert torch.allclose(var, plain[name][1] * recalibrated[name][1] / cut[name][1], rtol=1e-5)


def test_relative_recalibration_refuses_statistics_of_another_structure(tiny):
    model, splits = tiny
    reference = RelativeReference(model, splits.train, images=20, seed=0)
    pruned = _pruned(model)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    with pytest.raises(PrimeSVTError, match="reference statistics do not match BatchNorm"):
        recalibrate_bn(pruned, splits.train, images=20, relative_to=reference.statistics(None))
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in before.items())  # left as it was


@pytest.mark.parametrize("rule", ["relative", "absolute"])
def test_the_automatic_probe_charges_every_image_it_read_once(tiny, rule):
    """The probe before the study evaluates the search images twice and recalibrates one pruned
    model, and under the relative rule the unpruned model once more: all of it is charged to the
    reference trial, once, whether the probe turns recalibration on or off."""
    model, _ = tiny
    objective = PruningObjective(model=model, data=make_spec("digits", img_size=16), eval_images=48, batch_size=16,
                                 grid=[0.5], max_accuracy_drop=0.05, memory_target=0.3, pruner=None,
                                 recalibrate_bn="auto", recalibrate_rule=rule)
    probe = objective.recalibration_probe
    assert probe["images"] == 2 * 48 + 512 * (2 if rule == "relative" else 1)
    study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler(grid=[0.5]))
    study.optimize(objective, n_trials=2)
    reference, pruned = study.trials
    assert reference.user_attrs["images_recalibrated"] == probe["images"]
    assert pruned.user_attrs["images_recalibrated"] == (512 if probe["on"] else 0)


@pytest.mark.parametrize("share, rule", [(0.0, "relative"), (1.01, "absolute")])
def test_the_automatic_rule_is_measured_on_the_unpruned_model_and_charged(tiny, monkeypatch, share, rule):
    """recalibrate_rule="auto": relative when pruning only; with a precision grid the unpruned
    model is evaluated plain and recalibrated by the absolute rule on the search images, relative
    when they disagree on AUTO_RELATIVE_DISAGREEMENT of them or more. Its images (two evaluations
    and one recalibration) are charged to the reference trial, once."""
    import primesvt_optuna.plugin.objective as objective_module

    monkeypatch.setattr(objective_module, "AUTO_RELATIVE_DISAGREEMENT", share)  # 0: always met; above 1: never
    model, splits = tiny
    kwargs = dict(model=model, data=make_spec("digits", img_size=16), eval_images=48, batch_size=16, grid=[0.5],
                  max_accuracy_drop=0.05, memory_target=0.3, pruner=None, recalibrate_bn=70)
    pruning = PruningObjective(**kwargs)  # pruning only: the relative rule, nothing measured
    assert pruning.recalibrate_rule == "relative" and pruning.recalibration_probe is None
    objective = PruningObjective(**kwargs, precisions=("float", "int8"))
    probe = objective.recalibration_probe
    assert probe["rule"] == objective.recalibrate_rule == rule and probe["images"] == 2 * 48 + 70
    unpruned = RelativeReference(model, splits.train, images=70, seed=0).model
    assert probe["unpruned_recalibrated"] == evaluate(unpruned, objective.eval_set, batch_size=16)
    assert probe["unpruned"] == evaluate(model, objective.eval_set, batch_size=16)
    plain = torch.cat(list(iter_correct(model, objective.eval_set, batch_size=16)))
    again = torch.cat(list(iter_correct(unpruned, objective.eval_set, batch_size=16)))
    assert probe["disagreement"] == int((plain != again).sum()) / len(plain)
    settings = {"images": 70, "batch_size": BATCH_SIZE, "seed": 0}
    assert objective.recalibration_settings == ({**settings, "rule": "relative"} if rule == "relative" else settings)
    study = optuna.create_study(directions=objective.directions,
                                sampler=BudgetAwareSampler(grid=[0.5], precisions=("float", "int8")))
    study.optimize(objective, n_trials=2)
    reference, pruned = study.trials
    assert reference.user_attrs["images_recalibrated"] == probe["images"]  # the relative reference is not charged twice
    assert pruned.user_attrs["images_recalibrated"] == 70
