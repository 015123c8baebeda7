"""Helpers for the storage tests: backends, URLs, raw SQL, row factories.

Backends: sqlite (a file under tmp_path), postgresql, mysql, memory. A server
backend that cannot be reached skips with the reason; with
PRESENCED_REQUIRE_DB=1 (CI) it fails instead. Server URLs can be overridden
with PRESENCED_TEST_PG_URL / PRESENCED_TEST_MYSQL_URL.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

from presenced.storage import (
    ActiveWatcherRow,
    PresentityRow,
    Store,
    StoreError,
    SubscriberRow,
    SubscriptionExtRow,
    WatcherRow,
    XcapRow,
    schema,
)

BACKENDS = ("sqlite", "postgresql", "mysql", "memory")
PG_URL = os.environ.get("PRESENCED_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("PRESENCED_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REQUIRE_DB = os.environ.get("PRESENCED_REQUIRE_DB") == "1"

_unreachable: dict[str, str] = {}  # backend -> reason, remembered for the session


def unavailable(reason: str) -> None:
    """Skip, or fail when the environment requires every backend (CI)."""
    if REQUIRE_DB:
        pytest.fail(f"{reason} (PRESENCED_REQUIRE_DB=1)")
    pytest.skip(reason)


def backend_url(backend: str, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite://{tmp_path}/presenced.db"
    if backend == "postgresql":
        return PG_URL
    if backend == "mysql":
        return MYSQL_URL
    return "memory"


def suffix_tables() -> dict[str, str]:
    s = uuid.uuid4().hex[:8]
    return {k: f"{k}_{s}" for k in ("presentity", "active_watchers", "watchers", "xcap", "subscriber")}


async def open_store(url: str, backend: str, *, tables: dict | None = None) -> Store:
    if backend in _unreachable:
        unavailable(_unreachable[backend])
    store = Store.from_url(url, tables=tables)
    try:
        await store.connect()
    except StoreError as exc:
        if backend in ("postgresql", "mysql"):
            _unreachable[backend] = f"{backend} server unreachable: {exc}"
            unavailable(_unreachable[backend])
        raise
    return store


def sql_only(store: Store) -> None:
    if store.url == "memory":
        pytest.skip("memory backend has no SQL tables")


async def raw_fetch(store, sql: str, params=()) -> list[tuple]:
    """Plain SQL against a SQL store; `?` placeholders; {presentity} etc. are table names."""
    sql = schema._ph(store.dialect, sql.format(**store.names))
    return [tuple(r) for r in await store._fetch(sql, params)]


async def raw_exec(store, sql: str, params=()) -> int:
    sql = schema._ph(store.dialect, sql.format(**store.names))
    return (await store._run([(sql, params, False)]))[0]


@contextlib.asynccontextmanager
async def private_database(dialect: str):
    """A connected store in a fresh PostgreSQL schema / MySQL database, dropped
    afterwards (for DDL that must run under Kamailio's own table names)."""
    ns = f"kam_{uuid.uuid4().hex[:8]}"
    admin = await open_store(PG_URL if dialect == "postgresql" else MYSQL_URL, dialect)
    try:
        if dialect == "postgresql":
            await raw_exec(admin, f"CREATE SCHEMA {ns}")
            url = f"{PG_URL}?search_path={ns}"
        else:
            await raw_exec(admin, f"CREATE DATABASE {ns}")
            url = MYSQL_URL.rsplit("/", 1)[0] + f"/{ns}"
        store = Store.from_url(url)
        await store.connect()
        try:
            yield store
        finally:
            await store.close()
    finally:
        drop = f"DROP SCHEMA {ns} CASCADE" if dialect == "postgresql" else f"DROP DATABASE {ns}"
        await raw_exec(admin, drop)
        await admin.close()


# --- row factories -----------------------------------------------------------------


def pres(**kw) -> PresentityRow:
    base = {
        "username": "alice",
        "domain": "example.com",
        "event": "presence",
        "etag": "a.1",
        "expires": 2_000_000_000,
        "received_time": 1_700_000_000,
        "body": b"<presence/>",
        "sender": "",
        "priority": 0,
        "ruid": None,
    }
    base.update(kw)
    return PresentityRow(**base)


def aw(**kw) -> ActiveWatcherRow:
    base = {
        "presentity_uri": "sip:alice@example.com",
        "watcher_username": "bob",
        "watcher_domain": "example.org",
        "to_user": "alice",
        "to_domain": "example.com",
        "event": "presence",
        "event_id": None,
        "to_tag": "tt1",
        "from_tag": "ft1",
        "callid": "call-1@host",
        "local_cseq": 1,
        "remote_cseq": 10,
        "contact": "sip:bob@192.0.2.1:5060",
        "record_route": None,
        "expires": 2_000_000_000,
        "status": 1,
        "reason": None,
        "version": 0,
        "socket_info": "udp:192.0.2.10:5060",
        "local_contact": "sip:192.0.2.10:5060;transport=udp",
        "from_user": "bob",
        "from_domain": "example.org",
    }
    base.update(kw)
    return ActiveWatcherRow(**base)


def ext_for(row: ActiveWatcherRow, data: str = '{"display": "Bob"}') -> SubscriptionExtRow:
    return SubscriptionExtRow(row.callid, row.to_tag, row.from_tag, data)


def auth(**kw) -> WatcherRow:
    base = {
        "presentity_uri": "sip:alice@example.com",
        "watcher_username": "bob",
        "watcher_domain": "example.org",
        "event": "presence",
        "status": 1,
        "reason": None,
        "inserted_time": 1_700_000_000,
    }
    base.update(kw)
    return WatcherRow(**base)


def xcap(**kw) -> XcapRow:
    base = {
        "username": "alice",
        "domain": "example.com",
        "doc": b"<ruleset/>",
        "doc_type": 2,
        "etag": "x1",
        "source": 1,
        "doc_uri": "/pres-rules/users/sip:alice@example.com/index",
        "port": 8080,
    }
    base.update(kw)
    return XcapRow(**base)


def subscriber(**kw) -> SubscriberRow:
    base = {
        "username": "alice",
        "domain": "example.com",
        "password": "secret",
        "ha1": "0" * 32,
        "ha1b": "1" * 32,
    }
    base.update(kw)
    return SubscriberRow(**base)
