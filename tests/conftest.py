"""Fixtures shared by the test suite; the helpers and tolerances are in `harness.py`."""

from __future__ import annotations

from typing import Any

import pytest
from harness import random_grads, random_params


@pytest.fixture
def params() -> Any:
    return random_params(0)


@pytest.fixture
def grads(params: Any) -> list[Any]:
    return random_grads(0, 100, params)
