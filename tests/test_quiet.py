"""torch's "Triton not available" log lines are dropped at the source (primesvt_optuna/_quiet.py),
and nothing else is.

The lines come from the ``logging`` logger ``torch._library.triton`` (not the ``warnings``
module) when spikingjelly registers its neuron kernels with ``torch.library.triton_op`` on the
first forward pass of a LIF neuron, on any machine without Triton. Each check runs in a fresh
interpreter, because the registration happens once per process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is not None, reason="Triton is installed: torch never logs the message"
)

MESSAGE = "Triton not available"

# The neuron every PrimeSVT model uses, run once: what makes spikingjelly register its kernels.
FORWARD = "import torch; from primesvt_optuna.models.spikformer import lif; lif()(torch.ones(2, 3, requires_grad=True))"


def _python(code: str) -> str:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_the_message_exists_without_the_filter() -> None:
    """Control: the same forward pass with the filter taken off logs the message, so the other
    tests would see it if the filter did not work."""
    out = _python(
        "import logging, primesvt_optuna._quiet as q; lg = logging.getLogger(q.LOGGER); "
        "[lg.removeFilter(f) for f in list(lg.filters)]; " + FORWARD
    )
    assert MESSAGE in out


def test_importing_the_package_drops_only_that_message() -> None:
    out = _python(
        "import logging, warnings, primesvt_optuna; " + FORWARD + "; "
        "logging.getLogger('torch._library.triton').warning('another triton_op problem'); "
        "logging.getLogger('someone.else').warning('Triton not available on someone else'); "
        "warnings.warn('a real warning')"
    )
    assert MESSAGE + ", find_triton_kernels" not in out
    assert "another triton_op problem" in out  # same logger, other message: still shown
    assert "Triton not available on someone else" in out  # same text, other logger: still shown
    assert "UserWarning: a real warning" in out  # the warnings module is untouched


def test_filter_is_installed_once() -> None:
    import logging

    from primesvt_optuna import _quiet

    _quiet.install()
    _quiet.install()
    logger = logging.getLogger(_quiet.LOGGER)
    assert sum(isinstance(f, _quiet._TritonUnavailableFilter) for f in logger.filters) == 1


def test_primesvt_command_is_quiet() -> None:
    """A real command that runs the shipped model prints no "Triton not available" line."""
    primesvt = Path(sys.executable).with_name("primesvt")
    if not primesvt.exists():
        pytest.skip("the primesvt console script is not installed next to this interpreter")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(
        [str(primesvt), "evaluate", "digits-2-64", "--split", "val"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "val accuracy" in done.stdout + done.stderr
    assert MESSAGE not in done.stdout + done.stderr
