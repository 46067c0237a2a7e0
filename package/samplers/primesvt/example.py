"""PrimeSVT's largest-first pruning walk, loaded through OptunaHub, on a synthetic Spikformer.

No model, no data download: ``SyntheticObjective`` gives each layer a closed-form accuracy loss,
so the whole study (about 20 trials) takes a second or two. Run it from anywhere:

    python package/samplers/primesvt/example.py
"""

from __future__ import annotations

import os

import optuna
import optunahub

# The published package: ``optunahub.load_module("samplers/primesvt")``. This file loads the copy
# next to it instead, so it works offline and tests this checkout.
REGISTRY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
primesvt = optunahub.load_local_module("samplers/primesvt", registry_root=REGISTRY_ROOT)

# Parameter counts of a small Spikformer's prunable layers and how much accuracy each one loses
# per squared pruning rate (the classifier head is the most fragile, fc1 the most robust).
LAYERS = {"patch_embed": 6000, "block0.mlp.fc1": 4000, "block0.mlp.fc2": 4000, "block0.attn.qkv": 3000, "head": 640}
LOSS = {"patch_embed": 0.1, "block0.mlp.fc1": 0.02, "block0.mlp.fc2": 0.15, "block0.attn.qkv": 0.08, "head": 1.0}


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = primesvt.SyntheticObjective(
        LAYERS, sensitivity=LOSS, base_accuracy=0.95, max_accuracy_drop=0.03, memory_target=0.3,
        grid=(0.2, 0.4, 0.6, 0.8), accept="point",  # the paper's rule (the default confirms on held-back images)
    )
    sampler = primesvt.PrioritizedSampler(grid=(0.2, 0.4, 0.6, 0.8))
    study = optuna.create_study(directions=objective.directions, sampler=sampler)
    study.optimize(objective)  # no n_trials: the sampler stops the study when the walk is done

    found = primesvt.result(study)
    print(f"{len(study.trials)} trials; walk finished: {found.finished}")
    print(found.message)
    for layer, rate in found.selected["rates"].items():
        print(f"  prune {layer} at {rate:g}")


if __name__ == "__main__":
    main()
