"""The API with a database (SQLite): health, storage metrics, cache sync, hard state."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest
from api_support import HOST, LiveServer, RpcFailed, pidf, sample, uid
from sipclient import SipClient

from presenced.storage.rows import XcapRow


@pytest.fixture(scope="module")
def dblive(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "presence.db"
    srv = LiveServer(db_url=f"sqlite://{path}", **{"presence.subs_db_mode": 1}).start()
    srv.db_path = path
    yield srv
    srv.stop()


def test_health_with_store(dblive):
    status, _, body = dblive.http("GET", "/health")
    assert status == 200
    store = json.loads(body)["store"]
    assert store["reachable"] is True and store["writes_healthy"] is True
    assert store["backend"].startswith("sqlite")


def test_health_503_when_store_unreachable(dblive):
    store = dblive.server.persistence.store

    async def down():
        raise OSError("database is gone")

    dblive.in_loop(lambda: setattr(store, "ping", down))
    try:
        status, _, body = dblive.http("GET", "/health")
        assert status == 503
        assert json.loads(body)["store"]["reachable"] is False
        m = dblive.metrics()
        assert sample(m, "presenced_storage_errors_total", op="ping") >= 1
    finally:
        dblive.in_loop(lambda: vars(store._inner).pop("ping", None))
    assert dblive.http("GET", "/health")[0] == 200


def test_storage_metrics_and_lists(dblive):
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    m0 = dblive.metrics()
    with SipClient(dblive.port, user=alice) as ua:
        assert ua.publish(aor, pidf(aor)).status == 200
    m1 = dblive.metrics()
    assert sample(m1, "presenced_storage_operation_seconds_count", op="write") > \
        sample(m0, "presenced_storage_operation_seconds_count", op="write")
    assert sample(m1, "presenced_storage_commits_total") > sample(m0, "presenced_storage_commits_total")
    assert sample(m1, "presenced_storage_errors_total", op="write") == 0
    # lists come from memory, but match what is stored
    rows = dblive.rpc("presence.presentity_show", "basic", alice, "*")
    with sqlite3.connect(dblive.db_path) as db:
        stored = db.execute("select etag, expires from presentity where username = ?", (alice,)).fetchall()
    assert [(r["etag"], r["expires"]) for r in rows] == stored
    assert dblive.rpc("presence.cleanup") == "Reload OK"
    c = dblive.rpc("presence.counters")
    assert c["storage"]["healthy"] is True and c["storage"]["operations"]["write"]["count"] >= 1


def test_publish_cache_sync_follows_the_database(dblive):
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    bob = SipClient(dblive.port, user=uid("bob"))
    with SipClient(dblive.port, user=alice) as ua:
        etag = ua.publish(aor, pidf(aor, note="in db")).get("sip-etag")
    _, d = bob.subscribe(aor)
    assert b"in db" in bob.expect_notify(d).body
    # someone else deletes the row: the sync drops the publication and tells the watcher
    with sqlite3.connect(dblive.db_path) as db:
        db.execute("delete from presentity where etag = ?", (etag,))
    assert dblive.rpc("presence.publish_cache_sync") == "OK"
    assert dblive.rpc("presence.presentity_show", "basic", alice, "*") == []
    n = bob.expect_notify(d)
    assert b"in db" not in n.body
    # ... and inserts one: the sync loads it and tells the watcher
    now = int(time.time())
    with sqlite3.connect(dblive.db_path) as db:
        db.execute(
            "insert into presentity (username, domain, event, etag, expires, received_time, body, sender, priority, ruid)"
            " values (?, ?, 'presence', 'ext-1', ?, ?, ?, '', 0, 'ext-1')",
            (alice, HOST, now + 600, now, pidf(aor, note="from outside")),
        )
    assert dblive.rpc("presence.publish_cache_sync") == "OK"
    assert [r["etag"] for r in dblive.rpc("presence.presentity_show", "basic", alice, "*")] == ["ext-1"]
    assert b"from outside" in bob.expect_notify(d).body
    bob.close()


def test_refresh_watchers_type2_hard_state(dblive):
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    bob = SipClient(dblive.port, user=uid("bob"))
    _, d = bob.subscribe(aor)
    bob.expect_notify(d)
    doc = pidf(aor, note="hard state")
    row = XcapRow(username=alice, domain=HOST, doc=doc, doc_type=16, etag="x1", source=1,
                  doc_uri=f"/pidf-manipulation/users/{aor}/index", port=0)
    dblive.call(dblive.server.persistence.store.put_xcap(row))
    res = dblive.rpc("presence.refreshWatchers", aor, "presence", 2, row.doc_uri, "hard.xml")
    assert res == {"publication": "stored", "notified": 1}
    assert b"hard state" in bob.expect_notify(d).body
    rows = dblive.rpc("presence.presentity_show", "basic", alice, "*")
    assert [r["etag"] for r in rows] == ["hard.xml"]
    # the document is deleted: the next refresh removes the publication
    dblive.call(dblive.server.persistence.store.delete_xcap(alice, HOST, 16))
    res = dblive.rpc("presence.refreshWatchers", aor, "presence", 2, row.doc_uri, "hard.xml")
    assert res["publication"] == "removed"
    assert b"hard state" not in bob.expect_notify(d).body
    assert dblive.rpc("presence.presentity_show", "basic", alice, "*") == []
    with pytest.raises(RpcFailed):
        dblive.rpc("presence.refreshWatchers", aor, "presence", 2, row.doc_uri)
    bob.close()


def test_stalled_database_fails_rpc_reads_without_blocking_writes(dblive):
    """A read that never answers (publish_cache_sync holds the commit lock while it
    reads) must fail the RPC within the write timeout, and leave the lock free:
    write-through PUBLISHes are still answered."""
    p = dblive.server.persistence
    inner = p.store._inner

    async def stall(*_a, **_k):
        await asyncio.sleep(3600)

    def setup():
        p.write_timeout = 0.3
        inner.load_presentities = stall
        inner.get_xcap = stall

    def undo():
        p.write_timeout = 3.0
        vars(inner).pop("load_presentities", None)
        vars(inner).pop("get_xcap", None)

    dblive.in_loop(setup)
    try:
        t0 = time.monotonic()
        with pytest.raises(RpcFailed) as e:
            dblive.rpc("presence.publish_cache_sync")
        assert e.value.code == 500 and "no answer" in e.value.message
        aor = f"sip:{uid('alice')}@{HOST}"
        with pytest.raises(RpcFailed) as e:
            dblive.rpc("presence.refreshWatchers", aor, "presence", 2, "/pidf", "hard.xml")
        assert e.value.code == 500
        assert time.monotonic() - t0 < 3
        with SipClient(dblive.port, user="x") as ua:
            assert ua.publish(aor, pidf(aor), timeout=2.0).status == 200
    finally:
        dblive.in_loop(undo)
    assert dblive.rpc("presence.publish_cache_sync") == "OK"
