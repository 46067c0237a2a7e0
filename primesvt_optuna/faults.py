"""Deterministic fault points for the crash tests (test-only; nothing sets the variable otherwise).

``PRIMESVT_FAULT=<point>@<trial number>`` makes the process kill itself with SIGKILL the moment
that trial reaches that point of its life, so a crash test hits an exact moment instead of racing
a timer. ``PRIMESVT_FAULT_SIGNAL=STOP`` sends SIGSTOP instead: the process freezes there until
someone sends SIGCONT (a worker that is merely slow). With the variable unset, ``hit`` costs one
dictionary lookup.

The points, in the order a trial passes them:

=============  ==============================================================================
``created``    the trial exists; its sampler has not written its worker record yet (the storages of
               ``primesvt_optuna.storage`` already wrote one with the trial)
``worker``     the sampler recorded the worker; no configuration is claimed yet
``claimed``    the configuration is claimed; evaluation has not started
``evaluating`` the first batch of images has been evaluated
``returned``   the objective returned; Optuna has not written the trial's state yet
``after_trial`` inside the sampler's ``after_trial``: the trial's state not yet written
=============  ==============================================================================
"""

from __future__ import annotations

import os
import signal

POINTS = ("created", "worker", "claimed", "evaluating", "returned", "after_trial")
VARIABLE = "PRIMESVT_FAULT"
_fired: set[tuple[str, int]] = set()


def hit(point: str, trial_number: int) -> None:
    """Kill (or stop) this process if ``PRIMESVT_FAULT`` names this point of this trial (the first
    time it gets there: ``evaluating`` is passed once per batch)."""
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    name, _, number = spec.partition("@")
    if name not in POINTS or not number.isdigit():
        raise ValueError(f"{VARIABLE}={spec!r}: use <point>@<trial number> with a point among {', '.join(POINTS)}")
    if name == point and int(number) == trial_number and (point, trial_number) not in _fired:
        _fired.add((point, trial_number))  # once: a stopped process continues past its point
        stop = os.environ.get(f"{VARIABLE}_SIGNAL", "KILL").upper() == "STOP"
        os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)
