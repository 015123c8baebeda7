"""The presence engine: PUBLISH (RFC 3903), SUBSCRIBE/NOTIFY (RFC 6665).

Event-independent: everything package-specific goes through the
`EventPackage` found in the registry. Sans-I/O: time comes in as `now`,
NOTIFYs leave through the transaction layer's outbox, and every expiry is a
deadline in the shared TimerHeap (no periodic table scans).
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from functools import partial
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable

from presenced.core.journal import Journal
from presenced.core.state import Groups, Publication, Subscription
from presenced.events.base import BodyError, EventPackage, PublicationView, VersionedBody
from presenced.events.registry import EventRegistry
from presenced.sip.errors import SipParseError
from presenced.sip.message import Request, Response
from presenced.sip.tokens import token_hex, token_urlsafe
from presenced.sip.uri import parse_uri
from presenced.transaction.layer import Address, TransactionLayer, new_branch, share, shared_address, udp_address
from presenced.transaction.timers import DelayQueue, TimerHeap

log = logging.getLogger("presenced.engine")

UDP_MTU_LIMIT = 1300  # RFC 3261 §18.1.1
NO_TCP_MEMORY = 300.0  # seconds a watcher that refused TCP gets its large NOTIFYs over UDP
HARD_STATE_SECONDS = 10 * 365 * 86400  # "never expires" (Kamailio stores expires = -1)


# Explicit __init__s (one of each per request): a dataclass's generated one
# is interpreted Python even in a mypyc-compiled module.
@dataclass(slots=True, init=False)
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    to_tag: str | None

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None,
                 body: bytes = b"", to_tag: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = [] if headers is None else headers
        self.body = body
        self.to_tag = to_tag


@dataclass(slots=True, init=False)
class RequestContext:
    """Where a request came from and which local socket received it."""

    source: Address
    local_host: str
    local_port: int
    identity: str | None  # authenticated sip:user@domain, when digest auth ran

    def __init__(self, source: Address, local_host: str, local_port: int, identity: str | None = None) -> None:
        self.source = source
        self.local_host = local_host
        self.local_port = local_port
        self.identity = identity


def _opt(cfg: Any, section: str, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    sec = getattr(cfg, section, None)
    return getattr(sec, name, default) if sec is not None else default


# Values every record would otherwise hold its own copy of (memory,
# bench/state_memory.py): Accept lists repeat.
_ACCEPTS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _shared_accept(accept: list[str] | None) -> tuple[str, ...] | None:
    if accept is None:
        return None
    t = tuple(accept)
    return share(_ACCEPTS, t, t, 1024)


def _entity(uri_text: str, pres_uri: str) -> str:
    # The Request-URI usually is the presentity key itself: hold one string.
    return pres_uri if uri_text == pres_uri else uri_text


def _etag_of(pub: Publication) -> str:
    return pub.etag


def _key_of(sub: Subscription) -> tuple:
    return sub.key


def new_tag() -> str:
    return token_hex(8)


def new_etag() -> str:
    # 96 random bits: unguessable and, in practice, unique across restarts.
    # The ".0" tail keeps Kamailio able to refresh it on a shared database: its
    # presence module parses a counter after the last dot and answers 500 if none.
    return "a" + token_urlsafe(12) + ".0"


class PresenceEngine:
    def __init__(
        self,
        registry: EventRegistry,
        transactions: TransactionLayer,
        timers: TimerHeap,
        cfg: Any = None,
    ) -> None:
        self.registry = registry
        self.tx = transactions
        self.timers = timers
        self.cfg = cfg
        self.min_expires = int(_opt(cfg, "presence", "min_expires", 0))
        self.max_expires = int(_opt(cfg, "presence", "max_expires", 3600)) or 3600
        if self.min_expires > self.max_expires:
            self.min_expires = self.max_expires
        self.min_expires_action = int(_opt(cfg, "presence", "min_expires_action", 1))
        self.expires_offset = max(0, int(_opt(cfg, "presence", "expires_offset", 0)))
        self.subs_respond_200 = int(_opt(cfg, "presence", "subs_respond_200", 1))
        self.server_address = str(_opt(cfg, "presence", "server_address", "") or "")
        self.timeout_rm_subs = int(_opt(cfg, "presence", "timeout_rm_subs", 1))
        self.send_fast_notify = int(_opt(cfg, "presence", "send_fast_notify", 1))
        self.force_active = int(_opt(cfg, "presence_xml", "force_active", 0))
        self.retrieve_order = int(_opt(cfg, "presence", "retrieve_order", 0))
        self.force_delete = int(_opt(cfg, "presence", "force_delete", 0))
        self.sip_uri_match = int(_opt(cfg, "presence", "sip_uri_match", 0))
        # state
        # (pres_uri, package key) -> publications by etag / subscriptions by dialog key
        self.publications = Groups(_etag_of)
        self.etags: dict[str, Publication] = {}
        self.subs_by_dialog: dict[tuple, Subscription] = {}
        self.subs_by_presentity = Groups(_key_of)
        self.watchers: dict[tuple[str, str, str], tuple[str, str | None]] = {}
        # When each decision was made (inserted_time), and the pending ones by
        # (presentity, package): a pending watcher without a dialog is "waiting".
        self.watcher_since: dict[tuple[str, str, str], float] = {}
        self._pending_watchers: dict[tuple[str, str], set[str]] = {}
        # The winfo id a waiting watcher's ended subscription had, so that
        # full and partial watcher-info documents name it alike (RFC 3858 §4).
        self._waiting_ids: dict[tuple[str, str, str], str] = {}
        self._composed: dict[tuple[str, str], VersionedBody | None] = {}
        self._key_cache: dict[str, str] = {}
        # Memory (bench/state_memory.py): one bound method per engine instead of one per
        # armed timer, and one local Contact string per listening address.
        self._pub_expired_cb = self._publication_deadline
        self._sub_expired_cb = self._subscription_deadline
        # Expiry deadlines mostly arrive in order (one Expires value for most
        # clients): those wait in a queue (~60 bytes each) instead of the heap
        # (~100); an earlier deadline than the queue's last goes to the heap.
        # Entries name the record (ETag, dialog key), never hold it: a removed
        # one would otherwise live on until its old deadline (an un-SUBSCRIBEd
        # dialog for the Expires it once had), GC-tracked all that time.
        # A queue head whose record is gone or was refreshed to a later
        # deadline is dropped unseen (DelayQueue `live`): no wake-up for it.
        self._pub_expiry = DelayQueue(timers, self._pub_expired_cb, live=self._publication_due)
        self._sub_expiry = DelayQueue(timers, self._sub_expired_cb, live=self._subscription_due)
        self._contact_cache: dict[tuple[str, int, str, bool], str] = {}
        # Several workers: our Contact names the presentity's user, so in-dialog
        # requests (Request-URI = that Contact) carry what the kernel steers by
        # (core/partition.py). One string per presentity, shared by its dialogs.
        self.contact_user = False
        self._user_contacts: dict[tuple[str, str], str] = {}
        self._fanout: deque[tuple[Subscription, EventPackage]] = deque()
        self._fanout_pending: set[tuple] = set()
        self._pub_seq = 0
        # Set by the runtime when a store is configured; None = nothing to persist.
        self.journal: Journal | None = None
        # time.time() - now: converts the engine's monotonic clock to Unix time for storage.
        self.wall_offset = 0.0
        # Non-PUBLISH state sources (e.g. the registrar for `reg`), by package key:
        # provider(pres_uri, entity) -> body or None.
        self.state_providers: dict[str, Callable[[str, str], VersionedBody | None]] = {}
        # hooks
        # Several worker processes (core/partition.py): makes the local tag of a
        # new dialog so that its in-dialog requests reach this presentity's owner.
        self.dialog_tag: Callable[[str], str] | None = None
        self.authorize: Callable[[str, str, str, Subscription], tuple[str, str | None]] | None = None
        self.notify_reply_hook: Callable[[Subscription, Response | None], bool] | None = None
        # DB-only modes (runtime/shared.py): asked before a record expires; False
        # means "not yet": the runtime checks the database and calls back.
        self.expiry_guard: Callable[[Publication | Subscription], bool] | None = None
        # The time of the event being handled, set by every entry point (SipCore
        # receive, timers, transport failures; the runtime before DB-only reloads).
        # Hooks without a `now` argument (the authorizer) read it here.
        self.now = 0.0
        # Metrics: on_notify_latency(event_key, seconds) is called when a NOTIFY
        # carrying state a PUBLISH changed is handed to the transaction layer,
        # with the time since that PUBLISH was accepted (fan-out queueing
        # included). None (the default) = nothing is stamped or measured.
        self.on_notify_latency: Callable[[str, float], None] | None = None
        # (pres_uri, package key, now) after a state change's NOTIFYs are queued; the
        # authorizer uses it to re-authorize watchers when the published sphere changes.
        self.on_publication_changed: Callable[[str, str, float], None] | None = None
        # (pres_uri, now) when a new subscription was authorized by pres-rules:
        # the runtime re-reads that presentity's rules from the database.
        self.on_new_watcher: Callable[[str, float], None] | None = None
        # (host, port) of UDP watchers that took no TCP connection -> until when
        # their large NOTIFYs skip TCP (tcp_refused).
        self._no_tcp: dict[tuple[str, int], float] = {}
        self.stats: dict[str, int] = {
            "notify_sent": 0, "notify_failed": 0, "notify_timeout": 0, "notify_udp_fallbacks": 0,
            "publications_expired": 0, "subscriptions_expired": 0,
        }

    # ------------------------------------------------------------------ utils
    def presentity_key(self, uri_text: str) -> str:
        key = self._key_cache.get(uri_text)
        if key is not None:
            return key
        key = self._presentity_key(uri_text)
        if len(self._key_cache) > 32768:
            self._key_cache.clear()
        self._key_cache[uri_text] = key
        return key

    def _presentity_key(self, uri_text: str) -> str:
        uri = parse_uri(uri_text)
        if uri.scheme not in ("sip", "sips", "pres", "im", "tel"):
            raise SipParseError("Unsupported URI Scheme", status=416)
        key = uri.aor()
        return key.lower() if self.sip_uri_match else key

    def _clamp_expires(self, requested: int | None, default: int) -> int:
        # max_expires bounds what a client asks for; a request that asks
        # nothing gets its package's default as is (reg's is RFC 3680's 3761)
        if requested is None:
            return default
        return min(requested, self.max_expires)

    def allow_events(self) -> str:
        return self.registry.allow_events()

    def local_contact(self, ctx: RequestContext, sips: bool = False) -> str:
        if self.server_address:
            return self.server_address
        transport = ctx.source.transport
        ck = (ctx.local_host, ctx.local_port, transport, sips)
        c = self._contact_cache.get(ck)
        if c is not None:
            return c
        host = ctx.local_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        if sips and transport in ("tls", "wss"):
            # RFC 3261 §12.1.1: a dialog set up by a sips: request gets a sips:
            # Contact (RFC 5630: no transport=tls; RFC 7118: sips+ws is WSS).
            c = f"sips:{host}:{ctx.local_port}" + (";transport=ws" if transport == "wss" else "")
        else:
            c = f"sip:{host}:{ctx.local_port}"
            if transport != "udp":
                c += f";transport={transport}"
        if len(self._contact_cache) < 256:
            self._contact_cache[ck] = c
        return c

    def _dialog_contact(self, ctx: RequestContext, req: Request) -> str:
        c = self.local_contact(ctx, req.uri_text[:5].lower() == "sips:")
        if not self.contact_user or self.server_address:
            return c
        user = req.uri.user
        if not user:
            return c
        key = (user, c)
        uc = self._user_contacts.get(key)
        if uc is None:
            colon = c.find(":") + 1
            uc = c[:colon] + user + "@" + c[colon:]
            if len(self._user_contacts) >= 65536:
                self._user_contacts.clear()
            self._user_contacts[key] = uc
        return uc

    def _lookup_package(self, req: Request) -> EventPackage | Reply:
        try:
            ev = req.event
        except SipParseError as e:
            return Reply(400, e.reason)
        if ev is None:
            return Reply(489, "Bad Event", [("Allow-Events", self.allow_events())])
        pkg = self.registry.lookup(ev)
        if pkg is None:
            return Reply(489, "Bad Event", [("Allow-Events", self.allow_events())])
        return pkg

    # --------------------------------------------------------------- PUBLISH
    def handle_publish(self, req: Request, ctx: RequestContext, now: float, sender_uri: str | None = None) -> Reply:
        """RFC 3903 §6, step by step."""
        pkg = self._lookup_package(req)
        if isinstance(pkg, Reply):
            return pkg
        if not pkg.publishable or pkg.template is not None:
            return Reply(489, "Bad Event", [("Allow-Events", self.allow_events())])
        try:
            pres_uri = self.presentity_key(req.uri_text)
            if_match = req.sip_if_match
            requested = req.expires
        except SipParseError as e:
            return Reply(e.status, e.reason)
        expires = self._clamp_expires(requested, pkg.default_expires)
        if 0 < expires < self.min_expires:
            return Reply(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))])
        body = req.body
        ctype = None
        if body:
            try:
                ct = req.content_type
            except SipParseError as e:
                return Reply(400, e.reason)
            if ct is None:
                return Reply(400, "Missing Content-Type")
            ctype = ct.mime
            if ctype not in pkg.content_types:
                return Reply(415, "Unsupported Media Type", [("Accept", ", ".join(pkg.content_types))])
            coding = req.get("content-encoding")
            if coding is not None and coding.strip().lower() not in ("", "identity"):
                # RFC 3261 §8.2.3: a body we cannot decode (gzip, ...) is refused,
                # naming the encodings we take; it must not reach watchers as is.
                return Reply(415, "Unsupported Content-Encoding", [("Accept-Encoding", "identity")])
            try:
                pkg.validate(body, ctype)
            except BodyError as bad:  # not `e`: mypyc types one name per function
                return Reply(400, f"Bad Body: {bad}"[:120])
        key = (pres_uri, pkg.key)
        if if_match is None:
            if not body:
                return Reply(400, "Missing body in initial PUBLISH")
            if expires == 0:
                return Reply(200, "OK", [("Expires", "0")])
            pub = self._store_publication(key, _entity(req.uri_text, pres_uri), pkg, body, ctype or pkg.content_types[0], now, expires, sender_uri)
            self._publication_changed(key, pkg, now, sender_uri, published=True)
            return self._publish_ok(pub.etag, expires)
        old = self.etags.get(if_match)
        if old is None or (old.pres_uri, old.event) != key or old.expires_at <= now:
            return Reply(412, "Conditional Request Failed")
        if expires == 0:
            self._remove_publication(old)
            self._publication_changed(key, pkg, now, sender_uri, published=True)
            return Reply(200, "OK", [("SIP-ETag", old.etag), ("Expires", "0")])
        # refresh or modify: a new entity-tag every time (RFC 3903 §6 step 7)
        if self.journal is not None:
            self.journal.pub_deleted(old.etag, old.pres_uri, old.event)
        self.etags.pop(old.etag, None)
        new = new_etag()
        self.publications.rekey(key, old.etag, new, old)
        old.etag = new
        self.etags[new] = old
        if self.journal is not None:
            self.journal.pub_saved(old)
        old.expires_at = now + expires
        self._arm_publication(old)
        if body:
            old.body = pkg.carry_over(old.body, body) if pkg.keeps_history else body
            old.content_type = ctype or old.content_type
            old.received = now
            self._pub_seq += 1
            old.seq = self._pub_seq
            if sender_uri is not None:
                old.sender = sender_uri
            self._publication_changed(key, pkg, now, sender_uri, published=True)
        return self._publish_ok(new, expires)

    def _publish_ok(self, etag: str, expires: int) -> Reply:
        shown = expires - self.expires_offset if expires > self.expires_offset else expires
        return Reply(200, "OK", [("SIP-ETag", etag), ("Expires", str(shown))])

    def _store_publication(
        self, key: tuple[str, str], entity: str, pkg: EventPackage, body: bytes, ctype: str,
        now: float, expires: int, sender: str | None, etag: str | None = None,
    ) -> Publication:
        self._pub_seq += 1
        pub = Publication(
            etag=etag or new_etag(), pres_uri=key[0], entity=entity, event=key[1], body=body,
            content_type=ctype, expires_at=now + expires, received=now, seq=self._pub_seq, sender=sender,
        )
        self.publications.add(key, pub.etag, pub)
        self.etags[pub.etag] = pub
        if self.journal is not None:
            self.journal.pub_saved(pub)
        self._arm_publication(pub)
        return pub

    def _arm_publication(self, pub: Publication) -> None:
        # No handle to cancel (memory): a removed or refreshed publication's
        # old entry finds it gone or expiring later, and does nothing.
        if not self._pub_expiry.add(pub.expires_at, pub.etag):
            self.timers.call_at(pub.expires_at, self._pub_expired_cb, pub.etag)

    def _publication_due(self, when: float, etag: str) -> bool:
        pub = self.etags.get(etag)
        return pub is not None and pub.expires_at <= when

    def _publication_deadline(self, now: float, etag: str) -> None:
        pub = self.etags.get(etag)
        if pub is not None:
            self._publication_expired(now, pub)

    def _publication_expired(self, now: float, pub: Publication) -> None:
        if self.etags.get(pub.etag) is not pub or pub.expires_at > now:
            return
        if self.expiry_guard is not None and not self.expiry_guard(pub):
            return
        self.stats["publications_expired"] += 1
        key = (pub.pres_uri, pub.event)
        self._remove_publication(pub)
        if not self.force_delete:
            pkg = self.registry.get(pub.event)
            if pkg is not None:
                self._publication_changed(key, pkg, now, None)

    def _remove_publication(self, pub: Publication) -> None:
        if self.journal is not None:
            self.journal.pub_deleted(pub.etag, pub.pres_uri, pub.event)
        self.etags.pop(pub.etag, None)
        key = (pub.pres_uri, pub.event)
        self.publications.discard(key, pub.etag)
        self._composed.pop(key, None)

    def live_publications(self, key: tuple[str, str], now: float) -> list[Publication]:
        pubs = [p for p in self.publications.records(key) if p.expires_at > now]
        # newest first: the first body has the highest priority when composing
        if self.retrieve_order == 1:
            pubs.sort(key=lambda p: (p.priority, p.seq), reverse=True)
        else:
            pubs.sort(key=lambda p: p.seq, reverse=True)
        return pubs

    def composed_body(self, key: tuple[str, str], pkg: EventPackage, entity: str, now: float) -> VersionedBody | None:
        if key in self._composed:
            return self._composed[key]
        pubs = self.live_publications(key, now)
        provider = self.state_providers.get(pkg.key)
        if pubs:
            body = pkg.compose(entity, [PublicationView(p.etag, p.body, p.content_type, p.received) for p in pubs])
        elif provider is not None:
            body = provider(key[0], entity) or pkg.empty_body(entity)
        else:
            body = pkg.empty_body(entity)
        if self.subs_by_presentity.count(key) > 1:
            # Kept only where several watchers share it: a presentity's only
            # watcher would hold a second copy of the state (~350 bytes) for
            # nothing but its next refresh (bench/state_memory.py).
            self._composed[key] = body
        return body

    def state_changed(self, pres_uri: str, event: str, now: float) -> None:
        """A non-PUBLISH state source changed: NOTIFY the active watchers."""
        pkg = self.registry.get(event)
        if pkg is not None:
            self._publication_changed((pres_uri, pkg.key), pkg, now, None)

    def _publication_changed(
        self, key: tuple[str, str], pkg: EventPackage, now: float, sender: str | None, published: bool = False,
    ) -> None:
        self._composed.pop(key, None)
        subs = self.subs_by_presentity.records(key)
        if not subs:
            return
        pending = self._fanout_pending
        queue = self._fanout
        # PUBLISH→NOTIFY latency: each watcher to notify remembers when the
        # oldest change it has not been told about yet was accepted.
        stamp = now if published and self.on_notify_latency is not None else None
        for sub in subs:
            if sub.status != "active" or sub.reason is not None or sub.expires_at <= now:
                continue
            if sender is not None and sub.remote_target == sender:
                continue  # no echo to the publishing device
            if stamp is not None and sub.notify_origin is None:
                sub.notify_origin = stamp
            if sub.key in pending:
                continue  # already queued: it will carry the newest state (coalesced)
            pending.add(sub.key)
            queue.append((sub, pkg))
        if self.on_publication_changed is not None:
            # Before the queue drains: a watcher this change de-authorizes is
            # removed (or silenced) before it could see the new state.
            self.on_publication_changed(key[0], pkg.key, now)

    @property
    def fanout_backlog(self) -> int:
        return len(self._fanout)

    def drain_fanout(self, now: float, limit: int | None = None) -> int:
        """Send queued state NOTIFYs, at most `limit` (the runtime yields between batches
        so a presentity with thousands of watchers never blocks the loop)."""
        queue = self._fanout
        pending = self._fanout_pending
        n = 0
        while queue and (limit is None or n < limit):
            sub, pkg = queue.popleft()
            pending.discard(sub.key)
            if self.subs_by_dialog.get(sub.key) is not sub or sub.status != "active" or sub.reason is not None:
                sub.notify_origin = None  # no NOTIFY for that change: do not measure a later one from it
                continue
            self._safe_notify(sub, pkg, now)
            n += 1
        return n

    def _safe_notify(self, sub: Subscription, pkg: EventPackage, now: float) -> None:
        """One watcher's failure must never stop the NOTIFYs to the others."""
        try:
            self.send_notify(sub, pkg, now)
        except Exception:
            self.stats["notify_failed"] += 1
            log.exception("NOTIFY to %s (Call-ID %s) failed", sub.remote_target, sub.call_id)

    # ------------------------------------------------------------- SUBSCRIBE
    def handle_subscribe(
        self, req: Request, ctx: RequestContext, now: float, watcher_uri: str | None = None
    ) -> tuple[Reply, list[Callable[[], None]]]:
        """Returns the reply and the NOTIFYs to send once the reply is out."""
        pkg = self._lookup_package(req)
        if isinstance(pkg, Reply):
            return pkg, []
        try:
            requested = req.expires
            from_ = req.from_
            to = req.to
            call_id = req.call_id
            cseq = req.cseq.seq
            contacts = req.contacts
        except SipParseError as e:
            return Reply(e.status, e.reason), []
        if requested is not None and requested > 0 and requested < self.min_expires:
            if self.min_expires_action == 1:
                return Reply(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))]), []
            requested = self.min_expires
        expires = self._clamp_expires(requested, pkg.default_expires)
        if from_.tag is None:
            return Reply(400, "Missing From tag"), []
        if len(contacts) != 1 or contacts[0].raw == "*":
            return Reply(400, "Missing or invalid Contact header"), []
        try:
            contacts[0].uri  # noqa: B018 - must parse
        except SipParseError as e:
            return Reply(400, f"Bad Contact: {e.reason}"), []
        try:
            accept = _shared_accept(req.accept)
        except SipParseError as e:
            return Reply(400, e.reason), []
        if not pkg.accepts(accept):
            return Reply(406, "Not Acceptable", [("Accept", pkg.notify_type)]), []
        ev = req.event
        assert ev is not None
        event_id = ev.id
        if to.tag is None:
            return self._initial_subscribe(req, ctx, now, pkg, expires, watcher_uri, event_id, accept, cseq)
        # in-dialog: refresh or unsubscribe
        dkey = (call_id, to.tag, from_.tag, pkg.key, event_id)
        sub = self.subs_by_dialog.get(dkey)
        if sub is None:
            return Reply(481, "Subscription Does Not Exist"), []
        if cseq < sub.remote_cseq:
            return Reply(500, "Stale CSeq", [("Retry-After", "0")]), []
        sub.remote_cseq = cseq
        sub.remote_target = contacts[0].uri_text
        sub.accept = accept
        if ctx.source.reliable:  # a WebSocket client that reconnected: NOTIFYs follow its new connection
            sub.source = ctx.source
        contact_hdr = [("Contact", f"<{sub.local_contact}>")]
        if expires == 0:
            self._remove_subscription(sub)
            sub.expires_at = now
            reason = "timeout"
            sub.watcher_event = "timeout"

            def final() -> None:
                self._winfo_changed(sub, pkg, now, terminated=True)
                self._notify_terminated(sub, pkg, now, reason, with_state=True)

            return Reply(200, "OK", [("Expires", "0")] + contact_hdr), [final]
        sub.expires_at = now + expires
        self._arm_subscription(sub)
        code = 200 if (self.subs_respond_200 or pkg.template) else 202

        def refreshed() -> None:
            self.send_notify(sub, pkg, now)

        return Reply(code, "OK" if code == 200 else "Accepted", [("Expires", str(expires))] + contact_hdr), [refreshed]

    def _initial_subscribe(
        self, req: Request, ctx: RequestContext, now: float, pkg: EventPackage, expires: int,
        watcher_uri: str | None, event_id: str | None, accept: tuple[str, ...] | None, cseq: int,
    ) -> tuple[Reply, list[Callable[[], None]]]:
        try:
            pres_uri = self.presentity_key(req.uri_text)
            record_route = tuple(rr.raw for rr in req.record_route)
        except SipParseError as e:
            return Reply(e.status, e.reason), []
        from_ = req.from_
        to_tag = new_tag() if self.dialog_tag is None else self.dialog_tag(pres_uri)
        watcher = watcher_uri or from_.uri_text
        event_header = pkg.name + (("." + pkg.template) if pkg.template else "")
        if pkg.required_params:
            event_header += "".join(";" + p for p in sorted(pkg.required_params))
        if event_id is not None:
            event_header += f";id={event_id}"
        to_raw = req.get("to") or ""
        sub = Subscription(
            call_id=req.call_id, remote_tag=from_.tag or "", local_tag=to_tag, event=pkg.key,
            event_id=event_id, event_header=event_header, pres_uri=pres_uri, entity=_entity(req.uri_text, pres_uri),
            watcher_uri=watcher, watcher_display=from_.display, remote_target=req.contacts[0].uri_text,
            route_set=record_route, to_header=req.get("from") or "", from_header=f"{to_raw};tag={to_tag}",
            remote_cseq=cseq, local_cseq=0, expires_at=now + expires, source=shared_address(ctx.source),
            local_host=ctx.local_host, local_port=ctx.local_port,
            local_contact=self._dialog_contact(ctx, req),
            accept=accept, created=now,
        )
        if pkg.filter_params:
            ev = req.event
            chosen = {k: v for k, v in ev.params.items() if k in pkg.filter_params and v} if ev is not None else {}
            if chosen:
                sub.extra = {"filter": chosen}
        if pkg.template == "winfo":
            # RFC 3857 §4.6: only the owner may see who watches them.
            sub.status, sub.reason = self._authorize_winfo(sub)
        elif pkg.requires_auth:
            sub.status, sub.reason = self._authorize(sub, pkg)
            if self.on_new_watcher is not None:
                self.on_new_watcher(pres_uri, now)
        code = 200 if (self.subs_respond_200 or pkg.template) else 202
        headers = [("Expires", str(expires)), ("Contact", f"<{sub.local_contact}>")]
        headers.extend(("Record-Route", rr) for rr in record_route)
        reply = Reply(code, "OK" if code == 200 else "Accepted", headers, to_tag=to_tag)
        if sub.status == "terminated" and sub.reason == "rejected" and pkg.template == "winfo":
            return Reply(403, "Forbidden"), []
        if expires == 0:
            # fetch: one NOTIFY with the current state, nothing kept (RFC 6665 §4.4.3)
            def fetch() -> None:
                self._notify_terminated(sub, pkg, now, "timeout", with_state=True)

            return reply, [fetch]
        if sub.status == "terminated":
            def rejected() -> None:
                self._notify_terminated(sub, pkg, now, sub.reason or "rejected", with_state=False)

            return reply, [rejected]
        self._add_subscription(sub)

        def initial() -> None:
            if pkg.winfo:
                self._winfo_changed(sub, pkg, now)
            if self.send_fast_notify or pkg.winfo or pkg.template:
                self.send_notify(sub, pkg, now)

        return reply, [initial]

    def _authorize(self, sub: Subscription, pkg: EventPackage) -> tuple[str, str | None]:
        if self.force_active:
            return "active", None
        wkey = (sub.pres_uri, pkg.key, self._watcher_key(sub.watcher_uri))
        auth = self.authorize
        has_rules = getattr(auth, "has_rules", None)
        if auth is not None and has_rules is not None and has_rules(sub.pres_uri):
            # A rules document is the truth: evaluate it every time (RFC 5025 §3.2).
            decision = auth(sub.pres_uri, sub.watcher_uri, pkg.key, sub)
            self._set_watcher(wkey, decision)
            return decision
        known = self.watchers.get(wkey)
        if known is not None:
            return known
        if auth is not None:
            decision = auth(sub.pres_uri, sub.watcher_uri, pkg.key, sub)
        else:
            decision = ("pending", None)
        self._set_watcher(wkey, decision)
        return decision

    def _authorize_winfo(self, sub: Subscription) -> tuple[str, str | None]:
        # presence_xml.force_active skips the *presence* rules (pres-rules);
        # it must not expose who watches a presentity to anyone who asks.
        try:
            same = self._watcher_key(sub.watcher_uri) == sub.pres_uri
        except SipParseError:
            same = False
        return ("active", None) if same else ("terminated", "rejected")

    def _watcher_key(self, uri: str) -> str:
        try:
            return parse_uri(uri).aor()
        except SipParseError:
            return uri

    def _set_watcher(self, wkey: tuple[str, str, str], decision: tuple[str, str | None], since: float | None = None) -> None:
        self.watchers[wkey] = decision
        self.watcher_since[wkey] = self.now if since is None else since
        pk = (wkey[0], wkey[1])
        if decision[0] == "pending":
            self._pending_watchers.setdefault(pk, set()).add(wkey[2])
        else:
            self._drop_pending(pk, wkey[2])
        if self.journal is not None:
            self.journal.auth_saved(wkey, decision)

    def _drop_pending(self, pk: tuple[str, str], watcher: str) -> None:
        group = self._pending_watchers.get(pk)
        if group is not None:
            group.discard(watcher)
            self._waiting_ids.pop((pk[0], pk[1], watcher), None)
            if not group:
                del self._pending_watchers[pk]

    def purge_pending_watchers(self, now: float, max_age: float = 86400.0) -> int:
        """Forget pending decisions older than `max_age` (Kamailio's watchers cleaner)."""
        old = [
            (pres, event, w)
            for (pres, event), group in self._pending_watchers.items()
            for w in group
            if self.watcher_since.get((pres, event, w), now) < now - max_age
        ]
        for wkey in old:
            self.watchers.pop(wkey, None)
            self.watcher_since.pop(wkey, None)
            self._drop_pending((wkey[0], wkey[1]), wkey[2])
            if self.journal is not None:
                self.journal.auth_saved(wkey, None)
        return len(old)

    def _waiting_watchers(self, pres: str, event: str) -> list[str]:
        """Pending watchers of pres/event whose subscription has gone (RFC 3857 "waiting")."""
        group = self._pending_watchers.get((pres, event))
        if not group:
            return []
        live = {self._watcher_key(s.watcher_uri) for s in self.subs_by_presentity.records((pres, event))}
        return sorted(w for w in group if w not in live)

    def _add_subscription(self, sub: Subscription) -> None:
        self.adopt_subscription(sub)
        if self.journal is not None:
            self.journal.sub_saved(sub)

    def _arm_subscription(self, sub: Subscription) -> None:
        if self.journal is not None:
            self.journal.sub_saved(sub)
        self.rearm_subscription(sub)

    def _subscription_expired(self, now: float, sub: Subscription) -> None:
        if sub.expires_at > now or self.subs_by_dialog.get(sub.key) is not sub:
            return  # refreshed (a newer timer entry follows) or gone
        if self.expiry_guard is not None and not self.expiry_guard(sub):
            return
        self.stats["subscriptions_expired"] += 1
        self._remove_subscription(sub)
        pkg = self.registry.get(sub.event)
        sub.watcher_event = "timeout"
        if pkg is not None:
            self._winfo_changed(sub, pkg, now, terminated=True)
            self._notify_terminated(sub, pkg, now, "timeout", with_state=False)

    def _remove_subscription(self, sub: Subscription) -> None:
        if self.subs_by_dialog.get(sub.key) is sub:
            del self.subs_by_dialog[sub.key]
            if self.journal is not None:
                self.journal.sub_deleted(sub)
        self.subs_by_presentity.discard((sub.pres_uri, sub.event), sub.key)
        if sub.status == "pending":
            self._waiting_ids[(sub.pres_uri, sub.event, self._watcher_key(sub.watcher_uri))] = sub.watcher_id

    # ------------------------------------------- records loaded from storage
    # Start-up restore and DB-only reloads: state the database already holds,
    # so nothing here is journaled and no NOTIFY is sent.
    def adopt_publication(self, pub: Publication) -> None:
        self._pub_seq += 1
        pub.seq = self._pub_seq
        self.index_publication(pub)

    def index_publication(self, pub: Publication) -> None:
        """Hold `pub` (a record from storage) and arm its expiry; no NOTIFY."""
        self.publications.add((pub.pres_uri, pub.event), pub.etag, pub)
        self.etags[pub.etag] = pub
        self._composed.pop((pub.pres_uri, pub.event), None)
        self._arm_publication(pub)

    def forget_publication(self, pub: Publication) -> None:
        if self.etags.get(pub.etag) is pub:
            del self.etags[pub.etag]
        key = (pub.pres_uri, pub.event)
        self.publications.discard(key, pub.etag, pub)
        self._composed.pop(key, None)

    def adopt_subscription(self, sub: Subscription) -> None:
        key = sub.key  # one tuple for both indexes
        self.subs_by_dialog[key] = sub
        self.subs_by_presentity.add((sub.pres_uri, sub.event), key, sub)
        self.rearm_subscription(sub)

    def rearm_subscription(self, sub: Subscription) -> None:
        # No handle to cancel (memory): an outdated entry finds the
        # subscription gone or expiring later, and does nothing.
        if not self._sub_expiry.add(sub.expires_at, sub.key):
            self.timers.call_at(sub.expires_at, self._sub_expired_cb, sub.key)

    def _subscription_due(self, when: float, key: tuple) -> bool:
        sub = self.subs_by_dialog.get(key)
        return sub is not None and sub.expires_at <= when

    def _subscription_deadline(self, now: float, key: tuple) -> None:
        sub = self.subs_by_dialog.get(key)
        if sub is not None:
            self._subscription_expired(now, sub)

    def forget_subscription(self, sub: Subscription) -> None:
        journal, self.journal = self.journal, None
        try:
            self._remove_subscription(sub)
        finally:
            self.journal = journal

    # ---------------------------------------------------------------- NOTIFY
    def _state_header(self, sub: Subscription, now: float) -> str:
        remaining = int(sub.expires_at - now + 0.5)
        if remaining <= 0:
            return "terminated;reason=timeout"
        if sub.status == "pending":
            return f"pending;expires={remaining}"
        return f"active;expires={remaining}"

    def _body_for(self, sub: Subscription, pkg: EventPackage, now: float) -> bytes:
        if sub.status != "active" or sub.reason is not None:
            if sub.reason == "polite-block" and sub.status == "active":
                return pkg.blocked_body(sub.entity)
            return b""
        if pkg.template == "winfo":
            return self._winfo_body(sub, pkg, now, None)
        body = self.composed_body((sub.pres_uri, sub.event), pkg, sub.entity, now)
        if body is None:
            return b""
        if body.is_fixed:
            data = body.render(0)
        else:
            data = body.render(sub.version)
            sub.version += 1
        data = pkg.filter_for(data, sub)
        if pkg.requires_auth and self.authorize is not None:
            filt = getattr(self.authorize, "filter_body", None)
            if filt is not None:
                data = filt(data, sub)
        return data

    def send_notify(self, sub: Subscription, pkg: EventPackage, now: float) -> None:
        state = self._state_header(sub, now)
        body = self._body_for(sub, pkg, now)
        self._send(sub, pkg, state, body, now)
        if state.startswith("terminated"):
            self._remove_subscription(sub)

    def _notify_terminated(self, sub: Subscription, pkg: EventPackage, now: float, reason: str, with_state: bool) -> None:
        body = self._body_for(sub, pkg, now) if with_state else b""
        self._send(sub, pkg, f"terminated;reason={reason}", body, now)

    def _send(self, sub: Subscription, pkg: EventPackage, state: str, body: bytes, now: float) -> None:
        sub.local_cseq += 1
        if self.journal is not None and self.subs_by_dialog.get(sub.key) is sub:
            self.journal.sub_notified(sub)
        target_uri = sub.remote_target
        routes = sub.route_set
        if routes and ";lr" not in routes[0].lower():
            # strict router (RFC 3261 §12.2.1.1)
            routes = list(routes)
            first = routes.pop(0)
            routes.append(f"<{sub.remote_target}>")
            target_uri = first.strip().lstrip("<").split(">")[0]
            next_hop = target_uri
        else:
            next_hop = routes[0].strip().lstrip("<").split(">")[0] if routes else target_uri
        dest = self._destination(sub, next_hop, len(body))
        branch = new_branch()
        host = sub.local_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        route_lines = "".join(f"Route: {r}\r\n" for r in routes) if routes else ""
        ctype_line = f"Content-Type: {pkg.notify_type}\r\n" if body else ""
        data = (
            f"NOTIFY {target_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{dest.transport.upper()} {host}:{sub.local_port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n{route_lines}"
            f"From: {sub.from_header}\r\n"
            f"To: {sub.to_header}\r\n"
            f"Call-ID: {sub.call_id}\r\n"
            f"CSeq: {sub.local_cseq} NOTIFY\r\n"
            f"Event: {sub.event_header}\r\n"
            f"Subscription-State: {state}\r\n"
            f"Contact: <{sub.local_contact}>\r\n"
            f"{ctype_line}Content-Length: {len(body)}\r\n\r\n"
        ).encode("utf-8", "surrogateescape") + body
        udp_dest: Address | None = None
        if dest.transport == "udp" and len(data) > UDP_MTU_LIMIT and not self._refuses_tcp(dest, now):
            # RFC 3261 §18.1.1: too big for UDP, use a congestion-controlled
            # transport; if the watcher takes no TCP, UDP after all (tcp_refused).
            data = data.replace(b"Via: SIP/2.0/UDP ", b"Via: SIP/2.0/TCP ", 1)
            udp_dest, dest = dest, Address("tcp", dest.host, dest.port, None)
        sub.notifies_sent += 1
        self.stats["notify_sent"] += 1
        if sub.notify_origin is not None:  # only ever set while on_notify_latency is
            origin, sub.notify_origin = sub.notify_origin, None
            hook = self.on_notify_latency
            if hook is not None:
                hook(pkg.key, now - origin)
        ct = self.tx.send_request(data, branch, "NOTIFY", dest, now, partial(self._notify_result, sub))
        ct.udp_fallback = udp_dest

    def _refuses_tcp(self, dest: Address, now: float) -> bool:
        until = self._no_tcp.get((dest.host, dest.port))
        if until is None:
            return False
        if until > now:
            return True
        del self._no_tcp[(dest.host, dest.port)]
        return False

    def tcp_refused(self, host: str, port: int, now: float) -> None:
        """A watcher took no TCP connection for a NOTIFY moved there for its
        size: its large NOTIFYs go over UDP for NO_TCP_MEMORY seconds (desk
        phones listen on UDP only; failing the NOTIFY would end the
        subscription)."""
        if len(self._no_tcp) >= 10000:
            self._no_tcp.clear()
        self._no_tcp[(host, port)] = now + NO_TCP_MEMORY
        self.stats["notify_udp_fallbacks"] += 1

    def _destination(self, sub: Subscription, next_hop: str, size: int) -> Address:
        src = sub.source
        try:
            uri = parse_uri(next_hop)
            host = uri.host.strip("[]")
            transport = uri.transport or ("tls" if uri.scheme == "sips" else None)
            if transport == "ws" and uri.scheme == "sips":
                transport = "wss"  # RFC 7118 §5.2
            port = uri.port or (5061 if transport == "tls" else 5060)
        except SipParseError:
            host, port, transport = (src.host, src.port, None) if src else ("127.0.0.1", 5060, None)
        if src is not None and src.reliable:
            # Reuse the subscriber's connection (phones put ;alias or the
            # connection's own port in Contact); the runtime falls back to a
            # new connection to host:port when it is gone.
            return Address(src.transport, host, port, src.conn)
        if transport in ("tcp", "tls", "ws", "wss"):
            return Address("tcp" if transport == "tcp" else transport, host, port, None)
        return udp_address(host, port)

    def _notify_result(self, sub: Subscription, resp: Response | None, now: float) -> None:
        code = resp.status if resp is not None else 408
        sub.last_notify_status = code
        if resp is None:
            self.stats["notify_timeout"] += 1
        elif code >= 300:
            self.stats["notify_failed"] += 1
        delete = code in (404, 481) or (code == 408 and self.timeout_rm_subs)
        if self.notify_reply_hook is not None:
            try:
                if self.notify_reply_hook(sub, resp):
                    delete = True
            except Exception:  # a user hook must never break NOTIFY handling
                pass
        if delete and self.subs_by_dialog.get(sub.key) is sub:
            self._remove_subscription(sub)
            sub.status = "terminated"
            pkg = self.registry.get(sub.event)
            if pkg is not None and pkg.winfo:
                sub.watcher_event = "noresource" if code != 408 else "timeout"
                self._winfo_changed(sub, pkg, now, terminated=True)

    # ----------------------------------------------------------------- winfo
    def _winfo_subscribers(self, sub: Subscription, pkg: EventPackage) -> list[Subscription]:
        wk = (sub.pres_uri, f"{pkg.name}.winfo")
        return list(self.subs_by_presentity.records(wk))

    def _winfo_entry(self, w: Subscription, now: float, terminated: bool = False):
        from presenced.events.formats.watcherinfo import WatcherEntry

        status = "terminated" if terminated or w.status == "terminated" else w.status
        if status == "terminated" and w.status == "pending" and self.watchers.get(
            (w.pres_uri, w.event, self._watcher_key(w.watcher_uri)), ("",))[0] == "pending":
            status = "waiting"  # RFC 3857 §3.3: a pending subscription that ended
        return WatcherEntry(
            id=w.watcher_id, uri=w.watcher_uri, status=status, event=w.watcher_event,
            display_name=w.watcher_display,
            expiration=0 if status in ("terminated", "waiting") else max(0, int(w.expires_at - now)),
            duration_subscribed=max(0, int(now - w.created)),
        )

    def _waiting_entry(self, pres: str, event: str, watcher: str):
        from presenced.events.formats.watcherinfo import WatcherEntry

        wid = self._waiting_ids.get((pres, event, watcher))
        if wid is None:  # its subscription ended before a restart: Kamailio's id
            wid = base64.b64encode(watcher.encode("utf-8", "surrogateescape")).decode("ascii")
        return WatcherEntry(id=wid, uri=watcher, status="waiting", event="timeout")

    def _winfo_body(self, wsub: Subscription, wpkg: EventPackage, now: float, changed: Subscription | None, terminated: bool = False) -> bytes:
        watched = self.subs_by_presentity.get((wsub.pres_uri, wpkg.name), {})
        if changed is None or not wsub.winfo_full_sent:
            entries = [self._winfo_entry(w, now) for w in watched.values()]
            if changed is not None and changed.key not in watched:
                entries.append(self._winfo_entry(changed, now, terminated))
            entries.extend(self._waiting_entry(wsub.pres_uri, wpkg.name, w) for w in self._waiting_watchers(wsub.pres_uri, wpkg.name)
                           if changed is None or changed.key in watched or self._watcher_key(changed.watcher_uri) != w)
            state = "full"
            wsub.winfo_full_sent = True
        else:
            entries = [self._winfo_entry(changed, now, terminated)]
            state = "partial"
        body = wpkg.render(wsub.version, state, wsub.entity, entries)  # type: ignore[attr-defined]
        wsub.version += 1
        return body

    def _winfo_changed(self, sub: Subscription, pkg: EventPackage, now: float, terminated: bool = False) -> None:
        if not pkg.winfo:
            return
        wpkg = self.registry.get(f"{pkg.name}.winfo")
        if wpkg is None:
            return
        for wsub in self._winfo_subscribers(sub, pkg):
            if wsub.status != "active" or wsub.expires_at <= now:
                continue
            body = self._winfo_body(wsub, wpkg, now, sub, terminated)
            self._send(wsub, wpkg, self._state_header(wsub, now), body, now)

    # ------------------------------------------------------------ module API
    def pres_has_subscribers(self, uri: str, event: str) -> bool:
        pkg_key = event
        return (self.presentity_key(uri), pkg_key) in self.subs_by_presentity

    def pres_auth_status(self, watcher_uri: str, presentity_uri: str) -> int:
        """Kamailio's codes: 1 active, 2 pending, 3 terminated, 4 waiting, 5
        polite-block; -1 when either URI does not parse."""
        try:
            pres = self.presentity_key(presentity_uri)
            watcher = parse_uri(watcher_uri).aor()
        except SipParseError:
            return -1
        if self.force_active:
            return 1
        wkey = (pres, "presence", watcher)
        known = self.watchers.get(wkey)
        if known is None:
            return 2
        status, reason = known
        if status == "active":
            return 5 if reason == "polite-block" else 1
        if status == "pending" and wkey[2] in self._waiting_watchers(wkey[0], "presence"):
            return 4
        return {"pending": 2, "terminated": 3, "waiting": 4}.get(status, 2)

    def set_watcher_status(self, presentity_uri: str, event: str, watcher_uri: str, status: str, reason: str | None, now: float) -> int:
        """Record an authorization decision and apply it to live dialogs."""
        pres = self.presentity_key(presentity_uri)
        self._set_watcher((pres, event, self._watcher_key(watcher_uri)), (status, reason))
        return self.pres_update_watchers(presentity_uri, event, now)

    def deactivate_all(self, now: float) -> int:
        """End every subscription with `terminated;reason=deactivated` (RFC
        6665 §4.2.2: the subscriber may subscribe again at once). For a stop
        that loses them (memory only): a watcher would otherwise hear nothing
        until its next refresh gets 481, up to an hour later."""
        n = 0
        for sub in list(self.subs_by_dialog.values()):
            pkg = self.registry.get(sub.event)
            self._remove_subscription(sub)
            if pkg is not None:
                self._notify_terminated(sub, pkg, now, "deactivated", with_state=False)
                n += 1
        return n

    def pres_update_watchers(self, uri: str, event: str, now: float) -> int:
        """Re-evaluate watchers of uri/event; NOTIFY the dialogs whose status changed."""
        pkg = self.registry.get(event)
        if pkg is None or pkg.template is not None:
            # presence.winfo: its only watcher is the owner, authorized by
            # ownership when it subscribed (RFC 3857 §4.6), never by pres-rules
            return 0
        pres = self.presentity_key(uri)
        changed = 0
        for sub in self.subs_by_presentity.records((pres, pkg.key)):
            new = self._authorize(sub, pkg)
            if (sub.status, sub.reason) == new:
                continue
            changed += 1
            old_status = sub.status
            sub.status, sub.reason = new
            if sub.status == "terminated":
                sub.watcher_event = "rejected"
                self._remove_subscription(sub)
                self._winfo_changed(sub, pkg, now, terminated=True)
                self._notify_terminated(sub, pkg, now, sub.reason or "rejected", with_state=False)
                continue
            if old_status == "pending" and sub.status == "active":
                sub.watcher_event = "approved"
            self._winfo_changed(sub, pkg, now)
            self._safe_notify(sub, pkg, now)
        return changed

    def pres_refresh_watchers(self, uri: str, event: str, type_: int, now: float) -> int:
        """Type 0: authorization changed; 1/2: state changed, re-NOTIFY active watchers."""
        if type_ == 0:
            return self.pres_update_watchers(uri, event, now)
        pkg = self.registry.get(event)
        if pkg is None:
            return 0
        key = (self.presentity_key(uri), pkg.key)
        self._composed.pop(key, None)
        subs = [s for s in self.subs_by_presentity.records(key) if s.status == "active"]
        for s in subs:
            self._safe_notify(s, pkg, now)
        return len(subs)

    def set_hard_state(self, uri: str, event: str, etag: str, body: bytes | None, now: float) -> str:
        """pres_refresh_watchers type 2: `body` becomes the never-expiring publication
        `etag` of uri/event (None removes it); watchers are told as for a PUBLISH.
        Returns 'stored', 'removed' or 'absent'. ValueError on a bad package, ETag or body."""
        pkg = self.registry.get(event)
        if pkg is None or not pkg.publishable or pkg.template is not None:
            raise ValueError(f"event {event!r} does not take publications")
        ctype = "application/pidf+xml"
        if ctype not in pkg.content_types:
            raise ValueError(f"pidf-manipulation documents are PIDF; {pkg.key} does not take {ctype}")
        if not etag or any(c.isspace() for c in etag):
            raise ValueError("the filename (ETag) must be non-empty without white space")
        key = (self.presentity_key(uri), pkg.key)
        old = self.etags.get(etag)
        if old is not None and (old.pres_uri, old.event) != key:
            raise ValueError(f"ETag {etag!r} belongs to another publication ({old.pres_uri}, {old.event})")
        if body is None:
            if old is None:
                return "absent"
            self._remove_publication(old)
            self._publication_changed(key, pkg, now, None)
            return "removed"
        try:
            pkg.validate(body, ctype)
        except BodyError as e:
            raise ValueError(f"invalid document: {e}") from None
        if old is not None:
            self._remove_publication(old)
        self._store_publication(key, key[0], pkg, body, ctype, now, HARD_STATE_SECONDS, None, etag=etag)
        self._publication_changed(key, pkg, now, None)
        return "stored"

    def composed_bodies(self, uri: str, event: str, now: float) -> list[bytes]:
        key = (self.presentity_key(uri), event)
        return [p.body for p in self.live_publications(key, now)]

    def subscriptions(self) -> Iterable[Subscription]:
        return self.subs_by_dialog.values()

    def all_publications(self) -> Iterable[Publication]:
        return self.etags.values()
