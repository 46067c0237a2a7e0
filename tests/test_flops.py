"""FLOPs per image (counted and predicted), the optional FLOPs constraint of the objective, and the
CPU inference paths that make speed follow the FLOPs (lean LIF loop, max pooling, residual writes
by index): each must compute exactly what spikingjelly's and the hook-based paths compute."""

from __future__ import annotations

import random

import optuna
import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron

from primesvt_optuna.models import build_model, resolve_config
from primesvt_optuna.models import spikformer as sf
from primesvt_optuna.pruning import Engine
from primesvt_optuna.pruning.flops import FlopsPredictor, count_flops, meta_copy

SMALL = ["digits-tiny", "digits-2-64", "sj-spikformer-tiny"]


def image(preset: str, size: int | None = None) -> tuple[int, int, int]:
    c = resolve_config({"preset": preset})
    return (c["in_channels"], size or c["img_size"], size or c["img_size"])


def random_rates(engine: Engine, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {layer: rng.choice([0.0, 0.1, 0.25, 0.5, 0.7, 0.9]) for layer in engine.layers}


# ----- FLOPs ----------------------------------------------------------------------------------------

def test_flops_per_image_of_the_shipped_preset() -> None:
    model = build_model({"preset": "digits-2-64"}).eval()
    flops = count_flops(model, (1, 16, 16))
    assert flops == 39_208_192  # convolutions 26.1 M, projections 12.6 M, attention 0.5 M (T = 4)
    assert count_flops(model, (1, 16, 16), batch_size=3) == flops  # per image, whatever the batch
    assert count_flops(meta_copy(model), (1, 16, 16)) == flops  # shapes alone decide the count
    assert next(model.parameters()).device.type == "cpu"  # the copy left the model where it was


@pytest.mark.parametrize("preset", SMALL)
@pytest.mark.parametrize("prune_embed", [False, True])
def test_predicted_flops_equal_counted(preset: str, prune_embed: bool) -> None:
    engine = Engine(build_model({"preset": preset}).eval(), prune_embed=prune_embed)
    predictor = FlopsPredictor(engine, image(preset))
    assert predictor.base_flops == count_flops(engine.model, image(preset))
    for seed in range(3):
        rates = random_rates(engine, seed)
        pruned = engine.prune(rates)
        assert predictor.predict(rates) == count_flops(pruned, image(preset)), rates
        assert predictor.predict(rates) < predictor.base_flops
    assert predictor.predict({}) == predictor.base_flops and predictor.saving({}) == 0.0


@pytest.mark.parametrize("preset", ["spikformer-8-512", "spikformer-4-384-cifar10"])
def test_predicted_flops_equal_counted_published_presets(preset: str) -> None:
    size = 32 if resolve_config({"preset": preset})["variant"] == "imagenet" else 16
    engine = Engine(build_model({"preset": preset}).eval())
    predictor = FlopsPredictor(engine, image(preset, size))
    rates = {layer: 0.5 for layer in engine.layers}
    assert predictor.predict(rates) == count_flops(engine.prune(rates), image(preset, size))


# ----- exactness of the lean CPU paths ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_lean_lif_is_bit_identical_to_spikingjelly(dtype: torch.dtype, threshold: float) -> None:
    ours = sf.LIFNode(tau=2.0, v_threshold=threshold, detach_reset=True, step_mode="m")
    theirs = neuron.LIFNode(tau=2.0, v_threshold=threshold, detach_reset=True, step_mode="m")
    assert isinstance(ours, neuron.LIFNode) and type(ours).__name__ == "LIFNode"
    x = torch.randn(4, 3, 17, 33, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        for inputs in (x, x, x.transpose(-1, -2)):  # the 2nd call carries the state over
            if inputs.shape != x.shape:
                functional.reset_net(ours), functional.reset_net(theirs)
            a, b = ours(inputs), theirs(inputs)
            assert torch.equal(a, b) and torch.equal(ours.v, theirs.v)
            assert a.is_contiguous() and a.dtype == dtype
    functional.reset_net(ours)
    assert ours.v == 0.0
    # with autograd, spikingjelly's own path (and its surrogate gradient) is used
    xg = x.clone().requires_grad_()
    ours(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_sps_max_pooling_is_exact() -> None:
    ours, theirs = sf.MaxPool2d(3, 2, 1, step_mode="m"), layer.MaxPool2d(3, 2, 1, step_mode="m")
    for shape in [(4, 2, 3, 16, 16), (2, 2, 5, 2, 2), (2, 1, 3, 8, 6), (2, 1, 3, 15, 9)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        x.view(-1)[3] = float("nan")
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(9.0), b.nan_to_num(9.0)), shape


def _hook_path(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Spikformer.forward with every submodule called on its own: the engine's hooks scatter each
    pruned branch to the stream's width and the residual adds are plain additions."""
    pe = model.patch_embed
    x = images.unsqueeze(0).repeat(model.T, 1, 1, 1, 1)
    for i, s in enumerate(["", "1", "2", "3"]):
        x = getattr(pe, f"proj_lif{s}")(getattr(pe, f"proj_bn{s}")(getattr(pe, f"proj_conv{s}")(x)))
        if i in pe.pool_stages:
            x = getattr(pe, f"maxpool{s}")(x)
    x = (pe.rpe_lif(pe.rpe_bn(pe.rpe_conv(x))) + x).flatten(3)
    if model.variant == "cifar":
        x = x.transpose(-1, -2)
    for blk in model.block:
        x = x + blk.attn(x)
        x = x + blk.mlp(x)
    return model.head(x.mean(2 if model.variant == "cifar" else 3).mean(0))


@pytest.mark.parametrize("preset,size", [("digits-2-64", 16), ("spikformer-8-384", 32)])
def test_residual_writes_by_index_equal_the_hook_path(preset: str, size: int) -> None:
    model = build_model({"preset": preset}).eval()
    x = torch.rand(3, *image(preset, size), generator=torch.Generator().manual_seed(2)) * 3
    for prune_embed, seed in [(False, 0), (False, 1), (True, 0)]:
        engine = Engine(model, prune_embed=prune_embed)
        pruned = engine.prune(random_rates(engine, seed))
        with torch.no_grad():
            functional.reset_net(pruned)
            native = pruned(x)
            functional.reset_net(pruned)
            hooks = _hook_path(pruned, x)
            functional.reset_net(pruned)
        assert torch.equal(native, hooks)


# ----- the objective's FLOPs constraint ---------------------------------------------------------------

def test_flops_target_is_a_recorded_constraint() -> None:
    from _paper_rule import PruningObjective

    objective = PruningObjective("digits-2-64", memory_target=0.1, flops_target=0.3, eval_images=48,
                                 first_batch=None, pruner=None)
    engine = objective.engine
    big = engine.layers[0]
    study = optuna.create_study(directions=objective.directions)
    params = lambda rates: {f"rate:{layer}": rates.get(layer, 0.0) for layer in engine.layers}  # noqa: E731
    study.enqueue_trial(params({}))  # the unpruned reference
    study.enqueue_trial(params({big: 0.9}))  # saves memory, not 30% of the FLOPs
    study.enqueue_trial(params({layer: 0.5 for layer in engine.layers}))  # saves both
    study.optimize(objective, n_trials=3)
    reference, light, heavy = study.trials
    assert study.user_attrs["primesvt:flops_target"] == 0.3
    for trial, rates in ((light, {big: 0.9}), (heavy, {layer: 0.5 for layer in engine.layers})):
        counted = count_flops(engine.prune(rates), (1, 16, 16))
        assert trial.user_attrs["flops"] == counted
        assert trial.user_attrs["flops_saving"] == pytest.approx(1 - counted / objective.base_flops)
        assert trial.constraints["flops"] == trial.user_attrs["constraint_flops"]
    assert light.constraints["flops"] > 0 and light.user_attrs["feasible"] is False
    assert heavy.constraints["flops"] <= 0
    assert heavy.user_attrs["feasible"] == (heavy.constraints["accuracy"] <= 0 and heavy.constraints["memory"] <= 0)
    assert reference.constraints["flops"] == pytest.approx(0.3)
    with pytest.raises(Exception, match="flops_target"):
        PruningObjective("digits-2-64", flops_target=1.5, eval_images=16)
