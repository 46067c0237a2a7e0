"""Per-layer weight precision: quantization error bounds, the clip rule, exact bytes against the
exported artifact on every model family, bit-identical reload, damaged files and bad input."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import functional

from primesvt_optuna.checkpoint import load_checkpoint, save_checkpoint
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.models import PRESETS, build_model, resolve_config
from primesvt_optuna.precision import (
    GRID, artifact_sizes, fit_scales, parse_grid, parse_precision, predict_bytes, quantizable, quantize,
    save_quantized, uniform,
)
from primesvt_optuna.precision.artifact import pack, unpack
from primesvt_optuna.precision.quant import qmax
from primesvt_optuna.pruning import Engine, model_bytes
from primesvt_optuna.pruning.adapters import ROOMS

DATA = {"name": "digits", "path": None, "img_size": 16, "seed": 0}


# A tiny instance of every (family, variant) the presets offer: depthwise convs (MaxFormer), fused
# qkv (spikingjelly's Spikformer, MaxFormer's SSA), q+k pairs, SDSA groups, QKFormer's staged widths.
CONFIGS: dict[str, dict] = {
    "spikformer-cifar": {"preset": "digits-tiny"},
    "spikformer-imagenet": {"preset": "spikformer-8-384", "embed_dim": 32, "depth": 1, "num_heads": 2,
                            "num_classes": 10, "in_channels": 1, "img_size": 32, "T": 2},
    "sj-spikformer": {"preset": "sj-spikformer-tiny", "T": 2},
    "spike-driven": {"preset": "digits-sdt-8-64", "embed_dim": 32, "depth": 1, "num_heads": 2, "T": 2},
    "qkformer-token": {"preset": "digits-qkformer-8-64", "embed_dim": 32, "depth": [1, 1, 1], "num_heads": [1, 2, 2],
                       "T": 2},
    "qkformer-channel": {"preset": "digits-qkformer-8-64", "embed_dim": 32, "depth": [1, 1, 1],
                         "num_heads": [2, 2, 2], "qka_type": "channel", "T": 2},
    "maxformer": {"preset": "maxformer-10-384", "embed_dim": 32, "depth": [1, 1, 1], "num_classes": 10,
                  "in_channels": 1, "img_size": 64, "T": 2},
    "maxformer-cifar": {"preset": "maxformer-cifar", "embed_dim": 64, "depth": [1, 1, 1], "num_classes": 10,
                        "in_channels": 1, "img_size": 16, "T": 2},
}


def _kind(config: dict) -> tuple:
    """What makes two models different here: the family and its structural variant."""
    c = resolve_config(config)
    return c["family"], c.get("variant"), c.get("qka_type"), c.get("cifar")


def test_every_family_and_variant_of_the_presets_is_covered() -> None:
    """A family (or variant) added to the presets fails here until it has a tiny instance above, and
    every model class the room registry prunes as a whole (a room keeping its head) is built."""
    assert {_kind({"preset": p}) for p in PRESETS} | {("qkformer", None, "channel", None)} == {
        _kind(c) for c in CONFIGS.values()}
    built = set()
    for c in CONFIGS.values():
        built |= {type(m) for m in build_model(c).modules()}
    assert {cls for cls, room in ROOMS.items() if "head" in room.keep} <= built


def test_depthwise_and_fused_layers_are_quantized() -> None:
    """The precision reaches a depthwise conv (one input per channel) and a fused qkv projection."""
    seen = set()
    for family in ("maxformer", "maxformer-cifar", "sj-spikformer"):
        model = _model(CONFIGS[family])
        modules = dict(model.named_modules())
        _, state = quantize(model, uniform(Engine(model), "int4"))
        for name in state.tensors:
            m = modules[name.removesuffix(".weight")]
            if isinstance(m, torch.nn.Conv2d) and 1 < m.groups == m.in_channels:
                seen.add("depthwise")
            if "qkv" in name:
                seen.add("fused qkv")
    assert seen == {"depthwise", "fused qkv"}


def _model(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(config).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # statistics that make neurons spike, so outputs depend on the weights
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.1 + 0.01)
    return model


def _x(config: dict) -> torch.Tensor:
    c = resolve_config(config)
    return torch.rand(2, c["in_channels"], c["img_size"], c["img_size"], generator=torch.Generator().manual_seed(2)) * 3


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(model)
    with torch.inference_mode():
        y = model(x)
    functional.reset_net(model)
    return y


def _mixes(engine: Engine) -> dict[str, dict[str, str]]:
    rng = random.Random(0)
    return {
        "float": uniform(engine, "float"),
        "int4": uniform(engine, "int4"),
        "mixed": {layer: rng.choice(list(GRID)) for layer in engine.layers},
    }


# --------------------------------------------------------------------------------- grid parsing
@pytest.mark.parametrize("bad", ["int3", 3, 16, "fp16", "int16", "bf16", 32, True])
def test_precision_outside_grid_is_one_line(bad) -> None:
    with pytest.raises(PrimeSVTError, match="not in the grid") as info:
        parse_precision(bad)
    assert "\n" not in str(info.value)


def test_grid_names_and_bit_widths() -> None:
    assert [parse_precision(v) for v in ("float", "float32", "INT8", 4, 2)] == ["float", "float", "int8", "int4", "int2"]
    assert parse_grid("int4, float,int8") == ("float", "int8", "int4")
    with pytest.raises(PrimeSVTError, match="empty precision grid"):
        parse_grid(" , ")
    with pytest.raises(PrimeSVTError, match="not in the grid"):
        parse_grid("float,int3")


# ------------------------------------------------------------------------- quantization itself
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_round_trip_error_bounds(bits: int) -> None:
    """Every weight inside the clip range is within half a step of its dequantized value; max-abs
    clipping (nothing clipped) bounds every weight by half a step plus the scale's rounding."""
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    for rule in ("max", "mse"):
        scale = fit_scales(w, bits, rule).double()
        q = torch.clamp(torch.round(w / scale[:, None]), -qmax(bits), qmax(bits))
        err = (q * scale[:, None] - w).abs()
        inside = w.abs() <= qmax(bits) * scale[:, None]
        assert (err[inside] <= scale.expand_as(w.T).T[inside] / 2 * (1 + 1e-9)).all()
        if rule == "max":
            peak = w.abs().amax(1)
            slack = (peak - qmax(bits) * scale).clamp_min(0)
            assert (err.amax(1) <= scale / 2 * (1 + 1e-9) + slack).all()
            assert (slack <= peak * 1e-3).all()  # float16 scale rounding only
    # int8 keeps every weight within 1/254 of its channel's largest |weight| (+ float16 rounding)
    if bits == 8:
        scale = fit_scales(w, 8, "max").double()
        assert ((q := torch.round(w / scale[:, None])) * scale[:, None] - w).abs().amax(1).le(w.abs().amax(1) / 254 * 1.002).all()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_mse_clip_beats_max_abs_clip(bits: int) -> None:
    """Heavy-tailed rows (trained weights are): the searched clip never has a larger squared error
    than max-abs in any channel, and a clearly smaller one in total."""
    g = torch.Generator().manual_seed(10 + bits)
    u = torch.rand(32, 64, generator=g, dtype=torch.float64) - 0.5
    w = -u.sign() * torch.log1p(-2 * u.abs()) * 0.05  # Laplace

    def sqerr(scale: torch.Tensor) -> torch.Tensor:
        s = scale.double()[:, None]
        return (torch.clamp(torch.round(w / s), -qmax(bits), qmax(bits)) * s - w).pow(2).sum(1)

    e_max, e_mse = sqerr(fit_scales(w, bits, "max")), sqerr(fit_scales(w, bits, "mse"))
    assert (e_mse <= e_max * (1 + 1e-12)).all()
    assert e_mse.sum() < {8: 0.98, 4: 0.92, 2: 0.6}[bits] * e_max.sum()  # measured: 0.966, 0.876, 0.436


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_pack_unpack_round_trip_odd_widths(bits: int) -> None:
    q = torch.randint(-qmax(bits), qmax(bits) + 1, (5, 3, 7), generator=torch.Generator().manual_seed(bits)).to(torch.int8)
    packed = pack(q, bits)
    assert packed.shape == (5, math.ceil(21 * bits / 8)) and packed.dtype == torch.uint8
    assert torch.equal(unpack(packed, bits, tuple(q.shape)), q)


def test_quantize_applies_to_own_weights_only_and_leaves_input_untouched() -> None:
    model = _model(CONFIGS["spikformer-cifar"])
    engine = Engine(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer = next(l for l in engine.layers if "+" in l)  # the q+k pair: both weights, nothing else
    qmodel, state = quantize(model, {layer: "int4"})
    own = {f"{m}.weight" for m in engine.specs[layer].own}
    assert set(state.tensors) == own and len(own) == 2
    after = qmodel.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == own
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for name in own:  # the model computes with exactly q * scale, at most 7 levels each side
        assert torch.equal(after[name], state.tensors[name].dequantize())
        assert state.tensors[name].q.abs().max() <= 7


# ----------------------------------------------------------------- exact bytes, artifact, reload
@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_bytes_predicted_equal_artifact_payload_and_reload_is_bit_identical(tmp_path: Path, family: str, pruned: bool) -> None:
    config = CONFIGS[family]
    model = _model(config)
    engine = Engine(model)
    rng = random.Random(3)
    rates = {l: rng.choice([0.0, 0.25, 0.5]) for l in engine.layers} if pruned else {}
    base = engine.prune(rates) if pruned else model
    assert quantizable(base) == quantizable(model)  # a pruned model keeps the names its precisions are given for
    x = _x(config)
    for mix, precisions in _mixes(engine).items():
        predicted = predict_bytes(engine, rates, precisions)
        if mix == "float":
            assert predicted == engine.predict_bytes(rates)
        qmodel, _ = quantize(base, precisions, engine=engine)
        assert model_bytes(qmodel) == predicted, mix
        path = save_quantized(tmp_path / f"{mix}.pt", qmodel, config, DATA, {"val_accuracy": 0.5})
        sizes = artifact_sizes(path)
        assert sizes["payload_bytes"] == sizes["model_bytes"] == predicted, mix
        assert sizes["file_bytes"] <= 1.25 * predicted + 64 * 1024, (mix, sizes)
        loaded, ckpt = load_checkpoint(path)
        assert ckpt["precisions"] == precisions and model_bytes(loaded) == predicted
        ref = qmodel.state_dict()
        assert list(loaded.state_dict()) == list(ref)
        assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items()), mix
        assert torch.equal(_run(loaded, x), _run(qmodel, x)), mix
    int4 = predict_bytes(engine, rates, uniform(engine, "int4"))
    assert int4 < predict_bytes(engine, rates, uniform(engine, "int8")) < engine.predict_bytes(rates)


def test_head_is_float_unless_named() -> None:
    model = _model(CONFIGS["spikformer-cifar"])
    engine = Engine(model)
    assert "head" in quantizable(model) and "head" not in engine.layers
    qmodel, state = quantize(model, uniform(engine, "int8"))
    assert "head.weight" not in state.tensors
    with_head = {**uniform(engine, "int8"), "head": "int8"}
    qhead, state = quantize(model, with_head)
    rows, cols = model.head.weight.shape
    assert model_bytes(qmodel) - model_bytes(qhead) == rows * cols * 4 - rows * (cols + 2)
    assert predict_bytes(engine, {}, with_head) == model_bytes(qhead)


# ------------------------------------------------------------------------------- damaged files
@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    model = _model(CONFIGS["spikformer-cifar"])
    engine = Engine(model)
    qmodel, _ = quantize(engine.prune({engine.layers[0]: 0.5}), uniform(engine, "int4"))
    return save_quantized(tmp_path / "q.pt", qmodel, CONFIGS["spikformer-cifar"], DATA, {})


def test_truncated_file_is_refused(artifact: Path) -> None:
    data = artifact.read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        artifact.write_bytes(data[:cut])
        with pytest.raises(PrimeSVTError, match="truncated or corrupt") as info:
            load_checkpoint(artifact)
        assert "\n" not in str(info.value)


def test_flipped_payload_byte_is_refused_by_the_checksum(artifact: Path) -> None:
    ckpt = torch.load(artifact, weights_only=True)
    data = artifact.read_bytes()
    at = data.find(ckpt["payload"][:64].numpy().tobytes())  # the payload is stored uncompressed
    assert at > 0
    for offset in (at + 10, at + ckpt["payload"].numel() - 1):
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        artifact.write_bytes(bytes(flipped))
        with pytest.raises(PrimeSVTError, match="corrupt") as info:
            load_checkpoint(artifact)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- bad input
def test_float_and_quantized_are_not_interchangeable(tmp_path: Path, artifact: Path) -> None:
    with pytest.raises(PrimeSVTError, match="is a quantized checkpoint \\(int4\\): this needs the float"):
        load_checkpoint(artifact, quantized=False)
    qmodel, _ = load_checkpoint(artifact, quantized=True)
    with pytest.raises(PrimeSVTError, match="this model is quantized"):
        Engine(qmodel)
    with pytest.raises(PrimeSVTError, match="save_quantized"):
        save_checkpoint(tmp_path / "f.pt", qmodel, CONFIGS["spikformer-cifar"], DATA, {})
    with pytest.raises(PrimeSVTError, match="already quantized"):
        quantize(qmodel, {})
    model = _model(CONFIGS["spikformer-cifar"])
    float_path = save_checkpoint(tmp_path / "f.pt", model, CONFIGS["spikformer-cifar"], DATA, {})
    with pytest.raises(PrimeSVTError, match="is a float checkpoint, not a quantized one"):
        load_checkpoint(float_path, quantized=True)
    with pytest.raises(PrimeSVTError, match="not a quantized primesvt checkpoint"):
        artifact_sizes(float_path)
    with pytest.raises(PrimeSVTError, match="not quantized"):
        save_quantized(tmp_path / "g.pt", model, CONFIGS["spikformer-cifar"], DATA, {})
    assert not (tmp_path / "g.pt").exists()


def test_bad_precisions_and_overwrites(tmp_path: Path, artifact: Path) -> None:
    model = _model(CONFIGS["spikformer-cifar"])
    engine = Engine(model)
    for bad, message in (({engine.layers[0]: "int3"}, "not in the grid"), ({engine.layers[0]: 16}, "not in the grid"),
                         ({"block.0.nope": "int8"}, "unknown layer"),
                         ({"block.0.mlp.fc1_bn": "int8"}, "unknown layer")):
        with pytest.raises(PrimeSVTError, match=message):
            quantize(model, bad)
        with pytest.raises(PrimeSVTError, match=message):
            predict_bytes(engine, {}, bad)
    with pytest.raises(PrimeSVTError, match="unknown clip rule"):
        quantize(model, {engine.layers[0]: "int8"}, rule="minmax")
    qmodel, _ = quantize(model, {engine.layers[0]: "int8"})
    before = artifact.read_bytes()
    with pytest.raises(PrimeSVTError, match="exists"):
        save_quantized(artifact, qmodel, CONFIGS["spikformer-cifar"], DATA, {})
    assert artifact.read_bytes() == before
    with torch.no_grad():  # trained after quantize without the quantizer: no longer those integers
        dict(qmodel.named_parameters())[f"{engine.specs[engine.layers[0]].own[0]}.weight"].add_(1e-3)
    with pytest.raises(PrimeSVTError, match="no longer equals its quantized weights"):
        save_quantized(tmp_path / "drift.pt", qmodel, CONFIGS["spikformer-cifar"], DATA, {})
    assert not (tmp_path / "drift.pt").exists()


# ------------------------------------------------------------------- fine-tuning in the loop
@pytest.mark.parametrize("scales", ["fixed", "refit"])
def test_finetune_with_the_quantizer_keeps_precisions_and_bytes(scales: str) -> None:
    from primesvt_optuna.data import Splits, load_splits, subset
    from primesvt_optuna.precision import finetune_quantized, quant_state

    full = load_splits(DATA)
    splits = Splits(subset(full.train, 128, 0), subset(full.val, 64, 0), subset(full.test, 64, 0), 10, 1)
    model = build_model({"preset": "digits-tiny"})
    engine = Engine(model)
    precisions = {**uniform(engine, "int4"), engine.layers[0]: "int2", engine.layers[1]: "float"}
    qmodel, state = quantize(engine.prune({engine.layers[2]: 0.5}), precisions)
    bytes_before = model_bytes(qmodel)
    q_before = {k: t.q.clone() for k, t in state.tensors.items()}
    out = finetune_quantized(qmodel, splits, scales=scales, epochs=3, lr=5e-3, max_steps=4, keep="last", progress=False)
    losses = [h["loss"] for h in out["history"]]
    assert losses[-1] < losses[0], losses
    new = quant_state(qmodel)
    assert new is not state and new.precisions == precisions and new.tensor_bits == state.tensor_bits
    assert model_bytes(qmodel) == bytes_before
    assert not any(hasattr(m, "parametrizations") for m in qmodel.modules())
    params = dict(qmodel.named_parameters())
    assert all(torch.equal(params[k], t.dequantize()) for k, t in new.tensors.items())
    assert any(not torch.equal(q_before[k], t.q) for k, t in new.tensors.items())  # training changed integers
    if scales == "fixed":
        assert all(torch.equal(t.scale, state.tensors[k].scale) for k, t in new.tensors.items())
    for k, t in new.tensors.items():
        assert t.q.abs().max() <= qmax(t.bits)
