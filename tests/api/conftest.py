"""Fixtures for the management API tests: an in-process server (SIP + HTTP)."""

from __future__ import annotations

import pathlib
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for p in (_HERE, _HERE.parent, _HERE.parent / "storage"):  # api_support, tests/sipclient.py, storage_support
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from api_support import LiveServer  # noqa: E402


@pytest.fixture(scope="module")
def live():
    """One memory-mode server per test module (force_active=1, bearer token)."""
    srv = LiveServer().start()
    yield srv
    srv.stop()
