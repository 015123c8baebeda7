"""Glue between the in-memory engine and a storage backend.

Kamailio's modes, by their names:
- `publ_cache` 0/1: every publication change is written before the PUBLISH
  is answered (write-through); 2: publications stay in memory only.
- `subs_db_mode` 0: subscriptions in memory only; 1: write-through (the
  reply and the NOTIFYs leave only after the commit); 2: write-back, flushed
  every `db_update_period` and on a graceful stop; 3: DB only — written as
  in 1, and reloaded before every request by runtime/shared.py so several
  processes can share the database.

Write-through is group-committed: while one transaction is in flight, the
changes of every request that arrives meanwhile accumulate and go in the next
one, and the replies are released in arrival order after their commit.

A database that fails or stops answering (WRITE_TIMEOUT) while the server runs
does not stop it: write-through falls back to write-back until a retry (with
exponential back-off) succeeds, and both the outage and the recovery are logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Callable

from presenced.core.engine import PresenceEngine
from presenced.core.journal import Journal
from presenced.core.state import Publication, Subscription
from presenced.sip.errors import SipParseError
from presenced.sip.uri import parse_name_addr, parse_uri
from presenced.storage.rows import (
    ActiveWatcherRow,
    Batch,
    PresentityRow,
    SubscriptionExtRow,
    WatcherRow,
)
from presenced.transaction.layer import Address

log = logging.getLogger("presenced.storage")

STATUS_CODE = {"active": 1, "pending": 2, "terminated": 3, "waiting": 4}
CODE_STATUS = {v: k for k, v in STATUS_CODE.items()}


def split_aor(aor: str) -> tuple[str, str]:
    """`sip:alice@example.com` → ('alice', 'example.com'); no user → ('', host)."""
    rest = aor.split(":", 1)[1] if ":" in aor else aor
    if "@" in rest:
        user, host = rest.rsplit("@", 1)
        return user, host
    return "", rest


def join_aor(user: str, domain: str) -> str:
    return f"sip:{user}@{domain}" if user else f"sip:{domain}"


def _uri_parts(header_or_uri: str) -> tuple[str, str]:
    try:
        uri = parse_name_addr(header_or_uri).uri if "<" in header_or_uri or ";" in header_or_uri else parse_uri(header_or_uri)
        return uri.user or "", uri.host
    except SipParseError:
        return split_aor(header_or_uri)


# ----------------------------------------------------------------- to rows
def publication_row(pub: Publication, wall: float) -> PresentityRow:
    user, domain = split_aor(pub.pres_uri)
    return PresentityRow(
        username=user, domain=domain, event=pub.event, etag=pub.etag,
        expires=int(pub.expires_at + wall), received_time=int(pub.received + wall),
        body=pub.body, sender=pub.sender or "", priority=pub.priority, ruid=("presenced-" + pub.etag)[:64],
    )


def subscription_rows(sub: Subscription, wall: float) -> tuple[ActiveWatcherRow, SubscriptionExtRow]:
    w_user, w_domain = _uri_parts(sub.watcher_uri)
    to_user, to_domain = _uri_parts(sub.from_header)
    from_user, from_domain = _uri_parts(sub.to_header)
    src = sub.source
    row = ActiveWatcherRow(
        presentity_uri=sub.pres_uri, watcher_username=w_user, watcher_domain=w_domain,
        to_user=to_user, to_domain=to_domain, event=sub.event, event_id=sub.event_id,
        to_tag=sub.local_tag, from_tag=sub.remote_tag, callid=sub.call_id,
        local_cseq=sub.local_cseq, remote_cseq=sub.remote_cseq, contact=sub.remote_target,
        record_route=", ".join(sub.route_set) or None, expires=int(sub.expires_at + wall),
        status=STATUS_CODE.get(sub.status, 2), reason=sub.reason, version=sub.version,
        socket_info=f"{(src.transport if src else 'udp')}:{sub.local_host}:{sub.local_port}",
        local_contact=sub.local_contact, from_user=from_user, from_domain=from_domain,
    )
    ext = {
        "to_header": sub.to_header, "from_header": sub.from_header, "entity": sub.entity,
        "watcher_uri": sub.watcher_uri, "watcher_display": sub.watcher_display,
        "event_header": sub.event_header, "accept": sub.accept, "created": sub.created + wall,
        "watcher_event": sub.watcher_event, "route_set": sub.route_set,
        "source": [src.transport, src.host, src.port] if src else None,
        "filter": sub.extra.get("filter") if sub.extra else None,
    }
    return row, SubscriptionExtRow(sub.call_id, sub.local_tag, sub.remote_tag, json.dumps(ext))


def build_batch(j: Journal, wall: float) -> Batch:
    b = Batch()
    for etag, (pres_uri, event) in j.pub_deletes.items():
        user, domain = split_aor(pres_uri)
        b.presentity_deletes.append((user, domain, event, etag))
    b.presentity_upserts.extend(publication_row(p, wall) for p in j.pubs.values())
    for sub, alive in j.subs.values():
        if alive:
            row, ext = subscription_rows(sub, wall)
            b.watcher_upserts.append(row)
            b.ext_upserts.append(ext)
        else:
            b.watcher_deletes.append((sub.call_id, sub.local_tag, sub.remote_tag))
    for (pres, event, watcher), decision in j.auth.items():
        user, domain = split_aor(watcher)
        if decision is None:
            b.auth_deletes.append((pres, user, domain, event))
        else:
            b.auth_upserts.append(WatcherRow(pres, user, domain, event, STATUS_CODE.get(decision[0], 2), decision[1], int(time.time())))
    return b


# ---------------------------------------------------------------- from rows
def restore_publications(engine: PresenceEngine, rows: list[PresentityRow], now: float,
                         owns: Callable[[str], bool] | None = None,
                         expired: dict[tuple[str, str], list[str]] | None = None) -> int:
    """Load stored rows into the engine (no NOTIFYs, nothing journaled); returns how many were live.
    `owns` (several workers): only presentities this worker owns. `expired`
    collects the ETags of rows whose publication expired meanwhile, by
    (presentity, event)."""
    n = 0
    for r in rows:
        pub = publication_from_row(engine, r, now)
        if pub is None:
            if expired is not None and r.expires > 0:
                pkg = engine.registry.get(r.event)
                aor = join_aor(r.username, r.domain)
                if pkg is not None and (owns is None or owns(aor)):
                    expired.setdefault((aor, pkg.key), []).append(r.etag)
        elif owns is None or owns(pub.pres_uri):
            engine.adopt_publication(pub)
            n += 1
    return n


def restore_subscriptions(engine: PresenceEngine, rows: list, now: float, bump: int = 0,
                          owns: Callable[[str], bool] | None = None) -> int:
    n = 0
    for row, ext in rows:
        sub = _subscription_from_row(engine, row, ext, now, bump)
        if sub is not None and (owns is None or owns(sub.pres_uri)):
            engine.adopt_subscription(sub)
            n += 1
    return n


def restore_watchers(engine: PresenceEngine, rows: list[WatcherRow]) -> None:
    for w in rows:
        engine._set_watcher(
            (w.presentity_uri, w.event, join_aor(w.watcher_username, w.watcher_domain)),
            # 4 (waiting) is not a decision: it is a pending watcher without a dialog
            (CODE_STATUS.get(w.status, "pending") if w.status != 4 else "pending", w.reason or None),
            since=w.inserted_time - engine.wall_offset,
        )


def publication_from_row(engine: PresenceEngine, r: PresentityRow, now: float) -> Publication | None:
    """The publication a presentity row holds, or None if expired or of an unknown event."""
    pkg = engine.registry.get(r.event)
    if pkg is None:
        return None
    wall = engine.wall_offset
    exp = (r.expires - wall) if r.expires > 0 else now + 10 * 365 * 86400
    if exp <= now:
        return None
    aor = join_aor(r.username, r.domain)
    return Publication(
        etag=r.etag, pres_uri=aor, entity=aor, event=pkg.key, body=bytes(r.body),
        content_type=pkg.content_types[0] if pkg.content_types else "", expires_at=exp,
        received=r.received_time - wall, seq=0, sender=r.sender or None, priority=r.priority,
    )


def _subscription_from_row(engine: PresenceEngine, r: ActiveWatcherRow, ext: SubscriptionExtRow | None, now: float, bump: int) -> Subscription | None:
    wall = engine.wall_offset
    exp = r.expires - wall
    if exp <= now:
        return None
    pkg = engine.registry.get(r.event)
    if pkg is None:
        return None
    data: dict[str, Any] = {}
    if ext is not None:
        try:
            data = json.loads(ext.data)
        except ValueError:
            data = {}
    proto, _, rest = (r.socket_info or "udp:127.0.0.1:5060").partition(":")
    lhost, _, lport = rest.rpartition(":")
    route_set = data.get("route_set")
    if route_set is None:
        route_set = [x.strip() for x in (r.record_route or "").split(",") if x.strip()]
    event_header = data.get("event_header") or (r.event.replace(";", ";") + (f";id={r.event_id}" if r.event_id else ""))
    src = data.get("source")
    if src:
        source = Address(src[0], src[1], int(src[2]), None)
    else:
        try:
            cu = parse_uri(r.contact)
            source = Address(proto.lower() or "udp", cu.host.strip("[]"), cu.port or 5060, None)
        except SipParseError:
            source = Address("udp", "127.0.0.1", 5060, None)
    watcher = data.get("watcher_uri") or join_aor(r.watcher_username, r.watcher_domain)
    return Subscription(
        call_id=r.callid, remote_tag=r.from_tag, local_tag=r.to_tag, event=pkg.key, event_id=r.event_id or None,
        event_header=event_header, pres_uri=r.presentity_uri, entity=data.get("entity") or r.presentity_uri,
        watcher_uri=watcher, watcher_display=data.get("watcher_display"), remote_target=r.contact,
        route_set=list(route_set),
        to_header=data.get("to_header") or f"<{join_aor(r.from_user, r.from_domain)}>;tag={r.from_tag}",
        from_header=data.get("from_header") or f"<{join_aor(r.to_user, r.to_domain)}>;tag={r.to_tag}",
        remote_cseq=r.remote_cseq, local_cseq=r.local_cseq + bump, expires_at=exp,
        status=CODE_STATUS.get(r.status, "pending"), reason=r.reason or None, version=r.version + bump,
        source=source, local_host=lhost or "127.0.0.1", local_port=int(lport) if lport.isdigit() else 5060,
        local_contact=r.local_contact, accept=data.get("accept"), created=float(data.get("created", time.time())) - wall,
        watcher_event=data.get("watcher_event", "subscribe"), winfo_full_sent=False,
        extra={"filter": data["filter"]} if data.get("filter") else None,
    )


WRITE_TIMEOUT = 3.0      # seconds a transaction may take before it counts as failed (retried later)
CLEAN_TIMEOUT = 30.0     # the expired-rows sweep
RETRY_MAX = 30.0         # longest back-off between retries while the database is unreachable
CLEAN_STOP = "writeback-clean-stop"  # marker: "1:<run>" after a stop that flushed everything
RUN_MARKER = "writeback-run"         # "<workers>:<run>" of the run that started last ...
PREV_RUN_MARKER = "writeback-run-prev"  # ... and of the one before it
RUN_ENV = "PRESENCED_RUN"            # one id shared by every worker of a run (set by the supervisor)


def start_run() -> None:
    """The supervisor, before forking: its workers share this run's id."""
    os.environ[RUN_ENV] = f"{time.time_ns()}-{os.getpid()}"


def run_id() -> str:
    """This run's id: the supervisor's for its workers (its pid ends the id),
    a new one for anything else (every start of a single-process server)."""
    rid = os.environ.get(RUN_ENV, "")
    if rid and rid.rpartition("-")[2] == str(os.getppid()):
        return rid
    return f"{time.time_ns()}-{os.getpid()}"


def marker_name(workers: int, index: int) -> str:
    return CLEAN_STOP if workers <= 1 else f"{CLEAN_STOP}.{index}of{workers}"
# Write-back, after a crash: NOTIFY CSeqs and body versions restart this far
# past the stored ones (a dialog's row is written early once it is
# core.journal.HURRY_AFTER NOTIFYs ahead, so this covers what a crash loses).
CSEQ_SKIP_AFTER_CRASH = 100


def _forget(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise


async def bounded(coro: Any, timeout: float) -> Any:
    """Await `coro` for at most `timeout` seconds, then give up on it *without*
    waiting for it to unwind: a driver stuck on a dead connection may take as long
    to handle the cancellation as the call itself (asyncio.wait_for would wait)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task in done:
        return task.result()
    task.cancel()
    task.add_done_callback(_forget)
    raise TimeoutError(f"no answer within {timeout:g} s")


class Persistence:
    """Owns the store connection, the flush policy and the retry loop.

    While the database is unreachable the server keeps answering: write-through
    degrades to write-back (replies and NOTIFYs leave at once, the changes stay
    in the journal) and the journal is retried with exponential back-off, up to
    RETRY_MAX seconds apart; the first success restores write-through. A
    transaction that does not finish within WRITE_TIMEOUT counts as failed
    (every batch is idempotent, so writing it again is safe).
    """

    def __init__(self, store: Any, engine: PresenceEngine, cfg: Any, send: Callable[[list], None]) -> None:
        self.store = store
        self.engine = engine
        p = cfg.presence
        self.subs_db_mode = int(p.subs_db_mode)
        self.publ_cache = int(p.publ_cache)
        self.db_update_period = max(1, int(p.db_update_period) or 100)
        self.clean_period = int(p.clean_period)
        self.fetch_rows = max(1, int(getattr(p, "fetch_rows", 500)))
        self.send = send
        self.held: list = []            # outbox items waiting for their commit
        self._writer: asyncio.Task | None = None
        self._soon: asyncio.Handle | None = None  # the end-of-pass commit (see hold)
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()     # one transaction at a time, in journal order
        self._retry_handle: asyncio.TimerHandle | None = None
        self.write_timeout = WRITE_TIMEOUT
        self.healthy = True
        self.last_error: str | None = None
        self.failures = 0               # failed transactions, ever
        self.consecutive_failures = 0   # since the last success (drives the back-off)
        self.outage_since: float | None = None
        self.commits = 0
        self.early_writes = 0  # write-back flushes a busy dialog asked for (write_early)
        # (presentity, event) whose stored publications expired while the server
        # was down: their restored watchers get a NOTIFY once SIP is up
        self.expired_while_down: dict[tuple[str, str], list[str]] = {}
        self._early: asyncio.Task | None = None
        self._stopping = False
        # Several workers (runtime/workers.py): each restores the presentities it
        # owns, keeps its own clean-stop marker, and one of them deletes expired rows.
        self.owns: Callable[[str], bool] | None = None
        self.workers = 1  # how many workers this run has, and which one this is
        self.index = 0
        self.run = run_id()
        self.cleaner = True

    @property
    def persist_publications(self) -> bool:
        return self.publ_cache != 2

    @property
    def persist_subscriptions(self) -> bool:
        return self.subs_db_mode != 0

    async def start(self, now: float) -> tuple[int, int]:
        await self.store.connect()
        await self.store.ensure_schema()
        self.engine.wall_offset = time.time() - now
        wall_now = int(time.time())
        watchers = await self.store.load_watchers()
        owns = self.owns
        if owns is not None:
            watchers = [w for w in watchers if owns(w.presentity_uri)]
        restore_watchers(self.engine, watchers)
        n_pub = n_sub = 0
        if self.persist_publications:
            # From 0, not from now: rows that expired while the server was down
            # name the watchers whose last NOTIFY still shows them.
            async for page in self.store.page_presentities(0, self.fetch_rows):
                n_pub += restore_publications(self.engine, page, now, owns, self.expired_while_down)
        # After a crash in write-back mode up to one db_update_period of CSeq and
        # version updates may be missing: jump past them so they keep increasing.
        # A clean stop flushed everything and says so; then nothing is skipped.
        bump = 0
        if self.subs_db_mode == 2:
            bump = 0 if await self._clean_since_last_run() else CSEQ_SKIP_AFTER_CRASH
        if self.persist_subscriptions:
            async for page in self.store.page_active_watchers(wall_now, self.fetch_rows):
                n_sub += restore_subscriptions(self.engine, page, now, bump, owns)
        counts = (n_pub, n_sub)
        self.engine.journal = Journal()
        loop = asyncio.get_running_loop()
        if self.subs_db_mode == 2:
            self._tasks.append(loop.create_task(self._periodic_flush()))
        if self.clean_period > 0 and self.cleaner:
            self._tasks.append(loop.create_task(self._periodic_clean()))
        return counts

    def needs_sync(self) -> bool:
        """Must the pending outbox wait for a commit? Never during an outage."""
        j = self.engine.journal
        if j is None or not self.healthy:
            return False
        if (j.pubs or j.pub_deletes) and self.persist_publications:
            return True
        return bool(j.subs or j.auth) and self.subs_db_mode in (1, 3)

    def commit_pending(self) -> bool:
        """Is a commit scheduled for the end of this loop pass (see hold)?"""
        return self._soon is not None

    def hold(self, items: list) -> None:
        """Queue outbox items until the current journal is committed: at the end
        of this loop pass (one transaction for every request the pass read), or
        by the write loop when that commit cannot be made at once."""
        if not self.healthy and not self.held:
            # Outage: answer now; the journal is written when the database is back.
            self.send(items)
            return
        self.held.extend(items)
        self._kick()

    def writing(self) -> bool:
        """Is the write loop running (it takes whatever is held meanwhile)?"""
        return self._writer is not None and not self._writer.done()

    def _start_writer(self) -> None:
        if not self.writing():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _kick(self) -> None:
        if self.writing():
            return  # the running write loop takes what is held
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._commit_soon)

    def _commit_soon(self) -> None:
        """After the loop pass's datagrams: commit here, without a task, when the
        store can commit at once (SQLite with the lock free), then release what
        waited; otherwise hand over to the write loop (it awaits the write)."""
        self._soon = None
        if self.writing():
            return
        done = self.healthy and not self._lock.locked() and self._commit_sync()
        if done or not self.healthy:  # committed, or an outage began: answer now
            items, self.held = self.held, []
            self.send(items)
            return
        self._start_writer()

    def _commit_sync(self) -> bool:
        """Commit the urgent part of the journal through the store's synchronous
        fast path (`write_now`); False, with the journal as it was, when the
        store has none or declines (lock held elsewhere), or the write failed."""
        write_now = getattr(self.store, "write_now", None)
        if write_now is None or self.engine.journal is None:
            return False
        taken = self._take(urgent=True)
        assert taken is not None
        batch = build_batch(taken, self.engine.wall_offset)
        if batch.empty():
            return True
        try:
            done = write_now(batch)
        except Exception as e:  # as for an awaited write: answer now, retry the changes later
            self._failed(e)
            self._merge_back(taken)
            return False
        if not done:
            self._merge_back(taken)
            return False
        self.commits += 1
        return True

    async def _write_loop(self) -> None:
        while True:
            items, self.held = self.held, []
            ok = await self.flush(urgent=True)
            self.send(items)
            if not ok:
                # Release what queued meanwhile too; the retry timer takes over.
                items, self.held = self.held, []
                self.send(items)
                return
            if not self.held and not self.needs_sync():
                return

    def _take(self, urgent: bool) -> Journal | None:
        """Hand over the journal's changes this mode stores. `urgent` (a commit
        that replies wait for): in write-back subscription mode (subs_db_mode 2)
        only the publications; subscription and authorization changes stay for
        the periodic flush."""
        j = self.engine.journal
        if j is None:
            return None
        taken = j.take_publications() if urgent and self.subs_db_mode == 2 else j.take()
        if not self.persist_publications:
            taken.pubs.clear()
            taken.pub_deletes.clear()
        if not self.persist_subscriptions:
            taken.subs.clear()
        return taken

    async def flush(self, urgent: bool = False) -> bool:
        """Write the journal in one transaction (`urgent`: only what replies wait
        for, see _take); False if it failed (it will be retried)."""
        async with self._lock:
            taken = self._take(urgent)
            batch = build_batch(taken, self.engine.wall_offset) if taken is not None else None
            if taken is None or batch is None or batch.empty():
                if not self.healthy:  # nothing to write: find out whether the outage is over
                    await self._probe()
                return self.healthy
            try:
                # A store that can commit at once (SQLite, lock free) skips the task
                # and the timeout that `bounded` wraps around an awaited write.
                write_now = getattr(self.store, "write_now", None)
                if write_now is None or not write_now(batch):
                    await bounded(self.store.write(batch), self.write_timeout)
            except Exception as e:  # keep answering; retry these changes later
                self._failed(e)
                self._merge_back(taken)
                return False
            self.commits += 1
            self._succeeded()
            return True

    async def _probe(self) -> None:
        error: BaseException = ConnectionError("ping failed")
        try:
            ok = await bounded(self.store.ping(), self.write_timeout)
        except Exception as e:
            ok, error = False, e
        if ok:
            self._succeeded()
        else:
            self._failed(error)

    def _succeeded(self) -> None:
        if not self.healthy:
            down = time.monotonic() - (self.outage_since or time.monotonic())
            log.warning("storage %s is reachable again after %.1f s; pending changes written",
                        self.store.url, down)
        self.healthy = True
        self.last_error = None
        self.consecutive_failures = 0
        self.outage_since = None

    def _failed(self, e: BaseException) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = str(e) or type(e).__name__
        if self.healthy:
            self.outage_since = time.monotonic()
        self.healthy = False
        if self._stopping:
            log.error("storage write to %s failed: %s", self.store.url, self.last_error)
            return
        delay = min(RETRY_MAX, 0.5 * 2 ** min(self.consecutive_failures, 6))
        log.error("storage write to %s failed (retrying in %.1f s; replies no longer wait for the database): %s",
                  self.store.url, delay, self.last_error)
        if self._retry_handle is None:
            self._retry_handle = asyncio.get_running_loop().call_later(delay, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        self._start_writer()

    def _merge_back(self, taken: Journal) -> None:
        j = self.engine.journal
        assert j is not None
        for etag, v in taken.pub_deletes.items():
            if etag not in j.pubs:
                j.pub_deletes.setdefault(etag, v)
        for etag, p in taken.pubs.items():
            if etag not in j.pub_deletes:
                j.pubs.setdefault(etag, p)
        for sk, sv in taken.subs.items():
            j.subs.setdefault(sk, sv)
        for ak, av in taken.auth.items():
            j.auth.setdefault(ak, av)
        for fk, fv in taken.first_cseq.items():
            if fv < j.first_cseq.get(fk, fv + 1):
                j.first_cseq[fk] = fv

    def notify_expired_while_down(self, now: float) -> int:
        """NOTIFY the watchers of presentities whose publications expired while
        the server was down (at run time each publication's own timer does it).
        Returns how many presentities had some."""
        keys, self.expired_while_down = self.expired_while_down, {}
        journal = self.engine.journal
        for (pres, event), etags in keys.items():
            if journal is not None:
                # the rows go with the next write: the next start does not tell again
                for etag in etags:
                    journal.pub_deleted(etag, pres, event)
            self.engine.state_changed(pres, event, now)
        return len(keys)

    def write_early(self) -> None:
        """Write-back: a dialog sent journal.HURRY_AFTER NOTIFYs since its row
        was written; write now rather than at the end of the period, so a crash
        cannot cost it more CSeqs than a restart skips."""
        if self.subs_db_mode != 2 or not self.healthy or self._early is not None:
            return
        self._early = asyncio.get_running_loop().create_task(self._write_early())

    async def _write_early(self) -> None:
        try:
            await self.flush()
            self.early_writes += 1
        finally:
            self._early = None

    async def _periodic_flush(self) -> None:
        while True:
            await asyncio.sleep(self.db_update_period)
            if self.healthy:  # during an outage the retry timer owns the journal
                await self.flush()

    async def _periodic_clean(self) -> None:
        while True:
            await asyncio.sleep(self.clean_period)
            try:
                await bounded(self.store.delete_expired(int(time.time())), CLEAN_TIMEOUT)
            except Exception as e:
                log.warning("cleaning expired rows in %s failed: %s", self.store.url, str(e) or type(e).__name__)

    @property
    def marker(self) -> str:
        """This worker's clean-stop marker."""
        return marker_name(self.workers, self.index)

    async def _clean_since_last_run(self) -> bool:
        """Did every worker of the run before this one stop cleanly (write-back)?

        Each worker keeps its own marker, named after the worker count, so a
        run with another count must be judged by that run's markers, not by
        what this count's markers said long ago (a crash in between would be
        missed and CSeqs reused). The run markers say which run came last;
        workers of one run write the same values, so their order is free."""
        store, me = self.store, self.run
        cur = await store.get_marker(RUN_MARKER)
        if cur is None:  # a database from before run markers: this count's marker alone
            own = await store.get_marker(self.marker)
            clean = own is not None and own.startswith("1")
        elif cur.endswith(":" + me):
            # another worker of this run started first (it moved `cur` to `prev`),
            # or this worker restarts after dying in this run
            own = await store.get_marker(self.marker)
            prev = await store.get_marker(PREV_RUN_MARKER)
            clean = own != "0:" + me and prev is not None and await self._run_stopped_cleanly(prev)
        else:
            clean = await self._run_stopped_cleanly(cur)
            await store.set_marker(PREV_RUN_MARKER, cur)  # before RUN_MARKER: see above
        await store.set_marker(RUN_MARKER, f"{self.workers}:{me}")
        await store.set_marker(self.marker, "0:" + me)
        return clean

    async def _run_stopped_cleanly(self, run: str) -> bool:
        count, _, rid = run.partition(":")
        if not count.isdigit() or not rid:
            return False
        for i in range(int(count)):
            if await self.store.get_marker(marker_name(int(count), i)) != "1:" + rid:
                return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer}, timeout=2 * self.write_timeout)
        try:
            if not await self.flush():
                log.error("storage %s: changes since %s could not be written before stopping",
                          self.store.url, "the outage began" if self.outage_since else "the last commit")
            elif self.subs_db_mode == 2:
                try:
                    await bounded(self.store.set_marker(self.marker, "1:" + self.run), self.write_timeout)
                except Exception as e:
                    log.warning("storage %s: could not record the clean stop (%s); the next start "
                                "will skip 100 CSeqs", self.store.url, str(e) or type(e).__name__)
        finally:
            if self._retry_handle is not None:
                self._retry_handle.cancel()
                self._retry_handle = None
            try:
                await bounded(self.store.close(), self.write_timeout)
            except Exception as e:
                log.warning("closing %s: %s", self.store.url, str(e) or type(e).__name__)
                _terminate(self.store)

    async def ping(self) -> bool:
        try:
            return bool(await bounded(self.store.ping(), self.write_timeout))
        except Exception:
            return False


def _terminate(store: Any) -> None:
    """Drop a server store's connections at once (their pending calls fail), so
    that nothing stuck on an unreachable database keeps the process from exiting."""
    pool = getattr(store, "_pool", None)
    terminate = getattr(pool, "terminate", None)
    if callable(terminate):
        try:
            terminate()
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log.debug("terminating connections to %s: %s", store.url, e)
