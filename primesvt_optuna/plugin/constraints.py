"""The names and the arithmetic every part of the plugin shares: the rate-parameter prefix, the
default rate grid, the user's accuracy/memory constraints and the attribute keys kept in storage.

Constraint values follow Optuna's convention (feasible when <= 0) and are fractions, so that
Optuna's samplers, which sum violations across keys, weigh accuracy and memory alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import PrimeSVTError

RATE_PREFIX = "rate:"
"""Every rate parameter is named ``rate:<layer>``, so samplers recognise it before anything else
is known about the study."""

DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
STUDY_PREFIX = "primesvt:"

# Storage keys: trial system attrs written by the samplers.
CLAIM = "primesvt:claim"
WORKER = "primesvt:worker"
OUTCOME = "primesvt:outcome"


def rate_param(layer: str) -> str:
    """The Optuna parameter name for a layer's pruning rate."""
    return f"{RATE_PREFIX}{layer}"


def layer_of(param: str) -> str:
    """The layer name behind a parameter name (the prefix stripped when present)."""
    return param[len(RATE_PREFIX):] if param.startswith(RATE_PREFIX) else param


def normalize_grid(grid: Iterable[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated rates rounded to 6 digits, without 0 (unpruned, always implied);
    each must lie in [0, 1)."""
    if isinstance(grid, (str, bytes)):
        raise PrimeSVTError(f"rate grid must be a list of numbers, got {grid!r}")
    try:
        values = sorted({round(float(r), 6) for r in grid})
    except (TypeError, ValueError):
        raise PrimeSVTError(f"rate grid must be a list of numbers, got {grid!r}") from None
    bad = [r for r in values if not 0.0 <= r < 1.0 or math.isnan(r)]
    if bad:
        raise PrimeSVTError(f"rate grid values must lie in [0, 1) (a fraction of each layer's filters); got {bad}")
    values = [r for r in values if r > 0.0]
    if not values:
        raise PrimeSVTError("rate grid is empty: give at least one rate in (0, 1), e.g. [0.1, 0.2, 0.3]")
    return tuple(values)


_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]i?)?[bB]?\s*$")
_UNITS = {None: 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_bytes(value: int | float | str) -> int:
    """``2MB`` = 2,000,000 bytes, ``2MiB`` = 2,097,152, a plain number is bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = _BYTES.match(str(value))
    if not match:
        raise PrimeSVTError(f"cannot read {value!r} as a size: use e.g. 2500000, '2.5MB', '512KiB'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower() if unit else None])


@dataclass(frozen=True)
class Constraints:
    """The user's two constraints.

    Accuracy: ``max_accuracy_drop`` (fraction below the unpruned model's accuracy, 0.03 = 3 points)
    or ``min_accuracy`` (absolute floor). Memory: ``memory_target`` (fraction of the model's bytes
    to save) or ``memory_budget`` (bytes the pruned model may take); neither means "no memory
    constraint", and a walk then prunes every target layer.
    """

    max_accuracy_drop: float | None = 0.03
    min_accuracy: float | None = None
    memory_target: float | None = None
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        if (self.max_accuracy_drop is None) == (self.min_accuracy is None):
            raise PrimeSVTError("give exactly one accuracy constraint: max_accuracy_drop or min_accuracy")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop < 1.0:
            raise PrimeSVTError(
                f"max_accuracy_drop must be a fraction in [0, 1) (0.03 = 3 points), got {self.max_accuracy_drop}"
            )
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise PrimeSVTError(f"min_accuracy must be a fraction in [0, 1], got {self.min_accuracy}")
        if self.memory_target is not None and self.memory_budget is not None:
            raise PrimeSVTError("give at most one memory constraint: memory_target or memory_budget")
        if self.memory_target is not None and not 0.0 <= self.memory_target < 1.0:
            raise PrimeSVTError(
                f"memory_target is the fraction of model bytes to save and must lie in [0, 1), got {self.memory_target}"
            )
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise PrimeSVTError(f"memory_budget must be a positive number of bytes, got {self.memory_budget}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraints:
        unknown = set(data) - {"max_accuracy_drop", "min_accuracy", "memory_target", "memory_budget"}
        if unknown:
            raise PrimeSVTError(f"unknown constraint keys {sorted(unknown)}")
        data = dict(data)
        if data.get("memory_budget") is not None:
            data["memory_budget"] = parse_bytes(data["memory_budget"])
        if "max_accuracy_drop" not in data and data.get("min_accuracy") is not None:
            data["max_accuracy_drop"] = None
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_model(self, base_bytes: int) -> None:
        """A memory budget larger than the model is a mistake, not a trivially met constraint."""
        if self.memory_budget is not None and self.memory_budget > base_bytes:
            raise PrimeSVTError(
                f"memory_budget {self.memory_budget:,} bytes is larger than the unpruned model "
                f"({base_bytes:,} bytes): give a smaller budget or a memory_target fraction"
            )

    def accuracy_floor(self, base_accuracy: float | None) -> float | None:
        """The lowest acceptable accuracy (None while the base accuracy is not known yet)."""
        if self.min_accuracy is not None:
            return self.min_accuracy
        if base_accuracy is None:
            return None
        assert self.max_accuracy_drop is not None
        return base_accuracy - self.max_accuracy_drop

    def target_saving(self, base_bytes: int) -> float | None:
        """The memory saving asked for, as a fraction of the unpruned model's bytes."""
        if self.memory_budget is not None:
            return 1.0 - self.memory_budget / base_bytes
        return self.memory_target

    def accuracy_violation(self, accuracy: float, base_accuracy: float | None) -> float:
        """``drop - budget`` (= floor - accuracy); <= 0 when the accuracy constraint holds."""
        floor = self.accuracy_floor(base_accuracy)
        if floor is None:
            raise ValueError("the base accuracy is needed for a max_accuracy_drop constraint")
        return round(floor - accuracy, 12)

    def memory_violation(self, saving: float, base_bytes: int) -> float | None:
        """``target - saving``; <= 0 when the memory constraint holds, None without a target."""
        target = self.target_saving(base_bytes)
        return None if target is None else round(target - saving, 12)

    def describe(self) -> str:
        acc = (
            f"accuracy drop <= {100 * self.max_accuracy_drop:.2f} points"
            if self.max_accuracy_drop is not None
            else f"accuracy >= {100 * self.min_accuracy:.2f}%"  # type: ignore[operator]
        )
        if self.memory_budget is not None:
            mem = f"model <= {self.memory_budget:,} bytes"
        elif self.memory_target is not None:
            mem = f"memory saving >= {100 * self.memory_target:.1f}%"
        else:
            mem = "no memory target (maximise the saving)"
        return f"{acc}; {mem}"
