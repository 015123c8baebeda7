"""Property tests: serialise → parse round trips, stream chunking, robustness on junk, URI comparison."""

from __future__ import annotations

import os

import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from presenced.sip import (
    PING,
    Request,
    SipParseError,
    SipURI,
    StreamFramer,
    build_response,
    check_request,
    parse_message,
    parse_uri,
)
from presenced.sip.headers import normalize_name


# The pure-Python rerun (tests/test_build_mode.py) checks the .py sources
# pass; the compiled run already explored the inputs at full size.
_PURE = bool(os.environ.get("PRESENCED_PURE_PYTHON"))


def _examples(n: int) -> int:
    return max(10, n // 5) if _PURE else n

FAST = settings(max_examples=_examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=_examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------
# Strategies (character classes from RFC 3261 §25.1)
# ---------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits
TOKEN = ALNUM + "-.!%*_+`'~"
UNRESERVED = ALNUM + "-_.!~*'()"
USER_CHARS = UNRESERVED + "&=+$,;?/"
PASSWORD_CHARS = UNRESERVED + "&=+$,"
PARAM_CHARS = UNRESERVED + "[]/:&+$"
HNV_CHARS = UNRESERVED + "[]/?:+$"
HEX = "0123456789ABCDEFabcdef"

escape = st.tuples(st.sampled_from(HEX), st.sampled_from(HEX)).map(lambda t: "%" + t[0] + t[1])


def escaped_text(chars: str, min_size: int = 1, max_size: int = 10) -> st.SearchStrategy[str]:
    piece = st.sampled_from(chars) | escape
    return st.lists(piece, min_size=min_size, max_size=max_size).map("".join)


tokens = st.text(TOKEN, min_size=1, max_size=12)
label = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?\Z")
hostnames = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(1, 65535)
param_names = st.text(string.ascii_lowercase + string.digits + "-_.!~*'()", min_size=1, max_size=8)
params = st.dictionaries(param_names, st.none() | escaped_text(PARAM_CHARS), max_size=4)
uri_headers = st.none() | st.lists(
    st.tuples(escaped_text(HNV_CHARS), escaped_text(HNV_CHARS, min_size=0)), min_size=1, max_size=3
).map(lambda hs: "&".join(f"{n}={v}" for n, v in hs))


@st.composite
def sip_uris(draw: st.DrawFn) -> SipURI:
    user = draw(st.none() | escaped_text(USER_CHARS))
    password = draw(st.none() | escaped_text(PASSWORD_CHARS, min_size=0)) if user is not None else None
    return SipURI(
        draw(st.sampled_from(["sip", "sips"])), user, draw(hosts), draw(ports), draw(params),
        draw(uri_headers), password,
    )


def quote(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Printable text without controls, surrogates or line separators; values are stripped
# because LWS around a header value is not part of it.
safe_char = st.characters(
    min_codepoint=0x20, max_codepoint=0x2FFF, blacklist_categories=("Cc", "Cs", "Zl", "Zp")
)
header_values = st.text(safe_char, max_size=40).map(str.strip)
displays = st.text(safe_char, max_size=20)
METHODS = ["INVITE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "MESSAGE", "REGISTER", "BYE"]
methods = st.sampled_from(METHODS) | tokens
extra_names = tokens.map(lambda t: "X-" + t).filter(lambda n: normalize_name(n) != "content-length")


@st.composite
def requests(draw: st.DrawFn) -> tuple[Request, dict]:
    method = draw(methods)
    # Request-URI without a header component (not allowed there)
    u = draw(sip_uris())
    uri = str(SipURI(u.scheme, u.user, u.host, u.port, u.params, None, u.password))
    from_display = draw(displays)
    to_display = draw(st.none() | displays)
    from_tag = draw(tokens)
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]))
    via_host, via_port = draw(hosts), draw(ports)
    branch = "z9hG4bK" + draw(tokens)
    via = f"SIP/2.0/{transport} {via_host}{'' if via_port is None else f':{via_port}'};branch={branch}"
    to_uri = str(draw(sip_uris()))
    headers = [
        ("Via", via),
        ("From", f"{quote(from_display)} <sip:alice@example.com>;tag={from_tag}"),
        ("To", (quote(to_display) + " " if to_display is not None else "") + f"<{to_uri}>"),
        ("Call-ID", draw(tokens) + "@" + draw(hostnames)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]
    extras = draw(st.lists(st.tuples(extra_names, header_values), max_size=6))
    positions = draw(st.lists(st.integers(0, len(headers)), min_size=len(extras), max_size=len(extras)))
    for (name, value), pos in zip(extras, positions):
        headers.insert(pos, (name, value))
    body = draw(st.binary(max_size=200))
    expect = dict(
        from_display=from_display, to_display=to_display, from_tag=from_tag, transport=transport,
        via_host=via_host, via_port=via_port, branch=branch, to_uri=to_uri,
    )
    return Request(method, uri, list(headers), body), expect


# ---------------------------------------------------------------------------
# Request round trip
# ---------------------------------------------------------------------------

@FAST
@given(requests())
def test_request_roundtrip(case: tuple[Request, dict]) -> None:
    r, x = case
    data = r.to_bytes()
    for stream in (False, True):
        p = parse_message(data, stream=stream)
        assert isinstance(p, Request)
        assert p.method == r.method
        assert p.uri_text == r.uri_text
        assert p.headers == r.headers + [("Content-Length", str(len(r.body)))]
        assert p.body == r.body
    check_request(p)
    assert p.uri.equals(parse_uri(r.uri_text))
    assert p.from_.display == x["from_display"] and p.from_.tag == x["from_tag"]
    assert p.to.display == x["to_display"] and p.to.tag is None
    assert p.to.uri_text == x["to_uri"]
    v = p.top_via
    assert (v.transport, v.host, v.port, v.branch) == (x["transport"], x["via_host"], x["via_port"], x["branch"])
    assert p.to_bytes() == data


@FAST
@given(requests(), st.text(TOKEN, min_size=1, max_size=10))
def test_response_roundtrip(case: tuple[Request, dict], tag: str) -> None:
    r, x = case
    p = parse_message(r.to_bytes())
    assert isinstance(p, Request)
    out = build_response(p, 200, "OK", [("Expires", "60")], b"xyz", to_tag=tag)
    resp = parse_message(out)
    assert resp.get_all("Via") == p.get_all("Via")
    assert resp.from_.display == x["from_display"]
    assert resp.to.tag == tag and resp.to.display == x["to_display"]
    assert (resp.call_id, resp.cseq.seq, resp.cseq.method) == (p.call_id, p.cseq.seq, p.cseq.method)
    assert resp.body == b"xyz"


# ---------------------------------------------------------------------------
# Stream framing under arbitrary chunking
# ---------------------------------------------------------------------------

@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    msgs = [r.to_bytes() for r, _ in draw(st.lists(requests(), min_size=1, max_size=4))]
    data = b""
    expected: list[bytes] = []
    for m in msgs:
        # at most one separator between messages: a lone CRLF is ignored, a double CRLF is a ping
        sep = draw(st.sampled_from([b"", b"", b"\r\n", PING]))
        data += sep
        if sep == PING:
            expected.append(PING)
        data += m
        expected.append(m)
    if draw(st.booleans()):
        data += PING
        expected.append(PING)
    return data, expected


@settings(max_examples=_examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_framer_arbitrary_chunking(stream: tuple[bytes, list[bytes]], data: st.DataObject) -> None:
    raw, expected = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    f = StreamFramer()
    out: list[bytes] = []
    for c in chunks:
        out.extend(f.feed(c))
    assert out == expected
    assert f.buffered == 0
    for item in out:
        if item is not PING and item != PING:
            assert isinstance(parse_message(item, stream=True), Request)


@settings(max_examples=_examples(20), deadline=None)
@given(streams())
def test_framer_one_byte_at_a_time(stream: tuple[bytes, list[bytes]]) -> None:
    raw, expected = stream
    f = StreamFramer()
    out: list[bytes] = []
    for i in range(len(raw)):
        out.extend(f.feed(raw[i : i + 1]))
    assert out == expected


# ---------------------------------------------------------------------------
# Robustness: junk in, SipParseError (and nothing else) out
# ---------------------------------------------------------------------------

def exercise(data: bytes) -> None:
    """Parse and touch every typed accessor; only SipParseError may escape any of them."""
    try:
        StreamFramer(max_header=512, max_body=512).feed(data)
    except SipParseError:
        pass
    try:
        parse_message(data, stream=True)
    except SipParseError:
        pass
    try:
        m = parse_message(data)
    except SipParseError:
        return

    def touch(fn) -> None:  # noqa: ANN001
        try:
            fn()
        except SipParseError:
            pass

    touch(lambda: [(v.branch, v.host, v.port) for v in m.vias])
    touch(lambda: m.call_id)
    touch(lambda: (m.cseq.seq, m.cseq.method))
    for name in ("from_", "to"):
        touch(lambda: getattr(m, name).tag)
        touch(lambda: getattr(m, name).uri.aor())
    touch(lambda: [c.uri.aor() for c in m.contacts if c.raw != "*"])
    touch(lambda: [r.uri.equals(r.uri) for r in m.route + m.record_route])
    touch(lambda: m.expires)
    touch(lambda: m.min_expires)
    touch(lambda: m.max_forwards)
    touch(lambda: m.event and (m.event.id, m.event.template))
    touch(lambda: m.subscription_state and m.subscription_state.expires)
    touch(lambda: m.sip_etag)
    touch(lambda: m.sip_if_match)
    touch(lambda: m.content_type and m.content_type.params)
    touch(lambda: m.accept)
    touch(lambda: m.option_tags("Supported"))
    touch(lambda: m.to_bytes())
    if isinstance(m, Request):
        touch(lambda: m.uri.aor())
        touch(lambda: check_request(m))
        touch(lambda: build_response(m, 200, "OK", to_tag="t"))
        touch(lambda: build_response(m, 100, "Trying"))


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_sip_parse_error(data: bytes) -> None:
    exercise(data)


junk_lines = st.lists(
    st.text(st.characters(min_codepoint=0x09, max_codepoint=0x7F) | st.sampled_from("é²١\x00\ufeff"), max_size=40),
    max_size=8,
)


@FUZZ
@given(st.sampled_from(["INVITE sip:a@b SIP/2.0", "SIP/2.0 200 OK", "OPTIONS sip:[::1]:5 SIP/2.0"]),
       st.lists(st.tuples(st.sampled_from(["Via", "v", "From", "To", "Contact", "m", "CSeq", "Call-ID",
                                           "Expires", "Event", "Subscription-State", "SIP-If-Match",
                                           "Content-Type", "Accept", "Max-Forwards", "Route", "l"]),
                          st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7F) | st.sampled_from("é²١\x00"),
                                  max_size=50)), max_size=10),
       st.binary(max_size=30))
def test_known_headers_with_junk_values(start: str, headers: list[tuple[str, str]], body: bytes) -> None:
    data = (start + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n").encode("utf-8") + body
    exercise(data)


# Template-driven junk: real header shapes with their typed fields replaced by
# nasty values, so the fuzzer reaches int() conversions, host/port splitting,
# quoting and escaping instead of failing at the first line.
NUMS = ["0", "70", "0070", "²", "١٢", "٣", "-1", "+1", "4294967296", "99999999999999999999", "", "1.5", "0x1"]
WORDS = ["INVITE", "tag", "expires", "branch", "", ";", ";;", ",", '"', '\\"', "\\", "<", ">", "@", ":", "[",
         "]", "%", "%4", "%41", "%00", "=", " ", "\x00", "é", "sip:", "*", "?", "&", "\ufeff", "\t"]
HOSTS_J = ["example.com", "[2001:db8::1]", "[2001:db8::1", "2001:db8::1", "", "a b", "192.0.2.1", "ex%41mple.com",
           "é.com", "[]", "[::ffff:192.0.2.1]", "host:"]
TEMPLATES = {
    "Via": ["SIP/2.0/{W} {H}:{N};branch={W}{W};{W}={N}", "SIP/{N}/UDP {H}", "SIP/2.0/UDP {H};received={H},{W}"],
    "CSeq": ["{N} {W}", "{N} INVITE", "{N}"],
    "From": ['{W}"{W}" <sip:{W}@{H}:{N};{W}={W}>;tag={W}{W}', "sip:{W}@{H};{W}", "{W} <{W}:{W}>"],
    "To": ['"{W}{W}" <sip:u@{H}:{N}?{W}={W}>;{W}', "<sips:{W}:{W}@{H}>{W}"],
    "Contact": ["*", "{W}*", '<sip:{W}@{H}:{N}>;expires={N}, "{W}" <sip:{H}>', "sip:{W}@{H}?{W}"],
    "Route": ["<sip:{H}:{N};lr>,{W}<sip:{W}@{H}>", "<{W}>"],
    "Expires": ["{N}", "{N}{W}"],
    "Max-Forwards": ["{N}"],
    "Min-Expires": ["{N}"],
    "Content-Length": ["{N}"],
    "Event": ["{W}.{W};id={N}{W}", "presence{W}"],
    "Subscription-State": ["{W};expires={N};reason={W}", "active;expires={N}"],
    "SIP-If-Match": ["{W}{W}", "{W}"],
    "Content-Type": ["{W}/{W};{W}={W}", "application/{W}"],
    "Accept": ["{W}/{W}, {W}", ""],
}
START_LINES = ["{W} sip:{W}@{H}:{N} SIP/2.0", "INVITE sip:{W}@{H}:{N};{W}={W}?{W} SIP/2.0", "SIP/2.0 {N} {W}",
               "INVITE {W}:{W} SIP/2.0", "SUBSCRIBE sips:{H} SIP/{N}"]


@st.composite
def templated(draw: st.DrawFn) -> bytes:
    def fill(t: str) -> str:
        out = []
        for part in t.replace("{", "\x01{").split("\x01"):
            for key, pool in (("{W}", WORDS), ("{H}", HOSTS_J), ("{N}", NUMS)):
                if part.startswith(key):
                    out.append(draw(st.sampled_from(pool)) + part[len(key):])
                    break
            else:
                out.append(part)
        return "".join(out)

    lines = [fill(draw(st.sampled_from(START_LINES)))]
    for name in draw(st.lists(st.sampled_from(sorted(TEMPLATES)), min_size=1, max_size=8)):
        lines.append(f"{name}: {fill(draw(st.sampled_from(TEMPLATES[name])))}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + draw(st.binary(max_size=20))


@FUZZ
@given(templated())
def test_templated_junk_only_raises_sip_parse_error(data: bytes) -> None:
    exercise(data)


SEEDS = [
    (
        "SUBSCRIBE sip:bob@example.com;transport=tcp SIP/2.0\r\n"
        "Via: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK74bf9;received=192.0.2.1\r\n"
        "v: SIP/2.0/UDP a.example.com , SIP/2.0/UDP b.example.com:5060;rport\r\n"
        'From: "Alice \\"A\\", Esq." <sip:alice@example.com;user=phone>;tag=9fxced76sl\r\n'
        "To: sip:bob@example.com\r\n"
        "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
        "CSeq: 1 SUBSCRIBE\r\n"
        "Max-Forwards: 70\r\n"
        "Event: presence.winfo;id=7\r\n"
        "Accept: application/pidf+xml, multipart/related\r\n"
        "m: <sip:alice@client.example.com?Subject=x%20y>;expires=60, *\r\n"
        "Expires: 600\r\n"
        "Route: <sip:p1.example.com;lr>,\r\n <sip:p2.example.com;lr>\r\n"
        "Content-Type: application/simple-filter+xml\r\n"
        "Content-Length: 13\r\n\r\n<filter-set/>"
    ).encode(),
    (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKnashds8\r\n"
        "From: Bob <sip:bob@example.com>;tag=a6c85cf\r\n"
        "To: <sip:alice@example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710\r\n"
        "CSeq: 314159 NOTIFY\r\n"
        "Subscription-State: active;expires=3600\r\n"
        "SIP-ETag: dx200xyz\r\n"
        "SIP-If-Match: dx200xyz\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode(),
]
INTERESTING = [b"\r\n", b"\r\n ", b" ", b";", b",", b'"', b"\\", b"<", b">", b":", b"%", b"%0", b"[", b"]",
               b"@", b"?", b"=", b"/", b"\x00", b"\xff", b"\xc2\xb2", b"\r\n\r\n", b"\n", b"*", b"-1", b"99999999999"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "interesting"]))
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 40)))
        if op == "delete":
            del data[i:j]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "replace" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "duplicate":
            data[i:i] = data[i:j]
        else:
            data[i:i] = draw(st.sampled_from(INTERESTING))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_messages_only_raise_sip_parse_error(data: bytes) -> None:
    exercise(data)


def test_seeds_are_valid() -> None:
    req = parse_message(SEEDS[0])
    assert isinstance(req, Request)
    check_request(req)
    assert len(req.vias) == 3 and len(req.contacts) == 2 and len(req.route) == 2


# ---------------------------------------------------------------------------
# SipURI
# ---------------------------------------------------------------------------

@FAST
@given(sip_uris())
def test_uri_roundtrip(u: SipURI) -> None:
    s = str(u)
    p = parse_uri(s)
    assert (p.scheme, p.user, p.password, p.host, p.port, p.params, p.headers) == (
        u.scheme, u.user, u.password, u.host, u.port, u.params, u.headers)
    assert str(p) == s
    assert parse_uri(str(p)).raw == s
    assert p.equals(p) and p.equals(u) and u.equals(p)


@FAST
@given(sip_uris())
def test_uri_host_is_case_insensitive(u: SipURI) -> None:
    other = SipURI(u.scheme, u.user, u.host.swapcase(), u.port, dict(u.params), u.headers, u.password)
    p = parse_uri(str(other))
    assert p.equals(u) and u.equals(p)
    assert p.aor().lower() == u.aor().lower()


@FAST
@given(sip_uris(), st.text(string.ascii_letters, min_size=1, max_size=10))
def test_uri_user_is_case_sensitive(u: SipURI, user: str) -> None:
    a = parse_uri(str(SipURI(u.scheme, user, u.host, u.port, u.params, u.headers)))
    b = parse_uri(str(SipURI(u.scheme, user.swapcase(), u.host, u.port, u.params, u.headers)))
    assert not a.equals(b) and not b.equals(a)
    assert a.aor() != b.aor()


small_uris = st.builds(
    lambda scheme, user, host, port, prm, hdr: str(SipURI(scheme, user, host, port, prm, hdr)),
    st.sampled_from(["sip", "sips"]),
    st.sampled_from([None, "alice", "Alice", "%61lice", "al%69ce", "a%3bb", "a;b"]),
    st.sampled_from(["example.com", "EXAMPLE.com", "192.0.2.1"]),
    st.sampled_from([None, 5060, 5061]),
    st.dictionaries(
        st.sampled_from(["transport", "lr", "maddr", "foo", "%66oo", "user"]),
        st.sampled_from([None, "udp", "UDP", "tcp", "1", "%31"]),
        max_size=3,
    ),
    st.sampled_from([None, "subject=a", "Subject=a", "subject=%61", "a=b&c=d", "c=d&a=b"]),
).map(parse_uri)


@FAST
@given(small_uris, small_uris)
def test_uri_equals_reflexive_and_symmetric(a: SipURI, b: SipURI) -> None:
    assert a.equals(a) and b.equals(b)
    assert a.equals(b) == b.equals(a)
    if a.equals(b):
        assert a.aor() == b.aor()


RFC3261_EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
]

RFC3261_DIFFERENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),  # usernames differ
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),  # can resolve to different ports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),  # can resolve to different transports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),  # ports and transports
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # header component
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),  # even if phone21 resolves to 192.0.2.4
    # further cases implied by the rules
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:alice:secret@atlanta.com", "sip:alice:SECRET@atlanta.com"),
    ("sip:alice@atlanta.com;maddr=239.255.255.1", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com;foo=1", "sip:alice@atlanta.com;foo=2"),
    ("sip:a%3bb@atlanta.com", "sip:a;b@atlanta.com"),  # an escaped reserved character is not equivalent
    ("sip:alice@atlanta.com?subject=a", "sip:alice@atlanta.com?subject=a&priority=urgent"),
]


@pytest.mark.parametrize("a,b", RFC3261_EQUIVALENT)
def test_rfc3261_equivalent_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert ua.equals(ub) and ub.equals(ua)


@pytest.mark.parametrize("a,b", RFC3261_DIFFERENT)
def test_rfc3261_non_equivalent_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert not ua.equals(ub) and not ub.equals(ua)


def test_uri_details() -> None:
    u = parse_uri("sip:alice;day=tuesday@atlanta.com")
    assert (u.user, u.host, u.params) == ("alice;day=tuesday", "atlanta.com", {})
    u = parse_uri("SIPS:Alice@Atlanta.COM:5061;Transport=TLS;lr?Subject=x")
    assert (u.scheme, u.user, u.host, u.port, u.transport) == ("sips", "Alice", "Atlanta.COM", 5061, "tls")
    assert u.params == {"transport": "TLS", "lr": None} and u.headers == "Subject=x"
    assert u.aor() == "sips:Alice@atlanta.com:5061"
    assert parse_uri("pres:alice@example.com").aor() == "sip:alice@example.com"
    t = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert t.scheme == "tel" and t.equals(parse_uri("tel:+12015550123;phone-context=example.com"))


@pytest.mark.parametrize("bad", [
    "", "alice@example.com", ":alice", "si p:alice@example.com", "sip:", "sip:@example.com",
    "sip:alice@", "sip:alice@example.com:", "sip:alice@example.com:0", "sip:alice@example.com:99999",
    "sip:alice@example.com:5060x", "sip:alice @example.com", "sip:alice@exa mple.com",
    "sip:alice@example.com;", "sip:alice@example.com;;lr", "sip:alice@exa<mple.com",
    "sip:alice@[::1", "sip:alice@::1", "sip:alice@example.com\x00", "sip:alice@example.com:５０６０",
])
def test_bad_uris(bad: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(bad)


def test_parsed_uris_are_shared_once_they_repeat():
    """A URI met once or twice (a one-off watcher, a dialog's SUBSCRIBE and
    un-SUBSCRIBE) is parsed and let go: it must not stay in memory, nor be
    scanned by the cyclic GC; one that keeps repeating is parsed a third
    time and from then on shared. Within one request (a few URIs apart) the
    same text is parsed once."""
    from presenced.sip import uri as urimod

    def flush_recent():
        for i in range(urimod._RECENT_MAX + 1):
            urimod.parse_uri(f"sip:flush{i}@example.org")

    text = "sip:repeat-me@example.com;transport=udp"
    first = urimod.parse_uri(text)
    assert urimod.parse_uri(text) is first  # same request: parsed once
    flush_recent()
    second = urimod.parse_uri(text)
    flush_recent()
    third = urimod.parse_uri(text)
    flush_recent()
    fourth = urimod.parse_uri(text)
    assert str(first) == str(second) == text and (first.user, first.host, first.params) == ("repeat-me", "example.com", {"transport": "udp"})
    assert first is not second and second is not third and third is fourth
    na = "<sip:repeat-me@example.com>"
    a, b, c, d = (urimod.parse_name_addr(na) for _ in range(4))
    assert str(a.uri) == "sip:repeat-me@example.com" and a is not b and b is not c and c is d
    cached = len(urimod._URI_CACHE)
    for i in range(3000):
        assert urimod.parse_uri(f"sip:w{i}@example.com").user == f"w{i}"
    assert len(urimod._URI_CACHE) <= cached
    assert len(urimod._RECENT) <= urimod._RECENT_MAX  # one-offs do not pile up


_na_text = st.text(alphabet=st.sampled_from(list("<>;=:@\"' \t\x7f\x1cabs1.-_~éx")), max_size=24)


@settings(max_examples=_examples(600), deadline=None)
@given(st.one_of(_na_text, _na_text.map(lambda s: "<sip:" + s), _na_text.map(lambda s: "<sip:a@b>;" + s)))
def test_name_addr_shortcut_accepts_only_what_the_expression_accepts_alike(raw):
    """uri._plain_parts (no regular expression) must give the expression's
    groups for every input it takes, and decline the rest."""
    from presenced.sip import uri as u

    got = u._plain_parts(raw)
    if got is not None:
        m = u._NAME_ADDR_PLAIN.match(raw)
        assert m is not None
        assert got == (m.group(1), m.group(2) or "", m.group(3) or "")


def test_name_addr_shortcut_takes_the_usual_shapes():
    from presenced.sip import uri as u

    assert u._plain_parts("<sip:w1@127.0.0.1>") == ("sip:w1@127.0.0.1", "", "")
    assert u._plain_parts("<sip:w1@127.0.0.1>;tag=1234c1") == ("sip:w1@127.0.0.1", "tag", "1234c1")
    na = u.parse_name_addr("<sip:w1@127.0.0.1:5061;transport=udp>;Tag=AbC")
    assert (na.uri_text, na.params, na.tag) == ("sip:w1@127.0.0.1:5061;transport=udp", {"tag": "AbC"}, "AbC")
