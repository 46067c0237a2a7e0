"""Study configs: the shipped ones load, every malformed one is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.plugin.study_config import load_study_config, parse_study_config

STUDIES = Path(__file__).resolve().parents[1] / "studies"
GOOD = """
study_name = "s"
checkpoint = "digits-2-64"
[constraints]
max_accuracy_drop = 0.03
memory_target = 0.4
"""


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_study_config(path)
    assert cfg.constraints.max_accuracy_drop == 0.03
    assert cfg.grid == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def test_digits_is_the_3_point_default():
    cfg = load_study_config(STUDIES / "digits.toml")
    assert (cfg.checkpoint, cfg.policy, cfg.study_name) == ("digits-2-64", "budget-aware", "digits-demo")
    assert cfg.constraints.memory_target == 0.15 and cfg.constraints.accept == "confirmed"


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_run_the_defaults(path):
    """No shipped config pins a policy or an acceptance rule: the defaults are what runs."""
    cfg = load_study_config(path)
    assert (cfg.policy, cfg.constraints.accept, cfg.holdout) == ("budget-aware", "confirmed", None)


def test_defaults_and_overrides():
    cfg = parse_study_config(GOOD)
    assert cfg.storage == "sqlite:///s.db" and cfg.workers == 1 and cfg.early_cut == "exact"
    other = cfg.with_overrides(memory_target=0.2, policy="uniform", trials=None, max_accuracy_drop=0.05)
    assert other.constraints.memory_target == 0.2 and other.constraints.max_accuracy_drop == 0.05
    assert other.policy == "uniform" and other.trials is None
    budget = cfg.with_overrides(memory_budget="100kB")
    assert budget.constraints.memory_budget == 100_000 and budget.constraints.memory_target is None


def test_acceptance_rule_and_recalibration():
    cfg = parse_study_config(GOOD + "accept = 'confident'\nconfidence = 0.9\ninterval = 'wilson'\n"
                             "[search]\nrecalibrate_bn = 512\nconfidence = 0.99\n")
    c = cfg.constraints
    assert (c.accept, c.confidence, c.interval, cfg.recalibrate_bn, cfg.confidence) == (
        "confident", 0.9, "wilson", 512, 0.99)  # [search] confidence stays the early cut's
    assert parse_study_config(GOOD).recalibrate_bn == "auto" and parse_study_config(GOOD).constraints.accept == "confirmed"
    with pytest.raises(PrimeSVTError, match="recalibrate_bn is 'auto' or a number of training images"):
        parse_study_config(GOOD + "[search]\nrecalibrate_bn = 'sometimes'\n")
    assert parse_study_config(GOOD).recalibrate_rule == "auto"
    assert parse_study_config(GOOD + "[search]\nrecalibrate_rule = 'absolute'\n").recalibrate_rule == "absolute"
    assert parse_study_config(GOOD).with_overrides(recalibrate_rule="absolute").recalibrate_rule == "absolute"
    with pytest.raises(PrimeSVTError, match="recalibrate_rule must be one of auto, relative, absolute, got 'mixed'"):
        parse_study_config(GOOD + "[search]\nrecalibrate_rule = 'mixed'\n")

    plain = parse_study_config(GOOD)
    other = plain.with_overrides(accept="confident", recalibrate_bn=64)
    assert other.constraints.accept == "confident" and other.constraints.confidence == 0.95 and other.recalibrate_bn == 64
    level = plain.with_overrides(accept_confidence=0.99)  # a level applies to the rule in effect
    assert (level.constraints.accept, level.constraints.confidence) == ("confirmed", 0.99)
    assert level.confidence == plain.confidence  # the early cut's level is not touched
    implied = plain.with_overrides(accept_interval="wilson")  # only the confident rule has an interval
    assert (implied.constraints.accept, implied.constraints.interval) == ("confident", "wilson")
    back = cfg.with_overrides(accept="point", memory_target=0.2)
    assert back.constraints.accept == "point" and "confidence" not in back.constraints.to_dict()
    assert back.constraints.memory_target == 0.2
    with pytest.raises(PrimeSVTError, match="confidence applies to accept = 'confirmed' or 'confident' only"):
        plain.with_overrides(accept="point", accept_confidence=0.9)


def test_the_default_policy_follows_the_precision_grid():
    """Not named, the policy is budget-aware for pruning alone and joint with a precision grid
    (from the file or from --precisions); a named policy stays what it is."""
    assert parse_study_config(GOOD).policy == "budget-aware"
    quantized = parse_study_config(GOOD + "[search]\nprecisions = 'float,int8,int4'\n")
    assert quantized.policy == "joint"
    assert parse_study_config(GOOD).with_overrides(precisions=("float", "int4")).policy == "joint"
    assert quantized.with_overrides(precisions=("float",)).policy == "budget-aware"
    named = parse_study_config(GOOD + "[search]\npolicy = 'budget-aware'\n")
    assert named.with_overrides(precisions=("float", "int4")).policy == "budget-aware"
    assert parse_study_config(GOOD).with_overrides(policy="aq4svit", precisions=("float", "int4")).policy == "aq4svit"
    assert parse_study_config(GOOD).with_overrides(policy="uniform").with_overrides(study_name="x").policy == "uniform"


def test_confirmed_acceptance_settings():
    """accept, confidence and holdout of the confirmed rule, from the file and from flags; the
    objective gets them (its confirmation part is the held-back share of the evaluation images)."""
    cfg = parse_study_config(GOOD + "confidence = 0.9\nholdout = 0.4\n[data]\neval_images = 300\n")
    assert (cfg.constraints.accept, cfg.constraints.confidence, cfg.holdout) == ("confirmed", 0.9, 0.4)
    objective = cfg.objective()
    assert objective.holdout == 0.4 and objective.confirm_images + objective.eval_images == 300
    assert abs(objective.confirm_images - 120) <= 10  # whole classes' shares, rounded
    assert parse_study_config(GOOD).objective().holdout == 0.5  # "auto" on digits' 359 validation images
    auto = parse_study_config(GOOD + "holdout = 'auto'\n")
    assert auto.holdout == "auto" and auto.objective().holdout == 0.5
    flags = cfg.with_overrides(holdout=0.3, accept_confidence=0.99)
    assert (flags.holdout, flags.constraints.confidence) == (0.3, 0.99)
    point = cfg.with_overrides(accept="point")  # the config's holdout and level go with its rule
    assert (point.constraints.accept, point.holdout) == ("point", None)
    assert "confidence" not in point.constraints.to_dict()
    with pytest.raises(PrimeSVTError, match="holdout applies to accept = 'confirmed' only"):
        cfg.with_overrides(accept="point", holdout=0.3)
    anticipate = parse_study_config(GOOD + "search_drop = 'anticipate'\n")
    assert anticipate.search_drop == "anticipate" and cfg.search_drop == "budget"
    assert anticipate.with_overrides(accept="point").search_drop == "budget"
    with pytest.raises(PrimeSVTError, match="search_drop = 'anticipate' needs accept = 'confirmed'"):
        cfg.with_overrides(accept="point", search_drop="anticipate")
    with pytest.raises(PrimeSVTError, match="search_drop must be one of budget, anticipate"):
        cfg.with_overrides(search_drop="all")


@pytest.mark.parametrize(
    "text, message",
    [
        ("study_name = 's'\ncheckpoint = ", "malformed TOML"),
        (GOOD + "colour = 'red'\n", "unknown key(s) colour"),
        (GOOD + "[search]\npolicy = 'greedy'\n", "policy 'greedy' is unknown"),
        (GOOD + "[search]\ngrid = [0.5, 1.0]\n", "grid values must lie in [0, 1)"),
        (GOOD + "[search]\ngrid = [-0.1]\n", "grid values must lie in [0, 1)"),
        (GOOD + "[search]\ngrid = []\n", "grid is empty"),
        (GOOD + "[search]\ntrials = 'many'\n", "trials must be int"),
        (GOOD + "[search]\npolicy = 'tpe'\n", "needs a trial budget"),
        (GOOD + "[search]\nspeed = 3\n", "unknown key(s) speed at [search]"),
        (GOOD.replace("0.03", "-0.01"), "max_accuracy_drop must be a fraction in [0, 1)"),
        (GOOD.replace("0.4", "1.0"), "memory_target is the fraction of model bytes to save and must lie in [0, 1)"),
        (GOOD.replace("memory_target = 0.4", "memory_budget = 'lots'"), "cannot read 'lots' as a size"),
        (GOOD.replace('checkpoint = "digits-2-64"', ""), "checkpoint is missing"),
        (GOOD + "[data]\neval_images = 0\n", "eval_images must be at least 1"),
        ("data = 3\n" + GOOD, "[data] must be a table"),
        (GOOD + "accept = 'lucky'\n", "accept must be one of point, confident, confirmed"),
        (GOOD + "accept = 'point'\nconfidence = 0.9\n", "confidence applies to accept = 'confirmed' or 'confident' only"),
        (GOOD + "interval = 'wilson'\n", "interval applies to accept = 'confident' only, not 'confirmed'"),
        (GOOD + "confidence = 1.0\n", "confidence (of the accuracy's lower bound) must lie in (0.5, 1)"),
        (GOOD + "confidence = 0.5\n", "must lie in (0.5, 1)"),
        (GOOD + "holdout = 1.0\n", "holdout is the share of the evaluation images held back"),
        (GOOD + "holdout = 0\n", "must lie in (0, 1) or be 'auto', got 0.0"),
        (GOOD + "holdout = 'half'\n", "must lie in (0, 1) or be 'auto', got 'half'"),
        (GOOD + "accept = 'point'\nholdout = 0.5\n", "holdout applies to accept = 'confirmed' only, not 'point'"),
        (GOOD + "accept = 'confident'\nconfidence = 1.5\n", "confidence (of the accuracy's lower bound) must lie"),
        (GOOD + "accept = 'confident'\ninterval = 'normal'\n", "interval must be one of"),
        (GOOD + "[search]\nrecalibrate_bn = -1\n", "recalibrate_bn is 'auto' or a number of training images"),
        (GOOD + "[search]\nrecalibrate_bn = 'all'\n", "recalibrate_bn is 'auto' or a number of training images"),
        (GOOD + "[search]\nflops_target = 1.5\n", "flops_target is the fraction of FLOPs per image to save"),
        (GOOD + "[search]\nsweep = 'half'\n", "sweep must be 'lazy' or 'full'"),
        (GOOD + "[search]\nbudget_images = 'lots'\n", "budget_images must be int"),
        (GOOD + "[data]\nfirst_batch = -8\n", "first_batch must be at least 1 (0: plain batch_size batches)"),
        (GOOD + "[search]\nseed = -1\n", "seed must be in 0..2**32-1, got -1"),
    ],
)
def test_bad_configs_are_one_clear_line(text, message):
    with pytest.raises(PrimeSVTError) as info:
        parse_study_config(text, "study.toml")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("study.toml")


def test_missing_file(tmp_path):
    with pytest.raises(PrimeSVTError, match="does not exist"):
        load_study_config(tmp_path / "nope.toml")


def test_search_settings_of_this_release():
    cfg = parse_study_config(GOOD + "[search]\nsweep = 'full'\nbudget_images = 5000\nflops_target = 0.25\n", "s.toml")
    assert (cfg.sweep, cfg.budget_images, cfg.flops_target) == ("full", 5000, 0.25)
    default = parse_study_config(GOOD, "s.toml")
    assert (default.sweep, default.budget_images, default.flops_target) == ("lazy", None, None)
    assert default.with_overrides(flops_target=0.3, budget_images=100).flops_target == 0.3


def test_first_batch_sets_the_objectives_schedule():
    """[data] first_batch and --first-batch reach the objective's batch schedule (the early cut's
    looks); 0 is plain batch_size batches."""
    growing = parse_study_config(GOOD + "accept = 'point'\n[data]\neval_images = 200\nbatch_size = 64\nfirst_batch = 16\n")
    assert growing.objective().schedule == [16, 16, 32, 64, 64, 8]
    plain = growing.with_overrides(first_batch=0)
    assert plain.first_batch == 0 and plain.objective().schedule == [64, 64, 64, 8]
    assert parse_study_config(GOOD).first_batch == 32
