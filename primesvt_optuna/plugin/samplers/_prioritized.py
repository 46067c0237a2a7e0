"""PrimeSVT's prioritized compression policy as an Optuna sampler."""

from __future__ import annotations

from ._walk import WalkSampler


class PrioritizedSampler(WalkSampler):
    """Run PrimeSVT's method as Optuna trials: reference, robustness sweeps, largest-first walk.

    Trial 0 evaluates the unpruned model (every rate 0). Then each layer alone at each grid rate
    (the robustness sweeps). A layer that met the ``accuracy`` constraint at some rate is a target
    layer; its robustness bound is the highest such rate (``robustness_rule="highest"``) or the
    highest rate up to which every rate passed (``"contiguous"``). The walk visits the target layers
    from the largest to the smallest: with earlier layers at their committed rates and later ones
    at 0, it tries the grid rates from the bound downward and commits the first whose trial meets
    the ``accuracy`` constraint (0 if none does). It stops once the committed configuration meets
    the ``memory`` constraint (or, with ``walk_all=True``, after the last target layer) and calls
    :meth:`optuna.study.Study.stop`.

    Rate parameters are those named ``rate:<layer>`` (or the keys of ``layer_sizes``); any other
    parameter goes to ``fallback`` (a seeded :class:`~optuna.samplers.RandomSampler` by default).
    Layer sizes come from ``layer_sizes`` or from the layer table that
    :class:`~primesvt_optuna.plugin.PruningObjective` records on the study.

    All state lives in the study (see ``_claims.py``): a study resumed with
    :func:`optuna.load_study` continues the walk, and several workers on one storage claim distinct
    configurations, waiting (up to ``wait_timeout`` seconds) rather than duplicating work.

    Example:

        .. testcode::

            import optuna
            from primesvt_optuna.plugin import PrioritizedSampler

            sizes = {"rate:fc1": 4000, "rate:fc2": 4000, "rate:attn": 1000}


            def objective(trial):
                rates = {p: trial.suggest_float(p, 0.0, 0.9, step=0.1) for p in sizes}
                accuracy = 0.95 - 0.1 * sum(r * r for r in rates.values())
                saving = sum(sizes[p] * r for p, r in rates.items()) / sum(sizes.values())
                trial.set_constraint("accuracy", (0.95 - accuracy) - 0.03)
                trial.set_constraint("memory", 0.4 - saving)
                return accuracy, saving


            study = optuna.create_study(
                directions=["maximize", "maximize"], sampler=PrioritizedSampler(layer_sizes=sizes)
            )
            study.optimize(objective)  # stops by itself when the walk is done

    Args:
        grid: the pruning rates in (0, 1) tried per layer (0, unpruned, is implied).
        layer_sizes: ``{parameter name: size}``; optional with PruningObjective.
        robustness_rule: ``"highest"`` or ``"contiguous"`` (see above).
        walk_all: walk every target layer instead of stopping at the memory target.
        fallback: the sampler for parameters that are not rates.
        seed: seed of the default fallback sampler.
        wait_timeout: how long a worker waits for other workers' outcomes before giving up.
        poll_interval: the longest pause between two reads of the storage while waiting.
        stale_after: treat a running trial older than this (seconds) as dead even on another
            host (journal storage has no heartbeat); on the same host dead workers are detected
            by process id.
    """

    policy = "prioritized"

    def _order(self, layers: list[tuple[str, int]]) -> list[str]:
        return [name for name, _ in layers]
