"""The database goes away while the server runs (PostgreSQL behind a TCP proxy we control).

- cut: connections reset and new ones refused (the DB server went down);
- stall: connections stay open but nothing gets through (a network partition).

Either way the server keeps answering OPTIONS, PUBLISH and SUBSCRIBE, logs
the outage (URL without password), /health turns 503 and the storage
metrics show it, and once the database is back the changes made meanwhile
are written and /health is 200 again.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

import pytest
from persist_support import Database, TcpProxy, aor, free_port, pidf, uid
from storage_support import PG_URL

PASSWORD = "s3cret-Pw"  # PostgreSQL with trust auth ignores it; it must never be logged


def proxied(url: str, port: int) -> tuple[str, str]:
    """`url` through 127.0.0.1:port, with a password; returns (url, its redacted form)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    pw = parts.password or PASSWORD
    netloc = f"{user}:{pw}@127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc)), urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


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
        http = free_port()
        srv = servers.start("--set", "presence.subs_db_mode=1", "--set", "presence_xml.force_active=1",
                            "--http", f"127.0.0.1:{http}", db=db, url=url)
        assert http_get(http, "/health")[0] == 200
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

        status, body = http_get(http, "/health")
        assert status == 503, body
        assert json.loads(body)["store"]["reachable"] is False and json.loads(body)["store"]["writes_healthy"] is False
        m = http_get(http, "/metrics")[1]
        assert metric(m, "presenced_storage_healthy") == 0
        assert metric(m, "presenced_storage_failures_total") >= 1
        assert metric(m, "presenced_storage_errors_total", '{op="write"}') >= 1, "\n".join(l for l in m.splitlines() if "storage" in l and "#" not in l)

        proxy.restore()
        wait_for(lambda: db.count("presentity", "username IN (?, ?)", (names[1], names[2])) == 2
                 and db.count("active_watchers", "callid = ?", (dlg.call_id,)) == 1, 20,
                 "the changes made during the outage to be written")
        wait_for(lambda: "reachable again" in srv.output(), 5, "the recovery to be logged")
        assert http_get(http, "/health")[0] == 200
        assert metric(http_get(http, "/metrics")[1], "presenced_storage_healthy") == 1

        # Normal write-through again.
        assert ua.publish(p1, pidf(p1, "one-again"), expires=600).status == 200
        rows = db.fetch("SELECT body FROM {presentity} WHERE username = ?", (names[0],))
        assert any(b"one-again" in bytes(r[0]) for r in rows)
        assert srv.alive()
    finally:
        proxy.close()
        db.cleanup()
