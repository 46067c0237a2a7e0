"""AQ4SViT's greedy per-layer precision search, re-implemented as the anchor of the joint search."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from optuna.study import Study

from ...errors import PrimeSVTError
from ...precision.grid import GRID
from ...precision.search import FLOAT_ONLY, check_precisions, precision_param
from ..constraints import RATE_PREFIX, layer_of
from ._claims import ACCEPTED, FREE, HELD, Candidate, ClaimSampler, Decision, Done, Snapshot, Wait, rates_key


class AQ4SViTSampler(ClaimSampler):
    """Greedy precision lowering (AQ4SViT, arXiv 2606.15523), no pruning.

    Trial 0 is the unpruned float reference. From every layer at the widest precision (float),
    each step lowers by one grid step the layer whose step has the smallest membrane-potential
    drift per byte saved, evaluates that configuration against the accuracy constraint, keeps it
    if it passes and stops at the first failure (or when every layer is at the narrowest
    precision). The drift and the bytes come from the objective's ``primesvt:precision_proxy``
    study attribute (:mod:`primesvt_optuna.precision.drift`: the relative change of every spiking
    neuron's input with the layer alone quantized; a step's drift is the layer's drift at the new
    precision less its drift at the current one). Where the paper is silent these are this
    package's choices; the images and the acceptance (the search part, then the confirmation
    ladder on the held-back part) are those of every other policy.

    Args:
        precisions: the precision grid, float included (at least one narrower precision).
        grid, layer_sizes, fallback, seed, wait_timeout, poll_interval, stale_after, budget_images,
            budget_trials: as for the other PrimeSVT samplers (the rate grid is unused: no layer is
            pruned).
    """

    policy = "aq4svit"

    def __init__(self, *, precisions: Sequence[str] = ("float", "int8", "int4", "int2"), **common: Any) -> None:
        """``common``: the arguments of every PrimeSVT sampler (see :class:`ClaimSampler`)."""
        super().__init__(**common)
        self._precisions = check_precisions(precisions)
        if self._precisions == FLOAT_ONLY:
            raise PrimeSVTError("the AQ4SViT-style search lowers precisions: give a grid with int8, int4 or int2")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "precisions": list(self._precisions)}

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        started = proxy_start(self, study, snap)
        if not isinstance(started, tuple):
            return started
        proxy, current = started
        for _ in range(len(current) * (len(self._precisions) - 1)):
            step = self.next_step(proxy, current)
            if step is None:
                return Done("every layer at the narrowest precision")
            lowered = {**current, step: current[step] + 1}
            config = self._config(lowered)
            key = rates_key(config)
            status = snap.status(key)
            if status == FREE:
                return Candidate(key, "search", f"{RATE_PREFIX}{step}", None, config)
            if status == HELD:
                return Wait(f"the step that lowers {step} to {self._precisions[lowered[step]]}")
            if status != ACCEPTED:
                return Done(f"lowering {step} to {self._precisions[lowered[step]]} failed the accuracy constraint")
            current = lowered
        return Done("every layer at the narrowest precision")

    def next_step(self, proxy: dict[str, dict[str, dict[str, float]]], current: dict[str, int]) -> str | None:
        """The layer to lower next (see :func:`lowest_drift_step`)."""
        return lowest_drift_step(proxy, self._precisions, current)

    def _config(self, current: dict[str, int]) -> dict[str, float]:
        return {precision_param(layer): float(GRID[self._precisions[i]]) for layer, i in current.items() if i}


def lowest_drift_step(proxy: dict[str, dict[str, dict[str, float]]], precisions: Sequence[str],
                      current: dict[str, int], frozen: Collection[str] = ()) -> str | None:
    """The layer to lower next by one step of ``precisions`` (``current``: each layer's index in
    it): the smallest drift added per byte saved (ties: the layer name), ``frozen`` layers left
    out; None when every other layer is at the narrowest precision."""
    best: tuple[float, str] | None = None
    for layer, index in current.items():
        if index + 1 >= len(precisions) or layer in frozen:
            continue
        now, then = (proxy[layer][precisions[i]] for i in (index, index + 1))
        saved = now["bytes"] - then["bytes"]
        cost = max(0.0, then["drift"] - now["drift"]) / saved if saved > 0 else float("inf")
        if best is None or (cost, layer) < best:
            best = (cost, layer)
    return None if best is None else best[1]


def proxy_start(sampler: ClaimSampler, study: Study, snap: Snapshot
                ) -> Decision | tuple[dict[str, dict[str, dict[str, float]]], dict[str, int]]:
    """(the objective's drift table, every layer at index 0 of the precision grid: float) once the
    reference trial and the table are known, else the decision that waits for them."""
    layers = sampler._started(study, snap, need_sizes=False)
    if not isinstance(layers, list):
        return layers
    proxy = sampler._written_attr(study, "precision_proxy")
    if proxy is None:
        return Wait("the objective's precision proxy (it writes it when it first sees the study)")
    return proxy, {layer_of(p): 0 for p, _ in layers}
