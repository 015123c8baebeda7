"""Kamailio's auth_db `subscriber` table (v7): rows, upserts, schema, Kamailio-made databases."""

from __future__ import annotations

import asyncio
import copy
import sqlite3

import pytest
from storage_support import (
    private_database,
    raw_exec,
    raw_fetch,
    sql_only,
    subscriber,
    unavailable,
)
from test_storage_schema import KAMAILIO_SQL_DIRS, statements

from presenced.storage import MemoryStore, Store, StoreError, SubscriberRow, schema

# --- rows -----------------------------------------------------------------------------


async def test_round_trip(store):
    assert await store.get_subscriber("alice", "example.com") is None
    assert await store.load_subscribers() == []
    row = subscriber()
    await store.put_subscriber(row)
    assert await store.get_subscriber("alice", "example.com") == row
    assert await store.load_subscribers() == [row]
    # both parts of the key count
    assert await store.get_subscriber("alice", "example.org") is None
    assert await store.get_subscriber("bob", "example.com") is None


async def test_defaults_and_odd_values(store):
    row = SubscriberRow("carol", "example.com")
    assert (row.password, row.ha1, row.ha1b) == ("", "", "")
    await store.put_subscriber(row)
    assert await store.get_subscriber("carol", "example.com") == row
    odd = subscriber(username="dé+1", domain="xn--exmple-cua.com", password="p'w\"; --\\ü")
    await store.put_subscriber(odd)
    assert await store.get_subscriber(odd.username, odd.domain) == odd


async def test_keys_are_exact(store):
    """Distinct (username, domain) pairs are distinct rows; the same username may
    appear in several domains (subscriber_username_idx is not unique)."""
    rows = [
        subscriber(username="alice", domain="a.example", password="1"),
        subscriber(username="alice", domain="b.example", password="2"),
        subscriber(username="bob", domain="a.example", password="3"),
    ]
    for r in rows:
        await store.put_subscriber(r)
    assert await store.load_subscribers() == rows
    for r in rows:
        assert await store.get_subscriber(r.username, r.domain) == r


async def test_upsert_replaces_credentials_in_place(store):
    await store.put_subscriber(subscriber(username="alice"))
    await store.put_subscriber(subscriber(username="bob"))
    new = subscriber(username="alice", password="changed", ha1="a" * 32, ha1b="b" * 32)
    await store.put_subscriber(new)
    assert await store.get_subscriber("alice", "example.com") == new
    # one row per user, still in insertion (id) order
    assert [r.username for r in await store.load_subscribers()] == ["alice", "bob"]
    assert (await store.load_subscribers())[0] == new
    if not isinstance(store, MemoryStore):
        assert await raw_fetch(store, "SELECT COUNT(*) FROM {subscriber}") == [(2,)]


async def test_delete(store):
    await store.put_subscriber(subscriber(username="alice"))
    await store.put_subscriber(subscriber(username="bob"))
    assert await store.delete_subscriber("alice", "example.org") == 0
    assert await store.delete_subscriber("alice", "example.com") == 1
    assert await store.delete_subscriber("alice", "example.com") == 0
    assert await store.get_subscriber("alice", "example.com") is None
    assert await store.load_subscribers() == [subscriber(username="bob")]
    # and it can come back
    await store.put_subscriber(subscriber(username="alice", password="again"))
    assert (await store.get_subscriber("alice", "example.com")).password == "again"


async def test_rows_are_copies(store):
    row = subscriber()
    await store.put_subscriber(row)
    row.password = "mutated"
    got = await store.get_subscriber("alice", "example.com")
    assert got.password == "secret"
    got.ha1 = "mutated"
    (await store.load_subscribers())[0].ha1b = "mutated"
    assert await store.get_subscriber("alice", "example.com") == subscriber()


async def test_concurrent_upserts_of_one_user(make_store):
    stores = [await make_store() for _ in range(3)]
    await stores[0].ensure_schema()
    await asyncio.gather(
        *(s.put_subscriber(subscriber(password=f"p{i}-{n}")) for n in range(5) for i, s in enumerate(stores))
    )
    for s in stores:  # memory stores share nothing, but each holds one row too
        [row] = await s.load_subscribers()
        assert row.username == "alice" and row.password.startswith("p")


async def test_not_connected(tmp_path):
    store = Store.from_url(f"sqlite://{tmp_path}/x.db")
    with pytest.raises(StoreError, match="not connected"):
        await store.get_subscriber("alice", "example.com")
    with pytest.raises(StoreError, match="not connected"):
        await MemoryStore().put_subscriber(subscriber())


# --- schema -----------------------------------------------------------------------------


async def test_ensure_schema_creates_subscriber_with_version_7(store, make_store):
    name = store.names["subscriber"]
    assert name != "subscriber" and name.startswith("subscriber_")  # the configured name is used
    await store.ensure_schema()
    other = await make_store()
    await other.ensure_schema()
    await other.ensure_schema()
    if isinstance(store, MemoryStore):
        assert store.versions[name] == 7
        return
    assert await store._table_exists(name)
    assert not await store._table_exists("subscriber_" + "x" * 8)
    rows = await raw_fetch(store, "SELECT table_version FROM {version} WHERE table_name = ?", (name,))
    assert [int(r[0]) for r in rows] == [7]
    await other.put_subscriber(subscriber())
    assert await store.get_subscriber("alice", "example.com") == subscriber()


def test_table_name_key():
    assert schema.table_names(None)["subscriber"] == "subscriber"
    assert schema.table_names({"subscriber": "users"})["subscriber"] == "users"
    assert schema.table_names({"subscriber": None})["subscriber"] == "subscriber"
    with pytest.raises(ValueError, match="invalid table name for subscriber"):
        schema.table_names({"subscriber": "users; DROP TABLE x"})
    q = schema.Queries("postgresql", schema.table_names({"subscriber": "users"}))
    assert q.subscriber_get.startswith("SELECT username, domain, password, ha1, ha1b FROM users WHERE")
    assert "$1" in q.subscriber_get and "ON CONFLICT (username, domain)" in q.subscriber_put
    assert "ON DUPLICATE KEY UPDATE" in schema.Queries("mysql", schema.table_names(None)).subscriber_put


def test_ddl_follows_kamailio():
    [create, index] = schema.create_table_sql(schema.SUBSCRIBER, "subscriber", "sqlite")
    assert "username VARCHAR(64) DEFAULT '' NOT NULL" in create
    assert "ha1b VARCHAR(128) DEFAULT '' NOT NULL" in create
    assert "CONSTRAINT subscriber_account_idx UNIQUE (username, domain)" in create
    assert index == "CREATE INDEX IF NOT EXISTS subscriber_username_idx ON subscriber (username)"
    [mysql] = schema.create_table_sql(schema.SUBSCRIBER, "subscriber", "mysql")
    assert "UNIQUE KEY account_idx (username, domain)" in mysql and "KEY username_idx (username)" in mysql
    assert "DROP TABLE IF EXISTS users" in schema.drop_sql(schema.table_names({"subscriber": "users"}))


async def test_ensure_schema_creates_kamailio_indexes(store):
    sql_only(store)
    u = store.names["subscriber"]
    if store.dialect == "sqlite":
        rows = await raw_fetch(store, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (u,))
        assert f"{u}_username_idx" in {r[0] for r in rows}
    elif store.dialect == "postgresql":
        rows = await raw_fetch(store, "SELECT indexname FROM pg_indexes WHERE tablename = ?", (u,))
        assert {f"{u}_account_idx", f"{u}_username_idx"} <= {r[0] for r in rows}
    else:
        rows = await raw_fetch(store, f"SHOW INDEX FROM {u}")
        assert {"account_idx", "username_idx"} <= {r[2] for r in rows}
    # the unique key holds for rows written behind the store's back
    await store.put_subscriber(subscriber())
    with pytest.raises(store._driver_errors):
        await raw_exec(store, "INSERT INTO {subscriber} (username, domain) VALUES ('alice', 'example.com')")


async def test_ensure_schema_rejects_wrong_subscriber_version(store, make_store):
    sql_only(store)
    name = store.names["subscriber"]
    await raw_exec(store, "UPDATE {version} SET table_version = 6 WHERE table_name = ?", (name,))
    with pytest.raises(StoreError) as info:
        await (await make_store()).ensure_schema()
    assert name in str(info.value) and "version 6" in str(info.value) and "expected 7" in str(info.value)


async def test_ensure_schema_rejects_subscriber_without_ha1b(store, make_store):
    sql_only(store)
    name = store.names["subscriber"]
    await raw_exec(store, "DROP TABLE {subscriber}")
    await raw_exec(store, f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, username VARCHAR(64), domain VARCHAR(64))")
    with pytest.raises(StoreError, match=f"{name} lacks columns"):
        await (await make_store()).ensure_schema()


async def test_drop_tables_drops_subscriber(store, make_store):
    sql_only(store)
    name = store.names["subscriber"]
    await store.put_subscriber(subscriber())
    await store.drop_tables()
    assert not await store._table_exists(name)
    assert await raw_fetch(store, "SELECT table_version FROM {version} WHERE table_name = ?", (name,)) == []
    # and ensure_schema creates it again, empty
    await store.ensure_schema()
    assert await store.load_subscribers() == []


async def test_memory_drop_tables():
    store = MemoryStore()
    await store.connect()
    await store.put_subscriber(subscriber())
    await store.drop_tables()
    assert await store.load_subscribers() == []


# --- databases created by Kamailio's own DDL ----------------------------------------------


def kamailio_auth_sql(dialect_dir: str) -> tuple[str, str] | None:
    for base in KAMAILIO_SQL_DIRS:
        std, auth = base / dialect_dir / "standard-create.sql", base / dialect_dir / "auth_db-create.sql"
        if std.is_file() and auth.is_file():
            return std.read_text(), auth.read_text()
    return None


# a row the way `kamctl add alice@example.com secret` writes it (realm = domain)
KAMCTL_ROW = SubscriberRow(
    "alice",
    "example.com",
    "secret",
    "a2e4ee7b1d5e5ac7cd8ae7cd6ec1e8d8",  # fixed strings: the store never checks them
    "8f8c8ee5d7bbf2bb7b4e4a6f7f1cf3c9",
)


def kamctl_insert(name: str = "subscriber") -> str:
    r = KAMCTL_ROW
    return (
        f"INSERT INTO {name} (username, domain, password, ha1, ha1b)"
        f" VALUES ('{r.username}', '{r.domain}', '{r.password}', '{r.ha1}', '{r.ha1b}')"
    )


async def check_kamailio_subscriber(store: Store) -> None:
    await store.ensure_schema()
    await store.ensure_schema()
    assert await store.load_subscribers() == [KAMCTL_ROW]
    assert await store.get_subscriber("alice", "example.com") == KAMCTL_ROW
    # presenced's writes land in Kamailio's table, upserting on subscriber_account_idx
    changed = copy.copy(KAMCTL_ROW)
    changed.password = "changed"
    await store.put_subscriber(changed)
    await store.put_subscriber(subscriber(username="bob"))
    assert await store.load_subscribers() == [changed, subscriber(username="bob")]
    assert await store.delete_subscriber("bob", "example.com") == 1


def sqlite_table_shape(conn: sqlite3.Connection, table: str) -> tuple:
    columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
    indexes = []
    for _, name, unique, origin, _partial in conn.execute(f"PRAGMA index_list({table})").fetchall():
        cols = [r[2] for r in conn.execute(f"PRAGMA index_info({name})").fetchall()]
        indexes.append((name, unique, origin, cols))
    return columns, sorted(indexes)


async def test_sqlite_subscriber_created_by_kamailio(tmp_path):
    sql = kamailio_auth_sql("db_sqlite")
    if sql is None:
        unavailable("Kamailio's db_sqlite standard-create.sql/auth_db-create.sql are not installed")
    path = tmp_path / "kamailio.db"
    conn = sqlite3.connect(path)
    conn.executescript(sql[0])
    conn.executescript(sql[1])
    conn.execute(kamctl_insert())
    conn.commit()
    kamailio_shape = sqlite_table_shape(conn, "subscriber")
    kamailio_ddl = conn.execute("SELECT sql FROM sqlite_master WHERE tbl_name = 'subscriber' ORDER BY name").fetchall()
    conn.close()
    store = Store.from_url(f"sqlite://{path}")
    await store.connect()
    try:
        await check_kamailio_subscriber(store)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        # Kamailio's table and version row are untouched
        assert conn.execute("SELECT sql FROM sqlite_master WHERE tbl_name = 'subscriber' ORDER BY name").fetchall() == (
            kamailio_ddl
        )
        assert conn.execute("SELECT table_version FROM version WHERE table_name = 'subscriber'").fetchall() == [(7,)]
    finally:
        conn.close()

    # and the table presenced creates has the same shape as Kamailio's
    ours = tmp_path / "ours.db"
    store = Store.from_url(f"sqlite://{ours}")
    await store.connect()
    try:
        await store.ensure_schema()
    finally:
        await store.close()
    conn = sqlite3.connect(ours)
    try:
        assert sqlite_table_shape(conn, "subscriber") == kamailio_shape
        conn.execute(kamctl_insert())  # what kamctl writes fits
    finally:
        conn.close()


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
async def test_server_subscriber_created_by_kamailio(dialect):
    """Same against Kamailio's MySQL/PostgreSQL auth_db DDL when it is installed
    (Debian's kamailio-mysql-modules / kamailio-postgres-modules, or PRESENCED_KAMAILIO_SQL_DIR)."""
    sql = kamailio_auth_sql("postgres" if dialect == "postgresql" else "mysql")
    if sql is None:
        pytest.skip(f"Kamailio's {dialect} auth_db-create.sql is not installed")
    async with private_database(dialect) as store:
        ddl = statements(sql[0]) + statements(sql[1]) + [kamctl_insert()]
        await store._run([(s, (), False) for s in ddl])
        await check_kamailio_subscriber(store)
