"""The records the presence core keeps: publications and subscriptions.

Field names follow Kamailio's `presentity` and `active_watchers` columns
where one exists, so storage backends map them one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from presenced.transaction.layer import Address


# Explicit __init__s: a dataclass's generated one is interpreted Python even
# in a mypyc-compiled module (one record per PUBLISH / new dialog).
@dataclass(slots=True, init=False)
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

    def __init__(
        self,
        etag: str,
        pres_uri: str,
        entity: str,
        event: str,
        body: bytes,
        content_type: str,
        expires_at: float,
        received: float,
        seq: int,
        sender: str | None = None,
        priority: int = 0,
    ) -> None:
        self.etag = etag
        self.pres_uri = pres_uri
        self.entity = entity
        self.event = event
        self.body = body
        self.content_type = content_type
        self.expires_at = expires_at
        self.received = received
        self.seq = seq
        self.sender = sender
        self.priority = priority


@dataclass(slots=True, init=False)
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
    route_set: tuple[str, ...] | list[str]
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
    accept: tuple[str, ...] | list[str] | None = None  # shared between subscriptions: never changed in place
    created: float = 0.0
    watcher_event: str = "subscribe"   # RFC 3857 event of the last watcher transition
    winfo_full_sent: bool = False
    notifies_sent: int = 0
    last_notify_status: int | None = None
    notify_origin: float | None = None  # when the oldest state change not yet NOTIFIED was accepted (metrics only)
    extra: dict | None = None          # created on first use (most subscriptions never need one)

    def __init__(
        self,
        call_id: str,
        remote_tag: str,
        local_tag: str,
        event: str,
        event_id: str | None,
        event_header: str,
        pres_uri: str,
        entity: str,
        watcher_uri: str,
        watcher_display: str | None,
        remote_target: str,
        route_set: tuple[str, ...] | list[str],
        to_header: str,
        from_header: str,
        remote_cseq: int,
        local_cseq: int,
        expires_at: float,
        status: str = "active",
        reason: str | None = None,
        version: int = 0,
        source: Address | None = None,
        local_host: str = "",
        local_port: int = 0,
        local_contact: str = "",
        accept: tuple[str, ...] | list[str] | None = None,
        created: float = 0.0,
        watcher_event: str = "subscribe",
        winfo_full_sent: bool = False,
        notifies_sent: int = 0,
        last_notify_status: int | None = None,
        notify_origin: float | None = None,
        extra: dict | None = None,
    ) -> None:
        self.call_id = call_id
        self.remote_tag = remote_tag
        self.local_tag = local_tag
        self.event = event
        self.event_id = event_id
        self.event_header = event_header
        self.pres_uri = pres_uri
        self.entity = entity
        self.watcher_uri = watcher_uri
        self.watcher_display = watcher_display
        self.remote_target = remote_target
        self.route_set = route_set
        self.to_header = to_header
        self.from_header = from_header
        self.remote_cseq = remote_cseq
        self.local_cseq = local_cseq
        self.expires_at = expires_at
        self.status = status
        self.reason = reason
        self.version = version
        self.source = source
        self.local_host = local_host
        self.local_port = local_port
        self.local_contact = local_contact
        self.accept = accept
        self.created = created
        self.watcher_event = watcher_event
        self.winfo_full_sent = winfo_full_sent
        self.notifies_sent = notifies_sent
        self.last_notify_status = last_notify_status
        self.notify_origin = notify_origin
        self.extra = extra

    @property
    def key(self) -> tuple:
        return (self.call_id, self.local_tag, self.remote_tag, self.event, self.event_id)

    @property
    def watcher_id(self) -> str:
        """Stable RFC 3858 watcher id for this subscription."""
        return "w" + self.local_tag


class Groups:
    """key -> the records under that key (a presentity's publications or
    watchers), by member key.

    Most presentities have one publication and one watcher, and a dict per
    key costs ~250 bytes: a key's only record is stored bare and a second
    record turns it into a dict (bench/state_memory.py). `get(key, default)`
    returns a mapping either way (a new one for a bare record), so change the
    groups through `add`/`discard`/`rekey`, never through what `get` returned.
    """

    __slots__ = ("_d", "_member")

    def __init__(self, member: Callable[[Any], Any]) -> None:
        self._d: dict[Any, Any] = {}
        self._member = member  # record -> its member key

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: Any) -> bool:
        return key in self._d

    def __iter__(self) -> Iterator[Any]:
        return iter(self._d)

    def get(self, key: Any, default: Any = None) -> Any:
        v = self._d.get(key)
        if v is None:
            return default
        if type(v) is dict:
            return v
        return {self._member(v): v}

    def records(self, key: Any) -> Sequence[Any]:
        """The records under key (a new sequence: safe to change the groups while iterating)."""
        v = self._d.get(key)
        if v is None:
            return ()
        if type(v) is dict:
            return list(v.values())
        return (v,)

    def count(self, key: Any) -> int:
        v = self._d.get(key)
        if v is None:
            return 0
        return len(v) if type(v) is dict else 1

    def add(self, key: Any, member: Any, rec: Any) -> None:
        d = self._d
        v = d.get(key)
        if v is None:
            d[key] = rec
        elif type(v) is dict:
            v[member] = rec
        else:
            old = self._member(v)
            d[key] = {member: rec} if old == member else {old: v, member: rec}

    def discard(self, key: Any, member: Any, rec: Any = None) -> None:
        """Remove `member` from key's group (only if it is `rec`, when given)."""
        d = self._d
        v = d.get(key)
        if v is None:
            return
        if type(v) is dict:
            cur = v.get(member)
            if cur is None or (rec is not None and cur is not rec):
                return
            del v[member]
            if len(v) == 1:
                d[key] = next(iter(v.values()))
            elif not v:
                del d[key]
        elif (v is rec) if rec is not None else (self._member(v) == member):
            del d[key]

    def rekey(self, key: Any, old: Any, new: Any, rec: Any) -> None:
        """`rec`'s member key changed from old to new (it moves to the end, as re-adding does)."""
        v = self._d.get(key)
        if type(v) is dict:
            v.pop(old, None)
            v[new] = rec
        elif v is not rec:
            self.add(key, new, rec)

    def clear(self) -> None:
        self._d.clear()
