"""Step 2 of PrimeSVT: how robust is each layer to pruning on its own?

Each layer is pruned alone at each rate of a grid (default 0.1 ... 0.9) and evaluated. A layer is
a *target* when its accuracy drop stays within the tolerance at some grid rate; its *bound* is the
highest such rate (``rule="highest"``, the default) or the highest rate below which every grid rate
passes (``rule="contiguous"``, stricter when accuracy is not monotone in the rate).

Sweeps are cached on disk, keyed by everything that can change their result (checkpoint content
hash, data split, evaluation subset, batch size, grid, engine version), so a second run costs
nothing and a changed input never reuses a stale table.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import PrimeSVTError
from .engine import ENGINE_VERSION, Engine

DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COLUMNS = ["layer", "params", "rate", "accuracy", "accuracy_drop", "memory_saving"]
RULES = ("highest", "contiguous")


def check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated grid; every rate must lie in [0, 1)."""
    bad = [r for r in grid if not 0.0 <= float(r) < 1.0]
    if bad or not grid:
        raise PrimeSVTError(f"rate grid must be non-empty with every rate in [0, 1); got {list(grid)}")
    return tuple(sorted({round(float(r), 6) for r in grid}))


def robustness_sweep(
    engine: Engine,
    evaluate: Callable[[nn.Module], float],
    grid: Sequence[float] = DEFAULT_GRID,
    base_accuracy: float | None = None,
    layers: Sequence[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Accuracy of every layer pruned alone at every grid rate (``evaluate`` maps model -> accuracy)."""
    grid = check_grid(grid)
    base = evaluate(engine.model) if base_accuracy is None else base_accuracy
    layers = list(layers or engine.layers)
    rows = []
    for layer in tqdm([(l, r) for l in layers for r in grid], desc="robustness", disable=not progress):
        name, rate = layer
        acc = evaluate(engine.prune({name: rate}))
        rows.append({"layer": name, "params": engine.layer_params[name], "rate": rate, "accuracy": acc,
                     "accuracy_drop": base - acc, "memory_saving": engine.memory_saving({name: rate})})
    return pd.DataFrame(rows, columns=COLUMNS)


def robustness_bounds(table: pd.DataFrame, tolerance: float, rule: str = "highest") -> dict[str, float]:
    """Target layers and their bound: the highest rate whose drop is within ``tolerance``."""
    if rule not in RULES:
        raise PrimeSVTError(f"unknown robustness rule {rule!r}: use one of {', '.join(RULES)}")
    bounds = {}
    for layer, rows in table.sort_values("rate").groupby("layer", sort=False):
        ok = (rows["accuracy_drop"] <= tolerance + 1e-12).tolist()
        rates = rows["rate"].tolist()
        if rule == "contiguous":
            passing = [r for i, r in enumerate(rates) if all(ok[: i + 1])]
        else:
            passing = [r for r, good in zip(rates, ok) if good]
        if passing:
            bounds[layer] = max(passing)
    return bounds


def cache_key(**parts: Any) -> str:
    """A content key over everything that can change a sweep's result."""
    blob = json.dumps({**parts, "engine_version": ENGINE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    """``$PRIMESVT_CACHE`` or ``~/.cache/primesvt``."""
    return Path(os.environ.get("PRIMESVT_CACHE", Path.home() / ".cache" / "primesvt"))


def load_cached(key: str, directory: Path | None = None) -> pd.DataFrame | None:
    path = (directory or cache_dir()) / f"robustness-{key}.csv"
    return pd.read_csv(path) if path.exists() else None


def save_cached(key: str, table: pd.DataFrame, directory: Path | None = None) -> Path:
    """Written to a temporary file, then renamed: a reader never sees half a table."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"robustness-{key}.csv"
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        table.to_csv(f, index=False)
    os.replace(tmp, path)
    return path


def cached_sweep(engine: Engine, evaluate: Callable[[nn.Module], float], key: str,
                 grid: Sequence[float] = DEFAULT_GRID, base_accuracy: float | None = None,
                 directory: Path | None = None, progress: bool = True) -> tuple[pd.DataFrame, bool]:
    """The sweep from the cache when ``key`` is there, else computed and stored; (table, hit)."""
    table = load_cached(key, directory)
    if table is not None:
        return table, True
    table = robustness_sweep(engine, evaluate, grid, base_accuracy, progress=progress)
    save_cached(key, table, directory)
    return table, False


def plot_robustness(table: pd.DataFrame, path: str | os.PathLike, title: str = "Layer robustness") -> None:
    """Heatmap: layers (largest first, as in the table) by rate, colour = accuracy drop in points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(dict.fromkeys(table["layer"]))
    grid = table.pivot(index="layer", columns="rate", values="accuracy_drop").loc[order] * 100
    fig, ax = plt.subplots(figsize=(4.5 + 0.6 * grid.shape[1], 1.5 + 0.28 * grid.shape[0]))
    im = ax.imshow(grid.values, aspect="auto", cmap="magma_r", vmin=min(0.0, grid.values.min()))
    ax.set_xticks(range(grid.shape[1]), [f"{r:.0%}" for r in grid.columns])
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    ax.set_xlabel("pruning rate (layer alone)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="accuracy drop (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
