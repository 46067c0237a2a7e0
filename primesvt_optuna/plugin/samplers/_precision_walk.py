"""The paper's walk with precision: one precision for the whole model first, then the walk on top."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial

from ...errors import PrimeSVTError
from ...precision.grid import GRID
from ...precision.search import FLOAT_ONLY, check_precisions, precision_param
from ..constraints import layer_of
from ._claims import ACCEPTED, FREE, HELD, Candidate, Decision, Snapshot, Wait, rates_key
from ._prioritized import PrioritizedSampler
from ._walk import WalkState


class _OnTop:
    """A snapshot seen from a base configuration: every configuration the walk names is looked
    up with the base's entries added, so the walk's 'unpruned model' is the base."""

    def __init__(self, snap: Snapshot, base: dict[str, float]) -> None:
        self._snap, self._base = snap, base

    def key(self, key: str) -> str:
        return rates_key({**dict(json.loads(key.removeprefix("rates:"))), **self._base})

    def status(self, key: str) -> str:
        return self._snap.status(self.key(key))

    def trial_for(self, key: str) -> FrozenTrial | None:
        return self._snap.trial_for(self.key(key))

    def __getattr__(self, name: str) -> Any:  # everything else (e.g. the finished trials) as it is
        return getattr(self._snap, name)


def decide_on_top(snap: Snapshot, base: dict[str, float], decide: Callable[[Snapshot], Decision]) -> Decision:
    """``decide`` on the snapshot seen from ``base`` (:class:`_OnTop`), a candidate it returns
    with the base's entries added: a sampler's own search run on top of a base configuration."""
    decision = decide(_OnTop(snap, base))  # type: ignore[arg-type]
    if isinstance(decision, Candidate):
        rates = {**decision.rates, **base}
        return dataclasses.replace(decision, key=rates_key(rates), rates=rates)
    return decision


class PrecisionWalkSampler(PrioritizedSampler):
    """Precision first, then the paper's largest-first walk on what is left.

    Trial 0 is the unpruned float reference. Then the whole model, unpruned, at each quantized
    precision of the grid from the narrowest up; the first that meets the accuracy constraint is
    the *base* (none: float, the paper's walk unchanged). Then :class:`PrioritizedSampler`'s walk
    runs on top of the base: the robustness bounds, the walk's steps and its memory check are all
    of the base with the layers pruned, and its stop rule is the paper's. ``precisions=("float",
    "int8")`` is the baseline "int8 plus the paper's walk". State, workers and resume as for every
    PrimeSVT sampler.

    Args:
        precisions: the precision grid, float and at least one narrower precision.
        robustness_rule, walk_all, sweep, and the common arguments: as for PrioritizedSampler.
    """

    policy = "precision-walk"

    def __init__(self, *, precisions: Sequence[str] = ("float", "int8"), **walk: Any) -> None:
        """``walk``: the arguments of :class:`PrioritizedSampler`."""
        super().__init__(**walk)
        self._precisions = check_precisions(precisions)
        if self._precisions == FLOAT_ONLY:
            raise PrimeSVTError("the precision walk starts from a narrower precision: give e.g. float,int8")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "precisions": list(self._precisions)}

    def base(self, study: Study, snap: Snapshot) -> Decision | dict[str, float]:
        """The base configuration (every layer at the narrowest precision that passes), or the
        decision that still has to be taken to know it."""
        layers = self._started(study, snap)
        if not isinstance(layers, list):
            return layers
        for precision in reversed(self._precisions):
            if not GRID[precision]:
                break
            config = {precision_param(layer_of(p)): float(GRID[precision]) for p, _ in layers}
            status = snap.status(rates_key(config))
            if status == FREE:
                return Candidate(rates_key(config), "search", rates=config)
            if status == HELD:
                return Wait(f"the whole model at {precision}")
            if status == ACCEPTED:
                return config
        return {}

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        base = self.base(study, snap)
        if not isinstance(base, dict):
            return base
        return decide_on_top(snap, base, functools.partial(super()._next, study))

    def walk_state(self, study: Study) -> WalkState:
        snap = self._snapshot(study, self._read(study), None)
        base = self.base(study, snap)
        if not isinstance(base, dict):
            return WalkState()
        return self._walk(_OnTop(snap, base), self._layers(study, snap) or [])  # type: ignore[arg-type]
