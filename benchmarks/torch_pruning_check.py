"""What Torch-Pruning's DepGraph makes of our Spikformer: why the engine has its own adapters.

For one output channel of each kind of prunable layer, ask DepGraph (traced in spikingjelly's
multi-step mode, the mode the model runs in) which channels it couples, compare with what the
model's structure requires, then let Torch-Pruning remove that group and see whether the model
still runs. Needs `pip install torch-pruning==1.6.1` (not a dependency of the package).

Usage: python benchmarks/torch_pruning_check.py   (writes benchmarks/results/engine/torch_pruning.csv)
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import torch
import torch_pruning as tp
from spikingjelly.activation_based import functional

from primesvt_optuna.models import build_model

OUT = Path(__file__).parent / "results" / "engine" / "torch_pruning.csv"
# layer -> the modules a structurally correct removal of one of its output channels must touch
EXPECTED = {
    "patch_embed.rpe_conv": {"patch_embed.rpe_conv", "patch_embed.rpe_bn"},
    "block.0.attn.q_linear": {"block.0.attn.q_linear", "block.0.attn.q_bn", "block.0.attn.k_linear", "block.0.attn.k_bn"},
    "block.0.attn.v_linear": {"block.0.attn.v_linear", "block.0.attn.v_bn", "block.0.attn.proj_linear"},
    "block.0.mlp.fc1_linear": {"block.0.mlp.fc1_linear", "block.0.mlp.fc1_bn", "block.0.mlp.fc2_linear"},
    "block.0.mlp.fc2_linear": {"block.0.mlp.fc2_linear", "block.0.mlp.fc2_bn"},
}


def main() -> None:
    model = build_model({"preset": "digits-2-64"}).eval()
    x = torch.rand(2, 1, 16, 16)
    rows = []
    for name, expected in EXPECTED.items():
        m = copy.deepcopy(model)
        graph = tp.DependencyGraph().build_dependency(m, example_inputs=x)
        modules = dict(m.named_modules())
        names = {v: k for k, v in modules.items()}
        layer = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(layer, torch.nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(layer, fn, idxs=[0])
        touched = {names[d.target.module] for d, _ in group if d.target.module in names}
        widths = sorted({len(list(idxs)) for _, idxs in group})
        try:
            group.prune()
            functional.reset_net(m)
            m(x)
            runs = "yes"
        except Exception as exc:  # what breaks is the finding
            runs = f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        rows.append({
            "layer": name, "modules_coupled": len(touched),
            "missing_couplings": ", ".join(sorted(expected - touched)) or "-",
            "spurious_couplings": len(touched - expected),
            "channels_removed_per_module": "/".join(map(str, widths)),
            "model_runs_after_prune": runs,
        })
        print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table["torch_pruning"] = tp.__version__
    table.to_csv(OUT, index=False)
    print(table.to_markdown(index=False) if hasattr(table, "to_markdown") else table.to_string(index=False))


if __name__ == "__main__":
    main()
