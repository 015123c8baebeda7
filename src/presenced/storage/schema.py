"""The tables presenced shares with Kamailio, described once and rendered per dialect.

Column names, types, defaults and key names follow Kamailio 5.6's schema
(presentity v5, active_watchers v12, watchers v3, xcap v4, subscriber v7 from
auth_db, version). Portable
types: ``id`` (auto-increment primary key), ``varchar``, ``int``, ``uint``,
``text``, ``blob``, ``mediumblob``.

Index names: MySQL scopes them per table, so Kamailio uses the bare key name
there (``presentity_idx``); PostgreSQL and SQLite scope them per schema, so
Kamailio prefixes the table name (``presentity_presentity_idx``). We do the same
with the configured table name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from presenced.storage.rows import (
    ActiveWatcherRow,
    PresentityRow,
    SubscriberRow,
    SubscriptionExtRow,
    WatcherRow,
    XcapRow,
)

DIALECTS = ("sqlite", "postgresql", "mysql")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    size: int | None = None
    null: bool = False
    default: str | int | None = None


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True, slots=True)
class TableDef:
    key: str  # logical name, also the default table name
    version: int | None  # row in `version`; None = presenced's own table
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...] = ()
    primary_key: tuple[str, ...] = ()  # composite PK (tables without an `id`)
    row_type: type | None = None

    @property
    def data_columns(self) -> tuple[str, ...]:
        """Columns mapped to row fields (every column except `id`)."""
        return tuple(c.name for c in self.columns if c.type != "id")


def _c(name: str, type_: str, size: int | None = None, *, null: bool = False, default=None) -> Column:
    return Column(name, type_, size, null, default)


ID = _c("id", "id")

PRESENTITY = TableDef(
    "presentity",
    5,
    (
        ID,
        _c("username", "varchar", 64),
        _c("domain", "varchar", 64),
        _c("event", "varchar", 64),
        _c("etag", "varchar", 128),
        _c("expires", "int"),
        _c("received_time", "int"),
        _c("body", "blob"),
        _c("sender", "varchar", 255),
        _c("priority", "int", default=0),
        _c("ruid", "varchar", 64, null=True),
    ),
    (
        Index("presentity_idx", ("username", "domain", "event", "etag"), unique=True),
        Index("ruid_idx", ("ruid",), unique=True),
        Index("presentity_expires", ("expires",)),
        Index("account_idx", ("username", "domain", "event")),
    ),
    row_type=PresentityRow,
)

ACTIVE_WATCHERS = TableDef(
    "active_watchers",
    12,
    (
        ID,
        _c("presentity_uri", "varchar", 255),
        _c("watcher_username", "varchar", 64),
        _c("watcher_domain", "varchar", 64),
        _c("to_user", "varchar", 64),
        _c("to_domain", "varchar", 64),
        _c("event", "varchar", 64, default="presence"),
        _c("event_id", "varchar", 64, null=True),
        _c("to_tag", "varchar", 128),
        _c("from_tag", "varchar", 128),
        _c("callid", "varchar", 255),
        _c("local_cseq", "int"),
        _c("remote_cseq", "int"),
        _c("contact", "varchar", 255),
        _c("record_route", "text", null=True),
        _c("expires", "int"),
        _c("status", "int", default=2),
        _c("reason", "varchar", 64, null=True),
        _c("version", "int", default=0),
        _c("socket_info", "varchar", 64),
        _c("local_contact", "varchar", 255),
        _c("from_user", "varchar", 64),
        _c("from_domain", "varchar", 64),
        _c("updated", "int"),
        _c("updated_winfo", "int"),
        _c("flags", "int", default=0),
        _c("user_agent", "varchar", 255, null=True, default=""),
    ),
    (
        Index("active_watchers_idx", ("callid", "to_tag", "from_tag"), unique=True),
        Index("active_watchers_expires", ("expires",)),
        Index("active_watchers_pres", ("presentity_uri", "event")),
        Index("updated_idx", ("updated",)),
        Index("updated_winfo_idx", ("updated_winfo", "presentity_uri")),
    ),
    row_type=ActiveWatcherRow,
)

WATCHERS = TableDef(
    "watchers",
    3,
    (
        ID,
        _c("presentity_uri", "varchar", 255),
        _c("watcher_username", "varchar", 64),
        _c("watcher_domain", "varchar", 64),
        _c("event", "varchar", 64, default="presence"),
        _c("status", "int"),
        _c("reason", "varchar", 64, null=True),
        _c("inserted_time", "int"),
    ),
    (
        Index("watcher_idx", ("presentity_uri", "watcher_username", "watcher_domain", "event"), unique=True),
        Index("time_status_idx", ("inserted_time", "status")),  # 6.x schema; harmless on 5.6
    ),
    row_type=WatcherRow,
)

XCAP = TableDef(
    "xcap",
    4,
    (
        ID,
        _c("username", "varchar", 64),
        _c("domain", "varchar", 64),
        _c("doc", "mediumblob"),
        _c("doc_type", "int"),
        _c("etag", "varchar", 128),
        _c("source", "int"),
        _c("doc_uri", "varchar", 255),
        _c("port", "int"),
    ),
    (
        Index("doc_uri_idx", ("doc_uri",), unique=True),
        Index("account_doc_type_idx", ("username", "domain", "doc_type")),
        Index("account_doc_type_uri_idx", ("username", "domain", "doc_type", "doc_uri")),
        Index("account_doc_uri_idx", ("username", "domain", "doc_uri")),
    ),
    row_type=XcapRow,
)

SUBSCRIBER = TableDef(
    "subscriber",
    7,
    (
        ID,
        _c("username", "varchar", 64, default=""),
        _c("domain", "varchar", 64, default=""),
        _c("password", "varchar", 64, default=""),
        _c("ha1", "varchar", 128, default=""),
        _c("ha1b", "varchar", 128, default=""),
    ),
    (
        Index("account_idx", ("username", "domain"), unique=True),
        Index("username_idx", ("username",)),
    ),
    row_type=SubscriberRow,
)

EXT = TableDef(
    "ext",
    None,
    (
        _c("callid", "varchar", 255),
        _c("to_tag", "varchar", 128),
        _c("from_tag", "varchar", 128),
        _c("data", "text"),
    ),
    primary_key=("callid", "to_tag", "from_tag"),
    row_type=SubscriptionExtRow,
)

VERSION = TableDef(
    "version",
    None,
    (
        ID,
        _c("table_name", "varchar", 32),
        _c("table_version", "uint", default=0),
    ),
    (Index("table_name_idx", ("table_name",), unique=True),),
)

KAMAILIO_TABLES = (PRESENTITY, ACTIVE_WATCHERS, WATCHERS, XCAP, SUBSCRIBER)
ALL_TABLES = {t.key: t for t in (*KAMAILIO_TABLES, EXT, VERSION)}

# Row dataclass field order must be the column order.
for _t in (PRESENTITY, ACTIVE_WATCHERS, WATCHERS, XCAP, SUBSCRIBER, EXT):
    assert tuple(f.name for f in fields(_t.row_type)) == _t.data_columns, _t.key


# --- table names --------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def table_names(tables: dict | None) -> dict[str, str]:
    """Configured table names, keyed by logical name.

    Keys: presentity, active_watchers, watchers, xcap (Kamailio's *_table
    parameters), subscriber (auth_db's user_table), plus presenced's optional ext (default
    ``presenced_<active_watchers>_ext``) and version (Kamailio's core
    ``version_table``, default ``version``).
    """
    names = {k: k for k in ("presentity", "active_watchers", "watchers", "xcap", "subscriber", "version")}
    ext = None
    for key, value in (tables or {}).items():
        if key not in ALL_TABLES:
            raise ValueError(f"unknown table key {key!r} (expected one of {', '.join(ALL_TABLES)})")
        if not value:
            continue
        if not isinstance(value, str) or not _IDENT.match(value):
            raise ValueError(f"invalid table name for {key}: {value!r}")
        if key == "ext":
            ext = value
        else:
            names[key] = value
    names["ext"] = ext or f"presenced_{names['active_watchers']}_ext"
    if not _IDENT.match(names["ext"]):
        raise ValueError(f"invalid table name for ext: {names['ext']!r}")
    return names


# --- DDL ----------------------------------------------------------------------------

_TYPES = {
    "sqlite": {
        "id": "INTEGER PRIMARY KEY NOT NULL",
        "varchar": "VARCHAR({size})",
        "int": "INTEGER",
        "uint": "INTEGER",
        "text": "TEXT",
        "blob": "BLOB",
        "mediumblob": "BLOB",
    },
    "postgresql": {
        "id": "SERIAL PRIMARY KEY NOT NULL",
        "varchar": "VARCHAR({size})",
        "int": "INTEGER",
        "uint": "INTEGER",
        "text": "TEXT",
        "blob": "BYTEA",
        "mediumblob": "BYTEA",
    },
    "mysql": {
        "id": "INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL",
        "varchar": "VARCHAR({size})",
        "int": "INT(11)",
        "uint": "INT UNSIGNED",
        "text": "TEXT",
        "blob": "BLOB",
        "mediumblob": "MEDIUMBLOB",
    },
}


def _column_sql(col: Column, dialect: str) -> str:
    sql = f"{col.name} {_TYPES[dialect][col.type].format(size=col.size)}"
    if col.type == "id":
        return sql
    if col.default is not None:
        sql += f" DEFAULT {col.default}" if isinstance(col.default, int) else f" DEFAULT '{col.default}'"
    if not col.null:
        sql += " NOT NULL"
    return sql


def create_table_sql(table: TableDef, name: str, dialect: str) -> list[str]:
    """Statements creating table `name` (IF NOT EXISTS) with its keys and indexes."""
    parts = [_column_sql(c, dialect) for c in table.columns]
    if table.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    after: list[str] = []
    for idx in table.indexes:
        cols = ", ".join(idx.columns)
        if dialect == "mysql":
            parts.append(f"{'UNIQUE KEY' if idx.unique else 'KEY'} {idx.name} ({cols})")
        elif idx.unique:
            parts.append(f"CONSTRAINT {name}_{idx.name} UNIQUE ({cols})")
        else:
            after.append(f"CREATE INDEX IF NOT EXISTS {name}_{idx.name} ON {name} ({cols})")
    body = ",\n    ".join(parts)
    create = f"CREATE TABLE IF NOT EXISTS {name} (\n    {body}\n)"
    if dialect == "mysql":
        # binary collation: keys compare exactly, as in the other backends
        create += " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    return [create, *after]


def drop_sql(names: dict[str, str]) -> list[str]:
    """DROP statements for every table presenced uses except `version` (tests, tools)."""
    keys = ("ext", "presentity", "active_watchers", "watchers", "xcap", "subscriber")
    return [f"DROP TABLE IF EXISTS {names[k]}" for k in keys]


# --- DML ----------------------------------------------------------------------------


def _ph(dialect: str, sql: str) -> str:
    """Turn `?` placeholders into the dialect's ($1.. or %s)."""
    if dialect == "sqlite":
        return sql
    if dialect == "mysql":
        return sql.replace("?", "%s")
    parts = sql.split("?")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))


def _upsert(dialect: str, name: str, cols: tuple[str, ...], keys: tuple[str, ...]) -> str:
    values = ", ".join("?" * len(cols))
    update = [c for c in cols if c not in keys]
    sql = f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({values})"
    if dialect == "mysql":
        sql += " ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in update)
    else:
        sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)
    return sql


class Queries:
    """Every statement a SQL backend runs, for one dialect and set of table names."""

    def __init__(self, dialect: str, names: dict[str, str]) -> None:
        assert dialect in DIALECTS
        self.dialect = dialect
        self.names = names
        p, a, w, x, e, v = (names[k] for k in ("presentity", "active_watchers", "watchers", "xcap", "ext", "version"))
        u = names["subscriber"]
        U = ", ".join(SUBSCRIBER.data_columns)
        P = ", ".join(PRESENTITY.data_columns)
        A = ", ".join(f"a.{c}" for c in ACTIVE_WATCHERS.data_columns)
        W = ", ".join(WATCHERS.data_columns)
        X = ", ".join(XCAP.data_columns)
        aw_join = (
            f"SELECT {A}, e.data FROM {a} a LEFT JOIN {e} e"
            " ON e.callid = a.callid AND e.to_tag = a.to_tag AND e.from_tag = a.from_tag"
        )
        aw_key = "callid = ? AND to_tag = ? AND from_tag = ?"
        q = {
            # presentity
            "presentities": f"SELECT {P} FROM {p} WHERE expires > ? OR expires = -1",
            # start-up restore in pages of fetch_rows (keyset on id; id comes last)
            "presentities_page": f"SELECT {P}, id FROM {p} WHERE (expires > ? OR expires = -1) AND id > ?"
            " ORDER BY id LIMIT ?",
            "watchers_active_page": f"SELECT {A}, e.data, a.id FROM {a} a LEFT JOIN {e} e"
            " ON e.callid = a.callid AND e.to_tag = a.to_tag AND e.from_tag = a.from_tag"
            " WHERE a.expires >= ? AND a.id > ? ORDER BY a.id LIMIT ?",
            "presentity": f"SELECT {P} FROM {p} WHERE username = ? AND domain = ? AND event = ?"
            " AND (expires > ? OR expires = -1) ORDER BY received_time, id",
            "find_etag": f"SELECT {P} FROM {p} WHERE username = ? AND domain = ? AND event = ? AND etag = ?",
            "presentity_upsert": _upsert(dialect, p, PRESENTITY.data_columns, PRESENTITY.indexes[0].columns),
            "presentity_delete": f"DELETE FROM {p} WHERE username = ? AND domain = ? AND event = ? AND etag = ?",
            "presentity_expire": f"DELETE FROM {p} WHERE expires > 0 AND expires < ?",
            # active_watchers (+ ext)
            "watchers_active": f"{aw_join} WHERE a.expires >= ?",
            "watchers_for": f"{aw_join} WHERE a.presentity_uri = ? AND a.event = ? AND a.expires >= ? ORDER BY a.id",
            "watcher": f"{aw_join} WHERE a.callid = ? AND a.to_tag = ? AND a.from_tag = ?",
            "watcher_upsert": _upsert(dialect, a, ACTIVE_WATCHERS.data_columns, ACTIVE_WATCHERS.indexes[0].columns),
            "watcher_delete": f"DELETE FROM {a} WHERE {aw_key}",
            "watcher_expire": f"DELETE FROM {a} WHERE expires < ?",
            "ext_upsert": _upsert(dialect, e, EXT.data_columns, EXT.primary_key),
            "ext_delete": f"DELETE FROM {e} WHERE {aw_key}",
            # presenced's own markers: ext rows with empty tags, never matched by a dialog
            "marker_get": f"SELECT data FROM {e} WHERE callid = ? AND to_tag = '' AND from_tag = ''",
            "ext_expire": f"DELETE FROM {e} WHERE EXISTS (SELECT 1 FROM {a} a WHERE a.callid = {e}.callid"
            f" AND a.to_tag = {e}.to_tag AND a.from_tag = {e}.from_tag AND a.expires < ?)",
            # watchers (authorisation)
            "auths": f"SELECT {W} FROM {w}",
            "auth_upsert": _upsert(dialect, w, WATCHERS.data_columns, WATCHERS.indexes[0].columns),
            # Kamailio's watchers cleaner: pending decisions older than a day
            "auth_expire": f"DELETE FROM {w} WHERE status = 2 AND inserted_time < ?",
            "auth_delete": f"DELETE FROM {w} WHERE presentity_uri = ? AND watcher_username = ?"
            " AND watcher_domain = ? AND event = ?",
            # xcap
            "xcap_get": f"SELECT {X} FROM {x} WHERE username = ? AND domain = ? AND doc_type = ? ORDER BY id LIMIT 1",
            "xcap_put": _upsert(dialect, x, XCAP.data_columns, ("doc_uri",)),
            "xcap_delete": f"DELETE FROM {x} WHERE username = ? AND domain = ? AND doc_type = ?",
            "xcap_all": f"SELECT {X} FROM {x} WHERE doc_type = ? ORDER BY id",
            # subscriber (auth_db)
            "subscriber_get": f"SELECT {U} FROM {u} WHERE username = ? AND domain = ? ORDER BY id LIMIT 1",
            "subscriber_all": f"SELECT {U} FROM {u} ORDER BY id",
            "subscriber_put": _upsert(dialect, u, SUBSCRIBER.data_columns, SUBSCRIBER.indexes[0].columns),
            "subscriber_delete": f"DELETE FROM {u} WHERE username = ? AND domain = ?",
            # version
            "version_get": f"SELECT table_version FROM {v} WHERE table_name = ?",
            "version_insert": f"INSERT INTO {v} (table_name, table_version) VALUES (?, ?)",
            "version_update": f"UPDATE {v} SET table_version = ? WHERE table_name = ?",
        }
        for key, sql in q.items():
            setattr(self, key, _ph(dialect, sql))

    def probe(self, table: TableDef) -> str:
        """A query that fails unless table has every column presenced uses."""
        return f"SELECT {', '.join(table.data_columns)} FROM {self.names[table.key]} WHERE 1 = 0"

    def create(self, table: TableDef) -> list[str]:
        return create_table_sql(table, self.names[table.key], self.dialect)
