"""One rate for every layer: the simplest baseline a user would try first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.study import Study

from ...precision.grid import GRID
from ...precision.search import FLOAT_ONLY, check_precisions, precision_param
from ..constraints import layer_of
from ._claims import FREE, HELD, Candidate, ClaimSampler, Decision, Done, Snapshot, Wait, rates_key


class UniformSampler(ClaimSampler):
    """Trial 0 is the unpruned reference; then every layer at the same rate, each grid rate from
    the highest down; then :meth:`optuna.study.Study.stop`.

    Each trial is a complete configuration, so a rate whose model cannot meet the memory target is
    cut before evaluation (see :class:`~primesvt_optuna.plugin.ConstraintPruner`). No layer sizes
    are needed. Multi-worker behaviour and state-in-storage are those of the other PrimeSVT samplers.

    With a precision grid (``precisions``) every layer also takes one precision: float at each
    grid rate first (the sequence above), then each narrower precision, widest first, at each grid
    rate from the highest down and unpruned (so ``precisions=("float", "int4")`` includes the whole
    model at int4, the uniform-int4 baseline).

    Example:

        .. testcode::

            import optuna
            from primesvt_optuna.plugin import UniformSampler


            def objective(trial):
                rates = [trial.suggest_float(f"rate:l{i}", 0.0, 0.9, step=0.1) for i in range(3)]
                trial.set_constraint("accuracy", sum(rates) / 10 - 0.1)
                return sum(rates)

            study = optuna.create_study(direction="maximize", sampler=UniformSampler())
            study.optimize(objective)
            assert len(study.trials) == 10  # the reference and 9 uniform rates
    """

    policy = "uniform"

    def __init__(self, *, precisions: Sequence[str] = FLOAT_ONLY, **common: Any) -> None:
        """``common``: the arguments of every PrimeSVT sampler (see :class:`ClaimSampler`)."""
        super().__init__(**common)
        self._precisions = check_precisions(precisions)

    def settings(self) -> dict[str, Any]:
        # float alone records nothing new: a study from before precisions resumes unchanged
        extra = {} if self._precisions == FLOAT_ONLY else {"precisions": list(self._precisions)}
        return {**super().settings(), **extra}

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        layers = self._started(study, snap, need_sizes=False)
        if not isinstance(layers, list):
            return layers
        pending = False
        for bits in (GRID[p] or 0 for p in self._precisions):
            for rate in [*reversed(self._grid), *([0.0] if bits else [])]:
                config = {name: rate for name, _ in layers if rate}
                config.update({precision_param(layer_of(name)): float(bits) for name, _ in layers if bits})
                key = rates_key(config)
                status = snap.status(key)
                if status == FREE:
                    return Candidate(key, "search", None, rate, config, uniform=rate, complete=True)
                pending = pending or status == HELD
        return Wait("the last uniform rates to finish") if pending else Done("every grid rate tried")
