"""A worker killed at every moment of a trial's life, paused, or stopped with Ctrl-C, on SQLite, a
journal file and PostgreSQL: running the same command again finishes the walk with the same
selected configuration as an uninterrupted run, leaves no trial RUNNING or WAITING, and evaluates
no configuration twice beyond the one the crash interrupted.

The command is ``tests/_synthetic_walk.py STORAGE STUDY K DELAY`` (the SyntheticObjective behind
``run_workers``/``optimize``, as ``primesvt search --workers K`` runs it), in a subprocess. Every
fault is placed with ``PRIMESVT_FAULT=<point>@<trial>`` (``primesvt_optuna.faults``): the worker
kills or stops itself at that exact point, so nothing here races a timer. The only waits are for
events that must happen (a process reaching its stop point) under deadlines that matter only when
a test fails, and sleeps that let a grace period elapse on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

import _synthetic_walk as walk
from primesvt_optuna.faults import POINTS
from primesvt_optuna.storage import CLAIM, STALE, fail_stale_trials, open_storage

SCRIPT = Path(__file__).with_name("_synthetic_walk.py")
INTERVAL, GRACE = 1, 3  # heartbeat interval and grace period (s) of every process in these tests
DEADLINE = 240  # seconds; reached only when a test fails
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


def _env(grace: int = GRACE, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIMESVT_FAULT", "PRIMESVT_FAKE_HOST"))}
    return {**env, "PRIMESVT_HEARTBEAT_INTERVAL": str(INTERVAL), "PRIMESVT_GRACE_PERIOD": str(grace), **extra}


def _command(url: str, name: str, k: int, delay: float = 0.0) -> list[str]:
    return [sys.executable, str(SCRIPT), url, name, str(k), str(delay)]


def _start(url: str, name: str, k: int, env: dict[str, str], delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        _command(url, name, k, delay), env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _run(url: str, name: str, k: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(_command(url, name, k), env=env, capture_output=True, text=True, timeout=DEADLINE)


def _resume(url: str, name: str, k: int = 1) -> dict:
    """The same command again, on this host, without any fault."""
    done = _run(url, name, k, _env())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trials(url: str, name: str) -> dict[int, FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return {t.number: t for t in study.get_trials()}


def _stopped(group: int) -> int:
    """Wait until a process of session ``group`` has stopped itself at its fault point; its PID."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "T" and int(fields[3]) == group:
                return int(entry)
        time.sleep(0.05)
    raise AssertionError("no worker reached its stop point")


def _pending(pid: int, signum: int) -> None:
    """Wait until ``signum`` is pending on the stopped process ``pid`` (delivered once continued)."""
    deadline = time.monotonic() + DEADLINE
    bit = 1 << (signum - 1)
    while time.monotonic() < deadline:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        if (int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)) & bit:
            return
        time.sleep(0.05)
    raise AssertionError(f"signal {signum} never reached process {pid}")


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _check_same_as_uninterrupted(got: dict, reference: dict) -> None:
    assert got["finished"]
    assert got["selected"] == reference["selected"]
    assert got["commits"] == reference["commits"]
    assert got["duplicates"] == [], "a configuration was evaluated twice"
    assert "RUNNING" not in got["states"] and "WAITING" not in got["states"], got["states"]


def _fault_trial(reference: dict) -> int:
    """The second walk trial: a commit is behind it, so a wrong resume shows in the commits."""
    return reference["walk_trials"][1]


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("host", ["same", "other"])
def test_killed_at_every_point_then_resume(storage_url: str, study_name: str, host: str, point: str, reference: dict) -> None:
    """``same``: the resumed run sees the dead PID and fails the trial at once. ``other``: the killed
    worker recorded another host name, so only the silence past the grace period can tell (the
    resumed worker waits for it rather than duplicate its configuration). SQLite serves one machine."""
    if host == "other" and storage_url.startswith("sqlite"):
        pytest.skip("a SQLite file is not shared between machines")
    number = _fault_trial(reference)
    fake = {"PRIMESVT_FAKE_HOST": "worker-a.example"} if host == "other" else {}
    killed = _run(storage_url, study_name, 1, _env(PRIMESVT_FAULT=f"{point}@{number}", **fake))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = _trials(storage_url, study_name)
    assert before[number].state == TrialState.RUNNING and max(before) == number, "the fault left no zombie to clear"
    claim = before[number].system_attrs.get(CLAIM) or {}
    assert bool(claim) == (point not in ("created", "worker"))

    _check_same_as_uninterrupted(_resume(storage_url, study_name), reference)
    after = _trials(storage_url, study_name)
    assert after[number].state == TrialState.FAIL
    assert ("is gone" if host == "same" else "no heartbeat") in after[number].system_attrs[STALE]
    if claim.get("key"):
        retried = [t for t in after.values() if t.number > number and (t.system_attrs.get(CLAIM) or {}).get("key") == claim["key"]]
        assert [t.state for t in retried] in ([TrialState.COMPLETE], [TrialState.PRUNED]), "not retried exactly once"


@pytest.mark.parametrize("point", ["claimed", "after_trial"])
def test_budget_aware_killed_in_its_plan_then_resume(tmp_path, point: str, monkeypatch) -> None:
    """The budget-aware sampler shares the claim machinery: killed once its plan's verification
    is claimed, or once evaluated but before its outcome is stored, the same command finishes
    with the uninterrupted run's selection."""
    monkeypatch.setenv("PRIMESVT_TEST_POLICY", "budget-aware")
    reference = walk.expected()
    url, name = f"sqlite:///{tmp_path}/study.db", "budget-aware"
    number = reference["walk_trials"][0]  # the plan's first verification
    killed = _run(url, name, 1, _env(PRIMESVT_FAULT=f"{point}@{number}"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _trials(url, name)[number].state == TrialState.RUNNING
    _check_same_as_uninterrupted(_resume(url, name), reference)
    assert _trials(url, name)[number].state == TrialState.FAIL


@pytest.mark.parametrize("storage_kind", ["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_paused_worker_keeps_its_trial_within_the_grace_period(storage_kind: str, tmp_path, request, reference: dict) -> None:
    """A worker of another host frozen (SIGSTOP) mid-evaluation for several heartbeat intervals, but
    less than the grace period, keeps its trial: a reader's stale check leaves it alone, and once
    continued the worker finishes it (no second evaluation anywhere)."""
    url = f"journal:///{tmp_path}/study.log" if storage_kind == "journal" else request.getfixturevalue("postgres_url")
    name = f"paused-{uuid.uuid4().hex[:8]}"
    number, grace = _fault_trial(reference), 30
    proc = _start(url, name, 1, _env(grace, PRIMESVT_FAKE_HOST="worker-a.example",
                                     PRIMESVT_FAULT=f"evaluating@{number}", PRIMESVT_FAULT_SIGNAL="STOP"))
    try:
        pid = _stopped(proc.pid)
        time.sleep(3 * INTERVAL)  # three heartbeats missed; far inside the 30 s grace period
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_interval=INTERVAL, grace_period=grace))
        assert fail_stale_trials(study) == []
        assert _trials(url, name)[number].state == TrialState.RUNNING
        os.kill(pid, signal.SIGCONT)
        out, err = _finish(proc)
        assert proc.returncode == 0, err[-3000:]
        _check_same_as_uninterrupted(json.loads(out.strip().splitlines()[-1]), reference)
        assert _trials(url, name)[number].state in (TrialState.COMPLETE, TrialState.PRUNED)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if storage_kind == "postgresql":
            optuna.delete_study(study_name=name, storage=open_storage(url))


def test_paused_local_worker_is_never_failed(tmp_path, reference: dict) -> None:
    """On this host a live process keeps its trial however long it stalls: past the grace period too."""
    url, name, number = f"sqlite:///{tmp_path}/study.db", "paused-local", _fault_trial(reference)
    proc = _start(url, name, 1, _env(2, PRIMESVT_FAULT=f"claimed@{number}", PRIMESVT_FAULT_SIGNAL="STOP"))
    try:
        pid = _stopped(proc.pid)
        time.sleep(3)  # past the 2 s grace period
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_interval=1, grace_period=2))
        assert fail_stale_trials(study) == []
        os.kill(pid, signal.SIGCONT)
        out, err = _finish(proc)
        assert proc.returncode == 0, err[-3000:]
        _check_same_as_uninterrupted(json.loads(out.strip().splitlines()[-1]), reference)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_worker_paused_past_the_grace_period_loses_its_trial_and_carries_on(tmp_path, reference: dict) -> None:
    """Frozen longer than the grace period on another host: a reader fails its trial; when the
    worker wakes, it drops that trial (its writes are refused) and finishes the walk."""
    url, name, number = f"journal:///{tmp_path}/study.log", "paused-long", _fault_trial(reference)
    proc = _start(url, name, 1, _env(2, PRIMESVT_FAKE_HOST="worker-a.example",
                                     PRIMESVT_FAULT=f"evaluating@{number}", PRIMESVT_FAULT_SIGNAL="STOP"))
    try:
        pid = _stopped(proc.pid)
        time.sleep(3)  # past the 2 s grace period
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_interval=1, grace_period=2))
        assert fail_stale_trials(study) == [number]
        os.kill(pid, signal.SIGCONT)
        out, err = _finish(proc)
        assert proc.returncode == 0, err[-3000:]
        assert "declared dead by another process" in err
        _check_same_as_uninterrupted(json.loads(out.strip().splitlines()[-1]), reference)
        assert "no heartbeat" in _trials(url, name)[number].system_attrs[STALE]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _interrupt_and_resume(url: str, name: str, k: int, to_group: bool, reference: dict) -> None:
    """Stop a worker mid-evaluation (fault point), send SIGINT as asked, let it continue: it must
    record its trial as interrupted, exit 130 with the resume hint, and the resume must finish."""
    proc = _start(url, name, k, _env(PRIMESVT_FAULT="evaluating@3", PRIMESVT_FAULT_SIGNAL="STOP"))
    try:
        stopped = _stopped(proc.pid)
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        _pending(stopped, signal.SIGINT)  # forwarded by the parent, or sent to the group
        os.kill(stopped, signal.SIGCONT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted:" in err and "resume with: primesvt search" in err and "--resume" in err
    trials = _trials(url, name)
    assert not [t.number for t in trials.values() if t.state == TrialState.RUNNING], "Ctrl-C left trials RUNNING"
    assert trials[3].state == TrialState.FAIL and trials[3].user_attrs.get("interrupted"), "trial 3 was mid-evaluation"
    _check_same_as_uninterrupted(_resume(url, name, k), reference)


def test_ctrl_c_from_terminal(storage_url: str, study_name: str, reference: dict) -> None:
    """A terminal's Ctrl-C: SIGINT to every process of the job (one worker on SQLite, where the
    interrupt lands in the main process; two elsewhere)."""
    k = 1 if storage_url.startswith("sqlite") else 2
    _interrupt_and_resume(storage_url, study_name, k, True, reference)


def test_sigint_to_parent_only_is_forwarded(tmp_path, reference: dict) -> None:
    """``kill -INT`` on the parent alone: it forwards the interrupt to its workers."""
    _interrupt_and_resume(f"journal:///{tmp_path}/study.log", "sigint", 2, False, reference)


def test_live_worker_takes_over_from_a_dead_one_on_another_host(tmp_path, reference: dict) -> None:
    """Two machines on one journal study; one dies mid-trial. The survivor, possibly already
    waiting on the dead trial, must see its heartbeat expire and finish the walk on its own, long
    before its wait timeout (300 s): the walk's wait loop calls ``storage.keep_alive`` and
    ``storage.fail_heartbeat_stale`` (on PostgreSQL the same code path runs Optuna's check)."""
    url = f"journal:///{tmp_path}/study.log"
    name = f"takeover-{uuid.uuid4().hex[:8]}"
    number = _fault_trial(reference)
    doomed = _start(url, name, 1, _env(PRIMESVT_FAKE_HOST="worker-a.example", PRIMESVT_FAULT=f"evaluating@{number}",
                                       PRIMESVT_FAULT_SIGNAL="STOP"))
    survivor = None
    try:
        frozen = _stopped(doomed.pid)
        survivor = _start(url, name, 1, _env(PRIMESVT_FAKE_HOST="worker-b.example"))
        os.kill(frozen, signal.SIGKILL)
        doomed.communicate(timeout=DEADLINE)
        out, err = survivor.communicate(timeout=DEADLINE)
        assert survivor.returncode == 0, err[-3000:]
        _check_same_as_uninterrupted(json.loads(out.strip().splitlines()[-1]), reference)
        assert "no heartbeat" in _trials(url, name)[number].system_attrs[STALE]
    finally:
        for proc in (doomed, survivor):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
