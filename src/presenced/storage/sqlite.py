"""SQLite backend: stdlib sqlite3 on one dedicated worker thread.

Every call runs on a single-thread executor that owns the connection, so
statements from one process never contend with each other; a write
transaction (the hot path: a PUBLISH in write-through, a write-back flush)
runs inline on the event loop thread instead when the connection is idle and
the write lock is free at once: handing it to the thread and back costs two
wake-ups, more than a small WAL commit. The connection's `busy_timeout` is 0
once it is open (SQLite never sleeps inside a statement; waits are ours, below),
so that attempt needs no PRAGMA around it.
When another process holds the lock it goes to the thread and waits there,
polling every 50 µs-2 ms rather than with SQLite's own busy handler, which
sleeps 1, 2, 5, 10 ms between tries while a WAL commit holds the lock for a
fraction of a millisecond (its sleeps, not the lock, made the tail latency).
WAL checkpoints (which fsync) never run inline: automatic checkpoints are off
on our connection, and every CHECKPOINT_EVERY writes a PASSIVE checkpoint runs
on a second connection and thread of its own, which in WAL mode does not
block the writer, so commits stay inline while the file is synced. SQLite
restarts the WAL from its start only when a write finds every frame
checkpointed, which a writer that never pauses (a busy server's write-through
PUBLISHes) never lets happen, and a second connection polling for the write
lock rarely gets it between our commits: past WAL_RESTART_FRAMES a TRUNCATE
checkpoint runs on the store's own thread, so our writes queue behind it (as
behind any call there) while it copies the few frames PASSIVE left and
empties the file. Against other processes (Kamailio, a second presenced) WAL
mode lets readers run beside the writer, write transactions start with BEGIN
IMMEDIATE (no lock upgrades, hence no deadlock-style SQLITE_BUSY; a batch of
one statement is one autocommit statement, which takes the write lock at its
start), a write waits 5 s for the lock and a read or transaction that still
gets "database is locked" is retried every 2 ms for up to 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from presenced.storage.base import StoreError
from presenced.storage.sql import SqlStore, Step

log = logging.getLogger("presenced.storage.sqlite")

BUSY_TIMEOUT_MS = 5000
LOCKED_DEADLINE = 30.0  # seconds of "database is locked" retries before giving up
CHECKPOINT_EVERY = 200  # write transactions between WAL checkpoints (SQLite's own default: ~1,000 pages)
WAL_RESTART_FRAMES = 8192  # WAL frames (~32 MiB of 4 KiB pages) past which a checkpoint truncates the WAL
WAL_RESTART_WAIT_MS = 200  # how long that checkpoint waits for the write lock and for readers
LOCK_POLL_FIRST = 0.00005  # seconds before a locked write tries again, doubling ...
LOCK_POLL_MAX = 0.002      # ... up to this
_sleep = time.sleep


def sqlite_path(url: str) -> str:
    """The file a sqlite:// URL names, read the way Kamailio reads it."""
    if not url.lower().startswith("sqlite://"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = url[len("sqlite://") :].split("?", 1)[0]
    if path in ("/:memory:", ":memory:", ""):
        return ":memory:"
    return path


def claim_file(path: str, exclusive: bool) -> int | None:
    """Mark `path` as used by this process (an advisory lock on `path` +
    "-presenced.lock", held until the process exits: a crash releases it).

    A server that keeps state in memory (write-back, write-through) claims
    the file exclusively, a DB-only one shared. Returns the lock's descriptor
    (keep it open), or None when another process holds a conflicting claim:
    two caching servers on one file overwrite each other's rows."""
    import fcntl

    fd = os.open(path + "-presenced.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _retry_locked(fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn, retrying while SQLite reports the database locked or busy.

    Our connection's busy_timeout is 0 once open, so this is the wait for
    reads (in WAL mode they meet a lock only around WAL recovery or restart)
    and for the cases where SQLite answers SQLITE_BUSY at once anyway
    (switching a new file to WAL while another connection opens it). Everything
    retried here is a whole statement or a whole rolled-back transaction.
    """
    deadline = time.monotonic() + LOCKED_DEADLINE
    delay = 0.002
    while True:
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class SqliteStore(SqlStore):
    dialect = "sqlite"
    _loose_types = True
    _driver_errors = (sqlite3.Error,)

    def __init__(self, url: str, *, tables: dict | None = None) -> None:
        super().__init__(url, tables=tables)
        self.path = sqlite_path(url)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._inflight = 0       # calls handed to the thread and not finished
        self.inline_writes = 0   # transactions committed on the loop thread
        self.thread_writes = 0
        self.checkpoints = 0
        self.wal_restarts = 0    # TRUNCATE checkpoints that emptied the WAL
        # WAL length (frames) at which the next TRUNCATE is tried: after one
        # that a foreign reader or lock outlasted, only another
        # WAL_RESTART_FRAMES later, so a stuck reader (an open sqlite3 shell)
        # costs one WAL_RESTART_WAIT_MS stall per ~32 MiB, not per checkpoint.
        self._restart_at = WAL_RESTART_FRAMES
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task | None = None
        # The checkpointer's own connection and thread, opened at the first checkpoint.
        self._ckpt_executor: ThreadPoolExecutor | None = None
        self._ckpt_conn: sqlite3.Connection | None = None

    # --- thread plumbing --------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise StoreError(f"{self.url}: store is not connected")
        self._inflight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._inflight -= 1

    def _open(self) -> None:
        _retry_locked(self._open_once)

    def _open_once(self) -> None:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # see CHECKPOINT_EVERY
            conn.execute("PRAGMA synchronous = NORMAL")
            # A WAL that SQLite restarts on its own (an idle moment) is cut back
            # to this size rather than keeping its high-water mark on disk.
            conn.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_FRAMES * 4096}")
            # Opening (the WAL switch above) may wait on other processes; from
            # here on every wait is ours (_retry_locked, _transaction_waiting).
            conn.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _checkpoint_once(self) -> int:
        """On the checkpointer's thread: PASSIVE copies what it can of the WAL into
        the database (and syncs it) without taking the write lock or waiting.
        Returns the WAL's length in frames."""
        if self._ckpt_conn is None:
            self._ckpt_conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._ckpt_conn.execute("PRAGMA wal_autocheckpoint = 0")
        row = self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return -1 if row is None else int(row[1])

    def _restart_wal(self) -> bool:
        """On the store's thread (our writes wait behind it): checkpoint the rest
        of the WAL and empty the file. False when another process's lock or
        reader outlasted WAL_RESTART_WAIT_MS."""
        conn = self._conn
        assert conn is not None
        conn.execute(f"PRAGMA busy_timeout = {WAL_RESTART_WAIT_MS}")
        try:
            row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute("PRAGMA busy_timeout = 0")
        return row is not None and row[0] == 0

    def _close_checkpointer(self) -> None:
        if self._ckpt_conn is not None:
            self._ckpt_conn.close()
            self._ckpt_conn = None

    def _query(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        assert self._conn is not None
        return _retry_locked(lambda: self._conn.execute(sql, params).fetchall())

    def _transaction(self, steps: list[Step]) -> list[int]:
        conn = self._conn
        assert conn is not None
        if len(steps) == 1:
            sql, params, many = steps[0]
            if not many:
                return [conn.execute(sql, params).rowcount]
            if len(params) == 1:  # one row (a PUBLISH): its own autocommit transaction
                conn.execute(sql, params[0])
                return [-1]
        conn.execute("BEGIN IMMEDIATE")
        counts: list[int] = []
        try:
            for sql, params, many in steps:
                if many:
                    conn.executemany(sql, params)
                    counts.append(-1)
                else:
                    counts.append(conn.execute(sql, params).rowcount)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return counts

    def _transaction_waiting(self, steps: list[Step]) -> list[int]:
        """On the store's thread: the transaction, tried again every 50 µs-2 ms
        while another process holds the write lock, for up to busy_timeout."""
        conn = self._conn
        assert conn is not None
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = LOCK_POLL_FIRST
        while True:
            try:
                return self._transaction(steps)
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or time.monotonic() > deadline:
                    raise
            _sleep(delay)
            delay = min(delay * 2, LOCK_POLL_MAX)

    # --- Store ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="presenced-sqlite")
        try:
            await self._call(self._open)
        except Exception as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise self._connect_error(exc) from exc

    def _connect_error(self, exc: BaseException) -> StoreError:
        err = super()._connect_error(exc)
        if "unable to open" not in str(exc) or self.path == ":memory:":
            return err
        # SQLite says only "unable to open database file": say why
        path = os.path.realpath(self.path)
        parent = os.path.dirname(path)
        if os.path.isdir(path):
            why = f"{path} is a directory"
        elif not os.path.isdir(parent):
            why = f"directory {parent} does not exist"
        elif not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK)):
            why = f"no permission to read and write {path} (and its directory, for the -wal and -shm files)"
        else:
            return err
        return StoreError(f"{err}: {why}")

    async def close(self) -> None:
        if self._checkpointing is not None:
            try:
                await self._checkpointing
            except BaseException:  # noqa: BLE001 - closing anyway
                pass
        ckpt, self._ckpt_executor = self._ckpt_executor, None
        if ckpt is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(ckpt, self._close_checkpointer)
            finally:
                ckpt.shutdown(wait=False)
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=False)

    async def ping(self) -> bool:
        try:
            await self._call(self._query, "SELECT 1", ())
            return True
        except Exception:  # noqa: BLE001 - ping reports, never raises
            return False

    # --- primitives -------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        return False  # "locked" is already retried on the worker thread

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return await self._call(self._query, sql, params)

    async def _run(self, steps: list[Step]) -> list[int]:
        counts = self._write_inline(steps)
        if counts is None:  # another process writes: wait for the lock on the thread
            self.thread_writes += 1
            counts = await self._call(_retry_locked, self._transaction_waiting, steps)
            self._wrote()
        return counts

    def write_now(self, batch: Any) -> bool:
        """Commit `batch` here and now if the connection is idle and the lock free
        (True), so a write-through PUBLISH needs no task and no timeout around
        its commit; False: use `write` (the lock is held elsewhere, or busy)."""
        if batch.empty():
            return True
        try:
            return self._write_inline(self._steps(batch)) is not None
        except sqlite3.Error as exc:
            raise StoreError(f"write failed on {self.url}: {self._reason(exc)}") from exc

    def _write_inline(self, steps: list[Step]) -> list[int] | None:
        """Run `steps` as one transaction on the event loop thread if no call is on
        the store's thread and the write lock is free at once; None when it must
        wait on the thread instead."""
        conn = self._conn
        if self._inflight or conn is None or self._executor is None:
            return None
        try:
            counts = self._transaction(steps)
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                return None
            raise
        self.inline_writes += 1
        self._wrote()
        return counts

    def _wrote(self) -> None:
        self._since_checkpoint += 1
        if (self._since_checkpoint >= CHECKPOINT_EVERY and self._checkpointing is None
                and self.path != ":memory:"):
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            if self._ckpt_executor is None:
                self._ckpt_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="presenced-sqlite-ckpt")
            frames = await asyncio.get_running_loop().run_in_executor(self._ckpt_executor, self._checkpoint_once)
            self.checkpoints += 1
            if frames < WAL_RESTART_FRAMES:
                self._restart_at = WAL_RESTART_FRAMES
            elif frames >= self._restart_at and self._executor is not None:
                if await self._call(self._restart_wal):
                    self.wal_restarts += 1
                    self._restart_at = WAL_RESTART_FRAMES
                else:
                    self._restart_at = frames + WAL_RESTART_FRAMES
                    log.warning("%s: the WAL (%d frames) could not be emptied: another connection "
                                "kept reading or writing for %d ms; trying again %d frames later",
                                self.url, frames, WAL_RESTART_WAIT_MS, WAL_RESTART_FRAMES)
        except Exception as exc:  # noqa: BLE001 - the next write tries again
            log.debug("WAL checkpoint on %s failed: %s", self.url, exc)
        finally:
            self._since_checkpoint = 0
            self._checkpointing = None

    async def _table_exists(self, name: str) -> bool:
        rows = await self._fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(rows)
