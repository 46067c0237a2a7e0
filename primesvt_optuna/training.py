"""Training and evaluation of zoo models: AdamW, warm-up + cosine schedule, label smoothing.

Spiking neurons keep a membrane state across calls, so ``reset_net`` runs after every batch, in
training and in evaluation alike; evaluation is deterministic (eval mode, fixed order, no
autograd), which is what lets ``primesvt evaluate`` reproduce a recorded accuracy exactly.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import Splits
from .errors import PrimeSVTError

EVAL_BATCH_SIZE = 256


def class_scores(output: torch.Tensor) -> torch.Tensor:
    """``[B, classes]`` logits of a model's output: spikingjelly's built-in ``Spikformer`` returns
    one set per time step (``[T, B, classes]``), averaged here as its wrapper does."""
    return output.mean(0) if output.dim() == 3 else output


def machine() -> dict[str, Any]:
    """Where timings come from: CPU model, cores, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": str(torch.__version__)}


def torch_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, or a one-line error for an unknown one or a GPU this build lacks."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise PrimeSVTError(f"unknown device {device!r}: give cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrimeSVTError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
    return dev


def iter_correct(
    model: nn.Module, dataset: Dataset, *, batch_size: int = EVAL_BATCH_SIZE, device: str | torch.device = "cpu",
    batches: Sequence[Sequence[int]] | None = None,
) -> Iterator[torch.Tensor]:
    """Per-image correctness (a bool tensor per batch), in a fixed order; ``batches``: the dataset
    indices of each batch instead (a schedule of growing batches). Eval mode, no autograd, neuron
    state reset after every batch."""
    dev = torch_device(device)
    loader = (DataLoader(dataset, batch_sampler=batches, num_workers=0) if batches is not None
              else DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x, y in loader:
                try:
                    logits = class_scores(model(x.to(dev)))
                finally:
                    functional.reset_net(model)
                yield logits.argmax(1).cpu() == y
    finally:
        functional.reset_net(model)
        model.train(was_training)


def iter_eval(
    model: nn.Module, dataset: Dataset, *, batch_size: int = EVAL_BATCH_SIZE, device: str | torch.device = "cpu",
    batches: Sequence[Sequence[int]] | None = None,
) -> Iterator[tuple[int, int]]:
    """``(correct_in_batch, batch_size)`` batch by batch (lets callers stop early); see ``iter_correct``."""
    for right in iter_correct(model, dataset, batch_size=batch_size, device=device, batches=batches):
        yield int(right.sum()), len(right)


def evaluate(
    model: nn.Module, dataset: Dataset, *, batch_size: int = EVAL_BATCH_SIZE, device: str | torch.device = "cpu"
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``dataset``."""
    correct = total = 0
    for c, n in iter_eval(model, dataset, batch_size=batch_size, device=device):
        correct, total = correct + c, total + n
    if total == 0:
        raise PrimeSVTError("cannot evaluate on an empty data set")
    return correct / total


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): the cheapest augmentation
    that still helps small data sets such as digits generalise."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=g).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def _schedule(total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to zero: the usual ViT recipe."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(
    model: nn.Module,
    splits: Splits,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    warmup_epochs: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    augment_shift: int = 0,
    max_steps: int | None = None,
    keep: str = "last",
    select_on: Dataset | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``splits.train``; validation accuracy after each epoch.

    ``augment_shift`` randomly translates training images by up to that many pixels;
    ``max_steps`` caps the batches per epoch (for smoke tests); ``keep="best"`` leaves the model at
    the epoch with the highest validation accuracy, the untrained model (epoch 0) included, the
    earliest on ties (``"last"``: the last epoch). ``select_on``: the images measured after each
    epoch instead of the validation split (recorded as ``selection_accuracy``), so that held-back
    images stay unseen. Returns ``history`` (per epoch: loss, train and validation accuracy,
    learning rate), ``kept_epoch`` and its ``val_accuracy``, ``train_seconds`` (wall) and
    ``train_cpu_seconds`` (CPU time of all threads).
    """
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise PrimeSVTError(f"need epochs >= 0, batch size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if keep not in ("best", "last"):
        raise PrimeSVTError(f"keep must be 'best' or 'last', got {keep!r}")
    dev = torch_device(device)
    model.to(dev)
    torch.manual_seed(seed)
    loader = DataLoader(
        splits.train, batch_size=batch_size, shuffle=True, num_workers=0,
        generator=torch.Generator().manual_seed(seed), drop_last=len(splits.train) > batch_size,
    )
    augment_rng = torch.Generator().manual_seed(seed + 1)
    steps = min(len(loader), max_steps or len(loader))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # biases and norms
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(epochs * steps, warmup_epochs * steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history: list[dict[str, float]] = []
    watch, measured = (splits.val, "val_accuracy") if select_on is None else (select_on, "selection_accuracy")
    best = (evaluate(model, watch, device=dev), 0, copy.deepcopy(model.state_dict())) if keep == "best" else None
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(total=epochs * steps, desc="train", unit="batch", disable=not progress, leave=False)
    for epoch in range(epochs):
        model.train()
        loss_sum = correct = seen = 0.0
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            x, y = random_shift(x, augment_shift, augment_rng).to(dev), y.to(dev)
            logits = class_scores(model(x))
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            functional.reset_net(model)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update()
        val = evaluate(model, watch, device=dev)
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                        measured: val, "lr": opt.param_groups[0]["lr"]})
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", val=f"{val:.4f}")
        if best is not None and val > best[0]:
            best = (val, epoch + 1, copy.deepcopy(model.state_dict()))
    bar.close()
    model.eval()
    if best is not None:
        model.load_state_dict(best[2])
        final, kept = best[0], best[1]
    else:
        final, kept = (history[-1][measured] if history else evaluate(model, watch, device=dev)), epochs
    return {
        "epochs": epochs,
        "history": history,
        "kept_epoch": kept,
        measured: final,
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,  # all threads; robust to other load on the machine
    }


def finetune(
    model: nn.Module,
    splits: Splits,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 5e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    augment_shift: int = 0,
    max_steps: int | None = None,
    keep: str = "best",
    select_on: Dataset | None = None,
) -> dict[str, Any]:
    """Recover accuracy after pruning: a short low-rate run without warm-up. Training never changes
    a layer's shape, so the pruned structure is kept. ``keep="best"`` (default) leaves the model at
    its best epoch on validation (on ``select_on`` when given: ``primesvt export`` passes the
    search part, so the confirmation images judge the result unseen), the pruned model before any
    training included: a few epochs on the training split can lower validation accuracy (3 epochs
    took the unpruned digits-hard model from 83.02% to 81.17%). ``"last"``: the last epoch,
    whatever its accuracy."""
    return train(model, splits, epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=0, seed=seed,
                 device=device, progress=progress, augment_shift=augment_shift, max_steps=max_steps,
                 keep=keep, select_on=select_on)
