"""Step 2 of PrimeSVT: how robust is each layer to pruning on its own?

Each layer is pruned alone at each rate of a grid (default 0.1 ... 0.9) and evaluated. A layer is
a *target* when its accuracy drop stays within the tolerance at some grid rate; its *bound* is the
highest such rate (``rule="highest"``, the default) or the highest rate below which every grid rate
passes (``rule="contiguous"``, stricter when accuracy is not monotone in the rate).

Sweeps are cached on disk, keyed by everything that can change their result (checkpoint content
hash, data split, evaluation subset, batch size, grid, engine version), so a second run costs
nothing and a changed input never reuses a stale table.

The rates of one layer share their work (:class:`SharedPrefixEvaluator`): pruning a layer changes
only the modules its channel groups touch, so the network before the first of them computes the
same tensors at every rate. For each batch that prefix runs once, on the unpruned model, and only
the rest of the network runs once per rate. It is an exact reuse, not an approximation: the same
operations on the same tensors, so the accuracies are bit-identical to separate evaluations
(tested, logits included). Nothing model-specific is needed: the unpruned model's forward pass is
traced once (the order it enters and leaves its modules), the prefix of a layer is every module
left before the first module its pruning changes is entered, and each pruned model runs its own
forward pass with those modules answering from the unpruned outputs (see
:class:`SharedPrefixEvaluator`). The prefix outputs are also kept across layers while they fit in
memory (``cache_bytes``, 1 GiB by default), so one pass of the unpruned model serves the sweep.
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
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import PrimeSVTError
from ..training import class_scores
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
    shared = getattr(evaluate, "evaluate_rates", None)  # a SharedPrefixEvaluator: the prefix once per batch
    if shared is not None:
        evaluate.clear()
    rows = []
    with tqdm(total=len(layers) * len(grid), desc="robustness", disable=not progress) as bar:
        for name in layers:
            if shared is not None:
                accuracies = shared(engine, name, [engine.prune({name: rate}) for rate in grid])
            else:
                accuracies = []
                for rate in grid:
                    accuracies.append(evaluate(engine.prune({name: rate})))
                    bar.update()
            for rate, acc in zip(grid, accuracies):
                rows.append({"layer": name, "params": engine.layer_params[name], "rate": rate, "accuracy": acc,
                             "accuracy_drop": base - acc, "memory_saving": engine.memory_saving({name: rate})})
            if shared is not None:
                bar.update(len(grid))
    if shared is not None:
        evaluate.clear()
    return pd.DataFrame(rows, columns=COLUMNS)


# ----- prefix sharing ------------------------------------------------------------------------------


def touched_modules(engine: Engine, layer: str) -> set[str]:
    """Every module that pruning ``layer`` changes: sliced tensors, scatter and gather hooks."""
    out = set()
    for group in engine.specs[layer].groups:
        out.update(c.module for c in group.cuts)
        out.update(site.module for site in (*group.scatter, *group.gather))
    return out


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the shared prefix is computed."""


def _inside(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


class ForwardTrace:
    """The order in which a model's forward pass enters and leaves its modules (names), recorded
    once on the unpruned model; every pruned copy runs the same code in the same order."""

    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events  # ("enter" | "exit", module name), in execution order

    @classmethod
    def record(cls, model: nn.Module, x: torch.Tensor) -> ForwardTrace:
        from spikingjelly.activation_based import functional

        events: list[tuple[str, str]] = []
        handles = []
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(lambda m, a, n=name: events.append(("enter", n))))
                handles.append(module.register_forward_hook(lambda m, a, o, n=name: events.append(("exit", n))))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
            functional.reset_net(model)
        return cls(events)

    def prefix(self, touched: set[str]) -> tuple[list[str], int]:
        """The modules to reuse when ``touched`` are pruned: the outermost modules the forward pass
        leaves before it first enters any touched module (each call of such a module gets the
        unpruned model's output), and how many calls that is. Empty when a touched module is the
        first one entered, or is never entered (then nothing is known to be unaffected)."""
        stop = next((i for i, (kind, name) in enumerate(self.events)
                     if kind == "enter" and any(_inside(name, t) for t in touched)), None)
        if stop is None:
            return [], 0
        done = {name for kind, name in self.events[:stop] if kind == "exit"}
        units = [name for name in dict.fromkeys(n for k, n in self.events[:stop] if k == "exit")
                 if not any(_inside(name, other) and name != other for other in done)]
        calls = sum(1 for kind, name in self.events[:stop] if kind == "exit" and name in units)
        return units, calls


class SharedPrefixEvaluator:
    """``evaluate(model) -> accuracy`` for a sweep, plus ``evaluate_rates``: every rate of one layer
    evaluated together, the network before the layer computed once per batch (see module docs).

    How: the unpruned model's forward pass is traced once (which module is entered and left in
    which order). For a layer, the *prefix* is every module the pass leaves before it first enters
    a module the layer's pruning changes; nothing before that point can differ between the pruned
    copies and the unpruned model. Per batch the unpruned model runs up to that point (or the
    outputs come from the cross-layer cache), and each pruned model then runs its own, unmodified
    forward pass with the outermost prefix modules answering from those outputs instead of
    computing: the same operations on the same tensors, so the logits are bit-identical to a
    separate evaluation (tested), whatever the model's forward does between modules. The outputs
    handed out are checked not to have been modified in place.

    Evaluation is that of ``training.evaluate``: the dataset in order, batches of ``batch_size``,
    eval mode, no autograd, neuron state reset after every batch. The prefix outputs every layer
    of the sweep needs are kept across layers (one pass of the unpruned model serves the sweep)
    while they fit in ``cache_bytes``; beyond that each layer recomputes its prefix per batch.
    """

    def __init__(self, dataset: Any, *, batch_size: int = 256, device: str | torch.device = "cpu",
                 share: bool = True, cache_bytes: int = 1 << 30) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.share = share
        self.cache_bytes = cache_bytes
        self.clear()

    def __call__(self, model: nn.Module) -> float:
        from ..training import evaluate

        return evaluate(model, self.dataset, batch_size=self.batch_size, device=self.device)

    def clear(self) -> None:
        """Forget the trace and the cached outputs (``robustness_sweep`` calls it before and after)."""
        self._base: int | None = None  # id of the unpruned model the trace and cache belong to
        self._trace: ForwardTrace | None = None
        self._cache: list[tuple[torch.Tensor, torch.Tensor, dict[str, list[Any]]]] | None = None
        self._cache_units: set[str] = set()
        self._cache_failed = False

    def _batches(self):
        from torch.utils.data import DataLoader

        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def plan(self, engine: Engine, layer: str) -> list[str]:
        """The outermost modules whose unpruned outputs the rates of ``layer`` reuse."""
        self._prepare(engine)
        assert self._trace is not None
        return self._trace.prefix(touched_modules(engine, layer))[0]

    def _prepare(self, engine: Engine) -> None:
        from ..training import torch_device

        if self._base == id(engine.model) and self._trace is not None:
            return
        self.clear()
        dev = torch_device(self.device)
        x, _ = next(iter(self._batches()))
        engine.model.to(dev).eval()
        self._trace = ForwardTrace.record(engine.model, x.to(dev))
        self._base = id(engine.model)

    def _capture(self, base: nn.Module, x: torch.Tensor, units: set[str], stop: int | None) -> dict[str, list[Any]]:
        """Run ``base`` on ``x``, keeping each call's output of ``units``; stop after ``stop`` calls."""
        from spikingjelly.activation_based import functional

        outputs: dict[str, list[Any]] = {name: [] for name in units}
        count = [0]

        def keep(module: nn.Module, args: Any, output: Any, name: str) -> None:
            outputs[name].append(output)
            count[0] += 1
            if stop is not None and count[0] >= stop:
                raise _Stop

        modules = dict(base.named_modules())
        handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: keep(m, a, o, n)) for n in units]
        try:
            with torch.no_grad():
                base(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
            functional.reset_net(base)
        return outputs

    def _fill_cache(self, engine: Engine) -> None:
        """Every batch's input, labels and the prefix outputs of every layer of the engine, if they fit."""
        from ..training import torch_device

        assert self._trace is not None
        units = set()
        for layer in engine.layers:
            units.update(self._trace.prefix(touched_modules(engine, layer))[0])
        dev = torch_device(self.device)
        cache, used, seen = [], 0, 0
        for x, y in self._batches():
            x = x.to(dev)
            outputs = self._capture(engine.model, x, units, None)
            used += x.numel() * x.element_size() + sum(
                t.numel() * t.element_size() for values in outputs.values() for v in values for t in _tensors(v))
            seen += len(y)
            if used / seen * len(self.dataset) > self.cache_bytes:
                self._cache_failed = True
                return
            cache.append((x, y, outputs))
        self._cache, self._cache_units = cache, units

    def evaluate_rates(self, engine: Engine, layer: str, models: Sequence[nn.Module]) -> list[float]:
        """Accuracy of each of ``models`` (``layer`` pruned alone at some rate) on the dataset."""
        if not self.share:
            return [self(m) for m in models]
        self._prepare(engine)
        assert self._trace is not None
        units, calls = self._trace.prefix(touched_modules(engine, layer))
        if not units:
            return [self(m) for m in models]
        if self._cache is None and not self._cache_failed:
            self._fill_cache(engine)
        return self._evaluate(engine.model, models, units, calls)

    def _evaluate(self, base: nn.Module, models: Sequence[nn.Module], units: list[str], calls: int,
                  logits: list[list[torch.Tensor]] | None = None) -> list[float]:
        from spikingjelly.activation_based import functional

        from ..training import torch_device

        dev = torch_device(self.device)
        modes = [m.training for m in (base, *models)]
        for m in (base, *models):
            m.to(dev).eval()
        correct, seen = [0] * len(models), 0
        if logits is not None:
            logits.extend([] for _ in models)
        if self._cache is not None and set(units) <= self._cache_units:
            batches = ((x, y, outputs) for x, y, outputs in self._cache)
        else:
            batches = ((x.to(dev), y, self._capture(base, x.to(dev), set(units), calls)) for x, y in self._batches())
        try:
            for x, y, outputs in batches:
                shared = [x, *(t for name in units for v in outputs[name] for t in _tensors(v))]
                versions = [(t, t._version) for t in shared]
                for i, model in enumerate(models):
                    z = class_scores(self._run_with(model, x, {name: outputs[name] for name in units}))
                    correct[i] += int((z.argmax(1).cpu() == y).sum())
                    if logits is not None:
                        logits[i].append(z.cpu())
                if any(t._version != v for t, v in versions):
                    raise PrimeSVTError("the model's forward pass modified a reused prefix output in place: "
                                        "evaluate this model without prefix sharing (--no-prefix-sharing)")
                seen += len(y)
        finally:
            for m, mode in zip((base, *models), modes):
                functional.reset_net(m)
                m.train(mode)
        if seen == 0:
            raise PrimeSVTError("cannot evaluate on an empty data set")
        return [c / seen for c in correct]

    @staticmethod
    def _run_with(model: nn.Module, x: torch.Tensor, outputs: dict[str, list[Any]]) -> torch.Tensor:
        """``model(x)`` with each module in ``outputs`` returning its recorded outputs, call by call,
        instead of computing them (its forward is replaced on this instance for the call)."""
        from spikingjelly.activation_based import functional

        modules = dict(model.named_modules())
        for name, values in outputs.items():
            replay = iter(values)
            modules[name].forward = lambda *args, replay=replay, **kwargs: next(replay)
        try:
            with torch.no_grad():
                return model(x)
        finally:
            for name in outputs:
                del modules[name].forward
            functional.reset_net(model)


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
