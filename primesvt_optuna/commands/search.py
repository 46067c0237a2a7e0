"""`primesvt search CONFIG.toml`: run a PrimeSVT search as an Optuna study and print the selection."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import PrimeSVTError


def _share_or_auto(text: str) -> float | str:
    """``--holdout``: a number, or the text as given (``auto``; anything else is refused in one line
    with the other settings, as the config's value is)."""
    try:
        return float(text)
    except ValueError:
        return text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..plugin.study_config import POLICIES

    p = subparsers.add_parser(
        "search",
        help="prune a checkpoint under accuracy/memory constraints (an Optuna study)",
        description=(
            "Run the study a config describes (by default the budget-aware policy; --policy prioritized "
            "is the paper's largest-first walk), stored in an Optuna storage, then confirm what it found "
            "on held-back images: the delivery keeps the accuracy budget at 95% on images the search never "
            "saw. Flags override the config. Budget and targets are fractions: --max-accuracy-drop 0.03 "
            "is 3 points, --memory-target 0.4 saves 40% of the model bytes. Without an image budget the "
            "search picks one that ends it within about 15 minutes here, and says so."
        ),
    )
    p.add_argument("config", metavar="CONFIG.toml", help="study config (see studies/digits.toml)")
    p.add_argument("--policy", choices=POLICIES)
    p.add_argument("--trials", type=int, help="trial budget of the study (total, across runs and workers)")
    p.add_argument("--storage", help="sqlite:///file.db, postgresql://..., journal:///file.log, ...")
    p.add_argument("--study-name")
    p.add_argument("--max-accuracy-drop", type=float, metavar="FRACTION")
    p.add_argument("--memory-target", type=float, metavar="FRACTION")
    p.add_argument("--workers", type=int, help="worker processes on the one storage (joblib)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--first-batch", type=int, metavar="N",
                   help="first evaluation batch; batches then double the images seen up to --batch-size, so "
                        "the early cut can act after N images (default 32; 0: plain batches; config: "
                        "[data] first_batch)")
    p.add_argument("--eval-images", type=int, help="size of the validation subset driving the search")
    p.add_argument("--sweep", choices=("lazy", "full"),
                   help="robustness of a layer measured when the walk reaches it, only as far as its bound "
                        "needs ('lazy', the default: same selection, fewer images) or every layer at every "
                        "rate first ('full', the paper's sweep; config: [search] sweep)")
    p.add_argument("--budget-images", type=int, metavar="N",
                   help="maximize mode: once the memory target is met, go on increasing the saving until N "
                        "evaluated images (BatchNorm recalibration included) are spent (config: [search] budget_images)")
    p.add_argument("--flops-target", type=float, metavar="FRACTION",
                   help="a second resource constraint: also save this fraction of the FLOPs per image "
                        "(constraint 'flops'; config: [search] flops_target)")
    p.add_argument("--prune-embed", action="store_true", default=None,
                   help="also prune the embedding dimension, as one global layer (config: [search] prune_embed)")
    p.add_argument("--recalibrate-bn", type=_recalibration, metavar="N|auto",
                   help="adaptive BatchNorm: re-estimate the BN statistics of each pruned model on N training "
                        "images before evaluating it; 'auto' (the default) turns it on where a probe before the "
                        "study shows it lifts accuracy by a point; 0: off (config: [search] recalibrate_bn)")
    p.add_argument("--recalibrate-rule", choices=("auto", "relative", "absolute"),
                   help="how recalibrated statistics are used: 'relative' moves the trained ones by what the "
                        "configuration changed against the unpruned model recalibrated on the same images; 'absolute' "
                        "replaces them; 'auto' (the default): relative when pruning only, and with --precisions "
                        "where a probe before the study shows recalibration alone changes 5%% of the unpruned "
                        "model's predictions (config: [search] recalibrate_rule)")
    p.add_argument("--accept", choices=("confirmed", "point", "confident"),
                   help="accuracy acceptance: 'confirmed' (the default: the search steps on part of the evaluation "
                        "images, and what it delivers must keep the drop within budget on the held-back part, "
                        "bounded at --confidence), 'point' (the paper's rule: the measured accuracy meets the "
                        "floor) or 'confident' (its one-sided lower confidence bound does; config: [constraints] accept)")
    p.add_argument("--confidence", type=float, metavar="LEVEL",
                   help="level of the confirmed (or confident) acceptance's bound, in (0.5, 1) (default 0.95; "
                        "config: [constraints] confidence)")
    p.add_argument("--holdout", type=_share_or_auto, metavar="SHARE",
                   help="confirmed acceptance: share of the evaluation images held back to confirm the delivery, "
                        "or 'auto' (the default: all but 200 of them, from 0.5 to 0.8; 0.5 with a precision grid; "
                        "config: [constraints] holdout)")
    p.add_argument("--search-drop", choices=("budget", "anticipate"),
                   help="confirmed acceptance: the drop the search steps by on its images, the whole budget "
                        "('budget', the default) or the largest drop the held-back images could still confirm "
                        "if it were lost again there ('anticipate'; config: [constraints] search_drop)")
    p.add_argument("--interval", choices=("clopper-pearson", "wilson"),
                   help="lower bound of the confident acceptance (default clopper-pearson, exact binomial; "
                        "implies --accept confident)")
    p.add_argument("--compare-walk", action="store_true",
                   help="then run the paper's walk (--policy prioritized) on the same settings into study "
                        "NAME-walk and say in one line what it delivers")
    p.add_argument("--precisions", metavar="LIST",
                   help="also choose a weight precision per layer from this grid, e.g. float,int8,int4,int2 "
                        "(default float: pruning only; policies budget-aware, uniform, precision-walk, aq4svit, joint, "
                        "tpe, nsga2; config: [search] precisions)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing study (its settings must match); creates it when absent")
    p.set_defaults(run=run)


def make_sampler(cfg: Any, worker: int = 0, auto_images: int | None = None) -> Any:
    """The sampler for the config's policy (TPE/NSGA-II get a per-worker seed); ``auto_images``:
    the image budget the command chose itself (a cap only: unlike a user's budget it does not turn
    on the maximize mode)."""
    import optuna

    from ..plugin import BudgetAwareSampler, PrioritizedSampler, RandomOrderSampler, SmallestFirstSampler, UniformSampler
    from ..plugin.samplers import AQ4SViTSampler, JointSampler, PrecisionWalkSampler

    common = {"grid": cfg.grid, "wait_timeout": cfg.wait_timeout,
              "budget_images": cfg.budget_images if cfg.budget_images is not None else auto_images}
    # a user's image budget is the maximize mode: a walk goes on past the memory target until it is spent
    walk = {"robustness_rule": cfg.robustness_rule, "walk_all": cfg.walk_all or cfg.budget_images is not None,
            "sweep": cfg.sweep}
    if cfg.policy == "prioritized":
        return PrioritizedSampler(seed=cfg.seed, **common, **walk)
    if cfg.policy == "smallest-first":
        return SmallestFirstSampler(seed=cfg.seed, **common, **walk)
    if cfg.policy == "random-order":
        return RandomOrderSampler(seed=cfg.seed, **common, **walk)
    # precisions only when searched: a float-only sampler records the settings it always did
    quant = {"precisions": cfg.precisions} if cfg.precisions != ("float",) else {}
    if cfg.policy == "uniform":
        return UniformSampler(seed=cfg.seed, **common, **quant)
    if cfg.policy == "budget-aware":
        return BudgetAwareSampler(seed=cfg.seed, **common, **quant)
    if cfg.policy == "precision-walk":
        return PrecisionWalkSampler(seed=cfg.seed, **common, **walk, **quant)
    if cfg.policy == "aq4svit":
        return AQ4SViTSampler(seed=cfg.seed, **common, **quant)
    if cfg.policy == "joint":
        return JointSampler(seed=cfg.seed, **common, **quant)
    if cfg.policy == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed + worker)
    return optuna.samplers.NSGAIISampler(seed=cfg.seed + worker)


def prepare_study(cfg: Any, storage: Any, objective: Any, resume: bool, budget: AutoBudget | None = None) -> Any:
    """Create the study, or load it for --resume; refuse one made with other settings."""
    import optuna

    from ..plugin.constraints import rate_param
    from ..plugin.samplers import ClaimSampler
    from ..precision.search import precision_param
    from ..plugin.samplers._claims import write_study_attrs

    exists = cfg.study_name in optuna.get_all_study_names(storage)
    if exists and not resume:
        raise PrimeSVTError(
            f"study {cfg.study_name!r} already exists in this storage: pass --resume to continue it "
            "(with the same settings), or choose another --study-name"
        )
    sampler = make_sampler(cfg, auto_images=budget and budget.images)
    if exists:
        study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler)
    else:
        study = optuna.create_study(
            study_name=cfg.study_name, storage=storage, sampler=sampler, directions=objective.directions,
            load_if_exists=True,  # another machine may create it at the same moment
        )
    if isinstance(sampler, ClaimSampler):
        settings = sampler.settings()
    else:
        settings = {"policy": cfg.policy, "grid": list(cfg.grid), "seed": cfg.seed}
    # compare both parts before writing either, so a refused study is left untouched
    attrs = {**objective.study_attrs(), "policy": cfg.policy, "grid": list(cfg.grid), "seed": cfg.seed,
             "sampler": settings}
    if budget is not None:
        attrs["auto_budget"] = budget.record()
    write_study_attrs(study, attrs)
    objective.attach(study)
    if cfg.policy in ("tpe", "nsga2") and not study.trials:  # trial 0 is the reference for every policy
        reference = {rate_param(name): 0.0 for name, _ in objective.layers}
        if objective.quantizing:
            reference.update({precision_param(name): "float" for name, _ in objective.layers})
        study.enqueue_trial(reference, user_attrs={"phase": "reference"})
    return study


class _Progress:
    """A progress bar fed by reading the storage (so it counts every worker's trials)."""

    def __init__(self, study: Any, total: int | None, enabled: bool) -> None:
        self.study, self.total, self.enabled = study, total, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def _run(self) -> None:
        from optuna.trial import TrialState
        from tqdm.auto import tqdm

        storage, sid = self.study._storage, self.study._study_id
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        start = len(storage.get_all_trials(sid, deepcopy=False, states=done))
        with tqdm(total=self.total, initial=start, unit="trial", desc="search", file=sys.stderr) as bar:
            while True:
                stopping = self._stop.wait(1.0)
                trials = storage.get_all_trials(sid, deepcopy=False, states=done)
                if trials:
                    last = trials[-1].user_attrs
                    bar.set_postfix_str(f"{last.get('phase')} {last.get('layer') or ''}".strip(), refresh=False)
                bar.update(len(trials) - bar.n)
                if stopping:
                    return


def _callbacks(cfg: Any) -> list[Any]:
    import optuna

    return [optuna.study.MaxTrialsCallback(cfg.trials, states=None)] if cfg.trials else []


def _work(cfg: Any, auto_images: int | None, worker: int) -> Any:
    """One worker process: its own storage connection, sampler and objective."""
    import optuna

    from ..storage import open_storage
    from ..workers import optimize

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=cfg.study_name, storage=open_storage(cfg.storage),
                              sampler=make_sampler(cfg, worker, auto_images))
    return optimize(study, cfg.objective(), worker=worker, callbacks=_callbacks(cfg))


AUTO_MINUTES = 15
AUTO_MARGIN = 0.8  # of those minutes for the trials: loading, the result and a slower spell get the rest
STORAGE_SECONDS = 0.2  # per trial outside the objective (sampler, storage): 75 s over 370 trials of digits-8-64


@dataclass(frozen=True)
class AutoBudget:
    """The image budget a search without one gets: enough images to fill ``AUTO_MARGIN`` of
    ``AUTO_MINUTES`` minutes at the speed measured when the study began, even if every trial were
    cut at its first look (the most trials, so the most per-trial time, per image). Recorded on the
    study, so a resume anywhere keeps it."""

    images: int
    images_per_second: float
    trial_seconds: float

    @classmethod
    def measured(cls, objective: Any) -> AutoBudget:
        rate, trial = evaluation_rate(objective), trial_seconds(objective)
        per_image = 1.0 / rate + trial / objective.schedule[0]
        return cls(int(AUTO_MARGIN * 60 * AUTO_MINUTES / per_image), rate, trial)

    def record(self) -> dict[str, Any]:
        return {"images": self.images, "images_per_second": round(self.images_per_second, 1),
                "trial_seconds": round(self.trial_seconds, 3), "minutes": AUTO_MINUTES}

    def reached(self, study: Any, spent: int) -> bool:
        """Whether the budget ended the search: one more full evaluation (and the room the
        confirmations keep) would not have fitted."""
        from ..acceptance.confirm import study_rungs
        from ..plugin.constraints import STUDY_PREFIX

        attrs = study.user_attrs
        reserve = (study_rungs(attrs) + 1) * int(attrs.get(f"{STUDY_PREFIX}confirm_images") or 0)
        return spent + int(attrs.get(f"{STUDY_PREFIX}trial_images") or 0) + reserve > self.images

    def line(self, study: Any, spent: int) -> str:
        end = ("reached: it ended the search" if self.reached(study, spent)
               else f"the search ended within it ({spent:,} spent)")
        return (f"image budget {self.images:,}, chosen automatically (no --budget-images): within {AUTO_MINUTES} "
                f"minutes at the speed measured when the study began ({self.images_per_second:,.0f} images/s, "
                f"{self.trial_seconds:.2f} s per trial besides); {end}")


def needs_budget(cfg: Any) -> bool:
    """Whether the command picks the image budget itself: no user's budget, and a PrimeSVT policy
    (a trial budget bounds TPE and NSGA-II)."""
    return cfg.budget_images is None and cfg.policy not in ("tpe", "nsga2")


def auto_budget(cfg: Any, storage: Any, measured: AutoBudget | None) -> AutoBudget | None:
    """The image budget the command picks when none is given: the one an existing study recorded,
    ``measured`` for a new one; None when ``needs_budget`` says so and for an existing study
    that has none."""
    import optuna

    from ..plugin.constraints import STUDY_PREFIX

    if measured is None or not needs_budget(cfg):
        return None
    if cfg.study_name in optuna.get_all_study_names(storage):
        recorded = optuna.load_study(study_name=cfg.study_name, storage=storage).user_attrs.get(
            f"{STUDY_PREFIX}auto_budget")
        return None if recorded is None else AutoBudget(
            int(recorded["images"]), float(recorded["images_per_second"]), float(recorded["trial_seconds"]))
    return measured


def evaluation_rate(objective: Any, images: int = 512, seconds: float = 5.0) -> float:
    """Images per second the unpruned model is evaluated at, as trials evaluate (batch schedule,
    device), over its first batches up to ``images`` images or ``seconds`` (the first batch, which
    warms up, is left out when there is more than one)."""
    seen, started, first = 0, time.perf_counter(), None
    for _, n in objective.iter_batches({}):
        if first is None:
            first = (n, time.perf_counter() - started)
            started = time.perf_counter()
            continue
        seen += n
        if seen >= images or time.perf_counter() - started >= seconds:
            break
    if not seen:
        return first[0] / max(first[1], 1e-9)
    return seen / max(time.perf_counter() - started, 1e-9)


def trial_seconds(objective: Any) -> float:
    """Seconds a trial costs besides its images: pruning (the largest layer at the top rate, timed)
    and ``STORAGE_SECONDS``."""
    started = time.perf_counter()
    objective.engine.prune({objective.layers[0][0]: objective.grid[-1]})
    return time.perf_counter() - started + STORAGE_SECONDS


def run(args: argparse.Namespace) -> int:
    import optuna

    from ..plugin.result import save_result_note
    from ..plugin.study_config import load_study_config
    from ..storage import describe_storage, open_storage, parse_storage

    cfg = load_study_config(args.config).with_overrides(
        policy=args.policy, trials=args.trials, storage=args.storage, study_name=args.study_name,
        max_accuracy_drop=args.max_accuracy_drop, memory_target=args.memory_target, workers=args.workers,
        seed=args.seed, device=args.device, batch_size=args.batch_size, eval_images=args.eval_images,
        first_batch=args.first_batch, sweep=args.sweep, budget_images=args.budget_images, prune_embed=args.prune_embed,
        recalibrate_bn=args.recalibrate_bn, recalibrate_rule=args.recalibrate_rule, flops_target=args.flops_target,
        accept=args.accept,
        accept_confidence=args.confidence, accept_interval=args.interval, holdout=args.holdout,
        search_drop=args.search_drop,
        precisions=None if args.precisions is None else tuple(args.precisions.split(",")),
    )
    if cfg.policy in ("tpe", "nsga2") and cfg.trials is None:
        raise PrimeSVTError(f"policy {cfg.policy!r} needs a trial budget: pass --trials N")
    spec = parse_storage(cfg.storage)
    if cfg.workers > 1 and spec.kind == "sqlite" and spec.path is None:
        raise PrimeSVTError(f"storage {spec.describe()} is in memory, so only one process sees it: "
                            "give --workers K a file (sqlite:///study.db, journal:///study.log) or a server")
    if args.compare_walk and cfg.policy == "prioritized":
        raise PrimeSVTError("--compare-walk runs the paper's walk beside another policy, and this study is the walk: "
                            "drop --compare-walk or choose another --policy")
    walk_cfg = cfg.with_overrides(policy="prioritized", study_name=f"{cfg.study_name}-walk") if args.compare_walk else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = cfg.objective()  # first: a bad checkpoint or data path must not leave a new empty .db behind
    speed = AutoBudget.measured(objective) if needs_budget(walk_cfg or cfg) else None  # unreadable data fails here too
    storage = open_storage(cfg.storage)
    study, budget, code = _search(cfg, objective, storage, args.resume, args.json, speed)
    if code:
        return code
    res = save_result_note(study)
    cost = study_cost(study, res)
    walk = None
    if walk_cfg is not None:  # the same objective: the walk's study records the same settings
        walk_study, _, code = _search(walk_cfg, objective, storage, True, args.json, speed)
        if code:
            return code
        walk_res = save_result_note(walk_study)
        walk = (walk_res, study_cost(walk_study, walk_res))
    if args.json:
        payload = {"study_name": cfg.study_name, "storage": describe_storage(cfg.storage), **res.to_dict(),
                   "cost": cost, "image_budget": None if budget is None else {
                       **budget.record(), "reached": budget.reached(study, cost["images"])}}
        if walk is not None:
            payload["walk"] = {"study_name": walk_cfg.study_name, **walk[0].to_dict(), "cost": walk[1]}
        print(json.dumps(payload, default=_plain))
        return 0
    _print(res, describe_storage(cfg.storage), cost, None if budget is None else budget.line(study, cost["images"]))
    if walk is not None:
        print(walk_line(walk[0], walk_cfg.study_name, walk[1]))
    return 0


def _search(cfg: Any, objective: Any, storage: Any, resume: bool, quiet: bool,
            speed: AutoBudget | None) -> tuple[Any, AutoBudget | None, int]:
    """Prepare the study and run its policy to the end (nothing to do when it is finished):
    ``(study, the image budget chosen for it, exit code)``, 130 when Ctrl-C stopped a worker."""
    from ..plugin.samplers import ClaimSampler
    from ..workers import interrupted_message, optimize, run_workers

    budget = auto_budget(cfg, storage, speed)
    study = prepare_study(cfg, storage, objective, resume, budget)
    auto_images = None if budget is None else budget.images
    sampler = make_sampler(cfg, auto_images=auto_images)
    exhausted = isinstance(sampler, ClaimSampler) and sampler.is_exhausted(study)
    over_budget = cfg.trials is not None and len(study.trials) >= cfg.trials
    if exhausted or over_budget:
        return study, budget, 0
    total = cfg.trials if cfg.policy in ("tpe", "nsga2") else None
    with _Progress(study, total, enabled=not quiet or sys.stderr.isatty()):
        if cfg.workers == 1:  # in this process: reuse what is loaded
            reports = [optimize(study, objective, worker=0, callbacks=_callbacks(cfg))]
        else:
            reports = run_workers(cfg.workers, functools.partial(_work, cfg, auto_images))
    if any(r.interrupted for r in reports):
        print(interrupted_message(reports, sys.argv[1:]), file=sys.stderr)
        return study, budget, 130
    if failed := _failed_reference(study):
        raise PrimeSVTError(failed)
    return study, budget, 0


def study_cost(study: Any, res: Any) -> dict[str, Any]:
    """Images spent (evaluated and passed forward for BatchNorm recalibration, by every trial that
    had finished by then) until the first search trial met both constraints on the search images,
    and until the trial that confirmed the delivery (``res``, the study's result) finished; None
    where there is no such trial."""
    from ..acceptance.confirm import is_confirmation
    from ..plugin.result import _feasible
    from ..plugin.samplers._claims import images_spent

    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.datetime_complete]

    def until(trial: Any) -> int:
        return sum(images_spent(t) for t in finished if t.datetime_complete <= trial.datetime_complete)

    feasible = [t for t in finished if not is_confirmation(t) and _feasible(t)]
    first = min(feasible, key=lambda t: (t.datetime_complete, t.number), default=None)
    cost: dict[str, Any] = {"images": sum(map(images_spent, finished)), "first_feasible_trial": None,
                            "images_to_first_feasible": None, "confirming_trial": None, "images_to_confirmed": None}
    if first is not None:
        cost.update(first_feasible_trial=first.number, images_to_first_feasible=until(first))
    confirmation = (res.selected or {}).get("confirmation") or {}
    if confirmation.get("confirmed") and res.both_met:
        trial = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, confirmation["trial"]))
        cost.update(confirming_trial=trial.number, images_to_confirmed=until(trial))
    return cost


def walk_line(res: Any, name: str, cost: dict[str, Any]) -> str:
    """One line: what the paper's walk delivers on the same study settings, and what it cost."""
    confirmed = cost["images_to_confirmed"]
    return (f"the paper's walk (--policy prioritized, study {name!r}): {res.message}; {cost['images']:,} images"
            + (f", {confirmed:,} to its confirmed selection" if confirmed is not None else ""))


def _failed_reference(study: Any) -> str | None:
    """Why the unpruned model could not be evaluated, when it could not (and never was)."""
    from optuna.trial import TrialState

    unpruned = [t for t in study.trials if t.params and not any(t.params.values())]
    if any(t.state == TrialState.COMPLETE for t in unpruned):
        return None
    failed = [t for t in unpruned if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason")
              and not t.user_attrs.get("interrupted")]
    if not failed:
        return None
    return (f"the unpruned model could not be evaluated (trial {failed[0].number}: "
            f"{failed[0].user_attrs['fail_reason']}): fix that and start a new study")


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and the like that pandas hands back."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _print(res: Any, storage: str, cost: dict[str, Any], budget: str | None) -> None:
    s = res.stats
    print(f"study {res.study_name!r} ({res.policy}) in {storage}: {s['trials']} trials "
          f"({s['complete']} complete, {s['pruned']} cut, {s['failed']} failed), "
          f"{s['images_evaluated']:,} images evaluated"
          + (f", {s['images_recalibrated']:,} passed forward to recalibrate BatchNorm" if s.get("images_recalibrated") else "")
          + (f" ({s['recalibrate_bn'].get('rule', 'absolute')} rule)" if s.get("recalibrate_bn") else ""))
    print(res.message)
    print(cost_line(cost))
    if budget is not None:
        print(budget)
    sel = res.selected
    confirmation = (sel or {}).get("confirmation")
    if sel:
        base_acc = sel["base_accuracy"]
        accuracy = "n/a" if sel["accuracy"] is None else f"{100 * sel['accuracy']:.2f}%"
        where = "on the search images" if confirmation is not None else "validation"
        print(f"selected: trial {sel['trial']}: {where} accuracy {accuracy}"
              + (f" (unpruned {100 * base_acc:.2f}%)" if base_acc is not None else "")
              + f", {sel['model_bytes']:,} bytes of {sel['base_bytes']:,} (saves {100 * sel['memory_saving']:.2f}%)")
        precisions = sel.get("precisions", {})
        for layer in dict.fromkeys([*sel["rates"], *precisions]):
            print(f"  {layer:<40} {sel['rates'].get(layer, 0.0):g}" + (f"  {precisions[layer]}" if layer in precisions else ""))
        if not sel["rates"] and not precisions:
            print("  (no layer pruned)")
        command = f"primesvt export '{storage}' --study-name {res.study_name} --output pruned.pt --finetune-epochs 3"
        if confirmation is None or res.both_met:
            print(f"export it: {command}" + ("" if confirmation is not None else " --accept point"))
        else:
            print(f"nothing confirmed to export; the search's own selection, unconfirmed: {command} --accept point")
    if len(res.closest) and "rung" in res.closest.columns:
        print("confirmed trade-offs (rung, trial, saving, accuracy on the held-back images, bound, confirmed):")
        for _, row in res.closest.iterrows():
            held = "n/a" if pd_missing(row["accuracy"]) else f"{100 * row['accuracy']:.2f}%"
            bound = "n/a" if pd_missing(row["bound"]) else f"{row['bound']:.4f}"
            verdict = {True: "yes", False: "no"}.get(row["confirmed"], "not evaluated")
            print(f"  {int(row['rung']):>4}  {int(row['trial']):>5}  {100 * row['memory_saving']:.2f}%  {held}  "
                  f"{bound}  {verdict}")
    elif len(res.closest):
        print("closest trade-offs (trial, accuracy, saving, violation):")
        for _, row in res.closest.iterrows():
            print(f"  {int(row['trial']):>5}  {100 * row['accuracy']:.2f}%  {100 * row['memory_saving']:.2f}%  "
                  f"{row['violation']:.4f}")


def pd_missing(value: Any) -> bool:
    """None or NaN (pandas turns a missing number into either)."""
    return value is None or value != value


def cost_line(cost: dict[str, Any]) -> str:
    """What the search cost to its first trial meeting both constraints and to its confirmed delivery."""
    first = ("no trial met both constraints" if cost["first_feasible_trial"] is None else
             f"{cost['images_to_first_feasible']:,} images to the first trial meeting both constraints "
             f"(trial {cost['first_feasible_trial']})")
    confirmed = ("" if cost["confirming_trial"] is None else
                 f", {cost['images_to_confirmed']:,} to the confirmed delivery (confirmation trial "
                 f"{cost['confirming_trial']})")
    return f"cost: {first}{confirmed}"


def _recalibration(text: str) -> int | str:
    """``--recalibrate-bn``: 'auto' or a whole number of training images."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give 'auto' or a number of training images, not {text!r}") from None
