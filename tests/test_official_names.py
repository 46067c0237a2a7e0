"""State dicts with the official Spike-Driven Transformer / QKFormer key names, and ones saved from
spikingjelly's own classes, load into the presets (checked on synthetic state dicts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.model.spike_driven_transformer import SpikeDrivenTransformer
from spikingjelly.activation_based.model.spikformer import Spikformer as SJNet

from primesvt_optuna.checkpoint import load_original
from primesvt_optuna.errors import PrimeSVTError

NORM = ("weight", "bias", "running_mean", "running_var")


def _bn(state: dict, name: str, n: int, g: torch.Generator) -> None:
    for t in NORM:
        state[f"{name}.{t}"] = torch.rand(n, generator=g) + (0.5 if t == "running_var" else 0.0)
    state[f"{name}.num_batches_tracked"] = torch.tensor(7)


def official_sdt(dim: int = 32, depth: int = 2, heads: int = 2, classes: int = 10) -> dict[str, torch.Tensor]:
    """Names and shapes of BICLab/Spike-Driven-Transformer (MS_SPS, MS_SSA_Conv, MS_MLP_Conv)."""
    g, s = torch.Generator().manual_seed(0), {}
    widths = [1, dim // 8, dim // 4, dim // 2, dim]
    for i, suffix in enumerate(["", "1", "2", "3"]):
        s[f"patch_embed.proj_conv{suffix}.weight"] = torch.randn(widths[i + 1], widths[i], 3, 3, generator=g)
        _bn(s, f"patch_embed.proj_bn{suffix}", widths[i + 1], g)
    s["patch_embed.rpe_conv.weight"] = torch.randn(dim, dim, 3, 3, generator=g)
    _bn(s, "patch_embed.rpe_bn", dim, g)
    for b in range(depth):
        a, m = f"block.{b}.attn.", f"block.{b}.mlp."
        for x in "qkv":
            s[f"{a}{x}_conv.weight"] = torch.randn(dim, dim, 1, 1, generator=g)
            _bn(s, f"{a}{x}_bn", dim, g)
        s[f"{a}talking_heads.weight"] = torch.randn(heads, heads, 1, generator=g)
        s[f"{a}proj_conv.weight"], s[f"{a}proj_conv.bias"] = torch.randn(dim, dim, 1, 1, generator=g), torch.randn(dim, generator=g)
        _bn(s, f"{a}proj_bn", dim, g)
        for name, (i, o) in (("fc1", (dim, 4 * dim)), ("fc2", (4 * dim, dim))):
            s[f"{m}{name}_conv.weight"], s[f"{m}{name}_conv.bias"] = torch.randn(o, i, 1, 1, generator=g), torch.randn(o, generator=g)
            _bn(s, f"{m}{name}_bn", o, g)
    s["head.weight"], s["head.bias"] = torch.randn(classes, dim, generator=g), torch.randn(classes, generator=g)
    return s


def official_qkformer(dim: int = 64, depths: tuple = (1, 1, 2), classes: int = 10) -> dict[str, torch.Tensor]:
    """Names and shapes of zhouchenlin2096/QKFormer imagenet/qkformer.py (hierarchical_spiking_transformer)."""
    g, s = torch.Generator().manual_seed(1), {}
    d0, d1, d2 = dim // 4, dim // 2, dim
    conv = lambda name, o, i, k: s.__setitem__(f"{name}.weight", torch.randn(o, i, k, k, generator=g))  # noqa: E731
    conv("patch_embed1.proj_conv", d0 // 2, 1, 3), _bn(s, "patch_embed1.proj_bn", d0 // 2, g)
    conv("patch_embed1.proj1_conv", d0, d0 // 2, 3), _bn(s, "patch_embed1.proj1_bn", d0, g)
    conv("patch_embed1.proj2_conv", d0, d0, 3), _bn(s, "patch_embed1.proj2_bn", d0, g)
    conv("patch_embed1.proj_res_conv", d0, d0 // 2, 1), _bn(s, "patch_embed1.proj_res_bn", d0, g)
    for p, (i, o) in (("patch_embed2", (d0, d1)), ("patch_embed3", (d1, d2))):
        conv(f"{p}.proj3_conv", o, i, 3), _bn(s, f"{p}.proj3_bn", o, g)
        conv(f"{p}.proj4_conv", o, o, 3), _bn(s, f"{p}.proj4_bn", o, g)
        conv(f"{p}.proj_res_conv", o, i, 1), _bn(s, f"{p}.proj_res_bn", o, g)
    for stage, (d, n) in enumerate(zip((d0, d1, d2), depths), 1):
        for j in range(n):
            b = f"stage{stage}.{j}."
            attn = f"{b}{'attn' if stage == 3 else 'tssa'}."
            for x in ("qkv" if stage == 3 else "qk"):
                s[f"{attn}{x}_conv.weight"] = torch.randn(d, d, 1, generator=g)
                _bn(s, f"{attn}{x}_bn", d, g)
            s[f"{attn}proj_conv.weight"], s[f"{attn}proj_conv.bias"] = torch.randn(d, d, 1, generator=g), torch.randn(d, generator=g)
            _bn(s, f"{attn}proj_bn", d, g)
            for name, (i, o) in (("fc1", (d, 4 * d)), ("fc2", (4 * d, d))):
                conv(f"{b}mlp.{name}_conv", o, i, 1)
                s[f"{b}mlp.{name}_conv.bias"] = torch.randn(o, generator=g)
                _bn(s, f"{b}mlp.{name}_bn", o, g)
    s["head.weight"], s["head.bias"] = torch.randn(classes, dim, generator=g), torch.randn(classes, generator=g)
    return s


SDT_CONFIG = {"preset": "digits-sdt-8-64", "embed_dim": 32, "depth": 2, "num_heads": 2}
QKF_CONFIG = {"preset": "digits-qkformer-8-64", "embed_dim": 64, "depth": [1, 1, 2], "num_heads": [1, 1, 2]}


def test_official_spike_driven_names_load_strictly(tmp_path: Path) -> None:
    official = official_sdt()
    path = tmp_path / "sdt.pth"
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}}, path)
    model = load_original(path, SDT_CONFIG)
    state = model.state_dict()
    assert torch.equal(state["patch_embed.stages.0.0.weight"], official["patch_embed.proj_conv.weight"])
    assert torch.equal(state["patch_embed.final_stage.1.running_var"], official["patch_embed.proj_bn3.running_var"])
    assert torch.equal(state["blocks.1.attn.v_conv.weight"], official["block.1.attn.v_conv.weight"])
    assert torch.equal(state["blocks.0.mlp.fc2.bias"], official["block.0.mlp.fc2_conv.bias"])
    assert torch.equal(state["blocks.0.mlp.bn1.running_mean"], official["block.0.mlp.fc1_bn.running_mean"])
    assert not state["patch_embed.stages.1.0.bias"].any()  # spikingjelly's stem convs have a bias, the official none
    assert not any("talking_heads" in k for k in state)


def test_official_qkformer_names_load_fused_and_compute_the_same_projection(tmp_path: Path) -> None:
    official = official_qkformer()
    path = tmp_path / "qkformer.pth"
    torch.save(official, path)
    model = load_original(path, QKF_CONFIG)
    state = model.state_dict()
    qk = state["stage1.0.attn.qk_conv_bn.0.weight"]
    assert torch.equal(qk, torch.cat([official["stage1.0.tssa.q_conv.weight"], official["stage1.0.tssa.k_conv.weight"]]))
    qkv_var = state["stage3.1.attn.qkv_conv_bn.1.running_var"]
    assert torch.equal(qkv_var, torch.cat([official[f"stage3.1.attn.{x}_bn.running_var"] for x in "qkv"]))
    assert torch.equal(state["patch_embed2.conv2.weight"], official["patch_embed2.proj4_conv.weight"])
    assert torch.equal(state["patch_embed1.shortcut.0.weight"], official["patch_embed1.proj_res_conv.weight"])
    assert torch.equal(state["stage2.0.mlp.fc1.weight"], official["stage2.0.mlp.fc1_conv.weight"][..., 0])
    # the official attention projection's bias is folded into its BatchNorm: the same function in eval mode
    proj = model.stage3[0].attn.proj_conv_bn.eval()
    x = torch.rand(2, 3, 64, 4)
    w, b = official["stage3.0.attn.proj_conv.weight"], official["stage3.0.attn.proj_conv.bias"]
    bn = torch.nn.BatchNorm1d(64).eval()
    bn.load_state_dict({t: official[f"stage3.0.attn.proj_bn.{t}"] for t in (*NORM, "num_batches_tracked")})
    expected = bn(torch.nn.functional.conv1d(x.flatten(0, 1), w, b)).reshape(2, 3, 64, 4)
    assert torch.allclose(proj(x), expected, atol=1e-5)


def test_state_dicts_saved_from_spikingjelly_models_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sdt = SpikeDrivenTransformer(T=4, in_channels=1, num_classes=10, embed_dims=32, num_heads=2, depths=2,
                                 pooling_stat="0011").eval()
    torch.save(sdt.state_dict(), tmp_path / "sdt.pth")
    loaded = load_original(tmp_path / "sdt.pth", SDT_CONFIG)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        a, b = sdt(x), loaded(x)
    functional.reset_net(sdt), functional.reset_net(loaded)
    assert torch.equal(a, b)
    net = SJNet(T=4, in_channels=1, img_size_h=16, img_size_w=16, patch_size=4, num_classes=10, embed_dims=32,
                num_heads=2, mlp_ratio=4.0, depths=1)
    torch.save(net.state_dict(), tmp_path / "sj.pth")
    wrapped = load_original(tmp_path / "sj.pth", {"preset": "sj-spikformer-tiny"})
    assert all(torch.equal(v, wrapped.state_dict()[f"net.{k}"]) for k, v in net.state_dict().items())


def test_an_official_state_dict_of_another_shape_is_one_error_line(tmp_path: Path) -> None:
    torch.save(official_sdt(dim=64), tmp_path / "sdt.pth")
    with pytest.raises(PrimeSVTError, match=r"^original checkpoint .* does not fit its model config: \d+ shape mismatches"):
        load_original(tmp_path / "sdt.pth", SDT_CONFIG)
