"""Run a test selection N times in a row, optionally beside a CPU hog, and record every run.

    python benchmarks/bench_reliability.py --repeat 20 tests/test_crash_resume.py
    python benchmarks/bench_reliability.py --repeat 5 --hog 2 tests

``--hog K`` starts K busy-loop processes (one per core: a `stress`-like load) for the whole run
and stops them at the end. Every run is one ``pytest -q -p no:cacheprovider`` in a subprocess;
its exit code, pass/fail/skip counts, wall time and the 1-minute load average at its end are
written to ``benchmarks/results/reliability/reliability-<tag>.csv`` with the machine after every run, and the
run stops at the first failure unless ``--keep-going``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS, write_rows  # noqa: E402

from primesvt_optuna.reporting.compare import machine  # noqa: E402


def _spin() -> None:
    while True:
        pass


def _counts(output: str) -> dict[str, int]:
    tail = output.strip().splitlines()[-1] if output.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="+", help="pytest arguments (files, -k expressions)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hog", type=int, default=0, help="busy-loop processes beside the tests")
    parser.add_argument("--tag", default=None, help="name of the CSV (default: derived from the tests)")
    parser.add_argument("--keep-going", action="store_true")
    args = parser.parse_args()
    tag = args.tag or re.sub(r"[^a-z0-9]+", "-", " ".join(args.tests).lower()).strip("-")
    out = RESULTS / "reliability" / f"reliability-{tag}.csv"
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hog)]
    for hog in hogs:
        hog.start()
    rows = []
    info = machine()
    try:
        for run in range(1, args.repeat + 1):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests],
                                  capture_output=True, text=True)
            row = {"run": run, "exit_code": done.returncode, **_counts(done.stdout),
                   "wall_s": round(time.perf_counter() - started, 1), "load_at_end": round(os.getloadavg()[0], 2),
                   "hog_processes": args.hog, "tests": " ".join(args.tests)}
            rows.append(row)
            print(row, flush=True)
            write_rows(rows, out, info)  # after every run: a run cut short keeps what it measured
            if done.returncode != 0:
                print(done.stdout[-5000:], flush=True)
                if not args.keep_going:
                    break
    finally:
        for hog in hogs:
            hog.terminate()
    passed = sum(r["exit_code"] == 0 for r in rows)
    print(f"{passed}/{len(rows)} runs passed; wrote {out}")
    return 0 if passed == len(rows) == args.repeat else 1


if __name__ == "__main__":
    sys.exit(main())
