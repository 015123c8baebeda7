"""StreamFramer: cutting a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

import pytest

from presenced.sip import PING, MessageTooLarge, Request, SipParseError, StreamFramer, parse_message
from presenced.sip.message import MAX_BODY_BYTES, MAX_HEADER_BYTES


def message(n: int = 1, body: bytes = b"", cl_name: str = "Content-Length") -> bytes:
    head = (
        f"NOTIFY sip:watcher{n}@192.0.2.7:5060;transport=tcp SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP ps.example.com;branch=z9hG4bK{n}\r\n"
        f"From: <sip:alice@example.com>;tag=p{n}\r\n"
        f"To: <sip:watcher{n}@example.com>;tag=w{n}\r\n"
        f"Call-ID: call-{n}@ps.example.com\r\n"
        f"CSeq: {n} NOTIFY\r\n"
        "Max-Forwards: 70\r\n"
        "Event: presence\r\n"
        "Subscription-State: active;expires=600\r\n"
    )
    if body:
        head += "Content-Type: application/pidf+xml\r\n"
    head += f"{cl_name}: {len(body)}\r\n\r\n"
    return head.encode() + body


PIDF = b'<?xml version="1.0"?>\r\n\r\n<presence entity="pres:alice@example.com"/>\r\n'


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for c in chunks:
        out.extend(framer.feed(c))
    return out


def test_single_message_in_one_chunk() -> None:
    msg = message(1, PIDF)
    f = StreamFramer()
    assert f.feed(msg) == [msg]
    assert f.buffered == 0
    m = parse_message(msg, stream=True)
    assert isinstance(m, Request) and m.body == PIDF


def test_message_split_into_one_byte_chunks() -> None:
    msg = message(1, PIDF)
    f = StreamFramer()
    out = []
    for i in range(len(msg)):
        got = f.feed(msg[i : i + 1])
        if i < len(msg) - 1:
            assert got == []
            assert f.buffered == i + 1
        out.extend(got)
    assert out == [msg]
    assert f.buffered == 0


def test_two_pipelined_messages_in_one_chunk() -> None:
    a, b = message(1, PIDF), message(2)
    f = StreamFramer()
    assert f.feed(a + b) == [a, b]
    assert [parse_message(x, stream=True).cseq.seq for x in (a, b)] == [1, 2]


def test_pipelined_with_partial_third_message() -> None:
    a, b, c = message(1), message(2, PIDF), message(3, PIDF)
    f = StreamFramer()
    assert f.feed(a + b + c[:50]) == [a, b]
    assert f.buffered == 50
    assert f.feed(c[50:]) == [c]


def test_crlf_keepalive_between_messages() -> None:
    a, b = message(1), message(2, PIDF)
    f = StreamFramer()
    assert f.feed(a + PING + b) == [a, PING, b]
    assert f.feed(PING) == [PING]
    assert f.feed(PING + PING) == [PING, PING]


def test_keepalive_split_across_chunks() -> None:
    f = StreamFramer()
    assert f.feed(b"\r") == []
    assert f.feed(b"\n\r") == []
    assert f.feed(b"\n") == [PING]
    a = message(1)
    assert feed_all(f, [a[:10], a[10:] + b"\r\n", b"\r\n"]) == [a, PING]


def test_stray_crlf_is_skipped() -> None:
    a, b = message(1), message(2, PIDF)
    f = StreamFramer()
    assert f.feed(b"\r\n" + a) == [a]
    assert f.feed(b + b"\r\n") == [b]
    assert f.buffered == 2  # might still become a ping
    assert f.feed(a) == [a]
    assert f.buffered == 0
    assert f.feed(b"\n" + a + b"\r\n\n" + b) == [a, b]


def test_body_split_across_chunks() -> None:
    msg = message(1, PIDF)
    split = msg.index(b"\r\n\r\n") + 4 + 5
    f = StreamFramer()
    assert f.feed(msg[:split]) == []
    assert f.feed(msg[split:-1]) == []
    assert f.feed(msg[-1:]) == [msg]


def test_body_containing_blank_lines_is_not_a_message_boundary() -> None:
    body = b"\r\n\r\n" + PIDF + b"\r\n\r\n"
    a, b = message(1, body), message(2)
    f = StreamFramer()
    assert f.feed(a + b) == [a, b]
    assert parse_message(a, stream=True).body == body


def test_compact_content_length() -> None:
    a = message(1, PIDF, cl_name="l")
    b = message(2, PIDF, cl_name="content-LENGTH  ")
    f = StreamFramer()
    assert f.feed(a + b) == [a, b]


def test_lf_only_framing() -> None:
    a = b"MESSAGE sip:a@example.com SIP/2.0\nl: 4\n\nbody"
    f = StreamFramer()
    assert f.feed(a + message(2)) == [a, message(2)]
    # a CRLFCRLF later in the body must not be taken as the end of an LF-only header
    body = b"x\r\n\r\ny"
    b = b"MESSAGE sip:a@example.com SIP/2.0\nContent-Length: %d\n\n" % len(body) + body
    assert StreamFramer().feed(b + a) == [b, a]
    assert parse_message(b, stream=True).body == body


def test_missing_content_length_is_an_error() -> None:
    a = message(1).replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(SipParseError) as ei:
        StreamFramer().feed(a)
    assert ei.value.status == 400
    with pytest.raises(SipParseError):
        parse_message(a, stream=True)


@pytest.mark.parametrize("cl", [b"-1", b"abc", b"", b"1.5", b"\xc2\xb2"])
def test_malformed_content_length_is_an_error(cl: bytes) -> None:
    a = message(1).replace(b"Content-Length: 0", b"Content-Length: " + cl)
    with pytest.raises(SipParseError):
        StreamFramer().feed(a)


def test_conflicting_content_lengths_are_an_error() -> None:
    a = message(1, PIDF).replace(b"Max-Forwards: 70\r\n", b"l: 3\r\n")
    with pytest.raises(SipParseError):
        StreamFramer().feed(a)


def test_header_over_limit_without_terminator() -> None:
    f = StreamFramer(max_header=1024)
    assert f.feed(b"NOTIFY sip:a@example.com SIP/2.0\r\n") == []
    with pytest.raises(MessageTooLarge) as ei:
        for _ in range(100):
            f.feed(b"X-Filler: " + b"a" * 50 + b"\r\n")
    assert ei.value.status == 513
    assert f.buffered <= 1024 + 64


def test_header_over_default_limit_without_terminator() -> None:
    f = StreamFramer()
    with pytest.raises(MessageTooLarge):
        f.feed(b"NOTIFY sip:a@example.com SIP/2.0\r\nX-Big: " + b"a" * MAX_HEADER_BYTES)


def test_header_over_limit_with_terminator() -> None:
    big = message(1).replace(b"Max-Forwards: 70\r\n", b"X-Big: " + b"a" * 2000 + b"\r\n")
    with pytest.raises(MessageTooLarge):
        StreamFramer(max_header=1024).feed(big)
    assert StreamFramer().feed(big) == [big]


def test_body_over_limit() -> None:
    f = StreamFramer(max_body=100)
    assert f.feed(message(1, b"x" * 100)) == [message(1, b"x" * 100)]
    with pytest.raises(MessageTooLarge) as ei:
        f.feed(message(2, b"x" * 101))
    assert ei.value.status == 513
    # the limit is enforced from the header alone, before the body arrives
    announce = message(3).replace(b"Content-Length: 0", b"Content-Length: %d" % (MAX_BODY_BYTES + 1))
    with pytest.raises(MessageTooLarge):
        StreamFramer().feed(announce)


def test_framed_messages_parse_identically_to_datagrams() -> None:
    msgs = [message(i, PIDF if i % 2 else b"") for i in range(1, 6)]
    stream = b"\r\n".join(msgs)
    f = StreamFramer()
    out = feed_all(f, [stream[i : i + 37] for i in range(0, len(stream), 37)])
    assert out == msgs
    for raw in out:
        s, d = parse_message(raw, stream=True), parse_message(raw)
        assert (s.headers, s.body) == (d.headers, d.body)
