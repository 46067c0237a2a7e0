"""The per-policy comparison table: what each policy found and what it cost, over seeds.

Costs are counted in evaluated images and wall time, not only trials: a trial rejected before
evaluation or cut early costs almost nothing, so trial counts alone would flatter the policies that
propose many hopeless configurations. Costs charged from outside a study (a robustness sweep shared
between the walk policies) come first on its cost axis. Accuracies carry bootstrap intervals over
the evaluation images, since one digits validation image is worth about 0.28 points.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .frames import StudyRecord

CI_LEVEL = 0.95
BOOTSTRAP = 4000


def cost_curve(record: StudyRecord) -> pd.DataFrame:
    """The study's trials in order with cumulative cost (images, trials, seconds) and the best
    accuracy-feasible memory saving found so far; charged costs are added in front."""
    t = record.trials
    charged = record.report.get("charged") or {}
    spent = t.images_evaluated.fillna(0) + t.images_recalibrated.fillna(0)  # BN recalibration is search cost
    images = spent.cumsum() + float(charged.get("images", 0))
    trials = pd.Series(np.arange(1, len(t) + 1), index=t.index)  # cached sweep trials are in the study
    if len(t):
        first = t.datetime_start.min()
        seconds = (t.datetime_complete.fillna(t.datetime_start) - first).dt.total_seconds()
        seconds = seconds.cummax() + float(charged.get("seconds", 0))
    else:
        seconds = pd.Series(dtype=float)
    best = t.memory_saving.where(t.accuracy_ok).cummax().ffill()
    return pd.DataFrame({
        "number": t.number, "images": images, "trials": trials, "seconds": seconds,
        "best_saving": best, "feasible": t.feasible,
    })


def confirmed(record: StudyRecord) -> bool:
    """Whether the study delivers only what it confirmed on held-back images (the default)."""
    return "confirmation" in (record.selection or {})


def selected_trial(record: StudyRecord) -> pd.Series | None:
    """The configuration reported for a study: under confirmed acceptance, the delivered one (its
    search trial; None when nothing was confirmed); else the largest memory saving among the
    trials that satisfy the accuracy constraint (ties: higher accuracy, then the earlier trial)."""
    if confirmed(record):
        rows = record.trials[record.trials.number == record.selection["trial"]]
        return rows.iloc[0] if record.selection.get("both_met") and len(rows) else None
    ok = record.trials[record.trials.accuracy_ok & record.trials.memory_saving.notna() & (record.trials.phase != "confirm")]
    if ok.empty:
        return None
    return ok.sort_values(["memory_saving", "accuracy", "number"], ascending=[False, False, True]).iloc[0]


def study_summary(record: StudyRecord) -> dict[str, Any]:
    """One row per study (= one seed of one policy)."""
    t = record.trials
    curve = cost_curve(record)
    best = selected_trial(record)
    hit = curve[curve.feasible]
    first = hit.iloc[0] if len(hit) else None
    full = record.val_images
    cut = t[t.cut]
    test = record.report.get("test") or {}
    if best is None or test.get("trial") != int(best.number):
        test = {}  # measured on another configuration (or not at all): not this selection's
    return {
        "policy": record.policy,
        "seed": record.seed,
        "study": record.study_name,
        "best_saving": float(best.memory_saving) if best is not None else math.nan,
        "selected_trial": int(best.number) if best is not None else None,
        "policy_selection_saving": _float((record.selection or {}).get("memory_saving")),
        "policy_selection_met": bool((record.selection or {}).get("both_met", False)),
        "val_accuracy": float(best.accuracy) if best is not None else math.nan,
        "val_images": full,
        "test_accuracy": _float(test.get("accuracy")),
        "test_images": int(test.get("images", 0)),
        "test_within_budget": 1.0 if confirmed(record) and best is None else _within_budget(record, test),
        "delivered": best is not None,
        "delivered_saving": float(best.memory_saving) if best is not None and confirmed(record) else (
            0.0 if confirmed(record) else math.nan),
        "images_to_confirmed": _images_to_confirmed(record),
        "target_met": first is not None,
        "images_to_target": float(first.images) if first is not None else math.inf,
        "trials_to_target": float(first.trials) if first is not None else math.inf,
        "seconds_to_target": float(first.seconds) if first is not None else math.inf,
        "trials": int(curve.trials.iloc[-1]) if len(curve) else 0,
        "trials_cut": int(len(cut)),
        "images_saved": float(sum(max(full - n, 0) for n in cut.images_evaluated.fillna(0))),
        "images_total": float(curve.images.iloc[-1]) if len(curve) else 0.0,
        "seconds_total": float(curve.seconds.iloc[-1]) if len(curve) else 0.0,
        "charged_images": float((record.report.get("charged") or {}).get("images", 0)),
        "rates": best.rates if best is not None else {},
    }


def _images_to_confirmed(record: StudyRecord) -> float:
    """Images the study had spent when the trial confirming its delivery finished (inf: nothing
    delivered; nan: not a confirmed study)."""
    if not confirmed(record):
        return math.nan
    info = record.selection["confirmation"]
    if not record.selection.get("both_met") or info.get("trial") is None:
        return math.inf
    t = record.trials.sort_values("number")
    spent = t.images_evaluated.fillna(0) + t.images_recalibrated.fillna(0)
    return float(spent[t.number <= info["trial"]].sum())


def _within_budget(record: StudyRecord, test: dict[str, Any]) -> float:
    """1.0 when the selection's test accuracy is within the accuracy budget of the unpruned
    model's test accuracy (the claim made on validation, checked on held-out data), else 0.0."""
    drop = record.constraints.get("max_accuracy_drop")
    if drop is None or test.get("base_accuracy") is None or test.get("accuracy") is None:
        return math.nan
    return float(float(test["accuracy"]) >= float(test["base_accuracy"]) - float(drop) - 1e-12)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def runs_table(records: list[StudyRecord]) -> pd.DataFrame:
    """Every study of the comparison, one row each."""
    return pd.DataFrame([study_summary(r) for r in records])


def bootstrap_median_ci(accuracies: np.ndarray, images: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the median accuracy over seeds when each seed's evaluation images
    are resampled. Resampling n right/wrong images with replacement is a Binomial(n, acc) draw, so
    the counts stored in the study suffice and no per-image record is needed."""
    keep = ~np.isnan(accuracies) & (images > 0)
    acc, n = accuracies[keep], images[keep].astype(int)
    if not len(acc):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n[None, :], acc[None, :], size=(BOOTSTRAP, len(acc))) / n[None, :]
    medians = np.median(draws, axis=1)
    alpha = (1 - CI_LEVEL) / 2
    return float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


def _stats(values: pd.Series) -> tuple[float, float, float]:
    """Median, min, max; an unmet target counts as +inf, so the median is "not met" when most seeds
    missed it."""
    v = values.astype(float).to_numpy()
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan, math.nan
    return float(np.median(v)), float(v.min()), float(v.max())


TABLE_COLUMNS = [
    "policy", "seeds", "target_met",
    "best_saving_median", "best_saving_min", "best_saving_max",
    "policy_selection_saving_median", "policy_selection_saving_min", "policy_selection_saving_max",
    "policy_selection_met", "test_within_budget", "test_checked",
    "val_accuracy_median", "val_accuracy_min", "val_accuracy_max", "val_accuracy_ci_low", "val_accuracy_ci_high",
    "test_accuracy_median", "test_accuracy_min", "test_accuracy_max", "test_accuracy_ci_low", "test_accuracy_ci_high",
    "images_to_target_median", "images_to_target_min", "images_to_target_max",
    "trials_to_target_median", "trials_to_target_min", "trials_to_target_max",
    "seconds_to_target_median", "seconds_to_target_min", "seconds_to_target_max",
    "trials_median", "trials_cut_median", "images_saved_median", "images_total_median",
    "seconds_total_median", "seconds_total_min", "seconds_total_max",
    "delivered", "delivered_saving_median", "delivered_saving_min", "delivered_saving_max",
    "images_to_confirmed_median", "images_to_confirmed_min", "images_to_confirmed_max",
]


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per policy (in the comparison's order): median and range over seeds of every metric, and
    bootstrap intervals for the median validation and test accuracy."""
    rows = []
    for policy, group in runs.groupby("policy", sort=False):
        row: dict[str, Any] = {"policy": policy, "seeds": len(group), "target_met": int(group.target_met.sum()),
                               "policy_selection_met": int(group.policy_selection_met.sum()),
                               "test_within_budget": int(group.test_within_budget.sum()),
                               "test_checked": int(group.test_within_budget.notna().sum()),
                               "delivered": int(group.delivered.sum())}
        for metric in ("best_saving", "policy_selection_saving", "val_accuracy", "test_accuracy", "images_to_target", "trials_to_target",
                       "seconds_to_target", "seconds_total", "delivered_saving", "images_to_confirmed"):
            row[f"{metric}_median"], row[f"{metric}_min"], row[f"{metric}_max"] = _stats(group[metric])
        for split in ("val", "test"):
            row[f"{split}_accuracy_ci_low"], row[f"{split}_accuracy_ci_high"] = bootstrap_median_ci(
                group[f"{split}_accuracy"].to_numpy(float), group[f"{split}_images"].to_numpy(float))
        for metric in ("trials", "trials_cut", "images_saved", "images_total"):
            row[f"{metric}_median"] = float(group[metric].median())
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


# ---------------------------------------------------------------------------- presentation
def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}%"


def _count(x: float) -> str:
    if math.isnan(x):
        return "–"
    return "not met" if math.isinf(x) else f"{x:,.0f}"


def _secs(x: float) -> str:
    if math.isnan(x):
        return "–"
    return "not met" if math.isinf(x) else f"{x:,.1f} s"


def _span(fmt: Any, med: float, lo: float, hi: float) -> str:
    if math.isnan(med):
        return "–"
    if lo == hi:
        return fmt(med)
    return f"{fmt(med)} ({fmt(lo)}–{fmt(hi)})"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a reader wants it: median (min–max) over seeds, [95% bootstrap interval]."""
    rows = []
    for _, r in table.iterrows():
        def acc(split: str) -> str:
            text = _span(_pct, r[f"{split}_accuracy_median"], r[f"{split}_accuracy_min"], r[f"{split}_accuracy_max"])
            lo, hi = r[f"{split}_accuracy_ci_low"], r[f"{split}_accuracy_ci_high"]
            return text if math.isnan(lo) else f"{text} [{100 * lo:.1f}, {100 * hi:.1f}]"

        rows.append({
            "policy": r.policy,
            "target met": f"{r.target_met}/{r.seeds}",
            "best feasible saving": _span(_pct, r.best_saving_median, r.best_saving_min, r.best_saving_max)
            if not math.isnan(r.best_saving_median) else "none feasible",
            "policy's selection (met both)": _span(_pct, r.policy_selection_saving_median,
                                                    r.policy_selection_saving_min, r.policy_selection_saving_max)
            + f" ({r.policy_selection_met}/{r.seeds})",
            "val accuracy": acc("val"),
            "test accuracy": acc("test"),
            "within budget on test": f"{r.test_within_budget}/{r.test_checked}" if r.test_checked else "–",
            "images to target": _span(_count, r.images_to_target_median, r.images_to_target_min, r.images_to_target_max),
            "trials to target": _span(_count, r.trials_to_target_median, r.trials_to_target_min, r.trials_to_target_max),
            "time to target": _span(_secs, r.seconds_to_target_median, r.seconds_to_target_min, r.seconds_to_target_max),
            "trials": _count(r.trials_median),
            "cut early": _count(r.trials_cut_median),
            "images saved by cut": _count(r.images_saved_median),
            "images total": _count(r.images_total_median),
            "total time": _span(_secs, r.seconds_total_median, r.seconds_total_min, r.seconds_total_max),
        })
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub table (pandas' own needs the optional ``tabulate`` package)."""
    cells = [[str(c) for c in frame.columns]] + [[str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, outdir: str | Path) -> dict[str, Path]:
    """``comparison.csv`` (numbers), ``comparison.md`` (the reader's table) and ``runs.csv`` (one
    row per study); returns the paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(runs)
    paths = {"csv": out / "comparison.csv", "markdown": out / "comparison.md", "runs": out / "runs.csv"}
    table.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(to_markdown(display_table(table)))
    runs.drop(columns=["rates"]).to_csv(paths["runs"], index=False)
    return paths
