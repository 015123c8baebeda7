"""Fixtures for the event body-format tests."""

from __future__ import annotations

import pathlib
import sys

import pytest

try:  # the package may not be installed in the venv yet
    import presenced  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))

from formats_support import load  # noqa: E402


@pytest.fixture
def baresip_open() -> bytes:
    return load("baresip-publish-open.xml")


@pytest.fixture
def baresip_closed() -> bytes:
    return load("baresip-publish-closed.xml")


@pytest.fixture
def linphone_online() -> bytes:
    return load("linphone-publish-online.xml")


@pytest.fixture
def linphone_busy() -> bytes:
    return load("linphone-publish-busy.xml")
