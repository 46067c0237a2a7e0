"""`primesvt search` and `primesvt export` end to end on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from primesvt_optuna.checkpoint import load_checkpoint, save_checkpoint
from primesvt_optuna.cli import main
from primesvt_optuna.data import make_spec
from primesvt_optuna.models import build_model
from primesvt_optuna.storage import open_storage


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.pt", build_model({"preset": "digits-tiny"}), {"preset": "digits-tiny"},
                    make_spec("digits", img_size=16), {})
    write_config(root, "tiny", "[data]\neval_images = 48\nbatch_size = 16\n")
    return root


PAPER = ('accept = "point"\n', 'policy = "prioritized"\n')  # the paper's rule and walk, pinned


def write_config(root: Path, name: str, data: str = "", pinned: tuple[str, str] = PAPER,
                 max_drop: float = 0.03) -> Path:
    """``root/<name>.toml``: checkpoint ``<name>.pt`` and SQLite ``<name>.db`` beside it, one rate;
    ``pinned``: the acceptance and policy lines (empty: the defaults)."""
    path = root / f"{name}.toml"
    path.write_text(f"""
study_name = "{name}"
storage = "sqlite:///{root / f'{name}.db'}"
checkpoint = "{root / f'{name}.pt'}"
{data}[constraints]
max_accuracy_drop = {max_drop}
memory_target = 0.3
{pinned[0]}[search]
grid = [0.5]
{pinned[1]}""")
    return path


def search(workdir: Path, *extra: str) -> int:
    return main(["search", str(workdir / "tiny.toml"), *extra])


def n_trials(url: str, name: str) -> int:
    return len(optuna.load_study(study_name=name, storage=open_storage(url)).trials)


def test_search_resume_refusals_and_export(workdir, capsys):
    url = f"sqlite:///{workdir / 'tiny.db'}"
    assert search(workdir, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "prioritized" and out["finished"] and out["selected"]["memory_saving"] > 0
    trials = n_trials(url, "tiny")

    assert search(workdir) == 2  # exists, no --resume
    assert "pass --resume" in capsys.readouterr().err
    assert search(workdir, "--resume", "--memory-target", "0.5") == 2  # other settings
    assert "memory_target" in capsys.readouterr().err
    assert search(workdir, "--resume") == 0  # finished: nothing to do, same selection printed
    printed = capsys.readouterr().out
    assert "selected: trial" in printed and "export it:" in printed
    assert n_trials(url, "tiny") == trials

    output = workdir / "pruned.pt"
    assert main(["export", url, "--study-name", "tiny", "--output", str(output), "--finetune-epochs", "1",
                 "--json", "--accept", "point", "--finetune-keep", "best"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["finetuned"]) == {"val", "test"} and report["rates"] == out["selected"]["rates"]
    # the best epoch on validation is kept, the pruned model before fine-tuning included
    assert report["finetune_kept_epoch"] in (0, 1) and report["finetuned"]["val"] >= report["pruned"]["val"]
    model, ckpt = load_checkpoint(output)
    assert ckpt["model_bytes"] == out["selected"]["model_bytes"] and ckpt["structure"] is not None
    assert ckpt["metrics"]["val_accuracy"] == report["finetuned"]["val"]
    before = output.read_bytes()
    assert main(["export", url, "--study-name", "tiny", "--output", str(output)]) == 2
    assert "--force" in capsys.readouterr().err and output.read_bytes() == before
    assert main(["export", url, "--study-name", "tiny", "--output", str(workdir / "y.pt"), "--finetune-lr", "0"]) == 2
    assert "--finetune-lr must be positive" in capsys.readouterr().err and not (workdir / "y.pt").exists()
    assert main(["export", url, "--study-name", "nope", "--output", str(workdir / "x.pt")]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    # a point-rule study confirmed nothing: exported only when asked for by name
    assert main(["export", url, "--study-name", "tiny", "--output", str(workdir / "z.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: study 'tiny' was searched with accept = 'point', so nothing it selected is confirmed on "
                   "held-back images: pass --accept point to export its selection unconfirmed")
    assert not (workdir / "z.pt").exists()


def test_prune_embed_search_and_export(workdir, capsys):
    """The embedding dimension is one more layer of the walk, and export rebuilds that structure."""
    url = f"sqlite:///{workdir / 'tiny.db'}"
    assert search(workdir, "--study-name", "embed", "--prune-embed", "--memory-target", "0.9", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="embed", storage=open_storage(url))
    layers = [row["layer"] for row in study.user_attrs["primesvt:layers"]]
    assert "embed_dim" in layers and study.user_attrs["primesvt:prune_embed"] is True
    assert search(workdir, "--study-name", "embed", "--resume") == 2  # without the flag: other settings
    assert "prune_embed" in capsys.readouterr().err
    output = workdir / "embed.pt"
    assert main(["export", url, "--study-name", "embed", "--output", str(output), "--json", "--accept", "point"]) == 0
    model, ckpt = load_checkpoint(output)
    assert ckpt["model_bytes"] == out["selected"]["model_bytes"]
    assert ckpt["structure"]["prune_embed"] is True


def test_recalibration_and_confident_acceptance_search_and_export(workdir, capsys):
    """--recalibrate-bn and --accept confident are recorded on the study (a resume without them is
    refused), counted per trial, and export applies the same recalibration before saving."""
    from primesvt_optuna.data import load_splits
    from primesvt_optuna.pruning import Engine
    from primesvt_optuna.pruning.recalibrate import RelativeReference, recalibrate_bn
    from primesvt_optuna.pruning.structure import structure_of
    from primesvt_optuna.training import evaluate

    url = f"sqlite:///{workdir / 'tiny.db'}"
    assert search(workdir, "--study-name", "recal", "--recalibrate-bn", "40", "--recalibrate-rule", "relative",
                  "--accept", "confident",
                  "--confidence", "0.9", "--max-accuracy-drop", "0.9", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="recal", storage=open_storage(url))
    assert study.user_attrs["primesvt:recalibrate_bn"] == {"images": 40, "batch_size": 64, "seed": 0, "rule": "relative"}
    assert study.user_attrs["primesvt:constraints"]["accept"] == "confident"
    assert study.user_attrs["primesvt:constraints"]["confidence"] == 0.9
    evaluated = [t for t in study.trials if t.user_attrs.get("images_evaluated") and t.user_attrs["phase"] != "reference"]
    assert evaluated and all(t.user_attrs["images_recalibrated"] == 40 for t in evaluated)
    assert out["stats"]["images_recalibrated"] == 40 * (len(evaluated) + 1)  # + the unpruned model's, once
    same = ("--study-name", "recal", "--resume", "--max-accuracy-drop", "0.9")
    assert search(workdir, *same, "--accept", "confident", "--confidence", "0.9", "--recalibrate-rule", "relative") == 2
    assert "recalibrate_bn" in capsys.readouterr().err  # without --recalibrate-bn: other settings
    assert search(workdir, *same, "--recalibrate-bn", "40", "--recalibrate-rule", "relative") == 2
    assert "constraints" in capsys.readouterr().err  # without the confident rule: other settings

    output = workdir / "recal.pt"
    assert main(["export", url, "--study-name", "recal", "--output", str(output), "--json", "--accept", "point"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rates = out["selected"]["rates"]
    assert report["rates"] == rates
    assert rates  # the budget (90 points) accepts every pruned configuration of this untrained model
    # the same recalibration as the search, before saving
    assert report["recalibrate_bn"] == {"images": 40, "batch_size": 64, "seed": 0, "rule": "relative"}
    assert report["images_recalibrated"] == 80 and set(report["pruned_plain"]) == {"val", "test"}  # unpruned + pruned
    ckpt_model, ckpt = load_checkpoint(workdir / "tiny.pt")
    expected = Engine(ckpt_model).prune(rates)
    splits = load_splits(ckpt["data"])
    unpruned = RelativeReference(ckpt_model, splits.train, images=40, seed=0)
    recalibrate_bn(expected, splits.train, images=40, seed=0, relative_to=unpruned.statistics(structure_of(expected)))
    assert report["pruned"] == {s: evaluate(expected, getattr(splits, s)) for s in ("val", "test")}
    saved, _ = load_checkpoint(output)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in expected.state_dict().items())

    # EagleEye's rule by name: recorded without a rule, and export replaces the statistics
    assert search(workdir, "--study-name", "absolute", "--recalibrate-bn", "40", "--recalibrate-rule", "absolute",
                  "--accept", "point", "--max-accuracy-drop", "0.9", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="absolute", storage=open_storage(url))
    assert study.user_attrs["primesvt:recalibrate_bn"] == {"images": 40, "batch_size": 64, "seed": 0}
    assert main(["export", url, "--study-name", "absolute", "--output", str(workdir / "abs.pt"), "--json",
                 "--accept", "point"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images_recalibrated"] == 40
    expected = Engine(ckpt_model).prune(out["selected"]["rates"])
    recalibrate_bn(expected, splits.train, images=40, seed=0)
    assert report["pruned"] == {s: evaluate(expected, getattr(splits, s)) for s in ("val", "test")}


def test_search_and_export_deliver_the_best_trial_not_the_walks_commit(workdir, capsys):
    """Smallest-first commits the smallest layer, which already meets a 1% target; the sweep found
    the largest layer alone saves more within the budget: search and export deliver that one."""
    url = f"sqlite:///{workdir / 'tiny.db'}"
    args = ("--study-name", "best", "--policy", "smallest-first", "--memory-target", "0.01", "--max-accuracy-drop", "0.9",
            "--sweep", "full")
    assert search(workdir, *args, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    walk = out["walk_commit"]
    assert out["selected"]["walk_commit"] is False and out["selected"]["trial"] != walk["trial"]
    assert out["selected"]["memory_saving"] > walk["memory_saving"] and walk["both_met"]
    assert search(workdir, *args, "--resume") == 0
    assert f"the walk committed trial {walk['trial']}" in capsys.readouterr().out
    output = workdir / "best.pt"
    assert main(["export", url, "--study-name", "best", "--output", str(output), "--accept", "point"]) == 0
    printed = capsys.readouterr().out
    assert f"exported trial {out['selected']['trial']}" in printed and "not the walk's commit" in printed
    assert load_checkpoint(output)[1]["model_bytes"] == out["selected"]["model_bytes"]


@pytest.mark.parametrize("policy, extra", [("uniform", []), ("tpe", ["--trials", "4"])])
def test_baseline_policies(workdir, capsys, policy, extra):
    assert search(workdir, "--policy", policy, "--study-name", policy, "--json", *extra) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == policy and out["stats"]["trials"] >= 2
    study = optuna.load_study(study_name=policy, storage=open_storage(f"sqlite:///{workdir / 'tiny.db'}"))
    assert study.trials[0].user_attrs["phase"] == "reference"


def test_first_batch_flag_sets_the_looks(workdir, capsys):
    """--first-batch reaches the objective: the study records the early cut's looks."""
    url = f"sqlite:///{workdir / 'tiny.db'}"
    for name, flag, looks in (("grow", "8", [8, 16, 32, 48]), ("plain", "0", [16, 32, 48])):
        assert search(workdir, "--policy", "uniform", "--study-name", name, "--first-batch", flag, "--json") == 0
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        assert study.user_attrs["primesvt:eval_schedule"]["looks"] == looks
    capsys.readouterr()


def test_two_worker_processes(workdir, capsys):
    assert search(workdir, "--study-name", "two", "--workers", "2", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="two", storage=open_storage(f"sqlite:///{workdir / 'tiny.db'}"))
    pids = {t.system_attrs["primesvt:worker"]["pid"] for t in study.trials}
    assert len(pids) == 2 and out["finished"]
    keys = [t.system_attrs["primesvt:claim"]["key"] for t in study.trials if t.user_attrs["phase"] != "idle"]
    assert len(keys) == len(set(keys))


def test_unreachable_storage_is_one_line(workdir, capsys):
    assert search(workdir, "--storage", "postgresql://nobody@127.0.0.1:9/none", "--study-name", "x") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_an_unknown_device_is_one_line_before_any_work(workdir, capsys):
    """Checked up front: before, `search` ran a whole study of failed trials and then raised a
    TypeError, and `export` raised torch's RuntimeError (or an AssertionError for cuda on CPU)."""
    db = workdir / "device.db"
    url = f"sqlite:///{db}"
    for device in ("foo", "cuda:0" if not torch.cuda.is_available() else "foo:1"):
        assert search(workdir, "--device", device, "--storage", url, "--study-name", "dev") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and repr(device) in err
        assert not db.exists()  # nothing created
    assert search(workdir, "--storage", url, "--study-name", "dev") == 0
    capsys.readouterr()
    output = workdir / "device.pt"
    assert main(["export", url, "--study-name", "dev", "--output", str(output), "--device", "foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown device 'foo'") and "\n" not in err and not output.exists()


def test_in_memory_storage_runs_one_worker_and_refuses_several(workdir, capsys):
    assert search(workdir, "--storage", "sqlite:///:memory:", "--study-name", "mem", "--json") == 0
    assert json.loads(capsys.readouterr().out)["finished"]
    assert search(workdir, "--storage", "sqlite:///:memory:", "--study-name", "mem", "--workers", "2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "in memory" in err and "\n" not in err


def test_compare_from_a_study_config(workdir, capsys):
    """`primesvt compare CONFIG` end to end: the config's objective reaches two worker processes,
    every policy gets its study, and the table and figures are written."""
    url, out = f"sqlite:///{workdir / 'compare.db'}", workdir / "compare-report"
    assert main(["compare", str(workdir / "tiny.toml"), "--seeds", "1", "--jobs", "2", "--max-trials", "4",
                 "--storage", url, "-o", str(out)]) == 0
    table = (out / "comparison.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == [
        "prioritized", "budget-aware", "smallest-first", "random-order", "uniform", "tpe", "nsga2"]
    assert all((out / f"{name}.png").exists() for name in ("pareto", "progress", "layer_rates", "robustness"))
    names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(url))}
    assert "tiny/robustness-sweep" in names and "tiny/prioritized/seed0" in names


def test_flops_target_is_a_second_resource_constraint(workdir, capsys):
    url = f"sqlite:///{workdir / 'tiny.db'}"
    assert search(workdir, "--study-name", "flops", "--flops-target", "0.2", "--json") == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="flops", storage=open_storage(url))
    pruned = [t for t in study.trials if t.user_attrs.get("phase") not in ("reference", "idle")]
    assert pruned and all("flops" in t.constraints and "constraint_flops" in t.user_attrs for t in pruned)
    assert study.user_attrs["primesvt:flops_target"] == 0.2


def test_a_search_whose_unpruned_model_cannot_be_evaluated_fails_with_the_reason(tmp_path, capsys):
    """It used to exit 0, print 'validation accuracy n/a' and suggest exporting."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / split / c / f"{i}.png")
    (tmp_path / "imgs" / "val" / "a" / "0.png").write_text("not an image")
    config = {"preset": "digits-tiny", "in_channels": 3, "num_classes": 2}
    save_checkpoint(tmp_path / "img.pt", build_model(config), config,
                    make_spec("imagefolder", path=str(tmp_path / "imgs"), img_size=16), {})
    write_config(tmp_path, "img")
    # without an image budget the command measures the unpruned model's speed first: one line, no study
    assert main(["search", str(tmp_path / "img.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read image") and "\n" not in err and not (tmp_path / "img.db").exists()
    # the automatic recalibration's probe reads the images before the study too: off, the reference fails
    assert main(["search", str(tmp_path / "img.toml"), "--budget-images", "1000", "--recalibrate-bn", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the unpruned model could not be evaluated (trial 0: ") and "cannot read image" in err
    assert n_trials(f"sqlite:///{tmp_path / 'img.db'}", "img") == 1


@pytest.fixture(scope="module")
def confirmed(workdir) -> Path:
    """A config with no policy or acceptance line (the defaults: budget-aware, confirmed at 95% on
    half of 96 evaluation images) and a budget the untrained tiny model can keep."""
    (workdir / "conf.pt").write_bytes((workdir / "tiny.pt").read_bytes())
    return write_config(workdir, "conf", "[data]\neval_images = 96\nbatch_size = 16\n", ("", ""), max_drop=0.9)


def test_default_search_delivers_a_confirmed_selection_and_its_cost(confirmed, capsys):
    assert main(["search", str(confirmed), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "budget-aware" and out["constraints"]["accept"] == "confirmed" and out["both_met"]
    confirmation = out["selected"]["confirmation"]
    study = optuna.load_study(study_name="conf", storage=open_storage(f"sqlite:///{confirmed.with_suffix('.db')}"))
    held = study.user_attrs["primesvt:eval_images"]
    assert confirmation["confirmed"] and confirmation["confidence"] == 0.95 and confirmation["images"] == 96 - held
    assert out["message"].startswith("Both constraints met at 95%")
    cost = out["cost"]
    trials = {t.number: t for t in study.trials}
    assert trials[cost["confirming_trial"]].user_attrs["phase"] == "confirm"
    assert trials[cost["first_feasible_trial"]].user_attrs["feasible"]
    # every image is spent by the time the confirming trial ends, since it ends the study; the first
    # feasible trial came earlier
    assert cost["images_to_first_feasible"] < cost["images_to_confirmed"] <= cost["images"] == (
        out["stats"]["images_evaluated"] + out["stats"]["images_recalibrated"])
    budget = out["image_budget"]
    assert budget.pop("reached") is False and budget["minutes"] == 15 and budget["images"] > cost["images"]
    assert study.user_attrs["primesvt:sampler"]["budget_images"] == budget["images"]
    assert study.user_attrs["primesvt:auto_budget"] == budget

    assert main(["search", str(confirmed), "--resume"]) == 0  # the recorded budget, not a new measurement
    printed = capsys.readouterr().out
    assert "Both constraints met at 95%" in printed and "held-out images" in printed
    assert f"{cost['images_to_confirmed']:,} to the confirmed delivery (confirmation trial {cost['confirming_trial']})" in printed
    assert f"image budget {budget['images']:,}, chosen automatically" in printed and "ended within it" in printed


@pytest.mark.parametrize("flags, message", [
    (["--confidence", "1.2"], "confidence (of the accuracy's lower bound) must lie in (0.5, 1), got 1.2"),
    (["--confidence", "0.5"], "must lie in (0.5, 1), got 0.5"),
    (["--holdout", "1"], "holdout is the share of the evaluation images held back for confirmation"),
    (["--holdout", "half"], "must lie in (0, 1) or be 'auto', got 'half'"),
    (["--holdout", "0.1"], "the confirmation part has 10 images, too few to confirm anything at 95%"),
    (["--eval-images", "40", "--max-accuracy-drop", "0.03"], "images, too few to confirm anything at 95% (at least 88 needed"),
    (["--accept", "point", "--holdout", "0.5"], "holdout applies to accept = 'confirmed' only"),
    (["--accept", "point", "--search-drop", "anticipate"], "search_drop = 'anticipate' needs accept = 'confirmed'"),
    (["--accept", "point", "--confidence", "0.9"], "confidence applies to accept = 'confirmed' or 'confident' only"),
    (["--policy", "prioritized", "--compare-walk"], "--compare-walk runs the paper's walk beside another policy"),
])
def test_bad_acceptance_input_is_one_line_before_any_work(confirmed, capsys, flags, message):
    db = confirmed.parent / "bad.db"
    assert main(["search", str(confirmed), "--storage", f"sqlite:///{db}", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not db.exists()


def test_a_search_too_long_for_15_minutes_stops_at_the_budget_it_picked(confirmed, capsys, monkeypatch):
    """Measured as slow (a stand-in speed), the command picks a budget the search reaches: it stops
    there, keeps the confirmations' room, and says so."""
    from primesvt_optuna.commands import search as command

    slow = command.AutoBudget(600, 1.0, 0.5)
    monkeypatch.setattr(command.AutoBudget, "measured", classmethod(lambda cls, objective: slow))
    db = confirmed.parent / "slow.db"
    assert main(["search", str(confirmed), "--storage", f"sqlite:///{db}", "--study-name", "slow", "--json",
                 "--recalibrate-bn", "0"]) == 0  # the recalibration probe runs before the study, outside its budget
    out = json.loads(capsys.readouterr().out)
    assert out["image_budget"]["images"] == 600 and out["image_budget"]["reached"], out["cost"]
    assert out["cost"]["images"] <= 600 and out["selected"]["confirmation"]["confirmed"]
    assert main(["search", str(confirmed), "--storage", f"sqlite:///{db}", "--study-name", "slow", "--resume"]) == 0
    assert "image budget 600, chosen automatically (no --budget-images): within 15 minutes" in capsys.readouterr().out


def test_compare_walk_says_what_the_papers_walk_delivers_in_one_line(confirmed, capsys):
    db = confirmed.parent / "walk.db"
    args = ["search", str(confirmed), "--storage", f"sqlite:///{db}", "--study-name", "cw", "--compare-walk"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    walk = out["walk"]
    assert (out["policy"], walk["policy"], walk["study_name"]) == ("budget-aware", "prioritized", "cw-walk")
    assert walk["constraints"] == out["constraints"] and walk["cost"]["images"] > 0
    assert main([*args, "--resume"]) == 0  # both studies finished: nothing runs again
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"the paper's walk (--policy prioritized, study 'cw-walk'): {walk['message']}; "
                    f"{walk['cost']['images']:,} images"
                    + (f", {walk['cost']['images_to_confirmed']:,} to its confirmed selection"
                       if walk["cost"]["images_to_confirmed"] is not None else ""))
