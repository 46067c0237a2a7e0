"""How much saving can be *confirmed* at all: the ceiling that the evaluation images put on the
default (confirmed) acceptance, per shipped checkpoint, and how the ladder's rung rule uses it.

Every configuration any comparison study evaluated on a benchmark (its search trials, read from
``benchmarks/results/comparison/comparison-<benchmark>.db``, which ``bench_comparison.py``
writes: run it first), plus uniform rates 0.1 .. 0.7, is
pruned, BatchNorm-recalibrated as the default does (512 training images, seed 0) and evaluated on
the checkpoint's validation and test images pooled; the unpruned model too. Per configuration
this gives its pooled drop and its disagreement with the unpruned model (the share of images on
which exactly one of them is right), the two numbers the paired bound of
:mod:`primesvt_optuna.acceptance.bounds` depends on. Two results:

* ``power-ceiling.csv``: per benchmark and accuracy budget, the largest saving whose pooled drop
  is within the budget (the best any selection rule could deliver with these configurations), the
  largest whose expected bound passes on the images the default holds back (``holdout="auto"``:
  half of the 359-image validation splits, 0.8 of digits-hard's), and the frontier within 3
  points (each configuration with a smaller pooled drop than every larger saving), each with the
  fewest confirmation images that would confirm it at 95% if its discordance rates are the pooled
  ones;
* ``power-ladder.csv``: the default's confirmation replayed on these configurations for 30 seeds
  (and with other held-back shares, ``HOLDOUTS``, for the shipped rung rule):
  each seed re-draws validation/test from the pool (as the comparison's seeds do) and search /
  confirmation from validation; candidates are the configurations within the budget on the
  search part; the ladder is confirmed on the confirmation part and the delivery judged on the
  test part. ``bands`` is the shipped rung rule (:func:`primesvt_optuna.acceptance.confirm.ladder`),
  ``at-least`` the rule it replaced (rung ``j``: the smallest search drop among all saving at least
  ``s_j``). The candidates are a superset of what one study evaluates, so this measures the rules
  against each other and the ceiling, not a study's own result.

    python benchmarks/bench_acceptance_power.py digits digits-hard digits-8-64
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from torch.utils.data import ConcatDataset
from tqdm import tqdm

from _results import RESULTS
from bench_comparison import BENCHMARKS
from primesvt_optuna.acceptance.bounds import drop_upper_bound
from primesvt_optuna.acceptance.confirm import auto_holdout, ladder
from primesvt_optuna.acceptance.split import grouped_split, labels_and_groups
from primesvt_optuna.plugin.objective import PruningObjective
from primesvt_optuna.plugin.samplers._claims import _claimed_rates
from primesvt_optuna.reporting.compare import machine
from primesvt_optuna.training import iter_correct

OUT = RESULTS / "comparison"
BUDGETS = (0.03, 0.015)
CONFIDENCE = 0.95
SEEDS = 30
HOLDOUTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the shares of validation held back that the replay tries
UNIFORM = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
TARGETS = {"digits": (0.15, 0.4), "digits-hard": (0.15, 0.4), "digits-8-64": (0.25, 0.4),
           "digits-sdt-8-64": (0.25, 0.4), "digits-qkformer-8-64": (0.25, 0.4)}


def configurations(bench: str, layers: list[str]) -> list[dict[str, float]]:
    """Every configuration a comparison study of ``bench`` evaluated, and the uniform ones."""
    path = OUT / f"comparison-{bench}.db"
    if not path.exists():
        raise SystemExit(f"error: {path} is missing: run benchmarks/bench_comparison.py on {bench} first "
                         "(the storages are not committed)")
    url = f"sqlite:///{path}"
    found: dict[str, dict[str, float]] = {}
    for summary in optuna.get_all_study_summaries(url):
        for t in optuna.load_study(study_name=summary.study_name, storage=url).get_trials(deepcopy=False):
            rates = {k[len("rate:"):]: v for k, v in t.params.items() if k.startswith("rate:")}
            if rates and t.user_attrs.get("phase") != "confirm":
                found[json.dumps(sorted(rates.items()))] = rates
    for u in UNIFORM:
        found[json.dumps(sorted((name, u) for name in layers))] = {name: u for name in layers}
    return list(found.values())


def correctness(bench: str) -> dict[str, np.ndarray]:
    """Per-image correctness of the unpruned model and each configuration on the pooled images."""
    _, checkpoint, _ = BENCHMARKS[bench]
    objective = PruningObjective(checkpoint, recalibrate_bn=512, accept="point")
    pooled = ConcatDataset([objective.splits.val, objective.splits.test])
    labels, groups = labels_and_groups(pooled)
    configs = configurations(bench, objective.engine.layers)

    def correct(rates: dict[str, float]) -> np.ndarray:
        return torch.cat(list(iter_correct(objective.build(rates), pooled, batch_size=256))).numpy()

    rows = [correct(r) for r in tqdm(configs, desc=f"{bench}: configurations")]
    saving = [1 - objective.predict_bytes(r) / objective.engine.base_bytes for r in configs]
    return {"ref": correct({}), "C": np.array(rows), "saving": np.array(saving), "labels": labels,
            "groups": groups, "n_val": len(objective.splits.val), "configs": configs,
            "recalibrate_rule": objective.recalibrate_rule}


@lru_cache(maxsize=None)
def _bound(b: int, c: int, n: int) -> float:
    return drop_upper_bound(b, c, n, CONFIDENCE)


def images_to_confirm(p_b: float, p_c: float, budget: float, limit: int = 100_000) -> float:
    """The fewest images on which expected discordant counts ``n p_b``, ``n p_c`` confirm ``budget``."""
    if p_b - p_c >= budget:
        return math.inf
    n = 32
    while n <= limit:
        if _bound(round(n * p_b), round(n * p_c), n) <= budget:
            return n
        n = int(n * 1.1) + 1
    return math.inf


def ceiling(bench: str, d: dict[str, np.ndarray]) -> pd.DataFrame:
    ref, c, s = d["ref"], d["C"], d["saving"]
    p_b = ((ref[None] == 1) & (c == 0)).mean(1)
    p_c = ((ref[None] == 0) & (c == 1)).mean(1)
    drop, held_back = p_b - p_c, round(d["n_val"] * auto_holdout(d["n_val"]))
    rows = []
    for budget in BUDGETS:
        need = np.array([images_to_confirm(b, cc, budget) for b, cc in zip(p_b, p_c)])
        within, confirmable = drop <= budget, need <= held_back
        for label, ok in (("pooled drop within budget", within), ("confirmable on the held-back images", confirmable)):
            i = int(np.argmax(np.where(ok, s, -1)))
            rows.append({"benchmark": bench, "budget": budget, "ceiling": label, "saving": s[i] if ok.any() else 0.0,
                         "pooled_drop": drop[i], "disagreement": p_b[i] + p_c[i], "images_to_confirm": need[i],
                         "held_back_images": held_back, "pooled_images": len(ref), "configurations": len(s),
                         "recalibrate_rule": d["recalibrate_rule"]})
    best = math.inf  # the frontier: each configuration with a smaller pooled drop than every larger saving
    for i in np.argsort(-s):
        if drop[i] < best and drop[i] <= max(BUDGETS):
            best = drop[i]
            rows.append({"benchmark": bench, "budget": max(BUDGETS), "ceiling": "frontier", "saving": s[i],
                         "pooled_drop": drop[i], "disagreement": p_b[i] + p_c[i],
                         "images_to_confirm": images_to_confirm(p_b[i], p_c[i], max(BUDGETS)),
                         "held_back_images": held_back, "pooled_images": len(ref), "configurations": len(s),
                         "recalibrate_rule": d["recalibrate_rule"]})
    return pd.DataFrame(rows)


def _at_least(pool: list[int], s: np.ndarray, key: np.ndarray, rungs: int = 4) -> list[int]:
    """The rung rule the bands replaced: rung j is the smallest search drop among all saving >= s_j."""
    low, high = s[pool].min(), s[pool].max()
    chosen: list[int] = []
    for j in range(rungs):
        least = low + (high - low) * j / (rungs - 1) - 1e-12
        best = min((i for i in pool if s[i] >= least), key=lambda i: (key[i], -s[i], i))
        if not chosen or chosen[-1] != best:
            chosen.append(best)
    return chosen


def _bands(pool: list[int], s: np.ndarray, key: np.ndarray, configs: list[dict[str, float]]) -> list[int]:
    """The shipped rule, through :func:`ladder` on stand-in trials."""
    trials = []
    for i in pool:
        t = optuna.trial.create_trial(
            params={f"rate:{k}": v for k, v in configs[i].items()},
            distributions={f"rate:{k}": optuna.distributions.FloatDistribution(0.0, 0.9) for k in configs[i]},
            value=0.0, user_attrs={"accuracy_drop": float(key[i]), "model_bytes": int(1e9 * (1 - s[i])),
                                   "memory_saving": float(s[i]), "phase": "search", "index": i},
            system_attrs={"constraints:accuracy": -1.0})
        t.number = i
        trials.append(t)
    return [r.trial.user_attrs["index"] for r in ladder(trials, _claimed_rates)]


def replay(bench: str, d: dict[str, np.ndarray], target: float, budget: float, rule: str,
           holdout: float | None = None) -> dict[str, float]:
    """The default's confirmation on ``SEEDS`` re-drawn splits; ``holdout``: the share of
    validation held back (None: the default's, ``"auto"``)."""
    ref, c, s, labels, groups = d["ref"], d["C"], d["saving"], d["labels"], d["groups"]
    holdout = auto_holdout(d["n_val"]) if holdout is None else holdout
    delivered, holds = [], []
    for seed in range(SEEDS):
        val, test = grouped_split(labels, groups, len(ref) - d["n_val"], seed)
        search, confirm = (val[i] for i in grouped_split(labels[val], groups[val], round(len(val) * holdout), seed))

        def counts(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
            r, p = ref[idx][None], c[:, idx]
            return ((r == 1) & (p == 0)).sum(1), ((r == 0) & (p == 1)).sum(1), len(idx)

        bs, cs, ns = counts(search)
        drop = (bs - cs) / ns
        pool = [int(i) for i in np.where(drop <= budget + 1e-12)[0]]
        if any(s[i] >= target for i in pool):
            pool = [i for i in pool if s[i] >= target]
        rungs = [] if not pool else _bands(pool, s, drop, d["configs"]) if rule == "bands" else _at_least(pool, s, drop)
        bc, cc, nc = counts(confirm)
        bt, ct, nt = counts(test)
        got = None
        for i in rungs:
            if _bound(int(bc[i]), int(cc[i]), nc) > budget + 1e-12:
                break
            got = i
        delivered.append(0.0 if got is None else s[got])
        holds.append(True if got is None else (bt[got] - ct[got]) / nt <= budget + 1e-12)
    saved = np.array(delivered)
    return {"benchmark": bench, "target": target, "budget": budget, "rule": rule, "holdout": holdout,
            "recalibrate_rule": d["recalibrate_rule"], "seeds": SEEDS,
            "delivered_median": float(np.median(saved)), "target_met": int((saved >= target).sum()),
            "delivered_any": int((saved > 0).sum()), "test_holds": int(sum(holds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="+", choices=list(BENCHMARKS))
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep each benchmark's per-image correctness here (power-<benchmark>.pkl) and reuse it")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    ceilings, replays = [], []
    for bench in args.benchmarks:
        cached = args.cache / f"power-{bench}.pkl" if args.cache else None
        if cached is not None and cached.exists():
            d = pickle.loads(cached.read_bytes())
        else:
            d = correctness(bench)
            if cached is not None:
                cached.write_bytes(pickle.dumps(d))
        ceilings.append(ceiling(bench, d))
        replays += [replay(bench, d, t, 0.03, rule) for t in TARGETS[bench] for rule in ("bands", "at-least")]
        replays += [replay(bench, d, t, 0.03, "bands", h) for t in TARGETS[bench] for h in HOLDOUTS
                    if h != auto_holdout(d["n_val"])]
    where = {k: str(v) for k, v in machine().items()}
    command = "python benchmarks/bench_acceptance_power.py " + " ".join(args.benchmarks)
    for name, frame in (("power-ceiling.csv", pd.concat(ceilings)), ("power-ladder.csv", pd.DataFrame(replays))):
        frame = frame.assign(command=command, **where)
        path = OUT / name
        if path.exists():  # keep the other benchmarks' rows
            old = pd.read_csv(path)
            frame = pd.concat([old[~old.benchmark.isin(args.benchmarks)], frame], ignore_index=True)
            order = {b: i for i, b in enumerate(BENCHMARKS)}
            frame = frame.sort_values("benchmark", key=lambda c: c.map(order), kind="stable")
        frame.to_csv(path, index=False)
        print(frame.drop(columns=["command", *where]).to_string(index=False), f"\nwrote {path}", sep="\n")


if __name__ == "__main__":
    main()
