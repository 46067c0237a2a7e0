"""The objectives under the paper's point rule, for the tests of what a search does on its
evaluation images (the policies, the early cut, the records). The confirmation of what a study
delivers, the default, has its own tests (``tests/test_confirmation.py``)."""

from __future__ import annotations

from typing import Any

from primesvt_optuna.plugin import PruningObjective as _PruningObjective
from primesvt_optuna.plugin import SyntheticObjective as _SyntheticObjective


class SyntheticObjective(_SyntheticObjective):
    def __init__(self, *args: Any, accept: str = "point", **kwargs: Any) -> None:
        super().__init__(*args, accept=accept, **kwargs)


class PruningObjective(_PruningObjective):
    def __init__(self, *args: Any, accept: str = "point", **kwargs: Any) -> None:
        super().__init__(*args, accept=accept, **kwargs)
