"""Robustness sweeps: table contents, target rules, cache keys, heatmap, and the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from primesvt_optuna.cli import main
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import build_model
from primesvt_optuna.pruning import Engine, structure_of
from primesvt_optuna.pruning.robustness import (
    COLUMNS, cache_key, cached_sweep, check_grid, plot_robustness, robustness_bounds, robustness_sweep,
)


def fake_evaluate(engine: Engine):
    """Accuracy falls with the pruned layer's rate, faster for smaller layers (known answer)."""
    calls = []

    def evaluate(model) -> float:
        calls.append(1)
        structure = structure_of(model)
        if structure is None or not structure["layers"]:  # unpruned, or a rate too small to remove a channel
            return 0.9
        (layer, kept), = structure["layers"].items()
        channels = sum(g.channels for g in engine.specs[layer].groups)
        rate = 1 - sum(len(k) for k in kept) / channels
        return 0.9 - rate * (0.02 if engine.layer_params[layer] > 5000 else 0.2)

    return evaluate, calls


def test_sweep_covers_every_layer_and_rate_with_exact_savings() -> None:
    engine = Engine(build_model({"preset": "digits-tiny"}))
    evaluate, calls = fake_evaluate(engine)
    table = robustness_sweep(engine, evaluate, grid=[0.5, 0.1], progress=False)
    assert list(table.columns) == COLUMNS
    assert len(table) == 2 * len(engine.layers) and len(calls) == 2 * len(engine.layers) + 1
    assert list(dict.fromkeys(table.layer)) == engine.layers
    row = table[(table.layer == engine.layers[0]) & (table.rate == 0.5)].iloc[0]
    assert row.memory_saving == pytest.approx(engine.memory_saving({engine.layers[0]: 0.5}))
    assert row.accuracy_drop == pytest.approx(0.9 - row.accuracy)


def test_bounds_rules() -> None:
    table = pd.DataFrame({
        "layer": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
        "params": [10] * 9,
        "rate": [0.1, 0.2, 0.3] * 3,
        "accuracy": [0] * 9,
        "accuracy_drop": [0.0, 0.05, 0.01, 0.01, 0.02, 0.08, 0.2, 0.3, 0.4],
        "memory_saving": [0] * 9,
    })
    assert robustness_bounds(table, 0.03) == {"a": 0.3, "b": 0.2}  # c is no target
    assert robustness_bounds(table, 0.03, rule="contiguous") == {"a": 0.1, "b": 0.2}
    with pytest.raises(PrimeSVTError, match="rule"):
        robustness_bounds(table, 0.03, rule="best")


def test_grid_validation() -> None:
    assert check_grid([0.3, 0.1, 0.3]) == (0.1, 0.3)
    for bad in ([1.0], [-0.1, 0.2], []):
        with pytest.raises(PrimeSVTError, match=r"\[0, 1\)"):
            check_grid(bad)


def test_cache_hit_costs_nothing_and_any_changed_input_misses(tmp_path: Path) -> None:
    engine = Engine(build_model({"preset": "digits-tiny"}))
    evaluate, calls = fake_evaluate(engine)
    parts = dict(checkpoint="abc", data={"name": "digits", "seed": 0}, subset=None, batch_size=64, grid=(0.5,))
    key = cache_key(**parts)
    first, hit = cached_sweep(engine, evaluate, key, (0.5,), directory=tmp_path, progress=False)
    assert not hit
    n = len(calls)
    second, hit = cached_sweep(engine, evaluate, key, (0.5,), directory=tmp_path, progress=False)
    assert hit and len(calls) == n
    pd.testing.assert_frame_equal(first, second)
    for change in ({"checkpoint": "abd"}, {"data": {"name": "digits", "seed": 1}}, {"subset": 100},
                   {"batch_size": 32}, {"grid": (0.4,)}):
        assert cache_key(**{**parts, **change}) != key


def test_heatmap_is_written(tmp_path: Path) -> None:
    engine = Engine(build_model({"preset": "digits-tiny"}))
    evaluate, _ = fake_evaluate(engine)
    table = robustness_sweep(engine, evaluate, grid=[0.2, 0.6], progress=False)
    for suffix in ("png", "svg"):
        plot_robustness(table, tmp_path / f"heat.{suffix}")
        assert (tmp_path / f"heat.{suffix}").stat().st_size > 1000


def test_cli_prints_table_targets_and_uses_the_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    from primesvt_optuna.checkpoint import save_checkpoint
    from primesvt_optuna.data import make_spec

    monkeypatch.setenv("PRIMESVT_CACHE", str(tmp_path / "cache"))
    config = {"preset": "digits-tiny"}
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model(config), config,
                           make_spec("digits", img_size=16), {"val_accuracy": 0.1})
    args = ["robustness", str(ckpt), "--grid", "0.3,0.6", "--subset", "40", "--figure", str(tmp_path / "h.png"),
            "--csv", str(tmp_path / "r.csv")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "targets (" in out and "heatmap written" in out and "from cache" not in out
    table = pd.read_csv(tmp_path / "r.csv")
    assert len(table) == 2 * len(Engine(build_model(config)).layers)
    assert main(args) == 0
    assert "from cache" in capsys.readouterr().out
    assert main(["robustness", str(ckpt), "--grid", "0.3,1.5"]) == 2
    assert "[0, 1)" in capsys.readouterr().err
