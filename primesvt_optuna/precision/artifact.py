"""The quantized checkpoint: packed integer weights, their scales and every float tensor, as one
byte payload whose length is exactly the model's bytes (``pruning.memory.model_bytes``).

Format ``primesvt-quant/1``: a ``torch.save``d dict with the float checkpoint's fields (model
config, structure, data spec, metrics, params, model_bytes, meta) plus ``precisions`` (per named
layer), ``rule``, ``scale_dtype``, ``entries`` (name, kind, dtype, shape, bits, offset, nbytes
of each state-dict tensor inside the payload), ``payload`` (one uint8 tensor) and ``sha256`` of
the payload. Quantized weights are stored row by row: the integers ``q + 2^(b-1)`` packed
``8 / b`` per byte, lowest bits first, each output channel padded to whole bytes, then one scale
per output channel. One tensor keeps the file close to the payload (a file per tensor costs a
few hundred bytes of zip records each) and lets one checksum cover every byte of it.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..checkpoint import _read, build_structured, count_params, load_state_strict, write_atomic
from ..errors import PrimeSVTError
from ..models import resolve_config
from ..pruning.memory import QUANT_ATTR, SCALE_DTYPE, model_bytes, packed_row_bytes
from ..pruning.structure import structure_of
from .quant import QuantState, QuantTensor, qmax

QUANT_FORMAT = "primesvt-quant/1"
QUANT_REQUIRED = ("format", "model_config", "structure", "data", "metrics", "params", "model_bytes", "meta",
                  "precisions", "rule", "scale_dtype", "entries", "payload", "sha256")


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """``[rows, packed_row_bytes]`` uint8: each row's integers offset to unsigned, ``8 // bits`` a byte."""
    per = 8 // bits
    rows = q.shape[0]
    u = (q.reshape(rows, -1).to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8)
    pad = (-u.shape[1]) % per
    u = torch.cat([u, u.new_zeros(rows, pad)], 1).reshape(rows, -1, per)
    out = torch.zeros(rows, u.shape[1], dtype=torch.uint8)
    for j in range(per):
        out |= u[..., j] << (bits * j)
    return out


def unpack(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack``: int8 integers of ``shape``."""
    per, mask = 8 // bits, 2 ** bits - 1
    cols = math.prod(shape[1:])
    parts = torch.stack([(packed >> (bits * j)) & mask for j in range(per)], -1).reshape(shape[0], -1)[:, :cols]
    return (parts.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8).reshape(shape)


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise PrimeSVTError(f"unknown dtype {name!r} in a quantized checkpoint")
    return dtype


def _check_dequantized(model: nn.Module, state: QuantState) -> None:
    params = dict(model.named_parameters())
    for name, qt in state.tensors.items():
        if name not in params or not torch.equal(params[name].detach().cpu(), qt.dequantize(params[name].dtype)):
            raise PrimeSVTError(f"{name} no longer equals its quantized weights (trained after quantize?): "
                                "fine-tune with primesvt_optuna.precision.finetune_quantized, or quantize again")


def save_quantized(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: dict[str, Any],
    data_spec: dict[str, Any],
    metrics: dict[str, Any],
    *,
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write a quantized model (``quantize``'s output) as a compact checkpoint; returns the path.

    ``load_checkpoint`` gives back the same dequantized weights bit for bit; the payload is
    exactly ``model_bytes(model)`` (= ``predict_bytes`` of its rates and precisions).
    """
    state: QuantState | None = getattr(model, QUANT_ATTR, None)
    if state is None:
        raise PrimeSVTError("this model is not quantized: quantize it first (or write it with save_checkpoint)")
    _check_dequantized(model, state)
    entries: list[dict[str, Any]] = []
    chunks: list[torch.Tensor] = []
    offset = 0
    for name, tensor in model.state_dict().items():
        qt = state.tensors.get(name)
        if qt is None:
            chunk = _raw(tensor)
            entry = {"name": name, "kind": "float", "dtype": str(tensor.dtype).removeprefix("torch."), "bits": None}
        else:
            chunk = torch.cat([pack(qt.q, qt.bits).reshape(-1), _raw(qt.scale.to(SCALE_DTYPE))])
            entry = {"name": name, "kind": "quantized", "dtype": str(tensor.dtype).removeprefix("torch."),
                     "bits": qt.bits}
        entry.update(shape=list(tensor.shape), offset=offset, nbytes=int(chunk.numel()))
        entries.append(entry)
        chunks.append(chunk)
        offset += chunk.numel()
    payload = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
    if payload.numel() != model_bytes(model):
        raise AssertionError(f"payload {payload.numel()} bytes, model_bytes {model_bytes(model)}")
    return write_atomic(path, {
        "format": QUANT_FORMAT,
        "model_config": resolve_config(model_config),
        "structure": structure_of(model),
        "data": dict(data_spec),
        "metrics": dict(metrics),
        "params": count_params(model),
        "model_bytes": int(payload.numel()),
        "meta": dict(meta or {}),
        "precisions": dict(state.precisions),
        "rule": state.rule,
        "scale_dtype": str(SCALE_DTYPE).removeprefix("torch."),
        "entries": entries,
        "payload": payload,
        "sha256": hashlib.sha256(payload.numpy().tobytes()).hexdigest(),
    }, force=force)


def restore(ckpt: dict[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a loaded ``primesvt-quant/1`` dict (dequantized weights, ``QuantState``
    attached) and the dict; damaged files and payloads are one ``PrimeSVTError`` line."""
    if missing := [k for k in QUANT_REQUIRED if k not in ckpt]:
        raise PrimeSVTError(f"quantized checkpoint {path} lacks {', '.join(missing)}: it is damaged or from another tool")
    payload = ckpt["payload"]
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
        raise PrimeSVTError(f"quantized checkpoint {path} is corrupt (its payload is not a byte tensor)")
    if hashlib.sha256(payload.numpy().tobytes()).hexdigest() != ckpt["sha256"]:
        raise PrimeSVTError(f"quantized checkpoint {path} is corrupt (payload checksum mismatch)")
    if ckpt["scale_dtype"] != str(SCALE_DTYPE).removeprefix("torch."):
        raise PrimeSVTError(f"quantized checkpoint {path} stores {ckpt['scale_dtype']} scales; this version reads "
                            f"{str(SCALE_DTYPE).removeprefix('torch.')} scales only")
    model = build_structured(ckpt, path)
    state_dict: dict[str, torch.Tensor] = {}
    quant = QuantState(dict(ckpt["precisions"]), rule=str(ckpt["rule"]))
    try:
        for e in ckpt["entries"]:
            shape, dtype = tuple(int(s) for s in e["shape"]), _dtype(e["dtype"])
            chunk = payload[e["offset"]: e["offset"] + e["nbytes"]].clone()
            if chunk.numel() != e["nbytes"]:
                raise ValueError("entry past the payload's end")
            if e["kind"] == "float":
                state_dict[e["name"]] = chunk.view(dtype).reshape(shape)
                continue
            bits, rows = int(e["bits"]), shape[0]
            ints = rows * packed_row_bytes(math.prod(shape[1:]), bits)
            q = unpack(chunk[:ints].reshape(rows, -1), bits, shape)
            if q.abs().max() > qmax(bits):
                raise ValueError(f"{e['name']} holds integers outside int{bits}")
            qt = QuantTensor(bits, q, chunk[ints:].clone().view(SCALE_DTYPE).reshape(rows))
            quant.tensors[e["name"]] = qt
            state_dict[e["name"]] = qt.dequantize(dtype)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise PrimeSVTError(f"quantized checkpoint {path} is corrupt ({type(exc).__name__}: {str(exc)[:120]})") from None
    load_state_strict(model, state_dict, f"quantized checkpoint {path}")
    setattr(model, QUANT_ATTR, quant)
    if model_bytes(model) != ckpt["model_bytes"] or payload.numel() != ckpt["model_bytes"]:
        raise PrimeSVTError(f"quantized checkpoint {path} records {ckpt['model_bytes']:,} bytes, its payload holds "
                            f"{payload.numel():,}: it is damaged or from another version")
    return model, ckpt


def artifact_sizes(path: str | os.PathLike) -> dict[str, int]:
    """A quantized checkpoint's size on disk beside its tensor payload and its recorded
    (predicted) model bytes; the payload equals the prediction exactly."""
    path = Path(path).expanduser()
    ckpt = _read(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != QUANT_FORMAT or "payload" not in ckpt:
        raise PrimeSVTError(f"{path} is not a quantized primesvt checkpoint (format {QUANT_FORMAT!r} expected)")
    return {"file_bytes": path.stat().st_size, "payload_bytes": int(ckpt["payload"].numel()),
            "model_bytes": int(ckpt["model_bytes"])}


__all__ = ["QUANT_FORMAT", "artifact_sizes", "pack", "restore", "save_quantized", "unpack"]
