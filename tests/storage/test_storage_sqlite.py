"""SQLite specifics: several connections on one file never see "database is locked"."""

from __future__ import annotations

import asyncio
import sqlite3

from storage_support import aw, ext_for, pres, suffix_tables

from presenced.storage import Batch, Store

NOW = 1_800_000_000


async def test_pragmas(tmp_path):
    store = Store.from_url(f"sqlite://{tmp_path}/p.db")
    await store.connect()
    try:
        assert await store._fetch("PRAGMA journal_mode") == [("wal",)]
        assert await store._fetch("PRAGMA busy_timeout") == [(0,)]
        assert await store._fetch("PRAGMA synchronous") == [(1,)]  # NORMAL
    finally:
        await store.close()


async def test_wal_checkpoints_run_off_the_loop(tmp_path, monkeypatch):
    """Writes commit on the event loop, but the WAL checkpoint (which fsyncs) is
    never automatic there: one runs on its own thread every CHECKPOINT_EVERY writes."""
    from presenced.storage import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 5)
    store = Store.from_url(f"sqlite://{tmp_path}/c.db")
    await store.connect()
    try:
        assert await store._fetch("PRAGMA wal_autocheckpoint") == [(0,)]
        await store.ensure_schema()
        base = store.checkpoints
        for i in range(12):
            await store.write(Batch(presentity_upserts=[pres(etag=f"e{i}")]))
            await asyncio.sleep(0)
        for _ in range(50):
            if store._checkpointing is None:
                break
            await asyncio.sleep(0.01)
        assert store.checkpoints >= base + 1
        assert store.inline_writes >= 12
        assert len(await store.load_presentities(NOW)) == 12
    finally:
        await store.close()
    again = Store.from_url(f"sqlite://{tmp_path}/c.db")  # nothing lost across the checkpoints
    await again.connect()
    try:
        assert len(await again.load_presentities(NOW)) == 12
    finally:
        await again.close()


async def test_memory_database(tmp_path):
    store = Store.from_url("sqlite:///:memory:")
    await store.connect()
    try:
        await store.ensure_schema()
        await store.write(Batch(presentity_upserts=[pres()]))
        assert await store.load_presentities(NOW) == [pres()]
    finally:
        await store.close()


async def test_concurrent_writers_on_one_file(tmp_path):
    """20 tasks, each with its own store (connection and thread) on the same file,
    plus a plain sqlite3 reader, all at once: no 'database is locked'."""
    url = f"sqlite://{tmp_path}/shared.db"
    tables = suffix_tables()
    stores = [Store.from_url(url, tables=tables) for _ in range(20)]
    await asyncio.gather(*(s.connect() for s in stores))
    try:
        await asyncio.gather(*(s.ensure_schema() for s in stores))

        async def worker(n: int, store) -> None:
            for i in range(10):
                old = [pres(username=f"u{n}", etag=f"e{i - 1}").key] if i else []
                w = aw(callid=f"c{n}", local_cseq=i)
                batch = Batch(
                    presentity_deletes=old,
                    presentity_upserts=[pres(username=f"u{n}", etag=f"e{i}", body=b"x" * 2000)],
                    watcher_upserts=[w],
                    ext_upserts=[ext_for(w)],
                )
                await store.write(batch)
                if i % 3 == 0:
                    await store.load_presentity(f"u{n}", "example.com", "presence", NOW)
                    await store.delete_expired(NOW)

        await asyncio.gather(*(worker(n, s) for n, s in enumerate(stores)))
        rows = await stores[0].load_presentities(NOW)
        assert sorted(r.username for r in rows) == sorted(f"u{n}" for n in range(20))
        assert {r.etag for r in rows} == {"e9"}
        subs = await stores[0].load_active_watchers(NOW)
        assert len(subs) == 20 and {w.local_cseq for w, _ in subs} == {9}
        conn = sqlite3.connect(tmp_path / "shared.db")
        assert conn.execute(f"SELECT count(*) FROM {tables['presentity']}").fetchone() == (20,)
        conn.close()
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_concurrent_open_of_a_new_file(tmp_path):
    """20 connections switching a brand-new file to WAL at once (SQLite answers
    "database is locked" there without waiting for busy_timeout)."""
    for i in range(10):
        stores = [Store.from_url(f"sqlite://{tmp_path}/new{i}.db") for _ in range(20)]
        try:
            await asyncio.gather(*(s.connect() for s in stores))
            await asyncio.gather(*(s.ensure_schema() for s in stores))
        finally:
            await asyncio.gather(*(s.close() for s in stores))


async def test_writer_waits_for_foreign_lock(tmp_path):
    """Another process holding the write lock for a while delays, but does not fail, a write."""
    url = f"sqlite://{tmp_path}/locked.db"
    store = Store.from_url(url)
    await store.connect()
    try:
        await store.ensure_schema()
        other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO watchers (presentity_uri, watcher_username, watcher_domain, status, inserted_time)"
            " VALUES ('sip:a@b', 'w', 'd', 1, 0)"
        )
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, other.execute, "COMMIT")
        # the write waits on the store's thread: the event loop keeps running meanwhile
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        inline, threaded = store.inline_writes, store.thread_writes
        t0 = loop.time()
        await store.write(Batch(presentity_upserts=[pres()]))
        ticker.cancel()
        assert loop.time() - t0 >= 0.25
        assert ticks >= 5
        assert (store.inline_writes, store.thread_writes) == (inline, threaded + 1)
        assert await store.load_presentities(NOW) == [pres()]
        assert len(await store.load_watchers()) == 1
        # the lock is free again: the next write commits on the loop thread at once
        await store.write(Batch(presentity_upserts=[pres(etag="e2")]))
        assert store.inline_writes == inline + 1
        assert await store._fetch("PRAGMA busy_timeout") == [(0,)]
        other.close()
    finally:
        await store.close()


async def test_write_now_commits_at_once_or_declines(tmp_path):
    """The write-through fast path: committed without awaiting when the lock is
    free; declined (False, nothing written) while another process holds it."""
    store = Store.from_url(f"sqlite://{tmp_path}/now.db")
    await store.connect()
    try:
        await store.ensure_schema()
        assert store.write_now(Batch()) is True
        assert store.write_now(Batch(presentity_upserts=[pres(etag="n1")])) is True
        assert [r.etag for r in await store.load_presentities(NOW)] == ["n1"]
        other = sqlite3.connect(tmp_path / "now.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        assert store.write_now(Batch(presentity_upserts=[pres(etag="n2")])) is False
        other.execute("COMMIT")
        other.close()
        assert [r.etag for r in await store.load_presentities(NOW)] == ["n1"]
        assert store.write_now(Batch(presentity_upserts=[pres(etag="n2")])) is True
        assert sorted(r.etag for r in await store.load_presentities(NOW)) == ["n1", "n2"]
        assert await store._fetch("PRAGMA busy_timeout") == [(0,)]
    finally:
        await store.close()


async def test_checkpoint_runs_beside_inline_writes(tmp_path, monkeypatch):
    """The WAL checkpoint has a connection and thread of its own: while one is
    syncing the file, writes still commit inline on the loop (none waits for it)."""
    import threading

    from presenced.storage import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 3)
    store = Store.from_url(f"sqlite://{tmp_path}/ck.db")
    await store.connect()
    started, release = threading.Event(), threading.Event()
    real = store._checkpoint_once

    def slow_checkpoint() -> None:
        started.set()
        release.wait(5)
        real()

    store._checkpoint_once = slow_checkpoint
    try:
        await store.ensure_schema()
        for i in range(3):
            await store.write(Batch(presentity_upserts=[pres(etag=f"a{i}")]))
        await asyncio.sleep(0)
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        inline, threaded = store.inline_writes, store.thread_writes
        for i in range(5):  # the checkpoint is still running
            assert store.write_now(Batch(presentity_upserts=[pres(etag=f"b{i}")])) is True
        await store.write(Batch(presentity_upserts=[pres(etag="c")]))
        assert (store.inline_writes, store.thread_writes) == (inline + 6, threaded)
        release.set()
        for _ in range(100):
            if store._checkpointing is None:
                break
            await asyncio.sleep(0.01)
        assert store.checkpoints >= 1
        assert len(await store.load_presentities(NOW)) == 9
    finally:
        release.set()
        await store.close()


async def test_locked_write_polls_in_short_steps(tmp_path, monkeypatch):
    """While another process holds the write lock, the thread tries again after
    50 µs, 100 µs, 200 µs ... (not SQLite's 1, 2, 5, 10 ms busy-handler sleeps)."""
    from presenced.storage import sqlite as sqlite_store

    store = Store.from_url(f"sqlite://{tmp_path}/poll.db")
    await store.connect()
    other = sqlite3.connect(tmp_path / "poll.db", isolation_level=None, check_same_thread=False)
    try:
        await store.ensure_schema()
        other.execute("BEGIN IMMEDIATE")
        waits: list[float] = []

        def fake_sleep(delay: float) -> None:
            waits.append(delay)
            if len(waits) == 8:
                other.execute("COMMIT")

        monkeypatch.setattr(sqlite_store, "_sleep", fake_sleep)
        threaded = store.thread_writes
        await store.write(Batch(presentity_upserts=[pres(etag="p")]))
        assert store.thread_writes == threaded + 1
        assert waits == [0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.002, 0.002]
        assert [r.etag for r in await store.load_presentities(NOW)] == ["p"]
        assert await store._fetch("PRAGMA busy_timeout") == [(0,)]
    finally:
        other.close()
        await store.close()


async def test_reads_do_not_wait_for_a_foreign_writer(tmp_path):
    """busy_timeout is 0 on our connection: in WAL mode a read still sees the
    last committed state at once while another process holds the write lock."""
    store = Store.from_url(f"sqlite://{tmp_path}/read.db")
    await store.connect()
    other = sqlite3.connect(tmp_path / "read.db", isolation_level=None, check_same_thread=False)
    try:
        await store.ensure_schema()
        assert store.write_now(Batch(presentity_upserts=[pres(etag="r1")])) is True
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM presentity")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert [r.etag for r in await store.load_presentities(NOW)] == ["r1"]
        assert loop.time() - t0 < 1.0
        other.execute("COMMIT")
        assert await store.load_presentities(NOW) == []
    finally:
        other.close()
        await store.close()


async def test_wal_stays_bounded_under_writes_that_never_pause(tmp_path, monkeypatch):
    """A PASSIVE checkpoint never catches up with a writer that never pauses (a
    busy server's write-through PUBLISHes), and SQLite restarts the WAL only
    once every frame is checkpointed: without more, the -wal file grew by
    ~13 MB/s at 1,000 PUBLISH/s (measured by hand) with no bound. Past WAL_RESTART_FRAMES
    the checkpointer forces a restart, so the file stays near that size."""
    import os

    from presenced.storage import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 20)
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_FRAMES", 100)
    store = Store.from_url(f"sqlite://{tmp_path}/w.db")
    await store.connect()
    wal = f"{tmp_path}/w.db-wal"
    largest = 0
    try:
        await store.ensure_schema()
        page = (await store._fetch("PRAGMA page_size"))[0][0]
        for i in range(4000):
            await store.write(Batch(presentity_upserts=[pres(username=f"u{i % 500}", etag=f"e{i}")]))
            if i % 10 == 0:
                await asyncio.sleep(0)  # let a finished checkpoint hand back
                largest = max(largest, os.path.getsize(wal))
        assert store.wal_restarts >= 1
        # Unchecked, 4,000 writes of ~3 pages each leave ~12,000 frames (~48 MB).
        assert largest < 4_000 * (page + 24), (largest, store.checkpoints, store.wal_restarts)
        assert len(await store.load_presentities(NOW)) == 4000  # nothing lost to a restart
    finally:
        await store.close()


async def test_a_reader_pinning_the_wal_costs_one_wait_per_restart_interval(tmp_path, monkeypatch, caplog):
    """Another connection in a read transaction (an operator's sqlite3 shell)
    keeps the WAL from being emptied: the TRUNCATE checkpoint then waits
    WAL_RESTART_WAIT_MS with our writes queued behind it, so it is tried again
    only WAL_RESTART_FRAMES later, says so in the log, and empties the WAL
    once the reader has gone."""
    import os

    from presenced.storage import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 10)
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_FRAMES", 1000)
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_WAIT_MS", 50)
    path = f"{tmp_path}/r.db"
    store = Store.from_url(f"sqlite://{path}")
    await store.connect()
    attempts = []
    real = store._restart_wal

    def counted() -> bool:
        attempts.append(1)
        return real()

    store._restart_wal = counted
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        await store.ensure_schema()
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM presentity").fetchall()  # holds its snapshot
        for i in range(1500):
            await store.write(Batch(presentity_upserts=[pres(username=f"u{i}", etag=f"e{i}")]))
            if i % 10 == 0:
                await asyncio.sleep(0)
        for _ in range(100):
            if store._checkpointing is None:
                break
            await asyncio.sleep(0.01)
        frames = os.path.getsize(f"{path}-wal") // 4096
        assert store.wal_restarts == 0
        assert 1 <= len(attempts) <= frames // 1000 + 1, (len(attempts), frames, store.checkpoints)
        assert "could not be emptied" in caplog.text

        reader.execute("COMMIT")
        for i in range(1500, 3500):
            await store.write(Batch(presentity_upserts=[pres(username=f"u{i}", etag=f"e{i}")]))
            if i % 10 == 0:
                await asyncio.sleep(0)
            if store.wal_restarts:
                break
        assert store.wal_restarts >= 1
        assert len(await store.load_presentities(NOW)) >= 1500
    finally:
        reader.close()
        await store.close()


async def test_unable_to_open_says_why(tmp_path):
    """SQLite's own "unable to open database file" gives no reason."""
    import pytest

    from presenced.storage import StoreError

    (tmp_path / "adir").mkdir()
    cases = [(tmp_path / "adir", "is a directory"), (tmp_path / "missing" / "p.db", "does not exist")]
    for path, why in cases:
        store = Store.from_url(f"sqlite:///{path}")
        with pytest.raises(StoreError) as e:
            await store.connect()
        assert why in str(e.value) and str(path) in str(e.value)
