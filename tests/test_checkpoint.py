"""Checkpoints: round trips (unpruned, pruned, original layout), shipped baselines, and every bad
input giving one clear line, a nonzero exit from the CLI, and no existing file touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import functional

from primesvt_optuna.checkpoint import (
    checkpoint_sha256, load_checkpoint, load_original, resolve_checkpoint, save_checkpoint, shipped,
)
from primesvt_optuna.cli import main
from primesvt_optuna.data import Splits, load_splits, make_spec, subset
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import build_model
from primesvt_optuna.training import evaluate, train

CONFIG = {"preset": "digits-tiny"}


@pytest.fixture(scope="module")
def splits() -> Splits:
    full = load_splits(make_spec("digits", img_size=16))
    return Splits(subset(full.train, 192, 0), subset(full.val, 64, 0), subset(full.test, 64, 0), 10, 1)


@pytest.fixture(scope="module")
def trained(splits):
    torch.manual_seed(0)
    model = build_model(CONFIG)
    train(model, splits, epochs=1, batch_size=64, seed=0, progress=False, max_steps=3)
    return model


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = model(x)
    functional.reset_net(model)
    return out


def _save(path: Path, model, splits, **kw) -> Path:
    acc = evaluate(model, splits.val)
    return save_checkpoint(path, model, CONFIG, make_spec("digits", img_size=16), {"val_accuracy": acc}, **kw)


def test_round_trip_same_outputs_and_accuracy(tmp_path: Path, trained, splits) -> None:
    path = _save(tmp_path / "sub" / "m.pt", trained, splits, meta={"note": "x"})
    model, ckpt = load_checkpoint(path)
    assert not model.training
    x = torch.rand(8, 1, 16, 16)
    assert torch.equal(_outputs(model, x), _outputs(trained, x))
    assert evaluate(model, splits.val) == ckpt["metrics"]["val_accuracy"]
    assert ckpt["format"] == "primesvt/1" and ckpt["structure"] is None and ckpt["meta"] == {"note": "x"}
    assert ckpt["params"] == sum(p.numel() for p in trained.parameters())
    assert ckpt["model_config"]["embed_dim"] == 32 and ckpt["data"]["seed"] == 0
    assert len(checkpoint_sha256(path)) == 64 and checkpoint_sha256(path) == checkpoint_sha256(path)
    assert sorted(os.listdir(path.parent)) == ["m.pt"]  # no temporary file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_pruned_round_trip(tmp_path: Path, trained, splits) -> None:
    from primesvt_optuna.pruning import Engine, structure_of

    engine = Engine(trained)
    pruned = engine.prune({engine.layers[0]: 0.5, engine.layers[2]: 0.25})
    path = _save(tmp_path / "p.pt", pruned, splits, structure=structure_of(pruned))
    model, ckpt = load_checkpoint(path)
    assert ckpt["params"] < sum(p.numel() for p in trained.parameters())
    x = torch.rand(8, 1, 16, 16)
    assert torch.equal(_outputs(model, x), _outputs(pruned, x))
    assert evaluate(model, splits.val) == ckpt["metrics"]["val_accuracy"]


def test_overwrite_refused_without_force(tmp_path: Path, trained, splits) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(b"precious")
    with pytest.raises(PrimeSVTError, match="exists: pass --force"):
        _save(path, trained, splits)
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["m.pt"]
    _save(path, trained, splits, force=True)
    assert load_checkpoint(path)[1]["format"] == "primesvt/1"
    with pytest.raises(PrimeSVTError, match="is a folder"):
        _save(tmp_path, trained, splits)


def _one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for needle in needles:
        assert needle in msg, msg


def test_bad_files(tmp_path: Path, trained, splits) -> None:
    good = _save(tmp_path / "good.pt", trained, splits)
    data = good.read_bytes()
    cases = {
        "missing.pt": (None, "does not exist"),
        "truncated.pt": (data[: len(data) // 2], "truncated or corrupt"),
        "corrupt.pt": (os.urandom(2048), "truncated or corrupt"),
        "empty.pt": (b"", "truncated or corrupt"),
    }
    for name, (content, needle) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(PrimeSVTError) as info:
            load_checkpoint(tmp_path / name)
        _one_line(info, name, needle)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(PrimeSVTError) as info:
        load_checkpoint(tmp_path / "other.pt")
    _one_line(info, "other.pt", "not a primesvt checkpoint")
    torch.save({"format": "primesvt/1", "payload": Path("/x")}, tmp_path / "objects.pt")
    with pytest.raises(PrimeSVTError) as info:
        load_checkpoint(tmp_path / "objects.pt")
    _one_line(info, "objects.pt", "Python objects")


def _tampered(tmp_path: Path, good: Path, name: str, change) -> Path:
    ckpt = torch.load(good, weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def test_config_checkpoint_mismatch(tmp_path: Path, trained, splits) -> None:
    good = _save(tmp_path / "good.pt", trained, splits)
    wider = _tampered(tmp_path, good, "wider.pt", lambda c: c["model_config"].update(embed_dim=64, num_heads=4))
    with pytest.raises(PrimeSVTError) as info:
        load_checkpoint(wider)
    _one_line(info, "wider.pt", "does not fit", "shape mismatches", "vs model [8")
    lacking = _tampered(tmp_path, good, "lacking.pt", lambda c: c["state_dict"].pop("head.weight"))
    with pytest.raises(PrimeSVTError) as info:
        load_checkpoint(lacking)
    _one_line(info, "lacking.pt", "1 missing keys", "head.weight")
    unknown = _tampered(tmp_path, good, "unknown.pt", lambda c: c["model_config"].update(preset="nope"))
    with pytest.raises(PrimeSVTError) as info:
        load_checkpoint(unknown)
    _one_line(info, "unknown.pt", "unknown preset 'nope'")


def test_original_layout_checkpoint(tmp_path: Path, trained, capsys) -> None:
    """A checkpoint of the original code: DataParallel prefixes, unused LayerNorms, under 'model'."""
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    state["module.block.0.norm1.weight"] = torch.ones(32)
    state["module.block.0.norm2.bias"] = torch.zeros(32)
    torch.save({"model": state, "epoch": 299}, tmp_path / "orig.pth")
    model = load_original(tmp_path / "orig.pth", CONFIG)
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(_outputs(model, x), _outputs(trained, x))
    with pytest.raises(PrimeSVTError) as info:
        load_original(tmp_path / "orig.pth", {"preset": "digits-2-64"})
    _one_line(info, "orig.pth", "does not fit")
    out = tmp_path / "converted.pt"
    argv = ["evaluate", str(tmp_path / "orig.pth"), "--preset", "digits-tiny", "--data", "digits", "--output", str(out)]
    assert main(argv) == 0
    converted, ckpt = load_checkpoint(out)
    assert torch.equal(_outputs(converted, x), _outputs(trained, x))
    assert ckpt["meta"]["converted_from"].endswith("orig.pth") and 0 <= ckpt["metrics"]["test_accuracy"] <= 1
    capsys.readouterr()
    _cli_error(capsys, argv, "converted.pt", "--force")


@pytest.mark.parametrize("name, data, floor", [
    ("digits-2-64", "digits", 0.97), ("digits-hard-2-64", "digits-hard", 0.75), ("digits-8-64", "digits", 0.95),
])
def test_shipped_baselines_reproduce_recorded_accuracy(name: str, data: str, floor: float) -> None:
    assert resolve_checkpoint(name) == shipped(name)
    model, ckpt = load_checkpoint(shipped(name))
    assert ckpt["data"] == {"name": data, "path": None, "img_size": 16, "seed": 0}
    assert ckpt["metrics"]["test_accuracy"] >= floor
    assert evaluate(model, load_splits(ckpt["data"]).test) == ckpt["metrics"]["test_accuracy"]
    with pytest.raises(PrimeSVTError, match="no shipped checkpoint named 'nope'"):
        shipped("nope")


# --- the command line: one line on stderr, exit 2, nothing touched -------------------------------


def _cli_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_cli_bad_inputs(tmp_path: Path, capsys, trained, splits) -> None:
    existing = tmp_path / "keep.pt"
    existing.write_bytes(b"keep me")
    before = existing.stat().st_mtime_ns
    _cli_error(capsys, ["train", "--preset", "digits-tiny", "--output", str(existing), "--epochs", "1"], "keep.pt", "--force")
    assert existing.read_bytes() == b"keep me" and existing.stat().st_mtime_ns == before
    _cli_error(capsys, ["train", "--preset", "nope", "--output", str(tmp_path / "n.pt")], "unknown preset 'nope'")
    _cli_error(capsys, ["train", "--preset", "digits-tiny", "--data", "cifar10", "--data-path", str(tmp_path / "nodata"),
                        "--output", str(tmp_path / "c.pt")], "nodata", "data_batch_1")
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage")
    _cli_error(capsys, ["evaluate", str(tmp_path / "corrupt.pt")], "corrupt.pt", "truncated or corrupt")
    _cli_error(capsys, ["evaluate", str(tmp_path / "absent.pt")], "absent.pt", "does not exist")
    _cli_error(capsys, ["info", "absent-thing"], "absent-thing", "preset")
    good = _save(tmp_path / "good.pt", trained, splits)
    wider = _tampered(tmp_path, good, "wider.pt", lambda c: c["model_config"].update(embed_dim=64, num_heads=4))
    _cli_error(capsys, ["evaluate", str(wider)], "wider.pt", "does not fit")
    _cli_error(capsys, ["evaluate", str(good), "--data-path", "/x"], "takes no --data-path")
    assert sorted(os.listdir(tmp_path)) == ["corrupt.pt", "good.pt", "keep.pt", "wider.pt"]


def test_cli_train_evaluate_info(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.pt"
    argv = ["train", "--preset", "digits-tiny", "--epochs", "1", "--batch-size", "256", "--output", str(out), "--quiet"]
    assert main(argv) == 0
    _, ckpt = load_checkpoint(out)
    assert ckpt["meta"]["command"].startswith("primesvt train --preset digits-tiny --data digits")
    assert ckpt["data"] == {"name": "digits", "path": None, "img_size": 16, "seed": 0}
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reproduced exactly") == 2, printed
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "patch_embed.rpe_conv" in printed and "val" in printed
    assert main(argv + ["--force"]) == 0  # same seed, same checkpoint contents
    assert load_checkpoint(out)[1]["metrics"]["val_accuracy"] == ckpt["metrics"]["val_accuracy"]


def test_bad_options_of_every_command_are_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    """Found by a review: each of these printed a traceback (or, for `train` into a folder, failed
    only after training, and `compare --output` only after the whole comparison)."""
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model(CONFIG), CONFIG, make_spec("digits", img_size=16), {})
    (tmp_path / "file.txt").write_text("x")
    _cli_error(capsys, ["evaluate", str(ckpt), "--device", "cuda:7" if not torch.cuda.is_available() else "foo"], "device")
    _cli_error(capsys, ["robustness", str(ckpt), "--device", "foo"], "unknown device 'foo'")
    _cli_error(capsys, ["robustness", str(ckpt), "--batch-size", "0"], "--batch-size must be at least 1")
    _cli_error(capsys, ["robustness", str(ckpt), "--figure", str(tmp_path / "h.xyz")], "unknown format '.xyz'")
    _cli_error(capsys, ["robustness", str(ckpt), "--csv", str(tmp_path)], "is a folder")
    _cli_error(capsys, ["robustness", str(ckpt), "--max-accuracy-drop", "2"], "fraction in [0, 1)")
    _cli_error(capsys, ["train", "--preset", "digits-tiny", "--label-smoothing", "2", "-o", str(tmp_path / "t.pt")],
               "--label-smoothing must lie in [0, 1)")
    _cli_error(capsys, ["train", "--preset", "digits-tiny", "-o", str(tmp_path), "--force"], "is a folder")
    _cli_error(capsys, ["train", "--preset", "digits-tiny", "--split-seed", "-1", "-o", str(tmp_path / "t.pt")],
               "seed must be in 0..2**32-1")
    _cli_error(capsys, ["report", f"sqlite:///{tmp_path}/none.db", "-o", str(tmp_path / "file.txt")], "none.db")
    _cli_error(capsys, ["info", "digits-tiny", "--top", "-2"], "--top must be at least 1")
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "tiny.pt"]


def test_info_shows_a_pruned_checkpoint(tmp_path: Path, capsys) -> None:
    """It used to refuse any pruned checkpoint, export's own output included."""
    from primesvt_optuna.pruning import Engine, structure_of

    engine = Engine(build_model(CONFIG))
    pruned = engine.prune({engine.layers[0]: 0.5})
    path = save_checkpoint(tmp_path / "p.pt", pruned, CONFIG, make_spec("digits", img_size=16), {},
                           structure=structure_of(pruned))
    assert main(["info", str(path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "pruned: yes" in out and len(out.strip().splitlines()[-4:]) == 4


def test_a_bad_command_line_is_one_line(capsys) -> None:
    """argparse used to print its whole usage block before the error."""
    for argv in (["compare", "--policies", "bogus"], ["search"], ["nope"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err and "--help" in err, err
