"""Plain row types, one per table, with Kamailio's column names as field names.

Field order is the column order used by every backend (see `schema.py`), so a
row can be built positionally from a SELECT result.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class PresentityRow:
    """`presentity` (v5): one publication (one ETag)."""

    username: str
    domain: str
    event: str
    etag: str
    expires: int  # absolute Unix time; -1 = never expires
    received_time: int
    body: bytes
    sender: str = ""
    priority: int = 0
    ruid: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.username, self.domain, self.event, self.etag)


@dataclass(slots=True)
class ActiveWatcherRow:
    """`active_watchers` (v12): one subscription dialog."""

    presentity_uri: str
    watcher_username: str
    watcher_domain: str
    to_user: str
    to_domain: str
    event: str
    event_id: str | None
    to_tag: str
    from_tag: str
    callid: str
    local_cseq: int
    remote_cseq: int
    contact: str
    record_route: str | None
    expires: int
    status: int
    reason: str | None
    version: int
    socket_info: str
    local_contact: str
    from_user: str
    from_domain: str
    updated: int = -1
    updated_winfo: int = -1
    flags: int = 0
    user_agent: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.callid, self.to_tag, self.from_tag)


@dataclass(slots=True)
class WatcherRow:
    """`watchers` (v3): an authorisation decision."""

    presentity_uri: str
    watcher_username: str
    watcher_domain: str
    event: str
    status: int
    reason: str | None
    inserted_time: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.presentity_uri, self.watcher_username, self.watcher_domain, self.event)


@dataclass(slots=True)
class XcapRow:
    """`xcap` (v4): an XCAP document (pres-rules, pidf-manipulation, ...)."""

    username: str
    domain: str
    doc: bytes
    doc_type: int
    etag: str
    source: int
    doc_uri: str
    port: int


@dataclass(slots=True)
class SubscriberRow:
    """`subscriber` (v7, Kamailio's auth_db): one user's digest credentials.

    `ha1` is MD5(username:realm:password) and `ha1b` MD5(username@domain:realm:password),
    computed by kamctl with realm = domain. `password` is the clear text, or ''
    where only the hashes are kept.
    """

    username: str
    domain: str
    password: str = ""
    ha1: str = ""
    ha1b: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.username, self.domain)


@dataclass(slots=True)
class SubscriptionExtRow:
    """presenced's own per-subscription data (table `presenced_active_watchers_ext`).

    Keyed like `active_watchers`; Kamailio never reads it. `data` is JSON text.
    """

    callid: str
    to_tag: str
    from_tag: str
    data: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.callid, self.to_tag, self.from_tag)


@dataclass(slots=True)
class Batch:
    """Changes applied in one transaction: all deletes first, then all upserts.

    A PUBLISH refresh changes the ETag, i.e. the row key: put the old key in
    `presentity_deletes` and the new row in `presentity_upserts`.
    Deleting a watcher row also deletes its ext row.
    """

    presentity_upserts: list[PresentityRow] = field(default_factory=list)
    presentity_deletes: list[tuple[str, str, str, str]] = field(default_factory=list)
    watcher_upserts: list[ActiveWatcherRow] = field(default_factory=list)
    watcher_deletes: list[tuple[str, str, str]] = field(default_factory=list)
    auth_upserts: list[WatcherRow] = field(default_factory=list)
    auth_deletes: list[tuple[str, str, str, str]] = field(default_factory=list)
    ext_upserts: list[SubscriptionExtRow] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.presentity_upserts
            or self.presentity_deletes
            or self.watcher_upserts
            or self.watcher_deletes
            or self.auth_upserts
            or self.auth_deletes
            or self.ext_upserts
        )
