"""Schema creation, version checks, Kamailio-created databases, URLs and errors."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3

import pytest
from storage_support import (
    MYSQL_URL,
    PG_URL,
    aw,
    ext_for,
    open_store,
    pres,
    private_database,
    raw_exec,
    raw_fetch,
    sql_only,
    unavailable,
    xcap,
)

from presenced.storage import Batch, MemoryStore, Store, StoreError, redact_url, schema

NOW = 1_800_000_000
EXPECTED_VERSIONS = {"presentity": 5, "active_watchers": 12, "watchers": 3, "xcap": 4, "subscriber": 7}


# --- ensure_schema ------------------------------------------------------------------


async def test_ensure_schema_idempotent_with_versions(store, make_store):
    await store.ensure_schema()
    second = await make_store()  # another connection / process on the same DB
    await second.ensure_schema()
    if isinstance(store, MemoryStore):
        assert {k: store.versions[store.names[k]] for k in EXPECTED_VERSIONS} == EXPECTED_VERSIONS
        return
    for key, version in EXPECTED_VERSIONS.items():
        rows = await raw_fetch(store, "SELECT table_version FROM version WHERE table_name = ?", (store.names[key],))
        assert [int(r[0]) for r in rows] == [version], key
    assert await raw_fetch(store, "SELECT table_version FROM version WHERE table_name = 'version'") == [(1,)]
    for key in ("presentity", "active_watchers", "watchers", "xcap", "subscriber", "ext"):
        assert await store._table_exists(store.names[key]), key
    # the tables work after the second ensure_schema
    await second.write(Batch(presentity_upserts=[pres()]))
    assert await store.load_presentities(NOW) == [pres()]


async def test_a_restart_on_an_existing_schema_logs_no_warning(store, make_store, caplog):
    """MySQL answered CREATE TABLE IF NOT EXISTS with a note, which asyncmy
    logged as "Table ... already exists" on every start."""
    import logging

    again = await make_store()
    with caplog.at_level(logging.WARNING):
        await again.ensure_schema()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_concurrent_ensure_schema(make_store):
    """Several processes starting at once on an empty database."""
    stores = [await make_store() for _ in range(4)]
    await asyncio.gather(*(s.ensure_schema() for s in stores))
    await asyncio.gather(*(s.ensure_schema() for s in stores))
    await stores[1].write(Batch(presentity_upserts=[pres()]))
    if not isinstance(stores[3], MemoryStore):  # memory stores share nothing
        assert await stores[3].load_presentities(NOW) == [pres()]


async def test_ensure_schema_rejects_wrong_version(store, make_store):
    sql_only(store)
    name = store.names["presentity"]
    await raw_exec(store, "UPDATE version SET table_version = 4 WHERE table_name = ?", (name,))
    other = await make_store()
    with pytest.raises(StoreError) as info:
        await other.ensure_schema()
    msg = str(info.value)
    assert name in msg and "version 4" in msg and "expected 5" in msg


async def test_ensure_schema_rejects_missing_version_row(store, make_store):
    sql_only(store)
    name = store.names["watchers"]
    await raw_exec(store, "DELETE FROM version WHERE table_name = ?", (name,))
    other = await make_store()
    with pytest.raises(StoreError, match=f"{name} exists but has no row"):
        await other.ensure_schema()


async def test_ensure_schema_creates_kamailio_indexes(store):
    sql_only(store)
    p = store.names["presentity"]
    if store.dialect == "sqlite":
        rows = await raw_fetch(store, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (p,))
        names = {r[0] for r in rows}
        assert {f"{p}_presentity_expires", f"{p}_account_idx"} <= names
    elif store.dialect == "postgresql":
        rows = await raw_fetch(store, "SELECT indexname FROM pg_indexes WHERE tablename = ?", (p,))
        names = {r[0] for r in rows}
        assert {f"{p}_presentity_idx", f"{p}_ruid_idx", f"{p}_presentity_expires", f"{p}_account_idx"} <= names
    else:
        rows = await raw_fetch(store, f"SHOW INDEX FROM {p}")
        names = {r[2] for r in rows}
        assert {"presentity_idx", "ruid_idx", "presentity_expires", "account_idx"} <= names
    # the unique ruid key holds: an error, or on MySQL (ON DUPLICATE KEY UPDATE
    # matches any unique key) an update of the row that owns the ruid
    await store.write(Batch(presentity_upserts=[pres(etag="a", ruid="r1")]))
    if store.dialect == "mysql":
        await store.write(Batch(presentity_upserts=[pres(etag="b", ruid="r1", body=b"b")]))
        assert await raw_fetch(store, "SELECT etag, body FROM {presentity}") == [("a", b"b")]
    else:
        with pytest.raises(StoreError):
            await store.write(Batch(presentity_upserts=[pres(etag="b", ruid="r1")]))


# --- databases created by Kamailio's own DDL ------------------------------------------

KAMAILIO_SQL_DIRS = [
    pathlib.Path(p) for p in (os.environ.get("PRESENCED_KAMAILIO_SQL_DIR"), "/usr/share/kamailio") if p
]


def kamailio_sql(dialect_dir: str) -> tuple[str, str] | None:
    for base in KAMAILIO_SQL_DIRS:
        std, presence = base / dialect_dir / "standard-create.sql", base / dialect_dir / "presence-create.sql"
        if std.is_file() and presence.is_file():
            return std.read_text(), presence.read_text()
    return None


def statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";\n") if s.strip() and not s.strip().startswith("--")]


def kamailio_rows_sql(names: dict[str, str], blob: str) -> list[str]:
    """Rows inserted the way Kamailio writes them (columns it sets, NULLs it leaves)."""
    p, a, w = names["presentity"], names["active_watchers"], names["watchers"]
    return [
        (
            f"INSERT INTO {p} (username, domain, event, etag, expires, received_time, body, sender, priority)"
            f" VALUES ('alice', 'example.com', 'presence', 'kam1', 1900000000, 1700000000, {blob}, '', 0)"
        ),
        (
            f"INSERT INTO {p} (username, domain, event, etag, expires, received_time, body, sender, ruid)"
            f" VALUES ('alice', 'example.com', 'presence', 'kam2', -1, 1700000001, '<presence>text</presence>',"
            f" 'sip:alice@example.com', 'pres-5f00')"
        ),
        (
            f"INSERT INTO {a} (presentity_uri, watcher_username, watcher_domain, to_user, to_domain, event,"
            " to_tag, from_tag, callid, local_cseq, remote_cseq, contact, expires, status, version,"
            " socket_info, local_contact, from_user, from_domain, updated, updated_winfo, flags, user_agent)"
            " VALUES ('sip:alice@example.com', 'bob', 'example.org', 'alice', 'example.com', 'presence',"
            " 'kt', 'kf', 'kcall', 2, 20, 'sip:bob@192.0.2.1', 1900000000, 1, 1,"
            " 'udp:192.0.2.10:5060', 'sip:192.0.2.10:5060', 'bob', 'example.org', -1, -1, 0, NULL)"
        ),
        (
            f"INSERT INTO {w} (presentity_uri, watcher_username, watcher_domain, event, status, reason, inserted_time)"
            " VALUES ('sip:alice@example.com', 'bob', 'example.org', 'presence', 1, '', 1700000000)"
        ),
    ]


async def check_kamailio_rows(store: Store) -> None:
    await store.ensure_schema()
    await store.ensure_schema()
    loaded = {r.etag: r for r in await store.load_presentities(NOW)}
    assert loaded["kam1"].body == b"\xff\x00<presence/>"
    assert loaded["kam2"].body == b"<presence>text</presence>" and loaded["kam2"].ruid == "pres-5f00"
    assert loaded["kam2"].expires == -1 and loaded["kam1"].priority == 0
    [(row, ext)] = await store.load_active_watchers(NOW)
    assert ext is None
    assert (row.callid, row.event_id, row.record_route, row.reason, row.user_agent) == ("kcall", None, None, None, "")
    assert (row.local_cseq, row.remote_cseq, row.version, row.updated) == (2, 20, 1, -1)
    [auth] = await store.load_watchers()
    assert (auth.status, auth.reason) == (1, "")
    # and presenced's writes land in Kamailio's tables
    w = aw(callid="ours")
    await store.write(Batch(watcher_upserts=[w], ext_upserts=[ext_for(w)], presentity_upserts=[pres(etag="ours")]))
    assert await store.load_subscription("ours", w.to_tag, w.from_tag) == (w, ext_for(w))
    assert await store.find_etag("alice", "example.com", "presence", "ours") == pres(etag="ours")
    doc = xcap(doc=b"\xff<ruleset/>")
    await store.put_xcap(doc)
    await store.put_xcap(doc)
    assert await store.get_xcap(doc.username, doc.domain, doc.doc_type) == doc


async def test_sqlite_database_created_by_kamailio(tmp_path):
    sql = kamailio_sql("db_sqlite")
    if sql is None:
        unavailable("Kamailio's db_sqlite standard-create.sql/presence-create.sql are not installed")
    path = tmp_path / "kamailio.db"
    conn = sqlite3.connect(path)
    conn.executescript(sql[0])
    conn.executescript(sql[1])
    names = schema.table_names(None)
    for s in kamailio_rows_sql(names, "X'FF003C70726573656E63652F3E'"):
        conn.execute(s)
    conn.commit()
    conn.close()
    store = Store.from_url(f"sqlite://{path}")
    await store.connect()
    try:
        await check_kamailio_rows(store)
        # what we wrote is stored as BLOB, as Kamailio's db_sqlite expects
        rows = await raw_fetch(store, "SELECT typeof(body) FROM presentity WHERE etag = 'ours'")
        assert rows == [("blob",)]
    finally:
        await store.close()
    # Kamailio's versions are untouched
    conn = sqlite3.connect(path)
    versions = dict(conn.execute("SELECT table_name, table_version FROM version").fetchall())
    conn.close()
    assert {k: versions[k] for k in EXPECTED_VERSIONS} == EXPECTED_VERSIONS


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
async def test_server_database_created_by_kamailio(dialect):
    """Same check against Kamailio's MySQL/PostgreSQL DDL when it is available
    (Debian's kamailio-mysql-modules / kamailio-postgres-modules, or
    PRESENCED_KAMAILIO_SQL_DIR); applied in a private schema/database."""
    sql = kamailio_sql("postgres" if dialect == "postgresql" else "mysql")
    if sql is None:
        pytest.skip(f"Kamailio's {dialect} presence-create.sql is not installed")
    async with private_database(dialect) as store:
        blob = (
            "'\\xff003c70726573656e63652f3e'::bytea" if dialect == "postgresql" else "X'FF003C70726573656E63652F3E'"
        )
        ddl = statements(sql[0]) + statements(sql[1])
        ddl += kamailio_rows_sql(schema.table_names(None), blob)
        await store._run([(s, (), False) for s in ddl])
        await check_kamailio_rows(store)


# --- URLs and errors ----------------------------------------------------------------


def test_from_url_schemes(tmp_path):
    from presenced.storage.mysql import MysqlStore, mysql_params
    from presenced.storage.postgres import PostgresStore
    from presenced.storage.sqlite import SqliteStore

    assert isinstance(Store.from_url("memory"), MemoryStore)
    assert isinstance(Store.from_url("memory://"), MemoryStore)
    s = Store.from_url(f"sqlite://{tmp_path}/x.db")
    assert isinstance(s, SqliteStore) and s.path == f"{tmp_path}/x.db"
    assert Store.from_url("sqlite:///:memory:").path == ":memory:"
    # Kamailio's reading: everything after "sqlite://" is the path
    assert Store.from_url("sqlite:///etc/kamailio/kamailio.db").path == "/etc/kamailio/kamailio.db"
    assert Store.from_url("sqlite://presenced.db").path == "presenced.db"
    assert isinstance(Store.from_url("postgresql://u:p@h:5433/db"), PostgresStore)
    assert isinstance(Store.from_url("postgres://u:p@h/db"), PostgresStore)
    m = Store.from_url("mysql://kamailio:kamailiorw@db.example:3307/kamailio")
    assert isinstance(m, MysqlStore) and m.url == "mysql://kamailio@db.example:3307/kamailio"
    assert mysql_params("mysql://u:p%40ss@h/db") == {
        "host": "h",
        "port": 3306,
        "user": "u",
        "password": "p@ss",
        "database": "db",
    }
    with pytest.raises(ValueError, match="'oracle'"):
        Store.from_url("oracle://u:secret@h/db")
    try:
        Store.from_url("oracle://u:secret@h/db")
    except ValueError as exc:
        assert "secret" not in str(exc)


def test_table_names():
    names = schema.table_names({"presentity": "pres", "xcap": None})
    assert names["presentity"] == "pres" and names["xcap"] == "xcap"
    assert names["ext"] == "presenced_active_watchers_ext" and names["version"] == "version"
    assert schema.table_names({"active_watchers": "aw"})["ext"] == "presenced_aw_ext"
    with pytest.raises(ValueError, match="unknown table key"):
        schema.table_names({"presence": "x"})
    with pytest.raises(ValueError, match="invalid table name"):
        schema.table_names({"presentity": "x; DROP TABLE y"})


def test_redact_url():
    assert redact_url("postgresql://u:secret@127.0.0.1:1/x") == "postgresql://u@127.0.0.1:1/x"
    assert redact_url("mysql://root@h/db") == "mysql://root@h/db"
    assert redact_url("postgresql://h/db?user=u&password=secret") == "postgresql://h/db?user=u&password=***"
    assert redact_url("sqlite:///var/lib/p.db") == "sqlite:///var/lib/p.db"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:secret@127.0.0.1:1/x", "postgresql://u@127.0.0.1:1/x"),
        ("postgres://u:secret@127.0.0.1:1/x", "postgres://u@127.0.0.1:1/x"),
        ("mysql://u:secret@127.0.0.1:1/x", "mysql://u@127.0.0.1:1/x"),
        ("sqlite:///nonexistent-dir/secret/x.db", "sqlite:///nonexistent-dir/secret/x.db"),
    ],
)
async def test_connect_error_names_url_without_password(url, shown):
    store = Store.from_url(url)
    with pytest.raises(StoreError) as info:
        await store.connect()
    msg = str(info.value)
    assert msg.startswith(f"cannot connect to {shown}: ")
    if not url.startswith("sqlite"):
        assert "secret" not in msg
        assert "secret" not in repr(info.value.__cause__) and info.value.__suppress_context__
    assert store.url == shown


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
async def test_bad_password_is_not_echoed(dialect):
    base = PG_URL if dialect == "postgresql" else MYSQL_URL
    probe = await open_store(base, dialect)  # skips (or fails in CI) when the server is down
    await probe.close()
    scheme, rest = base.split("://", 1)
    hostpart = rest.split("@", 1)[-1]
    url = f"{scheme}://presenced_nouser:s3cr3tpw@{hostpart}"
    store = Store.from_url(url)
    try:
        await store.connect()
    except StoreError as exc:
        assert "s3cr3tpw" not in str(exc) and "presenced_nouser@" in str(exc)
    else:  # trust authentication may accept anyone
        await store.close()


async def test_not_connected_is_a_store_error(tmp_path):
    for url in (f"sqlite://{tmp_path}/x.db", PG_URL, MYSQL_URL, "memory"):
        store = Store.from_url(url)
        with pytest.raises(StoreError, match="not connected"):
            await store.load_watchers()
        assert await store.ping() is False
