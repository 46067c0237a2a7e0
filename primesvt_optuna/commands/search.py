"""`primesvt search CONFIG.toml`: run a PrimeSVT search as an Optuna study and print the selection."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
from typing import Any

from ..errors import PrimeSVTError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..plugin.study_config import POLICIES

    p = subparsers.add_parser(
        "search",
        help="prune a checkpoint under accuracy/memory constraints (an Optuna study)",
        description=(
            "Run the study a config describes: the unpruned reference, the robustness sweeps and the "
            "largest-first walk (or a baseline policy), stored in an Optuna storage. Flags override "
            "the config. Budget and targets are fractions: --max-accuracy-drop 0.03 is 3 points, "
            "--memory-target 0.4 saves 40% of the model bytes."
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
    p.add_argument("--recalibrate-bn", type=int, metavar="N",
                   help="adaptive BatchNorm: re-estimate the BN statistics of each pruned model on N training "
                        "images before evaluating it (0: off, the default; config: [search] recalibrate_bn)")
    p.add_argument("--accept", choices=("point", "confident"),
                   help="accuracy acceptance: 'point' (measured accuracy meets the floor, the default) or "
                        "'confident' (its one-sided lower confidence bound does; config: [constraints] accept)")
    p.add_argument("--confidence", type=float, metavar="LEVEL",
                   help="level of the confident acceptance's lower bound (default 0.95; implies --accept confident)")
    p.add_argument("--interval", choices=("clopper-pearson", "wilson"),
                   help="lower bound of the confident acceptance (default clopper-pearson, exact binomial)")
    p.add_argument("--precisions", metavar="LIST",
                   help="also choose a weight precision per layer from this grid, e.g. float,int8,int4,int2 "
                        "(default float: pruning only; policies budget-aware, uniform, precision-walk, aq4svit, "
                        "tpe, nsga2; config: [search] precisions)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing study (its settings must match); creates it when absent")
    p.set_defaults(run=run)


def make_sampler(cfg: Any, worker: int = 0) -> Any:
    """The sampler for the config's policy (TPE/NSGA-II get a per-worker seed)."""
    import optuna

    from ..plugin import BudgetAwareSampler, PrioritizedSampler, RandomOrderSampler, SmallestFirstSampler, UniformSampler
    from ..plugin.samplers import AQ4SViTSampler, PrecisionWalkSampler

    common = {"grid": cfg.grid, "wait_timeout": cfg.wait_timeout, "budget_images": cfg.budget_images}
    # an image budget is the maximize mode: a walk goes on past the memory target until it is spent
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
    if cfg.policy == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed + worker)
    return optuna.samplers.NSGAIISampler(seed=cfg.seed + worker)


def prepare_study(cfg: Any, storage: Any, objective: Any, resume: bool) -> Any:
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
    sampler = make_sampler(cfg)
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


def _work(cfg: Any, worker: int) -> Any:
    """One worker process: its own storage connection, sampler and objective."""
    import optuna

    from ..storage import open_storage
    from ..workers import optimize

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=cfg.study_name, storage=open_storage(cfg.storage),
                              sampler=make_sampler(cfg, worker))
    return optimize(study, cfg.objective(), worker=worker, callbacks=_callbacks(cfg))


def run(args: argparse.Namespace) -> int:
    import optuna

    from ..plugin.result import save_result_note
    from ..plugin.samplers import ClaimSampler
    from ..plugin.study_config import load_study_config
    from ..storage import describe_storage, open_storage, parse_storage
    from ..workers import interrupted_message, optimize, run_workers

    cfg = load_study_config(args.config).with_overrides(
        policy=args.policy, trials=args.trials, storage=args.storage, study_name=args.study_name,
        max_accuracy_drop=args.max_accuracy_drop, memory_target=args.memory_target, workers=args.workers,
        seed=args.seed, device=args.device, batch_size=args.batch_size, eval_images=args.eval_images,
        first_batch=args.first_batch, sweep=args.sweep, budget_images=args.budget_images, prune_embed=args.prune_embed,
        recalibrate_bn=args.recalibrate_bn, flops_target=args.flops_target, accept=args.accept,
        accept_confidence=args.confidence, accept_interval=args.interval,
        precisions=None if args.precisions is None else tuple(args.precisions.split(",")),
    )
    if cfg.policy in ("tpe", "nsga2") and cfg.trials is None:
        raise PrimeSVTError(f"policy {cfg.policy!r} needs a trial budget: pass --trials N")
    spec = parse_storage(cfg.storage)
    if cfg.workers > 1 and spec.kind == "sqlite" and spec.path is None:
        raise PrimeSVTError(f"storage {spec.describe()} is in memory, so only one process sees it: "
                            "give --workers K a file (sqlite:///study.db, journal:///study.log) or a server")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = cfg.objective()  # first: a bad checkpoint or data path must not leave a new empty .db behind
    storage = open_storage(cfg.storage)
    study = prepare_study(cfg, storage, objective, args.resume)

    sampler = make_sampler(cfg)
    exhausted = isinstance(sampler, ClaimSampler) and sampler.is_exhausted(study)
    over_budget = cfg.trials is not None and len(study.trials) >= cfg.trials
    reports = []
    if not (exhausted or over_budget):
        total = cfg.trials if cfg.policy in ("tpe", "nsga2") else None
        with _Progress(study, total, enabled=not args.json or sys.stderr.isatty()):
            if cfg.workers == 1:  # in this process: reuse what is loaded
                reports = [optimize(study, objective, worker=0, callbacks=_callbacks(cfg))]
            else:
                reports = run_workers(cfg.workers, functools.partial(_work, cfg))
        if any(r.interrupted for r in reports):
            print(interrupted_message(reports, sys.argv[1:]), file=sys.stderr)
            return 130

    if failed := _failed_reference(study):
        raise PrimeSVTError(failed)
    res = save_result_note(study)
    if args.json:
        payload = {"study_name": cfg.study_name, "storage": describe_storage(cfg.storage), **res.to_dict()}
        print(json.dumps(payload, default=_plain))
        return 0
    _print(res, cfg, describe_storage(cfg.storage))
    return 0


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


def _print(res: Any, cfg: Any, storage: str) -> None:
    s = res.stats
    print(f"study {res.study_name!r} ({res.policy}) in {storage}: {s['trials']} trials "
          f"({s['complete']} complete, {s['pruned']} cut, {s['failed']} failed), "
          f"{s['images_evaluated']:,} images evaluated"
          + (f", {s['images_recalibrated']:,} passed forward to recalibrate BatchNorm" if s.get("images_recalibrated") else ""))
    print(res.message)
    sel = res.selected
    if sel:
        base_acc = sel["base_accuracy"]
        accuracy = "n/a" if sel["accuracy"] is None else f"{100 * sel['accuracy']:.2f}%"
        print(f"selected: trial {sel['trial']}: validation accuracy {accuracy}"
              + (f" (unpruned {100 * base_acc:.2f}%)" if base_acc is not None else "")
              + f", {sel['model_bytes']:,} bytes of {sel['base_bytes']:,} (saves {100 * sel['memory_saving']:.2f}%)")
        for layer, rate in sel["rates"].items():
            print(f"  {layer:<40} {rate:g}")
        if not sel["rates"]:
            print("  (no layer pruned)")
        print(f"export it: primesvt export '{storage}' --study-name {res.study_name} --output pruned.pt "
              "--finetune-epochs 3")
    if len(res.closest):
        print("closest trade-offs (trial, accuracy, saving, violation):")
        for _, row in res.closest.iterrows():
            print(f"  {int(row['trial']):>5}  {100 * row['accuracy']:.2f}%  {100 * row['memory_saving']:.2f}%  "
                  f"{row['violation']:.4f}")
