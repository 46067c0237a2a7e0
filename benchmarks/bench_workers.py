"""Wall time of one PrimeSVT walk against the number of worker processes K (1, 2, 4) on SQLite, a
journal file and PostgreSQL; writes benchmarks/results/search_cost/workers.csv with the machine recorded.

The objective is the SyntheticObjective with a sleep of DELAY seconds per batch of 100 images
(10 batches: ``10 * DELAY`` s per fully evaluated trial; the exact early cut stops rejected ones
sooner). Sleeping stands for evaluation on an accelerator or another machine: it does not compete
for this machine's cores, so K beyond the core count still helps. With CPU-bound evaluation on
this 2-core machine, K > 2 would only share the cores.

    python benchmarks/bench_workers.py [--delay 0.05] [--postgres URL] [--repeats 1]

``--postgres`` defaults to $PRIMESVT_TEST_POSTGRES_URL; without either, PostgreSQL is skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective
from primesvt_optuna.plugin.result import result
from primesvt_optuna.storage import describe_storage, open_storage
from primesvt_optuna.reporting.compare import machine
from primesvt_optuna.workers import WorkerReport, optimize, run_workers

from _results import RESULTS, write_rows

SIZES = {"fc1": 4000, "fc2": 4000, "qkv": 1500, "proj": 500, "head": 300}
SENSITIVITY = {"fc1": 0.05, "fc2": 0.2, "qkv": 0.1, "proj": 0.5, "head": 0.3}
GRID = (0.2, 0.4, 0.6, 0.8)
OUT = RESULTS / "search_cost" / "workers.csv"


def _objective(delay: float) -> SyntheticObjective:
    return SyntheticObjective(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=0.03, memory_target=0.5,
                              grid=GRID, delay=delay)


def _work(url: str, name: str, delay: float, worker: int) -> WorkerReport:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = PrioritizedSampler(grid=GRID, poll_interval=0.05, wait_timeout=600)
    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler)
    return optimize(study, _objective(delay), worker=worker)


def run_once(url: str, k: int, delay: float) -> dict[str, object]:
    name = f"bench-{k}-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    optuna.create_study(storage=storage, study_name=name, directions=_objective(0).directions)
    started = time.perf_counter()
    run_workers(k, lambda i: _work(url, name, delay, i))
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=storage)
    res = result(study)
    trials = study.get_trials(deepcopy=False)
    row = {
        "workers": k, "wall_s": round(wall, 2), "trials": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "cut_or_idle": sum(t.state == TrialState.PRUNED for t in trials),
        "running_left": sum(t.state == TrialState.RUNNING for t in trials),
        "selected": ";".join(f"{layer}={rate:g}" for layer, rate in sorted(res.selected["rates"].items())),
    }
    if url.startswith(("postgresql", "postgres", "mysql")):
        optuna.delete_study(study_name=name, storage=storage)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05, help="seconds slept per batch of 100 images")
    parser.add_argument("--postgres", default=os.environ.get("PRIMESVT_TEST_POSTGRES_URL"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        storages = [("sqlite", f"sqlite:///{tmp}/bench.db"), ("journal", f"journal:///{tmp}/bench.log")]
        if args.postgres:
            storages.append(("postgresql", args.postgres))
        rows = []
        for kind, url in storages:
            for k in (1, 2, 4):
                for repeat in range(args.repeats):
                    host = machine()
                    row = {"storage": kind, **run_once(url, k, args.delay), "repeat": repeat,
                           "delay_per_batch_s": args.delay, **host}
                    rows.append(row)
                    print(f"{kind:<10} K={k} {row['wall_s']:>7.2f} s  {row['trials']} trials  "
                          f"load {host['load_1min']}  selected {row['selected']}", flush=True)
                    if kind != "postgresql":  # a fresh file per run
                        for path in Path(tmp).glob("bench.*"):
                            path.unlink()
    write_rows(rows, args.output, {})
    print(f"wrote {args.output} ({describe_storage(args.postgres) if args.postgres else 'no PostgreSQL'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
