"""The database goes away while the server runs (PostgreSQL behind a TCP proxy we control).

- cut: connections reset and new ones refused (the DB server went down);
- stall: connections stay open but nothing gets through (a network partition).

Either way the server keeps answering OPTIONS, PUBLISH and SUBSCRIBE, logs
the outage (URL without password), and once the database is back the
changes made meanwhile are written.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from persist_support import Database, TcpProxy, aor, pidf, uid
from storage_support import PG_URL

PASSWORD = "s3cret-Pw"  # PostgreSQL with trust auth ignores it; it must never be logged


def proxied(url: str, port: int) -> tuple[str, str]:
    """`url` through 127.0.0.1:port, with a password; returns (url, its redacted form)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    pw = parts.password or PASSWORD
    netloc = f"{user}:{pw}@127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc)), urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("outage", ["cut", "stall"])
def test_server_keeps_answering_through_a_db_outage(outage, tmp_path, servers, uas):
    db = Database.open("postgresql", tmp_path)
    target = urlsplit(PG_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 5432))
    try:
        url, shown = proxied(db.url, proxy.port)
        srv = servers.start("--set", "presence.subs_db_mode=1", "--set", "presence_xml.force_active=1",
                            db=db, url=url)
        ua = uas(srv.port, "alice")
        w = uas(srv.port, "bob")
        names = [uid(n) for n in ("p1", "p2", "p3")]
        p1, p2, p3 = (aor(n) for n in names)

        assert ua.publish(p1, pidf(p1, "one"), expires=600).status == 200
        assert db.count("presentity", "username = ?", (names[0],)) == 1

        getattr(proxy, outage)()
        t0 = time.monotonic()
        # The first write after the outage may wait for its timeout; then the
        # server answers at once (the changes wait for the database).
        assert ua.publish(p2, pidf(p2, "two"), expires=600, timeout=8).status == 200
        assert time.monotonic() - t0 < 8
        t1 = time.monotonic()
        assert ua.request("OPTIONS", f"sip:x@127.0.0.1:{srv.port}", timeout=2).status == 200
        r, dlg = w.subscribe(p2, expires=600, timeout=2)
        assert r.status == 200
        assert b"two" in w.expect_notify(dlg, timeout=2).body
        assert ua.publish(p3, pidf(p3, "three"), expires=600, timeout=2).status == 200
        assert time.monotonic() - t1 < 3, "the server answered slowly while the database was down"

        log = srv.output()
        assert shown in log and "failed" in log, log
        assert PASSWORD not in log
        assert db.count("presentity", "username IN (?, ?)", (names[1], names[2])) == 0

        proxy.restore()
        wait_for(lambda: db.count("presentity", "username IN (?, ?)", (names[1], names[2])) == 2
                 and db.count("active_watchers", "callid = ?", (dlg.call_id,)) == 1, 20,
                 "the changes made during the outage to be written")
        wait_for(lambda: "reachable again" in srv.output(), 5, "the recovery to be logged")

        # Normal write-through again.
        assert ua.publish(p1, pidf(p1, "one-again"), expires=600).status == 200
        rows = db.fetch("SELECT body FROM {presentity} WHERE username = ?", (names[0],))
        assert any(b"one-again" in bytes(r[0]) for r in rows)
        assert srv.alive()
    finally:
        proxy.close()
        db.cleanup()
