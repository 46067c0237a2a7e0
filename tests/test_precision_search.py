"""Searching a precision per layer beside the pruning rates: the (rate, precision) plan, K workers,
resume, confirmation of the same quantized model, the AQ4SViT-style order and stop rule, the
precision walk, float-only studies unchanged, and `primesvt search --precisions` / `export` end
to end on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from primesvt_optuna.checkpoint import load_checkpoint, save_checkpoint
from primesvt_optuna.cli import main
from primesvt_optuna.data import make_spec
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import build_model
from primesvt_optuna.plugin import SyntheticObjective
from primesvt_optuna.plugin.result import result
from primesvt_optuna.plugin.samplers import (
    AQ4SViTSampler, BudgetAwareSampler, JointSampler, PrecisionWalkSampler, UniformSampler, rates_key,
)
from primesvt_optuna.precision import artifact_sizes
from primesvt_optuna.storage import open_storage

SIZES = {"fc1": 4000, "fc2": 4000, "qkv": 1500, "proj": 500}
SENS = {"fc1": 0.05, "fc2": 0.2, "qkv": 0.1, "proj": 0.5}
GRID = (0.3, 0.6, 0.9)
ALL = ("float", "int8", "int4", "int2")
# int2 hurts the attention projections; int4 costs a little everywhere
LOSS = {"qkv": {"int2": 0.05}, "proj": {"int2": 0.05, "int4": 0.008}, "fc1": {"int2": 0.004}, "fc2": {"int2": 0.03}}


def make(precisions=ALL, sizes=SIZES, **kwargs) -> SyntheticObjective:
    return SyntheticObjective(sizes, **{"sensitivity": SENS, "max_accuracy_drop": 0.03, "memory_target": 0.3,
                                        "grid": GRID, "n_images": 4000, "batch_size": 500, "precisions": precisions,
                                        "precision_loss": LOSS, **kwargs})


def run(sampler, objective, **kwargs) -> optuna.Study:
    study = optuna.create_study(directions=objective.directions, sampler=sampler)
    study.optimize(objective, **kwargs)
    return study


def selected(study: optuna.Study) -> dict:
    """The delivered configuration: rates and non-float precisions by parameter."""
    trial = study.trials[result(study).selected["trial"]]
    return {p: v for p, v in trial.params.items() if v not in (0.0, "float")}


def test_plan_over_rate_and_precision_saves_more_than_pruning_alone():
    joint = run(BudgetAwareSampler(grid=GRID, precisions=ALL), make(accept="point"))
    pruned = run(BudgetAwareSampler(grid=GRID), make(precisions=("float",), accept="point"))
    res, base = result(joint), result(pruned)
    assert res.both_met and res.selected["memory_saving"] > base.selected["memory_saving"] + 0.5
    chosen = selected(joint)
    # every layer quantized; int2 only where its loss fits (fc1), never on the attention layers
    assert {p for p in chosen if p.startswith("precision:")} == {f"precision:{n}" for n in SIZES}
    assert chosen["precision:fc1"] == "int2" and "int2" not in (chosen["precision:qkv"], chosen["precision:proj"])
    # the exact bytes of what was delivered (the objective's byte model, precisions included)
    trial = joint.trials[res.selected["trial"]]
    rates = {n: trial.params[f"rate:{n}"] for n in SIZES}
    precisions = {n: trial.params[f"precision:{n}"] for n in SIZES if trial.params[f"precision:{n}"] != "float"}
    assert trial.user_attrs["model_bytes"] == make().predict_bytes(rates, precisions)
    # the parameters the dashboard shows: a categorical per layer over the study's grid
    assert joint.trials[1].distributions["precision:fc1"].choices == ALL


def test_a_layer_that_passes_at_no_setting_stays_out_of_the_extension():
    # "head" fails alone at every rate and precision: it has no option, and the extension over
    # the other layers must pass it by rather than look its best setting up
    sizes = {**SIZES, "head": 800}
    objective = make(sizes=sizes, sensitivity={**SENS, "head": 5.0},
                     precision_loss={**LOSS, "head": {"int8": 0.05, "int4": 0.05, "int2": 0.05}}, accept="point")
    study = run(BudgetAwareSampler(grid=GRID, precisions=ALL), objective)
    res = result(study)
    assert res.both_met and not {p for p in selected(study) if p.endswith(":head")}


def test_confirmation_re_evaluates_the_same_quantized_model():
    study = run(BudgetAwareSampler(grid=GRID, precisions=ALL), make())
    search = {t.system_attrs["primesvt:claim"]["key"]: t for t in study.trials if t.user_attrs["phase"] != "confirm"}
    confirms = [t for t in study.trials if t.user_attrs["phase"] == "confirm" and t.user_attrs.get("rung")]
    assert any(any(v not in ("float", 0.0) for p, v in t.params.items() if p.startswith("precision:")) for t in confirms)
    for trial in confirms:
        key = trial.user_attrs["confirm_key"].removeprefix("confirm:")
        assert search[key].params == trial.params and search[key].user_attrs["model_bytes"] == trial.user_attrs["model_bytes"]


def test_float_only_studies_keep_their_params_keys_and_attributes():
    study = run(BudgetAwareSampler(grid=GRID), make(precisions=("float",)))
    assert not any(p.startswith("precision:") for t in study.trials for p in t.params)
    assert "primesvt:precisions" not in study.user_attrs and "primesvt:precision_proxy" not in study.user_attrs
    assert "precisions" not in study.user_attrs["primesvt:sampler"]
    assert rates_key({"rate:fc1": 0.3, "rate:qkv": 0.0}) == 'rates:[["rate:fc1",0.3]]'
    assert rates_key({"rate:fc1": 0.3, "precision:fc1": 4.0}) == 'rates:[["precision:fc1",4.0],["rate:fc1",0.3]]'


def test_two_threads_reach_the_one_worker_selection():
    single = run(BudgetAwareSampler(grid=GRID, precisions=ALL), make())
    shared = run(BudgetAwareSampler(grid=GRID, precisions=ALL, poll_interval=0.02), make(delay=0.002), n_jobs=2)
    keys = [t.system_attrs["primesvt:claim"]["key"] for t in shared.trials if t.user_attrs["phase"] != "idle"]
    assert len(keys) == len(set(keys))
    assert selected(shared) == selected(single)


@pytest.mark.parametrize("stop_after", [5, 20])  # inside the bounds, inside the plan and extensions
def test_resume_continues_with_precisions(stop_after):
    storage = optuna.storages.InMemoryStorage()
    obj = make()
    study = optuna.create_study(directions=obj.directions, storage=storage, study_name="s",
                                sampler=BudgetAwareSampler(grid=GRID, precisions=ALL))
    study.optimize(obj, n_trials=stop_after)
    resumed = optuna.load_study(study_name="s", storage=storage, sampler=BudgetAwareSampler(grid=GRID, precisions=ALL))
    resumed.optimize(obj)
    assert selected(resumed) == selected(run(BudgetAwareSampler(grid=GRID, precisions=ALL), make()))
    with pytest.raises(PrimeSVTError, match="precisions = float,int8,int4,int2, not float alone"):
        make(precisions=("float",)).attach(resumed)  # any sampler (TPE records no precisions): refused
    other = optuna.load_study(study_name="s", storage=storage,
                              sampler=BudgetAwareSampler(grid=GRID, precisions=("float", "int8")))
    with pytest.raises(PrimeSVTError, match="was created with sampler"):  # another precision grid
        other.optimize(obj, n_trials=1)


def test_aq4svit_lowers_the_smallest_drift_per_byte_first_and_stops_at_the_first_failure():
    study = run(AQ4SViTSampler(grid=GRID, precisions=ALL), make())
    steps = [t for t in study.trials if t.user_attrs.get("phase") == "search"]
    proxy = study.user_attrs["primesvt:precision_proxy"]
    assert proxy["proj"]["int4"]["drift"] == LOSS["proj"]["int4"] and proxy["fc1"]["int8"]["drift"] == 0.0
    current = {n: "float" for n in SIZES}
    for trial in steps:
        lowered = [n for n in SIZES if trial.params[f"precision:{n}"] != current[n]]
        assert len(lowered) == 1  # one layer, one grid step
        layer = lowered[0]
        assert ALL.index(trial.params[f"precision:{layer}"]) == ALL.index(current[layer]) + 1
        assert all(trial.params[f"rate:{n}"] == 0.0 for n in SIZES)  # no pruning
        assert study.sampler.next_step(proxy, {n: ALL.index(p) for n, p in current.items()}) == layer
        if trial.constraints["accuracy"] > 0:
            assert trial is steps[-1]  # stopped at the first failure
            break
        current[layer] = trial.params[f"precision:{layer}"]
    else:
        pytest.fail("the search never failed a step: the stop rule was not exercised")
    # free steps first (int8 everywhere costs nothing), int2 of fc2 (0.03 alone) is what breaks it
    assert [t.params for t in steps[:4]] and all(p == "int8" for p in [steps[3].params[f"precision:{n}"] for n in SIZES])


def test_joint_gallops_the_drift_order_freezes_what_fails_then_prunes_on_top():
    """The precision descent follows AQ4SViT's order but gallops over it (fewer evaluations than
    one step at a time), goes on past the step that fails with that layer frozen (AQ4SViT stops
    there), and the budget-aware plan then prunes on top of the precisions it found."""
    objective = make(accept="point", memory_target=None)
    joint = run(JointSampler(grid=GRID, precisions=ALL), objective)
    aq = run(AQ4SViTSampler(grid=GRID, precisions=ALL), make(accept="point", memory_target=None))
    descent = [t for t in joint.trials if t.user_attrs.get("phase") == "precision"]
    aq_steps = [t for t in aq.trials if t.user_attrs.get("phase") == "search"]
    proxy = joint.user_attrs["primesvt:precision_proxy"]
    # every descent trial is a prefix of the drift order (from float, frozen layers left out)
    assert all(all(t.params[f"rate:{n}"] == 0.0 for n in SIZES) for t in descent)
    passed = [t for t in descent if t.constraints["accuracy"] <= 0]
    base = max(passed, key=lambda t: t.user_attrs["memory_saving"])
    # fc2 at int2 (0.03 alone) fails: AQ4SViT stops at that step, the joint descent freezes fc2 at
    # int4 and goes on lowering the others, past AQ4SViT's last configuration
    assert base.params["precision:fc2"] == "int4" and base.params["precision:fc1"] == "int2"
    assert base.user_attrs["memory_saving"] > max(t.user_attrs["memory_saving"] for t in aq_steps
                                                  if t.constraints["accuracy"] <= 0)
    assert len(descent) < len(aq_steps) + 3
    # pruning on top: later trials keep the base's precisions and add rates
    on_top = [t for t in joint.trials if t.user_attrs.get("phase") not in ("precision", "reference", None)
              and any(t.params[f"rate:{n}"] for n in SIZES)]
    assert on_top and all(t.params[f"precision:{n}"] == base.params[f"precision:{n}"] for t in on_top for n in SIZES)
    res = result(joint)
    assert res.both_met and res.selected["memory_saving"] >= base.user_attrs["memory_saving"]
    assert proxy and joint.user_attrs["primesvt:sampler"]["precisions"] == list(ALL)


def test_joint_charges_the_descent_to_the_plan_on_top():
    """The plan on top of the base sees the base as its reference: the float reference and the
    descent's trials still count against the image budget when it decides whether a walk fits."""
    sampler = JointSampler(grid=GRID, precisions=ALL)
    study = run(sampler, make(accept="point", memory_target=None))
    snap = sampler._snapshot(study, sampler._read(study), None)
    base = sampler.base(study, snap)
    base_trial = snap.trial_for(rates_key(base))
    before = sampler._spent_before(snap, base_trial)
    descent = [t for t in study.trials if t.user_attrs.get("phase") in ("reference", "precision")]
    assert {t.number for t in before} == {t.number for t in descent} - {base_trial.number}
    assert BudgetAwareSampler(grid=GRID)._spent_before(snap, base_trial) == []


def test_joint_resumes_and_refuses_a_float_grid(tmp_path):
    storage = f"sqlite:///{tmp_path / 'j.db'}"
    first = optuna.create_study(storage=storage, study_name="j", directions=make().directions,
                                sampler=JointSampler(grid=GRID, precisions=ALL))
    first.optimize(make(), n_trials=6)
    again = optuna.load_study(study_name="j", storage=storage, sampler=JointSampler(grid=GRID, precisions=ALL))
    again.optimize(make())
    whole = run(JointSampler(grid=GRID, precisions=ALL), make())
    assert selected(again) == selected(whole)
    with pytest.raises(PrimeSVTError, match="the joint search lowers precisions"):
        JointSampler(grid=GRID, precisions=("float",))


def test_uniform_and_precision_walk_baselines():
    uniform = run(UniformSampler(grid=GRID, precisions=("float", "int4")), make(precisions=("float", "int4")))
    configs = [t.params for t in uniform.trials if t.user_attrs["phase"] == "search"]
    assert len(configs) == 2 * len(GRID) + 1  # float and int4 at each rate, int4 unpruned
    assert {"int4"} == {c[f"precision:{n}"] for c in configs[len(GRID):] for n in SIZES}
    walk = run(PrecisionWalkSampler(grid=GRID, precisions=("float", "int8")), make(precisions=("float", "int8"),
                                                                                 memory_target=0.8))
    searched = [t for t in walk.trials if t.user_attrs["phase"] not in ("reference", "confirm", "idle")]
    assert all(t.params[f"precision:{n}"] == "int8" for t in searched for n in SIZES)  # the base first, then on top
    state = walk.sampler.walk_state(walk)
    assert state.done and state.committed and selected(walk)["precision:fc1"] == "int8"


def test_bad_precision_grids_are_one_line():
    for bad, message in (("float,int3", "not in the grid"), ("int8,int4", "lacks float"), ("float,int16", "not in the grid")):
        with pytest.raises(PrimeSVTError, match=message):
            make(precisions=tuple(bad.split(",")))
        with pytest.raises(PrimeSVTError, match=message):
            BudgetAwareSampler(precisions=tuple(bad.split(",")))
    with pytest.raises(PrimeSVTError, match="lowers precisions"):
        AQ4SViTSampler(precisions=("float",))


# ------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qsearch")
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.pt", build_model({"preset": "digits-tiny"}), {"preset": "digits-tiny"},
                    make_spec("digits", img_size=16), {})
    (root / "tiny.toml").write_text(f"""
study_name = "tiny"
storage = "sqlite:///{root / 'tiny.db'}"
checkpoint = "{root / 'tiny.pt'}"
[data]
eval_images = 48
batch_size = 16
[constraints]
max_accuracy_drop = 0.9
memory_target = 0.5
[search]
grid = [0.5]
""")
    return root


def test_search_and_export_a_quantized_selection(workdir, capsys):
    url = f"sqlite:///{workdir / 'tiny.db'}"
    config = str(workdir / "tiny.toml")
    # the quantized export itself, under the point rule (48 evaluation images are too few to confirm)
    assert main(["search", config, "--policy", "budget-aware", "--precisions", "float,int8,int4", "--json",
                 "--accept", "point"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    assert study.user_attrs["primesvt:precisions"] == ["float", "int8", "int4"]
    assert main(["search", config, "--resume", "--policy", "budget-aware", "--accept", "point"]) == 2  # float alone
    assert "was created with" in capsys.readouterr().err

    output = workdir / "q.pt"
    assert main(["export", url, "--study-name", "tiny", "--output", str(output), "--finetune-epochs", "1",
                 "--json", "--accept", "point"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["precisions"] and report["model_bytes"] == out["selected"]["model_bytes"] == report["payload_bytes"]
    assert {"memory_saving", "model_bytes", "unpruned", "pruned", "finetuned", "file_bytes"} <= set(report)
    assert report["file_bytes"] == output.stat().st_size <= 1.25 * report["model_bytes"] + 64 * 1024
    model, ckpt = load_checkpoint(output, quantized=True)  # fine-tuned with the quantizer: still quantized
    assert ckpt["precisions"] == report["precisions"] and ckpt["model_bytes"] == report["model_bytes"]
    again, _ = load_checkpoint(output)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())  # bit-identical reload
    assert artifact_sizes(output)["payload_bytes"] == report["model_bytes"]

    # a quantized checkpoint where the float baseline is required: one line, nothing written
    assert main(["export", url, "--study-name", "tiny", "--output", str(workdir / "x.pt"), "--checkpoint",
                 str(output), "--accept", "point"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not the checkpoint the study searched" in err and "\n" not in err and not (workdir / "x.pt").exists()
    (workdir / "q.toml").write_text((workdir / "tiny.toml").read_text().replace(str(workdir / "tiny.pt"), str(output)))
    assert main(["search", str(workdir / "q.toml"), "--study-name", "fromq"]) == 2
    assert "quantized" in capsys.readouterr().err


def test_a_confirmed_quantized_export_is_bounded_on_the_held_back_images(workdir, capsys, monkeypatch):
    """Under the default (confirmed) acceptance the quantized export is checked like a float one:
    its fine-tuning epoch is chosen without the held-back images, the written weights' paired
    bound on them is reported and travels with the quantized checkpoint."""
    config = workdir / "confirmed.toml"
    config.write_text((workdir / "tiny.toml").read_text().replace('study_name = "tiny"', 'study_name = "qc"')
                      .replace("eval_images = 48", "eval_images = 96"))
    url = f"sqlite:///{workdir / 'tiny.db'}"
    assert main(["search", str(config), "--policy", "budget-aware", "--precisions", "float,int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selected"]["confirmation"]["confirmed"]
    output = workdir / "qc.pt"
    assert main(["export", url, "--study-name", "qc", "--output", str(output), "--finetune-epochs", "1",
                 "--finetune-keep", "best", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    c = report["confirmation"]
    assert report["precisions"], "the selection is quantized"
    assert c["images"] + c["search_images"] == 96 and c["images"] >= 40 and {"pruned", "finetuned"} <= set(c)
    assert c["written"] in ("pruned", "finetuned") and c["confirmed"] == c[c["written"]]["passed"]
    _, ckpt = load_checkpoint(output, quantized=True)
    assert ckpt["meta"]["confirmation"] == c and ckpt["meta"]["precisions"] == report["precisions"]

    # fine-tuned weights that fail their bound are discarded: the confirmed quantized weights (and
    # their integers) are written, still an exact quantized model
    from primesvt_optuna.commands import export

    judge = export.HeldBackCheck.judge
    monkeypatch.setattr(export.HeldBackCheck, "judge", lambda self, m: {**judge(self, m), "passed": False})
    again = workdir / "qc-discarded.pt"
    assert main(["export", url, "--study-name", "qc", "--output", str(again), "--finetune-epochs", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["finetune_discarded"] and report["confirmation"]["written"] == "pruned"
    written, _ = load_checkpoint(again, quantized=True)
    assert artifact_sizes(again)["payload_bytes"] == report["model_bytes"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--precisions", "float,int3"], "not in the grid"),
    (["--precisions", "int8,int4"], "lacks float"),
    (["--precisions", "float,int8", "--policy", "prioritized"], "prunes only"),
    (["--policy", "aq4svit"], "chooses precisions"),
])
def test_bad_search_flags_are_one_line_and_write_nothing(workdir, capsys, flags, message):
    before = sorted(p.name for p in workdir.iterdir())
    assert main(["search", str(workdir / "tiny.toml"), "--study-name", "bad", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert sorted(p.name for p in workdir.iterdir()) == before
