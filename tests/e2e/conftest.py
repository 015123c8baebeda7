"""End-to-end fixtures: real `presenced serve` processes, real sockets.

One shared server runs the configuration the external conformance suite
uses (force_active=1, min_expires=10). Tests that need another setting start
their own short-lived server; `short_server` (min_expires=1) serves every
test that waits for something to expire.
"""

from __future__ import annotations

import pathlib
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for p in (_HERE, _HERE.parent):  # e2e_support, then tests/sipclient.py
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from e2e_support import Phone, Server, uid  # noqa: E402

CONFORMANCE_ARGS = ("--set", "presence_xml.force_active=1", "--set", "presence.min_expires=10")
TRANSPORTS = ("udp", "tcp")


@pytest.fixture(scope="session")
def server():
    srv = Server(*CONFORMANCE_ARGS).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def short_server():
    """Same as `server` but min_expires=1, for expiry tests."""
    srv = Server("--set", "presence_xml.force_active=1", "--set", "presence.min_expires=1").start()
    yield srv
    srv.stop()


@pytest.fixture
def spawn():
    """Start a server with extra arguments; stopped at the end of the test."""
    started: list[Server] = []

    def start(*extra: str) -> Server:
        srv = Server(*extra).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    return request.param


@pytest.fixture
def phones():
    """phones(server, transport, user=None) → a Phone closed after the test."""
    made: list[Phone] = []

    def make(srv: Server, transport: str = "udp", user: str | None = None) -> Phone:
        ph = Phone(srv.port, transport, user=user)
        made.append(ph)
        return ph

    yield make
    for ph in made:
        ph.close()


@pytest.fixture
def presentity() -> str:
    """A presentity URI no other test uses."""
    return f"sip:{uid('p')}@127.0.0.1"
