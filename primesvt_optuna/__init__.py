"""primesvt-optuna: PrimeSVT memory-aware structured pruning of Spiking Vision Transformers."""

__version__ = "0.1.0"
