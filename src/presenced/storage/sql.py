"""What the SQL backends share: the Store methods written against four primitives.

A backend supplies `_fetch` (one SELECT), `_run` (several statements in one
transaction), `_table_exists`, the driver's exception types, and which of
them are worth retrying. Every statement comes from `schema.Queries`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from operator import attrgetter
from typing import Any

from presenced.storage import schema
from presenced.storage.base import PENDING_AUTH_MAX_AGE, Store, StoreError, Subscription, redact_url, url_password
from presenced.storage.rows import (
    ActiveWatcherRow,
    Batch,
    PresentityRow,
    SubscriberRow,
    SubscriptionExtRow,
    WatcherRow,
    XcapRow,
)

log = logging.getLogger("presenced.storage")

# One statement of a transaction: (sql, params, many). With many=True params is a
# sequence of parameter tuples (executemany) and the step's count is -1.
Step = tuple[str, Sequence[Any], bool]

_ATTEMPTS = 3


def _to_bytes(v: Any) -> bytes:
    if v is None:
        return b""
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    return bytes(v)


def _to_str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def _to_opt_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return _to_str(v)


def _to_int(v: Any) -> int:
    if v is None:
        return 0
    return v if type(v) is int else int(v)


def _decoder(table: schema.TableDef, loose: bool) -> Callable[[Sequence[Any]], Any]:
    """Build rows from result tuples, tolerating what other writers may have stored.

    Strict drivers (PostgreSQL, MySQL) return the declared types; only NULL in a
    nullable column mapped to a `str` field (user_agent) needs fixing. SQLite is
    dynamically typed: a row inserted by hand may hold TEXT in a BLOB column, etc.
    """
    cls = table.row_type
    row_fields = {f: cls.__dataclass_fields__[f].type for f in table.data_columns}
    fixers: list[tuple[int, Callable[[Any], Any]]] = []
    for i, col in enumerate(c for c in table.columns if c.type != "id"):
        ftype = row_fields[col.name]
        if col.type in ("blob", "mediumblob"):
            fixers.append((i, _to_bytes))
        elif ftype == "str" and (loose or col.null):
            fixers.append((i, _to_str))
        elif loose and ftype == "str | None":
            fixers.append((i, _to_opt_str))
        elif loose and ftype == "int":
            fixers.append((i, _to_int))

    if not fixers:
        return lambda values: cls(*values)

    def decode(values: Sequence[Any]) -> Any:
        values = list(values)
        for i, fix in fixers:
            values[i] = fix(values[i])
        return cls(*values)

    return decode


class SqlStore(Store):
    dialect: str = ""
    _loose_types = False  # SQLite: coerce every column to the row's field type
    _driver_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, url: str, *, tables: dict | None = None) -> None:
        self.raw_url = url
        self.url = redact_url(url)
        self._password = url_password(url)
        self.names = schema.table_names(tables)
        self.q = schema.Queries(self.dialect, self.names)
        self._dec_p = _decoder(schema.PRESENTITY, self._loose_types)
        self._dec_a = _decoder(schema.ACTIVE_WATCHERS, self._loose_types)
        self._dec_w = _decoder(schema.WATCHERS, self._loose_types)
        self._dec_x = _decoder(schema.XCAP, self._loose_types)
        # loose everywhere: a hand-made or older subscriber table may hold NULLs
        self._dec_u = _decoder(schema.SUBSCRIBER, True)
        self._p_args = attrgetter(*schema.PRESENTITY.data_columns)
        self._a_args = attrgetter(*schema.ACTIVE_WATCHERS.data_columns)
        self._w_args = attrgetter(*schema.WATCHERS.data_columns)
        self._x_args = attrgetter(*schema.XCAP.data_columns)
        self._u_args = attrgetter(*schema.SUBSCRIBER.data_columns)
        self._e_args = attrgetter(*schema.EXT.data_columns)

    # --- primitives -------------------------------------------------------------------

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    @abc.abstractmethod
    async def _run(self, steps: list[Step]) -> list[int]:
        """Run `steps` in one transaction; return each single statement's row count."""

    @abc.abstractmethod
    async def _table_exists(self, name: str) -> bool: ...

    def _retryable(self, exc: BaseException) -> bool:
        """Deadlocks, lock timeouts, dropped connections (every batch is idempotent)."""
        return False

    # --- error handling ---------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _connect_error(self, exc: BaseException) -> StoreError:
        return StoreError(f"cannot connect to {self.url}: {self._reason(exc)}")

    async def _do(self, op: str, fn: Callable[..., Any], *args: Any, retry_any: bool = False) -> Any:
        for attempt in range(_ATTEMPTS):
            try:
                return await fn(*args)
            except StoreError:
                raise
            except self._driver_errors as exc:
                if attempt + 1 < _ATTEMPTS and (retry_any or self._retryable(exc)):
                    log.warning("%s on %s failed (%s); retrying", op, self.url, self._reason(exc))
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                raise StoreError(f"{op} failed on {self.url}: {self._reason(exc)}") from exc
        raise AssertionError("unreachable")

    async def _select(self, op: str, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return await self._do(op, self._fetch, sql, params)

    # --- schema -----------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        # Idempotent, so any failure is retried: two processes creating the same
        # table at once can make one of them fail (PostgreSQL's pg_type race).
        await self._do("ensure_schema", self._ensure_schema, retry_any=True)

    async def _ensure_schema(self) -> None:
        q = self.q
        vname = self.names["version"]
        if not await self._table_exists(vname):
            await self._run([(s, (), False) for s in q.create(schema.VERSION)])
            await self._set_version("version", 1)
        else:
            await self._fetch(q.probe(schema.VERSION))
        for table in schema.KAMAILIO_TABLES:
            name = self.names[table.key]
            if await self._table_exists(name):
                rows = await self._fetch(q.version_get, (name,))
                if not rows:
                    raise StoreError(
                        f"{self.url}: table {name} exists but has no row in {vname}"
                        f" (expected table_version {table.version})"
                    )
                found = int(rows[0][0])
                if found != table.version:
                    raise StoreError(
                        f"{self.url}: table {name} has version {found} in {vname},"
                        f" expected {table.version} (Kamailio 5.6+ schema)"
                    )
                try:
                    await self._fetch(q.probe(table))
                except self._driver_errors as exc:
                    raise StoreError(
                        f"{self.url}: table {name} lacks columns presenced needs: {self._reason(exc)}"
                    ) from exc
            else:
                # A version row first: on MySQL DDL is not transactional, and a
                # table without its row would be refused next time.
                await self._set_version(name, table.version)
                await self._run([(s, (), False) for s in q.create(table)])
        ext = schema.EXT
        if not await self._table_exists(self.names["ext"]):
            # (not IF NOT EXISTS alone: MySQL answers that with a note asyncmy logs as a warning)
            await self._run([(s, (), False) for s in q.create(ext)])
        try:
            await self._fetch(q.probe(ext))
        except self._driver_errors as exc:
            raise StoreError(
                f"{self.url}: table {self.names['ext']} lacks columns presenced needs: {self._reason(exc)}"
            ) from exc

    async def _set_version(self, name: str, version: int) -> None:
        rows = await self._fetch(self.q.version_get, (name,))
        if not rows:
            try:
                await self._run([(self.q.version_insert, (name, version), False)])
                return
            except self._driver_errors:
                # inserted concurrently by another process: fall through and update
                pass
        await self._run([(self.q.version_update, (version, name), False)])

    # --- loads ------------------------------------------------------------------------

    def _subs(self, rows: list[Sequence[Any]]) -> list[Subscription]:
        dec = self._dec_a
        out: list[Subscription] = []
        for r in rows:
            aw = dec(r[:-1])
            data = r[-1]
            ext = None if data is None else SubscriptionExtRow(aw.callid, aw.to_tag, aw.from_tag, _to_str(data))
            out.append((aw, ext))
        return out

    async def load_presentities(self, now: int) -> list[PresentityRow]:
        rows = await self._select("load_presentities", self.q.presentities, (now,))
        return [self._dec_p(r) for r in rows]

    async def load_active_watchers(self, now: int) -> list[Subscription]:
        return self._subs(await self._select("load_active_watchers", self.q.watchers_active, (now,)))

    async def page_presentities(self, now: int, batch: int) -> AsyncIterator[list[PresentityRow]]:
        after = -1
        while True:
            rows = await self._select("load_presentities", self.q.presentities_page, (now, after, batch))
            if rows:
                after = int(rows[-1][-1])
                yield [self._dec_p(r[:-1]) for r in rows]
            if len(rows) < batch:
                return

    async def page_active_watchers(self, now: int, batch: int) -> AsyncIterator[list[Subscription]]:
        after = -1
        while True:
            rows = await self._select("load_active_watchers", self.q.watchers_active_page, (now, after, batch))
            if rows:
                after = int(rows[-1][-1])
                yield self._subs([r[:-1] for r in rows])
            if len(rows) < batch:
                return

    async def load_watchers(self) -> list[WatcherRow]:
        rows = await self._select("load_watchers", self.q.auths)
        return [self._dec_w(r) for r in rows]

    async def load_presentity(self, username: str, domain: str, event: str, now: int) -> list[PresentityRow]:
        rows = await self._select("load_presentity", self.q.presentity, (username, domain, event, now))
        return [self._dec_p(r) for r in rows]

    async def load_subscriptions_for(self, presentity_uri: str, event: str, now: int) -> list[Subscription]:
        rows = await self._select("load_subscriptions_for", self.q.watchers_for, (presentity_uri, event, now))
        return self._subs(rows)

    async def load_subscription(self, callid: str, to_tag: str, from_tag: str) -> Subscription | None:
        rows = await self._select("load_subscription", self.q.watcher, (callid, to_tag, from_tag))
        return self._subs(rows[:1])[0] if rows else None

    async def find_etag(self, username: str, domain: str, event: str, etag: str) -> PresentityRow | None:
        rows = await self._select("find_etag", self.q.find_etag, (username, domain, event, etag))
        return self._dec_p(rows[0]) if rows else None

    # --- writes -----------------------------------------------------------------------

    def _steps(self, b: Batch) -> list[Step]:
        """The batch as executemany steps; rows sorted by key so that concurrent
        transactions lock rows in the same order (stable: the last duplicate wins)."""
        q = self.q
        steps: list[Step] = []
        if b.presentity_deletes:
            steps.append((q.presentity_delete, sorted(b.presentity_deletes), True))
        if b.watcher_deletes:
            keys = sorted(b.watcher_deletes)
            steps.append((q.ext_delete, keys, True))
            steps.append((q.watcher_delete, keys, True))
        if b.auth_deletes:
            steps.append((q.auth_delete, sorted(b.auth_deletes), True))
        if b.presentity_upserts:
            rows = sorted(b.presentity_upserts, key=_pkey)
            steps.append((q.presentity_upsert, [self._p_args(r) for r in rows], True))
        if b.watcher_upserts:
            rows = sorted(b.watcher_upserts, key=_akey)
            steps.append((q.watcher_upsert, [self._a_args(r) for r in rows], True))
        if b.auth_upserts:
            rows = sorted(b.auth_upserts, key=_wkey)
            steps.append((q.auth_upsert, [self._w_args(r) for r in rows], True))
        if b.ext_upserts:
            rows = sorted(b.ext_upserts, key=_ekey)
            steps.append((q.ext_upsert, [self._e_args(r) for r in rows], True))
        return steps

    async def write(self, batch: Batch) -> None:
        if batch.empty():
            return
        await self._do("write", self._run, self._steps(batch))

    async def delete_expired(self, now: int) -> tuple[int, int]:
        q = self.q
        counts = await self._do(
            "delete_expired",
            self._run,
            [
                (q.presentity_expire, (now,), False),
                (q.ext_expire, (now,), False),
                (q.watcher_expire, (now,), False),
                (q.auth_expire, (now - PENDING_AUTH_MAX_AGE,), False),
            ],
        )
        return counts[0], counts[2]

    # --- xcap -------------------------------------------------------------------------

    async def get_xcap(self, username: str, domain: str, doc_type: int) -> XcapRow | None:
        rows = await self._select("get_xcap", self.q.xcap_get, (username, domain, doc_type))
        return self._dec_x(rows[0]) if rows else None

    async def load_xcap(self, doc_type: int) -> list[XcapRow]:
        rows = await self._select("load_xcap", self.q.xcap_all, (doc_type,))
        return [self._dec_x(r) for r in rows]

    async def put_xcap(self, row: XcapRow) -> None:
        await self._do("put_xcap", self._run, [(self.q.xcap_put, [self._x_args(row)], True)])

    async def delete_xcap(self, username: str, domain: str, doc_type: int) -> int:
        counts = await self._do("delete_xcap", self._run, [(self.q.xcap_delete, (username, domain, doc_type), False)])
        return counts[0]

    # --- subscriber (auth_db) ---------------------------------------------------------

    async def get_subscriber(self, username: str, domain: str) -> SubscriberRow | None:
        rows = await self._select("get_subscriber", self.q.subscriber_get, (username, domain))
        return self._dec_u(rows[0]) if rows else None

    async def load_subscribers(self) -> list[SubscriberRow]:
        rows = await self._select("load_subscribers", self.q.subscriber_all)
        return [self._dec_u(r) for r in rows]

    async def put_subscriber(self, row: SubscriberRow) -> None:
        await self._do("put_subscriber", self._run, [(self.q.subscriber_put, [self._u_args(row)], True)])

    async def delete_subscriber(self, username: str, domain: str) -> int:
        steps: list[Step] = [(self.q.subscriber_delete, (username, domain), False)]
        counts = await self._do("delete_subscriber", self._run, steps)
        return counts[0]

    # --- markers ----------------------------------------------------------------------

    async def get_marker(self, name: str) -> str | None:
        rows = await self._select("get_marker", self.q.marker_get, ("presenced:" + name,))
        return str(rows[0][0]) if rows else None

    async def set_marker(self, name: str, value: str) -> None:
        row = SubscriptionExtRow("presenced:" + name, "", "", value)
        await self._do("set_marker", self._run, [(self.q.ext_upsert, self._e_args(row), False)])

    # --- tools ------------------------------------------------------------------------

    async def drop_tables(self) -> None:
        """Drop every table presenced uses (not `version`) and their version rows.

        For tests and tooling; the server never calls it."""
        steps: list[Step] = [(s, (), False) for s in schema.drop_sql(self.names)]
        if await self._do("drop_tables", self._table_exists, self.names["version"]):
            delete = f"DELETE FROM {self.names['version']} WHERE table_name = ?"
            delete = schema._ph(self.dialect, delete)
            steps += [(delete, (self.names[t.key],), False) for t in schema.KAMAILIO_TABLES]
        await self._do("drop_tables", self._run, steps)


def _pkey(r: PresentityRow) -> tuple[str, str, str, str]:
    return (r.username, r.domain, r.event, r.etag)


def _akey(r: ActiveWatcherRow) -> tuple[str, str, str]:
    return (r.callid, r.to_tag, r.from_tag)


def _wkey(r: WatcherRow) -> tuple[str, str, str, str]:
    return (r.presentity_uri, r.watcher_username, r.watcher_domain, r.event)


def _ekey(r: SubscriptionExtRow) -> tuple[str, str, str]:
    return (r.callid, r.to_tag, r.from_tag)
