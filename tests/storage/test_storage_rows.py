"""Round trips, upserts, deletes, expiry and DB-only lookups on every backend."""

from __future__ import annotations

import asyncio

from storage_support import auth, aw, ext_for, pres, raw_fetch, xcap

from presenced.storage import Batch, SubscriptionExtRow

NOW = 1_800_000_000
FUTURE = NOW + 3600
PAST = NOW - 10

BINARY_BODY = b"\xff\xfe\x00\x80<presence>\xc3\x28 not utf-8 \x00\xff</presence>"


def by_key(rows):
    return sorted(rows, key=lambda r: r.key)


async def test_batch_empty(store):
    assert Batch().empty()
    assert not Batch(presentity_deletes=[("a", "b", "c", "d")]).empty()
    await store.write(Batch())  # no-op
    assert await store.load_presentities(NOW) == []


async def test_ping(store):
    assert await store.ping() is True


async def test_presentity_round_trip(store):
    rows = [
        pres(etag="e1", body=BINARY_BODY, expires=FUTURE, ruid="pres-1", sender="sip:bob@example.org", priority=3),
        pres(etag="e2", body=b"", expires=-1),
        pres(username="ünïcødé", domain="例え.jp", event="dialog;sla", etag="e3", body="<x>☃</x>".encode()),
    ]
    await store.write(Batch(presentity_upserts=rows))
    loaded = await store.load_presentities(NOW)
    assert by_key(loaded) == by_key(rows)
    got = next(r for r in loaded if r.etag == "e1")
    assert type(got.body) is bytes and got.body == BINARY_BODY


async def test_active_watcher_round_trip(store):
    w1 = aw(
        record_route="<sip:proxy1;lr>,<sip:proxy2;lr>",
        reason="rejected — ünïcode",
        event_id="42",
        user_agent="Linphone/5.2 (Ubuntu) ☃",
        updated=3,
        updated_winfo=1,
        flags=64,
        status=3,
        version=7,
        local_cseq=5,
        remote_cseq=99,
    )
    w2 = aw(callid="call-2@host", to_tag="tt2", from_tag="ft2", event="presence.winfo")
    e1 = ext_for(w1, '{"from": "\\"Bób Ünïcode\\" <sip:bob@example.org>;tag=ft1", "transport": "tcp"}')
    await store.write(Batch(watcher_upserts=[w1, w2], ext_upserts=[e1]))
    loaded = {row.callid: (row, ext) for row, ext in await store.load_active_watchers(NOW)}
    assert loaded["call-1@host"] == (w1, e1)
    assert loaded["call-2@host"] == (w2, None)
    assert loaded["call-2@host"][0].updated == -1 and loaded["call-2@host"][0].user_agent == ""


async def test_watcher_auth_round_trip(store):
    rows = [
        auth(reason="polite-block ✋", status=2),
        auth(watcher_username="carol", reason=None),
        auth(watcher_username="dave", reason=""),
    ]
    await store.write(Batch(auth_upserts=rows))
    assert by_key(await store.load_watchers()) == by_key(rows)


async def test_upserts_update_in_place(store):
    p = pres(etag="e1", body=b"v1")
    w = aw()
    a = auth(status=2)
    e = ext_for(w, '{"v": 1}')
    await store.write(Batch(presentity_upserts=[p], watcher_upserts=[w], auth_upserts=[a], ext_upserts=[e]))
    p2 = pres(etag="e1", body=b"v2", expires=FUTURE + 5, received_time=NOW)
    w2 = aw(local_cseq=2, version=1, expires=FUTURE + 5, status=1, reason="x")
    a2 = auth(status=1, reason="ok")
    e2 = ext_for(w, '{"v": 2}')
    await store.write(Batch(presentity_upserts=[p2], watcher_upserts=[w2], auth_upserts=[a2], ext_upserts=[e2]))
    assert await store.load_presentities(NOW) == [p2]
    assert await store.load_active_watchers(NOW) == [(w2, e2)]
    assert await store.load_watchers() == [a2]
    if store.url != "memory":  # still one row each, same id
        assert await raw_fetch(store, "SELECT id FROM {presentity}") == [(1,)]
        assert await raw_fetch(store, "SELECT id FROM {active_watchers}") == [(1,)]


async def test_duplicate_keys_in_one_batch_last_wins(store):
    await store.write(Batch(presentity_upserts=[pres(body=b"first"), pres(body=b"second")]))
    assert [r.body for r in await store.load_presentities(NOW)] == [b"second"]


async def test_keys_are_case_sensitive(store):
    rows = [pres(username="alice", etag="E1"), pres(username="Alice", etag="E1"), pres(username="alice", etag="e1")]
    subs = [aw(callid="Call-1"), aw(callid="call-1")]
    await store.write(Batch(presentity_upserts=rows, watcher_upserts=subs))
    assert len(await store.load_presentities(NOW)) == 3
    assert len(await store.load_active_watchers(NOW)) == 2
    assert await store.load_presentity("Alice", "example.com", "presence", NOW) == [rows[1]]
    assert await store.find_etag("alice", "example.com", "presence", "e1") == rows[2]
    assert await store.find_etag("Alice", "example.com", "presence", "E1") == rows[1]


async def test_publish_refresh_is_delete_plus_upsert(store):
    old = pres(etag="old", ruid="pres-abc", body=b"<a/>")
    other = pres(username="bob", etag="keep")
    await store.write(Batch(presentity_upserts=[old, other]))
    new = pres(etag="new", ruid="pres-abc", body=b"<a/>", expires=FUTURE + 60)
    await store.write(Batch(presentity_deletes=[old.key], presentity_upserts=[new]))
    assert by_key(await store.load_presentities(NOW)) == by_key([new, other])
    assert await store.find_etag("alice", "example.com", "presence", "old") is None
    assert await store.find_etag("alice", "example.com", "presence", "new") == new


async def test_deletes(store):
    w1, w2 = aw(), aw(callid="c2")
    a1, a2 = auth(), auth(watcher_username="zed")
    await store.write(
        Batch(
            watcher_upserts=[w1, w2],
            ext_upserts=[ext_for(w1), ext_for(w2)],
            auth_upserts=[a1, a2],
            presentity_upserts=[pres()],
        )
    )
    await store.write(
        Batch(
            watcher_deletes=[w1.key, ("no", "such", "dialog")],
            auth_deletes=[a1.key],
            presentity_deletes=[pres().key],
        )
    )
    assert await store.load_active_watchers(NOW) == [(w2, ext_for(w2))]
    assert await store.load_watchers() == [a2]
    assert await store.load_presentities(NOW) == []
    # the ext row went with its watcher: re-adding the watcher has no ext
    await store.write(Batch(watcher_upserts=[w1]))
    assert await store.load_subscription(*w1.key) == (w1, None)
    if store.url != "memory":
        assert await raw_fetch(store, "SELECT callid FROM {ext}") == [("c2",)]


async def test_delete_expired(store):
    await store.write(
        Batch(
            presentity_upserts=[
                pres(etag="past", expires=PAST),
                pres(etag="future", expires=FUTURE),
                pres(etag="hard", expires=-1),
                pres(etag="zero", expires=0),
                pres(etag="now", expires=NOW),
            ],
            watcher_upserts=[
                aw(callid="past", expires=PAST),
                aw(callid="future", expires=FUTURE),
                aw(callid="now", expires=NOW),
            ],
            ext_upserts=[
                SubscriptionExtRow("past", "tt1", "ft1", "{}"),
                SubscriptionExtRow("future", "tt1", "ft1", "{}"),
            ],
        )
    )
    assert await store.delete_expired(NOW) == (1, 1)
    assert await store.delete_expired(NOW) == (0, 0)
    # zero and now are kept by delete_expired but not loaded (not > now)
    assert sorted(r.etag for r in await store.load_presentities(NOW)) == ["future", "hard"]
    subs = await store.load_active_watchers(NOW)
    assert sorted((r.callid, e is not None) for r, e in subs) == [("future", True), ("now", False)]
    if store.url != "memory":
        assert await raw_fetch(store, "SELECT callid FROM {ext}") == [("future",)]
        assert sorted(await raw_fetch(store, "SELECT etag FROM {presentity}")) == [
            ("future",),
            ("hard",),
            ("now",),
            ("zero",),
        ]


async def test_loads_filter_expiry(store):
    await store.write(
        Batch(
            presentity_upserts=[pres(etag="old", expires=PAST), pres(etag="new", expires=FUTURE)],
            watcher_upserts=[aw(callid="old", expires=PAST), aw(callid="new", expires=FUTURE)],
        )
    )
    assert [r.etag for r in await store.load_presentities(NOW)] == ["new"]
    assert [r.callid for r, _ in await store.load_active_watchers(NOW)] == ["new"]
    assert sorted(r.etag for r in await store.load_presentities(PAST - 1)) == ["new", "old"]
    assert len(await store.load_presentity("alice", "example.com", "presence", NOW)) == 1
    assert len(await store.load_subscriptions_for("sip:alice@example.com", "presence", NOW)) == 1


async def test_db_only_lookups(store):
    a1 = pres(etag="a1", received_time=NOW - 5, expires=FUTURE)
    a2 = pres(etag="a2", received_time=NOW - 9, expires=-1)
    a_expired = pres(etag="a3", received_time=NOW - 20, expires=PAST)
    other_event = pres(etag="d1", event="dialog")
    other_user = pres(etag="b1", username="bob")
    await store.write(Batch(presentity_upserts=[a1, a2, a_expired, other_event, other_user]))
    assert await store.load_presentity("alice", "example.com", "presence", NOW) == [a2, a1]
    assert await store.load_presentity("nobody", "example.com", "presence", NOW) == []
    assert await store.find_etag("alice", "example.com", "presence", "a3") == a_expired  # expired rows are still found
    assert await store.find_etag("alice", "example.com", "presence", "missing") is None
    assert await store.find_etag("bob", "example.com", "presence", "a3") is None  # the key, not the ETag alone
    assert await store.find_etag("alice", "example.com", "dialog", "a3") is None

    s1 = aw(callid="s1", expires=FUTURE)
    s2 = aw(callid="s2", expires=FUTURE, watcher_username="carol")
    s_exp = aw(callid="s3", expires=PAST)
    s_winfo = aw(callid="s4", event="presence.winfo")
    s_other = aw(callid="s5", presentity_uri="sip:bob@example.com")
    e2 = ext_for(s2, '{"n": "Cärol"}')
    await store.write(Batch(watcher_upserts=[s1, s2, s_exp, s_winfo, s_other], ext_upserts=[e2]))
    assert await store.load_subscriptions_for("sip:alice@example.com", "presence", NOW) == [(s1, None), (s2, e2)]
    assert await store.load_subscriptions_for("sip:alice@example.com", "presence.winfo", NOW) == [(s_winfo, None)]
    assert await store.load_subscription("s2", "tt1", "ft1") == (s2, e2)
    assert await store.load_subscription("s3", "tt1", "ft1") == (s_exp, None)  # expired: still returned
    assert await store.load_subscription("s2", "tt1", "other") is None


async def test_xcap(store):
    rules = xcap()
    rules_bob = xcap(username="bob", doc_uri="/pres-rules/users/sip:bob@example.com/index")
    manip = xcap(doc_type=16, doc=b"<pidf/>", doc_uri="/pidf-manipulation/users/sip:alice@example.com/index")
    second = xcap(doc=b"<second/>", doc_uri="/pres-rules/users/sip:alice@example.com/other")
    for row in (rules, rules_bob, manip, second):
        await store.put_xcap(row)
    assert await store.get_xcap("alice", "example.com", 2) == rules  # first row wins
    assert await store.get_xcap("alice", "example.com", 16) == manip
    assert await store.get_xcap("alice", "example.com", 4) is None
    # put with the same doc_uri replaces
    replaced = xcap(doc=b"\xff<ruleset>new</ruleset>", etag="x2", port=8443)
    await store.put_xcap(replaced)
    assert await store.get_xcap("alice", "example.com", 2) == replaced
    assert await store.delete_xcap("alice", "example.com", 2) == 2
    assert await store.get_xcap("alice", "example.com", 2) is None
    assert await store.get_xcap("bob", "example.com", 2) == rules_bob
    assert await store.delete_xcap("alice", "example.com", 2) == 0


async def test_large_batch(store):
    rows = [pres(username=f"u{i}", etag=f"e{i}", body=bytes([i % 256]) * 100) for i in range(600)]
    subs = [aw(callid=f"c{i}", presentity_uri=f"sip:u{i}@example.com") for i in range(600)]
    await store.write(Batch(presentity_upserts=rows, watcher_upserts=subs, ext_upserts=[ext_for(s) for s in subs]))
    assert by_key(await store.load_presentities(NOW)) == by_key(rows)
    assert len(await store.load_active_watchers(NOW)) == 600
    await store.write(
        Batch(presentity_deletes=[r.key for r in rows[:300]], watcher_deletes=[s.key for s in subs[:300]])
    )
    assert len(await store.load_presentities(NOW)) == 300
    assert all(e is not None for _, e in await store.load_active_watchers(NOW))


async def test_concurrent_writes_one_store(store):
    """20 tasks writing at once through one store (pool / worker thread)."""

    async def worker(n: int) -> None:
        for i in range(5):
            p = pres(username=f"user{n}", etag=f"e{n}.{i}")
            old = [pres(username=f"user{n}", etag=f"e{n}.{i - 1}").key] if i else []
            w = aw(callid=f"call{n}", local_cseq=i)
            await store.write(
                Batch(presentity_deletes=old, presentity_upserts=[p], watcher_upserts=[w], ext_upserts=[ext_for(w)])
            )

    await asyncio.gather(*(worker(n) for n in range(20)))
    loaded = await store.load_presentities(NOW)
    assert sorted(r.etag for r in loaded) == sorted(f"e{n}.4" for n in range(20))
    subs = await store.load_active_watchers(NOW)
    assert len(subs) == 20 and all(w.local_cseq == 4 and e is not None for w, e in subs)


async def test_markers_survive_reconnect_and_the_cleaner(store, make_store):
    assert await store.get_marker("writeback-clean-stop") is None
    await store.set_marker("writeback-clean-stop", "0")
    await store.set_marker("writeback-clean-stop", "1")
    await store.delete_expired(2**31 - 1)  # the sweep must not take presenced's markers
    if store.url != "memory":
        other = await make_store()
        assert await other.get_marker("writeback-clean-stop") == "1"
    assert await store.get_marker("writeback-clean-stop") == "1"
    assert await store.load_active_watchers(0) == []  # a marker is not a subscription


async def test_start_up_pages_return_every_live_row_once(store):
    """fetch_rows: the restore reads in pages; no row is lost or repeated at page edges."""
    live = [pres(etag=f"e{i}", expires=FUTURE) for i in range(5)]
    await store.write(Batch(presentity_upserts=[*live, pres(etag="old", expires=PAST)]))
    subs = [aw(callid=f"c{i}@h", to_tag=f"t{i}", from_tag=f"f{i}") for i in range(5)]
    await store.write(Batch(watcher_upserts=subs, ext_upserts=[ext_for(s) for s in subs[:2]]))
    pages = [p async for p in store.page_presentities(NOW, 2)]
    assert sorted(r.etag for p in pages for r in p) == sorted(r.etag for r in live)
    if store.url != "memory":
        assert [len(p) for p in pages] == [2, 2, 1]
    pages = [p async for p in store.page_active_watchers(NOW, 2)]
    got = [pair for p in pages for pair in p]
    assert sorted(r.callid for r, _ in got) == sorted(s.callid for s in subs)
    assert sum(ext is not None for _, ext in got) == 2


async def test_delete_expired_purges_day_old_pending_authorizations(store):
    day = 86400
    await store.write(
        Batch(
            auth_upserts=[
                auth(watcher_username="old-pending", status=2, inserted_time=NOW - day - 1),
                auth(watcher_username="young-pending", status=2, inserted_time=NOW - day + 60),
                auth(watcher_username="old-active", status=1, inserted_time=NOW - 10 * day),
                auth(watcher_username="old-terminated", status=3, reason="rejected", inserted_time=NOW - 10 * day),
            ]
        )
    )
    await store.delete_expired(NOW)
    left = sorted(r.watcher_username for r in await store.load_watchers())
    assert left == ["old-active", "old-terminated", "young-pending"]
