"""The full comparison (issue 13): every policy, 3 seeds, equal image budgets, on the three
embedded benchmarks, with the confident-acceptance and BatchNorm-recalibration variants.

A *cell* is one benchmark at one memory target; a *variant* is how its objective accepts:

* ``main``: every policy (prioritized, budget-aware, smallest-first, random-order, uniform, TPE,
  NSGA-II) on the study config as shipped (point acceptance, no recalibration). The benchmark's
  full robustness sweep runs once, in its own storage, and is copied into each cell (it does not
  depend on the memory target); the walks replay it and are charged the lookups they used.
* ``confident``: ``accept = "confident"`` (95% one-sided Clopper-Pearson bound on the validation
  accuracy must meet the floor), for ``--variant-policies`` (default: prioritized, budget-aware).
* ``recal``: BatchNorm recalibration on 512 training images per pruned model, same policies;
  the recalibration passes count against the image budget like evaluated images.
* ``recal-confident``: both, for a recalibrated saving that should hold on held-out data.
* ``default``: what ``primesvt search`` does when nothing is named: confirmed acceptance (the
  search on half the validation images, the delivery confirmed on the other half with the paired
  bound at 95%) and BatchNorm recalibration decided by its probe (``recalibrate_bn="auto"``), for
  the default policy (budget-aware), the paper's walk and the baselines. Each seed re-draws the
  validation/test split (the pooled images, stratified, grouped by source), so "test holds k/3"
  counts how often the promise held on data the search never saw; a seed that delivers nothing
  ("cannot both be met at 95%") keeps it.
* ``nocut``: TPE and NSGA-II without the accuracy early cut (``early_cut = "off"``): a cut trial
  reaches Optuna as PRUNED, which its samplers learn little from, so this row shows what they do
  when every trial they sample is evaluated in full (on the same image budget, fewer trials).

Variants run without a shared sweep (its accuracies belong to another objective): each walk
measures and pays its own lazy lookups, as ``primesvt search`` would. Every study of a cell has
the same image budget (``--budget``; trial caps are only a safety net, and the report says when
one was hit); every selection is evaluated on the test split once its study ends.

    python benchmarks/bench_comparison.py digits:0.15 digits-hard:0.4 [--variants main confident recal]

Writes benchmarks/results/comparison/<cell>[-<variant>]/ (table, runs, figures, from storage via
``primesvt report``'s code) and one row per policy and variant in
benchmarks/results/comparison/comparison.csv (machine recorded); the studies stay in
benchmarks/results/comparison/comparison-<benchmark>.db for ``primesvt dashboard`` and ``primesvt report``.
Rerunning resumes: finished studies are kept. ``--policies tpe nsga2 --tag uncapped`` runs part of
a cell as a side run (studies ``<cell>-uncapped/...``, rows in ``comparison-uncapped.csv``), e.g.
to lift a trial cap without touching the cell's rows.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd

from primesvt_optuna.acceptance.confirm import DEFAULT_HOLDOUT, RUNGS
from primesvt_optuna.plugin.objective import PruningObjective
from primesvt_optuna.plugin.study_config import load_study_config
from primesvt_optuna.reporting import ComparisonSpec, build_report, run_comparison
from primesvt_optuna.reporting.compare import WALK_POLICIES, copy_sweep, machine, run_sweep
from primesvt_optuna.reporting.frames import POLICIES

RESULTS = Path(__file__).resolve().parent / "results" / "comparison"
BENCHMARKS = {  # name: (study config, checkpoint, image budget per study)
    "digits": ("studies/digits.toml", "digits-2-64", 40_000),
    "digits-hard": ("studies/digits.toml", "digits-hard-2-64", 80_000),
    "digits-8-64": ("studies/digits-8-64.toml", "digits-8-64", 50_000),
    # the other spikingjelly families (issue 33): the same wall time as digits-8-64's 50,000 images
    # buys fewer of their images (an SDT image costs ~1.3x, a QKFormer image at 64x64 ~3x on CPU)
    "digits-sdt-8-64": ("studies/digits-sdt-8-64.toml", "digits-sdt-8-64", 25_000),
    "digits-qkformer-8-64": ("studies/digits-qkformer-8-64.toml", "digits-qkformer-8-64", 12_500),
}
DEFAULT_AND_NEW = ("prioritized", "budget-aware")
VARIANTS = {  # name: (study config overrides, policies run by default)
    "main": ({}, POLICIES),
    "confident": ({"accept": "confident"}, DEFAULT_AND_NEW),
    "recal": ({"recalibrate_bn": 512}, DEFAULT_AND_NEW),
    "recal-confident": ({"recalibrate_bn": 512, "accept": "confident"}, DEFAULT_AND_NEW),
    "nocut": ({"early_cut": "off"}, ("tpe", "nsga2")),
    "default": ({}, ("budget-aware", "prioritized", "smallest-first", "random-order", "uniform")),
}
OBJECTIVE_OPTIONS = {"default": {"accept": "confirmed", "recalibrate_bn": "auto"}}
RECORDED_BEFORE_AUTO = 0.5
"""The held-back share of a confirmed study that recorded none (it ran with half, before
``holdout="auto"``)."""
"""Objective arguments of a variant beyond the study config (each study's own seed re-splits)."""


def recorded_settings(storage: str, cell: str) -> dict[str, str]:
    """What the cell's studies recorded about recalibration and confirmation, over their seeds:
    ``recalibrate_rule`` (``off``, ``absolute``, ``relative``; ``/``-joined where seeds differ),
    ``rungs`` (the confirmation ladder's rung count) and ``holdout`` (the share held back, as the
    studies resolved it); the last two empty without confirmation. A confirmed
    row without these columns ran before the relative rule and the 8-rung ladder existed, and is
    flagged (‡) in the tables."""
    import optuna

    from primesvt_optuna.acceptance.confirm import study_rungs
    from primesvt_optuna.storage import open_storage

    rules, rungs, holdouts = set(), set(), set()
    for summary in optuna.get_all_study_summaries(open_storage(storage), include_best_trial=False):
        if not summary.study_name.startswith(f"{cell}/"):
            continue
        attrs = summary.user_attrs
        recalibration = attrs.get("primesvt:recalibrate_bn")
        rules.add("off" if not recalibration else recalibration.get("rule", "absolute"))
        if (attrs.get("primesvt:constraints") or {}).get("accept") == "confirmed":
            rungs.add(str(study_rungs(attrs)))
            holdouts.add(f"{attrs.get('primesvt:holdout', RECORDED_BEFORE_AUTO):g}")
    return {"recalibrate_rule": "/".join(sorted(rules)), "rungs": "/".join(sorted(rungs)),
            "holdout": "/".join(sorted(holdouts))}
LADDER = "bands + safe step"
"""The confirmation ladder's rung rule the confirmed rows ran with (the ``ladder`` column): rows
marked ``at-least`` ran with the rule it replaced (rung j: the smallest search drop among all
savings >= s_j, no budget-aware safe step) and are flagged in the tables."""


def _storage(bench: str) -> str:
    return f"sqlite:///{RESULTS}/comparison-{bench}.db"


def _shared_sweep(bench: str, cfg, jobs: int, cell: str) -> None:
    """Run the benchmark's sweep once (under the benchmark's name) and copy it to the cell's."""
    url = _storage(bench)
    run_sweep(ComparisonSpec(name=bench, storage=url, n_jobs=jobs), cfg.objective)
    copy_sweep(url, bench, url, cell)


def run(bench: str, target: float, variant: str, args) -> pd.DataFrame:
    config, checkpoint, budget = BENCHMARKS[bench]
    budget = args.budget or budget
    cell = f"{bench}-t{round(target * 100)}"
    name = (cell if variant == "main" else f"{cell}-{variant}") + (f"-{args.tag}" if args.tag else "")
    cfg = load_study_config(config).with_overrides(checkpoint=checkpoint, study_name=name, memory_target=target,
                                                   **VARIANTS[variant][0])
    main = variant == "main"
    policies = VARIANTS[variant][1] if main or not args.variant_policies else args.variant_policies
    policies = tuple(args.policies or policies)
    if main and not args.report_only and set(policies) & set(WALK_POLICIES):
        _shared_sweep(bench, cfg, args.jobs, name)
    walk = {"robustness_rule": cfg.robustness_rule, "walk_all": cfg.walk_all}
    resplit = variant in OBJECTIVE_OPTIONS
    spec = ComparisonSpec(name=name, storage=_storage(bench), policies=policies,
                          seeds=tuple(range(args.seeds)), budget_images=budget, max_trials=args.max_trials,
                          n_jobs=args.jobs, shared_sweep=main, sampler_options={p: walk for p in WALK_POLICIES},
                          objective_options=_objective_options(variant, args.holdout), resplit=resplit)
    print(f"== {name}: budget {budget:,} images per study, {cfg.constraints.describe()}", flush=True)
    started = time.perf_counter()
    if not args.report_only:
        run_comparison(spec, cfg.objective)
    wall = math.nan if args.report_only else time.perf_counter() - started
    report = build_report(spec.storage, RESULTS / name, name)
    print(report.display.to_string(index=False), flush=True)
    capped = report.runs.groupby("policy", sort=False).trials.max() >= args.max_trials
    return report.table.assign(
        benchmark=bench, target=target, variant=variant, budget_images=budget, max_trials=args.max_trials,
        trial_cap_hit=report.table.policy.map(capped).fillna(False), run_wall_s=round(wall, 1),
        ladder=LADDER if variant in OBJECTIVE_OPTIONS else "",
        **recorded_settings(spec.storage, name),
        **{k: str(v) for k, v in machine().items()},
    )


def _objective_options(variant: str, holdout: float | None) -> dict:
    """The variant's objective arguments, with ``--holdout`` for the confirmed ones."""
    options = dict(OBJECTIVE_OPTIONS.get(variant, {}))
    if holdout is not None and variant in OBJECTIVE_OPTIONS:
        options["holdout"] = holdout
    return options


def _cell_text(r: pd.Series) -> str:
    """One policy in one cell: its own selection's median saving (seeds meeting both constraints),
    median images to the target, seeds whose selection holds the accuracy budget on test; under
    confirmed acceptance the delivered saving, and the best seed's when it delivered more than the
    median."""
    if r.variant in OBJECTIVE_OPTIONS:  # confirmed: what was delivered, and its cost to confirmation
        saving, images = r.delivered_saving_median, r.images_to_confirmed_median
        cost = "nothing confirmed" if not math.isfinite(images) else f"{images / 1000:.1f}k img"
        old = "†" if getattr(r, "ladder", LADDER) == "at-least" else ""
        rungs = getattr(r, "rungs", None)
        old += "" if isinstance(rungs, (int, float)) and rungs == RUNGS else "‡"  # NaN: ran before the count was recorded
        best = r.delivered_saving_max
        spread = f", best {100 * best:.1f}%" if best > saving + 5e-4 else ""
        return (f"{100 * saving:.1f}%{old} ({r.policy_selection_met}/{r.seeds}{spread}), {cost}, "
                f"test holds {r.test_within_budget}/{r.test_checked}")
    saving = r.policy_selection_saving_median
    saving = "–" if math.isnan(saving) else f"{100 * saving:.1f}%"
    images = r.images_to_target_median
    cost = "not met" if not math.isfinite(images) else f"{images / 1000:.1f}k img"
    return f"{saving} ({r.policy_selection_met}/{r.seeds}), {cost}, test {r.test_within_budget}/{r.test_checked}"


def _cells(table: pd.DataFrame) -> list[tuple[str, float]]:
    """The table's (benchmark, target) cells, benchmarks in BENCHMARKS order, targets ascending."""
    return [(b, t) for b in BENCHMARKS for t in sorted(set(table.target[table.benchmark == b]))]


def headline(table: pd.DataFrame) -> str:
    """The markdown table the README and docs/results.md quote: a row per policy (and variant),
    a column per cell."""
    table = table.assign(cell=[f"{b}, {round(t * 100)}%" for b, t in zip(table.benchmark, table.target)],
                         row=[p if v == "main" else f"{p} + {v}" for p, v in zip(table.policy, table.variant)])
    order = [f"{b}, {round(t * 100)}%" for b, t in _cells(table)]
    rows = list(dict.fromkeys(table.sort_values("variant", key=lambda v: v.map(list(VARIANTS).index), kind="stable").row))
    cells = {(r.row, r.cell): _cell_text(r) for r in table.itertuples()}
    lines = ["| policy | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(cells.get((row, c), "") for c in order) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return "not met" if not math.isfinite(x) else f"{x:,.0f}"


def cell_table(rows: pd.DataFrame) -> str:
    """One cell, every policy and variant: the columns docs/results.md reads (the full table with
    ranges and costs is the cell's comparison.md)."""
    lines = ["| policy | selection saves (met) | validation | test | within budget on test | images to target "
             "| images in all | trials (cut) | wall s |", "|---" * 9 + "|"]
    for r in rows.itertuples():
        name = r.policy if r.variant == "main" else f"{r.policy} + {r.variant}"
        cap = " cap hit" if str(r.trial_cap_hit) == "True" else ""
        lines.append(
            f"| {name} | {_pct(r.policy_selection_saving_median)} ({r.policy_selection_met}/{r.seeds}) "
            f"| {_pct(r.val_accuracy_median)} | {_pct(r.test_accuracy_median)} "
            f"| {r.test_within_budget}/{r.test_checked} | {_num(r.images_to_target_median)} "
            f"| {_num(r.images_total_median)} | {_num(r.trials_median)} ({_num(r.trials_cut_median)}){cap} "
            f"| {r.seconds_total_median:,.0f} |")
    return "\n".join(lines) + "\n"


def variants_table(table: pd.DataFrame) -> str:
    """Per cell and policy with a variant: the point rule beside confident acceptance and BatchNorm
    recalibration (selection's median saving and seeds meeting both, median test accuracy, seeds
    within the budget on test)."""
    lines = ["| cell | policy | point rule | + confident (95% Clopper-Pearson) "
             "| + recal (BatchNorm on 512 training images) |", "|---" * 5 + "|"]
    for bench, target in _cells(table):
        rows = table[(table.benchmark == bench) & (table.target == target)]
        for policy in dict.fromkeys(rows.policy[rows.variant.isin(["confident", "recal"])]):
            entry = {r.variant: f"{_pct(r.policy_selection_saving_median)} ({r.policy_selection_met}/{r.seeds}), "
                                f"test {_pct(r.test_accuracy_median)}, {r.test_within_budget}/{r.test_checked} within"
                     for r in rows[rows.policy == policy].itertuples()}
            lines.append(f"| {bench}, {round(target * 100)}% | {policy} | "
                         + " | ".join(entry.get(v, "") for v in ("main", "confident", "recal")) + " |")
    return "\n".join(lines) + "\n"


def tables(table: pd.DataFrame) -> str:
    """The headline, one compact table per cell (variants under their policy's main row), then
    the variants side by side."""
    out = ["## Headline\n", headline(table)]
    for (bench, target), rows in table.groupby(["benchmark", "target"], sort=False):
        rank = rows.variant.map(list(VARIANTS).index)
        out += [f"\n## {bench}, {round(target * 100)}% target (budget {int(rows.budget_images.iloc[0]):,} images)\n",
                cell_table(rows.assign(rank=rank).sort_values("rank", kind="stable"))]
    out += ["\n## Variants\n", variants_table(table)]
    return "".join(out)


PRECISION_RESULTS = RESULTS.parent / "precision"
FULL_GRID = ("float", "int8", "int4", "int2")
PRECISION_POLICIES = {  # name: (sampler, precision grid, search_drop); the image budget is the images
    # of the AQ4SViT row with the same search_drop (the same images and acceptance as its anchor)
    "aq4svit": ("aq4svit", FULL_GRID, "budget"),
    "aq4svit, anticipate": ("aq4svit", FULL_GRID, "anticipate"),
    "joint": ("joint", FULL_GRID, "budget"),
    "joint, anticipate": ("joint", FULL_GRID, "anticipate"),
    "budget-aware knapsack": ("budget-aware", FULL_GRID, "budget"),
    "int8 + walk": ("precision-walk", ("float", "int8"), "budget"),
}
PRECISION_HOLDOUT = {0.015: 0.6}
"""Held-back share per accuracy budget where the default ("auto": 0.5 on the 359-image splits)
cannot confirm anything: at 1.5 points and 95% a confirmation part needs 178 images, and half of
a re-drawn digits validation split can be 177."""
UNIFORM_POINTS = ("int8", "int4")
"""Single points, no search: every prunable layer at this precision, unpruned, confirmed on the
held-back images like any delivery."""


def precision_comparison(bench: str, drop: float, seeds: int, tag: str = "", first_seed: int = 0,
                         policies: list[str] | None = None) -> pd.DataFrame:
    """The joint (rate, precision) search against its baselines (issue 34), in maximize mode (no
    memory target): per seed (which re-draws the validation/test split, the search/confirmation
    split and the evaluation order), the AQ4SViT-style search runs first and its evaluated images
    are every other search's image budget; the uniform precisions are single points. Confirmed
    acceptance at 95% with the accuracy budget ``drop``; each delivery is evaluated once on the
    seed's test part. Rows replace the cell's in benchmarks/results/precision/comparison[-<tag>].csv,
    written after every row (a run cut short keeps what it measured). ``policies``: only these
    searches and uniform points (``uniform int4``; the AQ4SViT-style search of each
    ``search_drop`` the searches use still runs: it sets their budget); None: all."""
    import optuna

    from primesvt_optuna.acceptance.confirm import judge, study_rungs
    from primesvt_optuna.plugin.result import result
    from primesvt_optuna.plugin.samplers import AQ4SViTSampler, BudgetAwareSampler, JointSampler, PrecisionWalkSampler
    from primesvt_optuna.training import evaluate

    config, checkpoint, _ = BENCHMARKS[bench]
    cfg = load_study_config(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[dict] = []
    PRECISION_RESULTS.mkdir(parents=True, exist_ok=True)
    path = PRECISION_RESULTS / (f"comparison-{tag}.csv" if tag else "comparison.csv")
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["benchmark", "drop", "seed"])
    old = old[~((old.benchmark == bench) & (old["drop"] == drop) & old.seed.between(first_seed, first_seed + seeds - 1))]

    def save() -> pd.DataFrame:
        table = pd.concat([old, pd.DataFrame(rows)], ignore_index=True)
        table.to_csv(path, index=False)
        return table

    def objective_for(seed: int, grid: tuple[str, ...], search_drop: str) -> PruningObjective:
        return cfg.objective(checkpoint=checkpoint, max_accuracy_drop=drop, memory_target=None, precisions=grid,
                             seed=seed, search_drop=search_drop, data={"resplit": seed},
                             holdout=PRECISION_HOLDOUT.get(drop, DEFAULT_HOLDOUT))

    def record(row: dict, objective: PruningObjective, rates: dict, precisions: dict) -> None:
        model = objective.build(rates, precisions)
        base = evaluate(objective.engine.model, objective.splits.test)
        test = evaluate(model, objective.splits.test)
        row.update(test_drop=base - test, test_ok=base - test <= drop + 1e-12,
                   precisions=" ".join(f"{k}={v}" for k, v in sorted(precisions.items())),
                   rates=" ".join(f"{k}={v:g}" for k, v in sorted(rates.items()) if v))
        rows.append({**row, **machine()})
        save()
        print({k: row[k] for k in ("benchmark", "drop", "policy", "seed", "images", "saving", "confirmed", "test_drop")},
              flush=True)

    for seed in range(first_seed, first_seed + seeds):
        budgets: dict[str, int] = {}  # per search_drop: the AQ4SViT-style search's images
        for name, (policy, grid, search_drop) in PRECISION_POLICIES.items():
            if policies is not None and name not in policies and not (policy == "aq4svit" and any(
                    PRECISION_POLICIES[p][2] == search_drop for p in policies if p in PRECISION_POLICIES)):
                continue
            budget = budgets.get(search_drop)
            objective = objective_for(seed, grid, search_drop)
            walk = {"walk_all": True} if policy == "precision-walk" else {}  # maximize mode
            sampler = {"budget-aware": BudgetAwareSampler, "precision-walk": PrecisionWalkSampler,
                       "aq4svit": AQ4SViTSampler, "joint": JointSampler}[policy](grid=cfg.grid, precisions=grid, seed=seed,
                                                          budget_images=None if policy == "aq4svit" else budget, **walk)
            started = time.perf_counter()
            study = optuna.create_study(directions=objective.directions, sampler=sampler)
            study.optimize(objective)
            wall = time.perf_counter() - started
            res = result(study)
            spent = res.stats["images_evaluated"] + res.stats["images_recalibrated"]  # what a budget counts
            if policy == "aq4svit":
                budgets[search_drop] = budget = spent
            confirmation = (res.selected or {}).get("confirmation") or {}
            row = {"benchmark": bench, "drop": drop, "policy": name, "seed": seed, "search_drop": search_drop,
                   "budget_images": budget, "trials": len(study.trials), "images": spent,
                   "images_recalibrated": res.stats["images_recalibrated"],
                   "wall_s": round(wall, 1), "confirmed": bool(res.both_met),
                   "saving": res.selected["memory_saving"] if res.both_met else 0.0,
                   "search_drop_measured": None if res.selected is None else res.selected["accuracy_drop"],
                   "bound": confirmation.get("bound"), "confirm_images": objective.confirm_images,
                   "holdout": objective.holdout, "recalibrate": _recalibration(objective),
                   "rungs": study_rungs(study.user_attrs)}
            if not res.both_met:  # nothing delivered: nothing reaches the test split
                rows.append({**row, "test_drop": None, "test_ok": True, **machine()})
                save()
                print({k: row[k] for k in ("policy", "seed", "images", "saving")}, flush=True)
                continue
            record(row, objective, res.selected["rates"], res.selected.get("precisions", {}))
        points = [p for p in UNIFORM_POINTS if policies is None or f"uniform {p}" in policies]
        if not points:
            continue
        objective = objective_for(seed, FULL_GRID, "budget")  # the unpruned model's part, once per seed
        base_search = sum(c for c, _ in objective.iter_batches({})) / objective.eval_images
        reference = objective.confirm_correct({})
        for precision in points:
            every = {layer: precision for layer in objective.engine.layers}
            started = time.perf_counter()
            search = sum(c for c, _ in objective.iter_batches({}, every)) / objective.eval_images
            verdict = judge(reference, objective.confirm_correct({}, every), objective.constraints,
                            objective.constraints.confidence)
            ok = base_search - search <= drop + 1e-12 and verdict.passed
            saving = 1.0 - objective.predict_bytes({}, every) / objective.base_bytes
            row = {"benchmark": bench, "drop": drop, "policy": f"uniform {precision}", "seed": seed,
                   "search_drop": "budget", "budget_images": None, "trials": 1, "images_recalibrated": 0,
                   "images": objective.eval_images + objective.confirm_images, "wall_s": round(time.perf_counter() - started, 1),
                   "confirmed": ok, "saving": saving if ok else 0.0, "search_drop_measured": base_search - search,
                   "bound": verdict.bound, "confirm_images": objective.confirm_images,
                   "holdout": objective.holdout, "recalibrate": _recalibration(objective), "rungs": 0}
            record(row, objective, {}, every)  # its test drop even when it is not delivered
    return save()


def _recalibration(objective: PruningObjective) -> str:
    """The CSV's ``recalibrate`` column: off, or the rule the study recalibrated by (rows written
    before the relative rule existed have none: the absolute rule)."""
    settings = objective.recalibration_settings
    return "off" if settings is None else settings.get("rule", "absolute")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="*", metavar="BENCHMARK:TARGET", help=f"benchmarks: {', '.join(BENCHMARKS)}")
    parser.add_argument("--variants", nargs="+", default=["main"], choices=list(VARIANTS))
    parser.add_argument("--variant-policies", nargs="+", default=None, choices=POLICIES,
                        help="policies of the variants (default: the variant's own, see VARIANTS)")
    parser.add_argument("--policies", nargs="+", default=None, choices=POLICIES,
                        help="run only these policies (use with --tag: the rows go to their own CSV)")
    parser.add_argument("--tag", default="",
                        help="a side run: studies named <cell>[-<variant>]-<tag>, rows in comparison-<tag>.csv")
    parser.add_argument("--budget", type=int, default=None, help="images per study (default: per benchmark)")
    parser.add_argument("--holdout", type=float, default=None,
                        help="confirmed variants: the share of validation held back (default: the objective's; "
                             "use with --tag)")
    parser.add_argument("--max-trials", type=int, default=1500, help="safety net; reported when hit")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="--precision: seeds first .. first + seeds - 1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the cells' reports and CSV rows from the studies already in storage (no wall time)")
    parser.add_argument("--tables", action="store_true", help="only print the markdown tables from the CSV")
    parser.add_argument("--precision", action="store_true",
                        help="the precision comparison instead (precision_comparison): cells BENCHMARK:DROP, "
                             "e.g. digits:0.03 digits:0.015 (maximize mode, confirmed acceptance)")
    parser.add_argument("--precision-policies", nargs="+", default=None,
                        choices=[*PRECISION_POLICIES, *(f"uniform {p}" for p in UNIFORM_POINTS)],
                        help="--precision: only these searches and uniform points (use with --tag)")
    args = parser.parse_args()
    if args.precision:
        for item in args.cells:
            bench, _, drop = item.partition(":")
            precision_comparison(bench, float(drop), args.seeds, args.tag, args.first_seed, args.precision_policies)
        return
    path = RESULTS / (f"comparison-{args.tag}.csv" if args.tag else "comparison.csv")
    if args.tables:
        print(tables(pd.read_csv(path)), end="")
        return
    if not args.cells:
        parser.error("name at least one BENCHMARK:TARGET cell (or --tables)")
    if args.policies and not args.tag:
        parser.error("--policies runs part of a cell: give it a --tag, so the cell's full rows stay as they are")
    for item in args.cells:
        bench, _, target = item.partition(":")
        if bench not in BENCHMARKS or not target:
            raise SystemExit(f"bad cell {item!r}: write BENCHMARK:TARGET with BENCHMARK one of {', '.join(BENCHMARKS)}")
        for variant in args.variants:
            rows = run(bench, float(target), variant, args)
            if path.exists():  # keep every other cell and variant of earlier runs
                old = pd.read_csv(path)
                keep = ~((old.benchmark == bench) & (old.target == float(target)) & (old.variant == variant))
                rows = pd.concat([old[keep], rows], ignore_index=True)
            first = ["benchmark", "target", "variant", "policy"]
            rows[first + [c for c in rows.columns if c not in first]].to_csv(path, index=False)
            print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
