"""`primesvt dashboard STORAGE`: a read-only optuna-dashboard on loopback, with the address printed;
its best trials are Optuna's (``primesvt_optuna.reporting.dashboard``)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Serve optuna-dashboard for STORAGE on 127.0.0.1 (never on other interfaces) and print its
address. The dashboard gets a read-only view of the storage: it cannot edit notes, tell or delete
anything, and the study is never written to. optuna-dashboard 0.21 does not read Optuna 5's
constraints (trial.set_constraint), so the view shows each trial's constraints in the form the
dashboard reads (feasible and infeasible trials are told apart in its plots), and the trials it
marks "Best Trial" are exactly Optuna's study.best_trials (the Pareto front of the feasible
trials; for one objective, the feasible trials with the best value). Every trial also shows
PrimeSVT's user attributes (phase, layer, rate, accuracy, memory_saving, constraint_accuracy,
constraint_memory, feasible, images_evaluated, ...). Ctrl-C stops it.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dashboard", help="serve optuna-dashboard on loopback", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("storage", metavar="STORAGE", help="storage URL or file (sqlite:///runs/compare.db, a .log journal, ...)")
    p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default %(default)s; 0 = any free port)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import PrimeSVTError
    from ..reporting.dashboard import dashboard_url, make_dashboard_server
    from ..storage import open_storage

    if not 0 <= args.port <= 65535:
        raise PrimeSVTError(f"--port must lie in 0..65535, got {args.port}")
    storage = open_storage(args.storage, read_only=True)
    try:
        server = make_dashboard_server(storage, args.port)
    except OSError as exc:
        raise PrimeSVTError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc} (try --port 0)") from None
    print(f"optuna-dashboard for {args.storage} at {dashboard_url(server)} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
