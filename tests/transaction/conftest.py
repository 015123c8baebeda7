"""Fixtures for the transaction-layer tests (helpers live in txharness.py)."""

from __future__ import annotations

import pytest

from txharness import Harness


@pytest.fixture
def h() -> Harness:
    return Harness()
