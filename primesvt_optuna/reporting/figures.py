"""The comparison's figures (matplotlib, each written as PNG and SVG).

* ``pareto``: accuracy against memory saving of every evaluated trial, with each policy's feasible
  Pareto front (pooled over seeds) and the two constraints drawn in;
* ``progress``: best accuracy-feasible memory saving against evaluated images (median over seeds,
  min–max band), the cost axis including any charged robustness sweep;
* ``layer_rates``: the rate each policy's selected configuration gives each layer, against the
  layer's size;
* ``robustness``: accuracy drop of each layer pruned alone at each grid rate (the sweep the walks
  start from).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .frames import StudyRecord  # noqa: E402
from .table import cost_curve, selected_trial  # noqa: E402

FORMATS = ("png", "svg")
_STYLE = {
    "prioritized": ("tab:red", "o"), "smallest-first": ("tab:blue", "v"), "random-order": ("tab:purple", "s"),
    "uniform": ("tab:brown", "D"), "tpe": ("tab:green", "^"), "nsga2": ("tab:orange", "P"),
}


def _style(policy: str) -> tuple[str, str]:
    return _STYLE.get(policy, ("tab:gray", "x"))


def _policies(records: list[StudyRecord]) -> list[str]:
    return list(dict.fromkeys(r.policy for r in records))


def _save(fig: plt.Figure, outdir: Path, stem: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = outdir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Non-dominated points maximising both memory saving and accuracy, by increasing saving."""
    pts = points.sort_values(["memory_saving", "accuracy"], ascending=[False, False])
    keep, best_acc = [], -math.inf
    for idx, row in pts.iterrows():
        if row.accuracy > best_acc:
            keep.append(idx)
            best_acc = row.accuracy
    return pts.loc[keep].sort_values("memory_saving")


def _constraint_lines(ax: plt.Axes, records: list[StudyRecord]) -> None:
    ref = records[0]
    cons = ref.constraints
    base = ref.base_accuracy
    floor = cons.get("min_accuracy")
    if floor is None and cons.get("max_accuracy_drop") is not None and not math.isnan(base):
        floor = base - cons["max_accuracy_drop"]
    if floor is not None:
        ax.axhline(100 * floor, color="k", ls="--", lw=0.8, label="accuracy floor")
    target = cons.get("memory_target")
    if target is None and cons.get("memory_budget") and not math.isnan(ref.base_bytes):
        target = 1 - cons["memory_budget"] / ref.base_bytes
    if target is not None:
        ax.axvline(100 * target, color="k", ls=":", lw=0.8, label="memory target")


def plot_pareto(records: list[StudyRecord], outdir: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 5))
    for policy in _policies(records):
        color, marker = _style(policy)
        trials = pd.concat([r.trials for r in records if r.policy == policy])
        done = trials[trials.complete & trials.accuracy.notna() & trials.memory_saving.notna()]
        ax.scatter(100 * done.memory_saving, 100 * done.accuracy, s=10, alpha=0.25, color=color, marker=marker)
        front = pareto_front(done[done.accuracy_ok])
        if len(front):
            ax.step(100 * front.memory_saving, 100 * front.accuracy, where="post", color=color, lw=1.6,
                    marker=marker, ms=4, label=f"{policy} (feasible front)")
    _constraint_lines(ax, records)
    ax.set_xlabel("memory saving (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Every evaluated trial; lines: each policy's feasible Pareto front (all seeds)")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, outdir, "pareto")


def progress_curves(records: list[StudyRecord], policy: str, grid: np.ndarray) -> np.ndarray:
    """Best accuracy-feasible saving after ``grid`` evaluated images, one row per seed (NaN before
    the first accuracy-feasible trial, then the step curve held to the end of the axis)."""
    rows = []
    for r in records:
        if r.policy != policy:
            continue
        c = cost_curve(r)
        idx = np.searchsorted(c.images.to_numpy(), grid, side="right") - 1
        best = c.best_saving.to_numpy(float)
        rows.append(np.where(idx >= 0, best[np.clip(idx, 0, None)], np.nan))
    return np.array(rows)


def plot_progress(records: list[StudyRecord], outdir: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 5))
    top = max((cost_curve(r).images.max() for r in records if len(r.trials)), default=1.0)
    grid = np.linspace(0.0, max(top, 1.0), 600)
    for policy in _policies(records):
        color, _ = _style(policy)
        curves = progress_curves(records, policy, grid)
        if not len(curves) or np.isnan(curves).all():
            ax.plot([], [], color=color, label=f"{policy} (nothing feasible)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before any feasible trial
            med, lo, hi = np.nanmedian(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
        ax.step(grid, 100 * med, where="post", color=color, lw=1.6, label=policy)
        ax.fill_between(grid, 100 * lo, 100 * hi, step="post", color=color, alpha=0.15)
    target = records[0].constraints.get("memory_target")
    if target is not None:
        ax.axhline(100 * target, color="k", ls=":", lw=0.8, label="memory target")
    ax.set_xlim(0, max(top, 1.0))
    ax.set_xlabel("evaluated images (the walks' curves start after the robustness sweep charged to them)")
    ax.set_ylabel("best memory saving meeting the accuracy constraint (%)")
    ax.set_title("Search progress: median over seeds, band = min–max")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, outdir, "progress")


def plot_layer_rates(records: list[StudyRecord], outdir: Path) -> list[Path]:
    layers = next((r.layers for r in records if r.layers), [])
    sizes = {row["layer"]: int(row["params"]) for row in layers}
    fig, ax = plt.subplots(figsize=(7, 5))
    policies = _policies(records)
    plotted = False
    for k, policy in enumerate(policies):
        color, marker = _style(policy)
        xs, ys = [], []
        for r in records:
            if r.policy != policy:
                continue
            best = selected_trial(r)
            if best is None:
                continue
            for layer, size in sizes.items():
                xs.append(size * (1 + 0.04 * (k - len(policies) / 2)))  # a small offset per policy
                ys.append(100 * best.rates.get(layer, 0.0))
        ax.scatter(xs, ys, color=color, marker=marker, alpha=0.6, s=22, label=policy)
        plotted = plotted or bool(xs)
    if plotted:  # a log axis needs a point: with no selection (nothing confirmed) the plot stays empty
        ax.set_xscale("log")
    ax.set_xlabel("layer size (parameters, log scale)")
    ax.set_ylabel("pruning rate in the selected configuration (%)")
    ax.set_title("Per-layer rates of each policy's selection (one point per layer and seed)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, outdir, "layer_rates")


def robustness_matrix(records: list[StudyRecord]) -> pd.DataFrame:
    """Accuracy drop (points) of each layer pruned alone, layers largest first x grid rates, from
    the first of ``records`` that evaluated a robustness sweep itself (cached single-layer trials
    are skipped: a cut trial's cache entry is only a bound). NaN marks a trial cut early."""
    for r in records:
        sweep = r.trials[(r.trials.phase == "robustness") & r.trials.layer.notna()]
        if sweep.empty or not (sweep.images_evaluated > 0).any():
            continue
        base = r.base_accuracy
        sweep = sweep.assign(drop=(100 * (base - sweep.accuracy)).where(sweep.complete))
        order = [row["layer"] for row in r.layers] or list(dict.fromkeys(sweep.layer))
        matrix = sweep.pivot_table(index="layer", columns="rate", values="drop", aggfunc="first", dropna=False)
        return matrix.reindex([layer for layer in order if layer in matrix.index])
    return pd.DataFrame()


def plot_robustness(records: list[StudyRecord], outdir: Path) -> list[Path]:
    matrix = robustness_matrix(records)
    if matrix.empty:
        return []
    values = matrix.to_numpy(float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.6 * matrix.shape[1], 1.2 + 0.32 * matrix.shape[0]))
    cmap = plt.get_cmap("magma_r").with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0)
    budget = records[0].constraints.get("max_accuracy_drop")
    top = np.nanmax(values) if not np.isnan(values).all() else 1.0
    for (i, j), value in np.ndenumerate(values):
        if math.isnan(value):
            ax.text(j, i, "cut", ha="center", va="center", fontsize=6, color="0.4")
            continue
        bold = budget is not None and value <= 100 * budget + 1e-9
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6,
                color="white" if value > top / 2 else "black", fontweight="bold" if bold else "normal")
    ax.set_xticks(range(matrix.shape[1]), [f"{100 * c:.0f}%" for c in matrix.columns])
    ax.set_yticks(range(matrix.shape[0]), matrix.index, fontsize=7)
    ax.set_xlabel("rate (layer pruned alone); layers largest first")
    ax.set_title("Robustness: accuracy drop in points (bold: within the budget; cut: stopped early, over it)",
                 fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy drop (points)")
    return _save(fig, outdir, "robustness")


def write_figures(records: list[StudyRecord], outdir: str | Path, sweep: StudyRecord | None = None) -> list[Path]:
    """Every figure as PNG and SVG in ``outdir``; the robustness heatmap comes from the shared
    sweep when there is one, else from a study that swept itself. Returns the paths written."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for plot in (plot_pareto, plot_progress, plot_layer_rates):
        paths += plot(records, out)
    paths += plot_robustness(([sweep] if sweep is not None else []) + records, out)
    return paths
