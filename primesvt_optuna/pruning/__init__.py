"""The structured pruning engine (family adapters, channel surgery, exact memory, robustness)."""

from .adapters import Room, register
from .engine import ENGINE_VERSION, Engine, prune, removed_per_head
from .memory import deployment_memory, model_bytes, param_bytes, saved_size
from .reference import masked_reference
from .structure import apply_structure, structure_of

__all__ = [
    "ENGINE_VERSION", "Engine", "Room", "apply_structure", "deployment_memory", "masked_reference",
    "model_bytes", "param_bytes", "prune", "register", "removed_per_head", "saved_size", "structure_of",
]
