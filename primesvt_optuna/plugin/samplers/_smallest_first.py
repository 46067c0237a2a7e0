"""The walk in the opposite order: the baseline that tests PrimeSVT's ordering claim."""

from __future__ import annotations

from ._walk import WalkSampler


class SmallestFirstSampler(WalkSampler):
    """:class:`PrioritizedSampler`'s method with the walk visiting the smallest layer first.

    Same reference, robustness sweeps, rule, grid, stopping and multi-worker behaviour; only the
    walk order differs, so a comparison isolates the effect of the largest-first priority.

    Example:

        .. testcode::

            import optuna
            from primesvt_optuna.plugin import SmallestFirstSampler

            sizes = {"rate:big": 4000, "rate:small": 500}


            def objective(trial):
                rates = {p: trial.suggest_float(p, 0.0, 0.9, step=0.1) for p in sizes}
                trial.set_constraint("accuracy", sum(rates.values()) ** 2 / 10 - 0.03)
                trial.set_constraint("memory", 0.3 - sum(sizes[p] * r for p, r in rates.items()) / 4500)
                return 1.0 - sum(rates.values()) ** 2 / 10

            study = optuna.create_study(
                direction="maximize", sampler=SmallestFirstSampler(layer_sizes=sizes)
            )
            study.optimize(objective)
    """

    policy = "smallest-first"

    def _order(self, layers: list[tuple[str, int]]) -> list[str]:
        return [name for name, _ in reversed(layers)]
