"""Runtime pacing: a fan-out leaves in chunks as it is built (the watchers'
user agents start on the first NOTIFYs while the rest are built), a
write-through commit that SQLite can make at once is made in the same loop
pass as the PUBLISH, and the young GC generation is collected by time."""

from __future__ import annotations

import sqlite3
import threading
import time

import uvloop

from api_support import HOST, LiveServer, pidf, uid
from sipclient import SipClient

from presenced.runtime import server as runtime_server


def _record_sends(srv: LiveServer) -> list[int]:
    """Sizes of the runtime's successive send batches (wrapped in the server's loop)."""
    sizes: list[int] = []
    s = srv.server
    real = s._send_items

    def recording(items: list) -> None:
        sizes.append(len(items))
        real(items)

    srv.in_loop(setattr, s, "_send_items", recording)
    return sizes


def test_a_burst_read_in_one_loop_pass_is_answered_in_one_send_batch():
    """A load generator sends in bursts; answering each request as it was
    handled interleaved a send (and a wake-up of the peer) with each request.
    The responses to what one pass of the loop read leave together after it."""
    srv = LiveServer(loop=uvloop.new_event_loop()).start()
    try:
        with SipClient(srv.port, user="pub") as client:
            sizes = _record_sends(srv)
            blocked, gate = threading.Event(), threading.Event()

            def hold() -> None:  # the loop is busy while the burst queues up in the kernel
                blocked.set()
                gate.wait(5)

            srv.loop.call_soon_threadsafe(hold)
            assert blocked.wait(5)
            n = 16
            pres = [f"sip:{uid('b')}@{HOST}" for _ in range(n)]
            for p in pres:
                data, _branch = client.build("PUBLISH", p, [("Event", "presence"), ("Expires", "600"),
                                                            ("Content-Type", "application/pidf+xml")],
                                             pidf(p, note="burst"), from_uri=p)
                client.send_raw(data)
            gate.set()
            answers = [client.recv(5.0, lambda m: getattr(m, "status", 0) >= 200) for _ in range(n)]
            assert all(a.status == 200 for a in answers), [a.status for a in answers]
            assert len({a.get("sip-etag") for a in answers}) == n
        assert srv.in_loop(lambda: sum(1 for p in pres if (p, "presence") in srv.server.core.engine.publications)) == n
        assert sizes == [n], sizes  # one batch, not sixteen
    finally:
        srv.stop()


def test_fanout_streams_in_chunks_and_yields_after_a_pass():
    srv = LiveServer().start()
    try:
        pres = f"sip:{uid('p')}@{HOST}"
        n = runtime_server.FANOUT_PASS + 44  # one full pass, then a second after the loop's turn
        with SipClient(srv.port, user="w") as watcher, SipClient(srv.port, user="pub") as publisher:
            for _ in range(n):
                resp, _d = watcher.subscribe(pres)
                assert resp.status == 200
                watcher.expect_notify()
            sizes = _record_sends(srv)
            assert publisher.publish(pres, pidf(pres, note="streamed")).status == 200
            got = 0
            while got < n:
                note = watcher.expect_notify(timeout=5)
                got += b"streamed" in note.body
            assert got == n
        chunk, per_pass = runtime_server.FANOUT_CHUNK, runtime_server.FANOUT_PASS
        # the 200 OK leaves with the first chunk, then chunk after chunk, never all at the end
        assert sizes[0] == 1 + chunk, sizes
        assert sizes[1:1 + per_pass // chunk] == [chunk] * (per_pass // chunk), sizes
        assert sum(sizes[:1 + per_pass // chunk + 10]) >= n + 1
    finally:
        srv.stop()


def test_write_through_commits_before_the_200_without_a_writer_task(tmp_path):
    db = tmp_path / "wt.sqlite"
    srv = LiveServer(db_url=f"sqlite://{db}", **{"presence.publ_cache": 1}).start()
    try:
        p = srv.server.persistence
        pres_user = uid("p")
        pres = f"sip:{pres_user}@{HOST}"
        commits = p.commits
        with SipClient(srv.port, user="pub") as publisher:
            assert publisher.publish(pres, pidf(pres, note="now")).status == 200
            # written before the 200, in the same loop pass: no writer task was needed
            with sqlite3.connect(db) as c:
                assert c.execute("SELECT count(*) FROM presentity WHERE username = ?", (pres_user,)).fetchone() == (1,)
            assert srv.in_loop(lambda: p._writer) is None
            assert p.commits == commits + 1

            # another process holds the write lock: the 200 waits for the commit
            other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            other.execute("BEGIN IMMEDIATE")
            threading.Timer(0.6, other.execute, ("COMMIT",)).start()
            t0 = time.monotonic()
            second = uid("q")
            assert publisher.publish(f"sip:{second}@{HOST}", pidf(f"sip:{second}@{HOST}"), timeout=5).status == 200
            assert time.monotonic() - t0 >= 0.5
            with sqlite3.connect(db) as c:
                assert c.execute("SELECT count(*) FROM presentity WHERE username = ?", (second,)).fetchone() == (1,)
            other.close()
    finally:
        srv.stop()


def _count_collections(monkeypatch) -> list[int]:
    """Record the generation of every gc.collect() call (collections still run)."""
    import gc

    calls: list[int] = []
    real = gc.collect

    def counting(generation: int = 2) -> int:
        calls.append(generation)
        return real(generation)

    monkeypatch.setattr(gc, "collect", counting)
    return calls


def test_a_busy_server_collects_whatever_the_object_count(monkeypatch):
    """Under load the allocation count can stay low (old objects dying offset
    the new ones) while the young generation fills: with enough messages
    since the last look the timed collection runs anyway, at the short period."""
    calls = _count_collections(monkeypatch)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_PERIOD", 0.05)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_IDLE_PERIOD", 0.3)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_IDLE", 10**9)  # the object count always says idle
    monkeypatch.setattr(runtime_server, "YOUNG_GC_BUSY", 3)
    srv = LiveServer().start()
    try:
        time.sleep(0.2)
        calls.clear()
        with SipClient(srv.port, user="busy") as ua:
            deadline = time.time() + 1.2
            while time.time() < deadline:
                assert ua.request("OPTIONS", f"sip:busy@{HOST}").status == 200
        # The first look within 0.3 s, then every 0.05 s: ~18 collections; idle, at most 4 looks and none collects.
        assert calls.count(0) >= 6, calls
    finally:
        srv.stop()


def test_young_generation_is_collected_by_time(monkeypatch):
    """In steady state CPython's allocation count may never reach its threshold
    (old state expiring offsets the new), so the runtime collects the young
    generation every YOUNG_GC_PERIOD: no collection ever has a large backlog."""
    calls = _count_collections(monkeypatch)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_PERIOD", 0.05)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_IDLE", 0)  # collect even when idle
    monkeypatch.setattr(runtime_server, "MIDDLE_GC_EVERY", 3)
    monkeypatch.setattr(runtime_server, "FULL_GC_EVERY", 8)
    srv = LiveServer().start()
    try:
        time.sleep(0.6)
        assert calls.count(0) >= 4, calls
        assert calls.count(1) >= 2, calls  # the middle generation too, now and then
        assert calls.count(2) >= 2, calls  # and, rarely, all of them (the first: at start-up)
    finally:
        srv.stop()
    n = len(calls)
    time.sleep(0.2)
    assert len(calls) == n  # stopped with the server


def test_a_cycle_that_outlives_young_collections_is_freed(monkeypatch):
    """Timed collections take the young generation only; a reference cycle
    that became garbage after surviving one must still be freed."""
    import gc
    import weakref

    monkeypatch.setattr(runtime_server, "YOUNG_GC_PERIOD", 0.05)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_IDLE", 0)
    monkeypatch.setattr(runtime_server, "MIDDLE_GC_EVERY", 4)
    monkeypatch.setattr(runtime_server, "FULL_GC_EVERY", 10_000)
    srv = LiveServer().start()
    try:
        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        time.sleep(0.15)  # survives young collections: now in an older generation
        del a, b
        deadline = time.time() + 3
        while gone() is not None and time.time() < deadline:
            time.sleep(0.05)
        assert gone() is None
    finally:
        srv.stop()


def test_an_idle_server_skips_the_timed_collections(monkeypatch):
    """Few new objects: no collection, and the timer backs off (an idle worker
    must not wake ten times a second); a burst of new objects is collected
    again within the next look."""
    calls = _count_collections(monkeypatch)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_PERIOD", 0.02)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_IDLE_PERIOD", 0.3)
    monkeypatch.setattr(runtime_server, "YOUNG_GC_IDLE", 10**9)  # everything counts as idle
    srv = LiveServer().start()
    try:
        time.sleep(0.2)
        calls.clear()
        time.sleep(0.7)
        assert calls.count(0) == 0, calls  # at 0.02 s there would have been ~35
        monkeypatch.setattr(runtime_server, "YOUNG_GC_IDLE", 0)  # now every look finds work
        time.sleep(0.7)
        assert calls.count(0) >= 5, calls  # back to the short period after the next look
    finally:
        srv.stop()


def test_a_server_warms_up_before_listening_and_keeps_no_trace(monkeypatch):
    """The warm-up exchange runs in a core of its own: the server starts, its
    engine holds nothing of it, and it answers as usual."""
    calls: list[float] = []
    real = runtime_server.warm_up
    monkeypatch.setattr(runtime_server, "warm_up", lambda now: calls.append(now) or real(now))
    srv = LiveServer().start()
    try:
        assert len(calls) == 1
        eng = srv.server.core.engine
        assert srv.in_loop(lambda: (dict(eng.etags), dict(eng.subs_by_dialog))) == ({}, {})
        with SipClient(srv.port, user="warm") as ua:
            assert ua.request("OPTIONS", f"sip:warm@{HOST}").status == 200
    finally:
        srv.stop()
