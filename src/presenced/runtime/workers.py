"""Several worker processes (`serve --workers N`, `core.workers`).

One process saturates one core. With N > 1 the `serve` process becomes a
supervisor: it binds every listening socket once, creates one Unix datagram
socketpair per pair of workers, forks N workers (each builds its own event
loop after the fork) and then only forwards signals and restarts workers that
die.

Every presentity belongs to one worker (`core/partition.py`). All workers read
the shared sockets; a worker that reads a message another one owns forwards it
over their socketpair as a frame; the owner processes it as if it had read it
itself. UDP replies and NOTIFYs leave on the owner's copy of the same socket
(same source address). A stream connection stays with the worker that
accepted it: the owner sends on it through "send on connection X" frames, and
learns when it closes.

Frames (one datagram each, no loss: a socketpair blocks rather than drops,
and a full one queues here):

    MSG     transport, listener, source, local address, connection id, bytes
    SEND    connection id, request id (0: no client transaction), bytes
    FAILED  request id          (SEND found the connection gone)
    CLOSED  connection id       (a connection that forwarded to you closed)
    RPC     call id, JSON {"m": method, "p": params}
    REPLY   call id, JSON {"r": result} or {"e": [code, message, data]}
    HELLO   0                   (a worker (re)started: its old connections are gone)

The HTTP management API runs in worker 0 (`WorkerRpc`): per-presentity
methods go to the owner, lists and counters are gathered from every worker.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import resource
import select
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable

from presenced.api.rpc import FAULT, INTERNAL_ERROR, RpcError, RpcService
from presenced.core.partition import Partitioner, branch_mark, owner_of
from presenced.runtime.server import PROTOCOLS, Server
from presenced.sip import tokens
from presenced.transaction.layer import Address, ClientTransaction
from presenced.transport.tcp import TcpConnection
from presenced.transport.udp import udp_socket

log = logging.getLogger("presenced.workers")

MSG, SEND, FAILED, CLOSED, RPC, REPLY, HELLO = range(1, 8)
_MSG = struct.Struct("!BBBHHIBB")   # kind, transport, listener, src port, local port, conn id, len(src), len(local)
_SEND = struct.Struct("!BIQ")       # kind, conn id, request id
_ID = struct.Struct("!BQ")          # kind, id (FAILED, CLOSED, RPC, REPLY)
_TCODE = {name: i for i, name in enumerate(PROTOCOLS)}
MAX_FRAME = 512 * 1024              # > 16 KiB headers + 256 KiB body + frame header
LINK_BUFFER = 4 * 1024 * 1024
MAX_QUEUED = 20000                  # frames held for a worker that does not read (dead, restarting)
RPC_TIMEOUT = 10.0
START_TIMEOUT = 120.0               # restoring a large database takes a while
STOP_TIMEOUT = 15.0
MAX_RESTARTS = 5                    # per worker within RESTART_WINDOW, then the supervisor gives up
RESTART_WINDOW = 60.0


# ------------------------------------------------------------------- links
class Mesh:
    """This worker's ends of the socketpairs to every other worker."""

    def __init__(self, socks: dict[int, socket.socket], on_frame: Callable[[int, bytes], None]) -> None:
        self.socks = socks
        self.on_frame = on_frame
        self._queues: dict[int, list[bytes]] = {}
        self._buf = bytearray(MAX_FRAME)
        self._view = memoryview(self._buf)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.forwarded = 0
        self.dropped = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for peer, s in self.socks.items():
            s.setblocking(False)
            loop.add_reader(s.fileno(), self._readable, peer, s)

    def close(self) -> None:
        if self.loop is not None:
            for s in self.socks.values():
                self.loop.remove_reader(s.fileno())
                self.loop.remove_writer(s.fileno())

    def _readable(self, peer: int, s: socket.socket) -> None:
        view = self._view
        for _ in range(64):  # then let other ready sockets have their turn
            try:
                n = s.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("link to worker %d: %s", peer, e)
                return
            self.on_frame(peer, bytes(view[:n]))

    def send(self, peer: int, frame: bytes) -> bool:
        q = self._queues.get(peer)
        if q is not None:
            if len(q) >= MAX_QUEUED:
                self.dropped += 1
                return False
            q.append(frame)
            return True
        s = self.socks.get(peer)
        if s is None:
            return False
        try:
            s.send(frame)
            return True
        except (BlockingIOError, InterruptedError):
            self._queues[peer] = [frame]
            assert self.loop is not None
            self.loop.add_writer(s.fileno(), self._writable, peer, s)
            return True
        except OSError as e:
            self.dropped += 1
            log.warning("frame of %d bytes to worker %d not sent: %s", len(frame), peer, e)
            return False

    def _writable(self, peer: int, s: socket.socket) -> None:
        q = self._queues[peer]
        while q:
            try:
                s.send(q[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.dropped += 1
                log.warning("frame to worker %d not sent: %s", peer, e)
            q.pop(0)
        del self._queues[peer]
        assert self.loop is not None
        self.loop.remove_writer(s.fileno())


class RemoteConn:
    """A stream connection held by another worker (duck-types TcpConnection's
    `is_open` for the engine and the RPC; sends go through SEND frames)."""

    __slots__ = ("worker", "cid", "closed")

    def __init__(self, worker: int, cid: int) -> None:
        self.worker = worker
        self.cid = cid
        self.closed = False

    @property
    def is_open(self) -> bool:
        return not self.closed


# ------------------------------------------------------------------ worker
class WorkerServer(Server):
    """`Server` for worker `index` of `workers`: partitions, forwards, and
    serves sockets and links it inherited from the supervisor."""

    def __init__(self, cfg: Any, listen: list[str], *, index: int, workers: int, sockets: list,
                 links: dict[int, socket.socket], ready_fd: int | None = None) -> None:
        super().__init__(cfg, listen)
        self.index = index
        self.workers = workers
        self.inherited = sockets
        self.ready_fd = ready_fd
        tokens.BRANCH_MARK = branch_mark(index)
        engine = self.core.engine
        self.partition = Partitioner(workers, index, engine.presentity_key)
        engine.dialog_tag = self.partition.dialog_tag
        self.mesh = Mesh(links, self._on_frame)
        self.tcp.on_close = self._conn_closed
        self._conn_ids: dict[TcpConnection, int] = {}
        self._conns: dict[int, TcpConnection] = {}
        self._conn_peers: dict[int, set[int]] = {}
        # Connection ids start at a random point: ids a dead predecessor handed out
        # are not reused (its peers also drop them on our HELLO).
        self._next_cid = int.from_bytes(os.urandom(4), "big")
        self._remote: dict[tuple[int, int], RemoteConn] = {}
        self._udp_sources: dict[tuple[str, int, int], Address] = {}
        self._pending_ct: dict[int, ClientTransaction] = {}
        self._next_req = 0
        self._calls: dict[int, asyncio.Future] = {}
        self._next_call = 0
        self.forward_counts = [0] * workers
        from presenced.metrics import Metrics

        if index == 0 and self.http is not None:
            self.metrics = self.http.metrics
            self.http.rpc = WorkerRpc(self, self.metrics)
            self.http.render_metrics = self.gather_metrics
        else:
            self.http = None
            self.metrics = Metrics(self)
        self.local_rpc = RpcService(self, self.metrics)

    def owns(self, presentity: str) -> bool:
        return self.partition.owns(presentity)

    def _make_persistence(self, cls: Any, store: Any) -> Any:
        p = super()._make_persistence(cls, store)
        p.owns = self.owns
        p.marker = f"{p.marker}.{self.index}of{self.workers}"
        p.cleaner = self.index == 0  # one worker deletes expired rows
        return p

    async def start(self) -> None:
        assert self.workers > 1
        self.mesh.start(asyncio.get_running_loop())
        for peer in self.mesh.socks:
            self.mesh.send(peer, _ID.pack(HELLO, 0))
        await super().start()
        if self.http is None:
            self.metrics.attach()  # worker 0's HttpApi attaches its own
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, b"1")  # the supervisor no longer listens after start-up
            except OSError:
                pass
            os.close(self.ready_fd)
            self.ready_fd = None

    async def _open_listeners(self, socks: list | None = None) -> None:
        await super()._open_listeners(self.inherited)

    async def stop(self, grace: float = 2.0) -> None:
        await super().stop(grace)
        if self.http is None:
            self.metrics.detach()
        self.mesh.close()

    # ---------------------------------------------------------- receive
    def _on_message(self, data: bytes, source: Address, local: tuple[str, int]) -> None:
        owner = self.partition.classify(data)
        if owner == self.index:
            Server._on_message(self, data, source, local)
            return
        t = source.transport
        conn = source.conn
        if t == "udp":
            listener, cid = self.udp.index(conn) if conn in self.udp else 0, 0
        else:
            listener, cid = 0, self._cid(conn, owner)
        shost, lhost = source.host.encode(), local[0].encode()
        self.forward_counts[owner] += 1
        self.mesh.send(owner, _MSG.pack(MSG, _TCODE[t], listener, source.port, local[1], cid, len(shost), len(lhost))
                       + shost + lhost + data)

    def _cid(self, conn: TcpConnection, peer: int) -> int:
        cid = self._conn_ids.get(conn)
        if cid is None:
            self._next_cid = (self._next_cid + 1) & 0xFFFFFFFF or 1
            cid = self._conn_ids[conn] = self._next_cid
            self._conns[cid] = conn
            self._conn_peers[cid] = set()
        self._conn_peers[cid].add(peer)
        return cid

    def _conn_closed(self, conn: TcpConnection) -> None:
        cid = self._conn_ids.pop(conn, None)
        if cid is None:
            return
        self._conns.pop(cid, None)
        frame = _ID.pack(CLOSED, cid)
        for peer in self._conn_peers.pop(cid, ()):
            self.mesh.send(peer, frame)

    def _on_frame(self, peer: int, frame: bytes) -> None:
        kind = frame[0]
        try:
            if kind == MSG:
                self._on_forwarded(peer, frame)
            elif kind == SEND:
                _, cid, req = _SEND.unpack_from(frame)
                conn = self._conns.get(cid)
                if (conn is None or not conn.write(frame[_SEND.size:])) and req:
                    self.mesh.send(peer, _ID.pack(FAILED, req))
            elif kind == FAILED:
                ct = self._pending_ct.pop(_ID.unpack_from(frame)[1], None)
                if ct is not None and not ct.done:
                    self._failed(ct)
            elif kind == CLOSED:
                rc = self._remote.pop((peer, _ID.unpack_from(frame)[1]), None)
                if rc is not None:
                    rc.closed = True
            elif kind == RPC:
                self._spawn(self._serve_rpc(peer, _ID.unpack_from(frame)[1], frame[_ID.size:]))
            elif kind == HELLO:
                for key in [k for k in self._remote if k[0] == peer]:
                    self._remote.pop(key).closed = True
            elif kind == REPLY:
                fut = self._calls.pop(_ID.unpack_from(frame)[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(json.loads(frame[_ID.size:]))
        except Exception:
            log.exception("bad frame from worker %d", peer)

    def _on_forwarded(self, peer: int, frame: bytes) -> None:
        _, tcode, listener, sport, lport, cid, ns, nl = _MSG.unpack_from(frame)
        o = _MSG.size
        shost = frame[o:o + ns].decode()
        lhost = frame[o + ns:o + ns + nl].decode()
        data = frame[o + ns + nl:]
        t = PROTOCOLS[tcode]
        if t == "udp":
            key = (shost, sport, listener)
            source = self._udp_sources.get(key)
            if source is None:
                if len(self._udp_sources) >= 10000:
                    self._udp_sources.clear()
                conn = self.udp[listener] if listener < len(self.udp) else None
                source = self._udp_sources[key] = Address("udp", shost, sport, conn)
        else:
            rc = self._remote.get((peer, cid))
            if rc is None:
                rc = self._remote[(peer, cid)] = RemoteConn(peer, cid)
            source = Address(t, shost, sport, rc)
        Server._on_message(self, data, source, (lhost, lport))

    # ------------------------------------------------------------- send
    def _send(self, data: bytes, dest: Address, ct: ClientTransaction | None) -> None:
        conn = dest.conn
        if conn.__class__ is RemoteConn:
            if conn.is_open:
                req = 0
                if ct is not None:
                    self._next_req += 1
                    req = self._next_req
                    if len(self._pending_ct) >= 10000:  # answers lost with a dead worker: forget the oldest
                        del self._pending_ct[next(iter(self._pending_ct))]
                    self._pending_ct[req] = ct
                if self.mesh.send(conn.worker, _SEND.pack(SEND, conn.cid, req) + data):
                    return
                if ct is not None:
                    self._pending_ct.pop(req, None)
            # gone: as for a closed local connection (a new one for tcp/tls, failure for ws)
            dest = Address(dest.transport, dest.host, dest.port, None)
        Server._send(self, data, dest, ct)

    # -------------------------------------------------------------- rpc
    async def call_worker(self, worker: int, method: str, params: Any) -> Any:
        """Run RPC `method` in another worker; raises RpcError like a local call."""
        assert self.loop is not None
        self._next_call += 1
        cid = self._next_call
        fut = self.loop.create_future()
        self._calls[cid] = fut
        body = json.dumps({"m": method, "p": params}, default=str).encode()
        if not self.mesh.send(worker, _ID.pack(RPC, cid) + body):
            self._calls.pop(cid, None)
            raise RpcError(INTERNAL_ERROR, f"worker {worker} unreachable")
        try:
            out = await asyncio.wait_for(fut, RPC_TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            raise RpcError(INTERNAL_ERROR, f"worker {worker} did not answer within {RPC_TIMEOUT:g} s") from None
        finally:
            self._calls.pop(cid, None)
        if "e" in out:
            code, message, data = out["e"]
            raise RpcError(code, message, data)
        return out["r"]

    async def _serve_rpc(self, peer: int, cid: int, body: bytes) -> None:
        req = json.loads(body)
        try:
            if req["m"] == "metrics.render":
                out: dict[str, Any] = {"r": self.metrics.render()}
            elif req["m"] == "etag.lookup":
                out = {"r": self.etag_owner(req["p"][0])}
            else:
                out = {"r": await self.local_rpc.call(req["m"], req["p"])}
        except RpcError as e:
            out = {"e": [e.code, e.message, e.data]}
        except Exception as e:
            log.exception("RPC %s failed", req.get("m"))
            out = {"e": [INTERNAL_ERROR, f"Internal error: {type(e).__name__}: {e}", None]}
        self.mesh.send(peer, _ID.pack(REPLY, cid) + json.dumps(out, ensure_ascii=False, default=str).encode())

    def etag_owner(self, etag: Any) -> list[str] | None:
        pub = self.core.engine.etags.get(etag) if isinstance(etag, str) else None
        return [pub.pres_uri, pub.event] if pub is not None else None

    async def gather(self, method: str, params: Any, local: Callable[[], Any]) -> list[Any]:
        """Results of `method` from every worker (this one's from `local()`), in worker order."""
        others = [self.call_worker(i, method, params) for i in range(self.workers) if i != self.index]
        results = await asyncio.gather(local(), *others, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return list(results)

    async def gather_metrics(self) -> str:
        async def mine() -> str:
            return self.metrics.render()

        return merge_metrics(await self.gather("metrics.render", None, mine))


def _sum(a: Any, b: Any, key: str = "") -> Any:
    """Counters of two workers added up (dicts by key); `healthy` holds when
    it holds in both, the uptime is the longest, other non-numbers: the first set."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _sum(out[k], v, k) if k in out else v
        return out
    if isinstance(a, bool) or isinstance(b, bool):
        return (bool(a) and bool(b)) if key == "healthy" else (bool(a) or bool(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return max(a, b) if key == "uptime_seconds" else a + b
    return b if a is None else a


# Gauges that are per process, not additive: the smallest value wins.
_MIN_SERIES = ("presenced_up", "presenced_storage_healthy", "presenced_start_time_seconds")
_FIRST_SERIES = ("presenced_build_info",)
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(\{.*\})? (\S+)$")


def merge_metrics(texts: list[str]) -> str:
    """Prometheus texts of every worker as one: samples with the same name and
    labels are added up (per-process gauges take the minimum), each family's
    samples stay together under its HELP/TYPE lines."""
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    order: list[str] = []
    for text in texts:
        current = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                if name not in families:
                    families[name] = ([], {})
                    order.append(name)
                if current != name:
                    current = name
                    if families[name][0] and len(families[name][0]) >= 2:
                        continue
                if len(families[name][0]) < 2:
                    families[name][0].append(line)
                continue
            m = _SAMPLE.match(line)
            if m is None or current is None:
                continue
            series, value = m.group(1) + (m.group(2) or ""), float(m.group(3))
            samples = families[current][1]
            if series not in samples:
                samples[series] = value
            elif m.group(1) in _MIN_SERIES:
                samples[series] = min(samples[series], value)
            elif m.group(1) not in _FIRST_SERIES:
                samples[series] += value
    out: list[str] = []
    for name in order:
        head, samples = families[name]
        out.extend(head)
        for series, v in samples.items():
            out.append(f"{series} {int(v) if v.is_integer() and abs(v) < 2**53 else repr(v)}")
    return "\n".join(out) + "\n"


class WorkerRpc(RpcService):
    """Worker 0's RPC: the same methods and answers as one process.

    Per-presentity methods run in the owner; lists are concatenated and
    counters added up over every worker; presence.cleanup and
    publish_cache_sync run in each; the rest is answered here."""

    BY_PRESENTITY = {"presence.refreshWatchers": ("uri", 0), "presence.updateWatchers": ("uri", 0),
                     "presence.watcher_list": ("presentity_uri", 1)}
    CONCAT = ("presence.presentity_list", "presence.presentity_show")
    SUM = ("presence.counters", "core.stats")
    EVERYWHERE = ("presence.cleanup", "presence.publish_cache_sync")

    async def call(self, name: str, params: Any = None) -> Any:
        server: WorkerServer = self.server
        local = super().call
        if name in self.methods:
            self._bind(self.methods[name], params)  # bad parameters: the same error, from here
        if name in self.BY_PRESENTITY:
            if name == "presence.refreshWatchers":
                await self._etag_free(params)
            owner = self._owner(params, *self.BY_PRESENTITY[name])
            if owner is not None and owner != server.index:
                return await server.call_worker(owner, name, params)
            return await local(name, params)
        if name == "presence.subscription_show":
            return await self._subscription_show(params)
        if name in self.CONCAT:
            if self._db_only("publications"):
                return await local(name, params)  # read from the shared database: once is all
            rows = [row for part in await server.gather(name, params, lambda: local(name, params)) for row in part]
            # each worker's rows come sorted by presentity; keep one process's order
            rows.sort(key=lambda r: (f"{r.get('user')}@{r.get('domain')}", r.get("event")))
            return rows
        if name in self.SUM:
            parts = await server.gather(name, params, lambda: local(name, params))
            total = parts[0]
            for p in parts[1:]:
                total = _sum(total, p)
            return total
        if name in self.EVERYWHERE:
            return (await server.gather(name, params, lambda: local(name, params)))[0]
        return await local(name, params)

    @staticmethod
    def _param(params: Any, name: str, pos: int) -> Any:
        if isinstance(params, dict):
            return params.get(name)
        return params[pos] if isinstance(params, list) and len(params) > pos else None

    async def _etag_free(self, params: Any) -> None:
        """refreshWatchers type 2 takes an ETag (`filename`) the caller chooses: as
        in one process it must not be another presentity's, in whichever worker."""
        etag = self._param(params, "filename", 4)
        uri = self._param(params, "uri", 0)
        if not isinstance(etag, str) or not isinstance(uri, str):
            return
        server: WorkerServer = self.server

        async def mine() -> Any:
            return server.etag_owner(etag)

        try:
            key = self.engine.presentity_key(uri.strip())
        except Exception:
            return
        for held in await server.gather("etag.lookup", [etag], mine):
            if held is not None and held[0] != key:
                raise RpcError(FAULT, f"ETag {etag!r} belongs to another publication ({held[0]}, {held[1]})")

    def _owner(self, params: Any, name: str, pos: int) -> int | None:
        uri = self._param(params, name, pos)
        if not isinstance(uri, str):
            return None
        try:
            return owner_of(self.engine.presentity_key(uri.strip()), self.server.workers)
        except Exception:
            return None  # answered (with the error) here

    async def _subscription_show(self, params: Any) -> Any:
        server: WorkerServer = self.server
        name = "presence.subscription_show"
        tag = self._param(params, "to_tag", 1)
        if isinstance(tag, str):
            owner = server.partition.classify(b"SUBSCRIBE x SIP/2.0\r\nTo: <x>;tag=" + tag.encode() + b"\r\n\r\n")
            if owner != server.index:
                return await server.call_worker(owner, name, params)
        try:
            return await super().call(name, params)
        except RpcError as first:
            for i in range(server.workers):  # a tag made by one process: ask everyone
                if i == server.index:
                    continue
                try:
                    return await server.call_worker(i, name, params)
                except RpcError:
                    pass
            raise first


# -------------------------------------------------------------- supervisor
class Supervisor:
    """The `serve` process when workers > 1: binds, forks, watches, forwards signals."""

    def __init__(self, cfg: Any, listen: list[str], workers: int,
                 build: Callable[[int, list, dict[int, socket.socket], int], WorkerServer]) -> None:
        self.cfg = cfg
        self.listen = listen
        self.workers = workers
        self.build = build
        self.sockets: list[socket.socket] = []
        self.links: dict[int, dict[int, socket.socket]] = {i: {} for i in range(workers)}
        self.pids: dict[int, int] = {}          # worker index -> pid
        self.ready: dict[int, int] = {}         # start-up: read end of each worker's ready pipe
        self.restarts: dict[int, list[float]] = {i: [] for i in range(workers)}
        self._signals: list[int] = []

    def bind(self) -> None:
        """Every listening socket, once, before any worker exists (port 0 is
        resolved here, so all workers share the same port)."""
        from presenced.runtime.server import parse_listen

        for spec in self.listen:
            proto, host, port = parse_listen(spec)
            if proto == "udp":
                self.sockets.append(udp_socket(host, port))
                continue
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
                s.listen(1024)
            except OSError:
                s.close()
                raise
            self.sockets.append(s)
        need = self.workers * self.workers + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need + 1024:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need + 1024) if hard != resource.RLIM_INFINITY
                                                            else need + 1024, hard))
            except (ValueError, OSError):
                pass
        for i in range(self.workers):
            for j in range(i + 1, self.workers):
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for s in (a, b):
                    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                        try:
                            s.setsockopt(socket.SOL_SOCKET, opt, LINK_BUFFER)
                        except OSError:
                            pass
                self.links[i][j] = a
                self.links[j][i] = b

    def _spawn(self, index: int) -> int:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(r)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the event loop handles it
                _stop_with_parent()
                for other, links in self.links.items():
                    if other != index:
                        for s in links.values():
                            s.close()
                for fd in self.ready.values():
                    os.close(fd)
                code = run_worker(self.build(index, self.sockets, self.links[index], w), index)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(w)
        self.pids[index] = pid
        return r

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        for i in range(self.workers):
            self.ready[i] = self._spawn(i)
        log.info("supervisor %d: started %d workers (pids %s)", os.getpid(), self.workers,
                 ", ".join(str(self.pids[i]) for i in range(self.workers)))
        code = self._start_up()
        if code is not None:
            return code
        log.info("all %d workers ready", self.workers)
        return self._watch()

    def _start_up(self) -> int | None:
        """Wait for every worker to say it listens; one that exits first fails the start."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.ready:
            if self._stop_requested():
                return self._stop_all(0)
            for index, status in self._reaped():
                self._error(f"worker {index} failed at start-up ({_status(status)})")
                return self._stop_all(2)
            if time.monotonic() > deadline:
                self._error(f"workers {sorted(self.ready)} did not start within {START_TIMEOUT:g} s")
                return self._stop_all(2)
            fds = list(self.ready.values())
            readable, _, _ = select.select(fds, [], [], 0.1)
            for index, fd in list(self.ready.items()):
                if fd in readable:
                    if os.read(fd, 1) == b"1":
                        os.close(fd)
                        del self.ready[index]
        return None

    def _watch(self) -> int:
        while True:
            if self._stop_requested():
                return self._stop_all(0)
            for index, status in self._reaped():
                now = time.monotonic()
                recent = [t for t in self.restarts[index] if now - t < RESTART_WINDOW]
                if len(recent) >= MAX_RESTARTS:
                    self._error(f"worker {index} died {len(recent) + 1} times within {RESTART_WINDOW:g} s "
                                f"({_status(status)}); stopping")
                    return self._stop_all(1)
                recent.append(now)
                self.restarts[index] = recent
                log.error("worker %d died (%s); restarting it", index, _status(status))
                os.close(self._spawn(index))
            time.sleep(0.1)

    def _stop_requested(self) -> bool:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue
            self._kill(sig)
            if sig != signal.SIGHUP:
                return True
        return False

    def _reaped(self) -> list[tuple[int, int]]:
        out = []
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for index, p in list(self.pids.items()):
                if p == pid:
                    del self.pids[index]
                    fd = self.ready.pop(index, None)
                    if fd is not None:
                        os.close(fd)
                    out.append((index, status))
        return out

    def _kill(self, sig: int) -> None:
        for pid in self.pids.values():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _stop_all(self, code: int) -> int:
        self._kill(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.pids and time.monotonic() < deadline:
            for index, status in self._reaped():
                if code == 0 and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                    log.warning("worker %d stopped with %s", index, _status(status))
            time.sleep(0.05)
        if self.pids:
            log.error("workers %s did not stop within %g s: killed", sorted(self.pids), STOP_TIMEOUT)
            self._kill(signal.SIGKILL)
            while self.pids:
                self._reaped()
                time.sleep(0.05)
        return code

    @staticmethod
    def _error(msg: str) -> None:
        log.error("%s", msg)
        print(f"presenced: {msg}", file=sys.stderr, flush=True)


def _stop_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the supervisor dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.WEXITSTATUS(status)}"


def run_worker(server: WorkerServer, index: int) -> int:
    """The worker process's main: its own event loop, created after the fork."""
    from presenced.runtime.server import install_uvloop
    from presenced.storage.base import StoreError

    import presenced.logsetup

    presenced.logsetup.WORKER = index
    install_uvloop()
    try:
        asyncio.run(server.serve_forever())
    except StoreError as e:
        print(f"presenced: worker {index}: storage: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            print(f"presenced: worker {index}: cannot listen: {e}", file=sys.stderr, flush=True)
        else:
            print(f"presenced: worker {index}: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
