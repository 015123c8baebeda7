"""The storage interface, URL handling and errors."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit

from presenced.storage.rows import (
    ActiveWatcherRow,
    Batch,
    PresentityRow,
    SubscriberRow,
    SubscriptionExtRow,
    WatcherRow,
    XcapRow,
)

Subscription = tuple[ActiveWatcherRow, SubscriptionExtRow | None]

_SECRET_PARAMS = {"password", "pass", "passwd", "pwd"}

PENDING_AUTH_MAX_AGE = 86400  # Kamailio deletes pending `watchers` rows after a day


class StoreError(Exception):
    """A storage operation failed. The message names the URL without its password."""


def redact_url(url: str) -> str:
    """`url` without its password (in the authority or a ?password= parameter)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<invalid url>"
    out = url
    if password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        out = out.replace(parts.netloc, f"{user}@{hostport}" if user else hostport, 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*")
            out = out.replace("?" + parts.query, "?" + query, 1)
    return out


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class Store(abc.ABC):
    """Where presenced keeps publications, subscriptions, authorisations and XCAP documents.

    Every method raises `StoreError` on a database failure. Times are Unix seconds.
    """

    url: str  # redacted: safe for logs and messages

    @classmethod
    def from_url(cls, url: str, *, tables: dict | None = None) -> Store:
        """A store for `url` (not yet connected).

        sqlite:///path (path as Kamailio reads it: everything after ``sqlite://``,
        so ``sqlite:///var/lib/x.db`` is absolute), sqlite:///:memory:,
        postgresql:// or postgres://user:pass@host:port/db, mysql://user:pass@host:port/db,
        memory (or memory://). `tables` maps presentity/active_watchers/watchers/xcap/
        subscriber (and optionally ext/version) to table names.
        """
        scheme = url.split(":", 1)[0].lower() if ":" in url else url.lower()
        if scheme == "memory":
            from presenced.storage.memory import MemoryStore

            return MemoryStore(tables=tables)
        if scheme == "sqlite":
            from presenced.storage.sqlite import SqliteStore

            return SqliteStore(url, tables=tables)
        if scheme in ("postgresql", "postgres"):
            from presenced.storage.postgres import PostgresStore

            return PostgresStore(url, tables=tables)
        if scheme == "mysql":
            from presenced.storage.mysql import MysqlStore

            return MysqlStore(url, tables=tables)
        raise ValueError(
            f"unknown database URL scheme {scheme!r} in {redact_url(url)!r} "
            "(expected sqlite, postgresql, postgres, mysql or memory)"
        )

    # --- lifecycle --------------------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ensure_schema(self) -> None:
        """Create missing tables and their `version` rows; check versions of existing ones."""

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    # --- bulk load (start-up) ---------------------------------------------------------

    @abc.abstractmethod
    async def load_presentities(self, now: int) -> list[PresentityRow]:
        """Rows with expires > now or expires = -1."""

    @abc.abstractmethod
    async def load_active_watchers(self, now: int) -> list[Subscription]:
        """Rows with expires >= now, each with its ext row (or None)."""

    @abc.abstractmethod
    async def load_watchers(self) -> list[WatcherRow]: ...

    async def page_presentities(self, now: int, batch: int) -> AsyncIterator[list[PresentityRow]]:
        """`load_presentities` in pages of at most `batch` rows (`fetch_rows`), so a
        large table is never one huge result set."""
        yield await self.load_presentities(now)

    async def page_active_watchers(self, now: int, batch: int) -> AsyncIterator[list[Subscription]]:
        """`load_active_watchers` in pages of at most `batch` rows."""
        yield await self.load_active_watchers(now)

    # --- writes -----------------------------------------------------------------------

    @abc.abstractmethod
    async def write(self, batch: Batch) -> None:
        """Apply `batch` in one transaction: deletes, then upserts."""

    @abc.abstractmethod
    async def delete_expired(self, now: int) -> tuple[int, int]:
        """Delete presentity rows with 0 < expires < now, active_watchers rows with
        expires < now (and their ext rows) and `watchers` rows pending since before
        now - PENDING_AUTH_MAX_AGE. Returns (presentities, active_watchers) deleted."""

    # --- DB-only lookups --------------------------------------------------------------

    @abc.abstractmethod
    async def load_presentity(self, username: str, domain: str, event: str, now: int) -> list[PresentityRow]:
        """Unexpired publications of one presentity and event, oldest received first."""

    @abc.abstractmethod
    async def load_subscriptions_for(self, presentity_uri: str, event: str, now: int) -> list[Subscription]:
        """Subscriptions (expires >= now) to `presentity_uri` for `event`, oldest first."""

    @abc.abstractmethod
    async def load_subscription(self, callid: str, to_tag: str, from_tag: str) -> Subscription | None:
        """One subscription by dialog id, expired or not."""

    @abc.abstractmethod
    async def find_etag(self, username: str, domain: str, event: str, etag: str) -> PresentityRow | None:
        """The publication with this ETag for that presentity and event, expired or
        not (looked up through Kamailio's unique presentity_idx, so no index of
        our own has to be kept up to date on every PUBLISH)."""

    # --- xcap -------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_xcap(self, username: str, domain: str, doc_type: int) -> XcapRow | None:
        """The first (lowest id) document of that type for the user."""

    @abc.abstractmethod
    async def load_xcap(self, doc_type: int) -> list[XcapRow]:
        """Every document of one type, oldest first (pres-rules cache at start-up)."""
        raise NotImplementedError

    @abc.abstractmethod
    async def put_xcap(self, row: XcapRow) -> None:
        """Insert, or replace the row with the same doc_uri (doc_uri is unique in Kamailio's schema)."""

    @abc.abstractmethod
    async def delete_xcap(self, username: str, domain: str, doc_type: int) -> int: ...

    # --- subscriber (auth_db) ---------------------------------------------------------

    @abc.abstractmethod
    async def get_subscriber(self, username: str, domain: str) -> SubscriberRow | None:
        """The user's credentials (username and domain compared as stored)."""

    @abc.abstractmethod
    async def load_subscribers(self) -> list[SubscriberRow]:
        """Every row, oldest first (the digest credential cache)."""

    @abc.abstractmethod
    async def put_subscriber(self, row: SubscriberRow) -> None:
        """Insert, or replace password/ha1/ha1b of the row with the same username and domain."""

    @abc.abstractmethod
    async def delete_subscriber(self, username: str, domain: str) -> int:
        """Delete the user's row; returns how many rows went (0 or 1)."""

    # --- markers (presenced's own small state, e.g. "the last stop was clean") --------

    @abc.abstractmethod
    async def get_marker(self, name: str) -> str | None: ...

    @abc.abstractmethod
    async def set_marker(self, name: str, value: str) -> None: ...

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
