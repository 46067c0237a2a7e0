"""One place that turns the user's storage string into an Optuna storage, and keeps crashed
workers from leaving trials RUNNING forever.

Accepted strings (``describe_storage`` prints them back with any password hidden):

* ``sqlite:///path/study.db`` (the default), or a bare path ending ``.db``/``.sqlite``/``.sqlite3``;
  ``sqlite:///file:path.db?mode=ro&uri=true`` opens a SQLite file read-only; ``sqlite:///:memory:``
  and ``sqlite://`` give Optuna's ``InMemoryStorage`` (one process, nothing kept).
* any other SQLAlchemy URL (``postgresql://user:pw@host/db``, ``mysql+pymysql://...``): an
  ``RDBStorage`` with heartbeats, so a killed worker's trial is marked failed after the grace
  period, and retried when it was not a PrimeSVT walk trial (the walk re-plans a freed
  configuration itself; a retry copy would race with that).
* ``journal:///abs/path.log``, ``journal://rel/path.log``, or a bare path ending ``.log``/
  ``.jsonl``/``.journal``: a ``JournalStorage`` on a ``JournalFileBackend``. Optuna 5.0 gives the
  journal no heartbeat, so ``HeartbeatJournalStorage`` adds one: each running trial renews a
  ``primesvt:heartbeat`` time stamp.

Every way of failing to open one (unreachable server, missing driver, read-only file, missing
folder) raises ``PrimeSVTError`` with one line naming the storage and what to do.

Every RUNNING trial is accounted for. The storages opened here write the trial's worker record
(host, PID, process start, clock) in the very transaction that creates the trial, so no trial of
theirs ever exists without one. ``stale_reason`` is the one rule by which any process that reads
the study (the samplers while deciding, the start of ``optimize``, ``primesvt search --resume``,
``primesvt report``) fails a trial that can no longer finish, recording why:

* its worker runs on this host, in this PID namespace: the trial is stale when, and only when,
  that process is gone (a process that is merely slow, stopped or swapped out keeps its trial,
  however long);
* another host (or another container sharing this host name), or no worker record at all (a trial created through a storage opened without
  this module): stale when it shows no sign of life -- heartbeat, worker record, creation --
  for longer than the grace period. A live worker renews its heartbeat every interval (Optuna's
  thread while the objective runs, ``keep_alive`` while a sampler waits), and the grace period is
  longer than the interval (enforced), so a worker stalled for less than the grace period keeps
  its trial. Hosts' clocks must agree to well within the grace period. A worker stalled longer
  loses the trial (another worker re-evaluates its configuration) and, when it wakes, drops it
  and carries on (``primesvt_optuna.workers.optimize``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import socket
import sqlite3
import time
import warnings
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from .errors import PrimeSVTError

_logger = optuna.logging.get_logger(__name__)

# Trial system attributes. WORKER and STALE are the keys the samplers read
# (primesvt_optuna.plugin.constraints.WORKER, samplers._walk.STALE); CLAIM marks a walk trial.
WORKER = "primesvt:worker"
STALE = "primesvt:stale"
CLAIM = "primesvt:claim"
HEARTBEAT = "primesvt:heartbeat"
SAMPLER = "primesvt:sampler"  # study attribute: written by the PrimeSVT samplers (their settings)

DEFAULT_HEARTBEAT_INTERVAL = 30
"""Seconds between heartbeats; ``PRIMESVT_HEARTBEAT_INTERVAL`` overrides it."""
DEFAULT_GRACE_PERIOD = 120
"""Seconds without a heartbeat before a trial counts as dead; ``PRIMESVT_GRACE_PERIOD`` overrides."""
UNRECORDED_AFTER = 10
"""Seconds a RUNNING trial of a PrimeSVT sampler's study may exist without a worker record or a
claim before it counts as dead; ``PRIMESVT_UNRECORDED_AFTER`` overrides it. A live worker writes
its record milliseconds after Optuna creates the trial (the sampler's ``before_trial``), so a
trial without one after this long was created by a process that died in between."""
DEFAULT_MAX_RETRY = 3
SQLITE_BUSY_TIMEOUT = 120
"""Seconds a SQLite writer waits for the file lock: K workers poll one file."""
CONNECT_TIMEOUT = 10
SCHEMA_RACE_RETRIES = 3
"""Retries when workers create a fresh database at once and one loses the race to stamp it."""

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")


@dataclass(frozen=True)
class StorageSpec:
    """A parsed storage string: which kind, the URL or path Optuna gets, and how to show it."""

    kind: str  # "sqlite" | "rdb" | "journal"
    url: str  # SQLAlchemy URL for sqlite/rdb (driver named); the file path for journal
    text: str  # what the user wrote
    read_only: bool = False

    @property
    def path(self) -> Path | None:
        """The file behind a SQLite or journal storage (None for server databases)."""
        if self.kind == "journal":
            return Path(self.url)
        if self.kind == "sqlite":
            if ":///" not in self.url:  # sqlite:// is SQLAlchemy's in-memory database
                return None
            rest = self.url.split(":///", 1)[1].split("?", 1)[0]
            rest = rest[len("file:"):] if rest.startswith("file:") else rest
            return Path(rest) if rest and rest != ":memory:" else None
        return None

    def describe(self) -> str:
        return describe_storage(self.text)


def describe_storage(url: str) -> str:
    """The storage string with any password replaced by ``***`` (safe for logs and errors)."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    netloc, _, tail = rest.partition("/")
    creds, _, host = netloc.rpartition("@")
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}/{tail}" if tail or rest.endswith("/") else f"{scheme}://{creds}@{host}"


def parse_storage(text: str) -> StorageSpec:
    """Classify a storage string without touching the file or server."""
    text = str(text).strip()
    if not text:
        raise PrimeSVTError("empty storage: give e.g. sqlite:///study.db, postgresql://user@host/db or journal:///study.log")
    if text.startswith("journal:"):
        path = text[len("journal:"):]
        path = path[2:] if path.startswith("//") else path  # journal:///abs -> /abs, journal://rel -> rel
        if not path:
            raise PrimeSVTError(f"storage {text!r} names no journal file: use journal:///path/to/study.log")
        return StorageSpec("journal", path, text)
    if "://" not in text:
        lower = text.lower()
        if lower.endswith(_JOURNAL_SUFFIXES):
            return StorageSpec("journal", text, text)
        if lower.endswith(_SQLITE_SUFFIXES):
            return StorageSpec("sqlite", f"sqlite:///{text}", text)
        raise PrimeSVTError(
            f"cannot tell what storage {text!r} is: use sqlite:///file.db, a SQLAlchemy URL "
            "(postgresql://user@host/db, mysql+pymysql://user@host/db) or journal:///file.log"
        )
    if text.startswith("sqlite:"):
        query = text.split("?", 1)[1] if "?" in text else ""
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        return StorageSpec("sqlite", text, text, read_only=params.get("mode") == "ro")
    return StorageSpec("rdb", _with_driver(text), text)


_DRIVERS = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("MySQLdb", "pymysql")}


def _with_driver(url: str) -> str:
    """Name an installed driver when the URL names none: SQLAlchemy 2.1 picks psycopg 3 for
    ``postgresql://`` and mysqlclient for ``mysql://``, while ``pip install
    'primesvt-optuna[postgres]'`` brings psycopg2. ``postgres://`` is read as ``postgresql://``."""
    scheme, sep, rest = url.partition("://")
    scheme = "postgresql" if scheme == "postgres" else scheme
    if scheme in _DRIVERS:
        default, alternative = _DRIVERS[scheme]
        if importlib.util.find_spec(default) is None and importlib.util.find_spec(alternative) is not None:
            scheme = f"{scheme}+{alternative}"
    return f"{scheme}{sep}{rest}"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise PrimeSVTError(f"{name} must be a whole number of seconds, got {value!r}") from None
    if number <= 0:
        raise PrimeSVTError(f"{name} must be positive, got {number}")
    return number


def open_storage(
    text: str,
    *,
    read_only: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = DEFAULT_MAX_RETRY,
) -> BaseStorage:
    """The Optuna storage for ``text``; ``read_only=True`` for commands that only read a study.

    A storage string that is read-only (``?mode=ro``) is refused unless ``read_only`` is set, so a
    search fails at once with one line instead of half way through with a database error.
    """
    spec = parse_storage(text)
    interval = heartbeat_interval or _env_int("PRIMESVT_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL)
    grace = grace_period or _env_int("PRIMESVT_GRACE_PERIOD", max(DEFAULT_GRACE_PERIOD, 2 * interval))
    if grace <= interval:
        raise PrimeSVTError(f"the grace period ({grace} s) must be longer than the heartbeat interval ({interval} s)")
    if spec.read_only and not read_only:
        raise PrimeSVTError(
            f"storage {spec.describe()} is opened read-only (mode=ro), and this command writes to it: "
            "drop ?mode=ro or use a writable copy"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        callback = RetryUnclaimedTrialCallback(max_retry=max_retry)
    if spec.kind == "journal":
        return _open_journal(spec, read_only, interval, grace, callback)
    if spec.kind == "sqlite" and spec.path is None:
        # an in-memory SQLite database is one connection's, while Optuna's RDB storage opens one
        # per thread (trials, heartbeats): Optuna's own in-memory storage keeps one study for
        # every thread of this process, with nothing to go stale
        return optuna.storages.InMemoryStorage()
    return _open_rdb(spec, read_only, interval, grace, callback)


def _open_journal(
    spec: StorageSpec, read_only: bool, interval: int, grace: int, callback: Callable[[Study, FrozenTrial], None]
) -> BaseStorage:
    path = Path(spec.url)
    if read_only and not path.is_file():
        raise PrimeSVTError(f"journal file {path} does not exist: check the storage path")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrimeSVTError(f"cannot create the folder of journal file {path}: {exc.strerror}") from None
        _refuse_a_cut_off_record(path)  # Optuna reads past a torn last line, but appends the next record to it
    try:
        backend = JournalFileBackend(str(path))
        return HeartbeatJournalStorage(backend, heartbeat_interval=interval, grace_period=grace, stale_callback=callback)
    except PrimeSVTError:
        raise
    except OSError as exc:
        raise PrimeSVTError(f"cannot open journal file {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a file that is not an Optuna journal: JSON decode errors and the like
        raise PrimeSVTError(f"{path} is not a readable Optuna journal file: {_first_line(exc)}") from None


def _refuse_a_cut_off_record(path: Path) -> None:
    """A journal whose last record was cut off (a full disk, a crash mid-write) cannot be replayed,
    and a record appended after it makes the whole file unreadable: refuse it, untouched. A tail
    that is still changing is another worker's write in progress, not a cut-off record."""
    tail, size = b"", -1
    for _ in range(3):
        try:
            current = path.stat().st_size
            if current == 0:
                return
            with open(path, "rb") as f:
                f.seek(max(0, current - (1 << 16)))
                tail = f.read()
        except OSError:
            return  # missing or unreadable: the backend says so
        if tail.endswith(b"\n") or current != size and size >= 0:
            return
        size = current
        time.sleep(0.5)
    if b"\n" not in tail and size > len(tail):
        fix = "truncate it after its last complete line"
    else:
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        fix = f"drop the {size - keep} bytes after its last complete line with 'truncate -s {keep} {path}'"
    raise PrimeSVTError(f"journal file {path} ends with a cut-off record, which Optuna cannot replay: "
                        f"back the file up, then {fix}")


def _open_rdb(
    spec: StorageSpec, read_only: bool, interval: int, grace: int, callback: Callable[[Study, FrozenTrial], None]
) -> BaseStorage:
    engine_kwargs: dict[str, Any] = {}
    shown = spec.describe()
    if spec.kind == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
        path = spec.path
        if path is not None:
            if read_only or spec.read_only:
                if not path.is_file():
                    raise PrimeSVTError(f"SQLite file {path} does not exist: check the storage path")
            else:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise PrimeSVTError(f"cannot create the folder of SQLite file {path}: {exc.strerror}") from None
                _refuse_another_database(path)
    elif spec.url.startswith(("postgresql", "postgres")):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        engine_kwargs["pool_pre_ping"] = True
    elif spec.url.startswith("mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        engine_kwargs["pool_pre_ping"] = True
    try:
        for attempt in range(SCHEMA_RACE_RETRIES + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    storage = WorkerRDBStorage(
                        spec.url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=interval,
                        grace_period=grace,
                        heartbeat_stale_trial_callback=callback,
                        skip_table_creation=read_only or spec.read_only,
                    )
                break
            except sqlalchemy.exc.DBAPIError as exc:
                # K workers opening a fresh database at once: another one created a table or
                # stamped the schema version between our check and our write; the next try finds it.
                if attempt == SCHEMA_RACE_RETRIES or not _lost_schema_race(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))
        if spec.kind == "sqlite" and not (read_only or spec.read_only):
            _sqlite_wal(storage)
        return storage
    except (ImportError, ModuleNotFoundError) as exc:
        raise PrimeSVTError(f"no database driver for {shown}: {_driver_hint(spec.url, exc)}") from None
    except Exception as exc:
        raise PrimeSVTError(_rdb_error(shown, spec, exc)) from None


_OPTUNA_TABLES = frozenset({
    "studies", "version_info", "alembic_version", "study_directions", "study_user_attributes",
    "study_system_attributes", "trials", "trial_user_attributes", "trial_system_attributes", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_heartbeats",
})


def _refuse_another_database(path: Path) -> None:
    """Opening a storage creates Optuna's tables and switches the file to WAL: do neither to an
    SQLite database that holds some other application's tables (a mistyped path), and say so.
    A file with no table yet, or with some of Optuna's (another worker creating the schema), is
    the study's; a file SQLite cannot read is left to the error Optuna gives."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return
    tables = {t for t in tables if not t.startswith("sqlite_")}
    if tables and not tables & _OPTUNA_TABLES:
        shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        raise PrimeSVTError(f"SQLite file {path} is another database (tables {shown}) with no Optuna study: "
                            "give a new file for the study, or check the path")


def _lost_schema_race(exc: Exception) -> bool:
    """Whether creating the schema failed because another worker created it first: a duplicate
    version stamp (IntegrityError) or a table created between SQLAlchemy's check and its CREATE
    ("table studies already exists" in SQLite, "relation ... already exists" in PostgreSQL)."""
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc)


def _sqlite_wal(storage: RDBStorage) -> None:
    """Write-ahead logging: readers no longer block the writer (K workers poll one file), and a
    commit is not an fsync, which made each trial cost 0.1-0.3 s here. A killed process loses
    nothing; a power cut may lose the last commits but never corrupts the file. (WAL needs a
    local disk: for workers on several machines use PostgreSQL, MySQL or a journal file.)

    The mode is stored in the file, so it is switched once, here, by the process that opened
    the storage (before it starts any worker); every later connection finds it set."""

    def pragmas(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened while creating the tables lack the pragmas
    with storage.engine.connect():
        pass  # switch the file now, not in K workers' first connections at once


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the write lock.

    Switching a rollback-journal file takes the write lock while holding a read lock, and SQLite
    answers "database is locked" at once, without waiting out the busy timeout, when another
    connection is switching it too (waiting could deadlock): four processes switching a fresh
    file at once lost 65 of 800 switches here. The loser retries until the winner is done."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 0.5)


def _driver_hint(url: str, exc: BaseException) -> str:
    if url.startswith(("postgresql", "postgres")):
        return "install psycopg2 (pip install 'primesvt-optuna[postgres]')"
    if url.startswith("mysql"):
        return "install a MySQL driver and name it in the URL (pip install pymysql; mysql+pymysql://...)"
    return f"install the SQLAlchemy driver it names ({_first_line(exc)})"


def _rdb_error(shown: str, spec: StorageSpec, exc: BaseException) -> str:
    """One line for a failed RDBStorage: what happened to which storage, and what to do."""
    text = _first_line(_root_cause(exc))
    lower = text.lower()
    name = type(exc).__name__
    if name == "NoSuchModuleError" or "can't load plugin" in lower:
        return f"no database driver for {shown}: {_driver_hint(spec.url, exc)}"
    if "readonly" in lower or "read-only" in lower or "read only" in lower:
        return f"storage {shown} is read-only: use a writable file or drop ?mode=ro"
    if spec.kind == "sqlite":
        return f"cannot open SQLite storage {shown}: {text}"
    if name == "ArgumentError" or "could not parse" in lower:
        return f"cannot read storage URL {shown}: {text}"
    return f"cannot reach storage {shown}: {text} (is the server running, and the URL's host, port and database right?)"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error (Optuna wraps database errors in StorageInternalError)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _first_line(exc: BaseException | object) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class RetryUnclaimedTrialCallback(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial, except for PrimeSVT walk trials.

    A walk trial carries a claim; once it failed without an outcome its configuration is free again
    and the walk itself hands it to the next trial. A WAITING retry copy of it would be a second,
    concurrent evaluation of the same configuration, so it is not made; nor for a trial that died
    before it had any parameter (its copy would be an empty trial, left WAITING when a walk stops).
    """

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        claim = trial.system_attrs.get(CLAIM)
        if (claim and claim.get("key")) or not trial.params:
            return  # nothing chosen yet (died before its sampler decided): a copy would be a new trial
        super().__call__(study, trial)


def creation_template() -> FrozenTrial:
    """A new RUNNING trial that already names its worker: the storages below create every trial
    from it, so the worker record is written in the same transaction as the trial itself."""
    return FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
        params={}, distributions={}, user_attrs={}, system_attrs={WORKER: worker_info()}, intermediate_values={},
        trial_id=0,
    )


class WorkerRDBStorage(RDBStorage):
    """Optuna's RDBStorage, with the worker recorded at creation and ``stale_reason`` as the
    heartbeat rule (Optuna's own rule never fails a trial that died before its first heartbeat)."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return super()._create_new_trial(study_id, template_trial if template_trial is not None else creation_template())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        with _create_scoped_session(self.scoped_session) as session:
            now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
            rows = (
                session.query(rdb_models.TrialHeartbeatModel.trial_id, rdb_models.TrialHeartbeatModel.heartbeat)
                .join(rdb_models.TrialModel, rdb_models.TrialModel.trial_id == rdb_models.TrialHeartbeatModel.trial_id)
                .filter(rdb_models.TrialModel.study_id == study_id, rdb_models.TrialModel.state == TrialState.RUNNING)
                .all()
            )
        # heartbeat ages on the database server's clock, which wrote them
        ages = {trial_id: (now - beat).total_seconds() for trial_id, beat in rows}
        return _mark_stale(self, study_id, float(self.grace_period or 2 * self.heartbeat_interval), ages)


def set_trial_attrs(storage: BaseStorage, trial_id: int, system: Mapping[str, Any] = {},
                    user: Mapping[str, Any] = {}) -> None:
    """Write several attributes of a running trial; on SQLite and PostgreSQL in one transaction of
    one upsert per table (a sampler's per-trial writes cost one commit, not one per attribute)."""
    backend = getattr(storage, "_backend", storage)
    dialect = backend.engine.name if isinstance(backend, RDBStorage) else None
    if dialect not in ("sqlite", "postgresql"):
        for key, value in system.items():
            storage.set_trial_system_attr(trial_id, key, value)
        for key, value in user.items():
            storage.set_trial_user_attr(trial_id, key, value)
        return
    insert = sqlalchemy.dialects.sqlite.insert if dialect == "sqlite" else sqlalchemy.dialects.postgresql.insert
    with _create_scoped_session(backend.scoped_session, True) as session:
        trial = rdb_models.TrialModel.find_or_raise_by_id(trial_id, session)
        backend.check_trial_is_updatable(trial_id, trial.state)
        for model, attrs in ((rdb_models.TrialSystemAttributeModel, system), (rdb_models.TrialUserAttributeModel, user)):
            if attrs:
                rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
                statement = insert(model).values(rows)
                session.execute(statement.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key], set_={"value_json": statement.excluded.value_json}))


def _mark_stale(storage: BaseStorage, study_id: int, grace: float, heartbeat_ages: Mapping[int, float]) -> list[int]:
    """The running trials of ``study_id`` that ``stale_reason`` finds stale, each with the reason
    recorded as ``primesvt:stale`` (Optuna's ``fail_stale_trials`` then fails them)."""
    stale = []
    unrecorded = unrecorded_after(storage, study_id)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial, grace, heartbeat_ages.get(trial._trial_id), unrecorded)
        if reason is None:
            continue
        try:  # recorded before Optuna fails it, so the study says why
            storage.set_trial_system_attr(trial._trial_id, STALE, reason)
        except UpdateFinishedTrialError:
            continue
        stale.append(trial._trial_id)
    return stale


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A JournalStorage with Optuna's heartbeat interface, which 5.0 gives only to RDBStorage.

    Optuna's own optimize loop then renews the heartbeat while a trial runs and fails stale trials
    before each new one, exactly as on PostgreSQL: a heartbeat is a trial system attribute holding
    the writer's clock, and ``stale_reason`` decides. Trials are created with their worker record.
    """

    def __init__(
        self,
        backend: JournalFileBackend,
        *,
        heartbeat_interval: int,
        grace_period: int,
        stale_callback: Callable[[Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_callback = stale_callback

    def __getstate__(self) -> dict[Any, Any]:
        return {**super().__getstate__(), "heartbeat_interval": self.heartbeat_interval,
                "grace_period": self.grace_period, "stale_callback": self.stale_callback}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state = dict(state)
        self.heartbeat_interval = state.pop("heartbeat_interval")
        self.grace_period = state.pop("grace_period")
        self.stale_callback = state.pop("stale_callback")
        super().__setstate__(state)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, template_trial if template_trial is not None else creation_template())

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
        except UpdateFinishedTrialError:
            pass  # another worker declared it stale, or it just finished: nothing to renew

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        ages = {
            trial._trial_id: now - float(trial.system_attrs[HEARTBEAT])
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if trial.system_attrs.get(HEARTBEAT) is not None
        }
        return _mark_stale(self, study_id, float(self.grace_period), ages)

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[Study, FrozenTrial], None] | None:
        return self.stale_callback


# ----- who runs a trial, and whether it still can finish ------------------------------------------


def _proc_start(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a live process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def pid_namespace() -> str | None:
    """This process's PID namespace (Linux), e.g. ``pid:[4026531836]``: containers that share a
    host name (``docker --network host``) each have their own, and a PID means nothing across
    them. None where there is no /proc."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def pids_comparable(worker: Mapping[str, Any]) -> bool:
    """Whether a worker record's PID means a process here: same host name and same PID namespace
    (a record or a system without one is taken as the same namespace)."""
    return worker.get("host") == socket.gethostname() and worker.get("pidns") in (None, pid_namespace())


def worker_info() -> dict[str, Any]:
    """Host, PID namespace and PID, the process's start tick (tells a reused PID apart) and the
    wall-clock start."""
    stat = _proc_start(os.getpid())
    return {"host": socket.gethostname(), "pidns": pid_namespace(), "pid": os.getpid(),
            "start": stat[1] if stat else None, "time": time.time()}


def mark_worker(trial: optuna.Trial | FrozenTrial, study: Study | None = None) -> None:
    """Record on ``trial`` which process runs it, so a crash can be recognised later.

    Call it first thing in an objective (the PrimeSVT samplers already do it in ``before_trial``);
    it is what lets ``fail_stale_trials`` free a killed worker's trial at once on this host.
    """
    if isinstance(trial, optuna.Trial):
        trial.storage.set_trial_system_attr(trial._trial_id, WORKER, worker_info())
    else:
        if study is None:
            raise ValueError("mark_worker(FrozenTrial) needs the study")
        study._storage.set_trial_system_attr(trial._trial_id, WORKER, worker_info())


def _local_worker(trial: FrozenTrial) -> tuple[bool, str] | None:
    """(alive, description) of the trial's recorded worker when it runs on this host and in this
    PID namespace (its PID can be looked up here), else None (judged by its heartbeat)."""
    worker = trial.system_attrs.get(WORKER)
    if not worker or not pids_comparable(worker):
        return None  # another host, or another container with this host name
    pid = int(worker["pid"])
    described = f"pid {pid} on {worker['host']}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, described
    except PermissionError:
        pass
    stat = _proc_start(pid)
    if stat is None or stat[0] in ("Z", "X") or (worker.get("start") and stat[1] != worker["start"]):
        return False, described
    return True, described


def stale_reason(trial: FrozenTrial, grace: float | None, heartbeat_age: float | None = None,
                 unrecorded: float | None = None) -> str | None:
    """Why a RUNNING trial can no longer finish, or None while it still can (the module docstring
    gives the rule). ``grace``: seconds without a sign of life after which a trial of another host
    (or with no worker record) is dead, None to judge only this host's trials; ``heartbeat_age``:
    seconds since its last heartbeat, None when it has never beaten (then its worker record and
    creation time are its last signs of life); ``unrecorded``: in a PrimeSVT sampler's study,
    seconds after its creation when a trial that has neither a worker record nor a claim is dead
    (its process died between Optuna creating it and the sampler's first write)."""
    local = _local_worker(trial)
    if local is not None:
        return None if local[0] else f"its worker ({local[1]}) is gone"
    if unrecorded is not None and _unrecorded_age(trial) > unrecorded:
        return (f"no worker record {_unrecorded_age(trial):.0f} s after its creation (limit {unrecorded:g} s): "
                "its process died before its sampler started")
    if grace is None:
        return None
    if heartbeat_age is not None:
        return f"no heartbeat for {heartbeat_age:.0f} s (grace period {grace:g} s)" if heartbeat_age > grace else None
    worker = trial.system_attrs.get(WORKER) or {}
    stamps = [worker.get("time")]
    if trial.datetime_start is not None:
        stamps.append(trial.datetime_start.timestamp())
    last = max((float(s) for s in stamps if s is not None), default=None)
    if last is None or time.time() - last <= grace:
        return None
    what = "no heartbeat" if worker else "no worker record and no heartbeat"
    return f"{what} for {time.time() - last:.0f} s since it started (grace period {grace:g} s)"


def fail_stale_trials(study: Study, lease: float | None = None, states: Container[TrialState] = (TrialState.RUNNING,)) -> list[int]:
    """Mark trials that can no longer finish as FAIL, with the reason; returns the numbers of
    trials that went from RUNNING to FAIL during the call.

    Runs Optuna's heartbeat check (RDB and journal storages from ``open_storage``), then the
    local-process check on any storage, and, in a PrimeSVT sampler's study, the check for trials
    with no worker record (``unrecorded_after``). ``lease`` additionally fails trials of other
    hosts with no heartbeat or start for that many seconds (for storages opened without
    heartbeats). A resumed walk sees these configurations free again and evaluates them.
    """
    failed = fail_heartbeat_stale(study)
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    unrecorded = unrecorded_after(study._storage, study._study_id)
    return sorted(failed + fail_if_stale(study, trials, lease, states, unrecorded))


class TrialTakenOver(PrimeSVTError):
    """This worker's trial was failed by another process (it showed no sign of life for too long)
    before this worker could record itself on it; the worker drops it and carries on."""


def unrecorded_after(storage: BaseStorage, study_id: int) -> float | None:
    """``UNRECORDED_AFTER`` (or ``PRIMESVT_UNRECORDED_AFTER``) in a study a PrimeSVT sampler runs,
    whose every trial gets a worker record in the sampler's ``before_trial``; None in any other
    study, whose trials may legitimately run without one."""
    return unrecorded_limit() if SAMPLER in storage.get_study_user_attrs(study_id) else None


def unrecorded_limit() -> float:
    """Seconds a trial may go without a worker record: ``PRIMESVT_UNRECORDED_AFTER``, else
    ``UNRECORDED_AFTER``."""
    return float(_env_int("PRIMESVT_UNRECORDED_AFTER", UNRECORDED_AFTER))


def _unrecorded_age(trial: FrozenTrial) -> float:
    """Seconds since the creation of a trial that shows nothing of its worker (no worker record,
    no claim, no parameter); 0 for any other trial, or one with no start time."""
    if trial.system_attrs.get(WORKER) or trial.system_attrs.get(CLAIM) or trial.params or trial.datetime_start is None:
        return 0.0
    return time.time() - trial.datetime_start.timestamp()


def fail_if_stale(study: Study, trials: Sequence[FrozenTrial], lease: float | None = None,
                  states: Container[TrialState] = (TrialState.RUNNING,), unrecorded: float | None = None) -> list[int]:
    """Mark those of ``trials`` (an already read list) that can no longer finish as FAIL,
    recording why; cheap enough for a sampler to run before every decision. On this host that is
    a gone process; elsewhere, only on a storage without heartbeats (where ``fail_heartbeat_stale``
    cannot tell), no sign of life for ``lease`` seconds; anywhere, with ``unrecorded`` seconds
    given, a trial that got no worker record that long after its creation."""
    storage = study._storage
    lease = None if is_heartbeat_enabled(storage) else lease
    failed = []
    for trial in trials:
        if trial.state not in states:
            continue
        beat = trial.system_attrs.get(HEARTBEAT)
        reason = stale_reason(trial, lease, None if beat is None else time.time() - float(beat), unrecorded)
        if reason is None:
            continue
        try:
            storage.set_trial_system_attr(trial._trial_id, STALE, reason)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            continue  # another process finished or failed it first
        _logger.warning(f"Trial {trial.number} marked failed: {reason}.")
        failed.append(trial.number)
    return failed


def fail_heartbeat_stale(study: Study) -> list[int]:
    """Optuna's heartbeat check alone (RDB storages, and journals from ``open_storage``): fail
    running trials whose heartbeat is older than the grace period; returns the numbers of trials
    that went from RUNNING to FAIL meanwhile. Samplers that wait on other workers' trials call
    it (with ``keep_alive`` for their own) in their wait loop: Optuna runs it only when a trial
    starts, so without it a worker could wait on a dead host's trial until its timeout."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return []
    before = {t._trial_id for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return sorted(t.number for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.FAIL,))
                  if t._trial_id in before)


_last_beat: dict[tuple[int, int], float] = {}


def keep_alive(study: Study, trial_id: int) -> None:
    """Renew a running trial's heartbeat outside Optuna's objective call (at most once per
    heartbeat interval).

    Optuna starts the heartbeat only once the sampler has planned the trial. A sampler that waits
    on other workers while planning must call this in its wait loop: otherwise its trial has no
    heartbeat, another host cannot tell a worker killed there from one still waiting, and every
    other worker waits on it until its timeout.
    """
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return
    key = (id(storage), trial_id)
    now = time.monotonic()
    if now - _last_beat.get(key, -math.inf) < storage.get_heartbeat_interval():
        return
    _last_beat[key] = now
    try:
        storage.record_heartbeat(trial_id)
    except UpdateFinishedTrialError:
        pass


def running_trials(study: Study) -> list[FrozenTrial]:
    """Trials still RUNNING (what a consistent, finished study has none of)."""
    return study._storage.get_all_trials(study._study_id, states=(TrialState.RUNNING,))
