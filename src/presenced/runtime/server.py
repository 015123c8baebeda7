"""The asyncio runtime: wires transports to the sans-I/O core.

The core never sleeps or reads the clock; this module feeds it
`loop.time()`, drains its outbox onto sockets after every call and keeps a
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

from presenced.core.server import SipCore
from presenced.sip.errors import SipParseError
from presenced.transaction.layer import Address, ClientTransaction
from presenced.transport.tcp import TcpConnection, TcpRegistry
from presenced.transport.udp import UdpListener, start_udp

log = logging.getLogger("presenced.runtime")

#: How late (s) the runtime may run a core deadline (SIP timers are >= 500 ms).
TIMER_SLACK = 0.005


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


def parse_listen(spec: str) -> tuple[str, str, int]:
    """`udp:127.0.0.1:5060` / `tcp:[::1]:5060` → (proto, host, port)."""
    proto, _, rest = spec.partition(":")
    proto = proto.lower()
    if proto not in ("udp", "tcp"):
        raise ValueError(f"--listen {spec}: protocol must be udp or tcp (tls, ws, wss are not available yet)")
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
        self.core.fanout_batch = 200  # then yield to the loop (see _flush)
        self._draining = False
        self.listen_specs = [parse_listen(s) for s in (listen or ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"])]
        self.udp: list[UdpListener] = []
        self.tcp = TcpRegistry(self._on_message)
        self.tcp.on_error = self._on_stream_error
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self.bound: list[tuple[str, str, int]] = []
        self.persistence: Any = None
        self.reload_config: Any = None  # set by the CLI: () -> Config
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
        for proto, host, port in self.listen_specs:
            if proto == "udp":
                l = await start_udp(host, port, self._on_message)
                self.udp.append(l)
                self.bound.append(("udp", host, l.port))
            else:
                srv = await self.tcp.listen(host, port)
                real = srv.sockets[0].getsockname()[1] if srv.sockets else port
                self.bound.append(("tcp", host, real))
        self._housekeeping = self.loop.create_task(self._housekeeping_loop())
        # Presence state is many long-lived small objects: move what exists now
        # out of the collector's sight and make full collections rarer, so the
        # cyclic GC does not rescan every subscription under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        log.info("listening on %s", ", ".join(f"{p}:{h}:{n}" for p, h, n in self.bound))
        if self.http is not None:
            await self.http.start()

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
        self.persistence = Persistence(store, self.core.engine, self.cfg, self._send_items)
        assert self.loop is not None
        n_pub, n_sub = await self.persistence.start(self.loop.time())
        await self.load_rules()
        if self.core.auth_methods:
            await self.load_credentials()
            self._tasks.add(self.loop.create_task(self._refresh_credentials()))
        self._arm_timer()
        log.info("storage %s: restored %d publications and %d subscriptions", store.url, n_pub, n_sub)

    async def load_rules(self, presentity: str | None = None) -> int:
        """(Re)load pres-rules from the xcap table: all, or one presentity AoR."""
        auth = self.core.authorizer
        if auth is None or self.persistence is None:
            return 0
        from presenced.core.authorization import PRES_RULES
        from presenced.runtime.persistence import join_aor, split_aor

        store = self.persistence.store
        if presentity is None:
            rows = await store.load_xcap(PRES_RULES)
            auth.rules.clear()
            for row in rows:
                aor = join_aor(row.username, row.domain)
                if aor not in auth.rules:  # the first row wins, as in Kamailio
                    auth.set_document(aor, bytes(row.doc))
            return len(auth.rules)
        user, domain = split_aor(presentity)
        row = await store.get_xcap(user, domain, PRES_RULES)
        auth.set_document(presentity, bytes(row.doc) if row is not None else None)
        return 1 if row is not None else 0

    async def load_credentials(self) -> int:
        """Cache Kamailio's `subscriber` rows for digest authentication."""
        rows = await self.persistence.store.load_subscribers()
        self.core.load_credentials(rows)
        return len(rows)

    async def _refresh_credentials(self, period: float = 30.0) -> None:
        # Users added with `presenced user add` are picked up within `period`.
        while True:
            await asyncio.sleep(period)
            try:
                await self.load_credentials()
            except Exception as e:
                log.warning("reloading credentials failed: %s", e)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening, let in-flight NOTIFY transactions finish (bounded)."""
        if self.http is not None:
            await self.http.stop()
        for s in self.tcp.servers:
            s.close()
        deadline = self.loop.time() + grace if self.loop else 0
        # Completed UDP transactions linger for Timer K; they are not in flight.
        while self.loop and any(not ct.done for ct in self.core.tx.client.values()) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if getattr(self, "_housekeeping", None):
            self._housekeeping.cancel()
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
        await self.start()
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

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            self.tcp.sweep_idle()

    # -------------------------------------------------------------- receive
    def _on_message(self, data: bytes, source: Address, local: tuple[str, int]) -> None:
        assert self.loop is not None
        self.core.receive(data, source, local, self.loop.time(), stream=source.transport != "udp")
        self._flush()

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
        outbox = self.core.outbox
        if outbox:
            items = outbox[:]
            outbox.clear()
            p = self.persistence
            if p is not None and (p.held or p.needs_sync() or (p._writer is not None and not p._writer.done())):
                p.hold(items)  # write-through: released after the commit, in order
            else:
                self._send_items(items)
        elif self.persistence is not None and self.persistence.needs_sync():
            self.persistence.hold([])
        self._arm_timer()
        if self.core.engine._fanout and not self._draining:
            self._draining = True
            assert self.loop is not None
            self.loop.call_soon(self._drain_fanout)

    def _drain_fanout(self) -> None:
        """Next batch of a large fan-out, after other ready callbacks had their turn."""
        self._draining = False
        assert self.loop is not None
        self.core.engine.drain_fanout(self.loop.time(), self.core.fanout_batch)
        self._flush()

    def _send_items(self, items: list) -> None:
        for data, dest, ct in items:
            self._send(data, dest, ct)

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
        if dest.transport == "tcp":
            conn = dest.conn if isinstance(dest.conn, TcpConnection) and dest.conn.is_open else None
            if conn is None:
                conn = self.tcp.find(dest.host, dest.port)
            if conn is not None and conn.write(data):
                return
            self._spawn(self._connect_and_send(data, dest, ct))
            return
        self._failed(ct)  # tls/ws not available yet

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
            host = infos[0][4][0]
        except OSError:
            self._failed(ct)
            return
        listener.send(data, host, dest.port)

    async def _connect_and_send(self, data: bytes, dest: Address, ct) -> None:
        try:
            conn = await self.tcp.connect(dest.host, dest.port)
        except (OSError, asyncio.TimeoutError) as e:
            log.info("TCP connect to %s:%s failed: %s", dest.host, dest.port, e)
            self._failed(ct)
            return
        if not conn.write(data):
            self._failed(ct)

    def _failed(self, ct: ClientTransaction | None) -> None:
        if ct is None or self.loop is None:
            return
        self.core.transport_failed(ct, self.loop.time())
        self._flush()


def install_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
