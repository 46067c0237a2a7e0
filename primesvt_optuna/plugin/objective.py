"""PruningObjective: a trial suggests one rate per prunable layer, prunes, evaluates, and records.

Both objectives (this one, on a real model, and :class:`SyntheticObjective`, on a known formula)
share :class:`RateObjective`, so everything a sampler, a report or the dashboard reads is written
by one piece of code:

* parameters ``rate:<layer>``, suggested largest layer first; with a precision grid other than
  float alone (``precisions=("float", "int8", "int4", "int2")``) also ``precision:<layer>``
  (categorical), and the model evaluated is the pruned model quantized at those precisions
  (dequantized weights, what users deploy); its bytes count the precision exactly
  (:func:`primesvt_optuna.precision.predict_bytes`);
* constraints ``accuracy`` (drop - budget) and ``memory`` (target - saving), fractions, set once;
  with a ``flops_target`` also ``flops`` (target - FLOPs saving; user attributes ``flops``,
  ``flops_saving``, ``constraint_flops``);
* user attributes ``phase``, ``layer``, ``rate``, ``accuracy``, ``accuracy_drop``,
  ``memory_saving``, ``model_bytes``, ``images_evaluated``, ``images_decided`` (images evaluated
  when the accuracy verdict was certain, at the batch schedule's looks), ``images_recalibrated`` (forward passes
  of the BatchNorm recalibration, search cost like evaluated images; 0 when off),
  ``constraint_accuracy``, ``constraint_memory``, ``feasible``, ``wall_time``;
  ``accuracy_lower_bound`` under ``accept="confident"``; ``cut_reason`` on cut trials,
  ``fail_reason`` on failed ones;
* study attributes ``primesvt:layers``, ``base_bytes``, ``grid``, ``constraints``,
  ``checkpoint_sha256`` (compared on every attach: a study never mixes settings) and
  ``base_accuracy`` (written by the reference trial).

A trial whose evaluation raises or yields NaN returns NaN, so Optuna records it as FAIL (with
``fail_reason``) and carries on; the walk treats it as a rejected rate.

Under ``accept="confirmed"`` (the default) the evaluation images are split into a search part,
which every search trial is evaluated on, and a held-back confirmation part. A trial with phase
``confirm`` (planned by the sampler's ladder, :mod:`primesvt_optuna.acceptance.confirm`) evaluates
its configuration on the confirmation part instead, image by image, and records the paired
verdict against the unpruned model's confirmation trial: ``confirmed``, ``confirm_bound``,
``confirm_accuracy``, ``confirm_base_accuracy``, ``confirm_discordant``, ``confirm_images``, and
the unpruned model's per-image correctness (``confirm_correct``, hex of packed bits) on its own.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import Trial, TrialState

from .. import faults
from ..acceptance.confirm import (CONFIRM, DEFAULT_HOLDOUT, LEGACY_RUNGS, RUNGS, RUNGS_ATTR, check_holdout,
                                  confirm_key, judge, resolve_holdout, with_search_drop)
from ..errors import PrimeSVTError
from ..precision.search import FLOAT_ONLY, bits_of, check_precisions, precision_param
from .constraints import CLAIM, DEFAULT_GRID, STUDY_PREFIX, WORKER, Constraints, normalize_grid, rate_param
from .pruner import DEFAULT_FIRST_BATCH, ConstraintPruner, Cut, batch_schedule, looks_of
from ..storage import fail_stale_trials, worker_info
from .samplers._claims import write_study_attrs

BASE_ACCURACY = f"{STUDY_PREFIX}base_accuracy"
AUTO_RECALIBRATION_IMAGES = 512
AUTO_RECALIBRATION_GAIN = 0.01
AUTO_RECALIBRATION_RATE = 0.3
AUTO_RELATIVE_DISAGREEMENT = 0.05  # recalibration alone changes this share of the unpruned model's predictions
PRECISION_PROXY = f"{STUDY_PREFIX}precision_proxy"
DIRECTIONS = ["maximize", "minimize"]
DRIFT_IMAGES = 64  # search images (the first of the seeded order) the membrane drift is measured on
METRIC_NAMES = ["accuracy", "model_bytes"]


class RateObjective:
    """The trial logic shared by every PrimeSVT objective; subclasses say how to predict bytes and
    how to evaluate a rate vector batch by batch."""

    def __init__(
        self,
        *,
        layers: Sequence[tuple[str, int]],
        base_bytes: int,
        constraints: Constraints,
        grid: Sequence[float] = DEFAULT_GRID,
        pruner: ConstraintPruner | None = None,
        single_objective: bool = False,
        identity: str,
        robustness_cache: Mapping[tuple[str, float], float] | None = None,
        wait_timeout: float = 3600.0,
        precisions: Sequence[str] = FLOAT_ONLY,
    ) -> None:
        if not layers:
            raise PrimeSVTError("the layer table is empty: this model has nothing to prune")
        self.layers = list(layers)
        self.base_bytes = int(base_bytes)
        self.constraints = constraints
        constraints.check_model(self.base_bytes)
        self.grid = normalize_grid(grid)
        self.precisions = check_precisions(precisions)
        self.pruner = pruner
        self.single_objective = single_objective
        self.identity = identity
        self._cache = {(layer, round(rate, 6)): acc for (layer, rate), acc in (robustness_cache or {}).items()}
        self._wait_timeout = wait_timeout
        self._attached: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    # ----- what subclasses define -------------------------------------------------------------
    def predict_bytes(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> int:
        """Exact bytes of the model pruned at ``rates`` with ``precisions`` (``{layer: name}``, float
        layers left out; None or empty: float)."""
        raise NotImplementedError

    # the optional FLOPs constraint (fraction of FLOPs per image to save); a subclass that sets
    # ``flops_target`` defines ``base_flops`` and ``predict_flops``
    flops_target: float | None = None
    base_flops: int = 0

    def predict_flops(self, rates: Mapping[str, float]) -> int:
        raise NotImplementedError

    def _flops_violation(self, rates: Mapping[str, float], attrs: dict[str, Any]) -> float | None:
        """``flops_target - flops saving`` (recorded with ``flops``, ``flops_saving``); None without a target."""
        if self.flops_target is None:
            return None
        flops = int(self.predict_flops(rates))
        saving = 1.0 - flops / self.base_flops
        violation = round(self.flops_target - saving, 12)
        attrs.update(flops=flops, flops_saving=saving, constraint_flops=violation)
        return violation

    def iter_batches(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None
                     ) -> Iterator[tuple[int, int]]:
        """``(correct, n)`` per evaluation batch of the model pruned at ``rates`` (quantized at
        ``precisions``)."""
        raise NotImplementedError

    @property
    def eval_images(self) -> int:
        raise NotImplementedError

    # the batch schedule: subclasses set ``batch_size`` and ``first_batch`` (None: plain batches)
    batch_size: int
    first_batch: int | None = None

    def confirm_correct(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None
                        ) -> Sequence[bool]:
        """Per-image correctness of ``rates`` on the confirmation part (confirmed acceptance)."""
        raise NotImplementedError

    @property
    def confirm_images(self) -> int:
        """Images of the confirmation part (0 when nothing is held back)."""
        return 0

    def check_confirmation(self) -> None:
        """Refuse, before any work, a confirmation part too small to confirm anything."""
        if self.constraints.confirmed:
            check_holdout(self.holdout, self.confirm_images, self.constraints, self.constraints.confidence)

    holdout: float = 0.0

    @property
    def schedule(self) -> list[int]:
        """Sizes of the evaluation batches, in order: the early cut looks after each one."""
        return batch_schedule(self.eval_images, self.batch_size, self.first_batch)

    @property
    def eval_batches(self) -> int:
        return len(self.schedule)

    def schedule_attrs(self) -> dict[str, Any]:
        """How trials are evaluated (an informative study attribute, ``primesvt:eval_schedule``)."""
        return {"first_batch": self.first_batch, "batch_size": self.batch_size, "looks": looks_of(self.schedule)}

    def recalibration_images(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> int:
        """Images passed forward to recalibrate BatchNorm before evaluating ``rates`` (search cost
        beside the evaluated images; 0 without recalibration)."""
        return 0

    # ----- study set-up -------------------------------------------------------------------------
    @property
    def directions(self) -> list[str]:
        """``create_study(directions=objective.directions)``."""
        return ["maximize"] if self.single_objective else list(DIRECTIONS)

    @property
    def metric_names(self) -> list[str]:
        return ["memory_saving"] if self.single_objective else list(METRIC_NAMES)

    def study_attrs(self) -> dict[str, Any]:
        return {
            "layers": [{"layer": name, "params": int(params)} for name, params in self.layers],
            "base_bytes": self.base_bytes,
            "grid": list(self.grid),
            "constraints": self.constraints.to_dict(),
            "checkpoint_sha256": self.identity,
            "pruner": self.pruner.describe() if self.pruner is not None else None,
            **({"holdout": self.holdout} if self.constraints.confirmed else {}),
            **({"rungs": RUNGS} if self.constraints.confirmed else {}),
            # only with a precision grid: a float-only study keeps the attributes it always had
            **({"precisions": list(self.precisions)} if self.quantizing else {}),
        }

    @property
    def quantizing(self) -> bool:
        """Whether trials choose a precision per layer (a grid other than float alone)."""
        return self.precisions != FLOAT_ONLY

    def suggest_precisions(self, trial: Trial) -> dict[str, str]:
        """``precision:<layer>`` for every layer (with a precision grid); the non-float ones."""
        if not self.quantizing:
            return {}
        chosen = {name: trial.suggest_categorical(precision_param(name), list(self.precisions)) for name, _ in self.layers}
        return {name: str(p) for name, p in chosen.items() if bits_of(p)}

    def precision_drift(self) -> dict[str, dict[str, float]]:
        """``{layer: {precision: drift}}``: how far quantizing the layer alone moves the model
        (the AQ4SViT-style search's proxy; float is 0 and left out)."""
        raise NotImplementedError

    def precision_proxy(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{layer: {precision: {"drift": ..., "bytes": ...}}}``: each layer alone at each
        precision, its drift and the model's exact bytes (study attribute
        ``primesvt:precision_proxy``, what the AQ4SViT-style sampler orders its steps by)."""
        drift = self.precision_drift()
        return {name: {p: {"drift": 0.0 if not bits_of(p) else float(drift[name][p]),
                           "bytes": int(self._bytes({}, {name: p} if bits_of(p) else {}))}
                       for p in self.precisions} for name, _ in self.layers}

    @staticmethod
    def config_key(rates: Mapping[str, float], precisions: Mapping[str, str]) -> str:
        """The claim key of a configuration (the samplers' ``rates_key``), precisions included."""
        from ..plugin.samplers._claims import rates_key

        return rates_key({**{rate_param(k): v for k, v in rates.items()},
                          **{precision_param(k): bits_of(p) for k, p in precisions.items()}})

    @property
    def trial_images(self) -> int:
        """The most images one trial costs: a full evaluation plus BatchNorm recalibration (what a
        sampler's image budget must reserve for a trial it starts)."""
        layer = {self.layers[0][0]: self.grid[-1]} if self.layers else {}
        return self.eval_images + self.recalibration_images(layer)

    def informative_attrs(self) -> dict[str, Any]:
        """Study attributes written once and not compared (e.g. where a file was found); with
        confirmation, what one confirmation costs (``confirm_images``, recalibration included)."""
        attrs: dict[str, Any] = {"eval_schedule": self.schedule_attrs(), "trial_images": self.trial_images}
        if self.constraints.confirmed:
            layer = {self.layers[0][0]: self.grid[-1]} if self.layers else {}
            attrs["confirm_images"] = self.confirm_images + self.recalibration_images(layer)
        return attrs

    def attach(self, study: Study) -> None:
        """Record this objective's settings on ``study``; refuse a study made with other ones."""
        with self._lock:
            if (id(study._storage), study._study_id) in self._attached:
                return
            if [d.name.lower() for d in study.directions] != self.directions:
                raise PrimeSVTError(
                    f"study {study.study_name!r} has directions {[d.name.lower() for d in study.directions]}, "
                    f"this objective needs {self.directions}: create it with directions=objective.directions"
                )
            recorded = study._storage.get_study_user_attrs(study._study_id).get(f"{STUDY_PREFIX}precisions")
            if recorded and not self.quantizing:  # float studies record none, so compare it here
                raise PrimeSVTError(f"study {study.study_name!r} was created with precisions = {','.join(recorded)}, "
                                    "not float alone: use another study name, or the same settings")
            attrs = self.study_attrs()
            current = study._storage.get_study_user_attrs(study._study_id)
            if "rungs" in attrs:
                # written first, so a worker that sees the constraints of a study this version
                # created sees its count too; constraints without a count: a study confirmed
                # before the count was recorded, which keeps its ladder
                legacy = f"{STUDY_PREFIX}constraints" in current and RUNGS_ATTR not in current
                count = attrs.pop("rungs")
                attrs = {"rungs": LEGACY_RUNGS if legacy else count, **attrs}
            write_study_attrs(study, attrs)
            current = study._storage.get_study_user_attrs(study._study_id)
            for key, value in self.informative_attrs().items():
                if f"{STUDY_PREFIX}{key}" not in current:
                    study._storage.set_study_user_attr(study._study_id, f"{STUDY_PREFIX}{key}", value)
            if self.quantizing and PRECISION_PROXY not in current:  # measured once per study, not per worker
                study._storage.set_study_user_attr(study._study_id, PRECISION_PROXY, self.precision_proxy())
            if study.metric_names is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(self.metric_names)
            self._attached.add((id(study._storage), study._study_id))

    # ----- one trial ----------------------------------------------------------------------------
    def suggest(self, trial: Trial, layer: str) -> float:
        """One rate: a float with a step when the grid is evenly spaced from 0, else a categorical."""
        step = self.grid[0]
        if all(abs(r - step * (i + 1)) < 1e-9 for i, r in enumerate(self.grid)):
            return float(trial.suggest_float(rate_param(layer), 0.0, self.grid[-1], step=step))
        return float(trial.suggest_categorical(rate_param(layer), [0.0, *self.grid]))

    def __call__(self, trial: Trial) -> float | tuple[float, float]:
        started = time.perf_counter()
        study = trial.study
        try:
            self.attach(study)
        except PrimeSVTError:
            trial.set_user_attr("interrupted", True)  # a refused study says nothing about the rates
            raise
        storage, tid = study._storage, trial._trial_id
        system = storage.get_trial_system_attrs(tid)
        claim = system.get(CLAIM) or {}
        if claim.get("phase") == "idle":
            raise optuna.TrialPruned(claim["reason"])
        if WORKER not in system:  # for stale-trial detection under other samplers (TPE, NSGA-II)
            storage.set_trial_system_attr(tid, WORKER, worker_info())
        rates = {name: rate for name, _ in self.layers if (rate := round(self.suggest(trial, name), 6)) > 0}
        precisions = self.suggest_precisions(trial)
        reference = not rates and not precisions
        if storage.get_trial_user_attrs(tid).get("phase") == CONFIRM:
            return self._confirm(trial, rates, precisions, started)
        if "phase" not in storage.get_trial_user_attrs(tid):
            trial.set_user_attr("phase", "reference" if reference else "search")
        complete = not reference and claim.get("complete", True)

        attrs: dict[str, Any] = {"images_recalibrated": 0}
        try:
            model_bytes = int(self._bytes(rates, precisions))
            saving = 1.0 - model_bytes / self.base_bytes
            memory = self.constraints.memory_violation(saving, self.base_bytes)
            attrs.update(model_bytes=model_bytes, memory_saving=saving, constraint_memory=memory)
            flops = self._flops_violation(rates, attrs)
            pruner = self._pruner(study)
            if complete and pruner is not None:
                cut = pruner.memory_cut(saving, self.constraints.target_saving(self.base_bytes))
                if cut is not None:
                    self._cut(trial, cut, attrs, None, 0, started)
            accuracy, seen, history = self._evaluate(trial, rates, precisions, reference, pruner, attrs, started)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except _Interrupted as exc:
            return self._fail(trial, str(exc), attrs, started, interrupted=True)
        except Exception as exc:  # noqa: BLE001 - any failure rejects this configuration, the study goes on
            return self._fail(trial, f"{type(exc).__name__}: {exc}", attrs, started)

        if reference:
            base = accuracy
            probe = getattr(self, "recalibration_probe", None)  # the study's one probe is charged here
            attrs["images_recalibrated"] += (probe["images"] if probe else 0) + getattr(
                self, "reference_recalibration_images", 0)
            if storage.get_study_user_attrs(study._study_id).get(BASE_ACCURACY) is None:
                storage.set_study_user_attr(study._study_id, BASE_ACCURACY, accuracy)
        else:
            try:
                base, extra = self._base_accuracy(study, trial)
            except _Interrupted as exc:
                return self._fail(trial, str(exc), attrs, started, interrupted=True)
            seen += extra
        violation = self.constraints.accuracy_violation(accuracy, base, self.eval_images)
        if self.constraints.confident:
            attrs["accuracy_lower_bound"] = self.constraints.accuracy_lower_bound(accuracy, self.eval_images)
        trial.set_constraint("accuracy", violation)
        if memory is not None:
            trial.set_constraint("memory", memory)
        if flops is not None:
            trial.set_constraint("flops", flops)
        attrs.update(
            accuracy=accuracy,
            accuracy_drop=None if base is None else round(base - accuracy, 12),
            constraint_accuracy=violation,
            feasible=violation <= 0 and (memory is None or memory <= 0) and (flops is None or flops <= 0),
            images_evaluated=seen,
            images_decided=self._images_decided(history, base, reference),
            wall_time=round(time.perf_counter() - started, 4),
        )
        self._record(trial, attrs)
        return saving if self.single_objective else (accuracy, float(model_bytes))

    def _confirm(self, trial: Trial, rates: dict[str, float], precisions: dict[str, str],
                 started: float) -> float | tuple[float, float]:
        """A confirmation trial: the configuration on the held-back images, judged against the
        unpruned model's confirmation (see the module docs)."""
        attrs: dict[str, Any] = {"confirm_key": confirm_key(self.config_key(rates, precisions))}
        try:
            if not self.constraints.confirmed:
                raise PrimeSVTError(f"trial {trial.number} asks for a confirmation, but this objective's acceptance "
                                    f"is {self.constraints.accept!r}: give it accept='confirmed'")
            model_bytes = int(self._bytes(rates, precisions))
            saving = 1.0 - model_bytes / self.base_bytes
            memory = self.constraints.memory_violation(saving, self.base_bytes)
            attrs.update(model_bytes=model_bytes, memory_saving=saving, constraint_memory=memory,
                         images_recalibrated=self._recalibration(rates, precisions))
            correct = [bool(x) for x in (self.confirm_correct(rates, precisions) if precisions
                                         else self.confirm_correct(rates))]
            attrs["images_evaluated"] = len(correct)
            if not rates and not precisions:
                reference, violation = correct, 0.0
                attrs["confirm_correct"] = _pack(correct)
            else:
                reference = self._confirmed_reference(trial.study)
                if reference is None:  # planned out of order (enqueued by hand): evaluate it here
                    reference = [bool(x) for x in self.confirm_correct({})]
                    attrs["images_evaluated"] += len(reference)
                verdict = judge(reference, correct, self.constraints, self.constraints.confidence)
                attrs.update(verdict.attrs())
                if self.constraints.min_accuracy is not None:
                    violation = round(self.constraints.min_accuracy - verdict.bound, 12)
                else:
                    violation = round(verdict.bound - self.constraints.max_accuracy_drop, 12)
                violation = min(violation, 0.0) if verdict.passed else max(violation, 1e-12)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:  # noqa: BLE001 - a confirmation that cannot run rejects its rung
            return self._fail(trial, f"{type(exc).__name__}: {exc}", attrs, started)
        accuracy = sum(correct) / len(correct)
        trial.set_constraint("accuracy", violation)
        if memory is not None:
            trial.set_constraint("memory", memory)
        attrs.update(accuracy=accuracy, accuracy_drop=round(sum(reference) / len(reference) - accuracy, 12),
                     constraint_accuracy=violation, wall_time=round(time.perf_counter() - started, 4),
                     feasible=violation <= 0 and (memory is None or memory <= 0))
        self._record(trial, attrs)
        return saving if self.single_objective else (accuracy, float(model_bytes))

    def _confirmed_reference(self, study: Study) -> list[bool] | None:
        """The unpruned model's per-image correctness on the confirmation part, from its
        confirmation trial (None while there is none)."""
        from ..plugin.samplers._claims import rates_key

        key = confirm_key(rates_key({}))
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("confirm_key") == key and "confirm_correct" in t.user_attrs:
                return _unpack(t.user_attrs["confirm_correct"])
        return None

    # ----- internals ----------------------------------------------------------------------------
    def _pruner(self, study: Study) -> ConstraintPruner | None:
        if self.pruner is not None:
            return self.pruner
        return study.pruner if isinstance(study.pruner, ConstraintPruner) else None

    # precisions are passed only when there are any: subclasses written before them take rates alone
    def _bytes(self, rates: dict[str, float], precisions: dict[str, str]) -> int:
        return self.predict_bytes(rates, precisions) if precisions else self.predict_bytes(rates)

    def _recalibration(self, rates: dict[str, float], precisions: dict[str, str]) -> int:
        return self.recalibration_images(rates, precisions) if precisions else self.recalibration_images(rates)

    def _evaluate(
        self, trial: Trial, rates: dict[str, float], precisions: dict[str, str], reference: bool,
        pruner: ConstraintPruner | None, attrs: dict[str, Any], started: float,
    ) -> tuple[float, int, list[tuple[int, int]]]:
        """Accuracy of the pruned (and quantized) model, cut at a look once the floor is out of
        reach; returns (accuracy, images, (correct, seen) at each look)."""
        if len(rates) == 1 and not precisions:  # the robustness cache holds float models only
            ((layer, rate),) = rates.items()
            cached = self._cache.get((layer, rate))
            if cached is not None:
                trial.set_user_attr("cached", True)
                return float(cached), 0, []
        attrs["images_recalibrated"] = self._recalibration(rates, precisions)
        schedule = self.schedule
        total, batches = self.eval_images, len(schedule)
        looks = pruner.statistical_looks(schedule) if pruner is not None else batches
        single_pruner = len(trial.study.directions) == 1 and isinstance(trial.study.pruner, ConstraintPruner)
        floor = None if reference else self._floor(trial.study)
        if single_pruner:
            trial.set_user_attr("eval_images", total)
            trial.set_user_attr("eval_batches", batches)
            trial.set_user_attr("eval_looks", looks)
            trial.set_user_attr("accuracy_floor", self.constraints.required_accuracy(floor, total))
        correct = seen = 0
        history: list[tuple[int, int]] = []
        for c, n in self.iter_batches(rates, precisions) if precisions else self.iter_batches(rates):
            correct, seen = correct + c, seen + n
            history.append((correct, seen))
            attrs["images_evaluated"] = seen  # what a trial failing from here on has spent
            faults.hit("evaluating", trial.number)
            if reference or pruner is None or math.isnan(correct):
                continue
            if floor is None and (floor := self._floor(trial.study)) is not None and single_pruner:
                trial.set_user_attr("accuracy_floor", self.constraints.required_accuracy(floor, total))
            if single_pruner:
                trial.report(correct / seen, seen)
                if not trial.should_prune():
                    continue
            cut = pruner.accuracy_cut(int(correct), seen, total, self.constraints.required_accuracy(floor, total), looks)
            if cut is not None:
                self._cut(trial, cut, attrs, floor, seen, started)
        if seen == 0:
            raise PrimeSVTError("the evaluation set is empty")
        accuracy = correct / seen
        if math.isnan(accuracy):
            raise ValueError("the evaluation yielded NaN accuracy")
        return accuracy, seen, history

    def _images_decided(self, history: Sequence[tuple[int, int]], base: float | None, reference: bool) -> int:
        """Images seen at the first look after which the accuracy verdict could no longer change
        (every remaining image wrong still passes, or every one right still fails); the whole
        evaluation for the reference, 0 for a trial filled from the robustness cache."""
        if not history:
            return 0
        total = history[-1][1]
        floor = None if reference else self.constraints.accuracy_floor(base)
        required = self.constraints.required_accuracy(floor, total)
        if required is None or any(isinstance(c, float) and math.isnan(c) for c, _ in history):
            return total
        for correct, seen in history:
            if correct / total >= required - 1e-12 or (correct + total - seen) / total < required - 1e-12:
                return seen
        return total

    def _floor(self, study: Study) -> float | None:
        base = study._storage.get_study_user_attrs(study._study_id).get(BASE_ACCURACY)
        return self.constraints.accuracy_floor(base)

    def _base_accuracy(self, study: Study, trial: Trial) -> tuple[float | None, int]:
        """The unpruned model's accuracy: from the study, else wait for the reference trial, else
        (no live reference trial, e.g. plain TPE) evaluate it here. Returns (base, images used)."""
        storage = study._storage
        deadline = time.monotonic() + self._wait_timeout
        while True:
            base = storage.get_study_user_attrs(study._study_id).get(BASE_ACCURACY)
            if base is not None or self.constraints.min_accuracy is not None:
                return base, 0
            fail_stale_trials(study)
            live = [
                t for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if t.number != trial.number and t.user_attrs.get("phase") == "reference"
            ]
            if not live:
                correct = seen = 0
                for c, n in self.iter_batches({}):
                    correct, seen = correct + c, seen + n
                base = correct / seen
                if storage.get_study_user_attrs(study._study_id).get(BASE_ACCURACY) is None:
                    storage.set_study_user_attr(study._study_id, BASE_ACCURACY, base)
                return base, seen
            if time.monotonic() > deadline:
                raise _Interrupted(
                    f"waited {self._wait_timeout:g} s for reference trial {live[0].number} to finish"
                )
            time.sleep(0.2)

    def _cut(
        self, trial: Trial, cut: Cut, attrs: dict[str, Any], floor: float | None, seen: int, started: float
    ) -> None:
        """Record a cut trial's constraints and reason, then end it as PRUNED."""
        memory = attrs.get("constraint_memory")
        accuracy = None
        if cut.kind != "memory" and floor is not None and cut.accuracy_bound is not None:
            accuracy = self.constraints.floor_violation(floor, cut.accuracy_bound, self.eval_images)
            trial.set_constraint("accuracy", accuracy)
        if memory is not None:
            trial.set_constraint("memory", memory)
        if attrs.get("constraint_flops") is not None:
            trial.set_constraint("flops", attrs["constraint_flops"])
        attrs.update(
            constraint_accuracy=accuracy, feasible=False, cut_reason=cut.reason, images_evaluated=seen,
            images_decided=seen,
            accuracy_upper_bound=cut.accuracy_bound, wall_time=round(time.perf_counter() - started, 4),
        )
        self._record(trial, attrs)
        raise optuna.TrialPruned(cut.reason)

    def _fail(
        self, trial: Trial, reason: str, attrs: dict[str, Any], started: float, interrupted: bool = False
    ) -> float | tuple[float, float]:
        """Return NaN so Optuna records FAIL (and keeps optimizing), with the reason attached."""
        attrs.update(fail_reason=reason, feasible=False, wall_time=round(time.perf_counter() - started, 4))
        if interrupted:
            attrs["interrupted"] = True
        self._record(trial, attrs)
        optuna.logging.get_logger(__name__).warning(f"Trial {trial.number} failed: {reason}")
        return math.nan if self.single_objective else (math.nan, math.nan)

    @staticmethod
    def _record(trial: Trial, attrs: Mapping[str, Any]) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


def _pack(bits: Sequence[bool]) -> str:
    """Per-image correctness as ``<count>:<hex of the bits packed 8 a byte>`` (a study attribute)."""
    import numpy as np

    return f"{len(bits)}:{np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()}"


def _unpack(text: str) -> list[bool]:
    import numpy as np

    count, _, data = text.partition(":")
    return [bool(x) for x in np.unpackbits(np.frombuffer(bytes.fromhex(data), dtype=np.uint8))[: int(count)]]


class _Interrupted(Exception):
    """A failure that says nothing about the configuration (the walk will retry it)."""


def _state_sha256(model: Any) -> str:
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class PruningObjective(RateObjective):
    """The Optuna objective for PrimeSVT on a real model.

    Built from a checkpoint (model, data spec and all) or from a model and data. Each trial
    suggests ``rate:<layer>`` for every prunable layer (largest first), prunes with the engine
    (L2-norm filter removal), evaluates on a fixed seeded subset of the validation split, and
    returns ``(accuracy, model_bytes)`` (``directions = ["maximize", "minimize"]``), or the memory
    saving with ``single_objective=True``. Model bytes are the engine's exact prediction.

    Example:

        .. code-block:: python

            import optuna
            from primesvt_optuna.plugin import PrioritizedSampler, PruningObjective
            from primesvt_optuna.checkpoint import shipped

            objective = PruningObjective(shipped("digits-2-64"), max_accuracy_drop=0.03,
                                         memory_target=0.4, eval_images=300)
            study = optuna.create_study(directions=objective.directions, sampler=PrioritizedSampler())
            study.optimize(objective)

    Args:
        checkpoint: a checkpoint path or the name of a shipped baseline.
        model: instead of a checkpoint, an unpruned model (``data`` then required). The
            objective prunes a copy: the caller's model keeps its device and mode, and changing
            it later does not change the study.
        data: ``Splits`` or a data spec; with a checkpoint, a partial spec (e.g. ``{"path": ...}``)
            overrides the checkpoint's own.
        max_accuracy_drop, min_accuracy: the accuracy constraint (fraction; one of the two).
        memory_target, memory_budget: the memory constraint (fraction to save, or bytes / "2MB").
        grid: rates each layer may take, besides 0.
        eval_images: size of the seeded validation subset that drives the search (None: all).
        batch_size, first_batch: the evaluation's batch schedule. Images are evaluated in a seeded
            random order (the same for every trial of the study, from ``seed``) in batches of
            ``first_batch``, then batches that double the images seen, up to ``batch_size``
            (32, 32, 64, 128, 256, 256, ...: looks after 32, 64, 128, 256, 512 images), so the
            early cut can end a hopeless trial after a few tens of images; ``first_batch=None``
            evaluates the subset in its own order in plain ``batch_size`` batches. The accuracy
            is the same either way (per-image predictions do not depend on the batch; checked on
            CPU).
        pruner: the early cut (default: memory pre-check and exact accuracy cut); None: no cut.
        robustness_cache: ``{(layer, rate): accuracy}`` from a cached robustness table measured on
            the same evaluation subset; single-layer trials it covers are filled without evaluation.
        accept: ``"confirmed"`` (default): the search steps on ``1 - holdout`` of the evaluation
            images by the point rule, and the delivery is confirmed on the other ``holdout`` at
            ``confidence`` (see the module docs and :mod:`primesvt_optuna.acceptance`);
            ``"point"`` (the paper's rule) accepts a configuration whose measured accuracy meets the
            floor on every evaluation image; ``"confident"`` only when its one-sided lower
            confidence bound at ``confidence`` does (``interval``: ``"clopper-pearson"``, exact
            binomial, or ``"wilson"``).
        holdout: under confirmed acceptance, the share of the evaluation images held back for
            confirmation (stratified by class, whole source images, seeded by ``seed``); ``"auto"``
            (default): pruning alone, all but 200 of them, at least half and at most 0.8; with a
            precision grid, half (:func:`~primesvt_optuna.acceptance.confirm.auto_holdout`).
        search_drop: under confirmed acceptance, the drop the search steps by: ``"budget"``
            (default: ``max_accuracy_drop``) or ``"anticipate"`` (the largest drop the held-back
            images could still confirm if lost again there, e.g. one image of 180 for a 3-point
            budget; :func:`~primesvt_optuna.acceptance.confirm.anticipated_drop`).
        recalibrate_bn: before evaluating a pruned configuration, re-estimate the BatchNorm
            statistics on this many training images (EagleEye's adaptive BN; seeded by ``seed``,
            batches of 64, see :mod:`primesvt_optuna.pruning.recalibrate`); 0 (default): off;
            ``"auto"`` (the command line's and study configs' default): on 512 images when a probe
            before the study (every layer at the grid rate nearest 0.3, search images, without and
            with it) shows it lifts accuracy by a point, its images charged to the reference trial.
            The unpruned reference is evaluated as it is. Recorded on the study; ``primesvt export``
            applies it identically.
        recalibrate_rule: ``"relative"``: the trained statistics move only by what the
            configuration changed against the unpruned model recalibrated on the same images (once
            per study, its images charged to the reference trial); ``"absolute"``: replaced by the
            recalibrated ones (EagleEye's rule); ``"auto"`` (default): relative when pruning only;
            with a precision grid, relative where recalibrating the unpruned model itself changes
            5% of its predictions on the search images, measured before the study
            (:meth:`_probe_rule`). See :mod:`primesvt_optuna.pruning.recalibrate`.
        flops_target: an optional second resource constraint: the fraction of the FLOPs per image
            (``torch.utils.flop_counter``'s count; neurons and elementwise operators are not
            counted, see :mod:`primesvt_optuna.pruning.flops`) to save, like ``memory_target``.
            Predicted exactly without building the model, set as the ``flops`` constraint and
            recorded as ``flops``, ``flops_saving``, ``constraint_flops``; ``feasible`` needs it.
            The PrimeSVT walk still steers by memory; the FLOPs constraint decides feasibility
            (``study.best_trials``, constraint-aware samplers such as NSGA-II and TPE).
        precisions: the weight precisions a layer may take (any of ``float``, ``int8``, ``int4``,
            ``int2``); float alone (the default) is pruning only, the paper's setting. Otherwise
            each trial also suggests ``precision:<layer>``, the model is quantized per layer
            (:func:`primesvt_optuna.precision.quantize`, per-channel symmetric, max-abs clip) and
            evaluated dequantized, and its bytes count the packed integers and scales exactly.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        model: Any = None,
        data: Any = None,
        max_accuracy_drop: float | None = 0.03,
        min_accuracy: float | None = None,
        memory_target: float | None = None,
        memory_budget: int | str | None = None,
        grid: Sequence[float] = DEFAULT_GRID,
        eval_images: int | None = None,
        batch_size: int = 256,
        first_batch: int | None = DEFAULT_FIRST_BATCH,
        device: str = "cpu",
        seed: int = 0,
        pruner: ConstraintPruner | None = ConstraintPruner(),
        single_objective: bool = False,
        prune_embed: bool = False,
        robustness_cache: Mapping[tuple[str, float], float] | None = None,
        wait_timeout: float = 3600.0,
        accept: str = "confirmed",
        confidence: float = 0.95,
        interval: str = "clopper-pearson",
        holdout: float | str = DEFAULT_HOLDOUT,
        recalibrate_bn: int = 0,
        recalibrate_rule: str = "auto",
        flops_target: float | None = None,
        precisions: Sequence[str] = FLOAT_ONLY,
        search_drop: str = "budget",
    ) -> None:
        from ..data import Splits, check_fits, load_splits
        from ..pruning import Engine
        from ..training import torch_device

        torch_device(device)  # an unknown device fails here, before loading anything, not in every trial
        if (checkpoint is None) == (model is None):
            raise PrimeSVTError("give either a checkpoint or a model (with data)")
        self.checkpoint_path: str | None = None
        if checkpoint is not None:
            from ..checkpoint import checkpoint_sha256, load_checkpoint, resolve_checkpoint

            path = resolve_checkpoint(checkpoint)
            model, ckpt = load_checkpoint(path)
            if data is None or isinstance(data, Mapping):  # a partial spec overrides the checkpoint's
                data = {**ckpt["data"], **(data or {})}
            identity = checkpoint_sha256(path)
            self.checkpoint_path = str(Path(path).resolve())
        else:
            if data is None:
                raise PrimeSVTError("a model needs its data: pass data=Splits or a data spec")
            identity = f"state:{_state_sha256(model)}"
            model = copy.deepcopy(model)
        self.data_spec: dict[str, Any] | None = None if isinstance(data, Splits) else dict(data)
        self.splits = data if isinstance(data, Splits) else load_splits(data)
        if checkpoint is not None:
            check_fits(self.splits, ckpt["model_config"], str(path), (self.data_spec or {}).get("img_size"))
        self.engine = Engine(model.cpu().eval(), prune_embed=prune_embed)
        quantizing = tuple(check_precisions(precisions)) != FLOAT_ONLY  # the base class records the grid later
        if accept == "confirmed":
            images = len(self.splits.val) if eval_images is None else min(int(eval_images), len(self.splits.val))
            self.holdout = resolve_holdout(holdout, images, quantizing)
        self.split = {"eval_images": eval_images, "holdout": self.holdout if accept == "confirmed" else 0.0,
                      "seed": int(seed)}
        self.eval_set, self.confirm_set = evaluation_parts(self.splits.val, **self.split)
        self.split.update(search_images=len(self.eval_set), confirm_images=self.confirm_images)
        self.batch_size = batch_size
        self.first_batch = None if first_batch is None or first_batch >= batch_size else int(first_batch)
        batch_schedule(1, self.batch_size, self.first_batch)  # validates both sizes
        self.eval_order_seed = int(seed)
        # the seeded evaluation order, identical for every trial (and process) of a study
        self.eval_order: list[int] | None = None if self.first_batch is None else torch_randperm(
            len(self.eval_set), self.eval_order_seed)
        self.device = device
        auto = recalibrate_bn == "auto"
        if not auto and (recalibrate_bn is None or isinstance(recalibrate_bn, bool) or not isinstance(
                recalibrate_bn, int) or recalibrate_bn < 0):
            raise PrimeSVTError(f"recalibrate_bn is a number of training images (0: off) or 'auto', got {recalibrate_bn!r}")
        self.recalibrate_seed = int(seed)
        from ..pruning.recalibrate import RULES

        if recalibrate_rule not in ("auto", *RULES):
            raise PrimeSVTError(f"recalibrate_rule must be one of auto, {', '.join(RULES)}, got {recalibrate_rule!r}")
        self.recalibrate_rule = recalibrate_rule
        self._relative_reference: Any = None
        self._reference_lock = threading.Lock()  # trials of one process share the one reference
        self.recalibrate_bn = AUTO_RECALIBRATION_IMAGES if auto else int(recalibrate_bn)
        self.recalibration_probe: dict[str, Any] | None = None
        probe: dict[str, Any] = {}
        if self.recalibrate_bn and recalibrate_rule == "auto":
            if not quantizing:
                self.recalibrate_rule = "relative"  # pruning only: relative wherever it was measured
            else:
                probe = self._probe_rule()
        if auto:
            found = self._probe_recalibration(grid)
            probe = {**probe, **found, "images": probe.get("images", 0) + found["images"]}
            self.recalibrate_bn = self.recalibrate_bn if found["on"] else 0
        self.recalibration_probe = probe or None
        if flops_target is not None:
            from ..pruning.flops import FlopsPredictor

            if isinstance(flops_target, bool) or not 0.0 <= float(flops_target) < 1.0:
                raise PrimeSVTError(f"flops_target is the fraction of FLOPs to save and must lie in [0, 1), "
                                    f"got {flops_target!r}")
            self.flops_target = float(flops_target)
            self.flops = FlopsPredictor(self.engine, tuple(self.eval_set[0][0].shape))
            self.base_flops = self.flops.base_flops
        constraints = Constraints.from_dict({
            "max_accuracy_drop": max_accuracy_drop if min_accuracy is None else None,
            "min_accuracy": min_accuracy, "memory_target": memory_target, "memory_budget": memory_budget,
            "accept": accept, "confidence": confidence, "interval": interval,
        })
        constraints = with_search_drop(constraints, search_drop, self.confirm_images)
        table = self.engine.table
        super().__init__(
            layers=list(zip(table["layer"], table["params"])), base_bytes=self.engine.base_bytes,
            constraints=constraints, grid=grid, pruner=pruner, single_objective=single_objective,
            identity=identity, robustness_cache=robustness_cache, wait_timeout=wait_timeout, precisions=precisions,
        )
        self.check_confirmation()

    def study_attrs(self) -> dict[str, Any]:
        # prune_embed first: it changes the layer table, and the refusal should name the cause
        return {"prune_embed": self.engine.prune_embed, **super().study_attrs(), "eval_images": self.eval_images,
                "data": self.data_spec, "recalibrate_bn": self.recalibration_settings,
                "flops_target": self.flops_target}

    def predict_flops(self, rates: Mapping[str, float]) -> int:
        return self.flops.predict(rates)

    @property
    def recalibration_settings(self) -> dict[str, int] | None:
        """What the study records about BatchNorm recalibration (None: off); export reads it."""
        if not self.recalibrate_bn:
            return None
        from ..pruning.recalibrate import BATCH_SIZE

        settings = {"images": self.recalibrate_bn, "batch_size": BATCH_SIZE, "seed": self.recalibrate_seed}
        return {**settings, "rule": "relative"} if self.recalibrate_rule == "relative" else settings

    def _probe_recalibration(self, grid: Sequence[float]) -> dict[str, Any]:
        """``recalibrate_bn="auto"``: whether BatchNorm recalibration pays on this model, measured
        once before the study (the same in every worker: deterministic). Every layer pruned at the
        grid rate nearest ``AUTO_RECALIBRATION_RATE`` is evaluated on the search images without and with recalibration;
        it is on when it lifts that accuracy by at least ``AUTO_RECALIBRATION_GAIN``."""
        from ..training import evaluate

        rate = min(normalize_grid(grid), key=lambda r: abs(r - AUTO_RECALIBRATION_RATE))
        rates = {name: rate for name in self.engine.layers}
        plain = evaluate(self.engine.prune(rates).to(self.device), self.eval_set, batch_size=self.batch_size,
                         device=self.device)
        model = self.engine.prune(rates).to(self.device)
        had_reference = self._relative_reference is not None  # measured by the rule's probe: charged there
        used = self.recalibrate(model, rates)
        recalibrated = evaluate(model, self.eval_set, batch_size=self.batch_size, device=self.device)
        unpruned = self._relative_reference.images if self._relative_reference is not None and not had_reference else 0
        return {"rate": rate, "plain": plain, "recalibrated": recalibrated, "on": recalibrated - plain >= AUTO_RECALIBRATION_GAIN,
                "images": 2 * len(self.eval_set) + used + unpruned}

    def _probe_rule(self) -> dict[str, Any]:
        """``recalibrate_rule="auto"`` with a precision grid: the relative rule where recalibrating
        the *unpruned* model (the absolute rule's step) changes at least
        ``AUTO_RELATIVE_DISAGREEMENT`` of its predictions on the search images, the absolute rule
        otherwise; measured once before the study, deterministic, charged to the reference trial.
        Every disagreeing image widens a confirmation's paired bound, and under the absolute rule
        that noise lands on every configuration, however light (digits-hard-2-64: about 1
        prediction in 10); where it is small, the absolute rule recovers more of a heavily
        quantized model (the AQ4SViT-style search on digits-8-64 confirmed 87.8% under it, 55.3%
        under the relative rule). Pruning alone takes the relative rule without a probe: with it
        the default confirmed on more seeds in five of the six pruning cells of the comparison and
        on as many in the sixth (docs/results.md)."""
        import torch

        from ..training import iter_correct

        reference = self.relative_reference()  # the unpruned model, recalibrated by the absolute rule

        def correct(model: Any) -> Any:
            return torch.cat(list(iter_correct(model.to(self.device), self.eval_set, batch_size=self.batch_size,
                                               device=self.device)))

        plain, recalibrated = correct(copy.deepcopy(self.engine.model)), correct(reference.model)
        n = len(plain)
        disagreement = int((plain != recalibrated).sum()) / n
        self.recalibrate_rule = "relative" if disagreement >= AUTO_RELATIVE_DISAGREEMENT else "absolute"
        if self.recalibrate_rule == "relative":
            self._relative_reference = reference
        return {"rule": self.recalibrate_rule, "disagreement": disagreement, "unpruned": int(plain.sum()) / n,
                "unpruned_recalibrated": int(recalibrated.sum()) / n,
                "images": 2 * len(self.eval_set) + reference.images}

    def recalibration_images(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> int:
        # a quantized model's statistics shift as a pruned one's do: recalibrated alike
        if not self.recalibrate_bn or not (any(rate > 0 for rate in rates.values()) or precisions):
            return 0
        return min(self.recalibrate_bn, len(self.splits.train))

    def recalibrate(self, model: Any, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> int:
        """Adaptive BN on a pruned model, in place, as the study records it (not the reference)."""
        if not self.recalibration_images(rates, precisions):
            return 0
        from ..pruning.recalibrate import recalibrate_bn
        from ..pruning.structure import structure_of

        relative = None
        if self.recalibrate_rule == "relative":
            with self._reference_lock:
                if self._relative_reference is None:
                    self._relative_reference = self.relative_reference()
            relative = self._relative_reference.statistics(structure_of(model))
        return recalibrate_bn(model, self.splits.train, images=self.recalibrate_bn, seed=self.recalibrate_seed,
                              device=self.device, relative_to=relative)

    def relative_reference(self) -> Any:
        """The unpruned model recalibrated as every configuration is (relative rule)."""
        from ..pruning.recalibrate import RelativeReference

        return RelativeReference(self.engine.model, self.splits.train, images=self.recalibrate_bn,
                                 seed=self.recalibrate_seed, device=self.device)

    @property
    def reference_recalibration_images(self) -> int:
        """What the relative rule's one recalibration of the unpruned model costs (charged once,
        to the reference trial; within the probe's images when the probe ran)."""
        if not self.recalibrate_bn or self.recalibrate_rule != "relative" or self.recalibration_probe is not None:
            return 0
        return min(self.recalibrate_bn, len(self.splits.train))

    def informative_attrs(self) -> dict[str, Any]:
        # checkpoint: where export finds the baseline (hash checked); split: how export and
        # evaluate rebuild the search and confirmation parts (evaluation_parts); what the automatic
        # recalibration measured (the reference trial is charged its images)
        return {**super().informative_attrs(), "checkpoint": self.checkpoint_path, "split": self.split,
                **({"recalibration_probe": self.recalibration_probe} if self.recalibration_probe else {})}

    def schedule_attrs(self) -> dict[str, Any]:
        return {**super().schedule_attrs(), "order_seed": None if self.eval_order is None else self.eval_order_seed}

    def predict_bytes(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> int:
        if precisions:
            from ..precision import predict_bytes

            return predict_bytes(self.engine, rates, precisions)
        return self.engine.predict_bytes(rates)

    def precision_drift(self) -> dict[str, dict[str, float]]:
        import torch

        from ..precision.drift import membrane_drift

        order = self.eval_order or list(range(len(self.eval_set)))
        images = torch.stack([self.eval_set[i][0] for i in order[:DRIFT_IMAGES]])
        return membrane_drift(self.engine, images, self.precisions)

    def build(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None) -> Any:
        """The model a trial evaluates: pruned at ``rates`` (a copy even unpruned: concurrent
        trials must not share neuron state), quantized at ``precisions``, BatchNorm recalibrated
        when the study does, on the objective's device."""
        model = self.engine.prune(rates) if rates else copy.deepcopy(self.engine.model)
        if precisions:
            from ..precision import quantize

            model = quantize(model, precisions, engine=self.engine)[0]
        self.recalibrate(model.to(self.device), rates, precisions)
        return model.to(self.device)

    @property
    def eval_images(self) -> int:
        return len(self.eval_set)

    @property
    def confirm_images(self) -> int:
        return 0 if self.confirm_set is None else len(self.confirm_set)

    def confirm_correct(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None
                        ) -> Sequence[bool]:
        import torch

        from ..training import iter_correct

        model = self.build(rates, precisions)
        parts = list(iter_correct(model, self.confirm_set, batch_size=self.batch_size, device=self.device))
        return torch.cat(parts).tolist()

    def iter_batches(self, rates: Mapping[str, float], precisions: Mapping[str, str] | None = None
                     ) -> Iterator[tuple[int, int]]:
        from ..training import iter_eval

        model = self.build(rates, precisions)
        if self.eval_order is None:
            yield from iter_eval(model, self.eval_set, batch_size=self.batch_size, device=self.device)
        else:
            yield from iter_schedule(model, self.eval_set, self.eval_order, self.schedule, self.device)


def evaluation_parts(val: Any, eval_images: int | None, holdout: float, seed: int) -> tuple[Any, Any | None]:
    """The search part and the confirmation part (None when ``holdout`` is 0) of a validation
    split: a seeded subset of ``eval_images`` images (None: all), of which ``holdout`` is held back
    (:func:`primesvt_optuna.acceptance.split.search_confirm`). The study records these arguments
    (``primesvt:split``, with the parts' sizes), so export rebuilds the same parts."""
    from ..acceptance.split import search_confirm
    from ..data import subset

    return search_confirm(subset(val, eval_images, seed), holdout, seed)


def torch_randperm(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` (torch's generator: the same on every platform)."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def iter_schedule(model: Any, dataset: Any, order: Sequence[int], sizes: Sequence[int],
                  device: str = "cpu") -> Iterator[tuple[int, int]]:
    """``(correct_in_batch, batch_size)`` over ``dataset`` taken in ``order``, in batches of
    ``sizes``: ``training.iter_eval`` with a batch schedule (eval mode, no autograd, neuron state
    reset after every batch)."""
    from ..training import iter_eval

    batches, start = [], 0
    for n in sizes:
        batches.append(list(order[start:start + n]))
        start += n
    return iter_eval(model, dataset, device=device, batches=batches)
