"""Robustness sweeps: table contents, target rules, cache keys, heatmap, the CLI, and prefix
sharing (every rate of a layer reuses the network before it: bit-identical to separate runs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from spikingjelly.activation_based import functional

from primesvt_optuna.cli import main
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import build_model
from primesvt_optuna.pruning import Engine, structure_of
from primesvt_optuna.pruning.robustness import (
    COLUMNS, SharedPrefixEvaluator, cache_key, cached_sweep, check_grid, plot_robustness, robustness_bounds,
    robustness_sweep, touched_modules,
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
    figure = (tmp_path / "h.png").read_bytes()
    assert main(args) == 2  # the first run's heatmap and table are not overwritten without --force
    assert "h.png exists: pass --force" in capsys.readouterr().err
    assert (tmp_path / "h.png").read_bytes() == figure and pd.read_csv(tmp_path / "r.csv").equals(table)
    (tmp_path / "h.png").unlink()
    assert main(args) == 2 and "r.csv exists: pass --force" in capsys.readouterr().err
    assert not (tmp_path / "h.png").exists()  # refused before any work
    assert main([*args, "--force"]) == 0
    assert "from cache" in capsys.readouterr().out
    separate = [*args[:-3], str(tmp_path / "h2.png"), "--csv", str(tmp_path / "separate.csv"), "--no-cache",
                "--no-prefix-sharing"]
    assert main(separate) == 0 and "from cache" not in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "separate.csv"), table, check_exact=True)
    assert main(["robustness", str(ckpt), "--grid", "0.3,1.5"]) == 2
    assert "[0, 1)" in capsys.readouterr().err


# --- prefix sharing --------------------------------------------------------------------------------


def lively(config: str | dict) -> torch.nn.Module:
    """Random weights with BatchNorm statistics that make the neurons spike (a silent network
    would agree with anything)."""
    torch.manual_seed(0)
    model = build_model(config if isinstance(config, dict) else {"preset": config}).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.2)
    return model


@pytest.fixture(scope="module")
def digits_val():
    from primesvt_optuna.data import load_splits, make_spec, subset

    return subset(load_splits(make_spec("digits", img_size=16)).val, 40, 0)


def _separate_logits(model: torch.nn.Module, dataset, batch_size: int) -> list[torch.Tensor]:
    out = []
    with torch.inference_mode():
        for x, _ in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
            out.append(model(x))
            functional.reset_net(model)
    return out


IMAGENET_SMALL = {"family": "spikformer", "variant": "imagenet", "in_channels": 1, "num_classes": 10,
                  "img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 4.0, "T": 2}


def _model_and_data(preset: str, digits_val):
    if preset == "imagenet-small":  # channels-first tokens, q @ (k^T @ v); random 32x32 images
        g = torch.Generator().manual_seed(2)
        data = torch.utils.data.TensorDataset(torch.rand(40, 1, 32, 32, generator=g) * 3,
                                              torch.randint(0, 10, (40,), generator=g))
        return Engine(lively(IMAGENET_SMALL)), data
    return Engine(lively(preset)), digits_val  # sj-spikformer-tiny: another family, its own forward code


@pytest.mark.parametrize("preset, cache_bytes", [
    ("digits-tiny", 1 << 30), ("digits-tiny", 0), ("digits-2-64", 1 << 30), ("imagenet-small", 1 << 30),
    ("sj-spikformer-tiny", 1 << 30),
])
def test_prefix_sharing_is_bit_identical_to_separate_evaluations(preset: str, cache_bytes: int, digits_val) -> None:
    """Every layer at three rates, the prefix shared (from the cross-layer cache, or recomputed per
    layer when it does not fit): the same logits, bit for bit, and the same accuracies as each
    pruned model evaluated on its own; both Spikformer variants and spikingjelly's own Spikformer."""
    from primesvt_optuna.training import evaluate

    engine, data = _model_and_data(preset, digits_val)
    evaluator = SharedPrefixEvaluator(data, batch_size=16, cache_bytes=cache_bytes)  # batches of 16, 16, 8
    plans = {}
    for layer in engine.layers:
        plans[layer] = evaluator.plan(engine, layer)
        models = [engine.prune({layer: rate}) for rate in (0.3, 0.6, 0.9)]
        assert evaluator.evaluate_rates(engine, layer, models) == [evaluate(m, data, batch_size=16) for m in models]
        units, calls = evaluator._trace.prefix(touched_modules(engine, layer))
        if units:  # the logits themselves, batch by batch
            logits: list = []
            evaluator._evaluate(engine.model, models, units, calls, logits)
            for model, mine in zip(models, logits):
                assert all(torch.equal(a, b) for a, b in zip(mine, _separate_logits(model, data, 16)))
    assert (evaluator._cache is None) == (cache_bytes == 0)
    if preset == "sj-spikformer-tiny":
        assert any(plans.values())
        return
    # the sharing is real: the first conv shares nothing; the last block's fc2 reuses everything
    # before it (the SPS, the earlier blocks, this block's attention and its own fc1 projection)
    assert plans["patch_embed.proj_conv"] == []
    kind = "linear" if preset != "imagenet-small" else "conv"
    last = f"block.{len(engine.model.block) - 1}"
    fc2 = plans[f"{last}.mlp.fc2_{kind}"]
    assert "patch_embed" in fc2 and f"{last}.attn" in fc2 and f"{last}.mlp.fc1_{kind}" in fc2
    assert f"{last}.mlp.fc1_lif" in fc2 and not any(n.startswith(f"{last}.mlp.fc2") for n in fc2)
    assert {f"{last}.attn.q_{kind}", f"{last}.attn.k_lif"} <= set(plans[f"{last}.attn.v_{kind}"])


def test_a_shared_sweep_equals_a_separate_one(digits_val) -> None:
    from primesvt_optuna.training import evaluate

    engine = Engine(lively("digits-tiny"))
    evaluator = SharedPrefixEvaluator(digits_val, batch_size=32)
    shared = robustness_sweep(engine, evaluator, grid=[0.4, 0.8], progress=False)
    separate = robustness_sweep(engine, lambda m: evaluate(m, digits_val, batch_size=32), grid=[0.4, 0.8],
                                progress=False)
    pd.testing.assert_frame_equal(shared, separate, check_exact=True)
    assert shared.accuracy.nunique() > 1  # the pruned models do differ
    assert evaluator._trace is None  # cleared after the sweep


def test_an_in_place_change_of_a_reused_output_is_refused(digits_val) -> None:
    engine = Engine(lively("digits-tiny"))
    layer = "block.0.mlp.fc2_linear"
    models = [engine.prune({layer: rate}) for rate in (0.3, 0.6)]
    for model in models:  # a forward pass that writes into the (reused) patch embedding output
        model.patch_embed.register_forward_hook(lambda module, args, out: out.mul_(1.0))
    with pytest.raises(PrimeSVTError, match="in place"):
        SharedPrefixEvaluator(digits_val, batch_size=32).evaluate_rates(engine, layer, models)
