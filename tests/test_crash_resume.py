"""A worker killed with SIGKILL mid-trial, and a search stopped with Ctrl-C, on SQLite, a journal
file and PostgreSQL: running the same command again finishes the walk with the same selected
configuration as an uninterrupted run, and no trial is left RUNNING.

The command is ``tests/_synthetic_walk.py STORAGE STUDY K DELAY`` (the SyntheticObjective behind
``run_workers``/``optimize``, as ``primesvt search --workers K`` runs it), in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

import _synthetic_walk as walk
from primesvt_optuna.storage import STALE, open_storage

SCRIPT = Path(__file__).with_name("_synthetic_walk.py")
DELAY = 0.01  # per batch: 0.1 s per evaluated trial, long enough to be caught in the middle
HEARTBEAT = {"PRIMESVT_HEARTBEAT_INTERVAL": "1", "PRIMESVT_GRACE_PERIOD": "3"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference() -> dict:
    return walk.expected()


@pytest.fixture
def study_name(storage_url: str) -> Iterator[str]:
    name = f"crash-{uuid.uuid4().hex[:8]}"
    yield name
    if storage_url.startswith("postgresql"):
        try:
            optuna.delete_study(study_name=name, storage=open_storage(storage_url))
        except KeyError:
            pass


def _command(url: str, name: str, k: int) -> list[str]:
    return [sys.executable, str(SCRIPT), url, name, str(k), str(DELAY)]


def _start(url: str, name: str, k: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        _command(url, name, k), env={**os.environ, **HEARTBEAT, **env}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _trials(url: str, name: str) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    except KeyError:  # not created yet
        return []


def _wait_for(url: str, name: str, proc: subprocess.Popen, found: Callable[[list[FrozenTrial]], bool]) -> list[FrozenTrial]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = _trials(url, name)
        if found(trials):
            return trials
        assert proc.poll() is None, f"the search ended before the fault was injected: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError("the walk never got there")


def _in_walk(trials: list[FrozenTrial]) -> bool:
    """A walk trial is being evaluated (at least two walk trials exist, so a commit is behind us)."""
    walked = [t for t in trials if t.user_attrs.get("phase") == "walk"]
    return len(walked) >= 2 and walked[-1].state == TrialState.RUNNING


def _resume(url: str, name: str, k: int, env: dict[str, str]) -> dict:
    done = subprocess.run(
        _command(url, name, k), env={**os.environ, **HEARTBEAT, **env}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_same_as_uninterrupted(got: dict, reference: dict) -> None:
    assert got["finished"]
    assert got["selected"] == reference["selected"]
    assert got["commits"] == reference["commits"]
    assert got["duplicates"] == []
    assert "RUNNING" not in got["states"] and "WAITING" not in got["states"]


@pytest.mark.parametrize("host", ["same", "other"])
def test_sigkill_mid_trial_then_resume(storage_url: str, study_name: str, host: str, reference: dict) -> None:
    """``same``: the resumed run sees the dead PID and frees the trial at once. ``other``: the
    killed worker recorded another host name, so only the heartbeat (Optuna's on PostgreSQL, ours
    on the journal) can tell, after the grace period. (SQLite serves one machine: same host only.)"""
    if host == "other" and storage_url.startswith("sqlite"):
        pytest.skip("a SQLite file is not shared between machines")
    first = {"PRIMESVT_FAKE_HOST": "worker-a.example"} if host == "other" else {}
    proc = _start(storage_url, study_name, 1, first)
    try:
        trials = _wait_for(storage_url, study_name, proc, _in_walk)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed = next(t for t in reversed(_trials(storage_url, study_name)) if t.state == TrialState.RUNNING)
    assert killed.number >= trials[-1].number - 1
    if host == "other":
        time.sleep(float(HEARTBEAT["PRIMESVT_GRACE_PERIOD"]) + 1.5)

    got = _resume(storage_url, study_name, 1, {})
    _check_same_as_uninterrupted(got, reference)
    after = {t.number: t for t in _trials(storage_url, study_name)}
    assert after[killed.number].state == TrialState.FAIL
    reason = after[killed.number].system_attrs.get(STALE, "")
    assert reason == "" or "is gone" in reason or "heartbeat" in reason
    retried = [t for t in after.values() if t.number > killed.number
               and t.system_attrs.get("primesvt:claim", {}).get("key") == killed.system_attrs["primesvt:claim"]["key"]]
    assert retried and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED), "the killed trial was not retried"


def _interrupt_and_resume(url: str, name: str, k: int, send: Callable[[subprocess.Popen], None], reference: dict) -> None:
    proc = _start(url, name, k, {})
    try:
        _wait_for(url, name, proc, _in_walk)
        send(proc)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted:" in err and "resume with: primesvt search" in err and "--resume" in err
    trials = _trials(url, name)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING], "Ctrl-C left trials RUNNING"
    stopped = [t for t in trials if t.user_attrs.get("interrupted")]
    assert all(t.state == TrialState.FAIL for t in stopped)  # none when Ctrl-C fell between two trials
    _check_same_as_uninterrupted(_resume(url, name, k, {}), reference)


def test_ctrl_c_from_terminal(storage_url: str, study_name: str, reference: dict) -> None:
    """A terminal's Ctrl-C: SIGINT to every process of the job (one worker on SQLite, where the
    interrupt lands in the main process; two elsewhere)."""
    k = 1 if storage_url.startswith("sqlite") else 2
    _interrupt_and_resume(storage_url, study_name, k, lambda p: os.killpg(p.pid, signal.SIGINT), reference)


def test_sigint_to_parent_only_is_forwarded(tmp_path, reference: dict) -> None:
    """``kill -INT`` on the parent alone: it forwards the interrupt to its workers."""
    url = f"journal:///{tmp_path}/study.log"
    _interrupt_and_resume(url, "sigint", 2, lambda p: os.kill(p.pid, signal.SIGINT), reference)


def test_live_worker_takes_over_from_a_dead_one_on_another_host(tmp_path, reference: dict) -> None:
    """Two machines on one journal study; one dies mid-trial. The survivor, possibly already
    waiting on the dead trial, must see its heartbeat expire and finish the walk on its own, long
    before its wait timeout (300 s): the walk's wait loop calls ``storage.keep_alive`` and
    ``storage.fail_heartbeat_stale`` (on PostgreSQL the same code path runs Optuna's check)."""
    url = f"journal:///{tmp_path}/study.log"
    name = f"takeover-{uuid.uuid4().hex[:8]}"
    doomed = _start(url, name, 1, {"PRIMESVT_FAKE_HOST": "worker-a.example"})
    survivor = None
    try:
        _wait_for(url, name, doomed, lambda trials: len(trials) >= 2)
        survivor = _start(url, name, 1, {"PRIMESVT_FAKE_HOST": "worker-b.example"})
        _wait_for(url, name, doomed, _in_walk)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)
        out, err = survivor.communicate(timeout=75)
        assert survivor.returncode == 0, err[-3000:]
        _check_same_as_uninterrupted(json.loads(out.strip().splitlines()[-1]), reference)
    finally:
        for proc in (doomed, survivor):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
