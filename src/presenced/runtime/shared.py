"""DB-only operation: the database is the truth, memory is a per-request cache.

With `subs_db_mode = 3` (subscriptions) and/or `publ_cache = 0`
(publications) several presenced processes can serve one database: any of
them may receive a PUBLISH, a SUBSCRIBE, its refresh or its removal. Before
such a request reaches the sans-I/O core, the runtime reloads from the
database exactly the state the request can touch and merges it into the
engine:

- PUBLISH for P/event: P's publications and P's subscriptions for the event
  (the watchers that must be NOTIFYed may have subscribed elsewhere);
- initial SUBSCRIBE for P/event: P's publications (the first NOTIFY's body),
  and for `presence` the winfo subscribers of P (they get a partial NOTIFY),
  for `presence.winfo` P's presence watchers (the full state lists them);
- in-dialog SUBSCRIBE: that dialog's row (its CSeqs, expiry, route set; a row
  another process deleted makes the refresh a 481), then as above.

Merging updates records in place (a fan-out still draining keeps valid
references); CSeqs and body versions take the larger of memory and database so
they only increase. Requests pass one at a time and only after the previous
one's changes are committed, so a reload never reads older data than this
process wrote. Expiry timers still run here, but before a record expires the
database is asked again: a record refreshed or removed by another process is
re-armed or dropped silently instead of being expired.

Races between processes that the database cannot serialize (two NOTIFYs to the
same dialog from two processes at the same instant) can reuse a CSeq, as with
Kamailio; docs/operations.md says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from presenced.core.engine import PresenceEngine
from presenced.core.state import Publication, Subscription
from presenced.sip.errors import SipParseError
from presenced.sip.message import Request, parse_message
from presenced.runtime.persistence import _subscription_from_row, bounded, publication_from_row, split_aor
from presenced.storage.rows import PresentityRow

log = logging.getLogger("presenced.storage")

SYNC_METHODS = (b"PUBLISH ", b"SUBSCRIBE ")
LOAD_TIMEOUT = 3.0


def needs_sync(data: bytes) -> bool:
    return data.startswith(SYNC_METHODS)


@dataclass(slots=True)
class Loaded:
    """Rows read for one request, applied to the engine just before it runs."""

    dialog: tuple[tuple, Any] | None = None            # (engine dialog key, row pair or None)
    pubs: tuple[str, str, list] | None = None         # (pres, event, presentity rows)
    subs: list[tuple[str, str, list]] = field(default_factory=list)
    rules: tuple[str, bytes | None] | None = None      # (pres, pres-rules document or None)


class SharedState:
    """Reloads engine state from the store around requests and expiries."""

    def __init__(self, engine: PresenceEngine, store: Any, *, pubs: bool, subs: bool, authorizer: Any = None) -> None:
        self.engine = engine
        self.store = store
        # pres-rules may be changed through any process: re-read them with each
        # initial presence SUBSCRIBE (installed only when the document changed).
        self.authorizer = authorizer
        self.sync_pubs = pubs
        self.sync_subs = subs
        self.loads = 0          # reload round trips, for counters
        self.load_errors = 0
        self._confirmed: set[int] = set()   # id() of records the store confirmed as expired
        self.on_confirmed: Callable[[], None] | None = None  # runtime flushes the outbox
        engine.expiry_guard = self._expiry_guard

    # ----------------------------------------------------------- requests
    def parse(self, data: bytes, stream: bool) -> Request | None:
        """The request, if it is a PUBLISH or SUBSCRIBE worth loading state for."""
        try:
            msg = parse_message(data, stream=stream)
        except SipParseError:
            return None
        if not isinstance(msg, Request) or msg.method not in ("PUBLISH", "SUBSCRIBE"):
            return None
        return msg

    async def fetch(self, req: Request) -> Loaded | None:
        """Read what `req` can touch. Nothing changes in the engine until `apply`,
        so the reads of several queued requests can run at once."""
        try:
            ev = req.event
            pkg = self.engine.registry.lookup(ev) if ev is not None else None
            pres = self.engine.presentity_key(req.uri_text)
            to_tag = req.to.tag
            call_id = req.call_id
            from_tag = req.from_.tag or ""
        except SipParseError:
            return None  # the core answers it
        if pkg is None or ev is None:
            return None
        wall = int(time.time())
        out = Loaded()
        if req.method == "SUBSCRIBE" and to_tag and self.sync_subs:
            pair = await self.store.load_subscription(call_id, to_tag, from_tag)
            self.loads += 1
            # the engine's dialog key, so a row gone from the database is found in O(1)
            out.dialog = ((call_id, to_tag, req.from_.tag, pkg.key, ev.id), pair)
            if pair is not None:
                pres = pair[0].presentity_uri
        reads = []
        if self.sync_pubs and pkg.publishable:
            reads.append(self._publications(out, pres, pkg.key, wall))
        if self.sync_subs and self.authorizer is not None and req.method == "SUBSCRIBE" and not to_tag \
                and pkg.key == "presence" and not self.engine.force_active:
            reads.append(self._rules(out, pres))
        if self.sync_subs:
            if req.method == "PUBLISH":
                reads.append(self._subscriptions(out, pres, pkg.key, wall))
            elif pkg.key == "presence":
                reads.append(self._subscriptions(out, pres, "presence.winfo", wall))
            elif pkg.key == "presence.winfo":
                reads.append(self._subscriptions(out, pres, "presence", wall))
        await asyncio.gather(*reads)
        return out

    async def fetch_presentity(self, pres: str, event: str) -> Loaded:
        """Everything stored for one presentity and event (management calls that
        act on all its watchers, e.g. presence.updateWatchers)."""
        wall = int(time.time())
        out = Loaded()
        pkg = self.engine.registry.get(event)
        reads = []
        if self.sync_pubs and pkg is not None and pkg.publishable:
            reads.append(self._publications(out, pres, event, wall))
        if self.sync_subs:
            reads.append(self._subscriptions(out, pres, event, wall))
        await asyncio.gather(*reads)
        return out

    async def _publications(self, out: Loaded, pres: str, event: str, wall: int) -> None:
        user, domain = split_aor(pres)
        out.pubs = (pres, event, await self.store.load_presentity(user, domain, event, wall))
        self.loads += 1

    async def _subscriptions(self, out: Loaded, pres: str, event: str, wall: int) -> None:
        out.subs.append((pres, event, await self.store.load_subscriptions_for(pres, event, wall)))
        self.loads += 1

    async def _rules(self, out: Loaded, pres: str) -> None:
        from presenced.core.authorization import PRES_RULES

        user, domain = split_aor(pres)
        row = await self.store.get_xcap(user, domain, PRES_RULES)
        self.loads += 1
        out.rules = (pres, bytes(row.doc) if row is not None and row.doc else None)

    def apply(self, loaded: Loaded, now: float) -> None:
        if loaded.rules is not None and self.authorizer is not None:
            pres, doc = loaded.rules
            self.authorizer.set_document(pres, doc)
        if loaded.dialog is not None:
            self._merge_dialog(*loaded.dialog, now)
        if loaded.pubs is not None:
            self.merge_publications(*loaded.pubs, now)
        for pres, event, rows in loaded.subs:
            self.merge_subscriptions(pres, event, rows, now)

    # ------------------------------------------------------------ merging
    def merge_publications(self, pres: str, event: str, rows: list[PresentityRow], now: float) -> None:
        eng = self.engine
        key = (pres, event)
        group = eng.publications.get(key, {})
        seen: set[str] = set()
        for r in rows:
            fresh = publication_from_row(eng, r, now)
            if fresh is None:
                continue
            fresh.pres_uri = pres
            seen.add(fresh.etag)
            cur = group.get(fresh.etag)
            if cur is None:
                eng.adopt_publication(fresh)
                group = eng.publications.get(key, {})
                continue
            cur.body, cur.sender, cur.priority, cur.received = fresh.body, fresh.sender, fresh.priority, fresh.received
            if cur.expires_at != fresh.expires_at:
                cur.expires_at = fresh.expires_at
                eng._arm_publication(cur)
        for etag in [e for e in group if e not in seen]:
            eng.forget_publication(group[etag])
        eng._composed.pop(key, None)

    def merge_subscriptions(self, pres: str, event: str, rows: list, now: float) -> None:
        eng = self.engine
        seen: set[tuple] = set()
        for row, ext in rows:
            sub = self._merge_one(row, ext, now)
            if sub is not None:
                seen.add(sub.key)
        for sub in list(eng.subs_by_presentity.get((pres, event), {}).values()):
            if sub.key not in seen:
                eng.forget_subscription(sub)

    def _merge_dialog(self, key: tuple, pair, now: float) -> Subscription | None:
        eng = self.engine
        if pair is None:
            sub = eng.subs_by_dialog.get(key)
            if sub is not None:  # ended by another process: the refresh gets 481
                eng.forget_subscription(sub)
            return None
        return self._merge_one(pair[0], pair[1], now)

    def _merge_one(self, row, ext, now: float) -> Subscription | None:
        eng = self.engine
        fresh = _subscription_from_row(eng, row, ext, now, 0)
        if fresh is None:
            return None
        cur = eng.subs_by_dialog.get(fresh.key)
        if cur is None:
            eng.adopt_subscription(fresh)
            return fresh
        cur.local_cseq = max(cur.local_cseq, fresh.local_cseq)
        cur.remote_cseq = max(cur.remote_cseq, fresh.remote_cseq)
        cur.version = max(cur.version, fresh.version)
        cur.status, cur.reason = fresh.status, fresh.reason
        cur.remote_target, cur.route_set = fresh.remote_target, fresh.route_set
        cur.accept = fresh.accept if fresh.accept is not None else cur.accept
        if cur.expires_at != fresh.expires_at:
            cur.expires_at = fresh.expires_at
            eng.rearm_subscription(cur)
        return cur

    # ------------------------------------------------------------- expiry
    def _expiry_guard(self, record: Publication | Subscription) -> bool:
        """Engine asks before expiring: only records the store confirmed go."""
        rid = id(record)
        if rid in self._confirmed:
            self._confirmed.discard(rid)
            return True
        asyncio.get_running_loop().create_task(self._verify(record))
        return False

    async def _verify(self, record: Publication | Subscription) -> None:
        eng = self.engine
        now = asyncio.get_running_loop().time()
        try:
            if isinstance(record, Subscription):
                pair = await _bounded(self.store.load_subscription(record.call_id, record.local_tag, record.remote_tag))
                self.loads += 1
                if eng.subs_by_dialog.get(record.key) is not record:
                    return
                if pair is None:
                    eng.forget_subscription(record)      # removed by another process
                    return
                if pair[0].expires - eng.wall_offset > now + 0.5:
                    self._merge_one(pair[0], pair[1], now)  # refreshed elsewhere
                    return
                self._confirmed.add(id(record))
                eng._subscription_expired(now, record)
            else:
                user, domain = split_aor(record.pres_uri)
                row = await _bounded(self.store.find_etag(user, domain, record.event, record.etag))
                self.loads += 1
                if eng.etags.get(record.etag) is not record:
                    return
                if row is None:
                    # Refreshed (new ETag) or removed elsewhere: take the store's view.
                    rows = await _bounded(self.store.load_presentity(user, domain, record.event, int(time.time())))
                    eng.forget_publication(record)
                    self.merge_publications(record.pres_uri, record.event, rows, now)
                    return
                if row.expires > 0 and row.expires - eng.wall_offset > now + 0.5:
                    record.expires_at = row.expires - eng.wall_offset
                    eng._arm_publication(record)
                    return
                self._confirmed.add(id(record))
                eng._publication_expired(now, record)
        except Exception as e:  # store down: expire on local knowledge rather than never
            self.load_errors += 1
            log.warning("expiry check against %s failed (%s); expiring on local state",
                        self.store.url, str(e) or type(e).__name__)
            self._confirmed.add(id(record))
            if isinstance(record, Subscription):
                eng._subscription_expired(now, record)
            else:
                eng._publication_expired(now, record)
        if self.on_confirmed is not None:
            self.on_confirmed()


async def _bounded(coro: Awaitable) -> Any:
    return await bounded(coro, LOAD_TIMEOUT)
