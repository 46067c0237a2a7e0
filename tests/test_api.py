"""The public API is importable from the package root, and the CLI's --help stays light."""

from __future__ import annotations

import subprocess
import sys

import primesvt_optuna


def test_every_public_name_resolves() -> None:
    for name in primesvt_optuna.__all__:
        assert getattr(primesvt_optuna, name) is not None
    from primesvt_optuna import PrioritizedSampler, PruningObjective  # the names the README uses
    from optuna.samplers import BaseSampler

    assert issubclass(PrioritizedSampler, BaseSampler) and callable(PruningObjective)


def test_help_does_not_import_torch() -> None:
    code = "import sys; from primesvt_optuna.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


def test_every_subcommand_explains_itself() -> None:
    for command in ["train", "evaluate", "info", "robustness", "search", "export", "compare", "report", "dashboard"]:
        out = subprocess.run([sys.executable, "-m", "primesvt_optuna.cli", command, "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "usage: primesvt " + command in out.stdout, (command, out.stderr)
