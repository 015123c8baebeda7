"""MemoryStore: the Store interface over dicts (tests, `--db-url memory`).

Behaves like the SQL backends: same keys, same filters, same ordering; rows
are copied in and out so callers cannot alias stored state.
"""

from __future__ import annotations

import copy

from presenced.storage import schema
from presenced.storage.base import PENDING_AUTH_MAX_AGE, Store, StoreError, Subscription
from presenced.storage.rows import (
    ActiveWatcherRow,
    Batch,
    PresentityRow,
    SubscriberRow,
    SubscriptionExtRow,
    WatcherRow,
    XcapRow,
)

PKey = tuple[str, str, str, str]
AKey = tuple[str, str, str]


class MemoryStore(Store):
    def __init__(self, *, tables: dict | None = None) -> None:
        self.names = schema.table_names(tables)
        self.url = "memory"
        self._connected = False
        self._schema = False
        self.versions: dict[str, int] = {}
        # dicts keep insertion order, which stands in for the SQL `id` column
        self._pres: dict[PKey, PresentityRow] = {}
        self._pres_by_account: dict[tuple[str, str, str], dict[PKey, None]] = {}
        self._aw: dict[AKey, ActiveWatcherRow] = {}
        self._aw_by_pres: dict[tuple[str, str], dict[AKey, None]] = {}
        self._ext: dict[AKey, SubscriptionExtRow] = {}
        self._markers: dict[str, str] = {}
        self._auth: dict[PKey, WatcherRow] = {}
        self._xcap: dict[str, XcapRow] = {}  # by doc_uri (unique, as in the schema)
        self._subscribers: dict[tuple[str, str], SubscriberRow] = {}  # by (username, domain)

    # --- lifecycle --------------------------------------------------------------------

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False

    async def ensure_schema(self) -> None:
        self._check()
        for table in schema.KAMAILIO_TABLES:
            self.versions.setdefault(self.names[table.key], table.version)
        self.versions.setdefault(self.names["version"], 1)
        self._schema = True

    async def ping(self) -> bool:
        return self._connected

    def _check(self) -> None:
        if not self._connected:
            raise StoreError("memory: store is not connected")

    # --- index helpers ----------------------------------------------------------------

    def _pres_del(self, key: PKey) -> None:
        row = self._pres.pop(key, None)
        if row is None:
            return
        acc = key[:3]
        idx = self._pres_by_account.get(acc)
        if idx is not None:
            idx.pop(key, None)
            if not idx:
                del self._pres_by_account[acc]

    def _pres_put(self, row: PresentityRow) -> None:
        key = (row.username, row.domain, row.event, row.etag)
        self._pres[key] = copy.copy(row)
        self._pres_by_account.setdefault(key[:3], {})[key] = None

    def _aw_del(self, key: AKey) -> None:
        self._ext.pop(key, None)
        row = self._aw.pop(key, None)
        if row is None:
            return
        pk = (row.presentity_uri, row.event)
        idx = self._aw_by_pres.get(pk)
        if idx is not None:
            idx.pop(key, None)
            if not idx:
                del self._aw_by_pres[pk]

    def _aw_put(self, row: ActiveWatcherRow) -> None:
        key = (row.callid, row.to_tag, row.from_tag)
        old = self._aw.get(key)
        if old is not None and (old.presentity_uri, old.event) != (row.presentity_uri, row.event):
            idx = self._aw_by_pres[(old.presentity_uri, old.event)]
            idx.pop(key, None)
            if not idx:
                del self._aw_by_pres[(old.presentity_uri, old.event)]
        self._aw[key] = copy.copy(row)
        self._aw_by_pres.setdefault((row.presentity_uri, row.event), {})[key] = None

    def _sub(self, key: AKey) -> Subscription:
        ext = self._ext.get(key)
        return copy.copy(self._aw[key]), (copy.copy(ext) if ext is not None else None)

    # --- loads ------------------------------------------------------------------------

    async def load_presentities(self, now: int) -> list[PresentityRow]:
        self._check()
        return [copy.copy(r) for r in self._pres.values() if r.expires > now or r.expires == -1]

    async def load_active_watchers(self, now: int) -> list[Subscription]:
        self._check()
        return [self._sub(k) for k, r in self._aw.items() if r.expires >= now]

    async def load_watchers(self) -> list[WatcherRow]:
        self._check()
        return [copy.copy(r) for r in self._auth.values()]

    async def load_presentity(self, username: str, domain: str, event: str, now: int) -> list[PresentityRow]:
        self._check()
        rows = [self._pres[k] for k in self._pres_by_account.get((username, domain, event), ())]
        rows = [copy.copy(r) for r in rows if r.expires > now or r.expires == -1]
        rows.sort(key=lambda r: r.received_time)  # stable: ties keep insertion (id) order
        return rows

    async def load_subscriptions_for(self, presentity_uri: str, event: str, now: int) -> list[Subscription]:
        self._check()
        keys = self._aw_by_pres.get((presentity_uri, event), {})
        return [self._sub(k) for k in keys if self._aw[k].expires >= now]

    async def load_subscription(self, callid: str, to_tag: str, from_tag: str) -> Subscription | None:
        self._check()
        key = (callid, to_tag, from_tag)
        return self._sub(key) if key in self._aw else None

    async def find_etag(self, username: str, domain: str, event: str, etag: str) -> PresentityRow | None:
        self._check()
        row = self._pres.get((username, domain, event, etag))
        return None if row is None else copy.copy(row)

    # --- writes -----------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        self._check()
        for key in batch.presentity_deletes:
            self._pres_del(tuple(key))
        for key in batch.watcher_deletes:
            self._aw_del(tuple(key))
        for key in batch.auth_deletes:
            self._auth.pop(tuple(key), None)
        for row in batch.presentity_upserts:
            self._pres_put(row)
        for row in batch.watcher_upserts:
            self._aw_put(row)
        for row in batch.auth_upserts:
            self._auth[(row.presentity_uri, row.watcher_username, row.watcher_domain, row.event)] = copy.copy(row)
        for row in batch.ext_upserts:
            self._ext[(row.callid, row.to_tag, row.from_tag)] = copy.copy(row)

    async def delete_expired(self, now: int) -> tuple[int, int]:
        self._check()
        pres = [k for k, r in self._pres.items() if 0 < r.expires < now]
        for k in pres:
            self._pres_del(k)
        subs = [k for k, r in self._aw.items() if r.expires < now]
        for k in subs:
            self._aw_del(k)
        for k in [k for k, r in self._auth.items() if r.status == 2 and r.inserted_time < now - PENDING_AUTH_MAX_AGE]:
            del self._auth[k]
        return len(pres), len(subs)

    # --- xcap -------------------------------------------------------------------------

    async def get_xcap(self, username: str, domain: str, doc_type: int) -> XcapRow | None:
        self._check()
        for r in self._xcap.values():
            if r.username == username and r.domain == domain and r.doc_type == doc_type:
                return copy.copy(r)
        return None

    async def load_xcap(self, doc_type: int) -> list[XcapRow]:
        self._check()
        return [copy.copy(r) for r in self._xcap.values() if r.doc_type == doc_type]

    async def put_xcap(self, row: XcapRow) -> None:
        self._check()
        self._xcap[row.doc_uri] = copy.copy(row)

    async def delete_xcap(self, username: str, domain: str, doc_type: int) -> int:
        self._check()
        keys = [
            k for k, r in self._xcap.items() if r.username == username and r.domain == domain and r.doc_type == doc_type
        ]
        for k in keys:
            del self._xcap[k]
        return len(keys)

    # --- subscriber (auth_db) ---------------------------------------------------------

    async def get_subscriber(self, username: str, domain: str) -> SubscriberRow | None:
        self._check()
        row = self._subscribers.get((username, domain))
        return copy.copy(row) if row is not None else None

    async def load_subscribers(self) -> list[SubscriberRow]:
        self._check()
        return [copy.copy(r) for r in self._subscribers.values()]

    async def put_subscriber(self, row: SubscriberRow) -> None:
        self._check()
        # an update keeps the row's place (its id), as the SQL upsert does
        self._subscribers[(row.username, row.domain)] = copy.copy(row)

    async def delete_subscriber(self, username: str, domain: str) -> int:
        self._check()
        return 1 if self._subscribers.pop((username, domain), None) is not None else 0

    async def get_marker(self, name: str) -> str | None:
        self._check()
        return self._markers.get(name)

    async def set_marker(self, name: str, value: str) -> None:
        self._check()
        self._markers[name] = value

    async def drop_tables(self) -> None:
        self._markers.clear()
        self._pres.clear()
        self._pres_by_account.clear()
        self._aw.clear()
        self._aw_by_pres.clear()
        self._ext.clear()
        self._auth.clear()
        self._xcap.clear()
        self._subscribers.clear()
