"""Study configs: one TOML file says what to prune, under which constraints, how, and where to
store the study. ``primesvt search CONFIG.toml`` reads it; command-line flags override it.

    study_name = "digits-demo"              # the Optuna study (one per config and settings)
    storage = "sqlite:///runs/digits.db"    # any storage string primesvt_optuna.storage accepts
    checkpoint = "digits-2-64"              # a checkpoint path, or the name of a shipped baseline
    device = "cpu"

    [data]                                  # all optional
    eval_images = 500                       # seeded validation subset that drives the search
    batch_size = 256
    first_batch = 32                        # growing batches 32, 32, 64, ... up to batch_size, so the
                                            #   early cut can act after 32 images; 0: plain batches
    # name / path / img_size / seed override the checkpoint's own data spec (e.g. where CIFAR is)

    [constraints]
    max_accuracy_drop = 0.03                # or min_accuracy = 0.95 (absolute floor)
    memory_target = 0.4                     # or memory_budget = "2MB"
    accept = "confirmed"                    # the default: the delivery's drop is bounded on held-back
                                            #   images; "point" (the paper's rule) or "confident"
    # confidence = 0.95                     # level of the bound (confirmed and confident)
    # holdout = "auto"                      # confirmed: share of the evaluation images held back
                                            #   ("auto": all but 200, from 0.5 to 0.8;
                                            #   0.5 with a precision grid)
    # search_drop = "budget"                # confirmed: the search steps by the whole budget, or by
                                            #   "anticipate": what the held-back images could confirm
    # interval = "clopper-pearson"          # confident only ("wilson" also works)

    [search]
    policy = "budget-aware"                 # the default; prioritized (the paper's walk) | uniform |
                                            #   random-order | smallest-first | tpe | nsga2
    grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    robustness_rule = "highest"             # or "contiguous"
    sweep = "lazy"                          # "full": every layer at every rate before the walk
    # budget_images = 50000                 # maximize: go on past the memory target, within N images
    walk_all = false
    trials = 200                            # a cap for the walks; the budget for tpe/nsga2
    seed = 0
    workers = 1
    early_cut = "exact"                     # "statistical" (with confidence) or "off"
    confidence = 0.99
    prune_embed = false                     # true: also prune the embedding dimension (one global layer)
    recalibrate_bn = "auto"                 # adaptive BatchNorm where a probe shows it pays; N: on N images; 0: off
    recalibrate_rule = "auto"               # "relative": move the trained statistics by what pruning changed;
                                            #   "absolute": replace them; "auto": relative when pruning only, with
                                            #   precisions where recalibration alone changes 5% of the predictions
    # flops_target = 0.3                    # also save this fraction of FLOPs per image (constraint "flops")
    # precisions = "float,int8,int4,int2"   # also choose a weight precision per layer (default: float alone,
                                            #   pruning only); policies budget-aware, uniform, precision-walk,
                                            #   aq4svit, joint (the default with a grid), tpe, nsga2

Relative paths are relative to the current directory. Every mistake (malformed TOML, unknown
key, wrong type, grid outside [0, 1), negative accuracy budget, memory target >= 1) is one
``PrimeSVTError`` line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..acceptance.confirm import DEFAULT_HOLDOUT, check_holdout_setting, check_search_drop
from ..errors import PrimeSVTError
from .constraints import DEFAULT_GRID, Constraints, normalize_grid
from .pruner import DEFAULT_FIRST_BATCH

POLICIES = ("budget-aware", "prioritized", "uniform", "random-order", "smallest-first", "tpe", "nsga2",
            "precision-walk", "aq4svit", "joint")
PRECISION_POLICIES = ("budget-aware", "uniform", "precision-walk", "aq4svit", "joint", "tpe", "nsga2")
WALK_POLICIES = ("prioritized", "random-order", "smallest-first")
EARLY_CUTS = ("exact", "statistical", "off")
DEFAULT_POLICY = "budget-aware"  # finds the largest confirmed savings (docs/results.md); "prioritized" is the paper's walk
DEFAULT_PRECISION_POLICY = "joint"  # with a precision grid: beats the knapsack in every cell (docs/precision.md)
DEFAULT_ACCEPT = "confirmed"

_TOP = {"study_name": str, "storage": str, "checkpoint": str, "device": str}
_DATA = {"eval_images": int, "batch_size": int, "first_batch": int, "name": str, "path": str, "img_size": int, "seed": int}
_CONSTRAINTS = {"max_accuracy_drop": float, "min_accuracy": float, "memory_target": float, "memory_budget": (int, str),
                "accept": str, "confidence": float, "interval": str, "holdout": (float, str), "search_drop": str}
_SEARCH = {
    "policy": str, "grid": list, "robustness_rule": str, "sweep": str, "walk_all": bool, "budget_images": int,
    "trials": int, "seed": int, "workers": int, "early_cut": str, "confidence": float, "wait_timeout": float,
    "prune_embed": bool, "recalibrate_bn": (int, str), "recalibrate_rule": str, "flops_target": float,
    "precisions": (str, list),
}
_SECTIONS = {"data": _DATA, "constraints": _CONSTRAINTS, "search": _SEARCH}


@dataclass(frozen=True)
class StudyConfig:
    """A validated study config (see module docs for the file format)."""

    study_name: str
    storage: str
    checkpoint: str
    constraints: Constraints
    device: str = "cpu"
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_images: int | None = None
    batch_size: int = 256
    first_batch: int = DEFAULT_FIRST_BATCH
    policy: str = ""  # "": not named, the default (DEFAULT_POLICY, DEFAULT_PRECISION_POLICY with precisions)
    grid: tuple[float, ...] = DEFAULT_GRID
    robustness_rule: str = "highest"
    sweep: str = "lazy"
    walk_all: bool = False
    budget_images: int | None = None
    trials: int | None = None
    seed: int = 0
    workers: int = 1
    early_cut: str = "exact"
    confidence: float = 0.99
    wait_timeout: float = 3600.0
    prune_embed: bool = False
    recalibrate_bn: int | str = "auto"
    recalibrate_rule: str = "auto"
    flops_target: float | None = None
    holdout: float | str | None = None  # confirmed acceptance's held-back share or "auto" (None: DEFAULT_HOLDOUT)
    search_drop: str = "budget"  # confirmed acceptance: the drop the search steps by (confirm.SEARCH_DROPS)
    precisions: tuple[str, ...] = ("float",)
    source: str = "<config>"
    default_policy: bool = False  # the policy was not named: it follows the precision grid

    def __post_init__(self) -> None:
        def bad(message: str) -> PrimeSVTError:
            return PrimeSVTError(f"{self.source}: {message}")

        if not self.policy:
            from ..precision.search import FLOAT_ONLY, check_precisions

            try:
                named = check_precisions(self.precisions) != FLOAT_ONLY
            except PrimeSVTError:  # refused where the grid is used, with its own line
                named = True
            object.__setattr__(self, "policy", DEFAULT_PRECISION_POLICY if named else DEFAULT_POLICY)
            object.__setattr__(self, "default_policy", True)

        if not self.study_name.strip():
            raise bad("study_name is empty")
        if self.policy not in POLICIES:
            raise bad(f"policy {self.policy!r} is unknown: choose one of {', '.join(POLICIES)}")
        if self.robustness_rule not in ("highest", "contiguous"):
            raise bad(f"robustness_rule must be 'highest' or 'contiguous', got {self.robustness_rule!r}")
        if self.sweep not in ("lazy", "full"):
            raise bad(f"sweep must be 'lazy' or 'full', got {self.sweep!r}")
        if self.early_cut not in EARLY_CUTS:
            raise bad(f"early_cut must be one of {', '.join(EARLY_CUTS)}, got {self.early_cut!r}")
        if not 0.5 < self.confidence < 1.0:
            raise bad(f"confidence must lie in (0.5, 1), got {self.confidence}")
        for key in ("batch_size", "workers"):
            if getattr(self, key) < 1:
                raise bad(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.first_batch < 0:
            raise bad(f"first_batch must be at least 1 (0: plain batch_size batches), got {self.first_batch}")
        for key in ("eval_images", "trials"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise bad(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.flops_target is not None and not 0 < self.flops_target < 1:
            raise bad(f"flops_target is the fraction of FLOPs per image to save, in (0, 1), got {self.flops_target}")
        if self.recalibrate_bn != "auto" and (not isinstance(self.recalibrate_bn, int) or self.recalibrate_bn < 0):
            raise bad(f"recalibrate_bn is 'auto' or a number of training images (0: off), got {self.recalibrate_bn!r}")
        from ..pruning.recalibrate import RULES

        if self.recalibrate_rule not in ("auto", *RULES):
            raise bad(f"recalibrate_rule must be one of auto, {', '.join(RULES)}, got {self.recalibrate_rule!r}")
        if not 0 <= self.seed < 2**32:
            raise bad(f"seed must be in 0..2**32-1, got {self.seed}")
        if self.wait_timeout <= 0:
            raise bad(f"wait_timeout must be positive, got {self.wait_timeout}")
        if self.policy in ("tpe", "nsga2") and self.trials is None:
            raise bad(f"policy {self.policy!r} needs a trial budget: set [search] trials or pass --trials")
        if self.holdout is not None:
            if not self.constraints.confirmed:
                raise bad(f"holdout applies to accept = 'confirmed' only, not {self.constraints.accept!r}")
            try:
                check_holdout_setting(self.holdout)
            except PrimeSVTError as exc:
                raise bad(str(exc)) from None
        try:
            check_search_drop(self.search_drop, self.constraints)
        except PrimeSVTError as exc:
            raise bad(str(exc)) from None
        try:
            object.__setattr__(self, "grid", normalize_grid(self.grid))
        except PrimeSVTError as exc:
            raise bad(f"[search] grid: {exc}") from None
        from ..precision.search import FLOAT_ONLY, check_precisions

        try:
            object.__setattr__(self, "precisions", check_precisions(self.precisions))
        except PrimeSVTError as exc:
            raise bad(f"[search] precisions: {exc}") from None
        if self.precisions != FLOAT_ONLY and self.policy not in PRECISION_POLICIES:
            raise bad(f"policy {self.policy!r} prunes only: with precisions choose one of {', '.join(PRECISION_POLICIES)}")
        if self.precisions == FLOAT_ONLY and self.policy in ("precision-walk", "aq4svit", "joint"):
            raise bad(f"policy {self.policy!r} chooses precisions: give precisions, e.g. float,int8,int4")

    def with_overrides(self, **overrides: Any) -> StudyConfig:
        """A copy with the given fields replaced (``None`` values are ignored); re-validated.
        ``accept``, ``accept_confidence`` and ``accept_interval`` set the constraints' acceptance
        rule (``confidence`` is the statistical early cut's level): a level applies to the rule in
        effect, an interval alone asks for the confident rule (the only one that has one); a rule
        other than confirmed drops the config's ``holdout``."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "policy" in changes:
            changes["default_policy"] = False
        elif self.default_policy:  # the default follows the new grid
            changes.update(policy="", default_policy=False)
        acceptance = {name: changes.pop(key) for key, name in
                      (("accept", "accept"), ("accept_confidence", "confidence"), ("accept_interval", "interval"))
                      if key in changes}
        if "interval" in acceptance and "accept" not in acceptance:
            acceptance["accept"] = "confident"
        rule = acceptance.get("accept", self.constraints.accept)
        if rule != "confirmed" and "holdout" not in changes:
            changes["holdout"] = None
        if rule != "confirmed" and "search_drop" not in changes:
            changes["search_drop"] = "budget"
        constraint_keys = {"max_accuracy_drop", "min_accuracy", "memory_target", "memory_budget"}
        if constraint_keys & changes.keys() or acceptance:
            current = {**self.constraints.to_dict(), "accept": self.constraints.accept}
            for key in ("confidence", "interval"):  # what the new rule does not have goes
                if key not in _RULE_KEYS[rule]:
                    current.pop(key, None)
            given = {k: changes.pop(k) for k in list(changes) if k in constraint_keys}
            given.update(acceptance)
            if "max_accuracy_drop" in given:
                current["min_accuracy"] = None
            if "min_accuracy" in given:
                current["max_accuracy_drop"] = None
            if "memory_target" in given:
                current["memory_budget"] = None
            if "memory_budget" in given:
                current["memory_target"] = None
            changes["constraints"] = _constraints({**current, **given}, self.source)
        return dataclasses.replace(self, **changes)

    @property
    def pruner_settings(self) -> dict[str, Any]:
        """Keyword arguments for ConstraintPruner (None: no pruner)."""
        if self.early_cut == "off":
            return {"memory": True, "accuracy": False}
        return {"confidence": self.confidence if self.early_cut == "statistical" else None}

    def objective(self, robustness_cache: dict[tuple[str, float], float] | None = None, **overrides: Any) -> Any:
        """The PruningObjective this config describes (``robustness_cache``: a shared sweep's
        accuracies, for the walks of a comparison; ``overrides``: PruningObjective arguments that
        replace the config's, a ``data`` dict merged into the config's data spec)."""
        from .objective import PruningObjective
        from .pruner import ConstraintPruner

        c = self.constraints
        data = {**(self.data or {}), **overrides.pop("data", {})}
        return PruningObjective(**{**dict(
            checkpoint=self.checkpoint, data=data or None, max_accuracy_drop=c.max_accuracy_drop,
            min_accuracy=c.min_accuracy, memory_target=c.memory_target, memory_budget=c.memory_budget,
            grid=self.grid, eval_images=self.eval_images, batch_size=self.batch_size,
            first_batch=self.first_batch or None, device=self.device,
            pruner=ConstraintPruner(**self.pruner_settings), prune_embed=self.prune_embed,
            robustness_cache=robustness_cache, wait_timeout=self.wait_timeout,
            accept=c.accept, confidence=c.confidence, interval=c.interval, recalibrate_bn=self.recalibrate_bn,
            recalibrate_rule=self.recalibrate_rule,
            flops_target=self.flops_target, holdout=DEFAULT_HOLDOUT if self.holdout is None else self.holdout,
            precisions=self.precisions, search_drop=self.search_drop,
        ), **overrides})


_RULE_KEYS = {"point": (), "confirmed": ("confidence",), "confident": ("confidence", "interval")}


def _constraints(values: dict[str, Any], source: str) -> Constraints:
    values = {"accept": DEFAULT_ACCEPT, **values}
    extra = sorted({"confidence", "interval"} & values.keys() - set(_RULE_KEYS.get(values["accept"], ("confidence", "interval"))))
    if extra:
        owners = {"confidence": "accept = 'confirmed' or 'confident'", "interval": "accept = 'confident'"}
        raise PrimeSVTError(
            f"{source}: [constraints] {' and '.join(extra)} {'apply' if len(extra) > 1 else 'applies'} to "
            f"{owners[extra[-1]]} only, not {values['accept']!r} (the statistical early cut's level is [search] confidence)"
        )
    try:
        return Constraints.from_dict(values)
    except PrimeSVTError as exc:
        raise PrimeSVTError(f"{source}: [constraints] {exc}") from None


def _check(section: str, table: Any, schema: dict[str, Any], source: str) -> dict[str, Any]:
    where = f"[{section}]" if section else "top level"
    if not isinstance(table, dict):
        raise PrimeSVTError(f"{source}: {where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(schema) - (set(_SECTIONS) if not section else set()))
    if unknown:
        raise PrimeSVTError(f"{source}: unknown key(s) {', '.join(unknown)} at {where}: known are {', '.join(schema)}")
    out = {}
    for key, value in table.items():
        if key in _SECTIONS and not section:
            continue
        kind = schema[key]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float, (int, str)))
        if (kind is float or kind == (float, str)) and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise PrimeSVTError(f"{source}: {where} {key} must be {names}, got {value!r}")
        out[key] = value
    return out


def parse_study_config(text: str, source: str = "<config>") -> StudyConfig:
    """A StudyConfig from TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PrimeSVTError(f"{source}: malformed TOML: {exc}") from None
    top = _check("", raw, _TOP, source)
    sections = {name: _check(name, raw.get(name, {}), schema, source) for name, schema in _SECTIONS.items()}
    for key in ("study_name", "checkpoint"):
        if key not in top:
            raise PrimeSVTError(f"{source}: {key} is missing (top level)")
    data = dict(sections["data"])
    search = sections["search"]
    constraints = dict(sections["constraints"])
    holdout = constraints.pop("holdout", None)
    search_drop = constraints.pop("search_drop", "budget")
    return StudyConfig(
        study_name=top["study_name"],
        storage=top.get("storage", f"sqlite:///{top['study_name']}.db"),
        checkpoint=top["checkpoint"],
        device=top.get("device", "cpu"),
        constraints=_constraints(constraints, source),
        eval_images=data.pop("eval_images", None),
        batch_size=data.pop("batch_size", 256),
        first_batch=data.pop("first_batch", DEFAULT_FIRST_BATCH),
        data=data,
        policy=search.get("policy", ""),
        grid=tuple(search.get("grid", DEFAULT_GRID)),
        robustness_rule=search.get("robustness_rule", "highest"),
        sweep=search.get("sweep", "lazy"),
        budget_images=search.get("budget_images"),
        walk_all=search.get("walk_all", False),
        trials=search.get("trials"),
        seed=search.get("seed", 0),
        workers=search.get("workers", 1),
        early_cut=search.get("early_cut", "exact"),
        confidence=search.get("confidence", 0.99),
        wait_timeout=search.get("wait_timeout", 3600.0),
        prune_embed=search.get("prune_embed", False),
        recalibrate_bn=search.get("recalibrate_bn", "auto"),
        recalibrate_rule=search.get("recalibrate_rule", "auto"),
        flops_target=search.get("flops_target"),
        holdout=holdout,
        search_drop=search_drop,
        precisions=tuple(search["precisions"].split(",") if isinstance(search.get("precisions"), str)
                         else search.get("precisions", ("float",))),
        source=source,
    )


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study config file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrimeSVTError(f"study config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PrimeSVTError(f"cannot read study config {path}: {exc}") from None
    return parse_study_config(text, str(path))
