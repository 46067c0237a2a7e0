"""The machinery every PrimeSVT sampler shares, apart from any policy: claims written to trials,
state derived from storage, waiting instead of duplicating work, and stale-worker detection.

Nothing here keeps state in memory that the study does not also hold. Each trial records
``primesvt:worker`` (host, PID, process start; the storages of ``primesvt_optuna.storage`` write it
in the transaction that creates the trial) and then ``primesvt:claim`` (the configuration it
evaluates) as trial system attributes, and ``primesvt:outcome`` once the objective has returned.
From these, any process computes the same picture of the study:

* a configuration is *done* when a finished trial evaluated it (accepted when its ``accuracy``
  constraint is <= 0; rejected when it was infeasible, cut, or failed with a recorded reason);
* it is *held* while a running trial claims it;
* a trial decides only after every lower-numbered running trial has decided, and takes the first
  configuration that is neither done nor held. Lower numbers go first, so two workers never take
  the same configuration, and one or many workers commit the same rates.

A trial that can no longer finish (its worker was killed) is failed by whichever process reads
the study next (see ``primesvt_optuna.storage.stale_reason``), which frees its configuration.

A policy is a subclass that defines ``_next(study, snapshot)``: the next ``Candidate`` to
evaluate, or ``Wait``, ``Done`` or ``Free``. Everything else lives here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from ... import faults
from ...errors import PrimeSVTError
from ...storage import (
    STALE, TrialTakenOver, fail_heartbeat_stale, fail_if_stale, keep_alive, set_trial_attrs, unrecorded_limit,
    worker_info,
)
from ...acceptance.confirm import CONFIRM, KEY_PREFIX, RUNGS_ATTR, confirm_key, ladder, safe_steps, study_rungs
from ...precision.search import bits_of, is_precision, name_of
from ..constraints import (
    CLAIM, DEFAULT_GRID, OUTCOME, RATE_PREFIX, STUDY_PREFIX, WORKER, Constraints, layer_of, normalize_grid,
)

_logger = optuna.logging.get_logger(__name__)

FREE, HELD, ACCEPTED, REJECTED = "free", "held", "accepted", "rejected"

_HEARTBEAT_CHECK = 5.0  # longest pause between two heartbeat-staleness checks while waiting


def rates_key(rates: Mapping[str, float]) -> str:
    """The identity of a configuration: its non-zero entries, sorted and rounded (rates; with a
    precision grid also ``precision:<layer>`` bit widths, float being 0, so a float-only
    configuration has the key it had before precisions existed)."""
    items = sorted((p, round(float(r), 6)) for p, r in rates.items() if round(float(r), 6) != 0.0)
    return "rates:" + json.dumps(items, separators=(",", ":"))


def accuracy_outcome(trial: FrozenTrial) -> bool | None:
    """True: the configuration met the accuracy constraint; False: rejected; None: no outcome.

    Cut (PRUNED) trials and trials that failed while being evaluated (NaN, an exception) reject
    their rate; a trial that died or was interrupted before an outcome was recorded has none.
    """
    if trial.state == TrialState.COMPLETE:
        violation = trial.constraints.get("accuracy")
        return violation is None or violation <= 0.0
    if trial.state == TrialState.PRUNED:
        return False
    if trial.state == TrialState.FAIL:
        if trial.user_attrs.get("interrupted") or STALE in trial.system_attrs:
            return None
        if "fail_reason" in trial.user_attrs or OUTCOME in trial.system_attrs:
            return False
    return None


def memory_met(trial: FrozenTrial | None) -> bool | None:
    """Whether the trial's configuration meets the memory target; None: no trial, or no target."""
    violation = None if trial is None else trial.constraints.get("memory")
    return None if violation is None else violation <= 0.0


def images_spent(trial: FrozenTrial) -> int:
    """The images a trial passed forward: evaluated, and BatchNorm recalibration's."""
    return int(trial.user_attrs.get("images_evaluated") or 0) + int(trial.user_attrs.get("images_recalibrated") or 0)


@dataclass(frozen=True)
class Candidate:
    """One configuration to evaluate, as claimed on a trial."""

    key: str
    phase: str
    layer: str | None = None  # parameter name of the layer this trial serves
    rate: float | None = None
    rates: dict[str, float] = field(default_factory=dict)
    uniform: float | None = None  # UniformSampler: the rate of every layer
    complete: bool = False  # a complete configuration: may be cut for memory before evaluation
    rung: int | None = None  # a confirmation: its rung of the ladder (None: the unpruned model)

    def claim(self) -> dict[str, Any]:
        return {
            "key": self.key, "phase": self.phase, "layer": self.layer, "rate": self.rate,
            "rates": self.rates, "uniform": self.uniform, "complete": self.complete,
            **({"rung": self.rung} if self.rung is not None else {}),
        }


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class Done:
    reason: str
    failed: bool = False  # stopped by an error the user must fix, not by the policy's end


@dataclass(frozen=True)
class Free:
    """No rate parameters in this study: the trial is left to the fallback sampler."""


Decision = Candidate | Wait | Done | Free


def trial_key(trial: FrozenTrial, is_rate: Callable[[str], bool]) -> str | None:
    """The configuration a trial evaluated: its claim's key, or (a trial no PrimeSVT sampler
    planned, e.g. added by hand) the key of its rate parameters; None for an idle trial."""
    claim = trial.system_attrs.get(CLAIM)
    if claim:
        return claim.get("key")
    rates = {p: config_value(p, v) for p, v in trial.params.items()
             if is_precision(p) or (is_rate(p) and isinstance(v, (int, float)))}
    return rates_key(rates) if rates else None


class FinishedIndex:
    """What the finished trials of one study say, indexed once per trial: a finished trial never
    changes, so each decision reads storage (the state) but reprocesses only the trials that
    finished since the last one. A cache of storage, never state of its own."""

    def __init__(self, key_of: Callable[[FrozenTrial], str | None]) -> None:
        self._key_of = key_of
        self.seen: set[int] = set()
        self.outcomes: dict[str, tuple[FrozenTrial, bool]] = {}  # key -> (lowest-numbered trial, accepted)

    def add(self, trial: FrozenTrial, outcomes: dict[str, tuple[FrozenTrial, bool]] | None = None) -> None:
        """Index a finished trial (into ``outcomes`` instead, for a trial not yet in storage)."""
        target = self.outcomes if outcomes is None else outcomes
        outcome = accuracy_outcome(trial)
        key = self._key_of(trial)
        if key is not None and outcome is not None:
            known = target.get(key)
            if known is None or trial.number < known[0].number:
                target[key] = (trial, outcome)
        if outcomes is None:  # only now: another thread skips a seen trial, so its outcome must be in
            self.seen.add(trial._trial_id)


class Snapshot:
    """The study as one read of storage sees it, from the point of view of trial ``me``
    (``extra``: a finished trial whose state is not written yet, seen as finished)."""

    def __init__(self, trials: Sequence[FrozenTrial], me: int | None, index: FinishedIndex,
                 extra: FrozenTrial | None = None) -> None:
        self.me = me
        self.held: dict[str, int] = {}
        self.undecided: list[int] = []
        running = []
        for t in trials:
            if t._trial_id in index.seen or (extra is not None and t.number == extra.number):
                continue
            if t.state.is_finished():
                index.add(t)
            elif t.state == TrialState.RUNNING and t.number != me:
                running.append(t)
        self._outcomes = index.outcomes
        if extra is not None:
            self._outcomes = dict(index.outcomes)
            index.add(extra, self._outcomes)
        for t in sorted(running, key=lambda t: t.number):
            claim = t.system_attrs.get(CLAIM)
            if claim is None:
                # it may be about to choose: wait for it (until it decides, or a stale check
                # fails it), else both could take one configuration
                if me is None or t.number < me:
                    self.undecided.append(t.number)
            elif claim.get("key"):
                self.held.setdefault(claim["key"], t.number)

    def key(self, key: str) -> str:
        """The stored key of a configuration this snapshot names (itself; a view on top of a base
        adds the base's entries)."""
        return key

    def status(self, key: str) -> str:
        found = self._outcomes.get(key)
        if found is not None:
            return ACCEPTED if found[1] else REJECTED
        return HELD if key in self.held else FREE

    def trial_for(self, key: str) -> FrozenTrial | None:
        found = self._outcomes.get(key)
        return None if found is None else found[0]

    def finished(self) -> list[FrozenTrial]:
        """The finished search evaluations, one per configuration (its lowest-numbered trial);
        confirmations (claim keys ``confirm:...``) are not search evaluations."""
        return [trial for key, (trial, _) in self._outcomes.items() if not key.startswith(KEY_PREFIX)]


class ClaimSampler(BaseSampler):
    """Base of the PrimeSVT samplers: claims, waiting, fallback, settings kept in the study."""

    policy = "claims"

    def __init__(
        self,
        *,
        grid: Sequence[float] = DEFAULT_GRID,
        layer_sizes: Mapping[str, int] | None = None,
        fallback: BaseSampler | None = None,
        seed: int | None = None,
        wait_timeout: float = 3600.0,
        poll_interval: float = 0.2,
        stale_after: float | None = None,
        budget_images: int | None = None,
        budget_trials: int | None = None,
    ) -> None:
        self._grid = normalize_grid(grid)
        for name, value in (("budget_images", budget_images), ("budget_trials", budget_trials)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise PrimeSVTError(f"{name} must be a whole number >= 1, got {value!r}")
        self._budget = {"budget_images": budget_images, "budget_trials": budget_trials}
        if layer_sizes is not None and not layer_sizes:
            raise PrimeSVTError("layer_sizes is empty: give {parameter name: size} for each prunable layer")
        self._layer_sizes = dict(layer_sizes) if layer_sizes is not None else None
        self._seed = seed
        self._fallback = fallback if fallback is not None else RandomSampler(seed=seed)
        self._wait_timeout = wait_timeout
        self._poll = poll_interval
        self._stale_after = stale_after
        # read caches, never state: claims this process wrote (immutable once written), what the
        # finished trials of each study say (immutable once finished), the last read of each study
        # and the objective's study attributes (layer table, trial cost: immutable once written)
        self._claims: dict[int, dict[str, Any]] = {}
        # per study, keyed by the storage object itself (weakly): an id() can be reused by a later
        # storage once the first is freed, and would hand a new study the old one's outcomes
        self._studies: weakref.WeakKeyDictionary[Any, dict[int, _StudyCache]] = weakref.WeakKeyDictionary()

    # ----- what subclasses define -------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that changes which trials run; stored on the study, compared on resume."""
        budget = {k: v for k, v in self._budget.items() if v is not None}  # absent: as before budgets
        return {"policy": self.policy, "grid": list(self._grid), "seed": self._seed,
                "layer_sizes": self._layer_sizes, **budget}

    def _next(self, study: Study, snap: Snapshot) -> Decision:
        raise NotImplementedError

    # ----- Optuna's sampler interface ----------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        faults.hit("created", trial.number)
        self._fallback.before_trial(study, trial)
        try:
            self._claim(study, trial)
        except BaseException as exc:
            # study.ask() fails with the trial already created: fail it, or it would stay
            # RUNNING and undecided, and later trials would wait for it. (Already finished: another
            # process declared it stale while this one stalled; the original error tells why.)
            with contextlib.suppress(UpdateFinishedTrialError, RuntimeError):
                study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"no configuration chosen: {exc}")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            raise

    def _claim(self, study: Study, trial: FrozenTrial) -> None:
        storage = study._storage
        if CLAIM in trial.system_attrs:  # a retried trial keeps the claim it inherited
            storage.set_trial_system_attr(trial._trial_id, WORKER, worker_info())
            self._claims[trial._trial_id] = trial.system_attrs[CLAIM]
            return
        recorded = trial.system_attrs.get(WORKER) or {}
        me = worker_info()
        if any(recorded.get(key) != me[key] for key in ("host", "pidns", "pid", "start")):
            # a storage that did not record it at creation: first thing, since until then the
            # trial shows nothing of its worker and is judged dead after ``unrecorded_limit()``
            try:
                storage.set_trial_system_attr(trial._trial_id, WORKER, me)
            except UpdateFinishedTrialError:
                raise TrialTakenOver(
                    f"trial {trial.number} was failed by another process (no worker record for "
                    f"{unrecorded_limit():g} s) while this worker stalled before its sampler started"
                ) from None
        self.attach(study)
        faults.hit("worker", trial.number)
        fixed = trial.system_attrs.get("fixed_params")
        if fixed is not None:  # enqueued by hand: record what it evaluates, so nobody repeats it
            rates = {p: config_value(p, v) for p, v in fixed.items() if self._is_rate(p) or is_precision(p)}
            phase = trial.user_attrs.get("phase") or ("reference" if not any(rates.values()) else "search")
            self._write_claim(study, trial, Candidate(rates_key(rates), phase, rates=rates, complete=True))
            return
        decision = self._decide(study, trial)
        if isinstance(decision, Candidate):
            self._write_claim(study, trial, decision)
            faults.hit("claimed", trial.number)
        elif isinstance(decision, Free):
            self._set_claim(study, trial, {"key": None, "phase": None})
        else:
            reason = f"nothing left to evaluate: {decision.reason}"
            self._set_claim(study, trial, {"key": None, "phase": "idle", "reason": reason})
            storage.set_trial_user_attr(trial._trial_id, "phase", "idle")
            storage.set_trial_user_attr(trial._trial_id, "cut_reason", reason)
            self._stop(study)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        claim = self._claims.get(trial._trial_id)
        if claim is None:  # e.g. the sampler of another process planned it: read it once
            claim = self._claims[trial._trial_id] = trial.system_attrs.get(CLAIM) or {}
        precision = is_precision(param_name)
        if not (precision or self._is_rate(param_name)) or not claim or claim.get("phase") is None:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        if claim["phase"] == "idle":
            raise optuna.TrialPruned(claim["reason"])
        if precision:
            return _fit_precision(param_name, claim.get("rates", {}).get(param_name, 0), param_distribution)
        rate = claim["uniform"] if claim.get("uniform") is not None else claim.get("rates", {}).get(param_name, 0.0)
        return _fit(param_name, float(rate), param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        if state == TrialState.FAIL:  # the objective returned or raised: a rejected rate, not a crash
            study._storage.set_trial_system_attr(trial._trial_id, OUTCOME, state.name)
        faults.hit("after_trial", trial.number)
        self._fallback.after_trial(study, trial, state, values)
        claim = self._claims.pop(trial._trial_id, None)
        if claim is None:
            claim = trial.system_attrs.get(CLAIM) or {}
        if not claim.get("key"):
            return
        # Done on this process's last read plus this outcome means Done on any later read (a walk
        # path depends only on outcomes, which never change), so no storage read is needed here;
        # a walk that other workers finished is noticed by the next trial instead.
        finished = copy.copy(trial)
        finished.state = state
        finished.system_attrs = {**trial.system_attrs, **({OUTCOME: state.name} if state == TrialState.FAIL else {})}
        trials = self._cache(study).last_read
        if trials is None:
            trials = self._read(study)
        decision = self._decision(study, self._snapshot(study, trials, None, extra=finished))
        if isinstance(decision, Done):
            (_logger.warning if decision.failed else _logger.info)(f"PrimeSVT {self.policy} finished: {decision.reason}.")
            self._stop(study)

    # ----- public helpers -----------------------------------------------------------------------
    def is_exhausted(self, study: Study) -> bool:
        """True when the policy has nothing left to evaluate in ``study`` (within its budget)."""
        trials = self._read(study)
        return isinstance(self._budgeted(study, self._snapshot(study, trials, None), trials, -1), Done)

    # ----- internals ----------------------------------------------------------------------------
    def _decision(self, study: Study, snap: Snapshot) -> Decision:
        """The policy's next step, unless the unpruned reference failed: every configuration is
        judged against it, so the study stops rather than evaluate (and fail) everything else."""
        reference = snap.trial_for(rates_key({}))
        if reference is not None and reference.state == TrialState.FAIL:
            reason = reference.user_attrs.get("fail_reason") or "no reason recorded"
            return Done(f"the unpruned reference, trial {reference.number}, failed ({reason}): "
                        "fix that and start a new study", failed=True)
        decision = self._next(study, snap)
        if isinstance(decision, Done) and not decision.failed and (constraints := self._confirming(study)):
            return self._confirmation(study, snap, constraints, decision)
        return decision

    def _confirming(self, study: Study) -> Constraints | None:
        """The study's constraints when its acceptance rule is ``confirmed``, else None."""
        recorded = self._written_attr(study, "constraints")
        if not recorded or recorded.get("accept") != "confirmed":
            return None
        return Constraints.from_dict(recorded)

    def _confirmation(self, study: Study, snap: Snapshot, constraints: Constraints, searched: Done) -> Decision:
        """After the policy's search: the unpruned model, then the ladder's rungs, on the held-back
        images (``primesvt_optuna.acceptance.confirm``), one at a time, stopping at the first rung
        that fails."""
        if self._written_attr(study, "base_accuracy") is None:
            return searched  # no reference accuracy: nothing was searched
        rungs = ladder(snap.finished(), _claimed_rates, self._rungs(study),
                       safe_steps(study._storage.get_study_user_attrs(study._study_id)))
        steps = [({}, None), *((r.rates, r.number) for r in rungs)]
        for rates, rung in steps:
            key = confirm_key(rates_key(rates))
            status = snap.status(key)
            if status == FREE:
                return Candidate(key, CONFIRM, rates=rates, rung=rung)
            if status == HELD:
                return Wait(f"the confirmation of {'the unpruned model' if rung is None else f'rung {rung}'}")
            if status == REJECTED:
                if rung is None:
                    return Done("the unpruned model's confirmation failed", failed=True)
                break
        return Done(f"{searched.reason}; confirmation done")

    def _is_rate(self, param: str) -> bool:
        return param.startswith(RATE_PREFIX) or (self._layer_sizes is not None and param in self._layer_sizes)

    def _snapshot(self, study: Study, trials: Sequence[FrozenTrial], me: int | None,
                  extra: FrozenTrial | None = None) -> Snapshot:
        cache = self._cache(study)
        if cache.index is None:
            cache.index = FinishedIndex(lambda t: trial_key(t, self._is_rate))
        return Snapshot(trials, me, cache.index, extra)

    def _read(self, study: Study) -> list[FrozenTrial]:
        trials = self._cache(study).last_read = study._storage.get_all_trials(study._study_id, deepcopy=False)
        return trials

    @staticmethod
    def _stop(study: Study) -> None:
        try:
            study.stop()
        except RuntimeError:  # ask-and-tell outside optimize(): nothing to stop
            pass

    def attach(self, study: Study) -> None:
        """Record this sampler's settings on ``study``; refuse a study run with other settings."""
        cache = self._cache(study)
        if cache.checked:
            return
        settings = self.settings()
        write_study_attrs(study, {
            "policy": settings["policy"], "grid": settings["grid"], "seed": settings["seed"], "sampler": settings,
        })
        cache.checked = True

    def _set_claim(self, study: Study, trial: FrozenTrial, claim: dict[str, Any]) -> None:
        study._storage.set_trial_system_attr(trial._trial_id, CLAIM, claim)
        self._claims[trial._trial_id] = claim

    def _write_claim(self, study: Study, trial: FrozenTrial, candidate: Candidate) -> None:
        claim = candidate.claim()
        layer = layer_of(candidate.layer) if candidate.layer else None
        user = {"phase": candidate.phase, "layer": layer, "rate": candidate.rate}
        if candidate.phase == CONFIRM:
            user.update(confirm_key=candidate.key, rung=candidate.rung)
        set_trial_attrs(study._storage, trial._trial_id, {CLAIM: claim}, user)
        self._claims[trial._trial_id] = claim

    def _decide(self, study: Study, trial: FrozenTrial) -> Decision:
        """Wait until every lower-numbered running trial has decided, then take the first free
        candidate; with none free but outcomes pending, wait. Waiting ``wait_timeout`` seconds
        with no trial finishing meanwhile is an error naming the trial waited on."""
        delay = self._poll / 4
        next_heartbeat_check = time.monotonic()
        grace = getattr(getattr(study._storage, "_backend", study._storage), "grace_period", None)
        check_every = min(_HEARTBEAT_CHECK, grace / 3) if grace else _HEARTBEAT_CHECK
        unrecorded = unrecorded_limit()
        progress, deadline = -1, 0.0
        while True:
            trials = self._read(study)
            if fail_if_stale(study, trials, self._stale_after, unrecorded=unrecorded):
                continue
            snap = self._snapshot(study, trials, trial.number)
            if len(self._cache(study).index.seen) != progress:  # a trial finished: the clock restarts
                progress, deadline = len(self._cache(study).index.seen), time.monotonic() + self._wait_timeout
            if snap.undecided:
                awaited, reason = snap.undecided[0], f"trial {snap.undecided[0]} to choose its configuration"
            else:
                decision = self._budgeted(study, snap, trials, trial.number)
                if not isinstance(decision, Wait):
                    return decision
                awaited, reason = min(snap.held.values(), default=None), decision.reason
            if time.monotonic() > deadline:
                raise PrimeSVTError(_gave_up(trial.number, self._wait_timeout, reason, awaited, trials))
            # Optuna beats and checks heartbeats only around the objective: while planning, this
            # trial must show it is alive, and dead trials of other hosts must be failed here.
            keep_alive(study, trial._trial_id)
            if time.monotonic() >= next_heartbeat_check:
                next_heartbeat_check = time.monotonic() + check_every
                if fail_heartbeat_stale(study):
                    continue
            time.sleep(delay)
            delay = min(delay * 1.5, self._poll)

    def _budgeted(self, study: Study, snap: Snapshot, trials: Sequence[FrozenTrial], me: int) -> Decision:
        """The next step within the budget: Done when spent, Wait while the cost of a trial is
        unknown; a search whose budget is spent goes on to its confirmation, which has its own."""
        decision = self._decision(study, snap)
        if not isinstance(decision, Candidate):
            return decision
        limit = self._over_budget(study, trials, me, decision.phase == CONFIRM)
        if isinstance(limit, Done) and decision.phase != CONFIRM and (constraints := self._confirming(study)):
            decision = self._confirmation(study, snap, constraints, limit)
            if not isinstance(decision, Candidate):
                return decision
            limit = self._over_budget(study, trials, me, True)
        return limit or decision

    def _over_budget(self, study: Study, trials: Sequence[FrozenTrial], me: int,
                     confirming: bool = False) -> Done | Wait | None:
        """Done when one more evaluation would break the user's budget; None when it fits. Images:
        what finished trials spent (evaluation and BatchNorm recalibration, also of failed and cut
        trials) plus, for every running trial and this one, the most one trial costs, so the total
        never exceeds the budget. That cost is the objective's ``trial_images`` study attribute,
        else the costliest finished trial; while neither is known, only one trial runs (Wait).
        Under confirmed acceptance the search leaves room for the confirmations (the unpruned
        model and every rung of the study's ladder, ``study_rungs + 1`` trials of ``confirm_images``
        each)."""
        images, trials_cap = (self._budget["budget_images"], self._budget["budget_trials"]) if confirming \
            else self._search_budget(study)
        planned = [t for t in trials if (t.system_attrs.get(CLAIM) or {}).get("key") or t.number == me]
        asking = 1 if me < 0 else 0  # is_exhausted asks for a trial not yet created: count it as this one
        if trials_cap is not None and len(planned) + asking > trials_cap:
            return Done(f"trial budget spent ({len(planned) + asking - 1} trials)")
        if images is None:
            return None
        cost = [images_spent(t) for t in trials if t.state.is_finished()]
        full = int(self._written_attr(study, "confirm_images") or 0) if confirming else self._trial_cost(study, cost)
        reserved = sum(1 for t in planned if not t.state.is_finished()) + asking
        if not full:
            return Wait("the cost of one trial (the first trial to finish)") if reserved > 1 else None
        if sum(cost) + reserved * full > images:
            return Done(f"image budget spent ({sum(cost):,} of {images:,} images; one more full evaluation would exceed it)")
        return None

    def _search_budget(self, study: Study) -> tuple[int | None, int | None]:
        """The images and trials the search may spend: the user's budget, less what confirmation
        needs under confirmed acceptance (the unpruned model and every rung: ``study_rungs + 1``
        trials of the objective's ``confirm_images`` each)."""
        images, trials = self._budget["budget_images"], self._budget["budget_trials"]
        if not self._confirming(study):
            return images, trials
        rungs = self._rungs(study)
        reserve = (rungs + 1) * int(self._written_attr(study, "confirm_images") or 0)
        return (None if images is None else images - reserve), (None if trials is None else trials - rungs - 1)

    def _trial_cost(self, study: Study, finished: Sequence[int]) -> int:
        """The most one evaluation costs in images: the objective's ``trial_images`` study
        attribute, else the costliest of the ``finished`` trials' costs (0 while none is known)."""
        return int(self._written_attr(study, "trial_images") or 0) or max(finished, default=0)

    def _cache(self, study: Study) -> _StudyCache:
        per_storage = self._studies.get(study._storage)
        if per_storage is None:
            per_storage = self._studies.setdefault(study._storage, {})
        return per_storage.setdefault(study._study_id, _StudyCache())

    def _rungs(self, study: Study) -> int:
        """The study's rung count (:func:`~primesvt_optuna.acceptance.confirm.study_rungs`)."""
        return study_rungs({RUNGS_ATTR: self._written_attr(study, "rungs")})

    def _written_attr(self, study: Study, name: str) -> Any:
        """The study attribute ``primesvt:<name>`` the objective wrote (None until it is written);
        cached once seen, since such an attribute never changes once written."""
        written = self._cache(study).written
        if name not in written:
            value = study._storage.get_study_user_attrs(study._study_id).get(f"{STUDY_PREFIX}{name}")
            if value is None:
                return None
            written[name] = value
        return written[name]

    def _started(self, study: Study, snap: Snapshot, need_sizes: bool = True) -> Decision | list[tuple[str, int]]:
        """The layers (see ``_layers``) once the reference is claimed and the layer table known;
        until then the decision that gets there (the reference, a wait, or Free without layers)."""
        if snap.status(rates_key({})) == FREE:
            return Candidate(rates_key({}), "reference")
        layers = self._layers(study, snap, need_sizes)
        if layers is None:
            return Wait("the reference trial (the layer table is not known yet)")
        return layers or Free()

    def _layers(self, study: Study, snap: Snapshot, need_sizes: bool = True) -> list[tuple[str, int]] | None:
        """Rate parameters with sizes, largest first; [] when the study has none; None while
        unknown (the reference trial has not finished and the objective wrote no layer table)."""
        if self._layer_sizes is not None:
            items = list(self._layer_sizes.items())
        elif table := self._written_attr(study, "layers"):
            items = [(f"{RATE_PREFIX}{row['layer']}", int(row["params"])) for row in table]
        else:
            reference = snap.trial_for(rates_key({}))
            if reference is None:
                return None
            names = [p for p in reference.params if self._is_rate(p)]
            if names and need_sizes:
                raise PrimeSVTError(
                    f"{type(self).__name__} needs layer sizes to order the layers: pass "
                    "layer_sizes={param: size} or use PruningObjective (it records the layer table)"
                )
            items = [(p, 0) for p in names]
        order = sorted(range(len(items)), key=lambda i: (-items[i][1], i))
        return [items[i] for i in order]


@dataclass
class _StudyCache:
    """What one sampler caches of one study (see ``ClaimSampler.__init__``)."""

    checked: bool = False  # settings recorded on the study
    index: FinishedIndex | None = None
    last_read: list[FrozenTrial] | None = None
    written: dict[str, Any] = field(default_factory=dict)


def write_study_attrs(study: Study, attrs: Mapping[str, Any]) -> None:
    """Set ``primesvt:<key>`` study attributes; an existing different value is refused, so a
    study never mixes settings (another checkpoint, grid, constraints or policy)."""
    storage = study._storage
    current = storage.get_study_user_attrs(study._study_id)
    values = {f"{STUDY_PREFIX}{key}": json.loads(json.dumps(value)) for key, value in attrs.items()}
    for name, value in values.items():  # compare everything before writing anything
        if name in current and current[name] != value:
            raise PrimeSVTError(
                f"study {study.study_name!r} was created with {name.removeprefix(STUDY_PREFIX)} = "
                f"{_short(current[name])}, not {_short(value)}: use another study name, or the same settings"
            )
    for name, value in values.items():
        if name not in current:
            storage.set_study_user_attr(study._study_id, name, value)


def _short(value: Any, limit: int = 80) -> str:
    """A stored setting for an error line (a whole layer table would drown the message)."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _fit(name: str, rate: float, distribution: BaseDistribution) -> Any:
    """The planned rate in the objective's own representation; a clear error when the objective's
    distribution cannot express it (a different grid)."""
    if isinstance(distribution, CategoricalDistribution):
        for choice in distribution.choices:
            if isinstance(choice, (int, float)) and not isinstance(choice, bool) and abs(float(choice) - rate) < 1e-6:
                return choice
    elif isinstance(distribution, FloatDistribution):
        if distribution._contains(rate):
            return rate
        if distribution.step is not None:
            snapped = round(round((rate - distribution.low) / distribution.step) * distribution.step + distribution.low, 10)
            if abs(snapped - rate) < 1e-6 and distribution._contains(snapped):
                return snapped
    raise ValueError(
        f"the sampler planned rate {rate:g} for {name!r}, which its distribution {distribution} cannot "
        "express: give the objective and the sampler the same rate grid"
    )


def config_value(param: str, value: Any) -> float:
    """A parameter's value as a configuration number: a precision's bit width (float: 0), a rate."""
    return float(bits_of(value)) if is_precision(param) else float(value)


def _fit_precision(name: str, bits: float, distribution: BaseDistribution) -> Any:
    """The planned precision as the objective's categorical choice; a clear error when the
    objective's precision grid lacks it."""
    precision = name_of(bits)
    if isinstance(distribution, CategoricalDistribution) and precision in distribution.choices:
        return precision
    raise ValueError(f"the sampler planned {precision} for {name!r}, which its distribution {distribution} cannot "
                     "express: give the objective and the sampler the same precision grid")


def _gave_up(me: int, timeout: float, reason: str, awaited: int | None, trials: Sequence[FrozenTrial]) -> str:
    """The one line a walk ends with when it waited ``timeout`` seconds with no trial finishing."""
    worker = next((t.system_attrs.get(WORKER) for t in trials if t.number == awaited), None) or {}
    held = "" if awaited is None else f", held by trial {awaited}" + (
        f" (worker pid {worker.get('pid')} on {worker.get('host')})" if worker else " (no worker record)")
    return (f"trial {me} waited {timeout:g} s with no trial finishing, for {reason}{held}: if that worker is "
            "dead, fail its trial (primesvt_optuna.storage.fail_stale_trials(study, lease=SECONDS), or open the "
            "storage with primesvt_optuna.storage.open_storage for heartbeats) and run again; if it is alive, "
            "pass a larger wait_timeout")


def _claimed_rates(trial: FrozenTrial) -> dict[str, float]:
    """The configuration a finished trial evaluated: its claim's rates (every PrimeSVT trial has
    one), else its rate parameters."""
    claim = trial.system_attrs.get(CLAIM) or {}
    if claim.get("rates") and claim.get("key"):
        return {p: float(r) for p, r in claim["rates"].items() if float(r) > 0}
    return {p: value for p, v in trial.params.items()
            if (p.startswith(RATE_PREFIX) or is_precision(p)) and (value := config_value(p, v)) > 0}
