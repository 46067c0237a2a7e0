"""A small PrimeSVT walk on the SyntheticObjective, run the way `primesvt search --workers K` runs
it: K processes on one storage via ``run_workers``/``optimize``. The scale-out, crash/resume and
benchmark code share it; as a script it is the "same command" a crash test runs twice:

    python tests/_synthetic_walk.py STORAGE STUDY K DELAY

Exit 0 and a JSON line when the walk finished; 130 with the resume hint after Ctrl-C.
``PRIMESVT_TEST_POLICY=budget-aware`` runs the budget-aware sampler instead of the paper's walk
(same claim machinery, another policy).
``PRIMESVT_FAKE_HOST`` makes the process record another host name, so stale-trial detection
has to rely on heartbeats instead of the PID (a worker on another machine).
``PRIMESVT_TEST_STORAGE`` runs one worker the way the README's API example does, with plain
``study.optimize`` on a storage the user built instead of ``open_storage``'s: ``url`` (the URL
string itself), ``rdb`` (``RDBStorage(url)``), ``rdb-heartbeat`` (``RDBStorage`` with Optuna's
heartbeat) or ``journal`` (``JournalStorage(JournalFileBackend(path))``, from ``journal:///path``).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

if os.environ.get("PRIMESVT_FAKE_HOST"):
    _host = os.environ["PRIMESVT_FAKE_HOST"]
    socket.gethostname = lambda: _host  # type: ignore[assignment]

from primesvt_optuna import faults  # noqa: E402
from primesvt_optuna.plugin import BudgetAwareSampler, PrioritizedSampler, SyntheticObjective  # noqa: E402
from primesvt_optuna.plugin.result import result  # noqa: E402
from primesvt_optuna.storage import open_storage  # noqa: E402
from primesvt_optuna.workers import WorkerReport, interrupted_message, optimize, run_workers  # noqa: E402

# small enough that a whole walk is ~15 trials (the crash tests run it ~60 times), yet it has
# passing and rejected rates, a layer that is no target, and walk trials after a commit
SIZES = {"fc1": 4000, "fc2": 3000, "qkv": 1500, "proj": 500}
SENSITIVITY = {"fc1": 0.05, "fc2": 0.2, "qkv": 0.1, "proj": 0.5}
GRID = (0.3, 0.6, 0.9)


def make_objective(delay: float = 0.0) -> SyntheticObjective:
    """Accuracy a known function of the rates; ``delay`` seconds per batch of 100 images (10 batches)."""
    return SyntheticObjective(
        SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=0.03, memory_target=0.5, grid=GRID, delay=delay,
    )


def make_sampler() -> PrioritizedSampler | BudgetAwareSampler:
    cls = BudgetAwareSampler if os.environ.get("PRIMESVT_TEST_POLICY") == "budget-aware" else PrioritizedSampler
    return cls(grid=GRID, poll_interval=0.05, wait_timeout=300)


def create(storage: Any, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.create_study(
        storage=storage, study_name=name, directions=make_objective().directions, load_if_exists=True,
        sampler=sampler,
    )


def work(url: str, name: str, delay: float, worker: int, barrier: tuple[str, int] | None = None) -> WorkerReport:
    """One worker: its own storage connection, sampler and objective (what each machine runs).
    ``barrier`` = (folder, K): start only once all K workers are up, so that a slow process start
    cannot leave one worker the whole walk."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=make_sampler())
    if barrier is not None:
        folder, k = Path(barrier[0]), barrier[1]
        (folder / f"{worker}.ready").touch()
        deadline = time.monotonic() + 300
        while len(list(folder.glob("*.ready"))) < k and time.monotonic() < deadline:
            time.sleep(0.01)
    return optimize(study, make_objective(delay), worker=worker)


def user_storage(url: str, mode: str) -> Any:
    """The storage a user builds without ``open_storage`` (see the module docstring)."""
    if mode == "url":
        return url
    if mode == "rdb":
        return RDBStorage(url)
    if mode == "rdb-heartbeat":
        return RDBStorage(url, heartbeat_interval=1, grace_period=3)
    if mode == "journal":
        return JournalStorage(JournalFileBackend(url.removeprefix("journal://")))
    raise ValueError(f"PRIMESVT_TEST_STORAGE={mode!r}: use url, rdb, rdb-heartbeat or journal")


def search(url: str, name: str, k: int, delay: float) -> list[WorkerReport]:
    mode = os.environ.get("PRIMESVT_TEST_STORAGE")
    if mode:  # the README's way: one process, plain study.optimize, the user's own storage
        study, objective = create(user_storage(url, mode), name, make_sampler()), make_objective(delay)

        def returned(trial: optuna.Trial) -> Any:  # the fault point workers.optimize has after the objective
            values = objective(trial)
            faults.hit("returned", trial.number)
            return values

        study.optimize(returned)
        return [WorkerReport(0, os.getpid(), len(study.trials), False, [])]
    create(open_storage(url), name)
    with tempfile.TemporaryDirectory() as folder:
        barrier = (folder, k) if k > 1 else None
        return run_workers(k, lambda i: work(url, name, delay, i, barrier))


def summary(study: optuna.Study) -> dict[str, Any]:
    """What the tests compare: the selection, the commits, and how every trial ended."""
    res = result(study)
    sampler = make_sampler()
    commits = sampler.walk_state(study).commits if isinstance(sampler, PrioritizedSampler) else []
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if (t.system_attrs.get("primesvt:claim") or {}).get("key")
            and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    evaluated = [t.system_attrs["primesvt:claim"]["key"] for t in done]
    return {
        "selected": res.selected["rates"] if res.selected else None,
        "commits": [[c.layer, c.rate] for c in commits],
        "finished": res.finished,
        "states": dict(collections.Counter(t.state.name for t in trials)),
        "duplicates": sorted(k for k, n in collections.Counter(evaluated).items() if n > 1),
        "workers": sorted({(t.system_attrs.get("primesvt:worker") or {}).get("pid") for t in trials} - {None}),
        "trials": len(trials),
        "walk_trials": [t.number for t in trials if t.user_attrs.get("phase") in ("walk", "plan", "extend")],
        "confirm_trials": [t.number for t in trials if t.user_attrs.get("phase") == "confirm"],
        "confirmed": (res.selected or {}).get("confirmation", {}).get("confirmed"),
        "evaluated": {key: t.user_attrs.get("phase") for key, t in zip(evaluated, done)},
    }


def expected() -> dict[str, Any]:
    """One worker, in memory, no delay: the reference every other run must reproduce."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create(InMemoryStorage(), "reference", make_sampler())
    optimize(study, make_objective())
    return summary(study)


def main(argv: list[str]) -> int:
    url, name, k, delay = argv[0], argv[1], int(argv[2]), float(argv[3])
    reports = search(url, name, k, delay)
    if any(r.interrupted for r in reports):
        print(interrupted_message(reports, ["search", *argv]), file=sys.stderr, flush=True)
        return 130
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    print(json.dumps(summary(study)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
