"""Stream listeners and the connection registry (TCP, TLS; WS/WSS in ws.py).

Connections are reused both ways (RFC 3261 §18.2.2, RFC 5626 spirit): a
request is answered on the connection it came in on, and later NOTIFYs to
that peer go over it while it is open, which is what phones that put their
connection's ephemeral port (or `;alias`) in Contact need. TLS is the same
connection class over asyncio's ssl, so both share one registry, one
connection limit and one idle timeout (and so do WebSocket connections).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Callable

from presenced.sip.errors import SipParseError
from presenced.sip.framing import PING, PONG, StreamFramer
from presenced.transaction.layer import Address

log = logging.getLogger("presenced.transport.tcp")

OnMessage = Callable[[bytes, Address, tuple[str, int]], None]

TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds a peer may take to finish the TLS handshake
# Bytes queued for a peer that does not read them before the connection is
# dropped: reading from it stops at asyncio's high-water mark (64 KiB), but
# NOTIFYs other requests trigger still queue for it.
MAX_UNSENT = 1 << 20
# Bytes of requests taken from one connection per loop pass. The answers are
# written once the pass is over, and libuv reads a socket up to 32 times per
# pass: without a cap one pass could take megabytes of requests from a peer
# whose answers then have nowhere to go.
PASS_INTAKE = 256 << 10
# Seconds a message may take to arrive once its first byte came: a peer that
# trickles a header block a byte at a time would otherwise hold a connection
# (and a slot of the global limit) forever, each byte resetting the idle timer.
PARTIAL_MESSAGE_TIMEOUT = 60.0


class TcpConnection(asyncio.Protocol):
    def __init__(self, registry: "TcpRegistry", on_message: OnMessage, outbound: bool = False,
                 transport: str = "tcp") -> None:
        self.registry = registry
        self.name = transport  # "tcp" or "tls" (the Via transport, lower case)
        self.on_message = on_message
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.last_activity = time.monotonic()
        self.outbound = outbound
        self.closed = False
        self.address: Address | None = None
        self._intake = 0  # bytes read in this loop pass
        self.partial_since: float | None = None  # when the unfinished message's first byte came
        self._writes_blocked = False  # between asyncio's pause_writing and resume_writing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.peer = (peer[0], peer[1])
        self.local = (local[0], local[1])
        self.address = Address(self.name, self.peer[0], self.peer[1], self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if not self.registry.add(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self._count_intake(len(data))
        try:
            items = self.framer.feed(data)
        except SipParseError as e:
            # The stream cannot be resynchronised: answer what we can, then close.
            log.info("closing %s connection from %s:%s: %s", self.name.upper(), self.peer[0], self.peer[1], e.reason)
            self.registry.framing_errors += 1
            if self.registry.on_error is not None and self.address is not None:
                self.registry.on_error(bytes(self.framer._buf[:16384]), e, self.address)
            self.close()
            return
        if not self.framer.buffered:
            self.partial_since = None
        elif self.partial_since is None or items:
            self.partial_since = self.last_activity
        for item in items:
            if item is PING or item == PING:
                self.write(PONG)
                continue
            assert self.address is not None
            self.on_message(item, self.address, self.local)

    def write(self, data: bytes) -> bool:
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return False
        self.last_activity = time.monotonic()
        t.write(data)
        self._drop_if_stalled(t)
        return True

    def _drop_if_stalled(self, t: asyncio.Transport) -> None:
        """After a write: abort a connection whose peer left MAX_UNSENT unread."""
        if t.get_write_buffer_size() <= MAX_UNSENT:
            return
        log.warning("closing %s connection to %s:%s: %d bytes unread by the peer", self.name.upper(),
                    self.peer[0], self.peer[1], t.get_write_buffer_size())
        self.registry.stalled += 1
        t.abort()

    # Back-pressure. A peer that sends requests but does not read the answers:
    # stop reading its requests while our answers to it back up (asyncio calls
    # pause_writing/resume_writing at its high- and low-water marks) instead of
    # queueing answers without end; and take at most PASS_INTAKE per pass.
    def _count_intake(self, n: int) -> None:
        if not self._intake:
            asyncio.get_running_loop().call_soon(self._pass_over)
        self._intake += n
        if self._intake > PASS_INTAKE:
            self._pause_reading()

    def pause_writing(self) -> None:
        self._writes_blocked = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writes_blocked = False
        if not self._intake:
            self._resume_reading()

    def _pass_over(self) -> None:
        self._intake = 0
        if not self._writes_blocked:
            self._resume_reading()

    def _pause_reading(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and t.is_reading():
            t.pause_reading()

    def _resume_reading(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and not t.is_reading():
            t.resume_reading()

    @property
    def is_open(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.registry.remove(self)


class TcpRegistry:
    """All open connections, by peer address; enforces the global limit."""

    def __init__(self, on_message: OnMessage, max_connections: int = 10000, idle_timeout: float = 600.0) -> None:
        self.on_message = on_message
        self.on_error: Callable[[bytes, SipParseError, Address], None] | None = None
        self.on_close: Callable[[TcpConnection], None] | None = None  # several workers: tell the others
        self.stalled = 0  # connections dropped with MAX_UNSENT bytes unread
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.by_peer: dict[tuple[str, str, int], TcpConnection] = {}  # (transport, host, port)
        self.all: set[TcpConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.framing_errors = 0
        self.refused = 0
        self._connecting: dict[tuple[str, str, int], asyncio.Future] = {}

    def add(self, conn: TcpConnection) -> bool:
        if len(self.all) >= self.max_connections:
            self.refused += 1
            return False
        self.all.add(conn)
        self.by_peer[(conn.name, *conn.peer)] = conn
        return True

    def remove(self, conn: TcpConnection) -> None:
        self.all.discard(conn)
        key = (conn.name, *conn.peer)
        if self.by_peer.get(key) is conn:
            del self.by_peer[key]
        if self.on_close is not None:
            self.on_close(conn)

    def find(self, host: str, port: int, transport: str = "tcp") -> TcpConnection | None:
        conn = self.by_peer.get((transport, host, port))
        return conn if conn is not None and conn.is_open else None

    async def connect(self, host: str, port: int, timeout: float = 5.0, *, transport: str = "tcp",
                      ssl_context: ssl.SSLContext | None = None) -> TcpConnection:
        key = (transport, host, port)
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._connecting[key] = fut
        try:
            # The timeout covers the TLS handshake too (create_connection
            # returns once it is done).
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: TcpConnection(self, self.on_message, outbound=True, transport=transport),
                    host, port, ssl=ssl_context,
                ),
                timeout,
            )
            fut.set_result(conn)
            return conn  # type: ignore[return-value]
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else ConnectionError(str(e)))
            fut.exception()  # mark retrieved
            raise
        finally:
            self._connecting.pop(key, None)

    def sweep_idle(self) -> int:
        now = time.monotonic()
        n = 0
        for conn in list(self.all):
            if now - conn.last_activity > self.idle_timeout:
                conn.close()
                n += 1
            elif conn.partial_since is not None and now - conn.partial_since > PARTIAL_MESSAGE_TIMEOUT:
                log.info("closing %s connection from %s:%s: a message unfinished after %d s", conn.name.upper(),
                         conn.peer[0], conn.peer[1], PARTIAL_MESSAGE_TIMEOUT)
                conn.close()
                n += 1
        return n

    async def listen(self, host: str, port: int, *, transport: str = "tcp", ssl_context: ssl.SSLContext | None = None,
                     factory: Callable[[], asyncio.Protocol] | None = None,
                     sock: socket.socket | None = None) -> asyncio.AbstractServer:
        """Listen on host:port, or on `sock` (a listening socket the worker
        processes share, created by the supervisor)."""
        loop = asyncio.get_running_loop()
        if factory is None:
            factory = lambda: TcpConnection(self, self.on_message, transport=transport)  # noqa: E731
        extra = {"ssl": ssl_context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT} if ssl_context is not None else {}
        if sock is not None:
            server = await loop.create_server(factory, sock=sock, backlog=1024, **extra)
        else:
            server = await loop.create_server(factory, host, port, reuse_address=True, backlog=1024, **extra)
        self.servers.append(server)
        return server

    def close_all(self) -> None:
        for s in self.servers:
            s.close()
        for conn in list(self.all):
            conn.close()
