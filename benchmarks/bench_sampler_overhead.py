"""Time per trial spent inside each sampler, with 1,000 finished trials in a SQLite study.

Every sampler (PrimeSVT's four and Optuna's TPE, NSGA-II and RandomSampler, measured in the same
run) gets a fresh SQLite study pre-filled with the same 1,000 finished trials (random complete
configurations of a 30-layer synthetic objective, with constraints and user attributes as the
real objective writes them), then runs ``--trials`` more trials whose objective returns at once
(a 10-image synthetic evaluation). Only the time inside the sampler's methods is counted
(``before_trial``, ``infer_relative_search_space``, ``sample_relative``, ``sample_independent``,
``after_trial``): storage reads the sampler does itself are included, the objective's writes are
not. The walk samplers read the whole study to decide (state lives in storage, not in memory), so
their cost grows with the study; this measures by how much.

The headline is the median time per trial over the timed trials after the first: a sampler
joining a study indexes its finished trials once, on its first decision (``first_trial_ms``,
reported beside it), and every later decision reprocesses only what changed. The mean over all
timed trials, first included, is ``mean_ms_per_trial``. The last row is the floor of any sampler
that keeps its state in the study: one incremental read and one committed claim write per
decision, timed alone in the same run.

    python benchmarks/bench_sampler_overhead.py [--prefill 1000] [--trials 30]

Writes benchmarks/results/search_cost/sampler_overhead.csv (machine recorded).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler

from primesvt_optuna.plugin import (
    PrioritizedSampler,
    RandomOrderSampler,
    SmallestFirstSampler,
    SyntheticObjective,
    UniformSampler,
)
from primesvt_optuna.reporting.compare import machine
from primesvt_optuna.storage import open_storage, set_trial_attrs

from _results import RESULTS

OUT = RESULTS / "search_cost" / "sampler_overhead.csv"
LAYERS = {f"layer{i:02d}": 1000 + 500 * (i % 7) + 37 * i for i in range(30)}


class TimedSampler(BaseSampler):
    """Delegates to ``inner`` and adds up the seconds spent in each of its methods."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)
        self.per_trial: dict[int, float] = defaultdict(float)

    def _timed(self, name: str, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return getattr(self.inner, name)(*args)
        finally:
            spent = time.perf_counter() - start
            self.seconds[name] += spent
            if len(args) > 1:  # (study, trial, ...): charge the trial
                self.per_trial[args[1].number] += spent

    def infer_relative_search_space(self, study, trial):  # noqa: ANN001, ANN201 - BaseSampler's signature
        return self._timed("infer_relative_search_space", study, trial)

    def sample_relative(self, study, trial, search_space):  # noqa: ANN001, ANN201
        return self._timed("sample_relative", study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return self._timed("sample_independent", study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):  # noqa: ANN001, ANN201
        return self._timed("before_trial", study, trial)

    def after_trial(self, study, trial, state, values):  # noqa: ANN001, ANN201
        return self._timed("after_trial", study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def objective() -> SyntheticObjective:
    return SyntheticObjective(LAYERS, memory_target=0.3, n_images=10, batch_size=10)


SAMPLERS = {
    "random (Optuna)": lambda: optuna.samplers.RandomSampler(seed=0),
    "prioritized": lambda: PrioritizedSampler(seed=0),
    "smallest-first": lambda: SmallestFirstSampler(seed=0),
    "random-order": lambda: RandomOrderSampler(seed=0),
    "uniform": lambda: UniformSampler(seed=0),
    "tpe (Optuna)": lambda: optuna.samplers.TPESampler(seed=0),
    "nsga2 (Optuna)": lambda: optuna.samplers.NSGAIISampler(seed=0),
}


def prefill(n: int) -> list[optuna.trial.FrozenTrial]:
    """``n`` finished trials (random complete configurations), made once in memory."""
    study = optuna.create_study(directions=objective().directions, sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(objective(), n_trials=n)
    return study.get_trials()


def bench(name: str, trials: list[optuna.trial.FrozenTrial], n_trials: int, folder: Path) -> dict[str, Any]:
    storage = open_storage(f"sqlite:///{folder}/{name.split()[0]}.db")
    obj = objective()
    timed = TimedSampler(SAMPLERS[name]())
    study = optuna.create_study(storage=storage, directions=obj.directions, sampler=timed)
    obj.attach(study)
    study.set_user_attr("primesvt:base_accuracy", obj.base_accuracy)
    study.add_trials(trials)
    before = len(study.trials)
    start = time.perf_counter()
    study.optimize(obj, n_trials=n_trials)
    wall = time.perf_counter() - start
    ran = len(study.trials) - before
    total = sum(timed.seconds.values())
    per_trial = [timed.per_trial[n] for n in sorted(timed.per_trial)]
    return {"sampler": name, "prefilled_trials": before, "trials_timed": ran,
            "sampler_ms_per_trial": round(1000 * statistics.median(per_trial[1:] or per_trial), 2),
            "first_trial_ms": round(1000 * per_trial[0], 2),
            "mean_ms_per_trial": round(1000 * total / max(ran, 1), 2),
            "wall_ms_per_trial": round(1000 * wall / max(ran, 1), 2),
            **{f"ms_{k}": round(1000 * v / max(ran, 1), 2) for k, v in sorted(timed.seconds.items())}}


def storage_floor(trials: list[optuna.trial.FrozenTrial], n_trials: int, folder: Path) -> dict[str, Any]:
    """What any sampler that keeps its state in the study pays per decision on this storage: one
    incremental read of the study (Optuna's cached refresh, one trial running) and one committed
    write of a claim (system + user attributes), medians over ``n_trials`` trials."""
    obj = objective()
    study = optuna.create_study(storage=open_storage(f"sqlite:///{folder}/floor.db"), directions=obj.directions)
    study.add_trials(trials)
    storage, reads, writes = study._storage, [], []
    storage.get_all_trials(study._study_id, deepcopy=False)
    for _ in range(n_trials):
        trial_id = storage.create_new_trial(study._study_id)
        start = time.perf_counter()
        storage.get_all_trials(study._study_id, deepcopy=False)
        read = time.perf_counter()
        set_trial_attrs(storage, trial_id, {"primesvt:claim": {"key": "x" * 40, "phase": "walk"}},
                        {"phase": "walk", "layer": "layer00", "rate": 0.5})
        reads.append(read - start)
        writes.append(time.perf_counter() - read)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [0.5, 1000.0])
    read_ms, write_ms = 1000 * statistics.median(reads), 1000 * statistics.median(writes)
    return {"sampler": "floor: one study read + one claim write", "prefilled_trials": len(trials),
            "trials_timed": n_trials, "sampler_ms_per_trial": round(read_ms + write_ms, 2),
            "ms_read": round(read_ms, 2), "ms_claim_write": round(write_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefill", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS),
                        metavar="NAME", help=f"subset to time (RandomSampler is always first): {', '.join(SAMPLERS)}")
    parser.add_argument("--note", default="", help="a note recorded in every row (e.g. the load)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = prefill(args.prefill)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in dict.fromkeys(["random (Optuna)", *args.samplers]):
            rows.append(bench(name, trials, args.trials, Path(tmp)))
            print(rows[-1], flush=True)
        rows.append(storage_floor(trials, args.trials, Path(tmp)))
        print(rows[-1], flush=True)
    base = rows[0]["sampler_ms_per_trial"]
    info = machine()
    keys = list(dict.fromkeys(k for r in rows for k in r))  # sampler first, then its timings
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*keys, "x_random_sampler", "note", *info])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "x_random_sampler": round(r["sampler_ms_per_trial"] / base, 1), "note": args.note,
                             **info})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
