"""The records the presence core keeps: publications and subscriptions.

Field names follow Kamailio's `presentity` and `active_watchers` columns
where one exists, so storage backends map them one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from presenced.transaction.layer import Address


@dataclass(slots=True)
class Publication:
    etag: str
    pres_uri: str          # presentity AoR key (sip:user@host)
    entity: str            # presentity URI as published (Request-URI)
    event: str             # package key, e.g. 'presence', 'dialog;sla'
    body: bytes
    content_type: str
    expires_at: float
    received: float
    seq: int               # arrival order, the tie-breaker for retrieve_order
    sender: str | None = None
    priority: int = 0
    timer: Any = None


@dataclass(slots=True)
class Subscription:
    # dialog identity
    call_id: str
    remote_tag: str        # From-tag of the SUBSCRIBE
    local_tag: str         # our To-tag
    event: str             # package key
    event_id: str | None
    event_header: str      # value for the NOTIFY Event header
    # who and what
    pres_uri: str          # presentity AoR key
    entity: str            # Request-URI as received (for bodies)
    watcher_uri: str       # watcher identity (From URI, or handle_subscribe(watcher_uri))
    watcher_display: str | None
    # dialog state for the NOTIFYs we send (RFC 3261 §12)
    remote_target: str
    route_set: list[str]
    to_header: str         # the SUBSCRIBE's From, becomes our NOTIFY To
    from_header: str       # the SUBSCRIBE's To + our tag, becomes our NOTIFY From
    remote_cseq: int
    local_cseq: int
    expires_at: float
    status: str = "active"  # active | pending | terminated
    reason: str | None = None
    version: int = 0       # next body version for versioned packages
    source: Address | None = None
    local_host: str = ""
    local_port: int = 0
    local_contact: str = ""
    accept: list[str] | None = None
    created: float = 0.0
    timer: Any = None
    watcher_event: str = "subscribe"   # RFC 3857 event of the last watcher transition
    winfo_full_sent: bool = False
    notifies_sent: int = 0
    last_notify_status: int | None = None
    notify_origin: float | None = None  # when the oldest state change not yet NOTIFIED was accepted (metrics only)
    extra: dict | None = None          # created on first use (most subscriptions never need one)

    @property
    def key(self) -> tuple:
        return (self.call_id, self.local_tag, self.remote_tag, self.event, self.event_id)

    @property
    def watcher_id(self) -> str:
        """Stable RFC 3858 watcher id for this subscription."""
        return "w" + self.local_tag
