"""A walk resumed on a storage the user built, as the README's API example does (a URL string
given to ``optuna.create_study``, an ``RDBStorage`` with or without Optuna's heartbeat, a
``JournalStorage``): no dead trial blocks it, whatever point of its life it died at, also the
moment between Optuna creating the trial and the sampler's first write, when the trial has no
worker record. Waiting on a live trial that never finishes ends with one error naming it.

The command is ``tests/_synthetic_walk.py`` with ``PRIMESVT_TEST_STORAGE`` (plain
``study.optimize`` on the user's storage), killed with ``PRIMESVT_FAULT`` at an exact point or,
in the random-kill test, by a timer. Under CPU load (slow process starts move the kills into the
first trials) the random-kill test runs with
``python benchmarks/bench_reliability.py --repeat 5 --hog 2 tests/test_user_storages.py::test_random_kills_then_resume``.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

import _synthetic_walk as walk
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.faults import POINTS
from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective
from primesvt_optuna.plugin.samplers._claims import rates_key
from primesvt_optuna.storage import (
    CLAIM, SAMPLER, STALE, WORKER, fail_stale_trials, open_storage, parse_storage, stale_reason,
)

SCRIPT = Path(__file__).with_name("_synthetic_walk.py")
UNRECORDED = 2  # PRIMESVT_UNRECORDED_AFTER of every process here (s)
RESUMED_WITHIN = 30  # s: a resume has finished its first evaluation within this after its start
DEADLINE = 240  # s; reached only when a test fails
pytestmark = pytest.mark.slow

# (storage mode, backend, fault points): every way a user hands Optuna a storage without
# open_storage. Every point on the README's own case (a SQLite URL string); on the others the
# point that differs from open_storage's storages (created: no worker record) and one each
# before and after the evaluation (the PID rule, shared with tests/test_crash_resume.py)
OTHERS = ("created", "claimed", "after_trial")
KINDS = [
    *[("url", "sqlite", point) for point in POINTS],
    *[pytest.param("url", "postgresql", point, marks=pytest.mark.postgres) for point in OTHERS],
    *[("rdb", "sqlite", point) for point in OTHERS],
    *[pytest.param("rdb-heartbeat", "postgresql", point, marks=pytest.mark.postgres) for point in OTHERS],
    *[("journal", "journal", point) for point in OTHERS],
]


@pytest.fixture(scope="module")
def reference() -> dict:
    return walk.expected()


@pytest.fixture
def url_of(tmp_path, request) -> Iterator:
    """backend -> a fresh storage URL of it (PostgreSQL studies are deleted afterwards)."""
    made: list[str] = []

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path}/study.db"
        if backend == "journal":
            return f"journal:///{tmp_path}/study.log"
        made.append(parse_storage(request.getfixturevalue("postgres_url")).url)  # names the installed driver
        return made[-1]

    yield make
    for url in made:
        for summary in optuna.get_all_study_summaries(open_storage(url)):
            if summary.study_name.startswith("user-"):
                optuna.delete_study(study_name=summary.study_name, storage=open_storage(url))


def _env(mode: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIMESVT_FAULT", "PRIMESVT_FAKE_HOST"))}
    return {**env, "PRIMESVT_TEST_STORAGE": mode, "PRIMESVT_UNRECORDED_AFTER": str(UNRECORDED), **extra}


def _command(url: str, name: str, delay: float = 0.0) -> list[str]:
    return [sys.executable, str(SCRIPT), url, name, "1", str(delay)]


def _resume(url: str, name: str, mode: str) -> tuple[dict, float]:
    """The same command again, without a fault: its summary, and the seconds from its start until
    it had finished its first evaluation (it *continues*; under load the whole walk takes longer)."""
    before = len(_trials(url, name)) if _exists(url, name) else 0
    started = datetime.datetime.now()
    done = subprocess.run(_command(url, name), env=_env(mode), capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = [t.datetime_complete for n, t in _trials(url, name).items()
                 if n >= before and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return json.loads(done.stdout.strip().splitlines()[-1]), (min(evaluated) - started).total_seconds()


def _exists(url: str, name: str) -> bool:
    return name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(url))}


def _trials(url: str, name: str) -> dict[int, FrozenTrial]:
    return {t.number: t for t in optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()}


def _same_as_uninterrupted(got: dict, reference: dict) -> None:
    assert got["finished"]
    assert got["selected"] == reference["selected"]
    assert got["commits"] == reference["commits"]
    assert got["duplicates"] == [], "a configuration was evaluated twice"
    assert "RUNNING" not in got["states"] and "WAITING" not in got["states"], got["states"]


@pytest.mark.parametrize(("mode", "backend", "point"), KINDS)
def test_killed_at_every_point_then_resumed_on_a_user_storage(url_of, mode: str, backend: str, point: str,
                                                               reference: dict) -> None:
    """Killed at ``point`` of the second walk trial; the same command then finishes the walk with
    the uninterrupted selection within 30 s. Killed at ``created`` the trial has no worker record
    (Optuna created it, the sampler never wrote): it is failed once it is UNRECORDED s old."""
    url, name = url_of(backend), f"user-{uuid.uuid4().hex[:8]}"
    number = reference["walk_trials"][1]
    killed = subprocess.run(_command(url, name), env=_env(mode, PRIMESVT_FAULT=f"{point}@{number}"),
                            capture_output=True, text=True, timeout=DEADLINE)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    dead = _trials(url, name)[number]
    assert dead.state == TrialState.RUNNING
    assert (WORKER in dead.system_attrs) == (point != "created"), "only a trial killed at creation has no record"

    got, seconds = _resume(url, name, mode)
    _same_as_uninterrupted(got, reference)
    assert seconds < RESUMED_WITHIN
    reason = _trials(url, name)[number].system_attrs[STALE]
    assert ("no worker record" if point == "created" else "is gone") in reason


@pytest.mark.parametrize("seed", range(8))
def test_random_kills_then_resume(tmp_path, seed: int, reference: dict) -> None:
    """A walk on a plain SQLite URL killed three times after a random 0.4-1.6 s (wherever that
    lands: before its first trial, mid-creation, mid-evaluation); the fourth run finishes within
    30 s with the uninterrupted selection and nothing RUNNING."""
    url, name, rng = f"sqlite:///{tmp_path}/study.db", "random-kill", random.Random(seed)
    for _ in range(3):
        proc = subprocess.Popen(_command(url, name, 0.002), env=_env("url"), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.4, 1.6))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    got, seconds = _resume(url, name, "url")
    _same_as_uninterrupted(got, reference)
    assert seconds < RESUMED_WITHIN


def test_waiting_on_a_live_trial_ends_with_an_error_naming_it() -> None:
    """A trial of a live worker elsewhere holds the reference and never finishes (no heartbeat on
    this storage, so nothing can call it dead): after ``wait_timeout`` with no trial finishing, the
    next trial fails with one error naming the trial it waited on, never a finished-looking walk."""
    objective = SyntheticObjective({"fc1": 100, "fc2": 50}, max_accuracy_drop=0.03, memory_target=0.3)
    study = optuna.create_study(directions=objective.directions,
                                sampler=PrioritizedSampler(wait_timeout=0.5, poll_interval=0.05))
    held = study._storage.create_new_trial(study._study_id)
    study._storage.set_trial_system_attr(held, WORKER, {"host": "elsewhere.example", "pid": 1, "time": time.time()})
    study._storage.set_trial_system_attr(held, CLAIM, {"key": rates_key({}), "phase": "reference"})
    started = time.monotonic()
    with pytest.raises(PrimeSVTError, match=r"^trial 1 waited 0.5 s with no trial finishing, for the reference trial "
                                            r".*, held by trial 0 \(worker pid 1 on elsewhere.example\): if that "
                                            r"worker is dead"):
        study.optimize(objective)
    assert time.monotonic() - started < 10
    waiting = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, 1))
    assert waiting.state == TrialState.FAIL and "no configuration chosen" in waiting.user_attrs["fail_reason"]
    assert "phase" not in waiting.user_attrs, "an error, not an idle trial a report reads as the walk's end"


def _trial(age: float, **system: object) -> FrozenTrial:
    start = datetime.datetime.now() - datetime.timedelta(seconds=age)
    return FrozenTrial(number=0, state=TrialState.RUNNING, value=None, datetime_start=start, datetime_complete=None,
                       params={}, distributions={}, user_attrs={}, system_attrs=dict(system),
                       intermediate_values={}, trial_id=0)


def test_the_rule_for_trials_without_a_worker_record() -> None:
    """Dead once older than the limit, and only when nothing shows its worker: no record, no claim
    (a trial of another host keeps the grace-period rule); no limit given, never by this rule."""
    assert stale_reason(_trial(UNRECORDED + 1), None, unrecorded=UNRECORDED).startswith("no worker record")
    assert stale_reason(_trial(UNRECORDED - 1), None, unrecorded=UNRECORDED) is None
    assert stale_reason(_trial(UNRECORDED + 1), None) is None
    other_host = {"host": "elsewhere.example", "pid": 1, "time": time.time()}
    assert stale_reason(_trial(60, **{WORKER: other_host}), None, unrecorded=UNRECORDED) is None
    assert stale_reason(_trial(60, **{CLAIM: {"key": None}}), None, unrecorded=UNRECORDED) is None


@pytest.mark.parametrize("primesvt_study", [True, False])
def test_fail_stale_trials_applies_the_rule_in_primesvt_studies_only(tmp_path, monkeypatch, primesvt_study: bool) -> None:
    """A study of another sampler (TPE, say) may run trials that never get a worker record: only
    in a study a PrimeSVT sampler runs does ``fail_stale_trials`` fail such a trial."""
    monkeypatch.setenv("PRIMESVT_UNRECORDED_AFTER", "1")
    storage = RDBStorage(f"sqlite:///{tmp_path}/plain.db")
    study = optuna.create_study(storage=storage)
    if primesvt_study:
        study.set_user_attr(SAMPLER, {"policy": "prioritized"})
    trial = study.ask()
    assert fail_stale_trials(study) == []  # too young
    time.sleep(1.2)
    assert fail_stale_trials(study) == ([trial.number] if primesvt_study else [])
