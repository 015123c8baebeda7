"""SIP over WebSocket (RFC 7118), server side only, framed by wsproto.

One WebSocket message is one SIP message, so no Content-Length framing is
needed (a Content-Length present is honoured like on UDP). WebSocket clients
cannot accept connections: whatever is sent to them must go over the
connection they opened, so the runtime never dials out for ws/wss. The
connection lives in the same registry as TCP/TLS (same limit, same idle
timeout).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from presenced.sip.message import MAX_BODY_BYTES, MAX_HEADER_BYTES
from presenced.transport.tcp import OnMessage, TcpConnection, TcpRegistry

log = logging.getLogger("presenced.transport.ws")

SUBPROTOCOL = "sip"  # RFC 7118 §4.1
MAX_MESSAGE = MAX_HEADER_BYTES + MAX_BODY_BYTES


@dataclass(frozen=True)
class WsSettings:
    path: str = ""  # "" = any path
    origins: frozenset[str] = field(default_factory=frozenset)  # empty = any


class WsConnection(TcpConnection):
    def __init__(self, registry: TcpRegistry, on_message: OnMessage, transport: str, settings: WsSettings) -> None:
        super().__init__(registry, on_message, transport=transport)
        self.settings = settings
        self.ws = WSConnection(ConnectionType.SERVER)
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def is_open(self) -> bool:
        return super().is_open and self.ws.state is ConnectionState.OPEN

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self._count_intake(len(data))
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self._handshake(event)
                elif isinstance(event, (TextMessage, BytesMessage)):
                    self._message_part(event)
                elif isinstance(event, Ping):
                    self._out(event.response())
                elif isinstance(event, CloseConnection):
                    # The peer's close, or wsproto's report of a bad frame
                    # (then we send that close code): answer it and hang up.
                    try:
                        self._out(event.response())
                    except LocalProtocolError:
                        pass
                    self.close(graceful=False)
                    return
                if self.transport is None or self.transport.is_closing():
                    return
        except RemoteProtocolError as e:  # not a WebSocket handshake
            log.info("closing WebSocket connection from %s:%s: %s", self.peer[0], self.peer[1], e)
            self.registry.framing_errors += 1
            if e.event_hint is not None and self.ws.state is ConnectionState.CONNECTING:
                self._reject(400, str(e))
            self.close(graceful=False)
        except LocalProtocolError as e:  # pragma: no cover - a bug, but never fatal for the server
            log.warning("WebSocket state error with %s:%s: %s", self.peer[0], self.peer[1], e)
            self.close(graceful=False)

    def _handshake(self, req: Request) -> None:
        s = self.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.extra_headers}
        origin = headers.get("origin")
        protocols = [p.strip().lower() for p in req.subprotocols]
        if s.path and req.target.split("?", 1)[0] != s.path:
            self._reject(404, f"no WebSocket service at {req.target}")
        elif origin is not None and s.origins and origin.rstrip("/").lower() not in s.origins:
            self._reject(403, f"origin {origin} is not allowed")
        elif SUBPROTOCOL not in protocols:
            # RFC 7118 §4.1 asks for the "sip" subprotocol; without it there is
            # nothing we could speak, so refuse the upgrade.
            self._reject(400, 'missing WebSocket subprotocol "sip" (Sec-WebSocket-Protocol: sip)')
        else:
            # Echo the client's own spelling: tokens compare case-insensitively
            # here, but wsproto (and browsers) accept only an offered token.
            offered = req.subprotocols[protocols.index(SUBPROTOCOL)].strip()
            self._out(AcceptConnection(subprotocol=offered))
            return
        self.close(graceful=False)

    def _reject(self, status: int, why: str) -> None:
        log.info("refusing WebSocket handshake from %s:%s: %d %s", self.peer[0], self.peer[1], status, why)
        body = (why + "\r\n").encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        if status == 400:
            headers.append((b"sec-websocket-version", b"13"))
        try:
            self._out(RejectConnection(status_code=status, headers=headers, has_body=True))
            self._out(RejectData(data=body))
        except LocalProtocolError:
            pass

    def _message_part(self, event: TextMessage | BytesMessage) -> None:
        part = event.data.encode("utf-8") if isinstance(event.data, str) else bytes(event.data)
        self._size += len(part)
        if self._size > MAX_MESSAGE:
            log.info("closing WebSocket connection from %s:%s: message over %d bytes",
                     self.peer[0], self.peer[1], MAX_MESSAGE)
            self.registry.framing_errors += 1
            self._out(CloseConnection(code=1009, reason="message too big"))
            self.close(graceful=False)
            return
        self._parts.append(part)
        if not event.message_finished:
            return
        data = b"".join(self._parts) if len(self._parts) > 1 else part
        self._parts, self._size = [], 0
        if not data.strip(b"\r\n\t "):
            return  # an empty message is a keep-alive at most
        assert self.address is not None
        self.on_message(data, self.address, self.local)

    def _out(self, event) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.ws.send(event))

    def write(self, data: bytes) -> bool:
        if not self.is_open:
            return False
        self.last_activity = time.monotonic()
        try:
            msg = TextMessage(data=data.decode("utf-8"))
        except UnicodeDecodeError:
            msg = BytesMessage(data=data)  # RFC 7118 §5.1 allows binary frames
        self._out(msg)
        if self.transport is not None:
            self._drop_if_stalled(self.transport)
        return True

    def close(self, graceful: bool = True) -> None:
        if graceful and self.ws.state is ConnectionState.OPEN:
            try:
                self._out(CloseConnection(code=1001, reason="going away"))
            except LocalProtocolError:
                pass
        super().close()
