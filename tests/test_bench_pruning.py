"""benchmarks/bench_pruning.py's ``--align``: every layer wide enough keeps a multiple of N channels."""

import importlib.util
import math
from pathlib import Path

import pytest

from primesvt_optuna.models import build_model
from primesvt_optuna.pruning import Engine, model_bytes
from primesvt_optuna.pruning.engine import removed_per_head

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pruning.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_pruning", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rate", [0.1855, 0.39, 0.66])
def test_aligned_rates_keep_multiples_of_eight_near_the_uniform_width(bench, rate):
    engine = Engine(build_model({"preset": "digits-2-64"}).eval())
    rates = bench.aligned_rates(engine, rate, 8)
    for name, spec in engine.specs.items():  # digits-2-64's narrowest layer has 8 channels: all align
        group = spec.groups[0]
        per_head = group.channels // group.heads
        kept = group.heads * (per_head - removed_per_head(group, rates[name]))
        uniform_kept = group.heads * (per_head - removed_per_head(group, rate))
        step = 8 // math.gcd(8, group.heads)
        assert kept % 8 == 0, (name, kept)
        nearest = abs(kept - uniform_kept) <= step * group.heads // 2
        assert nearest or kept == step * group.heads, (name, kept, uniform_kept)  # or the one-step floor
        assert 0 <= rates[name] < 1
    assert engine.predict_bytes(rates) == model_bytes(engine.prune(rates))
