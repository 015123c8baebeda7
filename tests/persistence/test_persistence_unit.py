"""Persistence's write/retry machinery in-process, against a store we can break at will."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from presenced.core.journal import Journal
from presenced.runtime import persistence as pmod
from presenced.runtime.persistence import Persistence


class FlakyStore:
    url = "postgresql://presence@db.example/kamailio"

    def __init__(self) -> None:
        self.mode = "ok"          # ok | fail | hang
        self.batches: list = []
        self.pings = 0

    async def write(self, batch) -> None:
        if self.mode == "fail":
            raise OSError("connection refused")
        if self.mode == "hang":
            await asyncio.Event().wait()  # a partition: never answers, and ignores cancellation
        self.batches.append(batch)

    async def ping(self) -> bool:
        self.pings += 1
        return self.mode == "ok"

    async def close(self) -> None:
        pass


class StubbornStore(FlakyStore):
    """Its calls ignore cancellation until the connection is closed (a driver stuck in its cleanup)."""

    closed = False

    async def write(self, batch) -> None:
        if self.mode == "hang":
            while not self.closed:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    continue
            raise OSError("connection closed")
        await super().write(batch)

    async def close(self) -> None:
        self.closed = True


def make(store, subs_db_mode: int = 1):
    engine = SimpleNamespace(journal=Journal(), wall_offset=0.0)
    cfg = SimpleNamespace(presence=SimpleNamespace(subs_db_mode=subs_db_mode, publ_cache=1, db_update_period=100,
                                                   clean_period=0))
    sent: list = []
    p = Persistence(store, engine, cfg, sent.extend)
    p.write_timeout = 0.2
    return p, engine, sent


def change(engine, n: int) -> None:
    engine.journal.auth_saved((f"sip:p{n}@example.com", "presence", f"sip:w{n}@example.com"), ("active", None))


async def until(pred, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(pmod, "RETRY_MAX", 0.3)


async def test_replies_wait_for_the_commit_when_healthy():
    store = FlakyStore()
    p, engine, sent = make(store)
    change(engine, 1)
    assert p.needs_sync()
    p.hold(["reply-1"])
    assert sent == []
    await until(lambda: sent == ["reply-1"])
    assert len(store.batches) == 1 and p.healthy


@pytest.mark.parametrize("store_type,mode", [(FlakyStore, "fail"), (FlakyStore, "hang"), (StubbornStore, "hang")])
async def test_outage_degrades_to_write_back_then_recovers(store_type, mode, caplog):
    store = store_type()
    p, engine, sent = make(store)
    store.mode = mode
    change(engine, 1)
    p.hold(["reply-1"])
    await until(lambda: sent == ["reply-1"], timeout=2)  # released after the failed (or timed-out) write
    assert not p.healthy
    assert "db.example" in caplog.text and "failed" in caplog.text

    # During the outage nothing waits for the database.
    change(engine, 2)
    assert not p.needs_sync()
    p.hold(["reply-2"])
    assert sent == ["reply-1", "reply-2"]

    store.mode = "ok"
    await until(lambda: p.healthy, timeout=3)
    written = {w.presentity_uri for b in store.batches for w in b.auth_upserts}
    assert written == {"sip:p1@example.com", "sip:p2@example.com"}
    assert "reachable again" in caplog.text
    assert not engine.journal
    await p.stop()


async def test_recovery_is_noticed_even_with_nothing_left_to_write():
    store = FlakyStore()
    p, engine, sent = make(store)
    store.mode = "fail"
    change(engine, 1)
    p.hold([])
    await until(lambda: not p.healthy)
    engine.journal.auth.clear()  # e.g. changes that are not persisted in this mode
    store.mode = "ok"
    await until(lambda: p.healthy, timeout=3)
    assert store.pings >= 1
    await p.stop()


async def test_stop_does_not_hang_on_a_dead_database():
    store = StubbornStore()
    p, engine, sent = make(store)
    store.mode = "hang"
    change(engine, 1)
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(p.stop(), 5)
    assert asyncio.get_running_loop().time() - t0 < 2
    assert not p.healthy


class _Taken:
    """What build_batch was handed (stands in for a storage.Batch)."""

    def __init__(self, j: Journal, wall: float) -> None:
        self.pubs, self.subs, self.auth = set(j.pubs), set(j.subs), set(j.auth)

    def empty(self) -> bool:
        return not (self.pubs or self.subs or self.auth)


class NowStore(FlakyStore):
    """A store with SQLite's synchronous fast path; `busy` = the lock is held elsewhere."""

    busy = False

    def write_now(self, batch) -> bool:
        if self.mode == "fail":
            raise OSError("disk I/O error")
        if self.busy:
            return False
        self.batches.append(batch)
        return True


def _pub_and_sub(engine, n: int) -> None:
    engine.journal.pubs[f"etag{n}"] = object()
    engine.journal.subs[(f"call{n}", "ft", "tt")] = (object(), True)
    change(engine, n)


@pytest.mark.parametrize("subs_db_mode,written_now", [(2, ({"etag1"}, set(), set())),
                                                       (1, ({"etag1"}, {("call1", "ft", "tt")},
                                                            {("sip:p1@example.com", "presence", "sip:w1@example.com")}))])
async def test_write_through_commit_at_the_end_of_the_pass(monkeypatch, subs_db_mode, written_now):
    """Held replies are committed for at the end of the loop pass, in one
    transaction, without a task when the store can commit at once; in
    write-back subscription mode that commit carries the publications only
    (NOTIFY CSeq/version and authorization changes wait for the periodic flush)."""
    monkeypatch.setattr(pmod, "build_batch", _Taken)
    store = NowStore()
    p, engine, sent = make(store, subs_db_mode)
    _pub_and_sub(engine, 1)
    assert p.needs_sync()
    p.hold(["reply-1"])
    p.hold(["reply-2"])                      # a second request of the same pass
    assert sent == [] and p.commit_pending()
    await asyncio.sleep(0)
    assert sent == ["reply-1", "reply-2"] and not p.commit_pending()
    assert p._writer is None and p.commits == 1 and len(store.batches) == 1
    b = store.batches[-1]
    assert (b.pubs, b.subs, b.auth) == written_now
    if subs_db_mode == 2:
        assert not p.needs_sync() and engine.journal.subs and engine.journal.auth
        assert await p.flush()               # the periodic write-back flush takes the rest
        assert store.batches[-1].subs == {("call1", "ft", "tt")} and not engine.journal


async def test_end_of_pass_commit_falls_back_to_the_write_loop(monkeypatch):
    monkeypatch.setattr(pmod, "build_batch", _Taken)
    store = NowStore()
    p, engine, sent = make(store, 2)
    _pub_and_sub(engine, 1)
    store.busy = True                        # another process holds the lock: the write is awaited
    p.hold(["reply"])
    await asyncio.sleep(0)
    assert p._writer is not None             # handed to the write loop, journal intact
    await until(lambda: sent == ["reply"])
    assert store.batches[-1].pubs == {"etag1"} and not store.batches[-1].subs
    store.busy = False
    store.mode = "fail"                      # an outage: replies stop waiting
    _pub_and_sub(engine, 2)
    p.hold(["reply-2"])
    await asyncio.sleep(0)
    assert sent[-1] == "reply-2" and not p.healthy
    assert "etag2" in engine.journal.pubs    # kept for the retry
    store.mode = "ok"
    await until(lambda: p.healthy)           # the retry timer writes it
    assert "etag2" not in engine.journal.pubs
    await p.stop()
