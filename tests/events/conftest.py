"""Shared fixtures for the event body-format tests."""

from __future__ import annotations

import pathlib
import re
import sys

import pytest

try:  # the package may not be installed in the venv yet
    import presenced  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))

DATA = pathlib.Path(__file__).resolve().parent / "data"
TRACE_DIR = pathlib.Path("/work/shared/docs/client-traces")

CLIENT_BODIES = sorted(p.name for p in DATA.glob("*.xml"))


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def trace_pidf_bodies() -> list[bytes]:
    """Every PIDF body in the shared client traces (empty if not available)."""
    bodies = []
    if TRACE_DIR.is_dir():
        for path in sorted(TRACE_DIR.glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            bodies += [m.group(0).encode() for m in re.finditer(r"<\?xml.*?</presence>", text, re.S)]
    return bodies


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
