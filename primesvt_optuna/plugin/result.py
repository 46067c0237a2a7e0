"""The outcome of a study, from storage alone: the configuration the policy selected, the feasible
Pareto front, the closest trade-offs when the constraints cannot both be met, and a markdown
note saved on the study for optuna-dashboard.

Which configuration is *selected*, for every policy: the trial with the largest memory saving
(fewest model bytes) among all the study's trials that meet both constraints, ties broken by
higher accuracy, then lower trial number. For the walk policies (prioritized, smallest-first,
random-order) this is usually the walk's committed configuration (replayed from the trials with
the sampler settings recorded on the study), but not always: a robustness trial, or a rate the
walk tried and passed over, can save more and still meet both constraints. The result then says
so (``walk_commit`` holds the commit, ``selected["walk_commit"]`` is False, and the message names
both). When no trial meets both constraints, a walk's commit is kept; for the other policies the
accuracy-feasible trial with the fewest bytes is selected; both are flagged as not meeting both.

Under confirmed acceptance (the default) the study *delivers* what its confirmation ladder
confirmed (:mod:`primesvt_optuna.acceptance.confirm`): the last rung that passed, with its bound
(``selected["confirmation"]``). When no rung passed, or the one that did misses the memory target,
the constraints cannot both be met at the stated confidence: nothing meets both, ``closest`` lists
the confirmed trade-offs (every rung with its bound), and the search's own best is kept as
``selected`` for reference, flagged ``confirmed: False``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from ..acceptance.confirm import Ladder, is_confirmation, safe_steps, study_ladder, study_rungs
from ..precision.search import quantized_layers
from .constraints import RATE_PREFIX, STUDY_PREFIX, Constraints, layer_of
from .samplers import WalkSampler, from_settings
from .samplers._claims import _claimed_rates

COLUMNS = [
    "trial", "state", "phase", "layer", "rate", "accuracy", "accuracy_drop", "model_bytes", "memory_saving",
    "constraint_accuracy", "constraint_memory", "feasible", "images_evaluated", "images_recalibrated", "cut_reason",
    "rates",
]


def trials_frame(study: Study) -> pd.DataFrame:
    """One row per trial with the attributes the plugin records (the columns in ``COLUMNS``)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({
            "trial": t.number, "state": t.state.name, "phase": a.get("phase"), "layer": a.get("layer"),
            "rate": a.get("rate"), "accuracy": a.get("accuracy"), "accuracy_drop": a.get("accuracy_drop"),
            "model_bytes": a.get("model_bytes"), "memory_saving": a.get("memory_saving"),
            "constraint_accuracy": t.constraints.get("accuracy"), "constraint_memory": t.constraints.get("memory"),
            "feasible": _feasible(t), "images_evaluated": a.get("images_evaluated", 0),
            "images_recalibrated": a.get("images_recalibrated", 0),
            "cut_reason": a.get("cut_reason") or a.get("fail_reason"), "rates": _rates(t),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _rates(trial: FrozenTrial) -> dict[str, float]:
    return {layer_of(p): float(v) for p, v in trial.params.items() if p.startswith(RATE_PREFIX) and float(v) > 0}


def _feasible(trial: FrozenTrial) -> bool:
    return (
        trial.state == TrialState.COMPLETE
        and "accuracy" in trial.constraints
        and all(v <= 0 for v in trial.constraints.values())
    )


def _accuracy_ok(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and trial.constraints.get("accuracy", math.inf) <= 0


def _front(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows not dominated in (accuracy up, model bytes down), fewest bytes first."""
    frame = frame.sort_values(["model_bytes", "accuracy", "trial"], ascending=[True, False, True])
    keep, best = [], -math.inf
    for index, row in frame.iterrows():
        if row["accuracy"] > best:
            keep.append(index)
            best = row["accuracy"]
    return frame.loc[keep].reset_index(drop=True)


@dataclass
class Result:
    """What a study found (see module docs). ``selected`` is a dict of plain values."""

    study_name: str
    policy: str | None
    constraints: dict[str, Any] | None
    selected: dict[str, Any] | None
    both_met: bool
    finished: bool
    message: str
    front: pd.DataFrame = field(repr=False)
    closest: pd.DataFrame = field(repr=False)
    stats: dict[str, Any] = field(default_factory=dict)
    walk_commit: dict[str, Any] | None = None
    """For a walk policy: the walk's committed configuration (trial, rates, accuracy, saving, both
    constraints met), whether or not it is the selection; None for the other policies."""
    search_selected: dict[str, Any] | None = None
    """Under confirmed acceptance: what the search selected by the point rule on its own images,
    before confirmation (what ``primesvt export --accept point`` writes); None otherwise."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["front"] = _records(self.front)
        data["closest"] = _records(self.closest)
        return data

    def markdown(self) -> str:
        lines = [f"# PrimeSVT result: {self.study_name}", "", f"**{self.message}**", ""]
        lines += [f"- policy: `{self.policy}`", f"- constraints: `{self.constraints}`"]
        lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in self.stats.items()]
        if self.selected:
            s = self.selected
            lines += ["", f"## Selected configuration (trial {s['trial']})", ""]
            lines += [
                "| accuracy | drop (points) | model bytes | memory saving | both constraints |",
                "|---|---|---|---|---|",
                f"| {_pct(s['accuracy'])} | {_pts(s['accuracy_drop'])} | {s['model_bytes']:,} | "
                f"{_pct(s['memory_saving'])} | {'yes' if self.both_met else 'no'} |",
                "", "| layer | rate |", "|---|---|",
            ]
            lines += [f"| `{layer}` | {rate:g} |" for layer, rate in s["rates"].items()] or ["| (none) | 0 |"]
            if self.walk_commit is not None and not s.get("walk_commit", True):
                w = self.walk_commit
                lines += ["", f"Not the walk's commit: the walk committed trial {w['trial']} "
                              f"({_pct(w['memory_saving'])} saved at {_pct(w['accuracy'])})."]
        if "rung" in self.closest.columns and len(self.closest):
            lines += ["", "## Confirmed trade-offs", "", "| rung | trial | memory saving | accuracy (held out) | "
                      "bound | confirmed |", "|---|---|---|---|---|---|"]
            for _, r in self.closest.iterrows():
                confirmed = {True: "yes", False: "no"}.get(r["confirmed"], "not evaluated")
                bound = "n/a" if r["bound"] is None or r["bound"] != r["bound"] else f"{r['bound']:.4f}"
                lines.append(f"| {r['rung']} | {r['trial']} | {_pct(r['memory_saving'])} | "
                             f"{_pct(None if r['accuracy'] != r['accuracy'] else r['accuracy'])} | {bound} | {confirmed} |")
        for title, frame in (("Feasible Pareto front", self.front), ("Closest trade-offs", self.closest)):
            if len(frame) and "rung" not in frame.columns:
                lines += ["", f"## {title}", "", "| trial | accuracy | model bytes | memory saving | violation |",
                          "|---|---|---|---|---|"]
                for _, r in frame.iterrows():
                    lines.append(
                        f"| {r['trial']} | {_pct(r['accuracy'])} | {int(r['model_bytes']):,} | "
                        f"{_pct(r['memory_saving'])} | {r.get('violation', 0.0):.4f} |"
                    )
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def result(study: Study) -> Result:
    """The selected configuration, the feasible Pareto front and the closest trade-offs."""
    attrs = study.user_attrs
    settings = attrs.get(f"{STUDY_PREFIX}sampler")
    policy = attrs.get(f"{STUDY_PREFIX}policy")
    every = study.get_trials(deepcopy=False)
    trials = {t.number: t for t in every if not is_confirmation(t)}
    frame = trials_frame(study)
    search_frame = frame[frame["phase"] != "confirm"]
    complete = search_frame[search_frame["state"] == "COMPLETE"].dropna(subset=["accuracy", "model_bytes"])

    finished = True
    walk: FrozenTrial | None = None
    is_walk = False
    sampler = from_settings(settings) if settings else None
    if isinstance(sampler, WalkSampler):
        is_walk = True
        state = sampler.walk_state(study)
        finished = state.done or sampler.is_exhausted(study)  # a walk its image budget ended is finished too
        walk = trials.get(state.selected_trial) if state.selected_trial is not None else None
    elif sampler is not None:
        finished = sampler.is_exhausted(study)
    chosen = select(trials.values(), walk=walk, is_walk=is_walk)
    searched = chosen

    feasible = complete[complete["feasible"]]
    front = _front(feasible) if len(feasible) else feasible
    both_met = chosen is not None and _feasible(chosen)
    closest = complete.iloc[0:0]
    constraints = Constraints.from_dict(attrs.get(f"{STUDY_PREFIX}constraints") or {"max_accuracy_drop": 0.03})
    base = attrs.get(f"{STUDY_PREFIX}base_accuracy")
    ladder: Ladder | None = None
    if constraints.confirmed and base is not None:
        ladder = study_ladder(every, _claimed_rates, study_rungs(attrs), safe_steps(attrs))
        finished = finished and ladder.done
        delivered = ladder.delivered
        if delivered is not None:
            chosen = delivered.trial
        both_met = delivered is not None and _feasible(delivered.trial)
        if not both_met:
            closest = _confirmed_frame(ladder)
    elif not both_met and len(complete):
        closest = _front(complete).assign(
            violation=lambda f: f["constraint_accuracy"].clip(lower=0).fillna(0)
            + f["constraint_memory"].clip(lower=0).fillna(0)
        ).sort_values(["violation", "trial"]).head(10).reset_index(drop=True)

    selected = None if chosen is None else _selection(chosen, attrs)
    if selected is not None:
        if ladder is not None:
            selected["confirmation"] = _confirmation(ladder, constraints)
        if is_walk:
            selected["walk_commit"] = walk is not None and chosen.number == walk.number
    walk_commit = None
    if walk is not None:
        w = walk.user_attrs
        walk_commit = {"trial": walk.number, "rates": _rates(walk), "accuracy": w.get("accuracy"),
                       "model_bytes": w.get("model_bytes"), "memory_saving": w.get("memory_saving"),
                       "both_met": _feasible(walk)}
    stats = {
        "trials": len(frame),
        "complete": int((frame["state"] == "COMPLETE").sum()),
        "pruned": int((frame["state"] == "PRUNED").sum()),
        "failed": int((frame["state"] == "FAIL").sum()),
        "images_evaluated": int(pd.to_numeric(frame["images_evaluated"], errors="coerce").fillna(0).sum()),
        "images_recalibrated": int(pd.to_numeric(frame["images_recalibrated"], errors="coerce").fillna(0).sum()),
        "pruner": attrs.get(f"{STUDY_PREFIX}pruner"),
    }
    recalibration = attrs.get(f"{STUDY_PREFIX}recalibrate_bn")
    if recalibration:
        stats["recalibrate_bn"] = recalibration
    message = _message(selected, both_met, finished, attrs)
    if ladder is not None:
        message = _confirmed_message(selected, both_met, finished, constraints, ladder)
    if ladder is None and selected is not None and walk_commit is not None and not selected["walk_commit"]:
        message += (
            f" (trial {selected['trial']}, the best configuration the study evaluated; the walk committed "
            f"trial {walk_commit['trial']}, which saves {_pct(walk_commit['memory_saving'])} at "
            f"{_pct(walk_commit['accuracy'])})"
        )
    return Result(
        study_name=study.study_name, policy=policy, constraints=attrs.get(f"{STUDY_PREFIX}constraints"),
        selected=selected, both_met=both_met, finished=finished,
        message=message, front=front, closest=closest, stats=stats, walk_commit=walk_commit,
        search_selected=None if ladder is None or searched is None else _selection(searched, attrs),
    )


def _selection(chosen: FrozenTrial, attrs: dict[str, Any]) -> dict[str, Any]:
    """A selected trial as plain values (rates, accuracy, bytes, constraints met)."""
    a = chosen.user_attrs
    selected = {
        "trial": chosen.number, "rates": _rates(chosen), "accuracy": a.get("accuracy"),
        "accuracy_drop": a.get("accuracy_drop"), "model_bytes": a.get("model_bytes"),
        "memory_saving": a.get("memory_saving"), "accuracy_ok": _accuracy_ok(chosen),
        "memory_ok": chosen.constraints.get("memory", 0.0) <= 0, "base_accuracy": attrs.get(f"{STUDY_PREFIX}base_accuracy"),
        "base_bytes": attrs.get(f"{STUDY_PREFIX}base_bytes"),
    }
    if "accuracy_lower_bound" in a:
        selected["accuracy_lower_bound"] = a["accuracy_lower_bound"]
    precisions = quantized_layers(chosen.params)
    if precisions:  # only a search over precisions has them
        selected["precisions"] = precisions
    return selected


def _confirmation(ladder: Ladder, constraints: Constraints) -> dict[str, Any]:
    """What the ladder says of the delivery: the confirming trial, its bound and what it was
    measured on (``confirmed`` False when nothing passed)."""
    rung = ladder.delivered
    info: dict[str, Any] = {"confirmed": rung is not None, "confidence": constraints.confidence,
                            "rungs": len(ladder.rungs)}
    if rung is not None:
        trial = ladder.confirmations[rung.number]
        a = trial.user_attrs
        info.update(trial=trial.number, rung=rung.number, bound=a.get("confirm_bound"),
                    accuracy=a.get("confirm_accuracy"), base_accuracy=a.get("confirm_base_accuracy"),
                    discordant=a.get("confirm_discordant"), images=a.get("confirm_images"),
                    bound_kind="accuracy lower bound" if constraints.min_accuracy is not None else "drop upper bound")
    return info


def _confirmed_frame(ladder: Ladder) -> pd.DataFrame:
    """Every rung confirmed so far: its search trial, saving, confirmation accuracy and bound."""
    rows = []
    for rung in ladder.rungs:
        trial = ladder.confirmations.get(rung.number)
        a = trial.user_attrs if trial is not None else {}
        rows.append({"trial": rung.trial.number, "rung": rung.number, "accuracy": a.get("confirm_accuracy"),
                     "model_bytes": rung.trial.user_attrs.get("model_bytes"), "memory_saving": rung.saving,
                     "bound": a.get("confirm_bound"), "confirmed": ladder.verdict(rung),
                     "violation": max(0.0, float(trial.constraints.get("accuracy", 0.0))) if trial else None})
    return pd.DataFrame(rows, columns=["trial", "rung", "accuracy", "model_bytes", "memory_saving", "bound",
                                       "confirmed", "violation"])


def _confirmed_message(selected: dict[str, Any] | None, both_met: bool, finished: bool, constraints: Constraints,
                       ladder: Ladder) -> str:
    prefix = "" if finished else "Search not finished; so far: "
    level = f"{100 * constraints.confidence:g}%"
    if selected is None:
        return prefix + "no configuration evaluated yet (the reference trial has not completed)"
    info = selected.get("confirmation") or {}
    if both_met:
        bound = (f"accuracy at least {_pct(info['bound'])}" if constraints.min_accuracy is not None
                 else f"drop at most {_pts(info['bound'])} points")
        return prefix + (f"Both constraints met at {level}: saves {_pct(selected['memory_saving'])} of the model "
                         f"bytes, {bound} on {info['images']} held-out images (measured on the search images: "
                         f"{_pct(selected['accuracy'])}, drop {_pts(selected['accuracy_drop'])} points)")
    tried = ", ".join(f"rung {r.number} ({_pct(r.saving)}): {'passed' if ladder.verdict(r) else 'failed'}"
                      for r in ladder.rungs if ladder.verdict(r) is not None) or "no rung confirmed"
    return prefix + (f"The constraints cannot both be met at {level}: {tried}. See the closest confirmed "
                     "trade-offs.")


def select(trials: Iterable[FrozenTrial], walk: FrozenTrial | None = None, is_walk: bool = False) -> FrozenTrial | None:
    """The selection rule (see module docs): the feasible trial with the fewest model bytes, ties
    to higher accuracy then lower trial number; a walk's commit when it is that same configuration
    (a rate vector evaluated twice keeps the commit) or when no trial is feasible."""
    ranked = sorted(
        (t for t in trials if _accuracy_ok(t) and "model_bytes" in t.user_attrs and "accuracy" in t.user_attrs),
        key=lambda t: (not _feasible(t), t.user_attrs["model_bytes"], -t.user_attrs["accuracy"], t.number),
    )
    best = ranked[0] if ranked else None
    if is_walk:
        if best is None or not _feasible(best):
            return walk
        if walk is not None and _feasible(walk) and _rates(walk) == _rates(best) and (
                walk.user_attrs.get("accuracy") == best.user_attrs.get("accuracy")):
            return walk
    return best


def _message(selected: dict[str, Any] | None, both_met: bool, finished: bool, attrs: dict[str, Any]) -> str:
    prefix = "" if finished else "Search not finished; so far: "
    if selected is None:
        return prefix + "no configuration evaluated yet (the reference trial has not completed)"
    saving, acc = selected["memory_saving"], selected["accuracy"]
    what = f"saves {_pct(saving)} of the model bytes at {_pct(acc)} accuracy (drop {_pts(selected['accuracy_drop'])} points)"
    if both_met:
        return prefix + f"Both constraints met: {what}"
    constraints = attrs.get(f"{STUDY_PREFIX}constraints") or {}
    return prefix + (
        f"The constraints cannot both be met: the best accuracy-feasible configuration {what}; "
        f"asked for {constraints}. See the closest trade-offs."
    )


def save_result_note(study: Study, res: Result | None = None) -> Result:
    """Save the result as the study's markdown note (shown by optuna-dashboard)."""
    from optuna_dashboard import save_note

    res = res if res is not None else result(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        save_note(study, res.markdown())
    return res
