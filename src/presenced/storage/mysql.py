"""MySQL / MariaDB backend: an asyncmy pool of up to 4 connections.

URL: mysql://user:password@host:port/database (Kamailio's db_url form);
``?unix_socket=/path`` connects over a socket instead. Upserts use
INSERT ... ON DUPLICATE KEY UPDATE, which asyncmy's executemany sends as
multi-row INSERTs. Connections use utf8mb4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncmy
from asyncmy import errors as myerrors

from presenced.storage.base import StoreError
from presenced.storage.sql import SqlStore, Step

POOL_MIN = 1
POOL_MAX = 4
CONNECT_TIMEOUT = 5

# deadlock, lock wait timeout, server gone away / lost connection
_RETRY_CODES = {1205, 1213, 2006, 2013, 2055}


def mysql_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    params: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password else "",
        "database": unquote(parts.path.lstrip("/")) or None,
    }
    query = parse_qs(parts.query)
    if "unix_socket" in query:
        params["unix_socket"] = query["unix_socket"][-1]
    return params


class MysqlStore(SqlStore):
    dialect = "mysql"
    _driver_errors = (myerrors.MySQLError, OSError)

    def __init__(self, url: str, *, tables: dict | None = None) -> None:
        super().__init__(url, tables=tables)
        self._params = mysql_params(url)
        self._pool: Any = None

    async def connect(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncmy.create_pool(
                minsize=POOL_MIN,
                maxsize=POOL_MAX,
                pool_recycle=3600,
                autocommit=True,
                charset="utf8mb4",
                connect_timeout=CONNECT_TIMEOUT,
                **self._params,
            )
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, driver errors
            raise self._connect_error(exc) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    async def ping(self) -> bool:
        try:
            rows = await self._fetch("SELECT 1")
            return rows[0][0] == 1
        except Exception:  # noqa: BLE001 - ping reports, never raises
            return False

    def _p(self) -> Any:
        if self._pool is None:
            raise StoreError(f"{self.url}: store is not connected")
        return self._pool

    def _retryable(self, exc: BaseException) -> bool:
        return bool(exc.args) and exc.args[0] in _RETRY_CODES

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        async with self._p().acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, tuple(params) or None)
            return list(await cur.fetchall())

    async def _run(self, steps: list[Step]) -> list[int]:
        counts: list[int] = []
        async with self._p().acquire() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    for sql, params, many in steps:
                        if many:
                            await cur.executemany(sql, list(params))
                            counts.append(-1)
                        else:
                            await cur.execute(sql, tuple(params) or None)
                            counts.append(cur.rowcount)
                await conn.commit()
            except BaseException:
                try:
                    await conn.rollback()
                except Exception:  # noqa: BLE001,S110 - the connection is dropped by the pool
                    pass
                raise
        return counts

    async def _table_exists(self, name: str) -> bool:
        rows = await self._fetch(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = %s",
            (name,),
        )
        return bool(rows[0][0])
