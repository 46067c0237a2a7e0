"""Shared fixtures: system services started by scripts/services.sh (via `make test`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy-waiting OpenMP starves parallel tests

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _service(variable: str, what: str) -> str:
    value = os.environ.get(variable)
    if value:
        return value
    reason = f"{what} not available: {variable} is unset (run the tests with `make test`, which starts it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test; {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the throw-away PostgreSQL database started by scripts/services.sh."""
    return _service("PRIMESVT_TEST_POSTGRES_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium binary installed by scripts/services.sh."""
    return _service("PRIMESVT_CHROMIUM", "chromium")


@pytest.fixture(params=["sqlite", "journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path) -> Iterator[str]:
    """One study storage of each kind the scale-out and crash tests cover."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/study.db"
    elif request.param == "journal":
        yield f"journal:///{tmp_path}/study.log"
    else:
        yield request.getfixturevalue("postgres_url")
