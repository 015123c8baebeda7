"""Several worker processes (`serve --workers N`, `core.workers`).

One process saturates one core. With N > 1 the `serve` process becomes a
supervisor (runtime/supervisor.py): it binds every listening socket once,
creates one Unix datagram socketpair per pair of workers and forks N
workers, each running a `WorkerServer` from this module.

Every presentity belongs to one worker (`core/partition.py`). All workers read
the shared sockets; a worker that reads a message another one owns forwards it
over their socketpair as a frame; the owner processes it as if it had read it
itself. UDP replies and NOTIFYs leave on the owner's copy of the same socket
(same source address). A stream connection stays with the worker that
accepted it: the owner sends on it through "send on connection X" frames, and
learns when it closes.

Frames (length-prefixed, those of one event-loop pass in one datagram; no
loss: a socketpair blocks rather than drops, and a full one queues here):

    MSG     transport, listener, source, local address, connection id, bytes
    SEND    connection id, request id (0: no client transaction), bytes
    FAILED  request id          (SEND found the connection gone)
    CLOSED  connection id       (a connection that forwarded to you closed)
    RPC     call id, JSON {"m": method, "p": params}
    REPLY   call id, JSON {"r": result} or {"e": [code, message, data]}
    HELLO   0                   (a worker (re)started: its old connections are gone)

The HTTP management API runs in worker 0 (api/gather.py): per-presentity
methods go to the owner, lists and counters are gathered from every worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from typing import Any, Callable

from presenced.api.gather import WorkerRpc, merge_metrics
from presenced.api.rpc import INTERNAL_ERROR, RpcError, RpcService
from presenced.core.partition import Partitioner, branch_mark
from presenced.runtime.server import FRAMED, PROTOCOLS, Server
from presenced.sip import tokens
from presenced.sip.errors import SipParseError
from presenced.sip.message import Request, Response, parse_message
from presenced.transaction.layer import Address, ClientTransaction
from presenced.transport.tcp import TcpConnection

log = logging.getLogger("presenced.workers")

MSG, SEND, FAILED, CLOSED, RPC, REPLY, HELLO = range(1, 8)
_MSG = struct.Struct("!BBBHHIBB")   # kind, transport, listener, src port, local port, conn id, len(src), len(local)
_SEND = struct.Struct("!BIQ")       # kind, conn id, request id
_ID = struct.Struct("!BQ")          # kind, id (FAILED, CLOSED, RPC, REPLY)
_TCODE = {name: i for i, name in enumerate(PROTOCOLS)}
MAX_FRAME = 512 * 1024              # > 16 KiB headers + 256 KiB body + frame header
LINK_BUFFER = 4 * 1024 * 1024
BATCH_BYTES = 64 * 1024             # frames gathered into one datagram
_LEN = struct.Struct("!I")          # each frame in a datagram: length, then the frame
MAX_QUEUED = 20000                  # frames held for a worker that does not read (dead, restarting)
RPC_TIMEOUT = 10.0


# ------------------------------------------------------------------- links
class Mesh:
    """This worker's ends of the socketpairs to every other worker.

    Frames sent during one pass of the event loop go out together: one
    datagram per peer holding length-prefixed frames (up to BATCH_BYTES), so
    under load a burst of forwarded messages costs one system call and one
    wake-up of the receiver instead of one each."""

    def __init__(self, socks: dict[int, socket.socket], on_frame: Callable[[int, bytes], None]) -> None:
        self.socks = socks
        self.on_frame = on_frame
        self._queues: dict[int, list[bytes]] = {}   # datagrams the socket could not take yet
        self._pending: dict[int, list[bytes]] = {}  # this pass's frames, length-prefixed
        self._pending_size: dict[int, int] = {}
        self._scheduled = False
        self._buf = bytearray(MAX_FRAME + BATCH_BYTES)
        self._view = memoryview(self._buf)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for peer, s in self.socks.items():
            s.setblocking(False)
            loop.add_reader(s.fileno(), self._readable, peer, s)

    def close(self) -> None:
        if self.loop is not None:
            self._flush()
            for s in self.socks.values():
                self.loop.remove_reader(s.fileno())
                self.loop.remove_writer(s.fileno())

    def _readable(self, peer: int, s: socket.socket) -> None:
        view, buf, on_frame, size_of = self._view, self._buf, self.on_frame, _LEN.unpack_from
        for _ in range(64):  # then let other ready sockets have their turn
            try:
                n = s.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("link to worker %d: %s", peer, e)
                return
            o = 0
            while o + 4 <= n:
                size = size_of(buf, o)[0]
                o += 4
                on_frame(peer, bytes(view[o:o + size]))
                o += size

    def send(self, peer: int, frame: bytes) -> bool:
        """Queue `frame` for `peer` (sent at the end of this loop pass); False if
        there is no such peer or its backlog is full."""
        if peer not in self.socks:
            return False
        q = self._queues.get(peer)
        if q is not None and len(q) >= MAX_QUEUED:
            self.dropped += 1
            return False
        parts = self._pending.get(peer)
        if parts is None:
            parts = self._pending[peer] = []
            self._pending_size[peer] = 0
            if not self._scheduled:
                self._scheduled = True
                assert self.loop is not None
                self.loop.call_soon(self._flush)
        elif self._pending_size[peer] + len(frame) > BATCH_BYTES:
            self._datagram(peer, b"".join(parts))
            parts.clear()
            self._pending_size[peer] = 0
        parts.append(_LEN.pack(len(frame)))
        parts.append(frame)
        self._pending_size[peer] += len(frame) + 4
        return True

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for peer, parts in pending.items():
            if parts:
                self._datagram(peer, b"".join(parts))

    def _datagram(self, peer: int, data: bytes) -> None:
        q = self._queues.get(peer)
        if q is not None:
            q.append(data)
            return
        s = self.socks[peer]
        try:
            s.send(data)
        except (BlockingIOError, InterruptedError):
            self._queues[peer] = [data]
            assert self.loop is not None
            self.loop.add_writer(s.fileno(), self._writable, peer, s)
        except OSError as e:
            self.dropped += 1
            log.warning("%d bytes of frames to worker %d not sent: %s", len(data), peer, e)

    def _writable(self, peer: int, s: socket.socket) -> None:
        q = self._queues[peer]
        while q:
            try:
                s.send(q[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.dropped += 1
                log.warning("frames to worker %d not sent: %s", peer, e)
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
        engine.contact_user = True
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
        self._udp_index: dict[Any, int] = {}
        self.forwarded = 0  # messages read here that another worker owns
        self._pending_ct: dict[int, ClientTransaction] = {}
        self._next_req = 0
        self._calls: dict[int, asyncio.Future] = {}
        self._next_call = 0
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
        p.workers, p.index = self.workers, self.index
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
        # Frames name the UDP listener by position; one lookup per forwarded datagram.
        self._udp_index = {listener: i for i, listener in enumerate(self.udp)}

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        if self.http is None:
            self.metrics.detach()
        self.mesh.close()

    # ---------------------------------------------------------- receive
    def _on_message(self, data: bytes, source: Address, local: tuple[str, int],
                    parsed: Request | Response | None = None) -> None:
        msg: Request | Response | None = parsed
        try:
            if msg is None:
                msg = parse_message(data, stream=source.transport in FRAMED)
        except SipParseError:
            msg = None  # the core answers it (or drops it) as a single process would
        owner = self.index if msg is None else self.partition.owner_of_message(msg)
        if owner == self.index:
            Server._on_message(self, data, source, local, msg)
            return
        self.forwarded += 1
        t = source.transport
        conn = source.conn
        if t == "udp":
            listener, cid = self._udp_index.get(conn, 0), 0
        else:
            listener, cid = 0, self._cid(conn, owner)
        shost, lhost = source.host.encode(), local[0].encode()
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
