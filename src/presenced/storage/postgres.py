"""PostgreSQL backend: an asyncpg pool of 2-4 connections.

The URL is handed to asyncpg as a DSN, so libpq-style query parameters work
(``?sslmode=require``; any other parameter, e.g. ``?search_path=kamailio``,
becomes a server setting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from presenced.storage.base import StoreError
from presenced.storage.sql import SqlStore, Step

POOL_MIN = 2
POOL_MAX = 4
CONNECT_TIMEOUT = 5.0
SCHEMA_LOCK_KEY = 0x7072_6573_656E_6364  # "presencd": advisory lock held by ensure_schema

_RETRY = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
)


def _count(status: str) -> int:
    """Row count from a command tag such as 'DELETE 3'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else -1


class PostgresStore(SqlStore):
    dialect = "postgresql"
    _driver_errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

    def __init__(self, url: str, *, tables: dict | None = None) -> None:
        super().__init__(url, tables=tables)
        self._pool: asyncpg.Pool | None = None

    async def connect(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                dsn=self.raw_url, min_size=POOL_MIN, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT
            )
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, asyncpg errors, bad DSN
            raise self._connect_error(exc) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> bool:
        try:
            return await self._p().fetchval("SELECT 1") == 1
        except Exception:  # noqa: BLE001 - ping reports, never raises
            return False

    async def ensure_schema(self) -> None:
        # Serialise presenced processes: concurrent CREATE TABLE IF NOT EXISTS of
        # one table can fail in PostgreSQL (the retry in SqlStore is the fallback).
        try:
            conn = await self._p().acquire()
        except self._driver_errors as exc:
            raise StoreError(f"ensure_schema failed on {self.url}: {self._reason(exc)}") from exc
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK_KEY)
            try:
                await super().ensure_schema()
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK_KEY)
        except self._driver_errors as exc:
            raise StoreError(f"ensure_schema failed on {self.url}: {self._reason(exc)}") from exc
        finally:
            await self._p().release(conn)

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{self.url}: store is not connected")
        return self._pool

    def _retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, _RETRY)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return await self._p().fetch(sql, *params)

    async def _run(self, steps: list[Step]) -> list[int]:
        counts: list[int] = []
        async with self._p().acquire() as conn, conn.transaction():
            for sql, params, many in steps:
                if many:
                    await conn.executemany(sql, params)
                    counts.append(-1)
                else:
                    counts.append(_count(await conn.execute(sql, *params)))
        return counts

    async def _table_exists(self, name: str) -> bool:
        return await self._p().fetchval("SELECT to_regclass($1) IS NOT NULL", name)
