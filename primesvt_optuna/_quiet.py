"""Silence one harmless start-up message of torch, and only that one.

spikingjelly registers its LIF/PLIF/... kernels with ``torch.library.triton_op`` the first time
a neuron runs; on a machine without Triton (every CPU-only install) torch's
``get_inner_triton_kernels`` then logs, through the standard ``logging`` logger
``torch._library.triton`` at WARNING level, ``Triton not available, find_triton_kernels = []``
once per registered op (twice per process for the Spikformer's LIF neurons). Nothing is wrong:
PrimeSVT runs spikingjelly's torch/CPU kernels either way.

The filter sits on that one logger and drops only records whose message starts with
``Triton not available``; any other record of that logger, and every other logger and Python
warning, is untouched. Importing this module costs only ``logging`` (no torch), and installing
the filter twice is a no-op.
"""

from __future__ import annotations

import logging

LOGGER = "torch._library.triton"
MESSAGE = "Triton not available"


class _TritonUnavailableFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not message.startswith(MESSAGE)


def install() -> None:
    """Attach the filter to torch's ``torch._library.triton`` logger (idempotent)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, _TritonUnavailableFilter) for f in logger.filters):
        logger.addFilter(_TritonUnavailableFilter())


install()
