"""K worker processes on one study, and a Ctrl-C that leaves the study consistent.

``run_workers(k, fn)`` calls ``fn(0) ... fn(k-1)`` in K processes (joblib's loky backend; K = 1
runs in this process). Each ``fn`` opens the storage from its URL, loads the study and calls
``optimize``, so the processes share nothing but the storage: the same code runs one worker per
machine with ``primesvt search CONFIG --storage URL --study-name NAME`` on each.

Ctrl-C: the terminal sends SIGINT to every process of the job, and ``run_workers`` forwards it to
its workers when only the parent got it (``kill -INT``). A worker stops at the first SIGINT, at
the next point where no storage write is under way: a trial being evaluated is recorded as FAIL
with ``interrupted=True`` (the walk does not count it as a rejected rate and evaluates it again
on resume), a trial still being planned is failed the same way, and SIGINTs are ignored while
that bookkeeping is written. A second Ctrl-C in the parent stops at once; the next run's
stale-trial check then fails what the killed workers held.
Checkpoints and exports are written atomically by ``primesvt_optuna.checkpoint.save_checkpoint``
(temporary file, fsync, rename), so no helper for that lives here.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from . import faults
from .errors import PrimeSVTError
from .storage import STALE, WORKER, TrialTakenOver, fail_stale_trials, pids_comparable

R = TypeVar("R")
_logger = optuna.logging.get_logger(__name__)

INTERRUPTED = "interrupted"
"""User attribute on a trial stopped by Ctrl-C (the samplers treat it as never evaluated)."""


@dataclass
class WorkerReport:
    """What one worker did: how many trials it finished, and whether Ctrl-C stopped it."""

    worker: int
    pid: int
    finished: int
    interrupted: bool
    released: list[int]  # trials it failed on the way out (interrupted mid-trial or mid-plan)


def run_workers(k: int, fn: Callable[[int], R]) -> list[R]:
    """``[fn(0), ..., fn(k-1)]``, each in its own process (K = 1: here), results in order.

    ``fn`` is pickled with cloudpickle, so a closure over the config is fine; it must open the
    storage itself (connections do not survive pickling). Every worker runs to its end; then the
    first worker error, if any, is raised. SIGINT in the parent is forwarded to the workers once
    and the parent waits for them to record their trials; idle workers ignore SIGINT, so a
    terminal's Ctrl-C cannot kill one between tasks (which would make loky kill the others).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise PrimeSVTError(f"--workers must be a whole number >= 1, got {k!r}")
    if k == 1:
        return [fn(0)]
    from joblib.executor import get_memmapping_executor
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    # joblib's flavour of loky's reusable executor: a later joblib.Parallel in this process (e.g.
    # run_comparison) reuses or replaces it; loky's own one broke such a Parallel with an
    # AttributeError ('_temp_folder_manager')
    executor = get_memmapping_executor(k, initializer=_ignore_sigint)
    with _forward_sigint():
        futures = [executor.submit(fn, i) for i in range(k)]
        wait(futures)
    results = []
    for future in futures:
        try:
            results.append(future.result())
        except TerminatedWorkerError as exc:
            raise PrimeSVTError(
                f"a worker process died ({_first_line(exc)}); resume the search to retry its trial"
            ) from None
    return results


def _ignore_sigint() -> None:
    """loky worker initializer: SIGINT only counts while ``optimize`` runs (it installs its own)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def _forward_sigint() -> Iterator[None]:
    """First SIGINT: pass it on to our child processes and keep waiting; second: KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt
        for pid in _children():
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _children() -> list[int]:
    """PIDs whose parent is this process (Linux /proc; elsewhere none, and Ctrl-C reaches them anyway)."""
    me = os.getpid()
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            pids.append(int(entry))
    return pids


def optimize(
    study: Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    worker: int = 0,
    n_trials: int | None = None,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[Study, FrozenTrial], None]] = (),
    catch: tuple[type[Exception], ...] = (),
    show_progress_bar: bool = False,
) -> WorkerReport:
    """One worker's ``study.optimize`` that survives Ctrl-C with the study consistent.

    Before starting it fails trials that can no longer finish (dead local workers, heartbeats
    past the grace period), so a resumed walk retries them instead of waiting on them.
    """
    fail_stale_trials(study)
    finished = [0]
    stop = _StopRequest()

    def after_trial(study: Study, trial: FrozenTrial) -> None:
        finished[0] += 1
        stop.check()  # a SIGINT whose exception was swallowed (GC callback, __del__) stops here

    def guarded(trial: optuna.Trial) -> Any:
        try:
            stop.check()
            value = objective(trial)
        except KeyboardInterrupt:
            with _sigint_ignored():  # tells the walk this rate was not evaluated, not rejected
                trial.set_user_attr(INTERRUPTED, True)
            raise
        faults.hit("returned", trial.number)
        return value

    interrupted = False
    released: list[int] = []
    dropped: set[int] = set()
    owned_before = 0 if n_trials is None else len(_own_trials(study))
    deadline = None if timeout is None else time.monotonic() + timeout
    with stop.installed():
        while True:  # more than once only when a stalled trial of this worker was taken over
            remaining = None if n_trials is None else n_trials - (len(_own_trials(study)) - owned_before)
            left = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or (left is not None and left <= 0):
                break
            try:
                study.optimize(
                    guarded, n_trials=remaining, timeout=left, callbacks=[*callbacks, after_trial], catch=catch,
                    gc_after_trial=False, show_progress_bar=show_progress_bar,
                )
                break
            except KeyboardInterrupt:
                interrupted = True
                with _sigint_ignored():
                    released = release_own_trials(study)
                break
            except TrialTakenOver as exc:
                _logger.warning(f"{exc}; another worker evaluates its configuration. Dropped; carrying on.")
            except Exception:
                lost = sorted(t.number for t in _own_trials(study) if STALE in t.system_attrs)
                if not set(lost) - dropped:
                    with _sigint_ignored(), suppress(Exception):  # the original error is the one to show
                        release_own_trials(study)
                    raise
                _logger.warning(
                    f"Trial(s) {', '.join(map(str, sorted(set(lost) - dropped)))} of this worker were declared "
                    "dead by another process while it stalled (no heartbeat for the grace period); another "
                    "worker evaluates their configurations. Dropped; carrying on."
                )
                dropped.update(lost)
            except BaseException:
                with _sigint_ignored(), suppress(Exception):  # the original error is the one to show
                    release_own_trials(study)
                raise
    return WorkerReport(worker, os.getpid(), finished[0], interrupted, released)


class _Stop(KeyboardInterrupt):
    """Raised in a worker by SIGINT."""


_UNSAFE_MODULES = (
    "optuna.storages", "optuna.study._tell", "sqlalchemy", "psycopg2", "pymysql", "MySQLdb", "sqlite3",
    "weakref", "logging", "threading",
)
"""Code a KeyboardInterrupt must not tear through: a journal write interrupted between taking and
releasing its lock file leaves the lock behind (and Optuna then raises FileNotFoundError instead
of KeyboardInterrupt), a half-done tell leaves the trial half recorded, and an exception raised
in a GC callback is silently dropped."""


def _unsafe(frame: Any) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_UNSAFE_MODULES):
            return True
        frame = frame.f_back
    return False


class _StopRequest:
    """SIGINT raises ``_Stop`` at the next safe point of the worker.

    Inside storage or tell code (``_UNSAFE_MODULES``) the signal is re-delivered 50 ms later
    instead, until the interrupted code is out of there. A second SIGINT within ``DEBOUNCE``
    seconds of the first (the terminal's plus the one the parent forwards) is ignored, and the
    optimize loop re-checks the request before and after every trial.
    """

    DEBOUNCE = 2.0
    RETRY = 0.05

    def __init__(self) -> None:
        self.at: float | None = None
        self.deferred = False
        self._timer: threading.Timer | None = None

    def handler(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.at is not None and not self.deferred and now - self.at < self.DEBOUNCE:
            return
        if self.at is None:
            self.at = now
        self.deferred = _unsafe(frame)
        if self.deferred:
            self._timer = threading.Timer(self.RETRY, os.kill, (os.getpid(), signal.SIGINT))
            self._timer.daemon = True
            self._timer.start()
            return
        raise _Stop

    def check(self) -> None:
        if self.at is not None:
            raise _Stop

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self.handler)
        try:
            yield
        finally:
            if self._timer is not None:
                self._timer.cancel()
            signal.signal(signal.SIGINT, previous)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _mine(trial: FrozenTrial) -> bool:
    worker = trial.system_attrs.get(WORKER) or {}
    return pids_comparable(worker) and worker.get("pid") == os.getpid()


def _own_trials(study: Study) -> list[FrozenTrial]:
    return [t for t in study._storage.get_all_trials(study._study_id, deepcopy=False) if _mine(t)]


def release_own_trials(study: Study) -> list[int]:
    """Fail this process's RUNNING trials as interrupted; returns their numbers.

    They carry ``interrupted=True`` and ``fail_reason``, so the walk treats their configurations
    as never evaluated, and nothing is left RUNNING for the next run to wait on.
    """
    storage = study._storage
    released = []
    for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if not _mine(trial):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted (Ctrl-C) before it finished")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            continue
        released.append(trial.number)
    return released


def resume_command(argv: Sequence[str], prog: str = "primesvt") -> str:
    """The command that continues an interrupted search: the same one, with ``--resume``."""
    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join([prog, *args])


def interrupted_message(reports: Sequence[WorkerReport], argv: Sequence[str]) -> str:
    """What to print after Ctrl-C: what was kept, and how to go on."""
    finished = sum(r.finished for r in reports)
    released = sorted(n for r in reports for n in r.released)
    lines = [f"interrupted: {finished} trial(s) finished and kept in the study"]
    if released:
        lines.append(f"trial(s) {', '.join(map(str, released))} stopped mid-way, recorded as failed (interrupted); they will be evaluated again")
    lines.append(f"resume with: {resume_command(argv)}")
    return "\n".join(lines)
