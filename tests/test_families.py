"""Every spiking transformer spikingjelly 2.0 ships, pruned as users build it: exact against the
masked reference in float64 with the network spiking, exact bytes, dead channels removed for free."""

from __future__ import annotations

import random

import optuna
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based.model.maxformer import MaxFormer
from spikingjelly.activation_based.model.qkformer import QKFormer
from spikingjelly.activation_based.model.spike_driven_transformer import SpikeDrivenTransformer
from spikingjelly.activation_based.model.spikformer import Spikformer

from primesvt_optuna.data import Splits
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import PRESETS, build_model
from primesvt_optuna.data._common import TensorImages
from _paper_rule import PruningObjective  # the samplers on every family, under the point rule
from primesvt_optuna.plugin.result import result
from primesvt_optuna.plugin.samplers import (
    BudgetAwareSampler, PrioritizedSampler, RandomOrderSampler, SmallestFirstSampler, UniformSampler,
)
from primesvt_optuna.pruning import Engine, masked_reference, model_bytes, removed_per_head, structure_of
from primesvt_optuna.pruning.flops import FlopsPredictor, count_flops
from primesvt_optuna.pruning.robustness import SharedPrefixEvaluator, robustness_sweep

from test_engine import lively, run

# Tiny instances of each family, built with spikingjelly's own classes, and their input size.
FAMILIES = {
    "spike-driven": (lambda: SpikeDrivenTransformer(T=2, in_channels=2, num_classes=5, embed_dims=32, num_heads=2,
                                                    depths=2, pooling_stat="0011"), 16),
    "spike-driven-plif": (lambda: SpikeDrivenTransformer(T=2, in_channels=2, num_classes=5, embed_dims=32, num_heads=2,
                                                         depths=1, pooling_stat="0011",
                                                         spiking_neuron=neuron.ParametricLIFNode), 16),
    "spike-driven-mlp1": (lambda: SpikeDrivenTransformer(T=2, in_channels=2, num_classes=5, embed_dims=16, num_heads=2,
                                                         depths=1, mlp_ratio=1.0, pooling_stat="0101"), 16),
    "qkformer-token": (lambda: QKFormer(T=2, in_channels=2, num_classes=5, embed_dims=32, num_heads=(1, 2, 2),
                                        depths=(1, 1, 1)), 64),
    "qkformer-channel": (lambda: QKFormer(T=2, in_channels=2, num_classes=5, embed_dims=32, num_heads=(2, 2, 2),
                                          depths=(1, 1, 1), qka_type="channel"), 64),
    "maxformer": (lambda: MaxFormer(T=2, in_channels=2, num_classes=5, embed_dims=32, depths=(1, 1, 1)), 64),
    "maxformer-cifar": (lambda: MaxFormer(T=2, in_channels=2, num_classes=5, embed_dims=64, depths=(1, 1, 1),
                                          cifar=True), 16),
    "spikformer": (lambda: Spikformer(T=2, in_channels=2, img_size_h=16, img_size_w=16, patch_size=4, num_classes=5,
                                      embed_dims=32, num_heads=2, mlp_ratio=4.0, depths=1), 16),
}


def firing(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """float64, eval mode, random BatchNorm affine parameters and statistics measured on ``x``: each
    norm's input is standardised and shifted up, so every neuron sees inputs near its threshold
    (spikingjelly's default initialisation with ``lively``'s random statistics leaves many silent)."""
    model = lively(model)
    g = torch.Generator().manual_seed(2)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 1.0)
            m.bias.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) * 0.8 + 0.2)
            m.reset_running_stats()
            m.momentum = None  # one training-mode pass stores exactly that pass's statistics
        model.train()
        run(model, x)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def build(family: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    make, size = FAMILIES[family]
    x = torch.rand(2, 2, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    return firing(make().double(), x), x


def spike_rate(model: nn.Module, x: torch.Tensor) -> tuple[float, list[str]]:
    """Fraction of neuron outputs that are spikes over one forward pass, and the silent neurons."""
    spikes: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        return lambda module, args, out: spikes.__setitem__(name, (int(out.sum()), out.numel()))

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, neuron.BaseNode)]
    try:
        run(model, x)
    finally:
        for h in handles:
            h.remove()
    total = [sum(v[i] for v in spikes.values()) for i in (0, 1)]
    return total[0] / total[1], [n for n, (fired, _) in spikes.items() if fired == 0]


def check_exact_while_spiking(model: nn.Module, x: torch.Tensor, name: str) -> Engine:
    """Every neuron fires; rate 0 is the identity; three random rate vectors equal the masked
    reference in float64 with exact bytes, and at least one changes the output."""
    rate, silent = spike_rate(model, x)
    assert 0.05 < rate < 0.7 and not silent, f"{name}: spike rate {rate:.3f}, silent {silent}: proves nothing"
    engine = Engine(model)
    base = run(model, x)
    assert torch.equal(run(engine.prune({layer: 0.0 for layer in engine.layers}), x), base)
    changed = False
    for seed in range(3):
        rng = random.Random(seed)
        rates = {layer: rng.choice([0.0, 0.25, 0.5, 0.7]) for layer in engine.layers}
        pruned = engine.prune(rates)
        out, ref = run(pruned, x), run(masked_reference(engine, structure_of(pruned)), x)
        assert torch.allclose(out, ref, rtol=0, atol=1e-9), f"{name} {rates}: max diff {(out - ref).abs().max()}"
        assert model_bytes(pruned) == engine.predict_bytes(rates) < engine.base_bytes
        assert 0.02 < spike_rate(pruned, x)[0] < 0.8
        changed |= not torch.allclose(out, base)
    assert changed, "pruning never changed the output: the exactness check would be vacuous"
    return engine


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_model_equals_masked_reference_while_spiking(family: str) -> None:
    check_exact_while_spiking(*build(family), family)


def _kill(model: nn.Module, engine: Engine, layer: str) -> None:
    """Make the first channel of every head of every group of ``layer`` contribute nothing: its
    filters are zero (so it ranks lowest) and its norms output zero (so its neuron never fires)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for group in engine.specs[layer].groups:
            per_head = group.channels // group.heads
            for h in range(group.heads):
                for cut in group.cuts:
                    c = cut.offset + h * per_head
                    module = modules[cut.module]
                    if cut.kind in ("out", "depthwise", "norm"):
                        module.weight[c] = 0
                        if module.bias is not None:
                            module.bias[c] = 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_channel_that_contributes_nothing_is_removed_without_changing_the_output(family: str) -> None:
    model, x = build(family)
    engine = Engine(model)
    for layer in engine.layers:
        _kill(model, engine, layer)
    engine = Engine(model)  # ranks the changed weights
    base = run(model, x)
    rates = {layer: 1.0 / (engine.specs[layer].groups[0].channels // engine.specs[layer].groups[0].heads)
             for layer in engine.layers}
    rates = {k: v for k, v in rates.items() if v < 1.0}
    pruned = engine.prune(rates)
    for layer, kept_groups in structure_of(pruned)["layers"].items():
        for group, kept in zip(engine.specs[layer].groups, kept_groups):
            per_head = group.channels // group.heads
            assert removed_per_head(group, rates[layer]) == 1
            assert sorted(set(range(group.channels)) - set(kept)) == [h * per_head for h in range(group.heads)]
    assert torch.equal(run(pruned, x), base), f"{family}: max diff {(run(pruned, x) - base).abs().max()}"


def _random_splits(size: int, n: int = 24) -> Splits:
    g = torch.Generator().manual_seed(3)
    images = TensorImages(torch.rand(n, 2, size, size, generator=g) * 3, torch.randint(0, 5, (n,), generator=g))
    return Splits(images, images, images, num_classes=5, in_channels=2)


@pytest.mark.parametrize(("family", "sampler"), [
    ("spike-driven", PrioritizedSampler), ("qkformer-token", BudgetAwareSampler), ("maxformer", SmallestFirstSampler),
    ("spikformer", RandomOrderSampler), ("qkformer-channel", UniformSampler)])
def test_objective_and_every_sampler_take_spikingjelly_models_as_built(family: str, sampler: type) -> None:
    """spikingjelly's ``Spikformer`` returns logits per time step; the objective averages them."""
    model, x = build(family)
    splits = _random_splits(x.shape[-1])
    objective = PruningObjective(model=model.float(), data=splits, eval_images=8, batch_size=8, grid=[0.5],
                                 max_accuracy_drop=0.99, memory_target=0.2)
    study = optuna.create_study(directions=objective.directions, sampler=sampler(grid=[0.5]))
    study.optimize(objective, n_trials=25)
    selected = result(study).selected
    assert selected["rates"] and model_bytes(objective.engine.prune(selected["rates"])) == selected["model_bytes"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_robustness_sweep_shares_prefixes_exactly_on_every_family(family: str) -> None:
    model, x = build(family)
    model = model.float()
    engine = Engine(model)
    splits = _random_splits(x.shape[-1], n=4)
    shared = robustness_sweep(engine, SharedPrefixEvaluator(splits.val, batch_size=4), grid=[0.5], progress=False)
    alone = robustness_sweep(engine, SharedPrefixEvaluator(splits.val, batch_size=4, share=False), grid=[0.5],
                             progress=False)
    assert shared["accuracy"].tolist() == alone["accuracy"].tolist() and len(shared) == len(engine.layers)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_prunable_layers_hold_at_least_90_percent_of_the_bytes_outside_the_head(preset: str) -> None:
    with torch.device("meta"):
        model = build_model({"preset": preset})
    engine = Engine(model)
    state = model.state_dict()
    head = sum(t.numel() * t.element_size() for k, t in state.items() if k.split(".")[-2] == "head")
    prunable = sum(engine.layer_params.values()) * 4
    assert head > 0 and prunable / (engine.base_bytes - head) >= 0.9


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_flops_are_predicted_exactly_without_building(family: str) -> None:
    make, size = FAMILIES[family]
    torch.manual_seed(0)
    engine = Engine(make().eval())
    predictor = FlopsPredictor(engine, (2, size, size))
    rng = random.Random(0)
    rates = {layer: rng.choice([0.0, 0.25, 0.5]) for layer in engine.layers}
    assert predictor.analytic
    assert predictor.predict(rates) == count_flops(engine.prune(rates), (2, size, size)) < predictor.base_flops


def test_prune_embed_is_refused_where_streams_differ_in_width() -> None:
    model, _ = build("qkformer-token")
    with pytest.raises(PrimeSVTError, match=r"^prune_embed .* not supported for QKFormer"):
        Engine(model, prune_embed=True)
    assert "embed_dim" in Engine(build("spikformer")[0], prune_embed=True).layers  # spikingjelly's Spikformer: one stream
