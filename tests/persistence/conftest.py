"""Fixtures for the persistence tests: real `presenced serve` processes on real databases.

Backends: sqlite (a file under tmp_path), postgresql, mysql. A server backend
that cannot be reached skips with the reason; PRESENCED_REQUIRE_DB=1 turns the
skip into a failure (the logic is shared with tests/storage).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for p in (_HERE, _HERE.parent / "storage", _HERE.parent):  # persist_support, storage_support, sipclient
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from persist_support import Database, Server, UA  # noqa: E402

SERVER_BACKENDS = ("sqlite", "postgresql", "mysql")


@pytest.fixture(params=SERVER_BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database(backend, tmp_path):
    """Private tables on `backend` (dropped afterwards); skips when unreachable."""
    db = Database.open(backend, tmp_path)
    yield db
    db.cleanup()


class Servers:
    """Starts servers and stops every one of them after the test."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    def start(self, *extra: str, db: Database | None = None, port: int | None = None, url: str | None = None) -> Server:
        srv = Server(*extra, db=db, port=port, url=url)
        self.started.append(srv)
        return srv.start()

    def restart(self, old: Server) -> Server:
        """`old` (already dead) again: same arguments, port, database."""
        assert not old.alive()
        srv = old.again()
        self.started.append(srv)
        return srv.start()


@pytest.fixture
def servers():
    s = Servers()
    yield s
    for srv in s.started:
        srv.stop()


@pytest.fixture
def uas():
    made: list[UA] = []

    def make(port: int, user: str | None = None) -> UA:
        ua = UA(port, user=user)
        made.append(ua)
        return ua

    yield make
    for ua in made:
        ua.close()
