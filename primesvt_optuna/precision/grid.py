"""The precision grid's names, without torch: the command line and study configs validate a
grid before anything heavy is imported."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import PrimeSVTError

FLOAT = "float"
# Precision name -> bit width (None: the weight keeps its float dtype).
GRID: dict[str, int | None] = {FLOAT: None, "int8": 8, "int4": 4, "int2": 2}


def parse_precision(value: str | int) -> str:
    """A grid name for ``value`` ("float"/"float32", "int8"/"int4"/"int2", or a bit width 8/4/2)."""
    if isinstance(value, bool):
        value = str(value)
    name = f"int{value}" if isinstance(value, int) else str(value).strip().lower()
    name = FLOAT if name == "float32" else name
    if name not in GRID:
        raise PrimeSVTError(f"precision {value!r} is not in the grid: choose from {', '.join(GRID)} "
                            "(bit widths 8, 4 or 2)")
    return name


def parse_grid(values: str | Iterable[str | int]) -> tuple[str, ...]:
    """A precision grid (any non-empty subset of ``GRID``, e.g. ``"float,int8,int4"``), in grid order."""
    items = [v for v in (values.split(",") if isinstance(values, str) else values) if str(v).strip()]
    names = {parse_precision(v) for v in items}
    if not names:
        raise PrimeSVTError(f"empty precision grid: give a subset of {', '.join(GRID)}")
    return tuple(n for n in GRID if n in names)
