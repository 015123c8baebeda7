"""Core SIP behaviour over real sockets: RFC 3261 UAS rules, transports, framing."""

from __future__ import annotations

import os
import socket
import time

import pytest

from e2e_support import HOST, Phone, pidf, raw_tcp, read_until, tuple_ids, uid

from presenced.sip import Response


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def _still_answers(srv, transport: str = "udp") -> None:
    with Phone(srv.port, transport) as ph:
        r = ph.request("OPTIONS", f"sip:ping@{HOST}:{srv.port}")
        assert r.status == 200


# ------------------------------------------------------------ OPTIONS / 405 / 420
def test_options_capabilities(server, phones, transport):
    ph = phones(server, transport)
    r = ph.request("OPTIONS", f"sip:{HOST}:{server.port}")
    assert r.status == 200
    allow = _tokens(r.get("Allow"))
    assert {"publish", "subscribe", "options"} <= allow
    assert "application/pidf+xml" in _tokens(r.get("Accept"))
    events = _tokens(r.get("Allow-Events"))
    assert {"presence", "presence.winfo", "dialog", "message-summary", "reg"} <= events
    assert r.has("Supported")
    assert r.to.tag  # RFC 3261 §8.2.6.2


@pytest.mark.parametrize("method", ["MESSAGE", "INFO", "INVITE"])
def test_unknown_method_405_with_allow(server, phones, transport, method):
    ph = phones(server, transport)
    body = b"hello" if method == "MESSAGE" else b""
    extra = [("Content-Type", "text/plain")] if body else []
    if method == "INVITE":
        extra.append(("Contact", ph.contact))
    uri, call_id, from_tag = f"sip:{uid()}@{HOST}", uid("c"), uid("f")
    data, branch = ph.build(method, uri, extra, body, call_id=call_id, from_tag=from_tag)
    ph.send_raw(data)
    r = ph.wait_response(branch)
    assert r.status == 405
    assert {"publish", "subscribe"} <= _tokens(r.get("Allow"))
    if method == "INVITE":  # a polite UAC ACKs the non-2xx final response (same branch, §17.1.1.3)
        ack, _ = ph.build("ACK", uri, call_id=call_id, from_tag=from_tag, to_tag=r.to.tag, branch=branch)
        ph.send_raw(ack)
        assert ph.no_message(0.3, lambda m: isinstance(m, Response) and m.top_via.branch == branch)
    # the server keeps answering
    assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200


@pytest.mark.parametrize("method", ["SUBSCRIBE", "OPTIONS", "PUBLISH"])
def test_require_unknown_extension_420(server, phones, transport, presentity, method):
    ph = phones(server, transport)
    h = [("Require", "foo"), ("Event", "presence"), ("Contact", ph.contact), ("Expires", "60")]
    body = pidf(presentity) if method == "PUBLISH" else b""
    if body:
        h.append(("Content-Type", "application/pidf+xml"))
    r = ph.request(method, presentity, h, body)
    assert r.status == 420
    assert "foo" in _tokens(r.get("Unsupported"))


# ---------------------------------------------------------- malformed requests
def _raw_request(ph: Phone, lines: list[str], body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def read_raw(ph: Phone, branch: str, timeout: float = 2.0) -> bytes:
    """The first message that names `branch`, unparsed (an answer to a malformed
    request may lack what the client's parser insists on)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for m in ph._read(max(0.01, end - time.monotonic())):
            if branch.encode() in m:
                return m
    return b""


def _vialine(ph: Phone, branch: str) -> str:
    proto = "UDP" if ph.transport == "udp" else "TCP"
    return f"Via: SIP/2.0/{proto} {HOST}:{ph.port};branch={branch};rport"


@pytest.mark.parametrize("call_id, cseq", [(None, "1 OPTIONS"), ("c1", "x OPTIONS"), ("c2", "4294967296 OPTIONS"),
                                           ("c3", None)], ids=["no Call-ID", "bad CSeq", "CSeq > 2**31", "no CSeq"])
def test_missing_call_id_or_bad_cseq_400(server, phones, transport, call_id, cseq):
    """RFC 3261 §8.1.1: malformed, answered 400 (the answer copies what there is)."""
    ph = phones(server, transport)
    branch = "z9hG4bK" + uid("nc")
    lines = [f"OPTIONS sip:{HOST}:{server.port} SIP/2.0", _vialine(ph, branch), "Max-Forwards: 70",
             f"From: <sip:a@{HOST}>;tag=1", f"To: <sip:b@{HOST}>"]
    if call_id:
        lines.append(f"Call-ID: {call_id}-{uid()}")
    if cseq:
        lines.append(f"CSeq: {cseq}")
    ph.send_raw(_raw_request(ph, lines))
    raw = read_raw(ph, branch)
    assert raw.startswith(b"SIP/2.0 400 "), raw
    assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200


def test_cseq_method_mismatch_400(server, phones, transport):
    ph = phones(server, transport)
    data, branch = ph.build("OPTIONS", f"sip:{HOST}:{server.port}")
    data = data.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 SUBSCRIBE")
    ph.send_raw(data)
    r = ph.wait_response(branch)
    assert r.status == 400
    assert r.reason.strip()
    assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200


@pytest.mark.parametrize("via", ["Via: garbage", "Via: SIP/2.0/UDP", "Via: SIP/2.0/UDP 127.0.0.1:notaport;branch=z9hG4bKx"])
def test_bad_via_rejected_or_dropped(server, phones, transport, via):
    ph = phones(server, transport)
    msg = _raw_request(ph, [
        f"OPTIONS sip:{HOST}:{server.port} SIP/2.0", via, "Max-Forwards: 70",
        f"From: <sip:a@{HOST}>;tag=1", f"To: <sip:b@{HOST}>", f"Call-ID: {uid()}", "CSeq: 1 OPTIONS",
    ])
    ph.send_raw(msg)
    try:
        r = ph.recv(0.4, lambda m: isinstance(m, Response))
        assert r.status == 400
    except TimeoutError:
        pass
    assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200


def test_garbage_datagrams_ignored(server, phones):
    ph = phones(server, "udp")
    for junk in (b"\x00\xff\xfe garbage", os.urandom(700), b"hello world\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n",
                 b"\r\n\r\n", b"NOTIFY\r\n\r\n", b"SUBSCRIBE sip:x SIP/2.0\r\nVia: x\r\n\r\n"):
        ph.send_raw(junk)
    assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200
    _still_answers(server, "tcp")


def test_garbage_between_tcp_messages(server):
    """Framed garbage is ignored; the connection keeps working."""
    with Phone(server.port, "tcp") as ph:
        assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200
        ph.send_raw(b"THIS IS NOT SIP\r\nContent-Length: 0\r\n\r\n")
        ph.send_raw(b"\r\n\r\n\r\n")  # stray line ends / keep-alives
        assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200


def test_unframeable_tcp_garbage_does_not_hurt_server(server):
    s = raw_tcp(server.port)
    try:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(300) + b"\r\n\r\n")
        read_until(s, lambda b: False, timeout=0.5)  # answer or close: both fine
    finally:
        s.close()
    _still_answers(server, "tcp")
    _still_answers(server, "udp")


def test_tcp_message_split_into_many_segments(server):
    with Phone(server.port, "tcp") as ph:
        ph.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = pidf(f"sip:{uid('p')}@{HOST}")
        data, branch = ph.build("PUBLISH", f"sip:{uid('p')}@{HOST}",
                                [("Event", "presence"), ("Expires", "60"), ("Content-Type", "application/pidf+xml")], body)
        for i in range(0, len(data), 7):
            ph.send_raw(data[i : i + 7])
            if i % 70 == 0:
                time.sleep(0.002)
        r = ph.wait_response(branch)
        assert r.status == 200 and r.get("SIP-ETag")


def test_tcp_two_pipelined_requests_in_one_segment(server):
    with Phone(server.port, "tcp") as ph:
        a, ba = ph.build("OPTIONS", f"sip:{HOST}:{server.port}")
        b, bb = ph.build("OPTIONS", f"sip:{HOST}:{server.port}", cseq=2)
        ph.send_raw(a + b)
        assert ph.wait_response(ba).status == 200
        assert ph.wait_response(bb).status == 200


def test_tcp_crlf_keepalive_answered_with_crlf(server):
    s = raw_tcp(server.port)
    try:
        s.sendall(b"\r\n\r\n")
        got = read_until(s, lambda b: b.endswith(b"\r\n"), timeout=2)
        assert got == b"\r\n"
        # the connection is still usable afterwards
        with Phone(server.port, "tcp") as ph:  # (a fresh one: the raw socket has no framer)
            assert ph.request("OPTIONS", f"sip:{HOST}:{server.port}").status == 200
        s.sendall(b"\r\n\r\n")
        assert read_until(s, lambda b: b.endswith(b"\r\n"), timeout=2) == b"\r\n"
    finally:
        s.close()


# -------------------------------------------------------------- transactions
def test_retransmitted_subscribe_absorbed(server, phones, presentity):
    """Same branch three times: identical responses (same To-tag), one subscription."""
    ph = phones(server, "udp")
    data, branch = ph.build("SUBSCRIBE", presentity,
                            [("Event", "presence"), ("Contact", ph.contact), ("Expires", "60")])
    ph.send_raw(data)
    first = ph.wait_response(branch)
    assert first.status == 200 and first.to.tag
    for _ in range(2):
        ph.send_raw(data)
        again = ph.wait_response(branch)
        assert again.status == first.status
        assert again.to.tag == first.to.tag
        assert again.get("Expires") == first.get("Expires")
    raws = [raw for raw in ph.received_raw if raw.startswith(b"SIP/2.0") and branch.encode() in raw]
    assert len(raws) == 3 and raws[0] == raws[1] == raws[2]  # byte-identical retransmissions
    call_id = first.call_id
    initial = [n for n in ph.notifies(window=0.6) if n.call_id == call_id]
    assert len(initial) == 1
    # a state change reaches exactly one subscription
    pub = Phone(server.port, "udp")
    try:
        assert pub.publish(presentity, pidf(presentity)).status == 200
    finally:
        pub.close()
    later = ph.notifies(window=0.6)
    assert len(later) == 1
    assert later[0].call_id == call_id and later[0].from_.tag == first.to.tag


def test_retransmitted_publish_absorbed(server, phones, presentity, transport):
    """Over TCP too: a resent PUBLISH made a second publication there."""
    ph = phones(server, transport)
    w = phones(server, "udp")
    _, dlg = w.subscribe(presentity, expires=60)
    w.expect_notify(dlg)
    body = pidf(presentity, "tuple-rtx")
    data, branch = ph.build("PUBLISH", presentity,
                            [("Event", "presence"), ("Expires", "60"), ("Content-Type", "application/pidf+xml")], body)
    ph.send_raw(data)
    r1 = ph.wait_response(branch)
    ph.send_raw(data)
    r2 = ph.wait_response(branch)
    assert r1.status == r2.status == 200
    assert r1.get("SIP-ETag") == r2.get("SIP-ETag")
    assert r1.to.tag == r2.to.tag
    assert len(w.notifies(dlg, 0.6)) == 1  # one state change, one NOTIFY
    # removing the one publication leaves nothing: there was no second one
    assert ph.publish(presentity, expires=0, etag=r1.get("SIP-ETag")).status == 200
    n = w.expect_notify(dlg)
    assert tuple_ids(n.body) == []


def test_to_tag_identical_on_retransmitted_options(server, phones):
    ph = phones(server, "udp")
    data, branch = ph.build("OPTIONS", f"sip:{HOST}:{server.port}")
    ph.send_raw(data)
    a = ph.wait_response(branch)
    ph.send_raw(data)
    b = ph.wait_response(branch)
    assert a.to.tag and a.to.tag == b.to.tag


# -------------------------------------------------------------- Via handling
def test_received_and_rport_in_response_via(server, phones, transport):
    ph = phones(server, transport)
    r = ph.request("OPTIONS", f"sip:{HOST}:{server.port}")
    via = r.top_via
    assert via.params.get("rport") == str(ph.port)
    assert via.params.get("received") == HOST


def test_rport_routes_response_to_source_port(server, phones):
    """The Via claims another host and port: with rport the answer goes to where the request came from."""
    ph = phones(server, "udp")
    branch = "z9hG4bK" + uid("rp")
    msg = _raw_request(ph, [
        f"OPTIONS sip:{HOST}:{server.port} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.55:5999;branch={branch};rport", "Max-Forwards: 70",
        f"From: <sip:a@{HOST}>;tag=1", f"To: <sip:b@{HOST}>", f"Call-ID: {uid()}", "CSeq: 1 OPTIONS",
    ])
    ph.send_raw(msg)
    r = ph.wait_response(branch)
    assert r.status == 200
    assert r.top_via.params.get("received") == HOST
    assert r.top_via.params.get("rport") == str(ph.port)


def test_received_added_without_rport(server, phones):
    """No rport: received is added and the answer goes to received:sent-by-port."""
    ph = phones(server, "udp")
    branch = "z9hG4bK" + uid("nr")
    msg = _raw_request(ph, [
        f"OPTIONS sip:{HOST}:{server.port} SIP/2.0",
        f"Via: SIP/2.0/UDP 198.51.100.7:{ph.port};branch={branch}", "Max-Forwards: 70",
        f"From: <sip:a@{HOST}>;tag=1", f"To: <sip:b@{HOST}>", f"Call-ID: {uid()}", "CSeq: 1 OPTIONS",
    ])
    ph.send_raw(msg)
    r = ph.wait_response(branch)
    assert r.status == 200
    assert r.top_via.params.get("received") == HOST
    assert "rport" not in r.top_via.params


# ------------------------------------------------------------------- sizes
def test_large_udp_request_accepted(server, phones, presentity):
    """RFC 3261 §18.1.1: datagrams up to 65,535 bytes must be received."""
    ph = phones(server, "udp")
    big = pidf(presentity, note="x" * 40000)
    r = ph.publish(presentity, big)
    assert r.status == 200


def test_oversized_tcp_request_rejected_server_survives(server):
    s = raw_tcp(server.port, timeout=5)
    body = b"<" + b"x" * 300_000 + b"/>"
    head = (
        f"PUBLISH sip:{uid('big')}@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {HOST}:{s.getsockname()[1]};branch=z9hG4bK{uid('b')};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:a@{HOST}>;tag=1\r\nTo: <sip:a@{HOST}>\r\nCall-ID: {uid()}\r\nCSeq: 1 PUBLISH\r\n"
        "Event: presence\r\nContent-Type: application/pidf+xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    got = b""
    try:
        try:
            s.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = read_until(s, lambda b: b"\r\n\r\n" in b, timeout=3)
    finally:
        s.close()
    if got:
        assert got.startswith(b"SIP/2.0 513"), got[:200]
    _still_answers(server, "tcp")
    _still_answers(server, "udp")


def test_content_length_larger_than_datagram_400(server, phones):
    ph = phones(server, "udp")
    data, branch = ph.build("OPTIONS", f"sip:{HOST}:{server.port}", body=b"abc")
    data = data.replace(b"Content-Length: 3", b"Content-Length: 300")
    ph.send_raw(data)
    r = ph.wait_response(branch)
    assert r.status == 400


def test_compact_event_header(server, phones, presentity, transport):
    """RFC 3261 §7.3.1 / RFC 6665: `o` is Event, `u` Allow-Events."""
    ph = phones(server, transport)
    r = ph.request("SUBSCRIBE", presentity, [("o", "presence"), ("m", ph.contact), ("Expires", "60")])
    assert r.status == 200
    n = ph.expect_notify()
    assert (n.get("Event") or "").startswith("presence")


def test_request_without_via_over_tcp_gets_400_on_its_connection(server):
    """RFC 3261 §8.1.1: Via is mandatory; over a stream the 400 can still
    reach the sender (on its connection) although nothing names it."""
    s = raw_tcp(server.port)
    try:
        call_id = uid("novia")
        lines = [f"SUBSCRIBE sip:nv@{HOST} SIP/2.0", "Max-Forwards: 70", f"From: <sip:w@{HOST}>;tag=1",
                 f"To: <sip:nv@{HOST}>", f"Call-ID: {call_id}", "CSeq: 1 SUBSCRIBE", "Event: presence",
                 f"Contact: <sip:w@{HOST}:5999;transport=tcp>", "Expires: 60", "Content-Length: 0"]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = read_until(s, lambda b: b"\r\n\r\n" in b)
        assert raw.startswith(b"SIP/2.0 400 "), raw
        assert call_id.encode() in raw
    finally:
        s.close()


def test_cancel_of_a_completed_subscribe_is_answered_200_and_changes_nothing(server, phones, transport):
    """RFC 3261 §9.2: a CANCEL that matches a transaction gets 200 (ours are
    already complete, so it has no effect); one that matches none gets 481."""
    ph = phones(server, transport)
    pres = f"sip:{uid('cx')}@{HOST}"
    data, branch = ph.build("SUBSCRIBE", pres, [("Event", "presence"), ("Expires", "60"), ("Contact", ph.contact)])
    ph.send_raw(data)
    assert ph.wait_response(branch).status == 200
    cancel = data.replace(b"SUBSCRIBE " + pres.encode(), b"CANCEL " + pres.encode(), 1)
    cancel = cancel.replace(b" SUBSCRIBE\r\n", b" CANCEL\r\n")  # CSeq method
    ph.send_raw(cancel)
    r = ph.recv(2.0, lambda m: isinstance(m, Response) and (m.get("cseq") or "").endswith("CANCEL"))
    assert r.status == 200
    other = cancel.replace(branch.encode(), b"z9hG4bK" + uid("none").encode())
    ph.send_raw(other)
    r = ph.recv(2.0, lambda m: isinstance(m, Response) and (m.get("cseq") or "").endswith("CANCEL"))
    assert r.status == 481


def test_answer_after_the_tcp_connection_closed_goes_to_the_via_port(spawn, tmp_path):
    """RFC 3261 §18.2.2: the request's connection is gone, so the response goes
    over a new connection to the received address and the Via's sent-by port.
    (DB-only mode: the answer waits for a database read, so the connection is
    surely closed by then; otherwise the answer may already be on its way.)"""
    server = spawn("--db-url", f"sqlite://{tmp_path}/via.db", "--set", "presence.subs_db_mode=3",
                   "--set", "presence.publ_cache=0")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(1)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    try:
        s = raw_tcp(server.port)
        call_id = uid("gone")
        pres = f"sip:{uid('g')}@{HOST}"
        body = pidf(pres)
        lines = [f"PUBLISH {pres} SIP/2.0", f"Via: SIP/2.0/TCP {HOST}:{port};branch=z9hG4bK{uid('b')}",
                 "Max-Forwards: 70", f"From: <{pres}>;tag=1", f"To: <{pres}>", f"Call-ID: {call_id}",
                 "CSeq: 1 PUBLISH", "Event: presence", "Expires: 60", "Content-Type: application/pidf+xml",
                 f"Content-Length: {len(body)}"]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        s.close()
        conn, _ = listener.accept()
        try:
            raw = read_until(conn, lambda b: b"\r\n\r\n" in b)
        finally:
            conn.close()
        assert raw.startswith(b"SIP/2.0 200 "), raw
        assert call_id.encode() in raw
    finally:
        listener.close()
