"""How a per-layer precision travels through a search: its Optuna parameter and its place in a
configuration.

A trial carries ``precision:<layer>`` (a categorical over the study's precision grid, e.g.
``"int4"``) beside ``rate:<layer>``. Inside the samplers' claims a configuration is one dict of
parameter -> number, zeros left out: rates as fractions and precisions as bit widths (8, 4, 2;
float is 0, absent). So a float-only configuration is exactly what it was before precisions
existed (same claim, same key), and a quantized one extends it with its precision entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import PrimeSVTError
from .grid import FLOAT, GRID, parse_grid

PRECISION_PREFIX = "precision:"
FLOAT_ONLY: tuple[str, ...] = (FLOAT,)


def precision_param(layer: str) -> str:
    """The Optuna parameter name of a layer's precision."""
    return f"{PRECISION_PREFIX}{layer}"


def is_precision(param: str) -> bool:
    return param.startswith(PRECISION_PREFIX)


def quantized_layers(params: Mapping[str, Any]) -> dict[str, str]:
    """``{layer: precision}`` of a trial's parameters, float layers left out (empty for a float
    trial)."""
    return {p[len(PRECISION_PREFIX):]: str(v) for p, v in params.items() if is_precision(p) and v != FLOAT}


def bits_of(name: str | int | float) -> int:
    """A precision as a configuration number: its bit width, 0 for float."""
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        bits = int(name)
        if bits not in (0, *(b for b in GRID.values() if b)):
            raise PrimeSVTError(f"precision bit width {name!r} is not 8, 4 or 2")
        return bits
    return GRID[parse_grid([name])[0]] or 0


def name_of(bits: float) -> str:
    """The grid name of a configuration number (0: float)."""
    return next(name for name, b in GRID.items() if (b or 0) == int(bits))


def check_precisions(values: str | Sequence[str]) -> tuple[str, ...]:
    """A study's precision grid (``"float,int8,int4,int2"``), in grid order, widest first; it
    holds float, the precision of the unpruned reference and of every layer a search leaves alone."""
    grid = parse_grid(values)
    if FLOAT not in grid:
        raise PrimeSVTError(f"the precision grid {','.join(grid)} lacks float: the unpruned reference and every "
                            "layer a search leaves alone are float (give e.g. float,int8,int4)")
    return grid


def split_config(config: Mapping[str, float], layer_of: Mapping[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """``(rates, precisions)`` by layer name from a claim's configuration (``layer_of``: rate
    parameter -> layer); float layers are left out of ``precisions``."""
    rates, precisions = {}, {}
    for param, value in config.items():
        if is_precision(param):
            if int(value):
                precisions[param[len(PRECISION_PREFIX):]] = name_of(value)
        elif float(value) > 0:
            rates[layer_of.get(param, param)] = float(value)
    return rates, precisions


__all__ = ["FLOAT_ONLY", "PRECISION_PREFIX", "bits_of", "check_precisions", "is_precision", "name_of",
           "precision_param", "split_config"]
