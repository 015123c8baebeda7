"""RFC 3261 §18.2.1 / RFC 3581 §4: the response's top Via carries received and
the request's source port in rport, whatever shape the request's Via had."""

from __future__ import annotations

import pytest

from core_support import Harness

OPTIONS = (
    "OPTIONS sip:alice@example.com SIP/2.0\r\n"
    "Via: {via}\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:bob@example.com>;tag=f1\r\n"
    "To: <sip:alice@example.com>\r\n"
    "Call-ID: rport-{n}\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(("via", "expected"), [
    # rport last (almost every UA): filled in, received appended
    ("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1;rport",
     "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1;rport=40000;received=127.0.0.1"),
    # rport before other parameters
    ("SIP/2.0/UDP 127.0.0.1:5061;rport;branch=z9hG4bK2",
     "SIP/2.0/UDP 127.0.0.1:5061;rport=40000;branch=z9hG4bK2;received=127.0.0.1"),
    # sent-by differs from the source: received even without rport
    ("SIP/2.0/UDP 10.9.9.9:5061;branch=z9hG4bK3",
     "SIP/2.0/UDP 10.9.9.9:5061;branch=z9hG4bK3;received=127.0.0.1"),
    # nothing to add
    ("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK4",
     "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK4"),
    # a received already there is replaced, not repeated
    ("SIP/2.0/UDP 10.9.9.9:5061;branch=z9hG4bK5;received=10.1.1.1;rport",
     "SIP/2.0/UDP 10.9.9.9:5061;branch=z9hG4bK5;received=127.0.0.1;rport=40000"),
])
def test_response_via_gets_received_and_rport(via, expected):
    h = Harness.make()
    r = h.send(OPTIONS.format(via=via, n=abs(hash(via))).encode())
    assert r is not None and r.status == 200
    assert r.get("via") == expected


def test_only_the_top_via_of_a_combined_line_changes():
    h = Harness.make()
    via = "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK6;rport, SIP/2.0/UDP 10.2.2.2:5060;branch=z9hG4bKproxy"
    r = h.send(OPTIONS.format(via=via, n="combined").encode())
    assert r is not None and r.status == 200
    assert [v.raw for v in r.vias] == [
        "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK6;rport=40000;received=127.0.0.1",
        "SIP/2.0/UDP 10.2.2.2:5060;branch=z9hG4bKproxy",
    ]
