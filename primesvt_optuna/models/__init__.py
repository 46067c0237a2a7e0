"""Model zoo: Spikformer presets on spikingjelly 2.0."""

from .presets import PRESETS, build_model, resolve_config

__all__ = ["PRESETS", "build_model", "resolve_config"]
