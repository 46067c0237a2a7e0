"""Run every policy x seed as an independent study, in parallel processes, into one storage.

Each study is named ``<name>/<policy>/seed<k>`` so that optuna-dashboard lists them side by side
and ``primesvt report`` finds them again. The comparison is fair in what it charges:

* every policy gets the same objective (checkpoint, evaluation subset, constraints, rate grid) and
  the same budget (``budget_images`` evaluated images, at most ``max_trials`` trials), enforced by
  a callback for the policies that do not stop by themselves (TPE, NSGA-II);
* the robustness sweep (the unpruned reference plus every layer alone at every grid rate) is run
  once, in a study named ``<name>/robustness-sweep``, and handed to the walk policies as a cache;
  the images and seconds of the sweep trials a study replayed are *charged* to it (derived from
  its cached trials by ``load_studies``, and counted by the image budget as they are replayed),
  so a walk never looks cheaper for sharing it, and a lazy walk (the default) pays only for the
  bounds it looked up.

After a study ends, its worker evaluates the selected configuration (largest memory saving that
meets the accuracy constraint) on the test split, when the objective has one, and records it in
the study, so the report needs nothing but the storage.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import PrimeSVTError
from ..storage import open_storage
from .frames import (
    POLICIES, REPORT_ATTR, StudyRecord, load_studies, load_sweep, study_name, sweep_cost, sweep_key, sweep_name,
    trials_frame,
)
from .table import selected_trial

WALK_POLICIES = ("prioritized", "smallest-first", "random-order")
"""The policies that start from the robustness sweep and are charged for it."""

ObjectiveFactory = Callable[..., Any]
"""``factory(robustness_cache=None) -> RateObjective``; must be picklable (joblib processes)."""


@dataclass(frozen=True)
class ComparisonSpec:
    """What to compare and how much each study may spend."""

    name: str
    storage: str
    policies: Sequence[str] = POLICIES
    seeds: Sequence[int] = (0, 1, 2)
    budget_images: int | None = None
    """Images each study may evaluate (charged sweep included). None: the shared sweep's images
    plus ``extra_evaluations`` full evaluations, so every policy may spend what a walk that
    sweeps may spend; without a sweep, ``extra_evaluations`` full evaluations."""
    extra_evaluations: int = 60
    max_trials: int = 200
    """Trials each study may run, not counting the cached sweep trials a walk replays."""
    n_jobs: int = 2
    shared_sweep: bool = True
    sampler_options: dict[str, Any] = field(default_factory=dict)
    objective_options: dict[str, Any] = field(default_factory=dict)
    """Arguments every study's objective gets on top of the factory's (e.g. the acceptance rule)."""
    resplit: bool = False
    """Each seed re-draws the validation/test split (data spec ``resplit``): the seeds then
    replicate what a user's next data would change, not only the sampler's random choices. The
    studies cannot share a sweep (each seed searches other images)."""

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise PrimeSVTError(f"unknown policies {unknown}: choose among {', '.join(POLICIES)}")
        if len(set(self.seeds)) < 1 or not self.policies:
            raise PrimeSVTError("a comparison needs at least one policy and one seed")
        if self.budget_images is not None and self.budget_images <= 0:
            raise PrimeSVTError(f"budget_images must be positive, got {self.budget_images}")
        if self.max_trials <= 0:
            raise PrimeSVTError(f"max_trials must be positive, got {self.max_trials}")
        if self.resplit and self.shared_sweep:
            raise PrimeSVTError("a comparison whose seeds re-draw the split cannot share one robustness sweep")
        if "/" in self.name or not self.name:
            raise PrimeSVTError(f"comparison name {self.name!r} must be non-empty and contain no '/'")


def machine() -> dict[str, Any]:
    """Where the numbers were measured (benchmarks and reports record it): the training module's
    CPU/cores/threads/torch, plus Python, Optuna, the load average (other processes on a shared
    machine slow every timing) and the date."""
    from ..training import machine as hardware

    return {
        **hardware(), "host": platform.node(), "python": platform.python_version(), "optuna": optuna.__version__,
        "load_1min": round(os.getloadavg()[0], 2),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def make_sampler(policy: str, seed: int, grid: Sequence[float], options: dict[str, Any] | None = None):
    """The sampler of one policy; every one is seeded."""
    from ..plugin import BudgetAwareSampler, PrioritizedSampler, RandomOrderSampler, SmallestFirstSampler, UniformSampler

    options = dict(options or {})
    if policy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **options.get("tpe", {}))
    if policy == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **options.get("nsga2", {}))
    cls = {"prioritized": PrioritizedSampler, "smallest-first": SmallestFirstSampler,
           "random-order": RandomOrderSampler, "uniform": UniformSampler, "budget-aware": BudgetAwareSampler}[policy]
    return cls(grid=grid, seed=seed, **options.get(policy, {}))


def _sampler_budgeted(spec: ComparisonSpec, policy: str) -> bool:
    """Whether the policy's sampler itself keeps the image budget: budget-aware always (whether it
    walks depends on what is left), every PrimeSVT sampler under confirmed acceptance (the search
    must stop where the confirmation still fits). A callback stops the others."""
    confirming = spec.objective_options.get("accept") == "confirmed"
    return spec.budget_images is not None and (policy == "budget-aware" or (
        confirming and policy not in ("tpe", "nsga2")))


def _options(spec: ComparisonSpec, policy: str) -> dict[str, Any]:
    """The sampler options of ``spec``, with the image budget for a sampler that keeps it, as
    ``primesvt search --budget-images`` gives it (it then never exceeds the budget, where the
    callback lets other studies finish the trial that spends it)."""
    if not _sampler_budgeted(spec, policy):
        return spec.sampler_options
    return {**spec.sampler_options, policy: {**spec.sampler_options.get(policy, {}), "budget_images": spec.budget_images}}


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class ImageBudget:
    """Stop a study once its trials have evaluated ``budget`` images. A trial filled from the shared
    sweep (``cached``) costs what the sweep spent on its (layer, rate), from ``lookups``: a lazy
    walk pays for the bounds it looks up, when it looks them up, never for the whole sweep."""

    def __init__(self, budget: int | None, lookups: Mapping[tuple[str, float], float] | None = None) -> None:
        self.budget = budget
        self.lookups = lookups or {}

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.budget is None:
            return
        used = 0.0
        for t in study.get_trials(deepcopy=False, states=_FINISHED):
            ua = t.user_attrs
            used += float(ua.get("images_evaluated") or 0) + float(ua.get("images_recalibrated") or 0)
            if ua.get("cached"):
                used += self.lookups.get(sweep_key(ua.get("layer"), ua.get("rate") or 0), 0.0)
        if used >= self.budget:
            study.stop()


def _quiet() -> None:
    import torch

    torch.set_num_threads(1)  # one core per study: the studies themselves run in parallel
    optuna.logging.set_verbosity(optuna.logging.WARNING)


class _SweepDone:
    """Stop a sweep worker once the reference and every single-layer trial have finished."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # a failed trial (a killed worker's, on resume) does not count: its configuration is retried
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(done) >= self.n_trials or trial.user_attrs.get("phase") == "walk":
            study.stop()


def _sweep_worker(spec: ComparisonSpec, factory: ObjectiveFactory) -> None:
    """One of the processes sharing the sweep study (the samplers coordinate through storage)."""
    from ..plugin import PrioritizedSampler

    _quiet()
    objective = factory()
    study = optuna.create_study(storage=open_storage(spec.storage), study_name=sweep_name(spec.name),
                                directions=objective.directions,
                                sampler=PrioritizedSampler(grid=objective.grid, seed=0, sweep="full"),
                                load_if_exists=True)
    n_sweep = 1 + len(objective.layers) * len(objective.grid)
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) < n_sweep:
        study.optimize(objective, callbacks=[_SweepDone(n_sweep)], gc_after_trial=False)


def run_sweep(spec: ComparisonSpec, factory: ObjectiveFactory) -> tuple[dict[tuple[str, float], float], dict[str, Any],
                                                                      dict[tuple[str, float], float]]:
    """Run (or resume) the shared robustness sweep on ``n_jobs`` processes; return the cache for
    the walks, the whole sweep's cost (the sum of its trials' own durations, i.e. what one walk
    would have spent sweeping alone) and the images each (layer, rate) lookup cost."""
    from joblib import Parallel, delayed

    workers = max(1, spec.n_jobs)
    Parallel(n_jobs=workers, backend="loky")(delayed(_sweep_worker)(spec, factory) for _ in range(workers))
    storage = open_storage(spec.storage)
    study = optuna.load_study(storage=storage, study_name=sweep_name(spec.name))
    trials = study.get_trials(deepcopy=False)
    sweep = load_sweep(storage, spec.name)
    cache: dict[tuple[str, float], float] = {}
    lookups: dict[tuple[str, float], float] = {}
    for row in sweep.trials[sweep.trials.phase == "robustness"].itertuples():
        key = sweep_key(row.layer, row.rate)
        value = row.accuracy if row.complete else trials[row.number].user_attrs.get("accuracy_upper_bound")
        if value is not None and value == value:  # a cut trial caches the best it could have reached
            cache[key] = float(value)
        if row.state in ("COMPLETE", "PRUNED"):
            lookups[key] = float(row.images_evaluated or 0) + float(row.images_recalibrated or 0)
    return cache, sweep_cost(sweep), lookups


def copy_sweep(source: str, source_name: str, target: str, target_name: str) -> None:
    """Give comparison ``target_name`` the sweep of comparison ``source_name`` (unless it has one):
    the sweep depends on the objective's accuracy constraint, not on the memory target, so cells
    that differ only in the target can share one."""
    names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(target), include_best_trial=False)}
    if sweep_name(target_name) not in names:
        optuna.copy_study(from_study_name=sweep_name(source_name), from_storage=open_storage(source),
                          to_storage=open_storage(target), to_study_name=sweep_name(target_name))


def run_one(spec: ComparisonSpec, factory: ObjectiveFactory, policy: str, seed: int,
            cache: dict[tuple[str, float], float] | None, lookups: dict[tuple[str, float], float] | None) -> str:
    """One independent study (in its own process); returns its name."""
    from ..plugin.constraints import rate_param
    from ..plugin.result import save_result_note
    from ..plugin.samplers._claims import write_study_attrs

    _quiet()
    options = {**spec.objective_options, **({"data": {"resplit": seed}} if spec.resplit else {})}
    objective = factory(robustness_cache=cache, **options) if cache is not None else factory(**options)
    name = study_name(spec.name, policy, seed)
    study = optuna.create_study(storage=open_storage(spec.storage), study_name=name, directions=objective.directions,
                                sampler=make_sampler(policy, seed, objective.grid, _options(spec, policy)),
                                load_if_exists=True)
    study.set_user_attr("primesvt:compare", {"policy": policy, "seed": seed, "comparison": spec.name})
    if policy in ("tpe", "nsga2"):
        objective.attach(study)
        write_study_attrs(study, {"policy": policy, "grid": list(objective.grid), "seed": seed,
                                  "sampler": {"policy": policy, "grid": list(objective.grid), "seed": seed}})
        if not study.trials:  # trial 0 is the unpruned reference for every policy, as in `primesvt search`
            study.enqueue_trial({rate_param(name): 0.0 for name, _ in objective.layers},
                                user_attrs={"phase": "reference"})
    if REPORT_ATTR in study.user_attrs:  # finished by an earlier run: resuming adds nothing
        return name
    done = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    cap = spec.max_trials + len(cache or {})  # cached sweep trials evaluate nothing: not counted in the cap
    if done < cap:
        budget = ImageBudget(None if _sampler_budgeted(spec, policy) else spec.budget_images, lookups)
        study.optimize(objective, n_trials=cap - done, callbacks=[budget], gc_after_trial=False)
    report: dict[str, Any] = {"machine": machine(), "test": test_accuracy(objective, study)}
    study.set_user_attr(REPORT_ATTR, report)
    save_result_note(study)  # the plugin's result as a markdown note on the dashboard
    return name


def test_accuracy(objective: Any, study: optuna.Study) -> dict[str, Any]:
    """Test-split accuracy of the study's selected configuration (BatchNorm recalibrated when the
    objective recalibrates) and of the unpruned model (only reported: the search never sees the
    test split). Empty without a test split (synthetic)."""
    splits = getattr(objective, "splits", None)
    engine = getattr(objective, "engine", None)
    if splits is None or engine is None:
        return {}
    from ..training import evaluate

    from ..plugin.result import result

    frame = trials_frame(study.get_trials(deepcopy=False))
    found = result(study)
    selection = None if found.selected is None else {**found.selected, "both_met": found.both_met}
    record = StudyRecord("", "", 0, study.study_name, {}, frame, selection=selection)
    best = selected_trial(record)
    if best is None:
        return {}
    rates = {layer: rate for layer, rate in best.rates.items() if rate > 0}
    device = getattr(objective, "device", "cpu")
    batch = getattr(objective, "batch_size", 256)
    started = time.perf_counter()
    pruned = (engine.prune(rates) if rates else engine.model).to(device)
    recalibrate = getattr(objective, "recalibrate", None)
    if recalibrate is not None and rates:  # the model the study evaluated, as `primesvt export` rebuilds it
        recalibrate(pruned, rates)
    acc = evaluate(pruned, splits.test, batch_size=batch, device=device)
    base = evaluate(engine.model.to(device), splits.test, batch_size=batch, device=device)
    return {"trial": int(best.number), "accuracy": acc, "images": len(splits.test), "base_accuracy": base,
            "rates": rates, "seconds": round(time.perf_counter() - started, 3)}


def run_comparison(spec: ComparisonSpec, factory: ObjectiveFactory, *, progress: bool = True) -> list[StudyRecord]:
    """Run (or resume) the whole comparison; returns the studies as the report reads them."""
    from joblib import Parallel, delayed

    started = time.perf_counter()
    open_storage(spec.storage)  # one clear line now rather than an error in every worker
    walks = [p for p in spec.policies if p in WALK_POLICIES]
    cache = charged = lookups = None
    if spec.shared_sweep and walks:
        if progress:
            print(f"[compare] robustness sweep (shared by {', '.join(walks)}) ...", flush=True)
        cache, charged, lookups = run_sweep(spec, factory)
        if progress:
            print(f"[compare] sweep: {charged['trials']} trials, {charged['images']:,.0f} images, "
                  f"{charged['seconds']:.1f} s (each walk study is charged the lookups it replays)", flush=True)
    if spec.budget_images is None:
        full = charged["full_evaluation"] if charged else int(factory().eval_images)
        base = charged["images"] if charged else 0
        spec = dataclasses.replace(spec, budget_images=int(base + spec.extra_evaluations * full))
    if progress:
        print(f"[compare] budget per study: {spec.budget_images:,} evaluated images, at most {spec.max_trials} "
              "trials", flush=True)
    tasks = [(p, s) for s in spec.seeds for p in spec.policies]
    if progress:
        print(f"[compare] {len(tasks)} studies ({len(spec.policies)} policies x {len(spec.seeds)} seeds) "
              f"on {spec.n_jobs} processes -> {spec.storage}", flush=True)
    names = Parallel(n_jobs=spec.n_jobs, backend="loky", verbose=5 if progress else 0)(
        delayed(run_one)(spec, factory, p, s, *((cache, lookups) if p in walks else (None, None)))
        for p, s in tasks
    )
    if progress:
        print(f"[compare] {len(names)} studies done in {time.perf_counter() - started:.1f} s", flush=True)
    return load_studies(spec.storage, spec.name)
