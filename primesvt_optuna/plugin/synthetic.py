"""SyntheticObjective: accuracy a known function of the per-layer rates, no model.

It runs the same trial code as :class:`PruningObjective` (constraints, user attributes, early
cut, failure handling), so tests can check a walk's order and committed rates exactly, and scale
and fault tests can run hundreds of trials in seconds.

Accuracy of a rate vector ``r``::

    base_accuracy - sum_l sensitivity[l] * r_l**2 - interaction * sum_{l<m} r_l * r_m

rounded to whole images out of the search images (``n_images``, less the ``holdout`` share held
back for confirmation under ``accept="confirmed"``). The images are evaluated in the same batch
schedule as a real objective's (``first_batch``, then doubling the images seen, up to
``batch_size``; ``first_batch=None``: plain batches); which ones are right is a fixed pseudo-random
pattern (a seeded order, the same for every trial), so the exact early cut behaves as on real
data, and a pruned configuration is right on a subset of the images the unpruned model gets right.
Bytes are 4 per parameter: ``other_params`` stay, each layer keeps ``round(size * (1 - r))``.

With a precision grid (``precisions``), a layer at precision ``p`` also loses
``precision_loss[layer][p]`` of accuracy (``DEFAULT_PRECISION_LOSS[p]`` where not given; losses
add up, like the rates' terms) and stores its kept parameters in ``ceil(kept * bits / 8)`` bytes.

With ``noise`` the objective simulates sampling error instead: the formula is the *true* accuracy,
and each image's correctness is drawn, the same for a configuration every time it is evaluated.
The unpruned model is right on image ``i`` with probability ``base_accuracy``; a configuration
whose true drop is ``d`` is wrong where the unpruned model is right with probability
``(d + noise) / base_accuracy`` and right where it is wrong with probability
``noise / (1 - base_accuracy)``: disagreement rates ``d + noise`` and ``noise``, true drop ``d``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..acceptance.confirm import DEFAULT_HOLDOUT, resolve_holdout, with_search_drop
from ..precision.search import FLOAT_ONLY, check_precisions
from ..precision.grid import GRID
from .constraints import DEFAULT_GRID, Constraints
from .objective import RateObjective
from .pruner import DEFAULT_FIRST_BATCH, ConstraintPruner, batch_schedule


DEFAULT_PRECISION_LOSS = {"float": 0.0, "int8": 0.0, "int4": 0.004, "int2": 0.05}
"""Accuracy a layer loses at each precision unless ``precision_loss`` says otherwise."""


class SyntheticObjective(RateObjective):
    """A PruningObjective stand-in with a closed-form accuracy (see module docs).

    Example:

        .. testcode::

            import optuna
            from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective

            objective = SyntheticObjective(
                {"fc1": 4000, "fc2": 4000, "qkv": 1500, "proj": 500},
                sensitivity={"fc1": 0.05, "fc2": 0.2, "qkv": 0.1, "proj": 0.5},
                max_accuracy_drop=0.03, memory_target=0.3,
            )
            study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler())
            study.optimize(objective)
            print(study.user_attrs["primesvt:base_accuracy"])

    Args:
        layer_sizes: ``{layer: parameter count}`` (layer names without the ``rate:`` prefix).
        sensitivity: accuracy lost per squared rate, per layer (default 0.1).
        interaction: accuracy lost per product of two layers' rates.
        fail, nan: ``(layer, rate)`` pairs whose configurations raise / yield NaN.
        batch_size, first_batch: the batch schedule (see ``PruningObjective``).
        delay: seconds slept per batch (to simulate slow evaluations in multi-worker tests).
        accept, confidence, holdout, search_drop: the acceptance rule (see ``PruningObjective``).
        noise, noise_seed: simulate per-image sampling error (see the module docs).
        precisions, precision_loss: the precision grid (float alone: pruning only) and
            ``{layer: {precision: accuracy lost}}`` (see the module docs).
    """

    def __init__(
        self,
        layer_sizes: Mapping[str, int],
        *,
        sensitivity: Mapping[str, float] | None = None,
        base_accuracy: float = 0.9,
        interaction: float = 0.0,
        other_params: int = 0,
        n_images: int = 1000,
        batch_size: int = 100,
        first_batch: int | None = DEFAULT_FIRST_BATCH,
        max_accuracy_drop: float | None = 0.03,
        min_accuracy: float | None = None,
        memory_target: float | None = None,
        memory_budget: int | str | None = None,
        grid: Sequence[float] = DEFAULT_GRID,
        pruner: ConstraintPruner | None = ConstraintPruner(),
        single_objective: bool = False,
        fail: Sequence[tuple[str, float]] = (),
        nan: Sequence[tuple[str, float]] = (),
        delay: float = 0.0,
        robustness_cache: Mapping[tuple[str, float], float] | None = None,
        wait_timeout: float = 3600.0,
        accept: str = "confirmed",
        confidence: float = 0.95,
        holdout: float | str = DEFAULT_HOLDOUT,
        noise: float | None = None,
        noise_seed: int = 0,
        precisions: Sequence[str] = FLOAT_ONLY,
        precision_loss: Mapping[str, Mapping[str, float]] | None = None,
        search_drop: str = "budget",
    ) -> None:
        self.sizes = dict(layer_sizes)
        self.precision_loss = {name: {**DEFAULT_PRECISION_LOSS, **dict((precision_loss or {}).get(name, {}))}
                               for name in self.sizes}
        quantizing = tuple(check_precisions(precisions)) != FLOAT_ONLY
        self.holdout = resolve_holdout(holdout, n_images, quantizing) if accept == "confirmed" else 0.0
        self.n_confirm = round(self.holdout * n_images)
        self.noise, self.noise_seed = noise, int(noise_seed)
        self.sensitivity = {name: 0.1 for name in self.sizes} | dict(sensitivity or {})
        self.base_accuracy = base_accuracy
        self.interaction = interaction
        self.other_params = other_params
        self.n_images = n_images
        self.batch_size = batch_size
        self.first_batch = None if first_batch is None or first_batch >= batch_size else int(first_batch)
        batch_schedule(1, self.batch_size, self.first_batch)  # validates both sizes
        self.fail = {(layer, round(rate, 6)) for layer, rate in fail}
        self.nan = {(layer, round(rate, 6)) for layer, rate in nan}
        self.delay = delay
        self._order = np.random.RandomState(0).permutation(n_images - self.n_confirm)
        self._confirm_order = np.random.RandomState(1).permutation(self.n_confirm)
        settings = {
            "sizes": self.sizes, "sensitivity": self.sensitivity, "base": base_accuracy, "interaction": interaction,
            "other": other_params, "n": n_images, "fail": sorted(self.fail), "nan": sorted(self.nan),
            **({"noise": noise, "noise_seed": self.noise_seed} if noise is not None else {}),
            **({"precision_loss": self.precision_loss} if quantizing else {}),
        }
        identity = "synthetic:" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        constraints = Constraints.from_dict({
            "max_accuracy_drop": max_accuracy_drop if min_accuracy is None else None,
            "min_accuracy": min_accuracy, "memory_target": memory_target, "memory_budget": memory_budget,
            "accept": accept, "confidence": confidence,
        })
        constraints = with_search_drop(constraints, search_drop, self.n_confirm)
        layers = sorted(self.sizes.items(), key=lambda kv: -kv[1])
        super().__init__(
            layers=layers, base_bytes=4 * (sum(self.sizes.values()) + other_params), constraints=constraints,
            grid=grid, pruner=pruner, single_objective=single_objective, identity=identity,
            robustness_cache=robustness_cache, wait_timeout=wait_timeout, precisions=precisions,
        )
        self.check_confirmation()

    def true_accuracy(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> float:
        """The formula's accuracy of ``rates`` and ``precisions`` (see the module docs)."""
        values = [rates.get(name, 0.0) for name in self.sizes]
        loss = sum(self.sensitivity[n] * r * r for n, r in zip(self.sizes, values))
        loss += sum(self.precision_loss[n][p] for n, p in (precisions or {}).items())
        loss += self.interaction * sum(
            values[i] * values[j] for i in range(len(values)) for j in range(i + 1, len(values))
        )
        return min(1.0, max(0.0, self.base_accuracy - loss))

    def accuracy(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> float:
        """The exact accuracy (whole search images) the objective will measure for ``rates``
        (and ``precisions``) without ``noise``."""
        return round(self.true_accuracy(rates, precisions) * self.eval_images) / self.eval_images

    def predict_bytes(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> int:
        total = 4 * self.other_params
        for name, size in self.sizes.items():
            kept = round(size * (1.0 - rates.get(name, 0.0)))
            bits = GRID[(precisions or {}).get(name, "float")]
            total += 4 * kept if bits is None else math.ceil(kept * bits / 8)
        return total

    @property
    def eval_images(self) -> int:
        return self.n_images - self.n_confirm

    @property
    def confirm_images(self) -> int:
        return self.n_confirm

    def precision_drift(self) -> dict[str, dict[str, float]]:
        # the known accuracy loss is the perfect proxy
        return {name: {p: loss for p, loss in self.precision_loss[name].items() if GRID.get(p)} for name in self.sizes}

    def _simulated(self, rates: Mapping[str, float], images: slice, precisions: Mapping[str, str] | None = None
                   ) -> np.ndarray:
        """Per-image correctness under ``noise`` (see the module docs) on ``images`` of all
        ``n_images``: the same draw for a configuration every time."""
        reference = np.random.default_rng([self.noise_seed, 0]).random(self.n_images) < self.base_accuracy
        if not rates and not precisions:
            return reference[images]
        key = json.dumps(sorted((k, round(v, 6)) for k, v in rates.items() if v > 0))
        if precisions:
            key += json.dumps(sorted(precisions.items()))
        stream = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        u = np.random.default_rng([self.noise_seed, 1, stream]).random(self.n_images)
        drop = self.base_accuracy - self.true_accuracy(rates, precisions)
        lose = min(1.0, (drop + self.noise) / self.base_accuracy)
        gain = min(1.0, self.noise / (1.0 - self.base_accuracy))
        return np.where(reference, u >= lose, u < gain)[images]

    def confirm_correct(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None
                        ) -> Sequence[bool]:
        self._check_fail(rates)
        if self.noise is not None:
            return self._simulated(rates, slice(self.eval_images, None), precisions).tolist()
        accuracy = self.true_accuracy(rates, precisions) if rates or precisions else self.base_accuracy
        return (self._confirm_order < round(accuracy * self.n_confirm)).tolist()

    def _check_fail(self, rates: Mapping[str, float]) -> set[tuple[str, float]]:
        items = {(name, round(rate, 6)) for name, rate in rates.items()}
        if items & self.fail:
            raise RuntimeError(f"synthetic failure at {sorted(items & self.fail)}")
        return items

    def iter_batches(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None
                     ) -> Iterator[tuple[Any, int]]:
        items = self._check_fail(rates)
        if self.noise is not None:
            correct = self._simulated(rates, slice(0, self.eval_images), precisions)
        else:
            correct = self._order < round(self.accuracy(rates, precisions) * self.eval_images)
        start = 0
        for size in self.schedule:
            if self.delay:
                time.sleep(self.delay)
            batch = correct[start:start + size]
            start += size
            yield (math.nan if items & self.nan else int(batch.sum())), len(batch)
