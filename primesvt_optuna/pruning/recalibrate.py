"""Adaptive BatchNorm recalibration (EagleEye, Li et al., ECCV 2020) for pruned spiking models.

After filters are removed, the BatchNorm layers downstream of them see inputs whose statistics
differ from the ones they were trained on. Re-estimating the running statistics on a few hundred
training images (forward passes only, no gradients) recovers much of the lost accuracy without
any training. On Spikformer the neurons keep a membrane state across calls, so it is reset after
every batch (``spikingjelly.activation_based.functional.reset_net``), as in evaluation.

What :func:`recalibrate_bn` does, exactly:

1. every BatchNorm module (``torch.nn.modules.batchnorm._BatchNorm``, which spikingjelly's
   ``layer.BatchNorm1d/2d`` subclass) gets ``reset_running_stats()`` (mean 0, variance 1,
   ``num_batches_tracked`` 0) and ``momentum=None``: PyTorch then keeps the *cumulative* average
   of the batch statistics (each batch weighs the same);
2. the model is in eval mode except the BatchNorm modules (train mode: they update their running
   statistics), so nothing else that depends on the mode changes;
3. ``images`` training images, chosen by ``torch.randperm`` seeded with ``seed`` (the first
   ``images`` of a seeded permutation, in that order), pass forward in batches of ``batch_size``
   (64) under ``torch.no_grad``, the neuron state reset before the first batch and after each
   one; the last batch may be smaller and weighs as much as the others;
4. each module's momentum, the modes and the neuron state are restored.

Only BatchNorm buffers change (``running_mean``, ``running_var``, ``num_batches_tracked``);
weights, biases and every other buffer are untouched, and the same model, data, ``images`` and
``seed`` give bit-for-bit the same statistics (CPU). The engine's exactness guarantees (bytes,
structure, equivalence with the masked reference) are about the plain pruned model; recalibration
is a separate step applied after ``Engine.prune``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import PrimeSVTError

BATCH_SIZE = 64
"""Recalibration batch size (EagleEye's setting; the numbers in docs/plugin.md use it)."""


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm modules (torch's and spikingjelly's)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def recalibration_set(train: Dataset, images: int, seed: int = 0) -> Dataset:
    """The ``images`` training images recalibration uses: the first ``images`` entries of a
    ``torch.randperm`` seeded with ``seed`` (all of them, in that permuted order, if fewer)."""
    if images < 1:
        raise PrimeSVTError(f"recalibration needs at least one image, got {images}")
    if len(train) == 0:
        raise PrimeSVTError("cannot recalibrate BatchNorm on an empty training set")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(train), generator=g)[: int(images)]
    return Subset(train, order.tolist())


def recalibrate_bn(
    model: nn.Module,
    data: Dataset,
    *,
    images: int | None = None,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    device: str | torch.device = "cpu",
) -> int:
    """Re-estimate every BatchNorm's running statistics of ``model`` in place (see module docs).

    ``data`` is the training set; with ``images`` the seeded subset :func:`recalibration_set`
    picks is used, without it ``data`` as given (in order). Returns the number of images passed
    forward (0 when the model has no BatchNorm: nothing to do, nothing spent).
    """
    from spikingjelly.activation_based import functional

    if batch_size < 1:
        raise PrimeSVTError(f"recalibration batch size must be at least 1, got {batch_size}")
    norms = batchnorms(model)
    if not norms:
        return 0
    dataset = recalibration_set(data, images, seed) if images is not None else data
    if len(dataset) == 0:
        raise PrimeSVTError("cannot recalibrate BatchNorm on an empty data set")
    dev = torch.device(device)
    was_training = model.training
    saved: list[tuple[_BatchNorm, Any, bool]] = [(m, m.momentum, m.track_running_stats) for m in norms]
    for m in norms:  # check them all before changing any: a refused call leaves the model as it was
        if not m.track_running_stats or m.running_mean is None:
            raise PrimeSVTError(f"{type(m).__name__} does not track running statistics: nothing to recalibrate")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.eval()
    for m in norms:
        m.train()
    seen = 0
    functional.reset_net(model)  # no membrane state left over from an earlier call
    try:
        with torch.no_grad():
            for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
                try:
                    model(x.to(dev))
                finally:
                    functional.reset_net(model)
                seen += len(x)
    finally:
        for m, momentum, _ in saved:
            m.momentum = momentum
        functional.reset_net(model)
        model.train(was_training)
    return seen
