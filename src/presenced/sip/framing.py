"""Cutting a byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1).

Stream transports frame by Content-Length. The framer enforces hard limits so
a peer cannot make us buffer without bound, and it recognises the CRLF
keep-alives that phones send between messages.
"""

from __future__ import annotations

import re

from presenced.sip.errors import MessageTooLarge, SipParseError
from presenced.sip.message import MAX_BODY_BYTES, MAX_HEADER_BYTES, _header_end

_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)", re.IGNORECASE | re.MULTILINE)

PING = b"\r\n\r\n"
PONG = b"\r\n"


class StreamFramer:
    """Feed bytes in, get complete message byte strings out.

    `feed()` returns a list of items; each is either a complete message
    (bytes) or the marker PING when the peer sent a double-CRLF keep-alive
    that must be answered with a single CRLF.
    A framing error is fatal for the connection: after it the stream cannot be
    resynchronised, so the caller should answer if it can and close.
    """

    __slots__ = ("_buf", "max_header", "max_body")

    def __init__(self, max_header: int = MAX_HEADER_BYTES, max_body: int = MAX_BODY_BYTES) -> None:
        self._buf = bytearray()
        self.max_header = max_header
        self.max_body = max_body

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            # Skip keep-alives and stray line ends between messages.
            if buf[0] in (13, 10):
                if buf.startswith(PING):
                    out.append(PING)
                    del buf[:4]
                    continue
                if len(buf) < 4 and PING.startswith(bytes(buf)):
                    break  # maybe the start of a ping
                i = 0
                while i < len(buf) and buf[i] in (13, 10):
                    i += 1
                del buf[:i]
                continue
            end, body_start = _header_end(buf, 0)
            if end < 0:
                if len(buf) > self.max_header:
                    raise MessageTooLarge("Message Too Large (headers)")
                break
            if end > self.max_header:
                raise MessageTooLarge("Message Too Large (headers)")
            head = bytes(buf[:end])
            found = _CL_RE.findall(head)
            if not found:
                raise SipParseError("missing Content-Length on a stream transport")
            raw = found[0]
            if not raw.isdigit():
                raise SipParseError("malformed Content-Length")
            if any(v != raw for v in found[1:]):
                raise SipParseError("multiple Content-Length values")
            length = int(raw)
            if length > self.max_body:
                raise MessageTooLarge("Message Too Large (body)")
            total = body_start + length
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out
