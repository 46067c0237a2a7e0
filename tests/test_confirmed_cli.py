"""Confirmed acceptance from the command line, on the shipped digits-2-64: export writes only what
the study confirmed (or, named, the search's own selection), bounds the written weights again on
the held-back images, records that in the checkpoint, and evaluate re-checks the promise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from primesvt_optuna.checkpoint import load_checkpoint, shipped
from primesvt_optuna.cli import main
from primesvt_optuna.storage import open_storage

CONFIG = """
study_name = "{name}"
storage = "sqlite:///{db}"
checkpoint = "digits-2-64"
[constraints]
max_accuracy_drop = 0.03
memory_target = {target}
[search]
policy = "{policy}"
grid = [{rate}]
"""


def run_search(root: Path, name: str, policy: str, rate: float, target: float) -> str:
    """A confirmed (default) search of digits-2-64 on one grid rate; its storage URL."""
    db = root / f"{name}.db"
    config = root / f"{name}.toml"
    config.write_text(CONFIG.format(name=name, db=db, policy=policy, rate=rate, target=target))
    assert main(["search", str(config), "--json"]) == 0
    return f"sqlite:///{db}"


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Any]:
    """'met': the walk at rate 0.9 confirms block 0's fc1 (18.4%, a few trials); 'unmet': every
    layer at 0.1 fails on the search images, so nothing is confirmed."""
    root = tmp_path_factory.mktemp("confirmed")
    return {"root": root, "met": run_search(root, "met", "prioritized", 0.9, 0.15),
            "unmet": run_search(root, "unmet", "uniform", 0.1, 0.05)}


def export(url: str, name: str, output: Path, *extra: str) -> int:
    return main(["export", url, "--study-name", name, "--output", str(output), *extra])


def test_export_refuses_a_study_that_confirmed_nothing(studies, capsys):
    capsys.readouterr()
    root, url = studies["root"], studies["unmet"]
    assert export(url, "unmet", root / "unmet.pt") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study 'unmet' delivered no confirmed selection (The constraints cannot both be met "
                          "at 95%") and err.endswith("pass --accept point to export the search's own selection unconfirmed")
    assert "\n" not in err and not (root / "unmet.pt").exists()
    assert export(url, "unmet", root / "unmet.pt", "--accept", "point") == 0  # named: written, and said
    out = capsys.readouterr().out
    assert "not confirmed (--accept point)" in out
    assert load_checkpoint(root / "unmet.pt")[1]["meta"]["accept"] == "point"


def test_export_bounds_the_written_weights_on_the_held_back_images(studies, capsys):
    capsys.readouterr()
    root, url = studies["root"], studies["met"]
    study = optuna.load_study(study_name="met", storage=open_storage(url))
    attrs = study.user_attrs
    assert export(url, "met", root / "met.pt", "--finetune-epochs", "1", "--json") == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    c = report["confirmation"]
    split = attrs["primesvt:split"]
    assert (c["images"], c["search_images"], c["holdout"], c["split_seed"], c["eval_images"], c["resplit"]) == (
        split["confirm_images"], split["search_images"], 0.5, 0, None, None)
    assert c["confidence"] == 0.95 and c["bound_kind"] == "drop upper bound"
    # before fine-tuning the weights are the confirmed rung's: the same bound as the ladder's
    assert c["pruned"]["bound"] == pytest.approx(c["ladder"]["bound"], abs=1e-12) and c["pruned"]["passed"]
    # the fine-tuned weights are written when they keep the bound, else the confirmed pruned ones
    assert c["written"] == ("finetuned" if c["finetuned"]["passed"] else "pruned") and c["confirmed"]
    _, ckpt = load_checkpoint(root / "met.pt")
    meta = ckpt["meta"]
    assert meta["confirmation"] == c and meta["accept"] == "confirmed"
    assert meta["finetune_discarded"] == (not c["finetuned"]["passed"])
    assert Path(meta["source_checkpoint"]) == shipped("digits-2-64").resolve()
    assert meta["source_checkpoint_sha256"] == attrs["primesvt:checkpoint_sha256"]


def test_fine_tuned_weights_that_fail_their_bound_are_not_written(studies, capsys, monkeypatch):
    """Fine-tuning that wrecks the model (a stand-in that zeroes the classifier) fails the bound:
    the confirmed pruned weights are written instead, and the report says so."""
    import primesvt_optuna.training as training

    def wreck(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with torch.no_grad():
            for p in model.head.parameters():
                p.zero_()
        return {"kept_epoch": 1}

    monkeypatch.setattr(training, "finetune", wreck)
    capsys.readouterr()
    root, url = studies["root"], studies["met"]
    assert export(url, "met", root / "wrecked.pt", "--finetune-epochs", "1") == 0
    out = capsys.readouterr().out
    assert "fine-tuned" in out and "NOT met" in out
    assert "the fine-tuned weights fail their bound: written instead are the confirmed pruned weights" in out
    model, ckpt = load_checkpoint(root / "wrecked.pt")
    assert ckpt["meta"]["finetune_discarded"] and ckpt["meta"]["confirmation"]["written"] == "pruned"
    assert ckpt["meta"]["confirmation"]["confirmed"] and any(p.abs().sum() > 0 for p in model.head.parameters())
    assert ckpt["metrics"]["val_accuracy"] == ckpt["metrics"]["val_accuracy_before_finetune"]


def test_evaluate_rechecks_the_promise_on_the_data_given(studies, capsys, tmp_path):
    """The exported checkpoint and its unpruned source, paired on each split: a bound and a verdict
    line, exit 0 whether or not it holds; a source that is not the recorded one is one error line."""
    from primesvt_optuna.checkpoint import save_checkpoint

    root = studies["root"]
    assert export(studies["met"], "met", root / "recheck.pt") == 0
    capsys.readouterr()
    assert main(["evaluate", str(root / "recheck.pt"), "--split", "test"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("re-check on test (360 images"))
    assert "at 95% (budget 3.00): the promise holds on these images" in line

    model, ckpt = load_checkpoint(root / "recheck.pt")  # the same model, promising a drop of 0.01 points
    meta = {**ckpt["meta"], "constraints": {**ckpt["meta"]["constraints"], "max_accuracy_drop": 0.0001}}
    save_checkpoint(tmp_path / "strict.pt", model, ckpt["model_config"], ckpt["data"], ckpt["metrics"],
                    structure=ckpt["structure"], meta=meta)
    assert main(["evaluate", str(tmp_path / "strict.pt")]) == 0
    out = capsys.readouterr().out
    assert "budget 0.01): the promise is NOT confirmed on these images" in out
    assert "this split holds the images the study searched and confirmed on" in out  # the validation split

    assert main(["evaluate", str(root / "recheck.pt"), "--source", str(root / "recheck.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("(SHA-256 differs): pass the original with --source") and "\n" not in err
