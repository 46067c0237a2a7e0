"""storage.py: every storage string a user may give, its one-line errors, and stale-trial handling."""

from __future__ import annotations

import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.storage import (
    CLAIM,
    HEARTBEAT,
    STALE,
    WORKER,
    HeartbeatJournalStorage,
    describe_storage,
    fail_heartbeat_stale,
    fail_stale_trials,
    keep_alive,
    mark_worker,
    open_storage,
    parse_storage,
    running_trials,
    stale_reason,
    worker_info,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")


def _one_line(exc: pytest.ExceptionInfo[PrimeSVTError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize(
    ("text", "kind", "url"),
    [
        ("sqlite:///runs/a.db", "sqlite", "sqlite:///runs/a.db"),
        ("runs/a.db", "sqlite", "sqlite:///runs/a.db"),
        ("study.sqlite3", "sqlite", "sqlite:///study.sqlite3"),
        ("journal:///tmp/x/study.log", "journal", "/tmp/x/study.log"),
        ("journal://runs/study.log", "journal", "runs/study.log"),
        ("runs/study.log", "journal", "runs/study.log"),
        ("/abs/study.jsonl", "journal", "/abs/study.jsonl"),
    ],
)
def test_parse_storage_kinds(text: str, kind: str, url: str) -> None:
    spec = parse_storage(text)
    assert (spec.kind, spec.url) == (kind, url)


def test_parse_server_urls_name_an_installed_driver() -> None:
    spec = parse_storage("postgres://u@h/db")
    assert spec.kind == "rdb"
    assert spec.url.startswith("postgresql") and spec.url.endswith("://u@h/db")
    assert parse_storage("mysql+pymysql://u@h/db").url == "mysql+pymysql://u@h/db"


def test_read_only_uri_is_recognised() -> None:
    spec = parse_storage("sqlite:///file:runs/a.db?mode=ro&uri=true")
    assert spec.read_only and str(spec.path) == "runs/a.db"


@pytest.mark.parametrize("text", ["", "garbage", "journal:"])
def test_unknown_storage_strings_fail_with_one_line(text: str) -> None:
    with pytest.raises(PrimeSVTError) as exc:
        parse_storage(text)
    _one_line(exc)


def test_describe_hides_password() -> None:
    assert describe_storage("postgresql://me:s3cret@db.example:5432/x") == "postgresql://me:***@db.example:5432/x"
    assert describe_storage("sqlite:///a.db") == "sqlite:///a.db"


def test_sqlite_opens_with_heartbeat_and_creates_folder(tmp_path) -> None:
    path = tmp_path / "new" / "folder" / "s.db"
    storage = open_storage(f"sqlite:///{path}")
    assert isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() > 0
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert path.is_file()
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.parametrize("text", ["sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:?cache=shared&uri=true"])
def test_in_memory_sqlite_holds_a_study_for_every_thread(text: str) -> None:
    """An in-memory SQLite database lives in one connection, which the WAL set-up (it disposes
    the engine) and per-thread connections would lose: it is served by Optuna's in-memory
    storage, one study for every thread of the process."""
    assert parse_storage(text).path is None
    storage = open_storage(text)
    study = optuna.create_study(storage=storage, study_name="m")
    study.optimize(lambda t: (time.sleep(0.05), t.suggest_float("x", 0, 1))[1], n_trials=8, n_jobs=4)
    trials = optuna.load_study(study_name="m", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8


LOST_RACES = {  # what the loser of two workers creating a fresh SQLite file at once gets
    "version stamped": lambda: sqlalchemy.exc.IntegrityError(
        "INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed")),
    "table created": lambda: sqlalchemy.exc.OperationalError(
        "CREATE TABLE studies", {}, Exception("table studies already exists")),
}


def _lose_schema_race(monkeypatch, times: int, race: str = "version stamped") -> list[int]:
    """Make the first ``times`` storage constructions fail as the loser of two workers creating a
    fresh database at once does (the winner created a table or stamped the schema version between
    the loser's check and its write)."""
    import primesvt_optuna.storage as module

    calls: list[int] = []
    real = module.WorkerRDBStorage.__init__

    def init(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            real(self, *args, **kwargs)  # the winner's tables now exist, as after a lost race
            raise LOST_RACES[race]()
        real(self, *args, **kwargs)

    monkeypatch.setattr(module.WorkerRDBStorage, "__init__", init)
    return calls


@pytest.mark.parametrize("race", LOST_RACES)
def test_workers_creating_a_fresh_sqlite_file_at_once_all_open_it(tmp_path, monkeypatch, race: str) -> None:
    calls = _lose_schema_race(monkeypatch, times=1, race=race)
    storage = open_storage(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert len(calls) == 2
    optuna.create_study(storage=storage, study_name="s").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


def _rollback_journal_file(path) -> None:
    """An Optuna SQLite file as a storage opened without this module leaves it: not yet in WAL mode."""
    RDBStorage(f"sqlite:///{path}").engine.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_switching_to_wal_waits_for_a_writer_instead_of_failing(tmp_path) -> None:
    """Switching a file to WAL while another connection holds the write lock: SQLite says "database
    is locked" at once (no busy wait, since waiting could deadlock), so the switch is retried."""
    path = tmp_path / "old.db"
    _rollback_journal_file(path)
    writer = sqlite3.connect(path, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, writer.commit)
    release.start()
    started = time.monotonic()
    storage = open_storage(f"sqlite:///{path}")
    assert time.monotonic() - started >= 0.4  # it waited for the writer
    release.join()
    writer.close()
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def _switch_at(path: str, start: float) -> str:
    from primesvt_optuna.storage import _switch_to_wal

    time.sleep(max(0.0, start - time.time()))
    with sqlite3.connect(path, timeout=5) as conn:
        try:
            _switch_to_wal(conn.cursor())
        except sqlite3.OperationalError as exc:
            return str(exc)
    return "ok"


def test_processes_switching_one_file_at_once_all_succeed(tmp_path) -> None:
    """Four processes switching one rollback-journal file at the same instant: without the retry
    65 of 800 switches lost the race ("database is locked"); every one must succeed."""
    outcomes: list[str] = []
    with multiprocessing.get_context("fork").Pool(4) as pool:
        for round_ in range(40):
            path = tmp_path / f"r{round_}.db"
            sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
            start = time.time() + 0.05
            outcomes += pool.starmap(_switch_at, [(str(path), start)] * 4)
    assert outcomes == ["ok"] * 160


def test_the_opening_process_switches_the_file_before_any_worker_connects(tmp_path) -> None:
    path = tmp_path / "fresh.db"
    open_storage(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_schema_error_that_persists_is_one_line(tmp_path, monkeypatch) -> None:
    """A race lost on every try is not retried forever: after the retries, one line naming it."""
    from primesvt_optuna.storage import SCHEMA_RACE_RETRIES

    calls = _lose_schema_race(monkeypatch, times=SCHEMA_RACE_RETRIES + 1)
    with pytest.raises(PrimeSVTError) as exc:
        open_storage(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert len(calls) == SCHEMA_RACE_RETRIES + 1
    assert "UNIQUE constraint failed" in _one_line(exc)


def test_an_error_that_is_not_a_schema_race_is_not_retried(tmp_path, monkeypatch) -> None:
    import primesvt_optuna.storage as module

    calls: list[int] = []

    def init(self, *args, **kwargs):
        calls.append(1)
        raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("disk I/O error"))

    monkeypatch.setattr(module.WorkerRDBStorage, "__init__", init)
    with pytest.raises(PrimeSVTError) as exc:
        open_storage(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert len(calls) == 1 and "disk I/O error" in _one_line(exc)


@pytest.mark.parametrize("text", ["journal:///{d}/j/s.log", "{d}/k/s.jsonl"])
def test_journal_opens_with_heartbeat(tmp_path, text: str) -> None:
    storage = open_storage(text.format(d=tmp_path))
    assert isinstance(storage, HeartbeatJournalStorage) and isinstance(storage, JournalStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    beats = [t.system_attrs.get(HEARTBEAT) for t in study.trials]
    assert all(isinstance(b, float) for b in beats), "Optuna's optimize loop records the journal heartbeat"


def test_heartbeat_settings_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRIMESVT_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("PRIMESVT_GRACE_PERIOD", "5")
    storage = open_storage(f"journal:///{tmp_path}/s.log")
    assert (storage.get_heartbeat_interval(), storage.grace_period) == (2, 5)
    monkeypatch.setenv("PRIMESVT_GRACE_PERIOD", "1")
    with pytest.raises(PrimeSVTError, match="grace period"):
        open_storage(f"sqlite:///{tmp_path}/s.db")
    monkeypatch.setenv("PRIMESVT_HEARTBEAT_INTERVAL", "soon")
    with pytest.raises(PrimeSVTError, match="PRIMESVT_HEARTBEAT_INTERVAL"):
        open_storage(f"sqlite:///{tmp_path}/s.db")


def test_read_only_sqlite_refused_for_writing_but_readable(tmp_path) -> None:
    path = tmp_path / "s.db"
    study = optuna.create_study(storage=open_storage(f"sqlite:///{path}"), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    before = path.read_bytes()
    ro = f"sqlite:///file:{path}?mode=ro&uri=true"
    with pytest.raises(PrimeSVTError, match="read-only") as exc:
        open_storage(ro)
    _one_line(exc)
    loaded = optuna.load_study(study_name="s", storage=open_storage(ro, read_only=True))
    assert loaded.trials[0].state == TrialState.COMPLETE
    assert path.read_bytes() == before


def test_read_only_missing_files_are_named(tmp_path) -> None:
    with pytest.raises(PrimeSVTError, match="does not exist"):
        open_storage(f"sqlite:///file:{tmp_path}/none.db?mode=ro&uri=true", read_only=True)
    with pytest.raises(PrimeSVTError, match="does not exist"):
        open_storage(f"journal:///{tmp_path}/none.log", read_only=True)
    assert not list(tmp_path.iterdir())


def test_unreachable_server_is_one_line_without_password() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(PrimeSVTError, match="cannot reach storage") as exc:
        open_storage(f"postgresql://me:s3cret@127.0.0.1:{port}/db")
    text = _one_line(exc)
    assert "s3cret" not in text and "me:***@" in text and "refused" in text.lower()
    assert time.monotonic() - started < 30


def test_missing_driver_names_the_package() -> None:
    with pytest.raises(PrimeSVTError, match="no database driver") as exc:
        open_storage("nosuchdb://u@h/x")
    _one_line(exc)
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        try:
            import pymysql  # noqa: F401
        except ImportError:
            with pytest.raises(PrimeSVTError, match="pymysql"):
                open_storage("mysql://u@127.0.0.1/x")


def test_folder_that_cannot_exist_is_one_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for text in (f"sqlite:///{blocker}/s.db", f"journal:///{blocker}/s.log"):
        with pytest.raises(PrimeSVTError) as exc:
            open_storage(text)
        _one_line(exc)


def test_not_a_journal_file(tmp_path) -> None:
    path = tmp_path / "s.log"
    path.write_text("this is not json\nnor is this\n")  # a torn last line alone is tolerated
    with pytest.raises(PrimeSVTError, match="not a readable Optuna journal") as exc:
        open_storage(str(path))
    _one_line(exc)


def test_another_applications_sqlite_database_is_refused_untouched(tmp_path) -> None:
    """A mistyped path to some other SQLite database used to get Optuna's tables added and be
    switched to WAL, without a word."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    db.close()
    before = path.read_bytes()
    for text in (f"sqlite:///{path}", str(path)):
        with pytest.raises(PrimeSVTError, match=r"app.db is another database \(tables users\) with no Optuna study") as exc:
            open_storage(text)
        _one_line(exc)
    assert path.read_bytes() == before and not (tmp_path / "app.db-wal").exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a database with no table yet is the study's to fill
    study = optuna.create_study(storage=open_storage(f"sqlite:///{empty}"))
    assert optuna.load_study(study_name=study.study_name, storage=open_storage(f"sqlite:///{empty}"))


# ----- stale trials ---------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _storages(tmp_path, postgres: str | None = None):
    yield "sqlite", open_storage(f"sqlite:///{tmp_path}/s.db")
    yield "journal", open_storage(f"journal:///{tmp_path}/s.log")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_fail_stale_trials_by_pid_and_lease(tmp_path, kind: str) -> None:
    """A storage opened without heartbeats (plain Optuna): this host by PID; other hosts, and trials
    with no worker record, only by the lease the caller gives."""
    if kind == "sqlite":
        storage = RDBStorage(f"sqlite:///{tmp_path}/s.db")
    else:
        storage = JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.log")))
    study = optuna.create_study(storage=storage, study_name="s")
    mine, dead, remote, old_remote, unmarked = (study.ask() for _ in range(5))
    mark_worker(mine)
    mine_info = worker_info()
    storage.set_trial_system_attr(dead._trial_id, WORKER, {**mine_info, "pid": _dead_pid()})
    for trial in (remote, old_remote):
        storage.set_trial_system_attr(trial._trial_id, WORKER, {**mine_info, "host": "elsewhere"})
    assert fail_stale_trials(study) == [dead.number]
    frozen = study._storage.get_trial(dead._trial_id)
    assert frozen.state == TrialState.FAIL and "is gone" in frozen.system_attrs[STALE]
    assert fail_stale_trials(study, lease=600) == [], "other hosts: no verdict inside the lease"
    time.sleep(1.2)
    storage.set_trial_system_attr(remote._trial_id, HEARTBEAT, time.time())
    assert fail_stale_trials(study, lease=1.0) == [old_remote.number, unmarked.number]
    assert "no heartbeat" in study._storage.get_trial(old_remote._trial_id).system_attrs[STALE]
    assert {t.number for t in running_trials(study)} == {mine.number, remote.number}


def test_every_trial_is_created_with_its_worker(storage_url: str) -> None:
    """No moment exists in which a trial has no worker record: the creating transaction writes it."""
    storage = open_storage(storage_url)
    name = f"created-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=storage, study_name=name)
    try:
        trial = study.ask()
        worker = open_storage(storage_url).get_trial(trial._trial_id).system_attrs[WORKER]  # a fresh reader
        assert (worker["host"], worker["pid"], worker["start"]) == (socket.gethostname(), os.getpid(), worker_info()["start"])
        study.tell(trial, 1.0)
        study.enqueue_trial({"x": 0.5})  # a template trial is stored as given: WAITING, no worker yet
        waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
        assert len(waiting) == 1 and WORKER not in waiting[0].system_attrs
    finally:
        if storage_url.startswith("postgresql"):
            optuna.delete_study(study_name=name, storage=storage)


def _frozen(host: str | None, started: float, beat_age: float | None = None) -> optuna.trial.FrozenTrial:
    import datetime

    system = {} if host is None else {WORKER: {"host": host, "pid": os.getpid(), "start": worker_info()["start"], "time": started}}
    return optuna.trial.FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.fromtimestamp(started),
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs=system,
        intermediate_values={}, trial_id=0,
    )


def test_stale_rule() -> None:
    """The one rule, without clocks racing: this host's live process is never stale, however
    silent; other hosts and unrecorded trials are stale only past the grace period."""
    now, hour = time.time(), 3600.0
    here = socket.gethostname()
    assert stale_reason(_frozen(here, now - 10 * hour), grace=1.0) is None, "a live local worker keeps its trial"
    assert stale_reason(_frozen(here, now - 10 * hour), grace=1.0, heartbeat_age=10 * hour) is None
    for host in ("elsewhere", None):
        assert stale_reason(_frozen(host, now), grace=hour) is None, "inside the grace period"
        assert stale_reason(_frozen(host, now), grace=None) is None, "no grace: other hosts are not judged"
        reason = stale_reason(_frozen(host, now - 2 * hour), grace=hour)
        assert reason is not None and ("no worker record" in reason) == (host is None)
    assert stale_reason(_frozen("elsewhere", now - 2 * hour), grace=hour, heartbeat_age=5.0) is None, "it beats"
    assert "no heartbeat for" in stale_reason(_frozen("elsewhere", now), grace=hour, heartbeat_age=2 * hour)


def test_a_container_sharing_the_host_name_is_judged_by_its_heartbeat() -> None:
    """Containers on one host name (``docker --network host``) have their own PID namespaces: a
    worker of another one must not be declared gone because its PID is not found here, and is
    judged as another host's, by the grace period. In this namespace a dead PID is gone at once."""
    now, hour = time.time(), 3600.0
    here = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": here, "pid": dead.pid, "start": "1", "time": now}
    for pidns, expected in ((worker_info()["pidns"], "is gone"), ("pid:[1]", None)):
        trial = _frozen(here, now)
        trial.system_attrs[WORKER] = {**record, "pidns": pidns}
        reason = stale_reason(trial, grace=hour)
        assert (reason is None) if expected is None else (expected in reason), (pidns, reason)
    trial = _frozen(here, now - 2 * hour)
    trial.system_attrs[WORKER] = {**record, "pidns": "pid:[1]", "time": now - 2 * hour}
    reason = stale_reason(trial, grace=hour)  # silent past the grace period: stale as another host's
    assert reason is not None and "is gone" not in reason, reason
    assert worker_info()["pidns"].startswith("pid:[")


def test_no_heartbeat_ever_is_stale_after_the_grace_period(storage_url: str) -> None:
    """A trial of another host that died before its first heartbeat (Optuna's own rule never fails
    it), and one created through a storage opened without this module (no worker record)."""
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    name = f"silent-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=storage, study_name=name)
    try:
        remote, mine = study.ask(), study.ask()
        storage.set_trial_system_attr(remote._trial_id, WORKER, {**worker_info(), "host": "elsewhere"})
        plain = RDBStorage(parse_storage(storage_url).url) if not storage_url.startswith("journal") else JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage_url.split("journal://", 1)[1]))
        unrecorded = plain.create_new_trial(study._study_id)
        time.sleep(2.5)  # past the grace period; nothing beat
        failed = fail_stale_trials(study)
        unrecorded_number = plain.get_trial(unrecorded).number
        assert failed == sorted([remote.number, unrecorded_number])
        reasons = {t.number: t.system_attrs.get(STALE, "") for t in study.get_trials()}
        assert "no heartbeat" in reasons[remote.number] and "no worker record" in reasons[unrecorded_number]
        assert study._storage.get_trial(mine._trial_id).state == TrialState.RUNNING, "this live process keeps its trial"
    finally:
        if storage_url.startswith("postgresql"):
            optuna.delete_study(study_name=name, storage=storage)


def test_journal_heartbeat_fails_silent_trials_of_other_hosts(tmp_path) -> None:
    storage = open_storage(f"journal:///{tmp_path}/s.log", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="s")
    fresh, silent, claimed = (study.ask() for _ in range(3))
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for trial in (fresh, silent, claimed):
        trial.suggest_float("x", 0, 1)
        storage.set_trial_system_attr(trial._trial_id, WORKER, {"host": "elsewhere", "pid": 1, "start": None})
    storage.record_heartbeat(fresh._trial_id)
    storage.set_trial_system_attr(silent._trial_id, HEARTBEAT, time.time() - 10)
    storage.set_trial_system_attr(claimed._trial_id, HEARTBEAT, time.time() - 10)
    storage.set_trial_system_attr(claimed._trial_id, CLAIM, {"key": "rates:[]", "phase": "reference"})
    assert fail_stale_trials(study) == sorted([silent.number, claimed.number])
    trials = study.get_trials()
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1, "the unclaimed trial is retried; the walk re-plans the claimed one itself"
    assert waiting[0].params == {"x": silent.params["x"]} and waiting[0].distributions == x
    assert study._storage.get_trial(fresh._trial_id).state == TrialState.RUNNING


def test_keep_alive_renews_a_waiting_trial(tmp_path) -> None:
    """Both trials last beat long ago; keep_alive renews only the one still waiting to plan. (A
    30 s grace period: nothing here depends on how fast the machine is.)"""
    storage = open_storage(f"journal:///{tmp_path}/s.log", heartbeat_interval=1, grace_period=30)
    study = optuna.create_study(storage=storage, study_name="s")
    waiting, dead = study.ask(), study.ask()
    for trial in (waiting, dead):
        storage.set_trial_system_attr(trial._trial_id, WORKER, {"host": "elsewhere", "pid": 1, "start": None})
        keep_alive(study, trial._trial_id)
        storage.set_trial_system_attr(trial._trial_id, HEARTBEAT, time.time() - 100)
    time.sleep(1.1)  # one heartbeat interval: keep_alive beats at most once per interval
    keep_alive(study, waiting._trial_id)  # renewed: a worker still waiting to plan its trial
    assert fail_heartbeat_stale(study) == [dead.number]
    assert study._storage.get_trial(waiting._trial_id).state == TrialState.RUNNING


def test_heartbeat_storage_survives_pickling(tmp_path) -> None:
    import pickle

    storage = open_storage(f"journal:///{tmp_path}/s.log", heartbeat_interval=3, grace_period=9)
    copy = pickle.loads(pickle.dumps(storage))
    assert (copy.get_heartbeat_interval(), copy.grace_period) == (3, 9)


@pytest.mark.postgres
def test_postgresql_storage(postgres_url: str) -> None:
    storage = open_storage(postgres_url, heartbeat_interval=1, grace_period=2)
    assert isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() == 1
    name = f"test-storage-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=storage, study_name=name)
    try:
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        storage.set_trial_system_attr(trial._trial_id, WORKER, {**worker_info(), "host": "elsewhere"})
        storage.record_heartbeat(trial._trial_id)
        time.sleep(3.2)
        assert fail_stale_trials(study) == [trial.number]
        assert [t.state for t in study.get_trials()][-1] == TrialState.WAITING  # retried by the callback
    finally:
        optuna.delete_study(study_name=name, storage=storage)


@pytest.mark.postgres
def test_postgresql_wrong_database(postgres_url: str) -> None:
    base = postgres_url.rsplit("/", 1)[0]
    with pytest.raises(PrimeSVTError, match="does not exist") as exc:
        open_storage(f"{base}/no_such_database_{os.getpid()}")
    _one_line(exc)


def test_a_journal_with_a_cut_off_last_record_is_refused_untouched(tmp_path) -> None:
    """A resume used to append after the torn line: an AttributeError, then a JSONDecodeError, then
    a file no command could read (the whole study lost)."""
    path = tmp_path / "j.log"
    study = optuna.create_study(storage=open_storage(f"journal:///{path}"), study_name="j")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])
    with pytest.raises(PrimeSVTError, match=r"cut-off record.*truncate -s \d+") as exc:
        open_storage(f"journal:///{path}")
    _one_line(exc)
    assert path.read_bytes() == whole[:-40]
    assert len(optuna.load_study(study_name="j", storage=open_storage(f"journal:///{path}", read_only=True)).trials) >= 2
    keep = int(str(exc.value).split("truncate -s ")[1].split()[0])
    path.write_bytes(whole[:keep])  # the fix the message gives
    resumed = optuna.load_study(study_name="j", storage=open_storage(f"journal:///{path}"))
    resumed.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    trials = optuna.load_study(study_name="j", storage=open_storage(f"journal:///{path}")).trials
    assert [t.state for t in trials][-1] == optuna.trial.TrialState.COMPLETE and len(trials) >= 3, trials
