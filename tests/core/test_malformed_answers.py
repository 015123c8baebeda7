"""A malformed request gets a 400 whenever the answer can reach its sender."""

from __future__ import annotations

import pytest
from core_support import Harness

from presenced.transaction.layer import Address

BASE = [
    "SUBSCRIBE sip:rp@127.0.0.1 SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bKmal1;rport",
    "Max-Forwards: 70",
    "From: <sip:bob@127.0.0.1>;tag=ft1",
    "To: <sip:rp@127.0.0.1>",
    "Call-ID: mal-1",
    "CSeq: 1 SUBSCRIBE",
    "Contact: <sip:bob@127.0.0.1:40001>",
    "Event: presence",
    "Expires: 60",
    "Content-Length: 0",
]


def _request(drop: str | None = None, replace: tuple[str, str] | None = None) -> bytes:
    lines = [line for line in BASE if drop is None or not line.startswith(drop + ":")]
    if replace is not None:
        lines = [replace[1] if line.startswith(replace[0] + ":") else line for line in lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("data", [
    _request(drop="Call-ID"),
    _request(drop="CSeq"),
    _request(drop="Max-Forwards"),
    _request(replace=("CSeq", "CSeq: x SUBSCRIBE")),
    _request(replace=("CSeq", "CSeq: 4294967296 SUBSCRIBE")),
    b"GARBAGE\r\nVia: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bKg;rport\r\nCall-ID: g1\r\nContent-Length: 0\r\n\r\n",
], ids=["no Call-ID", "no CSeq", "no Max-Forwards", "CSeq not a number", "CSeq above 2**31", "garbage request line"])
def test_answered_400_over_udp(data):
    h = Harness.make()
    r = h.send(data, 40001)
    assert r is not None and r.status == 400, r
    assert r.top_via.branch.startswith("z9hG4bK")
    assert not h.engine.subs_by_dialog  # nothing was created


def test_answered_on_the_connection_over_tcp_even_with_a_bad_via():
    h = Harness.make()
    conn = object()
    data = _request(replace=("Via", "Via: SIP/2.0/TCP 127.0.0.1:99999;branch=z9hG4bKbv"))
    data = data.replace(b"Call-ID: mal-1\r\n", b"")
    h.core.receive(data, Address("tcp", "127.0.0.1", 40002, conn), ("127.0.0.1", 5060), h.now)
    out = h.core.tx.outbox
    assert len(out) == 1 and out[0][0].startswith(b"SIP/2.0 400 ") and out[0][1].conn is conn


def test_an_ack_is_never_answered():
    h = Harness.make()
    data = _request(drop="Call-ID").replace(b"SUBSCRIBE sip:", b"ACK sip:").replace(b"1 SUBSCRIBE", b"1 ACK")
    assert h.send(data, 40001) is None


def test_a_header_block_over_the_limit_is_answered_513():
    """TCP answered 513 and closed; UDP and WebSocket dropped it silently."""
    h = Harness.make()
    filler = "".join(f"X-Filler-{i}: {'y' * 200}\r\n" for i in range(100)).encode()  # ~21 KB
    data = _request().replace(b"Content-Length: 0\r\n", filler + b"Content-Length: 0\r\n")
    r = h.send(data, 40001)
    assert r is not None and r.status == 513, r
    assert r.call_id == "mal-1"
