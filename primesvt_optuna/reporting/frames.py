"""Studies of a comparison, read back from storage as pandas frames.

Everything the tables and figures show is derived here from what the storage holds (trial user
attributes, constraints and the ``primesvt:`` study attributes), so ``primesvt report`` needs
nothing but the storage URL. A comparison's studies are named ``<name>/<policy>/seed<k>``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import PrimeSVTError
from ..storage import fail_stale_trials, open_storage, parse_storage

RATE_PREFIX = "rate:"
STUDY_PREFIX = "primesvt:"
REPORT_ATTR = "primesvt:report"
"""Study attribute written by the comparison after a study ends: test-set accuracy of the selected
configuration (and of the unpruned model) and the machine it ran on. ``load_studies`` adds the
costs charged to the study from outside it (the shared robustness sweep trials it replayed)."""

POLICIES = ("prioritized", "budget-aware", "smallest-first", "random-order", "uniform", "tpe", "nsga2")
_NAME = re.compile(r"^(?P<name>.+)/(?P<policy>[^/]+)/seed(?P<seed>-?\d+)$")


def parse_study_name(study_name: str) -> tuple[str, str, int] | None:
    """``(name, policy, seed)`` of a comparison study name, None for any other name."""
    match = _NAME.match(study_name)
    if not match:
        return None
    return match["name"], match["policy"], int(match["seed"])


def study_name(name: str, policy: str, seed: int) -> str:
    return f"{name}/{policy}/seed{seed}"


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


@dataclass
class StudyRecord:
    """One study of a comparison: its identity, its study attributes and its trials as a frame."""

    name: str
    policy: str
    seed: int
    study_name: str
    attrs: dict[str, Any]
    trials: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None  # what the policy itself selects (plugin.result), if known

    @property
    def constraints(self) -> dict[str, Any]:
        return self.attrs.get(f"{STUDY_PREFIX}constraints") or {}

    @property
    def base_accuracy(self) -> float:
        value = self.attrs.get(f"{STUDY_PREFIX}base_accuracy")
        if value is None:
            ref = self.trials[(self.trials.phase == "reference") & self.trials.complete]
            value = ref.accuracy.iloc[0] if len(ref) else math.nan
        return _float(value)

    @property
    def base_bytes(self) -> float:
        return _float(self.attrs.get(f"{STUDY_PREFIX}base_bytes"))

    @property
    def val_images(self) -> int:
        """Images in a full evaluation: the most any finished trial of the study evaluated."""
        done = self.trials[self.trials.complete].images_evaluated.dropna()
        return int(done.max()) if len(done) else 0

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.attrs.get(f"{STUDY_PREFIX}layers") or [])


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as a flat record: user attributes, constraints (from Optuna, authoritative), rates."""
    ua = trial.user_attrs
    cons = trial.constraints
    c_acc = _float(cons.get("accuracy", ua.get("constraint_accuracy")))
    c_mem = _float(cons.get("memory", ua.get("constraint_memory")))
    complete = trial.state == TrialState.COMPLETE
    start, end = trial.datetime_start, trial.datetime_complete
    return {
        "number": trial.number,
        "state": trial.state.name,
        "complete": complete,
        "phase": ua.get("phase"),
        "layer": ua.get("layer"),
        "rate": _float(ua.get("rate")),
        "accuracy": _float(ua.get("accuracy")),
        "accuracy_drop": _float(ua.get("accuracy_drop")),
        "memory_saving": _float(ua.get("memory_saving")),
        "model_bytes": _float(ua.get("model_bytes")),
        "images_evaluated": _float(ua.get("images_evaluated", 0)),
        # forward passes of the BatchNorm recalibration (search cost like evaluated images)
        "images_recalibrated": _float(ua.get("images_recalibrated", 0)),
        "constraint_accuracy": c_acc,
        "constraint_memory": c_mem,
        # Accuracy-feasible: what "best saving that satisfies the accuracy constraint" ranges over.
        "accuracy_ok": complete and c_acc <= 0,
        # Both constraints hold (a missing memory constraint counts as met).
        "feasible": complete and c_acc <= 0 and (math.isnan(c_mem) or c_mem <= 0),
        "cut": trial.state == TrialState.PRUNED and bool(ua.get("cut_reason")),
        "cached": bool(ua.get("cached")),  # filled from a shared robustness sweep, nothing evaluated
        "cut_reason": ua.get("cut_reason"),
        "wall_time": _float(ua.get("wall_time", 0)),
        "datetime_start": start,
        "datetime_complete": end,
        "rates": {k[len(RATE_PREFIX):]: float(v) for k, v in trial.params.items()
                  if k.startswith(RATE_PREFIX) and isinstance(v, (int, float))},
    }


COLUMNS = ["number", "state", "complete", "phase", "layer", "rate", "accuracy", "accuracy_drop",
           "memory_saving", "model_bytes", "images_evaluated", "images_recalibrated", "constraint_accuracy",
           "constraint_memory",
           "accuracy_ok", "feasible", "cut", "cached", "cut_reason", "wall_time", "datetime_start",
           "datetime_complete", "rates"]


def trials_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """Finished trials in number order (one study runs its trials one after the other)."""
    rows = [trial_row(t) for t in sorted(trials, key=lambda t: t.number)
            if t.state not in (TrialState.RUNNING, TrialState.WAITING)
            and t.user_attrs.get("phase") != "idle"]  # a sampler's "nothing left" marker, not work
    return pd.DataFrame(rows, columns=COLUMNS)


def sweep_name(name: str) -> str:
    """The study holding a comparison's shared robustness sweep (not a policy: no seed suffix)."""
    return f"{name}/robustness-sweep"


def load_sweep(storage: str | BaseStorage, name: str) -> StudyRecord | None:
    """The comparison's shared robustness sweep, None when it has none."""
    if isinstance(storage, str):
        storage = open_storage(storage, read_only=True)
    try:
        study_id = storage.get_study_id_from_name(sweep_name(name))
    except KeyError:
        return None
    attrs = storage.get_study_user_attrs(study_id)
    frame = trials_frame(storage.get_all_trials(study_id, deepcopy=False))
    return StudyRecord(name, "robustness-sweep", 0, sweep_name(name), attrs, frame)


def sweep_key(layer: str, rate: Any) -> tuple[str, float]:
    """How a sweep lookup is named in caches and charges: the layer and its rate to 6 decimals."""
    return layer, round(float(rate), 6)


def sweep_cost(sweep: StudyRecord, used: set[tuple[str, float]] | None = None) -> dict[str, Any]:
    """What the shared sweep cost: images and seconds of its single-layer trials that reached an
    outcome (a trial failed because its worker was killed is retried, and its time is not work);
    only those of the (layer, rate) pairs in ``used`` when given (what one study replayed)."""
    t = sweep.trials
    done = t[(t.phase == "robustness") & t.state.isin(["COMPLETE", "PRUNED"])]
    if used is not None:
        done = done[[sweep_key(layer, rate) in used for layer, rate in zip(done.layer, done.rate)]]
    seconds = (done.datetime_complete - done.datetime_start).dt.total_seconds().sum()
    full = t[t.complete].images_evaluated.max()
    images = done.images_evaluated.fillna(0).sum() + done.images_recalibrated.fillna(0).sum()
    return {"images": float(images), "seconds": round(float(seconds), 3),
            "trials": len(done), "full_evaluation": int(full) if full == full else 0, "source": sweep.study_name}


def _selection(storage: BaseStorage, study_name: str) -> dict[str, Any] | None:
    """The configuration the study's own policy selects, as ``primesvt search`` and ``export``
    deliver it (``plugin.result``: the largest saving among the trials that meet both constraints;
    for a walk that finds none, its commit), with ``walk_commit`` (False when a walk's commit is not
    the selection)."""
    from ..plugin.result import result

    res = result(optuna.load_study(study_name=study_name, storage=storage))
    return None if res.selected is None else {**res.selected, "both_met": res.both_met}


def load_studies(storage: str | BaseStorage, prefix: str | None = None) -> list[StudyRecord]:
    """Every comparison study in ``storage`` (only those named ``<prefix>/<policy>/seed<k>`` when a
    prefix is given), sorted by policy (the comparison's order) then seed. Trials that can no
    longer finish are failed first (``fail_stale_trials``), unless the storage was opened read-only."""
    writable = not isinstance(storage, str) or not parse_storage(storage).read_only
    if isinstance(storage, str):
        storage = open_storage(storage, read_only=True)
    records = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        parsed = parse_study_name(summary.study_name)
        if parsed is None or (prefix is not None and parsed[0] != prefix):
            continue
        if writable:
            fail_stale_trials(optuna.load_study(study_name=summary.study_name, storage=storage))
        study_id = storage.get_study_id_from_name(summary.study_name)
        attrs = storage.get_study_user_attrs(study_id)
        frame = trials_frame(storage.get_all_trials(study_id, deepcopy=False))
        records.append(StudyRecord(*parsed, summary.study_name, attrs, frame, attrs.get(REPORT_ATTR) or {},
                                   _selection(storage, summary.study_name)))
    if not records:
        where = f"named {prefix!r}/<policy>/seed<k>" if prefix else "named <name>/<policy>/seed<k>"
        raise PrimeSVTError(f"no comparison studies {where} in this storage: run `primesvt compare` first")
    names = {r.name for r in records}
    if prefix is None and len(names) > 1:
        raise PrimeSVTError(f"this storage holds several comparisons ({', '.join(sorted(names))}): pick one with --prefix")
    sweeps = {name: load_sweep(storage, name) for name in names}
    for record in records:  # the sweep's cost is charged to every study that replayed it
        sweep = sweeps[record.name]
        if sweep is not None and record.trials.cached.any():
            replayed = record.trials[record.trials.cached.astype(bool)]
            used = {sweep_key(layer, rate) for layer, rate in zip(replayed.layer, replayed.rate)}
            record.report = {**record.report, "charged": sweep_cost(sweep, used)}
    order = {p: i for i, p in enumerate(POLICIES)}
    return sorted(records, key=lambda r: (order.get(r.policy, len(order)), r.policy, r.seed))
