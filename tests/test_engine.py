"""The pruning engine: exactness against the masked reference, exact bytes, couplings, errors."""

from __future__ import annotations

import copy
import io
import os
import random

import pytest
import torch
from spikingjelly.activation_based import functional

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import PRESETS, build_model, resolve_config
from primesvt_optuna.pruning import (
    Engine, apply_structure, deployment_memory, masked_reference, model_bytes, removed_per_head, saved_size,
    structure_of,
)
from primesvt_optuna.pruning.spec import ChannelGroup, Cut

# The exactness checks run on this device (scripts/gpu_check.sh sets cuda); the rest run on CPU.
DEVICE = os.environ.get("PRIMESVT_TEST_DEVICE", "cpu")
SMALL = ["digits-tiny", "digits-2-64", "sj-spikformer-tiny"]
# Large presets are checked at a small input size: 32x32 (ImageNet variant, 2x2 tokens), 16x16 (CIFAR);
# the other families are checked in tests/test_families.py.
LARGE = [p for p in PRESETS if p not in SMALL and p != "digits-2-96" and PRESETS[p]["family"] in ("spikformer", "sj-spikformer")]


def lively(model: torch.nn.Module) -> torch.nn.Module:
    """float64, eval mode, BatchNorm statistics that make neurons spike (random weights are fine)."""
    g = torch.Generator().manual_seed(0)
    model = model.double().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g, dtype=torch.float64) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g, dtype=torch.float64) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g, dtype=torch.float64) - 0.2)
    return model


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(model)
    with torch.no_grad():
        y = model(x)
    functional.reset_net(model)
    return y


def inputs(preset: str, batch: int = 3) -> torch.Tensor:
    c = resolve_config({"preset": preset})
    size = c["img_size"] if preset in SMALL else (32 if c.get("variant") == "imagenet" else 16)
    return torch.rand(batch, c["in_channels"], size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3


def random_rates(engine: Engine, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {layer: rng.choice([0.0, 0.1, 0.25, 0.5, 0.7, 0.9]) for layer in engine.layers}


def check_exact(preset: str, seeds: list[int], prune_embed: bool = False, large: bool = False) -> None:
    model = lively(build_model({"preset": preset})).to(DEVICE)
    engine = Engine(model, prune_embed=prune_embed)
    x = inputs(preset, batch=1 if large else 3).to(DEVICE)
    base = run(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if not large:  # rate 0 everywhere is the identity (checked bit for bit on the small presets)
        assert torch.equal(run(engine.prune({l: 0.0 for l in engine.layers}), x), base)
    changed = False
    for seed in seeds:
        rates = random_rates(engine, seed)
        pruned = engine.prune(rates)
        reference = masked_reference(engine, structure_of(pruned))
        out, ref = run(pruned, x), run(reference, x)
        assert torch.allclose(out, ref, rtol=0, atol=1e-9), f"{preset} {rates}: max diff {(out - ref).abs().max()}"
        assert model_bytes(pruned) == engine.predict_bytes(rates)
        changed |= not torch.allclose(out, base)
    assert changed, "pruning never changed the output: the exactness check would be vacuous"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model was modified"


@pytest.mark.parametrize("preset", SMALL)
def test_pruned_model_equals_masked_reference_small(preset: str) -> None:
    check_exact(preset, seeds=[0, 1, 2, 3])


@pytest.mark.parametrize("preset", ["digits-tiny", "sj-spikformer-tiny"])
def test_embedding_dimension_as_one_global_group_is_exact(preset: str) -> None:
    check_exact(preset, seeds=[0, 1], prune_embed=True)


@pytest.mark.parametrize("preset", LARGE)
def test_pruned_model_equals_masked_reference_published_presets(preset: str) -> None:
    check_exact(preset, seeds=[5], large=True)


def test_layers_sorted_largest_first_head_never_pruned() -> None:
    engine = Engine(build_model({"preset": "spikformer-8-512"}))
    table = engine.table
    assert list(table["layer"]) == engine.layers
    assert table["params"].is_monotonic_decreasing
    assert engine.layers[0] == "patch_embed.rpe_conv" and table["params"].iloc[0] == 2_359_296
    assert table.loc[table.layer == "patch_embed.proj_conv3", "params"].item() == 1_179_648
    assert not any(l.startswith("head") for l in engine.layers)
    # ties keep network order: the eight fc1 layers (same size) appear block by block
    fc1 = [l for l in engine.layers if "fc1" in l]
    assert fc1 == [f"block.{b}.mlp.fc1_conv" for b in range(8)]


def test_q_and_k_pair_up_and_heads_stay_equal() -> None:
    model = lively(build_model({"preset": "digits-2-64"}))
    engine = Engine(model)
    layer = "block.0.attn.q_linear+k_linear"
    pruned = engine.prune({layer: 0.5})
    attn, original = pruned.block[0].attn, model.block[0].attn
    kept = structure_of(pruned)["layers"][layer][0]
    assert attn.q_linear.weight.shape[0] == attn.k_linear.weight.shape[0] == len(kept) == 32
    assert torch.equal(attn.q_linear.weight, original.q_linear.weight[kept])
    assert torch.equal(attn.k_linear.weight, original.k_linear.weight[kept])
    per_head = [sum(1 for c in kept if c // 16 == h) for h in range(4)]
    assert per_head == [8, 8, 8, 8]
    # the pair is ranked by the joint norm of q and k rows: the lowest pair in each head goes
    joint = (original.q_linear.weight.pow(2).sum(1) + original.k_linear.weight.pow(2).sum(1)).sqrt()
    for h in range(4):
        head = joint[h * 16:(h + 1) * 16]
        removed = sorted(set(range(16)) - {c - h * 16 for c in kept if c // 16 == h})
        assert head[removed].max() <= head[[c - h * 16 for c in kept if c // 16 == h]].min()


def test_v_outputs_are_the_projection_inputs_and_fc1_outputs_the_fc2_inputs() -> None:
    model = build_model({"preset": "digits-2-64"})
    engine = Engine(model)
    pruned = engine.prune({"block.1.attn.v_linear": 0.25, "block.1.mlp.fc1_linear": 0.7})
    attn, mlp = pruned.block[1].attn, pruned.block[1].mlp
    kept_v = structure_of(pruned)["layers"]["block.1.attn.v_linear"][0]
    assert attn.v_linear.weight.shape == (48, 64) and attn.proj_linear.weight.shape == (64, 48)
    assert torch.equal(attn.proj_linear.weight, model.block[1].attn.proj_linear.weight[:, kept_v])
    assert mlp.fc1_linear.weight.shape == (256 - 179, 64) and mlp.fc2_linear.weight.shape == (64, 256 - 179)
    assert mlp.fc1_bn.running_mean.shape == (256 - 179,)


def test_residual_writers_shrink_but_the_stream_keeps_its_width() -> None:
    model = build_model({"preset": "digits-2-64"})
    engine = Engine(model)
    rates = {"patch_embed.rpe_conv": 0.5, "patch_embed.proj_conv3": 0.5,
             "block.0.attn.proj_linear": 0.5, "block.0.mlp.fc2_linear": 0.5}
    pruned = engine.prune(rates)
    sps = pruned.patch_embed
    assert sps.rpe_conv.weight.shape == (32, 32, 3, 3)  # outputs and (gathered) inputs both halve
    assert sps.proj_conv3.weight.shape[0] == 32
    assert pruned.block[0].attn.proj_linear.weight.shape == (32, 64)
    assert pruned.block[0].mlp.fc2_linear.weight.shape == (32, 256)
    assert pruned.head.weight.shape == (10, 64)  # the stream still has D = 64 channels
    functional.reset_net(pruned)
    assert pruned.patch_embed(torch.rand(4, 2, 1, 16, 16)).shape[2] == 64  # [T, B, D, H', W']


def test_spikingjelly_fused_qkv_is_one_layer_removed_uniformly_per_head() -> None:
    model = build_model({"preset": "sj-spikformer-tiny"})
    engine = Engine(model)
    layer = "net.blocks.0.attn.qkv_conv_bn.0"
    assert layer in engine.layers
    pruned = engine.prune({layer: 0.5})
    attn = pruned.net.blocks[0].attn
    assert attn.qkv_conv_bn[0].weight.shape[0] == 3 * 16
    assert attn.proj_conv_bn[0].weight.shape[1] == 16
    q_kept, v_kept = structure_of(pruned)["layers"][layer]
    assert [sum(1 for c in q_kept if c // 16 == h) for h in range(2)] == [8, 8]
    assert [sum(1 for c in v_kept if c // 16 == h) for h in range(2)] == [8, 8]


def test_removed_count_uses_floor_with_epsilon() -> None:
    group = ChannelGroup(90, rank=(Cut("x", "out"),), cuts=(), mask=())
    assert removed_per_head(group, 0.7) == 63  # plain floor(0.7 * 90) is 62
    assert removed_per_head(group, 0.0) == 0
    heads = ChannelGroup(64, rank=(), cuts=(), mask=(), heads=4)
    assert removed_per_head(heads, 0.5) == 8


def test_bad_rates_give_clear_errors() -> None:
    engine = Engine(build_model({"preset": "digits-tiny"}))
    layer = engine.layers[0]
    with pytest.raises(PrimeSVTError, match="outside"):
        engine.prune({layer: 1.0})
    with pytest.raises(PrimeSVTError, match="outside"):
        engine.predict_bytes({layer: -0.1})
    with pytest.raises(PrimeSVTError, match="unknown layer"):
        engine.prune({"block.9.nothing": 0.1})
    # patch_embed.proj_conv has 4 channels in digits-tiny: 0.99 removes floor(3.96) = 3, fine;
    # a one-channel-per-head group cannot lose its channel
    attn = "block.0.attn.v_linear"
    tiny = Engine(build_model({"preset": "digits-tiny", "num_heads": 32}))
    with pytest.raises(PrimeSVTError, match="every channel"):
        tiny.prune({attn: 0.999999999})
    with pytest.raises(PrimeSVTError, match="already pruned"):
        Engine(engine.prune({layer: 0.5}))


def test_saved_file_shrinks_and_pruned_model_rebuilds_from_config_and_weights() -> None:
    config = {"preset": "digits-2-64"}
    model = lively(build_model(config))
    engine = Engine(model)
    rates = random_rates(engine, 7)
    pruned = engine.prune(rates)
    assert saved_size(pruned) < saved_size(model)
    buffer = io.BytesIO()
    torch.save({"config": config, "structure": structure_of(pruned), "state_dict": pruned.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    rebuilt = apply_structure(build_model(saved["config"]).double(), saved["structure"])
    rebuilt.load_state_dict(saved["state_dict"], strict=True)
    rebuilt.eval()
    x = inputs("digits-2-64")
    assert torch.equal(run(rebuilt, x), run(pruned, x))
    assert model_bytes(rebuilt) == model_bytes(pruned) == engine.predict_bytes(rates)


def test_deployment_memory_is_measured_and_shrinks() -> None:
    model = build_model({"preset": "digits-2-64"})
    engine = Engine(model)
    pruned = engine.prune({l: 0.5 for l in engine.layers})
    full = deployment_memory(model, (1, 16, 16), batch_size=8)
    small = deployment_memory(pruned, (1, 16, 16), batch_size=8)
    assert full["peak_activation_bytes"] > small["peak_activation_bytes"] > 0
    assert full["neuron_state_bytes"] > small["neuron_state_bytes"] > 0
    # the unpruned model's neuron state is exactly one float32 membrane per neuron input element
    x = torch.zeros(8, 1, 16, 16)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, a, o: shapes.append(o.shape[1:]))
             for m in model.modules() if type(m).__name__ == "LIFNode"]
    run(model, x)
    for h in hooks:
        h.remove()
    expected = sum(torch.Size(s).numel() * 4 for s in shapes)
    assert full["neuron_state_bytes"] == expected


def test_engine_does_not_touch_the_model_it_prunes() -> None:
    model = build_model({"preset": "digits-tiny"})
    snapshot = copy.deepcopy(model.state_dict())
    engine = Engine(model)
    engine.prune({l: 0.5 for l in engine.layers})
    assert structure_of(model) is None
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())
