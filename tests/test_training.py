"""Training and evaluation: seeded and reproducible, deterministic evaluation, pruned shapes kept."""

from __future__ import annotations

import pytest
import torch

from primesvt_optuna.data import Splits, load_splits, make_spec, subset
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import build_model
from primesvt_optuna.training import evaluate, finetune, iter_eval, machine, random_shift, train


@pytest.fixture(scope="module")
def small() -> Splits:
    """Digits cut down to a few batches: enough to exercise every code path quickly."""
    full = load_splits(make_spec("digits", img_size=16))
    return Splits(subset(full.train, 96, 0), subset(full.val, 40, 0), subset(full.test, 40, 0), 10, 1)


def _fresh(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model({"preset": "digits-tiny"})


def test_train_is_seeded_and_reports_history(small: Splits) -> None:
    a, b = _fresh(), _fresh()
    ra = train(a, small, epochs=2, batch_size=32, seed=3, progress=False, augment_shift=1)
    rb = train(b, small, epochs=2, batch_size=32, seed=3, progress=False, augment_shift=1)
    assert [h["epoch"] for h in ra["history"]] == [1, 2]
    assert set(ra["history"][0]) == {"epoch", "loss", "train_accuracy", "val_accuracy", "lr"}
    assert ra["history"] == rb["history"] and ra["val_accuracy"] == ra["history"][-1]["val_accuracy"]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.state_dict()["head.weight"], _fresh().state_dict()["head.weight"])
    assert ra["history"][-1]["lr"] == pytest.approx(0.0)  # cosine schedule ends at zero
    assert not a.training


def test_evaluate_is_deterministic_and_restores_mode(small: Splits) -> None:
    model = _fresh()
    train(model, small, epochs=1, batch_size=32, seed=0, progress=False)
    model.train()
    batches = list(iter_eval(model, small.val, batch_size=16))
    assert [n for _, n in batches] == [16, 16, 8]
    assert model.training  # evaluation put it back as it was
    acc = evaluate(model, small.val, batch_size=16)
    assert acc == sum(c for c, _ in batches) / 40 and 0.0 <= acc <= 1.0
    assert evaluate(model, small.val, batch_size=16) == acc


def test_finetune_keeps_the_pruned_shape(small: Splits) -> None:
    from primesvt_optuna.pruning import Engine

    engine = Engine(_fresh())
    pruned = engine.prune({engine.layers[0]: 0.5})
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    result = finetune(pruned, small, epochs=1, batch_size=32, progress=False, max_steps=2)
    assert {k: v.shape for k, v in pruned.state_dict().items()} == shapes
    assert len(result["history"]) == 1


@pytest.mark.parametrize(("scores", "keep", "kept"), [
    ((0.5, 0.7, 0.6), "best", 1),  # the best epoch
    ((0.9, 0.5, 0.9), "best", 0),  # nothing beats the pruned model (ties: the earliest)
    ((0.5, 0.4), "last", 2),  # "last" never scores the untrained model: scores of epochs 1 and 2
])
def test_finetune_keeps_the_best_epoch_on_validation(small: Splits, monkeypatch: pytest.MonkeyPatch,
                                                     scores: tuple[float, ...], keep: str, kept: int) -> None:
    import primesvt_optuna.training as training

    seen: list[dict[str, torch.Tensor]] = []  # the weights at each validation: before training, after each epoch

    def scripted(model: torch.nn.Module, data, **_) -> float:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return scores[len(seen) - 1]

    monkeypatch.setattr(training, "evaluate", scripted)
    model = _fresh()
    result = finetune(model, small, epochs=2, batch_size=32, progress=False, max_steps=2, keep=keep)
    assert result["kept_epoch"] == kept and result["val_accuracy"] == scores[kept if keep == "best" else -1]
    expected = seen[kept if keep == "best" else -1]
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(seen[0].values(), seen[-1].values()))  # training moved it
    with pytest.raises(PrimeSVTError, match="keep must be"):
        finetune(model, small, epochs=1, keep="first", progress=False)


def test_finetune_selects_the_epoch_on_the_images_it_is_given(small: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    """``select_on`` replaces the validation split for the epoch choice: the held-back images of a
    confirmed study are never measured while fine-tuning."""
    import primesvt_optuna.training as training

    measured: list[object] = []
    scores: list[float] = []
    real = training.evaluate

    def spy(model: torch.nn.Module, data, **kwargs) -> float:
        measured.append(data)
        scores.append(real(model, data, **kwargs))
        return scores[-1]

    monkeypatch.setattr(training, "evaluate", spy)
    search = subset(small.val, 20, 1)
    result = finetune(_fresh(), small, epochs=2, batch_size=32, progress=False, max_steps=2, select_on=search)
    assert len(measured) == 3 and all(data is search for data in measured)  # before training, after each epoch
    assert "val_accuracy" not in result and set(result["history"][0]) == {
        "epoch", "loss", "train_accuracy", "selection_accuracy", "lr"}
    assert result["selection_accuracy"] == max(scores) and result["kept_epoch"] == scores.index(max(scores))


def test_bad_arguments() -> None:
    small = load_splits(make_spec("digits", img_size=16))
    with pytest.raises(PrimeSVTError, match="unknown device"):
        evaluate(_fresh(), subset(small.val, 4, 0), device="tpu9")
    with pytest.raises(PrimeSVTError, match="epochs"):
        train(_fresh(), small, epochs=1, batch_size=0, progress=False)


def test_random_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8)
    assert random_shift(x, 0, g) is x
    y = random_shift(x, 2, g)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_machine_is_recorded() -> None:
    info = machine()
    assert info["cores"] >= 1 and info["torch"] == torch.__version__ and info["cpu"]


def test_cli_trains_on_a_cifar_folder(tmp_path) -> None:
    """A 1-channel preset on 3-channel, 100-class data: the config records the overrides and reloads."""
    import pickle

    import numpy as np

    from primesvt_optuna.checkpoint import load_checkpoint
    from primesvt_optuna.cli import main

    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 64), ("test", 200)):
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(np.arange(n) % 100)}, f)
    out = tmp_path / "c100.pt"
    assert main(["train", "--preset", "digits-tiny", "--data", "cifar100", "--data-path", str(root), "--epochs", "1",
                 "--batch-size", "32", "--output", str(out), "--quiet"]) == 0
    model, ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["in_channels"] == 3 and ckpt["model_config"]["num_classes"] == 100
    assert ckpt["data"] == {"name": "cifar100", "path": str(root), "img_size": 16, "seed": 0}
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 100)
