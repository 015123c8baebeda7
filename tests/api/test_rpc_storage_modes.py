"""Every management RPC method against a real server in every storage mode.

One server per backend × mode (module-scoped), each with a scene: alice
publishes, bob watches alice. Backends: memory (no database), SQLite,
PostgreSQL, MariaDB/MySQL; modes: write-through (subs_db_mode=1,
publ_cache=1), write-back (2, 1) and DB-only (3, publ_cache=0). Server
databases use private table names (shared `test` databases) and are dropped
afterwards. An unreachable database server skips, or fails with
PRESENCED_REQUIRE_DB=1.

In the DB-only modes the database is the truth: rows another server wrote
(simulated by writing through the store) must show up in the lists without
any sync; in the other modes the lists show what this server holds.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from api_support import HOST, LiveServer, RpcFailed, pidf, uid
from sipclient import SipClient
from storage_support import backend_url, open_store, suffix_tables

from presenced.storage.rows import ActiveWatcherRow, Batch, PresentityRow, XcapRow

MODES = {
    "write-through": {"presence.subs_db_mode": 1, "presence.publ_cache": 1},
    "write-back": {"presence.subs_db_mode": 2, "presence.publ_cache": 1, "presence.db_update_period": 100},
    "db-only": {"presence.subs_db_mode": 3, "presence.publ_cache": 0},
}
COMBOS = [("memory", "memory")] + [(b, m) for b in ("sqlite", "postgresql", "mysql") for m in MODES]

ALL_METHODS = (
    "presence.cleanup", "presence.refreshWatchers", "presence.updateWatchers", "presence.presentity_list",
    "presence.presentity_show", "presence.watcher_list", "presence.publish_cache_sync",
    "presence.subscription_show", "presence.counters", "core.stats", "core.config",
)


class Env:
    def __init__(self, backend: str, mode: str, srv: LiveServer) -> None:
        self.backend, self.mode, self.srv = backend, mode, srv
        self.alice = uid("alice")
        self.aor = f"sip:{self.alice}@{HOST}"
        self.pub_ua = SipClient(srv.port, user=self.alice)
        self.bob = SipClient(srv.port, user=uid("bob"))
        self.bob.auto_answer = True

    @property
    def db(self) -> bool:
        return self.backend != "memory"

    @property
    def db_only(self) -> bool:
        return self.mode == "db-only"

    def store_call(self, fn):
        """`await fn(store)` in the server's loop, on the server's own store."""
        store = self.srv.server.persistence.store

        async def go():
            return await fn(store)

        return self.srv.call(go())

    def stored_etags(self, user: str) -> list[str]:
        rows = self.store_call(lambda st: st.load_presentities(int(time.time())))
        return sorted(r.etag for r in rows if r.username == user)

    def stored_dialogs(self, pres_uri: str) -> list[str]:
        rows = self.store_call(lambda st: st.load_subscriptions_for(pres_uri, "presence", int(time.time())))
        return sorted(r.callid for r, _ in rows)

    def close(self) -> None:
        self.bob.close()
        self.pub_ua.close()


def _reachable(backend: str, url: str, tables: dict) -> None:
    async def probe():
        store = await open_store(url, backend, tables=tables)  # skips / fails when unreachable
        await store.close()

    asyncio.run(probe())


def _drop(backend: str, url: str, tables: dict) -> None:
    async def drop():
        store = await open_store(url, backend, tables=tables)
        try:
            await store.drop_tables()
        finally:
            await store.close()

    try:
        asyncio.run(drop())
    except Exception:  # noqa: BLE001 - best effort
        pass


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{b}-{m}" for b, m in COMBOS])
def env(request, tmp_path_factory):
    backend, mode = request.param
    sets: dict = {}
    tables = suffix_tables()
    url = "memory"
    if backend != "memory":
        url = backend_url(backend, tmp_path_factory.mktemp(backend))
        if backend in ("postgresql", "mysql"):
            _reachable(backend, url, tables)
        sets = {
            **MODES[mode],
            "presence.presentity_table": tables["presentity"],
            "presence.active_watchers_table": tables["active_watchers"],
            "presence.watchers_table": tables["watchers"],
            "presence_xml.xcap_table": tables["xcap"],
            "presence.clean_period": 0,
        }
    srv = LiveServer(db_url=url, **sets).start()
    e = Env(backend, mode, srv)
    try:
        r = e.pub_ua.publish(e.aor, pidf(e.aor, note="at lunch"), expires=120)
        assert r.status == 200, r
        e.etag = r.get("sip-etag")
        resp, e.dialog = e.bob.subscribe(e.aor, expires=300)
        assert resp.status == 200
        assert b"at lunch" in e.bob.expect_notify(e.dialog).body
        yield e
    finally:
        e.close()
        srv.stop()
        if backend in ("postgresql", "mysql"):
            _drop(backend, url, tables)


def wait_for(fn, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


# ------------------------------------------------------------------ tests
def test_methods_and_config(env):
    live = env.srv
    assert set(ALL_METHODS) <= set(live.rpc("system.listMethods"))
    cfg = live.rpc("core.config")
    assert cfg["http"]["token"] == "***"
    if env.db:
        assert cfg["presence"]["subs_db_mode"] == MODES[env.mode]["presence.subs_db_mode"]
        assert cfg["presence"]["publ_cache"] == MODES[env.mode]["presence.publ_cache"]
        assert cfg["presence"]["presentity_table"].startswith("presentity_")
    else:
        assert cfg["db"]["url"] == "memory"


def test_lists_show_the_scene(env):
    live, d = env.srv, env.dialog
    rows = live.rpc("presence.presentity_show", "basic", env.alice, HOST)
    assert [(r["etag"], r["event"]) for r in rows] == [(env.etag, "presence")]
    assert abs(rows[0]["expires"] - (time.time() + 120)) < 5
    assert [r for r in live.rpc("presence.presentity_list") if r["user"] == env.alice] == rows
    full = [r for r in live.rpc("presence.presentity_list", "full") if r["user"] == env.alice]
    assert len(full) == 1 and "at lunch" in full[0]["body"] and full[0]["etag"] == env.etag
    assert "at lunch" in live.rpc("presence.presentity_show", "full", env.alice.upper(), "*")[0]["body"]

    w = live.rpc("presence.watcher_list", "basic", env.aor)
    assert [(r["callid"], r["status"], r["watcher_user"]) for r in w] == [(d.call_id, 1, env.bob.user)]
    wf = live.rpc("presence.watcher_list", "full", env.aor)
    assert wf[0]["to_tag"] == d.remote_tag and wf[0]["from_tag"] == d.local_tag

    show = lambda: live.rpc("presence.subscription_show", d.call_id, d.remote_tag, d.local_tag)  # noqa: E731
    sub = wait_for(lambda: (s := show())["last_notify_status"] == 200 and s)
    assert sub and sub["status"] == "active" and sub["pres_uri"] == env.aor and sub["notifies_sent"] >= 1
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.subscription_show", d.call_id, "no-such-tag", d.local_tag)
    assert e.value.code == 404


def test_counters_follow_the_backend(env):
    c = env.srv.rpc("presence.counters")
    assert c["presence"]["publications"]["presence"] >= 1
    assert c["presence"]["subscriptions"]["presence"]["active"] >= 1
    assert env.srv.rpc("core.stats").keys() == c.keys()
    if not env.db:
        assert c["storage"]["backend"] == "memory"
        return
    assert c["storage"]["backend"].startswith({"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}[env.backend])
    assert c["storage"]["healthy"] is True
    if env.mode != "write-back":
        # write-through: committed before the replies left
        assert c["storage"]["operations"]["write"]["count"] >= 1 and c["storage"]["commits"] >= 1


def test_cleanup_flushes_and_purges(env):
    live = env.srv
    if env.db:
        # an expired row someone left behind
        old = PresentityRow(username=env.alice, domain=HOST, event="presence", etag="stale-" + uid(),
                            expires=int(time.time()) - 60, received_time=int(time.time()) - 120,
                            body=pidf(env.aor), sender="", priority=0, ruid="stale")
        env.store_call(lambda st: st.write(Batch(presentity_upserts=[old])))
    assert live.rpc("presence.cleanup") == "Reload OK"
    # the scene is untouched
    assert [r["etag"] for r in live.rpc("presence.presentity_show", "basic", env.alice, "*")] == [env.etag]
    assert len(live.rpc("presence.watcher_list", "basic", env.aor)) == 1
    if env.db:
        # everything is in the database now (write-back flushed), the expired row is gone
        assert env.stored_etags(env.alice) == [env.etag]
        assert env.stored_dialogs(env.aor) == [env.dialog.call_id]

        async def count_stale(st):
            rows = await st.load_presentity(env.alice, HOST, "presence", 0)
            return [r.etag for r in rows if r.etag.startswith("stale-")]

        assert env.store_call(count_stale) == []


def test_refresh_and_update_watchers(env):
    live, bob, d = env.srv, env.bob, env.dialog
    assert live.rpc("presence.refreshWatchers", env.aor, "presence", 1) == {"notified": 1}
    assert b"at lunch" in bob.expect_notify(d).body
    # type 0 re-evaluates a rules document, and alice has none (as Kamailio: a failure)
    with pytest.raises(RpcFailed) as e:
        live.rpc("presence.refreshWatchers", env.aor, "presence", 0)
    assert e.value.code == 404 and "pres-rules" in e.value.message
    # force_active=1: authorization changes nothing, nothing is sent
    assert live.rpc("presence.updateWatchers", env.aor, "presence") == {"changed": 0}
    assert bob.no_message(0.2, lambda m: getattr(m, "method", None) == "NOTIFY")
    if not env.db:
        with pytest.raises(RpcFailed) as e:
            live.rpc("presence.refreshWatchers", env.aor, "presence", 2, "http://x/pidf", "hard.xml")
        assert e.value.code == -32602 and "file://" in e.value.message  # nothing is fetched over the network
        return
    # type 2: the pidf-manipulation document becomes a hard-state publication
    doc_uri = f"/pidf-manipulation/users/{env.aor}/index"
    row = XcapRow(username=env.alice, domain=HOST, doc=pidf(env.aor, note="hard state"), doc_type=16,
                  etag="x1", source=1, doc_uri=doc_uri, port=0)
    env.store_call(lambda st: st.put_xcap(row))
    res = live.rpc("presence.refreshWatchers", env.aor, "presence", 2, doc_uri, "hard.xml")
    assert res == {"publication": "stored", "notified": 1}
    assert b"hard state" in bob.expect_notify(d).body
    assert sorted(r["etag"] for r in live.rpc("presence.presentity_show", "basic", env.alice, "*")) == \
        sorted([env.etag, "hard.xml"])
    env.store_call(lambda st: st.delete_xcap(env.alice, HOST, 16))
    assert live.rpc("presence.refreshWatchers", env.aor, "presence", 2, doc_uri, "hard.xml")["publication"] == "removed"
    assert b"hard state" not in bob.expect_notify(d).body
    assert [r["etag"] for r in live.rpc("presence.presentity_show", "basic", env.alice, "*")] == [env.etag]


def _external_publication(env, user: str, note: str) -> PresentityRow:
    now = int(time.time())
    aor = f"sip:{user}@{HOST}"
    row = PresentityRow(username=user, domain=HOST, event="presence", etag="ext-" + uid(), expires=now + 600,
                        received_time=now, body=pidf(aor, note=note), sender="", priority=0, ruid="ext")
    env.store_call(lambda st: st.write(Batch(presentity_upserts=[row])))
    return row


def test_publish_cache_sync(env):
    live, bob, d = env.srv, env.bob, env.dialog
    if not env.db:
        assert live.rpc("presence.publish_cache_sync") == "OK"
        assert [r["etag"] for r in live.rpc("presence.presentity_show", "basic", env.alice, "*")] == [env.etag]
        return
    # another server adds a publication of alice to the shared database ...
    row = _external_publication(env, env.alice, "from elsewhere")
    assert live.rpc("presence.publish_cache_sync") == "OK"
    # ... the sync loads it and alice's watcher hears about it
    assert sorted(r["etag"] for r in live.rpc("presence.presentity_show", "basic", env.alice, "*")) == \
        sorted([env.etag, row.etag])
    assert b"from elsewhere" in bob.expect_notify(d).body
    # ... and deletes it again: the sync drops it
    env.store_call(lambda st: st.write(Batch(presentity_deletes=[(env.alice, HOST, "presence", row.etag)])))
    assert live.rpc("presence.publish_cache_sync") == "OK"
    assert [r["etag"] for r in live.rpc("presence.presentity_show", "basic", env.alice, "*")] == [env.etag]
    assert b"from elsewhere" not in bob.expect_notify(d).body


def test_lists_read_the_database_in_db_only_modes(env):
    """publ_cache=0 / subs_db_mode=3: rows only in the database are listed (no sync needed)."""
    if not env.db:
        pytest.skip("no database in memory mode")
    live = env.srv
    carol = uid("carol")
    row = _external_publication(env, carol, "written by another server")
    shown = live.rpc("presence.presentity_show", "full", carol, HOST)
    listed = [r["etag"] for r in live.rpc("presence.presentity_list") if r["user"] == carol]
    if env.db_only:
        assert [r["etag"] for r in shown] == [row.etag] and listed == [row.etag]
        assert "written by another server" in shown[0]["body"] and shown[0]["expires"] == row.expires
        # the server's own rows are not listed twice
        assert [r["etag"] for r in live.rpc("presence.presentity_show", "basic", env.alice, "*")] == [env.etag]
    else:
        assert shown == [] and listed == []  # memory is the truth until publish_cache_sync
    env.store_call(lambda st: st.write(Batch(presentity_deletes=[(carol, HOST, "presence", row.etag)])))
    assert live.rpc("presence.presentity_show", "basic", carol, HOST) == []

    # a subscription dialog another server holds
    now = int(time.time())
    callid = "ext-" + uid() + "@elsewhere"
    w = ActiveWatcherRow(
        presentity_uri=env.aor, watcher_username="dave", watcher_domain=HOST, to_user=env.alice, to_domain=HOST,
        event="presence", event_id=None, to_tag="tt-ext", from_tag="ft-ext", callid=callid, local_cseq=3,
        remote_cseq=1, contact=f"sip:dave@{HOST}:9", record_route=None, expires=now + 600, status=1, reason=None,
        version=0, socket_info=f"udp:{HOST}:5060", local_contact=f"sip:{HOST}:5060", from_user="dave",
        from_domain=HOST,
    )
    env.store_call(lambda st: st.write(Batch(watcher_upserts=[w])))
    try:
        calls = sorted(r["callid"] for r in live.rpc("presence.watcher_list", "basic", env.aor))
        if env.db_only:
            assert calls == sorted([env.dialog.call_id, callid])
            sub = live.rpc("presence.subscription_show", callid, "tt-ext", "ft-ext")
            assert sub["watcher_uri"] == f"sip:dave@{HOST}" and sub["local_cseq"] == 3 and sub["status"] == "active"
        else:
            assert calls == [env.dialog.call_id]
            with pytest.raises(RpcFailed) as e:
                live.rpc("presence.subscription_show", callid, "tt-ext", "ft-ext")
            assert e.value.code == 404
    finally:
        env.store_call(lambda st: st.write(Batch(watcher_deletes=[(callid, "tt-ext", "ft-ext")])))
    assert [r["callid"] for r in live.rpc("presence.watcher_list", "basic", env.aor)] == [env.dialog.call_id]


def test_unsubscribe_and_unpublish_leave_every_list(env):
    """Last: the scene ends; lists (and, with a database, the tables) are empty again."""
    live, bob, d = env.srv, env.bob, env.dialog
    r, _ = bob.subscribe(env.aor, expires=0, dialog=d)
    assert r.status == 200
    assert bob.expect_notify(d).get("subscription-state").startswith("terminated")
    assert env.pub_ua.publish(env.aor, expires=0, etag=env.etag).status == 200
    assert live.rpc("presence.watcher_list", "basic", env.aor) == []
    assert live.rpc("presence.presentity_show", "basic", env.alice, "*") == []
    if env.db:
        assert live.rpc("presence.cleanup") == "Reload OK"
        assert env.stored_etags(env.alice) == [] and env.stored_dialogs(env.aor) == []
