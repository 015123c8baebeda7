"""Persistent storage in Kamailio's presence tables.

`Store.from_url(url, tables=...)` picks a backend: SQLite (stdlib sqlite3 on a
worker thread), PostgreSQL (asyncpg), MySQL/MariaDB (asyncmy) or memory. All
of them read and write Kamailio 5.6's `presentity` (v5), `active_watchers`
(v12), `watchers` (v3) and `xcap` (v4) tables and auth_db's `subscriber` (v7),
plus presenced's own `presenced_active_watchers_ext`.
"""

from presenced.storage.base import Store, StoreError, redact_url
from presenced.storage.memory import MemoryStore
from presenced.storage.rows import (
    ActiveWatcherRow,
    Batch,
    PresentityRow,
    SubscriberRow,
    SubscriptionExtRow,
    WatcherRow,
    XcapRow,
)

__all__ = [
    "ActiveWatcherRow",
    "Batch",
    "MemoryStore",
    "PresentityRow",
    "Store",
    "StoreError",
    "SubscriberRow",
    "SubscriptionExtRow",
    "WatcherRow",
    "XcapRow",
    "redact_url",
]
