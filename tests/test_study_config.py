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
    assert (cfg.checkpoint, cfg.policy, cfg.study_name) == ("digits-2-64", "prioritized", "digits-demo")
    assert cfg.constraints.memory_target == 0.15


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
    assert parse_study_config(GOOD).recalibrate_bn == 0 and parse_study_config(GOOD).constraints.accept == "point"

    plain = parse_study_config(GOOD)
    other = plain.with_overrides(accept="confident", recalibrate_bn=64)
    assert other.constraints.accept == "confident" and other.constraints.confidence == 0.95 and other.recalibrate_bn == 64
    implied = plain.with_overrides(accept_confidence=0.99)  # a level asks for the confident rule
    assert (implied.constraints.accept, implied.constraints.confidence) == ("confident", 0.99)
    assert implied.confidence == plain.confidence  # the early cut's level is not touched
    back = cfg.with_overrides(accept="point", memory_target=0.2)
    assert back.constraints.accept == "point" and "confidence" not in back.constraints.to_dict()
    assert back.constraints.memory_target == 0.2
    with pytest.raises(PrimeSVTError, match="apply to accept = 'confident' only"):
        plain.with_overrides(accept="point", accept_confidence=0.9)


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
        (GOOD + "accept = 'lucky'\n", "accept must be one of point, confident"),
        (GOOD + "confidence = 0.9\n", "confidence and interval apply to accept = 'confident' only"),
        (GOOD + "accept = 'confident'\nconfidence = 1.5\n", "confidence (of the accuracy's lower bound) must lie"),
        (GOOD + "accept = 'confident'\ninterval = 'normal'\n", "interval must be one of"),
        (GOOD + "[search]\nrecalibrate_bn = -1\n", "recalibrate_bn is a number of training images"),
        (GOOD + "[search]\nrecalibrate_bn = 'all'\n", "recalibrate_bn must be int"),
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
    growing = parse_study_config(GOOD + "[data]\neval_images = 200\nbatch_size = 64\nfirst_batch = 16\n")
    assert growing.objective().schedule == [16, 16, 32, 64, 64, 8]
    plain = growing.with_overrides(first_batch=0)
    assert plain.first_batch == 0 and plain.objective().schedule == [64, 64, 64, 8]
    assert parse_study_config(GOOD).first_batch == 32
