"""`primesvt robustness` with and without prefix sharing, in the same run, same tables.

Each repetition runs the command twice back to back (order alternating, so a change in the
machine's load hits both alike), with ``--no-cache``: once as shipped (the network before the
pruned layer runs once per batch, the rest once per rate) and once with ``--no-prefix-sharing``
(every pruned model from the input). Wall and CPU seconds of each, the speed-up, and whether the
two tables are identical (every accuracy compared exactly) are written with the machine.

    python benchmarks/bench_robustness.py [--checkpoint digits-2-64] [--repeats 2] [--subset N] [--threads 1 2]

``--sweep-only``: time ``robustness_sweep`` alone in this process (pruning and evaluation of the
135 single-layer configurations, without loading, the base evaluation, printing and the heatmap),
shared against separate, same tables checked.

``--threads``: torch intra-op threads, one set of repetitions per value (the shared prefix leaves
the smaller operations, which gain less from a second thread; CPU seconds also count the threads'
spin-waits).

Writes benchmarks/results/search_cost/robustness_sharing.csv by default.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from primesvt_optuna.cli import main as cli
from primesvt_optuna.reporting.compare import machine

from _results import RESULTS, write_rows

OUT = RESULTS / "search_cost" / "robustness_sharing.csv"


def run_once(args: argparse.Namespace, share: bool, folder: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    csv = folder / f"table-{'shared' if share else 'separate'}.csv"
    argv = ["robustness", args.checkpoint, "--no-cache", "--force", "--figure", str(folder / "heat.png"), "--csv", str(csv),
            "--batch-size", str(args.batch_size)]
    if args.subset:
        argv += ["--subset", str(args.subset)]
    if not share:
        argv.append("--no-prefix-sharing")
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli(argv) == 0
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"checkpoint": args.checkpoint, "torch_threads": torch.get_num_threads(), "measured": "command",
           "prefix_sharing": share, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
           "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2)}
    return row, pd.read_csv(csv)


def run_sweep(args: argparse.Namespace, share: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    """``robustness_sweep`` alone: the command's sweep without its fixed costs."""
    from primesvt_optuna.checkpoint import load_checkpoint, resolve_checkpoint
    from primesvt_optuna.data import load_splits, subset
    from primesvt_optuna.pruning import Engine
    from primesvt_optuna.pruning.robustness import SharedPrefixEvaluator, robustness_sweep

    model, ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint))
    val = subset(load_splits(ckpt["data"]).val, args.subset, 0)
    engine = Engine(model)
    evaluate = SharedPrefixEvaluator(val, batch_size=args.batch_size, share=share)
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    table = robustness_sweep(engine, evaluate, base_accuracy=0.0, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"checkpoint": args.checkpoint, "torch_threads": torch.get_num_threads(), "measured": "sweep only",
           "prefix_sharing": share, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
           "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2)}
    return row, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="digits-2-64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None, help="evaluate on N validation images (default: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--sweep-only", action="store_true", help="time robustness_sweep alone, in this process")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    rows, tables = [], {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            torch.set_num_threads(threads)
            runs = []
            for rep in range(args.repeats):
                for share in ((True, False) if rep % 2 == 0 else (False, True)):
                    row, table = run_sweep(args, share) if args.sweep_only else run_once(args, share, Path(tmp))
                    runs.append({"repeat": rep, **row})
                    tables[share].append(table)
                    print(runs[-1], flush=True)
            summary = {"repeat": "summary", "checkpoint": args.checkpoint, "torch_threads": threads,
                       "measured": "sweep only" if args.sweep_only else "command"}
            for key in ("wall_s", "cpu_s"):
                shared = sum(r[key] for r in runs if r["prefix_sharing"])
                separate = sum(r[key] for r in runs if not r["prefix_sharing"])
                summary[f"speedup_{key.removesuffix('_s')}"] = round(separate / shared, 2)
            rows += [*runs, summary]
            print(summary, flush=True)
    reference = tables[False][0]
    identical = all(t.equals(reference) for t in tables[True] + tables[False])
    for row in rows:
        if row["repeat"] == "summary":
            row["tables_identical"] = identical
    write_rows(rows, args.output, machine())
    print("tables identical:", identical)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
