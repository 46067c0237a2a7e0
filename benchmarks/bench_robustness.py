"""`primesvt robustness` with and without prefix sharing, in the same run, same tables.

Each repetition runs the command twice back to back (order alternating, so a change in the
machine's load hits both alike), with ``--no-cache``: once as shipped (the network before the
pruned layer runs once per batch, the rest once per rate) and once with ``--no-prefix-sharing``
(every pruned model from the input). Wall and CPU seconds of each, the speed-up, and whether the
two tables are identical (every accuracy compared exactly) are written with the machine.

    python benchmarks/bench_robustness.py [--checkpoint digits-2-64] [--repeats 2] [--subset N]

Writes benchmarks/results/robustness_sharing.csv by default.
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

from primesvt_optuna.cli import main as cli
from primesvt_optuna.reporting.compare import machine

from _results import write_rows

OUT = Path(__file__).resolve().parent / "results" / "robustness_sharing.csv"


def run_once(args: argparse.Namespace, share: bool, folder: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    csv = folder / f"table-{'shared' if share else 'separate'}.csv"
    argv = ["robustness", args.checkpoint, "--no-cache", "--figure", str(folder / "heat.png"), "--csv", str(csv),
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
    row = {"checkpoint": args.checkpoint, "prefix_sharing": share, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
           "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2)}
    return row, pd.read_csv(csv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="digits-2-64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None, help="evaluate on N validation images (default: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    rows, tables = [], {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for share in ((True, False) if rep % 2 == 0 else (False, True)):
                row, table = run_once(args, share, Path(tmp))
                rows.append({"repeat": rep, **row})
                tables[share].append(table)
                print(rows[-1], flush=True)
    reference = tables[False][0]
    identical = all(t.equals(reference) for t in tables[True] + tables[False])
    summary = {"repeat": "summary", "checkpoint": args.checkpoint, "tables_identical": identical}
    for key in ("wall_s", "cpu_s"):
        shared = sum(r[key] for r in rows if r["prefix_sharing"])
        separate = sum(r[key] for r in rows if not r["prefix_sharing"])
        summary[f"speedup_{key.removesuffix('_s')}"] = round(separate / shared, 2)
    rows.append(summary)
    write_rows(rows, args.output, machine())
    print(summary)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
