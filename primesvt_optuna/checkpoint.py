"""Checkpoints: one ``torch.save``d dict that rebuilds, and re-evaluates, its model on its own.

Contents (format ``primesvt/1``): ``model_config`` (resolved, so later preset edits cannot change
it), ``structure`` (the pruning engine's kept channels, ``None`` when unpruned), ``data`` (the data
spec with its split seed), ``metrics``, ``params``, ``model_bytes``, ``state_dict``, ``meta``.

Writes are atomic (temporary file in the same folder, fsync, rename) and never replace an existing
file unless asked, so an interrupted or refused save leaves every existing file as it was. Every
problem with a file surfaces as one ``PrimeSVTError`` line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import PrimeSVTError
from .models import build_model, resolve_config
from .models.official_names import to_preset_names

FORMAT = "primesvt/1"
REQUIRED = ("format", "model_config", "structure", "data", "metrics", "params", "model_bytes", "state_dict", "meta")
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
# The original Spikformer creates two LayerNorms per block that it never uses.
_UNUSED_ORIGINAL = re.compile(r"^block\.\d+\.norm[12]\.")


def shipped_names() -> list[str]:
    """Names of the trained baselines shipped inside the package."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.pt"))


def shipped(name: str) -> Path:
    """Path of a shipped baseline by name, e.g. ``shipped("digits-2-64")``."""
    path = SHIPPED_DIR / f"{name.removesuffix('.pt')}.pt"
    if not path.is_file():
        raise PrimeSVTError(f"no shipped checkpoint named {name!r}: shipped are {', '.join(shipped_names()) or 'none'}")
    return path


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """An existing file path as given, else the shipped baseline of that name."""
    path = Path(name_or_path).expanduser()
    if path.exists() or str(name_or_path).removesuffix(".pt") not in shipped_names():
        return path
    return shipped(str(name_or_path))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file: identifies the exact baseline a study started from."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise PrimeSVTError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: dict[str, Any],
    data_spec: dict[str, Any],
    metrics: dict[str, Any],
    *,
    structure: Any = None,
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``model`` and everything needed to rebuild and re-evaluate it; returns the path."""
    from .pruning import model_bytes  # the engine's byte count, so checkpoints and studies agree
    from .pruning.memory import QUANT_ATTR

    if getattr(model, QUANT_ATTR, None) is not None:
        raise PrimeSVTError("this model is quantized: write it with primesvt_optuna.precision.save_quantized "
                            "(a float checkpoint would not hold its integer weights)")

    payload = {
        "format": FORMAT,
        "model_config": resolve_config(model_config),
        "structure": structure,
        "data": dict(data_spec),
        "metrics": dict(metrics),
        "params": count_params(model),
        "model_bytes": model_bytes(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    return write_atomic(path, payload, force=force)


def write_atomic(path: str | os.PathLike, payload: dict[str, Any], *, force: bool = False) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically (temporary file, fsync, rename); refuses a
    folder, and an existing file unless ``force``. Returns the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PrimeSVTError(f"checkpoint path {path} is a folder: give a file name such as {path / 'model.pt'}")
    if path.exists() and not force:
        raise PrimeSVTError(f"{path} exists: pass --force (force=True) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is an ordinary file
        # Serialise in memory first: torch.save reports a failing write (full disk, RLIMIT_FSIZE)
        # as a RuntimeError; a plain file write raises the OSError (ENOSPC, EFBIG) callers expect.
        data = io.BytesIO()
        torch.save(payload, data)
        with os.fdopen(fd, "wb") as f:
            f.write(data.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:  # link() refuses an existing target: no window in which another writer is clobbered
                os.link(tmp, path)
            except FileExistsError:
                raise PrimeSVTError(f"{path} exists: pass --force (force=True) to overwrite it") from None
            os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read(path: Path) -> Any:
    if not path.exists():
        raise PrimeSVTError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise PrimeSVTError(f"checkpoint {path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; all mean the same to a user
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", str(exc)):
            raise PrimeSVTError(f"{path} holds Python objects ({found.group(1)}), not only tensors and plain data: "
                                "not a primesvt checkpoint (refusing to unpickle arbitrary code)") from None
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = (lines[-2] if "Weights only load failed" in str(exc) and len(lines) > 1 else
                 (lines or [type(exc).__name__])[0])[:160]
        raise PrimeSVTError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {first})") from None


def load_state_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message that names what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{len(items)} {what} (e.g. {', '.join(items[:2])})"
        for items, what in ((shapes, "shape mismatches"), (missing, "missing keys"), (unexpected, "unexpected keys"))
        if items
    ]
    if problems:
        raise PrimeSVTError(f"{source} does not fit its model config: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, quantized: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode, on ``device``) and the checkpoint dict.

    A quantized checkpoint (``precision.save_quantized``) gives the model with its dequantized
    weights (what it computes with) and its ``QuantState``; its dict holds ``precisions``.
    ``quantized=False`` requires a float checkpoint (searching and pruning start from one),
    ``True`` a quantized one; ``None`` takes either.
    """
    from .precision.artifact import QUANT_FORMAT, restore

    path = Path(path).expanduser()
    ckpt = _read(path)
    kind = ckpt.get("format") if isinstance(ckpt, dict) else None
    if kind not in (FORMAT, QUANT_FORMAT):
        raise PrimeSVTError(f"{path} is not a primesvt checkpoint (format {FORMAT!r} expected)")
    if kind == QUANT_FORMAT and quantized is False:
        raise PrimeSVTError(f"{path} is a quantized checkpoint ({_precisions(ckpt)}): "
                            "this needs the float checkpoint it was quantized from")
    if kind == FORMAT and quantized:
        raise PrimeSVTError(f"{path} is a float checkpoint, not a quantized one: quantize it with "
                            "primesvt_optuna.precision.quantize and write it with save_quantized")
    if kind == QUANT_FORMAT:
        model, ckpt = restore(ckpt, path)
        return model.to(device).eval(), ckpt
    if missing := [k for k in REQUIRED if k not in ckpt]:
        raise PrimeSVTError(f"checkpoint {path} lacks {', '.join(missing)}: it is damaged or from another tool")
    model = build_structured(ckpt, path)
    load_state_strict(model, ckpt["state_dict"], f"checkpoint {path}")
    return model.to(device).eval(), ckpt


def _precisions(ckpt: dict[str, Any]) -> str:
    values = ckpt.get("precisions")
    return ", ".join(sorted(set(map(str, values.values())))) if isinstance(values, dict) and values else "no layer"


def build_structured(ckpt: dict[str, Any], path: Path) -> nn.Module:
    """A fresh model of the checkpoint's config, pruned to its structure (weights still random)."""
    try:
        model = build_model(ckpt["model_config"])
    except PrimeSVTError as exc:
        raise PrimeSVTError(f"checkpoint {path}: {exc}") from None
    if ckpt["structure"] is not None:
        from .pruning import apply_structure

        model = apply_structure(model, ckpt["structure"])
    return model


def load_original(path: str | os.PathLike, model_config: dict[str, Any]) -> nn.Module:
    """A model of ``model_config`` with the weights of a checkpoint saved by the original code of its
    family (Spikformer; Spike-Driven Transformer and QKFormer, renamed by ``models.official_names``)
    or by spikingjelly's own classes: a raw state dict or one under ``model``/``state_dict``,
    ``module.`` prefixes and the unused ``block.*.norm1/norm2`` LayerNorm keys dropped, then loaded
    strictly."""
    path = Path(path).expanduser()
    raw = _read(path)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        raise PrimeSVTError(f"{path} is a primesvt checkpoint: load it with load_checkpoint")
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise PrimeSVTError(f"{path} holds no state dict (a dict of tensors, possibly under 'model' or 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    state = {k: v for k, v in state.items() if not _UNUSED_ORIGINAL.match(k)}
    model = build_model(model_config)
    state = to_preset_names(state, resolve_config(model_config)["family"], model.state_dict())
    load_state_strict(model, state, f"original checkpoint {path}")
    return model.eval()
