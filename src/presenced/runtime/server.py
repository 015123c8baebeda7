"""The asyncio runtime: wires transports to the sans-I/O core.

The core never sleeps or reads the clock; this module feeds it
`loop.time()`, drains its outbox onto sockets after every call (after every
loop pass for received messages: a burst's answers leave together) and keeps a
single `call_at` armed for the core's earliest deadline (aioquic's pattern).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import ipaddress
import signal
from typing import Any

from presenced import _build
from presenced.core.server import SipCore
from presenced.core.warmup import warm_up
from presenced.runtime.persistence import bounded
from presenced.runtime.shared import LOAD_TIMEOUT, needs_sync
from presenced.sip.errors import SipParseError
from presenced.sip.message import Request, Response
from presenced.transaction.layer import Address, ClientTransaction, server_key
from presenced.transport.tcp import TcpConnection, TcpRegistry
from presenced.transport.tls import client_context, server_context
from presenced.transport.udp import UdpListener, start_udp

log = logging.getLogger("presenced.runtime")

SYNC_BATCH = 64  # DB-only modes: requests whose state is read together
# DB-only modes, overload: a request that would wait longer than SYNC_ADMIT
# seconds for its database reads (queue length times the recent time per
# request) is answered 503 at once, and one that has waited SYNC_STALE seconds
# all the same is answered 503 instead of being run. Its sender has
# retransmitted by then and soon gives up; running it late spends the
# database on answers nobody waits for, and everything behind it waits longer.
SYNC_ADMIT = 2.0
SYNC_STALE = 4.0
SYNC_RETRY_AFTER = 5

CREDENTIALS_NEGATIVE_TTL = 5.0   # seconds an unknown username is not looked up again
CREDENTIALS_LOOKUP_RATE = 20     # database lookups of unknown usernames per second (burst as many)
CREDENTIALS_LOOKUP_TIMEOUT = 2.0

#: How late (s) the runtime may run a core deadline (SIP timers are >= 500 ms).
TIMER_SLACK = 0.005
RULES_RECHECK = 5.0  # seconds between re-reads of one presentity's pres-rules row (_new_watcher)
YOUNG_GC_PERIOD = 0.1  # seconds between timed young-generation collections (see _collect_young)
MIDDLE_GC_EVERY = 20  # every 20th timed collection also takes the middle generation (2 s)
FULL_GC_EVERY = 6000  # every 6,000th, all generations (10 min)
YOUNG_GC_IDLE = 400   # fewer new objects than this since the last collection: not worth one ...
YOUNG_GC_IDLE_PERIOD = 1.0  # ... and look again after this long (an idle worker wakes 1/s, not 10/s)
YOUNG_GC_BUSY = 20    # ... unless this many messages arrived since the last look: then collect anyway
WARM_UP = True  # run core.warmup's scripted exchange before listening (tests may switch it off)
FANOUT_CHUNK = 16   # NOTIFYs of one fan-out built before they are sent ...
FANOUT_PASS = 256   # ... and sent before other callbacks get the loop


_IP_SEEN: set[str] = set()


def _is_ip(host: str) -> bool:
    # Called per datagram sent; destinations repeat, ipaddress parsing is slow.
    if host in _IP_SEEN:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    if len(_IP_SEEN) >= 10000:
        _IP_SEEN.clear()
    _IP_SEEN.add(host)
    return True


PROTOCOLS = ("udp", "tcp", "tls", "ws", "wss")
FRAMED = ("tcp", "tls")  # byte streams cut by Content-Length; ws/wss messages come whole
WEBSOCKET = ("ws", "wss")


def parse_listen(spec: str) -> tuple[str, str, int]:
    """`udp:127.0.0.1:5060` / `tcp:[::1]:5060` / `wss:0.0.0.0:443` → (proto, host, port)."""
    proto, _, rest = spec.partition(":")
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"--listen {spec}: protocol must be udp, tcp, tls, ws or wss")
    if rest.startswith("["):
        end = rest.find("]")
        host, port_s = rest[1:end], rest[end + 2 :]
    else:
        host, _, port_s = rest.rpartition(":")
    if not host or not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise ValueError(f"--listen {spec}: expected PROTO:HOST:PORT")
    return proto, host, int(port_s)


class Server:
    def __init__(self, cfg: Any = None, listen: list[str] | None = None, core: SipCore | None = None) -> None:
        self.cfg = cfg
        self.core = core or SipCore(cfg)
        self.core.fanout_batch = FANOUT_CHUNK  # the rest streams from _flush
        self._draining = False
        self._flush_soon = False
        self._messages = 0  # received since the last timed GC look (_collect_young)
        self.stopping = False  # SIGTERM: requests are no longer taken, responses still are
        self.listen_specs = [parse_listen(s) for s in (listen or ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"])]
        self.udp: list[UdpListener] = []
        self.tcp = TcpRegistry(self._on_message)  # every stream connection: tcp, tls, ws, wss
        self.tcp.on_error = self._on_stream_error
        self._setup_secure_transports(cfg)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self.bound: list[tuple[str, str, int]] = []
        self.persistence: Any = None
        self.shared: Any = None  # runtime/shared.py, in the DB-only modes
        self._rules_checked: dict[str, float] = {}  # when _new_watcher last re-read them
        self._sync_queue: asyncio.Queue | None = None
        self._sync_keys: set = set()  # server-transaction keys waiting in the queue
        self._sync_cost = 0.0  # seconds per queued request, moving average (admission control)
        self.reload_config: Any = None  # set by the CLI: () -> Config
        self._cred_inflight: set[tuple[str, str]] = set()
        self._cred_negative: dict[tuple[str, str], float] = {}  # unknown user -> retry after
        self._cred_tokens = float(CREDENTIALS_LOOKUP_RATE)
        self._cred_refill = 0.0
        # HTTP management API (JSON-RPC, /metrics, /health): built here so a bad
        # http.listen/http.token combination fails before anything binds.
        self.http: Any = None
        http_listen = getattr(getattr(cfg, "http", None), "listen", "") or ""
        if http_listen:
            from presenced.api.http import HttpApi

            self.http = HttpApi(self, http_listen, getattr(cfg.http, "token", "") or "")

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.core.engine.wall_offset = time.time() - self.loop.time()
        await self._open_store()
        if WARM_UP:
            try:
                warm_up(self.loop.time())
            except Exception:  # noqa: BLE001 - an optimisation: never a reason not to start
                log.debug("warm-up exchange failed", exc_info=True)
        if self.http is not None:
            # Before SIP: whoever sees SIP answered (a health check, a test)
            # finds /health and /RPC up too.
            try:
                await self.http.start()
            except OSError as e:
                raise OSError(e.errno, f"{self.http.host}:{self.http.requested_port} (http.listen): {e.strerror or e}") from None
        await self._open_listeners()
        if self.persistence is not None and self.persistence.expired_while_down:
            n = self.persistence.notify_expired_while_down(self.loop.time())
            log.info("publications of %d presentities expired while the server was down: watchers notified", n)
            self._flush()
        self._housekeeping = self.loop.create_task(self._housekeeping_loop())
        clean_period = int(getattr(getattr(self.cfg, "presence", None), "clean_period", 100))
        if clean_period > 0:
            self._tasks.add(self.loop.create_task(self._purge_pending_watchers(clean_period)))
        # Presence state is many long-lived small objects: move what exists now
        # out of the collector's sight and make full collections rarer, so the
        # cyclic GC does not rescan every subscription under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        self._young_gcs = 0
        self._young_gc = self.loop.call_later(YOUNG_GC_PERIOD, self._collect_young)
        log.info("listening on %s (hot path: %s)", ", ".join(f"{p}:{h}:{n}" for p, h, n in self.bound), _build.MODE)

    async def _open_listeners(self, socks: list | None = None) -> None:
        """Bind every --listen address (or use `socks`, one per address, bound
        by the supervisor of several workers). Stream listeners first: UDP
        is answered as soon as it is open (the loop runs between these
        awaits), and whoever sees it answered must find TLS/TCP/WS open too."""
        bound: dict[int, tuple[str, str, int]] = {}
        for i, (proto, host, port) in sorted(enumerate(self.listen_specs), key=lambda spec: spec[1][0] == "udp"):
            sock = socks[i] if socks is not None else None
            try:
                if proto == "udp":
                    l = await start_udp(host, port, self._on_message, sock)
                    self.udp.append(l)
                    bound[i] = ("udp", host, l.port)
                else:
                    srv = await self._listen_stream(proto, host, port, sock)
                    listening = getattr(srv, "sockets", None)  # asyncio.Server has them, AbstractServer does not say so
                    real = listening[0].getsockname()[1] if listening else port
                    bound[i] = (proto, host, real)
            except OSError as e:  # name the address: there may be several
                raise OSError(e.errno, f"{proto}:{host}:{port} (listen.addresses): {e.strerror or e}") from None
        self.bound.extend(bound[i] for i in sorted(bound))

    def _setup_secure_transports(self, cfg: Any) -> None:
        """TLS contexts and WebSocket settings, checked before anything binds
        (a TlsConfigError is a ValueError naming the parameter)."""
        from presenced.config import TlsSection, WebsocketSection
        from presenced.transport.ws import WsSettings

        tls = getattr(cfg, "tls", None) or TlsSection()
        protos = {p for p, _, _ in self.listen_specs}
        self.tls_server = server_context(tls) if protos & {"tls", "wss"} else None
        self.tls_client = client_context(tls)
        ws = getattr(cfg, "websocket", None) or WebsocketSection()
        self.ws_settings = WsSettings(path=ws.path, origins=frozenset(ws.origins))

    async def _listen_stream(self, proto: str, host: str, port: int, sock: Any = None) -> asyncio.AbstractServer:
        ctx = self.tls_server if proto in ("tls", "wss") else None
        if proto in WEBSOCKET:
            from presenced.transport.ws import WsConnection

            settings = self.ws_settings
            return await self.tcp.listen(
                host, port, ssl_context=ctx,
                factory=lambda: WsConnection(self.tcp, self._on_message, proto, settings), sock=sock)
        return await self.tcp.listen(host, port, transport=proto, ssl_context=ctx, sock=sock)

    async def _open_store(self) -> None:
        url = getattr(getattr(self.cfg, "db", None), "url", "memory") if self.cfg is not None else "memory"
        if url == "memory":
            if self.core.auth_methods:
                from presenced.storage.base import StoreError

                raise StoreError("auth.require needs credentials from the subscriber table: set db.url (not memory)")
            return
        from presenced.runtime.persistence import Persistence
        from presenced.storage import Store

        p = self.cfg.presence
        tables = {
            "presentity": p.presentity_table, "active_watchers": p.active_watchers_table,
            "watchers": p.watchers_table, "xcap": self.cfg.presence_xml.xcap_table,
        }
        store = Store.from_url(url, tables=tables)
        self.persistence = self._make_persistence(Persistence, store)
        assert self.loop is not None
        n_pub, n_sub = await self.persistence.start(self.loop.time())
        if p.subs_db_mode == 3 or p.publ_cache == 0:
            from presenced.runtime.shared import SharedState

            self.shared = SharedState(self.core.engine, store, pubs=p.publ_cache == 0, subs=p.subs_db_mode == 3,
                                      authorizer=self.core.authorizer)
            self.shared.on_confirmed = self._flush
            self._sync_queue = asyncio.Queue()
            self._tasks.add(self.loop.create_task(self._sync_worker()))
        await self.load_rules()
        auth = self.core.authorizer
        if auth is not None and self.shared is None and not self.core.engine.force_active:
            self.core.engine.on_new_watcher = self._new_watcher  # (DB-only: shared.py reads rules per request)
        if self.core.auth_methods:
            await self.load_credentials()
            self._tasks.add(self.loop.create_task(self._refresh_credentials()))
            self.core.credentials_miss = self._credentials_miss
        self._arm_timer()
        log.info("storage %s: restored %d publications and %d subscriptions", store.url, n_pub, n_sub)

    def _make_persistence(self, cls: Any, store: Any) -> Any:
        return cls(store, self.core.engine, self.cfg, self._send_items)

    async def load_rules(self, presentity: str | None = None) -> int:
        """(Re)load pres-rules from the xcap table: all, or one presentity AoR."""
        auth = self.core.authorizer
        if auth is None or self.persistence is None:
            return 0
        from presenced.core.authorization import PRES_RULES
        from presenced.runtime.persistence import join_aor

        store = self.persistence.store
        if presentity is None:
            rows = await store.load_xcap(PRES_RULES)
            auth.clear()
            for row in rows:
                aor = join_aor(row.username, row.domain)
                if aor not in auth.rules:  # the first row wins, as in Kamailio
                    auth.set_document(aor, bytes(row.doc))
            return len(auth.rules)
        await self._read_rules(presentity)
        return 1 if auth.has_rules(presentity) else 0

    async def _read_rules(self, presentity: str) -> bool:
        """Install one presentity's pres-rules row; True when it changed."""
        from presenced.core.authorization import PRES_RULES
        from presenced.runtime.persistence import split_aor

        assert self.core.authorizer is not None and self.persistence is not None
        user, domain = split_aor(presentity)
        row = await self.persistence.store.get_xcap(user, domain, PRES_RULES)
        return self.core.authorizer.set_document(presentity, bytes(row.doc) if row is not None else None)

    def _new_watcher(self, pres: str, now: float) -> None:
        """Kamailio reads the presentity's pres-rules row on every SUBSCRIBE;
        presenced answers from its cache and re-reads the row afterwards (at most
        every RULES_RECHECK per presentity), so a document another program wrote
        into the xcap table applies within a moment: the watcher's pending NOTIFY
        is followed by the decision the new rules give."""
        last = self._rules_checked.get(pres)
        if last is not None and now - last < RULES_RECHECK:
            return
        if len(self._rules_checked) > 65536:
            self._rules_checked.clear()
        self._rules_checked[pres] = now
        self._spawn(self._recheck_rules(pres))

    async def _recheck_rules(self, pres: str) -> None:
        if self.core.authorizer is None or self.persistence is None:
            return
        try:
            changed = await self._read_rules(pres)
        except Exception as e:  # noqa: BLE001 - the cached rules stay in force
            log.warning("re-reading pres-rules of %s failed: %s", pres, str(e) or type(e).__name__)
            return
        if changed and self.loop is not None:
            if self.core.engine.pres_update_watchers(pres, "presence", self.loop.time()):
                self._flush()

    async def load_credentials(self) -> int:
        """Cache Kamailio's `subscriber` rows for digest authentication."""
        rows = await self.persistence.store.load_subscribers()
        self.core.load_credentials(rows)
        return len(rows)

    def _credentials_miss(self, user: str, domain: str) -> bool:
        """Core hook for an unknown digest username: start (or join) a lookup of
        that one user; False when a lookup is not allowed now (the core then
        answers 401 at once). Per username at most one lookup per
        CREDENTIALS_NEGATIVE_TTL; all together CREDENTIALS_LOOKUP_RATE per second."""
        assert self.loop is not None and self.persistence is not None
        key = (user, domain.lower())
        if key in self._cred_inflight:
            return True
        now = self.loop.time()
        until = self._cred_negative.get(key)
        if until is not None:
            if until > now:
                return False
            del self._cred_negative[key]
        burst = CREDENTIALS_LOOKUP_RATE
        self._cred_tokens = min(burst, self._cred_tokens + (now - self._cred_refill) * CREDENTIALS_LOOKUP_RATE)
        self._cred_refill = now
        if self._cred_tokens < 1:
            return False
        self._cred_tokens -= 1
        self._cred_inflight.add(key)
        self._spawn(self._fetch_credentials(user, domain, key))
        return True

    async def _fetch_credentials(self, user: str, domain: str, key: tuple[str, str]) -> None:
        assert self.loop is not None and self.persistence is not None
        row = None
        failed = False
        try:
            row = await asyncio.wait_for(self.persistence.store.get_subscriber(user, domain), CREDENTIALS_LOOKUP_TIMEOUT)
        except Exception as e:
            failed = True
            log.warning("looking up credentials of %s@%s failed: %s", user, domain, str(e) or type(e).__name__)
        finally:
            self._cred_inflight.discard(key)
        now = self.loop.time()
        # Found or not, the same name is not looked up again for a few seconds:
        # wrong-password guesses must not turn into database queries.
        if len(self._cred_negative) >= 10_000:
            self._cred_negative = {k: t for k, t in self._cred_negative.items() if t > now}
        self._cred_negative[key] = now + CREDENTIALS_NEGATIVE_TTL
        if row is not None:
            log.info("credentials of %s@%s loaded from the database", user, domain)
        self.core.credentials_fetched(user, domain, row, now, failed=failed)
        self._flush()

    async def _refresh_credentials(self, period: float = 30.0) -> None:
        # Also catches changed passwords and removed users (unknown users are
        # looked up at once by _credentials_miss).
        while True:
            await asyncio.sleep(period)
            try:
                await self.load_credentials()
            except Exception as e:
                log.warning("reloading credentials failed: %s", e)

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening, let in-flight NOTIFY transactions finish (bounded by
        `grace` seconds, by default core.shutdown_grace_ms)."""
        if grace is None:
            grace = shutdown_grace(self.cfg)
        # From here on requests are dropped (also on UDP sockets and open TCP
        # connections, which stay up for the NOTIFY responses still expected).
        self.stopping = True
        if self.http is not None:
            await self.http.stop()
        for s in self.tcp.servers:
            s.close()
        if self.loop is not None and (self.persistence is None or not self.persistence.persist_subscriptions):
            # Subscriptions live in memory only: tell the watchers they end, so
            # they subscribe again once the server is back instead of waiting
            # for their next refresh to get 481.
            n = self.core.engine.deactivate_all(self.loop.time())
            if n:
                log.info("stopping: %d subscriptions ended (deactivated); they are kept in memory only", n)
                self._flush()
        deadline = self.loop.time() + grace if self.loop else 0
        # Completed UDP transactions linger for Timer K; they are not in flight.
        while self.loop and any(not ct.done for ct in self.core.tx.client.values()) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if getattr(self, "_housekeeping", None):
            self._housekeeping.cancel()
        if getattr(self, "_young_gc", None):
            self._young_gc.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for l in self.udp:
            if l.transport is not None:
                l.transport.close()
        if self.persistence is not None:
            await self.persistence.stop()
        self.tcp.close_all()
        for t in list(self._tasks):
            t.cancel()

    async def serve_forever(self) -> None:
        # Signal handlers first: a SIGTERM that arrives while the sockets are
        # already answering but start() has not returned must still stop cleanly.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        if self.reload_config is not None:
            try:
                loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            except (NotImplementedError, RuntimeError):
                pass
        await self.start()
        await stop.wait()
        log.info("shutting down")
        await self.stop()

    # Parameters SIGHUP can change in a running server (engine attribute names).
    LIVE = {
        "presence.min_expires": "min_expires", "presence.max_expires": "max_expires",
        "presence.expires_offset": "expires_offset", "presence.min_expires_action": "min_expires_action",
        "presence.subs_respond_200": "subs_respond_200", "presence.timeout_rm_subs": "timeout_rm_subs",
        "presence.send_fast_notify": "send_fast_notify", "presence.retrieve_order": "retrieve_order",
        "presence.force_delete": "force_delete",
    }

    def _on_sighup(self) -> None:
        """Reload the configuration; apply what can change live, name what cannot."""
        try:
            new = self.reload_config()
        except Exception as e:
            log.error("SIGHUP: configuration not reloaded: %s", e)
            return
        old_d, new_d = self.cfg.as_dict(), new.as_dict()
        applied, refused = [], []
        for section, params in new_d.items():
            for name, value in params.items():
                if old_d.get(section, {}).get(name) == value:
                    continue
                key = f"{section}.{name}"
                attr = self.LIVE.get(key)
                if attr is not None:
                    setattr(self.core.engine, attr, int(value))
                    applied.append(key)
                elif key == "log.level":
                    logging.getLogger().setLevel(getattr(logging, str(value).upper(), logging.INFO))
                    applied.append(key)
                elif key == "presence_xml.no_rules_policy" and self.core.authorizer is not None:
                    self.core.authorizer.no_rules_policy = str(value)
                    applied.append(key)
                else:
                    refused.append(key)
        eng = self.core.engine
        eng.max_expires = eng.max_expires or 3600
        eng.min_expires = min(eng.min_expires, eng.max_expires)
        self.cfg = new
        log.warning("SIGHUP: reloaded; applied: %s; need a restart: %s",
                    ", ".join(applied) or "nothing", ", ".join(refused) or "nothing")

    async def _purge_pending_watchers(self, period: float) -> None:
        # The in-memory half of Kamailio's watchers cleaner (the database half is
        # Store.delete_expired): a pending decision older than a day is forgotten.
        from presenced.storage.base import PENDING_AUTH_MAX_AGE

        assert self.loop is not None
        while True:
            await asyncio.sleep(period)
            if self.core.engine.purge_pending_watchers(self.loop.time(), PENDING_AUTH_MAX_AGE):
                self._flush()

    def _collect_young(self) -> None:
        """CPython counts allocations minus deallocations: in steady state the
        expiring old state (lingering transactions, ended dialogs) offsets the
        new, the threshold is never reached, and the young generation grows
        until one collection scans hundreds of thousands of objects (pauses of
        ~100 ms seen). Collecting it by time keeps every pause short.

        A timed collection never escalates to the older generations the way
        CPython's own does, so every MIDDLE_GC_EVERY-th one also collects the
        middle generation and every FULL_GC_EVERY-th all of them: a reference
        cycle that outlived its first young collection is still freed. (What
        lingers by the thousand - transactions, timer entries - is untracked
        by then; the middle generation holds what the last 2 s left alive.)
        With fewer than YOUNG_GC_IDLE new objects and fewer than YOUNG_GC_BUSY
        messages since the last look the collection is skipped and the next
        look is YOUNG_GC_IDLE_PERIOD later: at a few requests per second the
        wake-ups were most of an idle worker's CPU. The message count matters
        because the object count is allocations minus deallocations: under
        load it can be low while the young generation holds thousands of new
        objects (old ones dying offset them), and a one-second back-off then
        made every collection scan a second's worth (E at 750 cycles/s:
        young pauses up to 1.5 ms, bench/gc_pauses.py)."""
        delay = YOUNG_GC_PERIOD
        busy = self._messages >= YOUNG_GC_BUSY
        self._messages = 0
        if gc.isenabled():
            if not busy and gc.get_count()[0] < YOUNG_GC_IDLE:
                # Idle or nearly (a low request rate): nothing to gain from a
                # collection, and each timer wake-up costs CPU of its own.
                delay = YOUNG_GC_IDLE_PERIOD
            else:
                n = self._young_gcs = self._young_gcs + 1
                gc.collect(2 if n % FULL_GC_EVERY == 0 else 1 if n % MIDDLE_GC_EVERY == 0 else 0)
        assert self.loop is not None
        self._young_gc = self.loop.call_later(delay, self._collect_young)

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            self.tcp.sweep_idle()

    # -------------------------------------------------------------- receive
    def _on_message(self, data: bytes, source: Address, local: tuple[str, int],
                    parsed: Request | Response | None = None) -> None:
        assert self.loop is not None
        self._messages += 1
        if self.stopping and data.lstrip(b"\r\n")[:7].upper() != b"SIP/2.0":
            self.core.stats["dropped"] += 1  # shutting down: no new requests
            return
        if self._sync_queue is not None and needs_sync(data) and self._queue_for_sync(data, source, local):
            return
        self.core.receive(data, source, local, self.loop.time(), stream=source.transport in FRAMED, parsed=parsed)
        self._flush_after_pass()

    def _flush_after_pass(self) -> None:
        """What the messages of this loop pass produced leaves after every
        datagram the pass read has been handled (call_soon runs after them):
        a burst's answers go out together, not between its requests."""
        if not self._flush_soon:
            assert self.loop is not None
            self._flush_soon = True
            self.loop.call_soon(self._flush_burst)

    def _flush_burst(self) -> None:
        self._flush_soon = False
        self._flush()

    def _queue_for_sync(self, data: bytes, source: Address, local: tuple[str, int]) -> bool:
        """DB-only modes: queue a PUBLISH/SUBSCRIBE for a reload (False: the core
        takes it now: unparsable, or a retransmission the core absorbs)."""
        assert self.shared is not None and self._sync_queue is not None
        req = self.shared.parse(data, source.transport in FRAMED)
        if req is None:
            return False
        try:
            key = server_key(req)
        except SipParseError:
            return False
        if key in self.core.tx.server:
            return False
        if key in self._sync_keys:
            self.core.tx.stats["retransmissions_absorbed"] += 1  # the queued original will answer
            return True
        assert self.loop is not None
        now = self.loop.time()
        if self._sync_queue.qsize() * self._sync_cost > SYNC_ADMIT:
            self.core.refuse_overloaded(req, source, now, SYNC_RETRY_AFTER)
            self._flush_after_pass()  # an overload arrives in bursts: refuse them in one batch
            return True
        self._sync_keys.add(key)
        self._sync_queue.put_nowait((req, key, data, source, local, now))
        return True

    async def _sync_worker(self) -> None:
        """DB-only modes: requests leave the queue in batches; each batch waits for
        this process's previous commits, reads its state (concurrently), applies
        it to the engine, and only then runs, in arrival order."""
        assert self._sync_queue is not None and self.loop is not None and self.shared is not None
        queue, shared = self._sync_queue, self.shared
        while True:
            jobs = [await queue.get()]
            while len(jobs) < SYNC_BATCH and not queue.empty():
                jobs.append(queue.get_nowait())
            started = self.loop.time()
            stale = [job for job in jobs if started - job[5] > SYNC_STALE]
            if stale:
                for req, key, _data, source, _local, _queued in stale:
                    self._sync_keys.discard(key)
                    self.core.refuse_overloaded(req, source, started, SYNC_RETRY_AFTER)
                self._flush()
                jobs = [job for job in jobs if started - job[5] <= SYNC_STALE]
                if not jobs:
                    continue
            try:
                await self._settled()
                results = await asyncio.gather(
                    *(bounded(shared.fetch(job[0]), LOAD_TIMEOUT) for job in jobs), return_exceptions=True)
                now = self.loop.time()
                self.core.engine.now = now
                for res in results:
                    if isinstance(res, BaseException):  # store down: answer from what memory holds
                        shared.load_errors += 1
                        log.warning("reloading state from %s failed (%s); answering from memory",
                                    self.persistence.store.url, str(res) or type(res).__name__)
                    elif res is not None:
                        shared.apply(res, now)
                for _req, key, data, source, local, _queued in jobs:
                    self._sync_keys.discard(key)
                    self.core.receive(data, source, local, self.loop.time(), stream=source.transport in FRAMED)
                self._flush()
                cost = (self.loop.time() - started) / len(jobs)
                self._sync_cost = cost if self._sync_cost == 0.0 else 0.8 * self._sync_cost + 0.2 * cost
            except Exception:
                log.exception("DB-only request handling failed")
                for job in jobs:
                    self._sync_keys.discard(job[1])

    async def reload_presentity(self, pres: str, event: str) -> None:
        """DB-only modes: bring one presentity's publications and watchers up to
        date with the database before acting on all of them (a no-op otherwise)."""
        if self.shared is None:
            return
        await self._settled()
        loaded = await bounded(self.shared.fetch_presentity(pres, event), LOAD_TIMEOUT)
        assert self.loop is not None
        self.shared.apply(loaded, self.loop.time())

    async def _settled(self) -> None:
        """Wait until this process's own changes are in the database."""
        p = self.persistence
        while True:
            if p.writing():
                await asyncio.wait({p._writer})
            elif self.core.engine._fanout:
                await asyncio.sleep(0)  # the drain runs from call_soon
            elif p.held or p.needs_sync():
                p.hold([])  # commits at the end of this pass (or, during an outage, lets go)
                if not p.healthy:
                    return
                await asyncio.sleep(0)
            else:
                return

    def _on_stream_error(self, data: bytes, err: SipParseError, source: Address) -> None:
        self.core._reject_unparsable(data, err, source)
        self._flush()

    def _on_timer(self) -> None:
        assert self.loop is not None
        self._timer = None
        self._timer_at = None
        self.core.handle_timers(self.loop.time())
        self._flush()

    # ----------------------------------------------------------------- send
    def _flush(self) -> None:
        self._send_outbox()
        engine = self.core.engine
        if engine.journal is not None and engine.journal.hurry and self.persistence is not None:
            self.persistence.write_early()
        if engine._fanout and not self._draining:
            assert self.loop is not None
            p = self.persistence
            # Stream the fan-out: each chunk leaves as soon as it is built, so the
            # watchers' user agents work on the first NOTIFYs while the rest are
            # built; after FANOUT_PASS the loop gets a turn (call_soon). When the
            # reply waits for the commit at the end of this pass, all of it
            # streams after that commit (call_soon runs after it), not into its queue.
            if p is None or not p.commit_pending():
                now = self.loop.time()
                budget = FANOUT_PASS
                while engine._fanout and budget > 0:
                    engine.drain_fanout(now, FANOUT_CHUNK)
                    budget -= FANOUT_CHUNK
                    self._send_outbox()
            if engine._fanout:
                self._draining = True
                self.loop.call_soon(self._drain_fanout)
        self._arm_timer()

    def _send_outbox(self) -> None:
        outbox = self.core.outbox
        p = self.persistence
        if outbox:
            items = outbox[:]
            outbox.clear()
            if p is not None and (p.held or p.needs_sync() or p.writing()):
                p.hold(items)  # write-through: released after the commit, in order
            else:
                self._send_items(items)
        elif p is not None and p.needs_sync():
            p.hold([])

    def _drain_fanout(self) -> None:
        """Next pass of a large fan-out, after other ready callbacks had their turn."""
        self._draining = False
        self._flush()

    def _send_items(self, items: list) -> None:
        send = self._send
        for data, dest, ct in items:
            conn = dest.conn
            # The usual case inlined (this loop runs per message sent): UDP from
            # the socket the peer used, to an address already known to be an IP.
            if conn.__class__ is UdpListener and dest.host in _IP_SEEN:
                t = conn.transport
                if t is not None and not t.is_closing():
                    t.sendto(data, (dest.host, dest.port))
                continue
            send(data, dest, ct)

    def _arm_timer(self) -> None:
        assert self.loop is not None
        deadline = self.core.next_deadline()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if self._timer_at is not None and self._timer_at <= deadline + TIMER_SLACK:
            return
        if self._timer is not None:
            self._timer.cancel()
        # Under load every transaction and NOTIFY leaves a deadline of its own;
        # waking up TIMER_SLACK late lets one wake-up run all that are due by then.
        deadline += TIMER_SLACK
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _send(self, data: bytes, dest: Address, ct: ClientTransaction | None) -> None:
        if dest.transport == "udp":
            listener = dest.conn if isinstance(dest.conn, UdpListener) else self._udp_for(dest.host)
            if listener is None:
                self._failed(ct)
                return
            if _is_ip(dest.host):
                listener.send(data, dest.host, dest.port)
            else:
                self._spawn(self._resolve_and_send_udp(listener, data, dest, ct))
            return
        conn = dest.conn if isinstance(dest.conn, TcpConnection) and dest.conn.is_open else None
        if dest.transport in WEBSOCKET:
            # RFC 7118: the client's own connection or nothing (its Contact is
            # often *.invalid); sips+ws Contacts say "ws" for a wss connection.
            if conn is None:
                conn = self.tcp.find(dest.host, dest.port, "ws") or self.tcp.find(dest.host, dest.port, "wss")
            if conn is None or not conn.write(data):
                self._failed(ct)
            return
        if dest.transport in FRAMED:
            if conn is None:
                conn = self.tcp.find(dest.host, dest.port, dest.transport)
            if conn is not None and conn.write(data):
                return
            self._spawn(self._connect_and_send(data, dest, ct))
            return
        self._failed(ct)

    def _udp_for(self, host: str) -> UdpListener | None:
        want_v6 = ":" in host
        for l in self.udp:
            if (":" in l.host) == want_v6:
                return l
        return self.udp[0] if self.udp else None

    def _spawn(self, coro) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve_and_send_udp(self, listener: UdpListener, data: bytes, dest: Address, ct) -> None:
        assert self.loop is not None
        try:
            infos = await self.loop.getaddrinfo(dest.host, dest.port, type=2)
            host = str(infos[0][4][0])
        except OSError:
            self._failed(ct)
            return
        listener.send(data, host, dest.port)

    async def _connect_and_send(self, data: bytes, dest: Address, ct) -> None:
        try:
            conn = await self.tcp.connect(
                dest.host, dest.port, transport=dest.transport,
                ssl_context=self.tls_client if dest.transport == "tls" else None)
        except (OSError, asyncio.TimeoutError) as e:  # ssl.SSLError is an OSError
            log.info("%s connect to %s:%s failed: %s", dest.transport.upper(), dest.host, dest.port,
                     str(e) or type(e).__name__)
            self._failed(ct)
            return
        if not conn.write(data):
            self._failed(ct)

    def _failed(self, ct: ClientTransaction | None) -> None:
        if ct is None or self.loop is None:
            return
        self.core.transport_failed(ct, self.loop.time())
        self._flush()


def shutdown_grace(cfg: Any) -> float:
    """Seconds a stopping server waits for answers to its NOTIFYs in flight."""
    return int(getattr(getattr(cfg, "core", None), "shutdown_grace_ms", 2000)) / 1000


def install_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
