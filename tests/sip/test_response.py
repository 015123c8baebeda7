"""build_response (RFC 3261 §8.2.6.2): what is copied from the request and how."""

from __future__ import annotations

import pytest

from presenced.sip import Request, Response, build_response, parse_message

VIA1 = "SIP/2.0/UDP  pc33.example.com:5060;branch=z9hG4bKnashds8;received=192.0.2.1;rport=5070"
VIA2 = "SIP/2.0/TCP proxy.example.com;branch=z9hG4bK776asdhds"
VIA3 = "SIP/2.0/TLS edge.example.com;branch=z9hG4bKa1"
VIA4 = "SIP/2.0/UDP [2001:db8::9:1]:5060;branch=z9hG4bKa2"
FROM = '"Alice, \\"A\\"" <sip:alice@example.com>;tag=1928301774;x=Y'
CALL_ID = "a84b4c76e66710@pc33.example.com"
CSEQ = "0314159   SUBSCRIBE"


def make_request(to: str = "<sip:bob@example.com>", extra: str = "") -> Request:
    data = (
        "SUBSCRIBE sip:bob@example.com SIP/2.0\r\n"
        f"Via: {VIA1}\r\n"
        f"v: {VIA2} , {VIA3}\r\n"
        "Max-Forwards: 70\r\n"
        f"VIA: {VIA4}\r\n"
        f"f: {FROM}\r\n"
        f"To: {to}\r\n"
        f"i: {CALL_ID}\r\n"
        f"cseq: {CSEQ}\r\n"
        "Event: presence\r\n"
        "Contact: <sip:alice@pc33.example.com>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    m = parse_message(data)
    assert isinstance(m, Request)
    return m


def parsed(data: bytes) -> Response:
    r = parse_message(data)
    assert isinstance(r, Response)
    return r


def test_copies_via_from_call_id_cseq_verbatim_and_in_order() -> None:
    req = make_request()
    out = build_response(req, 200, "OK", to_tag="srv1")
    r = parsed(out)
    assert (r.status, r.reason) == (200, "OK")
    assert r.get_all("Via") == [VIA1, VIA2, VIA3, VIA4] == req.get_all("Via")
    assert [v.branch for v in r.vias] == [v.branch for v in req.vias]
    assert r.get("From") == FROM
    assert r.from_.display == 'Alice, "A"' and r.from_.tag == "1928301774"
    assert r.get("Call-ID") == CALL_ID
    assert r.get("CSeq") == CSEQ
    assert (r.cseq.seq, r.cseq.method) == (314159, "SUBSCRIBE")
    # header lines are written with their canonical long names
    assert b"\r\nFrom: " + FROM.encode() + b"\r\n" in out
    assert b"\r\nCall-ID: " + CALL_ID.encode() + b"\r\n" in out
    assert b"\r\nCSeq: " + CSEQ.encode() + b"\r\n" in out
    assert b"\r\nVia: " + VIA1.encode() + b"\r\n" in out
    # request-only headers are not echoed
    assert not r.has("Max-Forwards") and not r.has("Event") and not r.has("Contact")


def test_start_line_and_trailer() -> None:
    out = build_response(make_request(), 489, "Bad Event")
    assert out.startswith(b"SIP/2.0 489 Bad Event\r\n")
    assert out.endswith(b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("status", [101, 180, 200, 202, 481, 489, 500, 603])
def test_to_tag_added_when_missing_and_status_above_100(status: int) -> None:
    r = parsed(build_response(make_request(), status, "X", to_tag="as83kd9bs"))
    assert r.get("To") == "<sip:bob@example.com>;tag=as83kd9bs"
    assert r.to.tag == "as83kd9bs"


def test_no_to_tag_on_100() -> None:
    r = parsed(build_response(make_request(), 100, "Trying", to_tag="as83kd9bs"))
    assert r.get("To") == "<sip:bob@example.com>"
    assert r.to.tag is None


def test_existing_to_tag_is_kept() -> None:
    to = "Bob <sip:bob@example.com>;tag=dialog1"
    r = parsed(build_response(make_request(to), 200, "OK", to_tag="other"))
    assert r.get("To") == to
    assert r.to.tag == "dialog1"


def test_no_to_tag_requested() -> None:
    r = parsed(build_response(make_request(), 200, "OK"))
    assert r.get("To") == "<sip:bob@example.com>"


def test_addr_spec_to_gets_header_tag() -> None:
    r = parsed(build_response(make_request("sip:bob@example.com"), 200, "OK", to_tag="t1"))
    assert r.to.uri_text == "sip:bob@example.com"
    assert r.to.tag == "t1" and r.to.uri.params == {}


def test_unparsable_to_is_copied_without_tag() -> None:
    r = parsed(build_response(make_request('"unterminated <sip:bob@example.com>'), 400, "Bad", to_tag="t1"))
    assert r.get("To") == '"unterminated <sip:bob@example.com>'


def test_same_to_tag_is_byte_identical() -> None:
    req = make_request()
    a = build_response(req, 200, "OK", [("Expires", "600")], b"", to_tag="abc")
    b = build_response(req, 200, "OK", [("Expires", "600")], b"", to_tag="abc")
    assert a == b
    # and independent of a fresh parse of the same request bytes
    assert build_response(make_request(), 200, "OK", [("Expires", "600")], to_tag="abc") == a
    assert build_response(req, 200, "OK", [("Expires", "600")], to_tag="abd") != a


def test_extra_headers_in_order_and_body_with_content_length() -> None:
    body = "<?xml version='1.0'?><presence entity='pres:bob@example.com'>é</presence>\r\n".encode()
    extra = [("Expires", "600"), ("Contact", "<sip:ps.example.com>"), ("Allow-Events", "presence, dialog"),
             ("Content-Type", "application/pidf+xml")]
    out = build_response(make_request(), 200, "OK", extra, body, to_tag="x")
    r = parsed(out)
    assert r.body == body
    assert r.get("Content-Length") == str(len(body))
    assert r.count("Content-Length") == 1
    assert [h for h in r.headers if h[0] in dict(extra)] == extra
    assert out.endswith(b"\r\n\r\n" + body)
    assert r.expires == 600
    assert r.get_all("Allow-Events") == ["presence", "dialog"]


def test_response_to_request_with_content_length_and_body() -> None:
    data = (b"PUBLISH sip:bob@example.com SIP/2.0\r\nVia: " + VIA2.encode()
            + b"\r\nFrom: <sip:bob@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\n"
            b"CSeq: 1 PUBLISH\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
    req = parse_message(data)
    assert isinstance(req, Request)
    r = parsed(build_response(req, 200, "OK", [("SIP-ETag", "e1")], to_tag="t"))
    assert r.body == b"" and r.get("Content-Length") == "0"
    assert not r.has("Content-Type")
    assert r.sip_etag == "e1"


def test_request_without_to_or_via() -> None:
    req = parse_message(b"OPTIONS sip:a@example.com SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n")
    assert isinstance(req, Request)
    r = parsed(build_response(req, 400, "Missing Via", to_tag="t"))
    assert not r.has("Via") and not r.has("To")
    assert r.call_id == "x"


def test_non_utf8_header_bytes_are_echoed_unchanged() -> None:
    data = (b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: " + VIA2.encode()
            + b"\r\nFrom: \"caf\xe9\" <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\n"
            b"Call-ID: c\xff1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n")
    req = parse_message(data)
    assert isinstance(req, Request)
    out = build_response(req, 200, "OK", to_tag="t")
    assert b"From: \"caf\xe9\" <sip:a@example.com>;tag=1\r\n" in out
    assert b"Call-ID: c\xff1\r\n" in out
