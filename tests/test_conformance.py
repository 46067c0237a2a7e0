"""Optuna's own generic sampler test cases, run on the PrimeSVT samplers.

These only exercise the fallback path (their parameters are not ``rate:`` parameters); the walk
itself is tested in test_samplers.py and with a real model in test_objective.py.
"""

from __future__ import annotations

import pytest
from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase

from primesvt_optuna.plugin import BudgetAwareSampler, PrioritizedSampler, RandomOrderSampler, UniformSampler


class TestPrioritizedSampler(BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: PrioritizedSampler(seed=0)


class TestUniformSampler(BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: UniformSampler(seed=0)


class TestRandomOrderSampler(BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: RandomOrderSampler(seed=0)


class TestBudgetAwareSampler(BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: BudgetAwareSampler(seed=0)
