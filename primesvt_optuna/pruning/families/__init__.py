"""The built-in rooms, one module per model family (importing a module registers its rooms)."""

from . import maxformer, qkformer, spike_driven, spikformer  # noqa: F401
