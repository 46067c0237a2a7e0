"""The PrimeSVT samplers on the synthetic objective: walk order and committed rates checked
exactly against an independent oracle, resume, crashes, several workers, baselines."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from primesvt_optuna import plugin
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.plugin import (
    BudgetAwareSampler,
    ConstraintPruner,
    PrioritizedSampler,
    RandomOrderSampler,
    SmallestFirstSampler,
    SyntheticObjective,
    UniformSampler,
)
from _paper_rule import PruningObjective, SyntheticObjective  # noqa: E402,F811 (the point rule)
from primesvt_optuna.plugin.constraints import CLAIM, WORKER
from primesvt_optuna.plugin.samplers import JointSampler
from primesvt_optuna.plugin.samplers._claims import FinishedIndex
from primesvt_optuna.plugin.result import result
from primesvt_optuna.storage import fail_stale_trials, open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)

SIZES = {"a": 4000, "b": 3000, "c": 2000, "d": 1000, "e": 500}
SENS = {"a": 0.06, "b": 0.12, "c": 0.08, "d": 0.5, "e": 2.0}
SETTINGS = dict(sensitivity=SENS, interaction=0.004, max_accuracy_drop=0.03, memory_target=0.28)
GRID = [round(0.1 * i, 1) for i in range(1, 10)]
SMALL = {"grid": [0.3, 0.6, 0.9]}  # for the slower storage tests: 1 + 15 + a few trials


def make(**kwargs) -> SyntheticObjective:
    return SyntheticObjective(SIZES, **{**SETTINGS, **kwargs})


def oracle(obj: SyntheticObjective, order: list[str], *, walk_all=False, rule="highest", budget=0.03):
    """The method written out plainly: returns (committed rates, walk configurations evaluated,
    the single-layer rates a lazy sweep measures, in order)."""
    floor = obj.accuracy({}) - budget

    def ok(rates):
        return obj.accuracy(rates) >= floor - 1e-9

    def saving(rates):
        return 1 - obj.predict_bytes(rates) / obj.base_bytes

    committed: dict[str, float] = {}
    evaluated: list[dict[str, float]] = []
    measured: list[tuple[str, float]] = []
    for layer in order:
        bound = None
        for rate in reversed(GRID) if rule == "highest" else GRID:
            measured.append((layer, rate))
            if ok({layer: rate}):
                bound = rate
                if rule == "highest":
                    break
            elif rule == "contiguous":
                break
        if bound is None:
            continue
        for rate in sorted((r for r in GRID if r <= bound), reverse=True):
            config = {**committed, layer: rate}
            if committed:  # alone it is a robustness trial, already evaluated
                evaluated.append(config)
            if ok(config):
                committed = config
                break
        if not walk_all and saving(committed) >= 0.28:
            break
    return committed, evaluated, measured


def rates_of(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    return {k[len("rate:"):]: v for k, v in trial.params.items() if v}


def run(sampler, obj=None, storage=None, **kwargs) -> optuna.Study:
    obj = obj or make()
    study = optuna.create_study(directions=obj.directions, sampler=sampler, storage=storage, study_name="s")
    study.optimize(obj, **kwargs)
    return study


BY_SIZE = ["a", "b", "c", "d", "e"]


ORDERS = {
    "prioritized": (PrioritizedSampler, BY_SIZE),
    "smallest-first": (SmallestFirstSampler, BY_SIZE[::-1]),
    "random-order": (functools.partial(RandomOrderSampler, seed=3), [BY_SIZE[i] for i in np.random.RandomState(3).permutation(5)]),
}


@pytest.mark.parametrize("sweep", ["lazy", "full"])
@pytest.mark.parametrize("policy", list(ORDERS))
def test_walk_trials_and_commits_match_the_oracle(policy, sweep):
    cls, order = ORDERS[policy]
    obj = make()
    study = run(cls(sweep=sweep), obj)
    committed, walk, measured = oracle(obj, order)
    trials = study.trials
    assert trials[0].user_attrs["phase"] == "reference" and not rates_of(trials[0])
    sweep_trials = [(t.user_attrs["layer"], t.user_attrs["rate"]) for t in trials if t.user_attrs["phase"] == "robustness"]
    expected = [(layer, rate) for layer in BY_SIZE for rate in GRID] if sweep == "full" else measured
    assert sweep_trials == expected
    assert [rates_of(t) for t in trials if t.user_attrs["phase"] == "walk"] == walk
    assert len(trials) == 1 + len(expected) + len(walk)  # the sampler stopped the study by itself
    res = result(study)
    assert res.walk_commit["rates"] == committed
    assert res.finished


@pytest.mark.parametrize("rule", ["highest", "contiguous"])
@pytest.mark.parametrize("policy", list(ORDERS))
def test_lazy_and_full_sweep_commit_identical_rates(policy, rule):
    """Random drop tables, with isolated failing rates (so the two rules differ): the lazy sweep
    commits exactly the full sweep's rates, for fewer trials, and never measures a layer the walk
    does not reach."""
    cls = ORDERS[policy][0]
    rng = np.random.RandomState(len(policy) * 7 + len(rule))
    for _ in range(4):
        sens = {k: float(v) for k, v in zip(SIZES, rng.uniform(0.02, 1.5, len(SIZES)))}
        fail = [(k, float(GRID[i])) for k in SIZES for i in rng.choice(len(GRID), 2, replace=False)]
        obj = make(sensitivity=sens, fail=fail, memory_target=float(rng.uniform(0.1, 0.5)))
        full = run(cls(sweep="full", robustness_rule=rule), obj)
        lazy = run(cls(robustness_rule=rule), obj)
        commits = [[(c.layer, c.rate) for c in s.sampler.walk_state(s).commits] for s in (full, lazy)]
        assert commits[0] == commits[1]
        assert len(lazy.trials) <= len(full.trials)
        reached = {layer for layer, _ in commits[1]}
        measured = {t.user_attrs["layer"] for t in lazy.trials if t.user_attrs["phase"] == "robustness"}
        assert {f"rate:{layer}" for layer in measured} <= reached


def test_prioritized_walk_is_nontrivial_and_meets_both_constraints():
    obj = make()
    study = run(PrioritizedSampler(), obj)
    state = study.sampler.walk_state(study)
    assert state.committed == {"rate:a": 0.7, "rate:c": 0.1}
    assert [(c.layer, c.rate) for c in state.commits] == [("rate:a", 0.7), ("rate:b", 0.0), ("rate:c", 0.1)]
    assert state.memory_met and state.done
    res = result(study)
    assert res.both_met and res.selected["memory_saving"] >= 0.28 and res.selected["accuracy_drop"] <= 0.03
    assert list(res.front["trial"]) and res.front["feasible"].all()


def test_walk_all_and_contiguous_rule():
    obj = make(max_accuracy_drop=0.06)
    study = run(PrioritizedSampler(walk_all=True, robustness_rule="contiguous"), obj)
    committed, _, _ = oracle(obj, BY_SIZE, walk_all=True, rule="contiguous", budget=0.06)
    assert result(study).walk_commit["rates"] == committed
    stopped, _, _ = oracle(obj, BY_SIZE, rule="contiguous", budget=0.06)
    assert len(committed) > len(stopped)


def test_layer_sizes_drive_any_objective_and_other_params_go_to_the_fallback():
    sizes = {"rate:big": 3000, "rate:small": 1000}

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        rates = {p: trial.suggest_float(p, 0.0, 0.9, step=0.1) for p in ("rate:small", "rate:big")}
        drop = 0.1 * rates["rate:big"] ** 2 + 0.3 * rates["rate:small"] ** 2
        trial.set_constraint("accuracy", drop - 0.03)
        trial.set_constraint("memory", 0.5 - sum(sizes[p] * r for p, r in rates.items()) / 4000)
        return lr

    study = optuna.create_study(sampler=PrioritizedSampler(layer_sizes=sizes, seed=1))
    study.optimize(objective)
    state = study.sampler.walk_state(study)
    assert state.committed == {"rate:big": 0.5, "rate:small": 0.1}  # 0.3 and 0.2 fail beside big=0.5
    assert len({t.params["lr"] for t in study.trials}) == len(study.trials) > 10


def test_failures_and_nan_reject_the_rate_and_the_walk_goes_on():
    obj = make(fail=[("a", 0.7)], nan=[("c", 0.1)])
    study = run(PrioritizedSampler(sweep="full"), obj)  # the lazy sweep never needs c at 0.1
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [rates_of(t) for t in failed] == [{"a": 0.7}, {"c": 0.1}]
    assert "synthetic failure" in failed[0].user_attrs["fail_reason"]
    assert "NaN" in failed[1].user_attrs["fail_reason"]
    # a alone at 0.7 failed, so its bound is the highest *passing* rate, 0.6
    assert study.sampler.walk_state(study).bounds["rate:a"] == 0.6
    assert study.sampler.walk_state(study).committed["rate:a"] == 0.6
    assert study.sampler.walk_state(study).done


def test_exact_cut_never_changes_the_selection_and_saves_images():
    full = run(PrioritizedSampler(), make(pruner=None))
    cut = run(PrioritizedSampler(), make(pruner=ConstraintPruner()))
    assert [rates_of(t) for t in full.trials] == [rates_of(t) for t in cut.trials]
    assert result(full).selected == result(cut).selected
    pruned = [t for t in cut.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.constraints["accuracy"] > 0 and t.user_attrs["cut_reason"] for t in pruned)
    assert result(cut).stats["images_evaluated"] < result(full).stats["images_evaluated"]


def test_uniform_tries_every_rate_from_the_top_and_cuts_for_memory():
    study = run(UniformSampler(), make())
    rates = [t.user_attrs["rate"] for t in study.trials[1:]]
    assert rates == sorted(GRID, reverse=True) and len(study.trials) == 10
    memory_cut = [t for t in study.trials if "memory:" in (t.user_attrs.get("cut_reason") or "")]
    assert {t.user_attrs["rate"] for t in memory_cut} == {0.1, 0.2}
    assert all(t.user_attrs["images_evaluated"] == 0 and t.constraints["memory"] > 0 for t in memory_cut)
    res = result(study)
    assert not res.both_met and len(res.closest)  # one rate for all layers cannot do it here
    assert "cannot both be met" in res.message


def test_a_finished_study_gives_idle_trials_and_is_exhausted():
    study = run(PrioritizedSampler(), make())
    n = len(study.trials)
    assert study.sampler.is_exhausted(study)
    study.optimize(make(), n_trials=3)
    assert len(study.trials) == n + 1  # the idle trial stops the study again
    idle = study.trials[-1]
    assert idle.state == TrialState.PRUNED and idle.user_attrs["phase"] == "idle"


def test_planned_rates_are_read_without_a_storage_call_per_parameter(tmp_path, monkeypatch):
    """The claim a trial's sampler wrote is kept for that trial: suggesting each of its rates must
    not query storage again (it did, once per parameter, which dominated large studies)."""
    storage = sqlite(tmp_path)
    sampler = PrioritizedSampler()
    reads = {"inside": False, "count": 0}
    for name in ("get_trial", "get_trial_system_attrs"):
        original = getattr(type(storage), name)

        def counted(self, *args, _original=original, **kwargs):
            reads["count"] += reads["inside"]
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(type(storage), name, counted)
    inner = sampler.sample_independent

    def sample_independent(*args, **kwargs):
        reads["inside"] = True
        try:
            return inner(*args, **kwargs)
        finally:
            reads["inside"] = False

    monkeypatch.setattr(sampler, "sample_independent", sample_independent)
    study = run(sampler, make(), storage=storage, n_trials=12)
    assert len(study.trials) == 12 and reads["count"] == 0


def sqlite(tmp_path: Path):
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}")


def test_resume_after_interrupt_continues_the_walk(tmp_path):
    storage = sqlite(tmp_path)
    reference = run(PrioritizedSampler(**SMALL), make(**SMALL))

    class Interrupt(SyntheticObjective):
        def iter_batches(self, rates):
            for i, batch in enumerate(super().iter_batches(rates)):
                if rates == {"a": 0.6, "b": 0.3} and i == 3:
                    raise KeyboardInterrupt
                yield batch

    with pytest.raises(KeyboardInterrupt):
        run(PrioritizedSampler(**SMALL), Interrupt(SIZES, **{**SETTINGS, **SMALL}), storage=storage)
    interrupted = optuna.load_study(study_name="s", storage=storage)
    assert interrupted.trials[-1].state == TrialState.FAIL and interrupted.trials[-1].user_attrs["interrupted"]

    resumed = optuna.load_study(study_name="s", storage=sqlite(tmp_path), sampler=PrioritizedSampler(**SMALL))
    resumed.optimize(make(**SMALL))
    done = [rates_of(t) for t in resumed.trials if t.state != TrialState.FAIL]
    assert done == [rates_of(t) for t in reference.trials]
    assert result(resumed).selected["rates"] == result(reference).selected["rates"]


def test_resume_refuses_other_settings(tmp_path):
    storage = sqlite(tmp_path)
    run(PrioritizedSampler(), make(), storage=storage, n_trials=3)
    study = optuna.load_study(study_name="s", storage=storage, sampler=PrioritizedSampler(grid=[0.25, 0.5, 0.75]))
    with pytest.raises(PrimeSVTError, match="grid"):
        study.optimize(make(), n_trials=1)
    study = optuna.load_study(study_name="s", storage=storage, sampler=PrioritizedSampler())
    with pytest.raises(PrimeSVTError, match="constraints"):
        study.optimize(make(memory_target=0.5), n_trials=1)


def test_threads_claim_distinct_configurations_and_commit_the_same_rates():
    reference = run(PrioritizedSampler(), make())
    study = run(PrioritizedSampler(poll_interval=0.02), make(delay=0.002), n_jobs=2)
    keys = [t.system_attrs[CLAIM]["key"] for t in study.trials if t.user_attrs["phase"] != "idle"]
    assert len(keys) == len(set(keys))
    assert study.sampler.walk_state(study).committed == reference.sampler.walk_state(reference).committed
    assert all(t.state.is_finished() for t in study.trials)


WORKER_SCRIPT = """
import sys, optuna
from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective
from primesvt_optuna.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
settings = dict(accept="point")
storage = open_storage(sys.argv[1])
settings.update({settings!r})
obj = SyntheticObjective({sizes!r}, delay=float(sys.argv[2]), **settings)
sampler = PrioritizedSampler(grid=settings.get("grid", {grid!r}), poll_interval=0.05)
study = optuna.load_study(study_name="s", storage=storage, sampler=sampler)
study.optimize(obj)
"""


def _worker(tmp_path: Path, storage: str, delay: float, fault: str | None = None, **settings) -> subprocess.Popen:
    """A worker process; ``fault`` = (point@trial, KILL or STOP): see primesvt_optuna.faults."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER_SCRIPT.format(sizes=SIZES, settings={**SETTINGS, **settings}, grid=GRID)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if fault is not None:
        env.update(PRIMESVT_FAULT=fault[0], PRIMESVT_FAULT_SIGNAL=fault[1])
    return subprocess.Popen([sys.executable, str(script), storage, str(delay)], env=env)


def _until(condition, what: str, timeout: float = 240):
    """Wait for an event that must happen; the deadline matters only when a test fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    """Worker A stops itself once it has claimed trial 1; B must take the next configurations; A is
    continued once B has finished one, so both did work whatever the machine's load."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(directions=make().directions, storage=open_storage(url), study_name="s")
    first = _worker(tmp_path, url, 0.003, ("claimed@1", "STOP"), **SMALL)
    _until(lambda: _state(first.pid) == "T", "worker A stopped at its fault point")
    second = _worker(tmp_path, url, 0.003, **SMALL)

    def second_finished_one():
        trials = optuna.load_study(study_name="s", storage=open_storage(url)).trials
        return any(t.state.is_finished() and t.system_attrs.get(WORKER, {}).get("pid") == second.pid for t in trials)

    _until(second_finished_one, "worker B finished a trial")
    os.kill(first.pid, signal.SIGCONT)
    assert [w.wait(timeout=240) for w in (first, second)] == [0, 0]
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    evaluated = [t for t in study.trials if t.user_attrs.get("phase") != "idle"]
    keys = [t.system_attrs[CLAIM]["key"] for t in evaluated]
    assert len(keys) == len(set(keys)), "a configuration was evaluated twice"
    assert {t.system_attrs[WORKER]["pid"] for t in evaluated} == {first.pid, second.pid}, "both workers did work"
    assert all(t.state.is_finished() for t in study.trials)
    reference = run(PrioritizedSampler(**SMALL), make(**SMALL))
    assert result(study).selected["rates"] == result(reference).selected["rates"]


def test_killed_worker_on_journal_storage_is_detected_and_its_trial_redone(tmp_path):
    path = str(tmp_path / "journal.log")
    storage = open_storage(path)
    optuna.create_study(directions=make().directions, storage=storage, study_name="s")
    worker = _worker(tmp_path, path, 0.0, ("evaluating@3", "KILL"), **SMALL)
    assert worker.wait(timeout=240) == -signal.SIGKILL
    storage = JournalStorage(JournalFileBackend(path))  # plain journal: no heartbeat, only the PID check
    study = optuna.load_study(study_name="s", storage=storage, sampler=PrioritizedSampler(**SMALL))
    killed = study.trials[-1]
    assert killed.number == 3 and killed.state == TrialState.RUNNING  # journal storage has no heartbeat
    assert fail_stale_trials(study) == [killed.number]
    study.optimize(make(**SMALL))
    killed = study.trials[killed.number]
    assert killed.state == TrialState.FAIL and "is gone" in killed.system_attrs["primesvt:stale"]
    redone = [t for t in study.trials if t.system_attrs[CLAIM]["key"] == killed.system_attrs[CLAIM]["key"]]
    assert len(redone) == 2 and redone[-1].state != TrialState.FAIL
    uninterrupted = run(PrioritizedSampler(**SMALL), make(**SMALL))
    assert result(study).selected["rates"] == result(uninterrupted).selected["rates"]


@pytest.mark.parametrize(
    "cls", [PrioritizedSampler, SmallestFirstSampler, RandomOrderSampler, UniformSampler, plugin.SyntheticObjective,
            JointSampler],
    ids=lambda c: c.__name__,
)
def test_docstring_examples_run(cls):
    import re

    blocks = re.findall(r"\.\. testcode::\n\n(.*?)(?=\n    [A-Z][a-z]+:|\Z)", cls.__doc__, re.S)
    assert blocks
    for block in blocks:
        exec(compile(textwrap.dedent(block), cls.__name__, "exec"), {})


@pytest.mark.parametrize("policy", list(ORDERS))
def test_lazy_and_full_sweep_commit_identical_rates_on_digits_tiny(policy):
    """The real objective on the digits-tiny preset: the same commits for fewer evaluated images."""
    import torch

    from primesvt_optuna.data import make_spec
    from primesvt_optuna.models import build_model

    torch.manual_seed(0)
    model = build_model({"preset": "digits-tiny"})
    studies = {}
    for sweep in ("full", "lazy"):
        objective = PruningObjective(model=model, data=make_spec("digits", img_size=16), eval_images=64, batch_size=32,
                                     grid=[0.25, 0.5, 0.75], max_accuracy_drop=0.05, memory_target=0.4)
        study = optuna.create_study(directions=objective.directions,
                                    sampler=ORDERS[policy][0](grid=objective.grid, sweep=sweep))
        study.optimize(objective)
        studies[sweep] = study
    commits = {k: [(c.layer, c.rate) for c in s.sampler.walk_state(s).commits] for k, s in studies.items()}
    assert commits["lazy"] == commits["full"] and any(rate > 0 for _, rate in commits["full"])
    images = {k: result(s).stats["images_evaluated"] for k, s in studies.items()}
    assert images["lazy"] < images["full"]


def test_a_trial_is_marked_seen_only_once_its_outcome_is_indexed():
    """Threads of one process share the finished-trial index, and a snapshot skips a trial the
    index has seen. Marking it seen before its outcome was stored let another thread see the
    configuration as neither finished nor running, i.e. free, and evaluate it a second time."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[0.9, 100.0], params={"rate:a": 0.5},
        distributions={"rate:a": optuna.distributions.FloatDistribution(0.0, 0.9)}))
    index = FinishedIndex(lambda t: "key-a")

    class CheckedSet(set):
        def add(self, trial_id):
            assert "key-a" in index.outcomes, "marked seen before its outcome was indexed"
            super().add(trial_id)

    index.seen = CheckedSet()
    index.add(study.trials[0])
    assert index.outcomes["key-a"][1] is True and study.trials[0]._trial_id in index.seen


def test_one_sampler_reused_for_many_studies_never_reads_another_storages_cache():
    """A sampler caches what it read per study. Keyed by id(storage), a freed storage's id was
    reused by the next study's storage (CPython reuses freed addresses), which then inherited the
    old study's outcomes: some studies ran 1 trial, others 14, where each objective needs 5 or 7."""
    import gc

    grid = [0.3, 0.6, 0.9]
    sampler = BudgetAwareSampler(grid=grid)
    ids, reused, runs = set(), 0, {0: set(), 1: set()}
    for i in range(40):
        obj = SyntheticObjective({"big": 4000, "mid": 3000, "small": 1000},
                                 sensitivity={"big": 0.5 if i % 2 else 0.001, "mid": 0.01, "small": 0.01},
                                 max_accuracy_drop=0.03, memory_target=0.3, grid=grid)
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=obj.directions,
                                    sampler=sampler)
        study.optimize(obj)
        reused += id(study._storage) in ids
        ids.add(id(study._storage))
        runs[i % 2].add(tuple(tuple(sorted(t.params.items())) for t in study.trials))
        del study
        gc.collect()
    if not reused:
        pytest.skip("no storage address was reused in this run")
    assert all(len(paths) == 1 for paths in runs.values()), {k: sorted(len(p) for p in v) for k, v in runs.items()}


class _BrokenReference(SyntheticObjective):
    """Fails on the unpruned model only (as a wrong device or unreadable data would on every one)."""

    def iter_batches(self, rates):
        if not any(rates.values()):
            raise RuntimeError("cannot evaluate")
        return super().iter_batches(rates)


@pytest.mark.parametrize("sampler", [PrioritizedSampler, BudgetAwareSampler, UniformSampler])
def test_a_failed_reference_stops_the_study_instead_of_evaluating_everything(sampler, caplog):
    """Before, each policy went on to evaluate (and fail) every configuration: 136 trials for a
    walk on digits with an unknown device."""
    obj = _BrokenReference(SIZES, grid=GRID)
    study = optuna.create_study(directions=obj.directions, sampler=sampler(grid=GRID))
    study.optimize(obj, n_trials=30)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert "cannot evaluate" in study.trials[0].user_attrs["fail_reason"]
    assert "unpruned reference, trial 0, failed (RuntimeError: cannot evaluate)" in caplog.text
    study.optimize(obj, n_trials=30)  # resumed: stops at once, with an idle trial saying why
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.PRUNED]
    assert "unpruned reference, trial 0, failed" in study.trials[1].user_attrs["cut_reason"]
