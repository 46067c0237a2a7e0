"""The walk in a seeded random layer order: the baseline for "does the order matter at all"."""

from __future__ import annotations

import numpy as np

from ._walk import WalkSampler


class RandomOrderSampler(WalkSampler):
    """:class:`PrioritizedSampler`'s method with the walk in a random layer order fixed by ``seed``.

    The order is a permutation of the largest-first list drawn from ``numpy.random.RandomState(seed)``
    (stable across numpy versions), so the same seed walks the same order in every worker and
    on resume. ``seed`` also seeds the fallback sampler.

    Example:

        .. testcode::

            import optuna
            from primesvt_optuna.plugin import RandomOrderSampler

            sizes = {"rate:a": 3000, "rate:b": 2000, "rate:c": 1000}


            def objective(trial):
                rates = {p: trial.suggest_float(p, 0.0, 0.9, step=0.1) for p in sizes}
                trial.set_constraint("accuracy", max(rates.values()) - 0.55)
                trial.set_constraint("memory", 0.5 - sum(sizes[p] * r for p, r in rates.items()) / 6000)
                return 1.0 - max(rates.values())

            study = optuna.create_study(
                direction="maximize", sampler=RandomOrderSampler(seed=3, layer_sizes=sizes)
            )
            study.optimize(objective)
    """

    policy = "random-order"

    def __init__(self, seed: int = 0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(seed=seed, **kwargs)

    def _order(self, layers: list[tuple[str, int]]) -> list[str]:
        permutation = np.random.RandomState(self._seed).permutation(len(layers))
        return [layers[i][0] for i in permutation]
