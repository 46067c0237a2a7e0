"""`primesvt`: the command line. Each subcommand lives in ``primesvt_optuna/commands/<name>.py``
and exposes ``add_parser(subparsers)`` and ``run(args) -> int``; heavy imports stay inside ``run``
so that ``--help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from .errors import PrimeSVTError

COMMANDS = ["train", "evaluate", "info", "robustness", "search", "export", "compare", "report", "dashboard"]


def _modules():
    for name in COMMANDS:
        try:
            yield importlib.import_module(f"primesvt_optuna.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not written yet is simply absent
            if exc.name != f"primesvt_optuna.commands.{name}":
                raise


class _Parser(argparse.ArgumentParser):
    """A bad command line is one ``error:`` line naming the help to read, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="primesvt",
        description="PrimeSVT: memory-aware structured pruning of Spiking Vision Transformers with Optuna.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _modules():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: OpenMP's busy-waiting makes torch processes sharing cores 10-40x slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except PrimeSVTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file the command reads or writes (full disk, no permission, a file where a folder goes)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}: check the path and the space left", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
