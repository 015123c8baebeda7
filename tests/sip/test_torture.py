"""Parser torture tests modelled on RFC 4475 (SIP torture test messages) and RFC 5118 (IPv6).

The messages are written for this suite from the RFCs' descriptions of each
case; the RFC's short names (wsinv, intmeth, ...) are kept in the test names
so a failure can be traced back to the section that motivates it.

Conventions of the parser under test:
  * parse_message() does framing + header splitting only; typed accessors are
    lazy, so a bad header we never interpret never fails a message.
  * check_request() enforces the mandatory headers of RFC 3261 §8.1.1 and
    the Request-URI.
  * Errors carry the status a UAS should answer with: 400 by default, 505
    for an unsupported version, 513 for size limits, 0 for responses (a
    response is never answered).
"""

from __future__ import annotations

import pytest

from presenced.sip import (
    MessageTooLarge,
    Request,
    Response,
    SipParseError,
    check_request,
    parse_message,
    parse_uri,
)
from presenced.sip.message import MAX_BODY_BYTES, MAX_HEADER_BYTES

SDP = (
    b"v=0\r\n"
    b"o=mhandley 29739 7272939 IN IP4 192.0.2.3\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.4\r\n"
    b"t=0 0\r\n"
    b"m=audio 49217 RTP/AVP 0 12\r\n"
    b"m=video 3227 RTP/AVP 31\r\n"
    b"a=rtpmap:31 LPC\r\n"
)


def wire(head: str | bytes, body: bytes = b"") -> bytes:
    """Header block with LF line ends → CRLF wire bytes; `@CL@` becomes len(body)."""
    if isinstance(head, str):
        head = head.encode("utf-8")
    head = head.replace(b"@CL@", str(len(body)).encode())
    lines = head.split(b"\n")
    while lines and lines[-1] == b"":
        lines.pop()
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def req(head: str | bytes, body: bytes = b"") -> Request:
    msg = parse_message(wire(head, body))
    assert isinstance(msg, Request)
    return msg


def rejects(data: bytes, status: int = 400, **kw: bool) -> SipParseError:
    with pytest.raises(SipParseError) as ei:
        parse_message(data, **kw)
    assert ei.value.status == status, ei.value
    return ei.value


def check_rejects(msg: Request, status: int = 400) -> SipParseError:
    with pytest.raises(SipParseError) as ei:
        check_request(msg)
    assert ei.value.status == status, ei.value
    return ei.value


# ---------------------------------------------------------------------------
# RFC 4475 §3.1.1 — valid messages
# ---------------------------------------------------------------------------

WSINV = r"""INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : @CL@
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33
"""


def test_wsinv_short_tortuous_invite() -> None:
    m = req(WSINV, SDP)
    check_request(m)
    assert m.method == "INVITE"
    assert m.uri.user == "vivekg" and m.uri.host == "chair-dnrc.example.com"
    assert m.uri.params == {"unknownparam": None}
    # To: addr-spec with LWS around ';' and '='
    assert m.get("To") == "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n"
    assert m.to.display is None
    assert m.to.uri_text == "sip:vivekg@chair-dnrc.example.com"
    assert m.to.tag == "1918181833n"
    # From: escaped backslash and escaped quote inside the display name, folded params
    assert m.from_.display == 'J Rosenberg \\"'
    assert m.from_.uri.user == "jdrosen"
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68  # leading zeros
    assert m.cseq.seq == 9 and m.cseq.method == "INVITE"
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    # Via: LWS around '/', folding, long and compact form, comma list
    assert [(v.transport, v.host, v.port, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", None, "390skdjuw"),
        ("TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", None, "z9hG4bK30239"),
    ]
    assert all(v.protocol == "SIP/2.0" for v in m.vias)
    assert m.get("Subject") == "" and m.has("subject")
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    # An unknown header's value is opaque, never split on ',' or ';'
    assert m.get_all("UnknownHeaderWithUnusualValue") == [";;,,;;,;"]
    assert [r.uri.params for r in m.route] == [
        {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    ]
    (c,) = m.contacts
    assert c.display == 'Quoted string ""'
    assert c.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.content_type is not None and m.content_type.mime == "application/sdp"
    assert m.body == SDP


INTMETH_METHOD = b"!interesting-Method0123456789_*+`.%indeed'~"
INTMETH_USER = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
INTMETH_PASSWORD = "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
INTMETH = (
    INTMETH_METHOD + b" sip:" + INTMETH_USER.encode() + b":" + INTMETH_PASSWORD.encode()
    + b"@example.com SIP/2.0\n"
    b"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:' + INTMETH_USER.encode() + b"@example.com>\n"
    b"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\""
    + "работающий".encode() + b"\";tag=_token~1'+`*%!-.\n"
    b"Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
    b"CSeq: 139122385 " + INTMETH_METHOD + b"\n"
    b"Max-Forwards: 255\n"
    b"extensionHeader-!.%*+_`'~:" + "\ufeff大停電".encode() + b"\n"
    b"Content-Length: 0\n"
)


def test_intmeth_wide_range_of_valid_characters() -> None:
    m = req(INTMETH)
    check_request(m)
    assert m.method == INTMETH_METHOD.decode()
    assert m.cseq.method == m.method and m.cseq.seq == 139122385
    # the user part holds '?', ',' and ';' — none of them starts headers/params here
    assert m.uri.user == INTMETH_USER
    assert m.uri.password == INTMETH_PASSWORD
    assert m.uri.host == "example.com" and m.uri.params == {} and m.uri.headers is None
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    # escaped BEL, NUL and DEL inside a quoted display name
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.to.uri.user == INTMETH_USER
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert m.body == b""


ESC01 = """INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: @CL@
"""


def test_esc01_escaped_uris() -> None:
    m = req(ESC01, SDP)
    check_request(m)
    # sips:user@example.com escaped inside the user part of a sip: URI
    assert m.uri.scheme == "sip" and m.uri.host == "example.net"
    assert m.uri.user == "sips%3Auser%40example.com"
    assert m.to.uri.equals(parse_uri("sip:user@example.com"))
    assert m.to.uri.aor() == "sip:user@example.com"
    assert m.from_.uri.user == "I%20have%20spaces"
    assert m.from_.uri.equals(parse_uri("sip:I%20have%20spaces@EXAMPLE.net"))
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert m.content_type is not None and m.content_type.mime == "application/sdp"
    (c,) = m.contacts
    # escaped parameter names and values; %25%34%31 is "%41", never "A"
    assert c.uri.equals(parse_uri("sip:caller@host5.example.net;lr;name=value%2541"))
    assert not c.uri.equals(parse_uri("sip:caller@host5.example.net;lr;name=valueA"))
    assert m.body == SDP


ESCNULL = """REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0
"""


def test_escnull_escaped_nulls_in_uris() -> None:
    m = req(ESCNULL)
    check_request(m)
    assert m.to.uri.user == "null-%00-null"
    assert m.from_.uri.equals(m.to.uri)
    a, b = m.contacts
    assert a.uri.user == "%00" and b.uri.user == "%00%00"
    assert not a.uri.equals(b.uri)
    assert m.body == b""


ESC02 = """RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209asdjf
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0
"""


def test_esc02_percent_that_is_not_an_escape() -> None:
    m = req(ESC02)
    check_request(m)
    # '%' in a method or header name is an ordinary token character
    assert m.method == "RE%47IST%45R" != "REGISTER"
    assert m.to.display == "%Z%45" and m.from_.display == "%Z%45"
    assert [c.uri.host for c in m.contacts] == ["host1.example.com", "host3.example.com"]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


LWSDISP = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0
"""


def test_lwsdisp_no_lws_between_display_name_and_laquot() -> None:
    m = req(LWSDISP)
    check_request(m)
    assert m.from_.display == "caller"
    assert m.from_.uri_text == "sip:caller@example.com"
    assert m.from_.tag == "323"


def _longreq() -> tuple[bytes, dict]:
    display = "I have a user name of " + "extreme" * 40 + " proportion"
    p1 = "verylonngvalue" + "e" * 120
    pname = "longparamname" + "name" * 30
    caller = "amazinglylongcallername" * 8
    tag = "1298298298" * 12
    call_id = "longreq.one" + "really" * 40 + "longcallid"
    vias = [f"SIP/2.0/TCP sip{n}.example.com;branch=z9hG4bK{n}" for n in range(34, 0, -1)]
    forms = ["Via", "v", "V", "VIA", "via"]
    via_lines = "".join(f"{forms[i % len(forms)]}: {v}\n" for i, v in enumerate(vias))
    unk_name = "Unknown-" + "LongLong" * 10 + "-Name"
    unk_value = "unknown-" + "long" * 40 + "-value; unknown-" + "long" * 10 + "-parameter-name = x"
    head = (
        "INVITE sip:user@example.com SIP/2.0\n"
        f'To: "{display}" <sip:user@example.com:6000;unknownparam1={p1};{pname}=shortvalue;'
        f"verylonnnnnnnnggparamnamevalue{'e' * 60}>\n"
        f"From: sip:{caller}@example.net;tag={tag};unknownheaderparam{'name' * 20}="
        f"unknowheaderparamvalue{'value' * 20};unknownValuelessparamname{'name' * 20}\n"
        f"Call-ID: {call_id}\n"
        "CSeq: 3882340 INVITE\n"
        f"{unk_name}: {unk_value}\n"
        + via_lines
        + "Max-Forwards: 70\n"
        f"Contact: <sip:{caller}@host5.example.net>\n"
        "Content-Type: application/sdp\n"
        "l: @CL@\n"
    )
    expect = dict(display=display, p1=p1, pname=pname, caller=caller, tag=tag, call_id=call_id,
                  vias=vias, unk_name=unk_name, unk_value=unk_value)
    return wire(head, SDP), expect


def test_longreq_long_values_in_header_fields() -> None:
    data, x = _longreq()
    assert len(data) < MAX_HEADER_BYTES
    m = parse_message(data)
    assert isinstance(m, Request)
    check_request(m)
    assert m.to.display == x["display"]
    assert m.to.uri.port == 6000
    assert m.to.uri.params["unknownparam1"] == x["p1"]
    assert m.to.uri.params[x["pname"]] == "shortvalue"
    assert m.from_.uri.user == x["caller"]
    assert m.from_.tag == x["tag"]
    assert m.call_id == x["call_id"]
    assert m.get(x["unk_name"]) == x["unk_value"]
    assert [f"{v.raw}" for v in m.vias] == x["vias"]
    assert [v.host for v in m.vias][:2] == ["sip34.example.com", "sip33.example.com"]
    assert m.contacts[0].uri.user == x["caller"]
    assert m.body == SDP


DBLREQ = """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0
"""

DBLREQ_TRAILER = wire("""INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: @CL@
""", SDP)


def test_dblreq_extra_trailing_octets_in_udp_datagram() -> None:
    data = wire(DBLREQ) + b"\r\n" + DBLREQ_TRAILER
    m = parse_message(data)  # datagram framing: Content-Length truncates
    assert isinstance(m, Request)
    check_request(m)
    assert m.method == "REGISTER"
    assert m.body == b""
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert m.contacts[0].uri_text == "sip:j.user@host.example.com"
    assert not m.has("Content-Type")


def test_content_length_smaller_than_datagram_truncates_body() -> None:
    m = parse_message(wire(WSINV, SDP)[:-1] + b"\r\nEXTRA TRAILING OCTETS")
    assert m.body == SDP[:-1] + b"\r"


SEMIURI = """OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0
"""


def test_semiuri_semicolon_params_in_user_part() -> None:
    m = req(SEMIURI)
    check_request(m)
    assert m.uri.user == "user;par=u%40example.net"
    assert m.uri.host == "example.com"
    assert m.uri.params == {}
    assert m.accept == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]


TRANSPORTS = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0
"""


def test_transports_varied_and_unknown_transport_types() -> None:
    m = req(TRANSPORTS)
    check_request(m)
    assert [(v.transport, v.host) for v in m.vias] == [
        ("UDP", "t1.example.com"), ("SCTP", "t2.example.com"), ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"), ("TCP", "t5.example.com"),
    ]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


MPART_BODY = (
    b"--7a9cbec02ceef655\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"Hello\r\n"
    b"--7a9cbec02ceef655\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    + bytes(range(256)) + b"\r\n\r\n\n\n\x00\xff"
    + b"\r\n--7a9cbec02ceef655--\r\n"
)

MPART01 = """MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: @CL@
"""


@pytest.mark.parametrize("stream", [False, True])
def test_mpart01_multipart_body_with_binary_and_blank_lines(stream: bool) -> None:
    m = parse_message(wire(MPART01, MPART_BODY), stream=stream)
    assert isinstance(m, Request)
    check_request(m)
    assert m.body == MPART_BODY
    ct = m.content_type
    assert ct is not None and ct.mime == "multipart/mixed"
    assert ct.params == {"boundary": "7a9cbec02ceef655"}
    v = m.top_via
    assert (v.host, v.port, v.params.get("rport", "absent")) == ("127.0.0.1", 5070, None)
    assert m.get("Identity").endswith("UA=")
    assert m.route[0].uri.port == 5080


UNREASON_PHRASE = "= 2**3 * 5**2 но сто девяносто девять - простое"
UNREASON = f"""SIP/2.0 200 {UNREASON_PHRASE}
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: @CL@
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>
"""


def test_unreason_unusual_reason_phrase() -> None:
    m = parse_message(wire(UNREASON, SDP))
    assert isinstance(m, Response)
    assert m.status == 200
    assert m.reason == UNREASON_PHRASE
    assert m.cseq.method == "INVITE" and m.to.tag == "2229"
    assert m.body == SDP


def test_noreason_empty_reason_phrase() -> None:
    m = parse_message(wire("""SIP/2.0 100 \nVia: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>
"""))
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (100, "")
    assert m.top_via.branch == "z9hG4bK2398ndaoe"


def test_regescrt_escaped_header_in_enclosed_contact_uri() -> None:
    m = req("""REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0
""")
    check_request(m)
    (c,) = m.contacts
    assert c.uri.host == "example.com"
    assert c.uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_cparam_contact_uri_param_vs_header_param() -> None:
    base = """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: {contact}
l: 0
"""
    inner = req(base.replace("{contact}", "<sip:+19725552222@gw1.example.net;unknownparam>"))
    outer = req(base.replace("{contact}", "<sip:+19725552222@gw1.example.net>;unknownparam"))
    for m in (inner, outer):
        check_request(m)
        assert m.top_via.port == 5060
    assert inner.contacts[0].uri.params == {"unknownparam": None} and inner.contacts[0].params == {}
    assert outer.contacts[0].uri.params == {} and outer.contacts[0].params == {"unknownparam": None}


def test_novelsc_and_unksm2_unknown_uri_schemes_are_opaque() -> None:
    m = req("""OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 OPTIONS
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0
""")
    check_request(m)  # an unknown scheme is the engine's 416, not a parse error
    assert m.uri.scheme == "soap.beep"
    assert m.to.uri.scheme == "isbn" and m.from_.uri.scheme == "http"
    assert m.contacts[0].uri.scheme == "name"
    assert m.from_.tag == "3234233"


# ---------------------------------------------------------------------------
# RFC 4475 §3.1.2 — invalid messages
# ---------------------------------------------------------------------------

BADINV01 = """INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: @CL@
Content-Type: application/sdp
"""


def test_badinv01_extraneous_header_field_separators() -> None:
    m = req(BADINV01, SDP)  # lazily parsed: the framing is fine
    check_rejects(m)
    for attr in ("from_", "vias", "contacts"):
        with pytest.raises(SipParseError):
            getattr(m, attr)
    assert m.to.uri.user == "j.user"


@pytest.mark.parametrize("value", [
    "SIP/2.0/UDP h.example.com;;branch=z9hG4bK1",
    "SIP/2.0/UDP h.example.com;branch=z9hG4bK1;",
    "SIP/2.0/UDP h.example.com;=x;branch=z9hG4bK1",
])
def test_empty_via_parameter_rejected(value: str) -> None:
    m = req(f"OPTIONS sip:a@b.example SIP/2.0\nVia: {value}\nl: 0\n")
    with pytest.raises(SipParseError):
        m.vias


@pytest.mark.parametrize("stream", [False, True])
def test_clerr_content_length_larger_than_message(stream: bool) -> None:
    data = wire("""INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999
""", SDP)
    rejects(data, stream=stream)


def test_ncl_negative_content_length() -> None:
    rejects(wire("""INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999
""", SDP))


@pytest.mark.parametrize("cl", ["+5", "5 5", "0x10", "²", "١", "five", ""])
def test_malformed_content_length(cl: str) -> None:
    rejects(wire(f"OPTIONS sip:a@example.com SIP/2.0\nContent-Length: {cl}\n", b"hello"))


def test_mcl01_multiple_conflicting_content_lengths() -> None:
    data = wire("""OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain
""", b"There's no way to know how many octets are supposed to be here.")
    rejects(data)
    rejects(data, stream=True)
    # a repeated but identical value is harmless
    same = wire("OPTIONS sip:a@example.com SIP/2.0\nl: 5\nContent-Length: 5\n", b"hello")
    assert parse_message(same).body == b"hello"


SCALAR02 = """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1""" + "0" * 100 + """
Contact: <sip:user@host129.example.com>;expires=280297596632815
Content-Length: 0
"""


def test_scalar02_request_scalar_fields_with_overlarge_values() -> None:
    m = req(SCALAR02)
    check_rejects(m)  # the CSeq alone makes it a 400
    with pytest.raises(SipParseError):
        m.cseq
    with pytest.raises(SipParseError):
        m.max_forwards
    # overlarge delta-seconds are clamped (RFC 3261 §20.19), not an error
    assert m.expires == 2**32 - 1
    assert m.contacts[0].params["expires"] == "280297596632815"


def test_cseq_number_limits() -> None:
    ok = req("OPTIONS sip:a@example.com SIP/2.0\nCSeq: 2147483647 OPTIONS\nl: 0\n")
    assert ok.cseq.seq == 2**31 - 1
    bad = req("OPTIONS sip:a@example.com SIP/2.0\nCSeq: 2147483648 OPTIONS\nl: 0\n")
    with pytest.raises(SipParseError):
        bad.cseq
    for v in ("-1 OPTIONS", "1", "1 OPTIONS extra", "² OPTIONS", "x OPTIONS"):
        m = req(f"OPTIONS sip:a@example.com SIP/2.0\nCSeq: {v}\nl: 0\n")
        with pytest.raises(SipParseError):
            m.cseq


def test_scalarlg_response_scalar_fields_with_overlarge_values() -> None:
    m = parse_message(wire("""SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0
"""))
    assert isinstance(m, Response) and m.status == 503
    with pytest.raises(SipParseError):
        m.cseq
    assert m.top_via.params["received"] == "192.0.2.129"
    assert m.get("Retry-After") == "949302838503028349304023988"


QUOTBAL = """INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: @CL@
"""


def test_quotbal_unterminated_quoted_string_in_display_name() -> None:
    m = req(QUOTBAL, SDP)
    with pytest.raises(SipParseError):
        m.to
    check_rejects(m)


REQ_TAIL = """To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 {method}
Via: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKkdjuw
Content-Length: 0
"""


def _with_start(start: str, method: str = "INVITE") -> bytes:
    return wire(start + "\n" + REQ_TAIL.replace("{method}", method))


@pytest.mark.parametrize("start", [
    "INVITE <sip:user@example.com> SIP/2.0",  # ltgtruri
    "INVITE sip:user@example.com; lr SIP/2.0",  # lwsruri
    "INVITE sip:user@example.com SIP/2.0 extra",
    "INVITE SIP/2.0",
    "INVITE",
    "INV ITE sip:user@example.com SIP/2.0",
    "INV:ITE sip:user@example.com SIP/2.0",
    "INVITE user-at-example.com SIP/2.0",
    "INVITE sip:user@example.com HTTP/1.1",
])
def test_malformed_request_lines_rejected(start: str) -> None:
    rejects(_with_start(start))


def test_lwsstart_and_trws_extra_sp_in_request_line_tolerated() -> None:
    """RFC 4475 lets a liberal element ignore the extra SP; it must not forward them."""
    for start in (
        "INVITE  sip:user@example.com        SIP/2.0",  # lwsstart
        "OPTIONS sip:remote-target@example.com SIP/2.0   ",  # trws
    ):
        method = start.split()[0]
        m = parse_message(_with_start(start, method))
        assert isinstance(m, Request)
        check_request(m)
        assert m.method == method
        assert m.uri_text == start.split()[1]
        assert m.to_bytes().split(b"\r\n", 1)[0] == " ".join(start.split()).encode()


def test_escruri_escaped_headers_in_request_uri() -> None:
    m = parse_message(_with_start("INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0"))
    assert isinstance(m, Request)
    assert m.uri.headers == "Route=%3Csip:example.com%3E"
    check_rejects(m)


BADDATE = """INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: @CL@
"""


def test_baddate_invalid_timezone_is_ignored_because_date_is_never_interpreted() -> None:
    m = req(BADDATE, SDP)
    check_request(m)
    assert m.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert m.body == SDP


REGBADCT = """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0
"""


def test_regbadct_uri_with_headers_not_enclosed_in_angle_brackets() -> None:
    m = req(REGBADCT)
    check_request(m)  # Contact is not a mandatory header...
    with pytest.raises(SipParseError) as ei:
        m.contacts  # ...but the registrar's access to it fails with a 400
    assert ei.value.status == 400


BADASPEC = """OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0
"""


def test_badaspec_spaces_inside_angle_brackets() -> None:
    """Chosen behaviour: LWS just inside <> is ignored (liberal), LWS inside the URI is not."""
    m = req(BADASPEC)
    check_request(m)
    assert m.to.display == "Watson, Thomas"
    assert m.to.uri.equals(parse_uri("sip:t.watson@example.org"))
    assert m.from_.display == "Bell, Alexander"
    inner = req(BADASPEC.replace("< sip:t.watson@example.org >", "<sip:t.watson @example.org>"))
    check_rejects(inner)


BADDN = """OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0
"""


def test_baddn_non_token_characters_in_unquoted_display_name() -> None:
    m = req(BADDN)
    with pytest.raises(SipParseError):
        m.from_
    with pytest.raises(SipParseError):
        m.to
    check_rejects(m)
    # the same names quoted are fine
    ok = req(BADDN.replace("Bell, Alexander <", '"Bell, Alexander" <').replace(
        "Watson, Thomas <", '"Watson, Thomas" <'))
    check_request(ok)
    assert ok.from_.display == "Bell, Alexander"


def test_unquoted_display_name_tokens_and_utf8_tolerated() -> None:
    m = req("OPTIONS sip:a@example.com SIP/2.0\n"
            "From: Alice  B.  Smith <sip:alice@example.com>;tag=1\n"
            "To: Jörg Müller <sip:joerg@example.com>\nl: 0\n")
    assert m.from_.display == "Alice  B.  Smith"
    assert m.to.display == "Jörg Müller"


def test_badvers_unknown_protocol_version_is_505() -> None:
    rejects(wire("""OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0
"""), status=505)


def test_via_with_other_protocol_version_rejected() -> None:
    m = req("OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/7.0/UDP c.example.com;branch=z9hG4bK1\nl: 0\n")
    with pytest.raises(SipParseError):
        m.vias


MISMATCH = """{method} sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 {cseq}
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0
"""


@pytest.mark.parametrize("method,cseq", [
    ("OPTIONS", "INVITE"),  # mismatch01
    ("NEWMETHOD", "INVITE"),  # mismatch02
    ("INVITE", "invite"),  # methods are case-sensitive
])
def test_mismatch_start_line_and_cseq_method(method: str, cseq: str) -> None:
    m = req(MISMATCH.replace("{method}", method).replace("{cseq}", cseq))
    check_rejects(m)


def test_unknown_method_with_matching_cseq_is_fine() -> None:
    m = req(MISMATCH.replace("{method}", "NEWMETHOD").replace("{cseq}", "NEWMETHOD"))
    check_request(m)
    assert m.method == "NEWMETHOD"


@pytest.mark.parametrize("start", [
    "SIP/2.0 4294967301 better not break the receiver",  # bigcode
    "SIP/2.0 99 Too Small",
    "SIP/2.0 700 Too Big",
    "SIP/2.0 2OO OK",
    "SIP/2.0 ²00 OK",
    "SIP/3.0 200 OK",
    "SIP/2.0",
])
def test_bigcode_and_bad_status_lines_never_answered(start: str) -> None:
    """Chosen behaviour: a broken response raises with status 0 (responses are never answered)."""
    rejects(wire(start + """
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
"""), status=0)


def test_response_framing_errors_have_status_0() -> None:
    rejects(wire("SIP/2.0 200 OK\nContent-Length: 500\n", b"short"), status=0)
    rejects(wire("SIP/2.0 200 OK\nContent-Length: -1\n"), status=0)


def test_lower_case_sip_version_in_status_line() -> None:
    m = parse_message(wire("sip/2.0 200 OK\nl: 0\n"))
    assert isinstance(m, Response) and m.status == 200


def test_insuf_missing_mandatory_headers() -> None:
    m = req("""INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: @CL@
""", SDP)
    e = check_rejects(m)
    assert "Call-ID" in e.reason
    full = MISMATCH.replace("{method}", "OPTIONS").replace("{cseq}", "OPTIONS")
    for name in ("To", "From", "Call-ID", "CSeq", "Via"):
        lines = [ln for ln in full.splitlines() if not ln.startswith(name + ":")]
        check_rejects(req("\n".join(lines) + "\n"))


def test_multi01_multiple_values_in_single_value_headers() -> None:
    m = req("""INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: @CL@
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5
""", SDP)
    check_rejects(m)
    for attr in ("call_id", "cseq", "from_", "to"):
        with pytest.raises(SipParseError):
            getattr(m, attr)
    assert len(m.contacts) == 2  # Contact is a list header


# ---------------------------------------------------------------------------
# Size limits
# ---------------------------------------------------------------------------

def test_header_block_over_limit_is_513() -> None:
    head = "OPTIONS sip:a@example.com SIP/2.0\nX-Big: " + "a" * MAX_HEADER_BYTES + "\nl: 0\n"
    e = rejects(wire(head), status=513)
    assert isinstance(e, MessageTooLarge)
    # without a terminator at all
    rejects(b"OPTIONS sip:a@example.com SIP/2.0\r\nX-Big: " + b"a" * MAX_HEADER_BYTES, status=513)


def test_body_over_limit_is_513() -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    rejects(wire("MESSAGE sip:a@example.com SIP/2.0\nContent-Length: @CL@\n", big), status=513)
    rejects(wire("MESSAGE sip:a@example.com SIP/2.0\n", big), status=513)  # datagram, no CL
    ok = parse_message(wire("MESSAGE sip:a@example.com SIP/2.0\nl: @CL@\n", big[:-1]))
    assert len(ok.body) == MAX_BODY_BYTES


def test_too_many_headers_is_513() -> None:
    head = "OPTIONS sip:a@example.com SIP/2.0\n" + "X-H: 1\n" * 201 + "l: 0\n"
    rejects(wire(head), status=513)


# ---------------------------------------------------------------------------
# RFC 5118 — IPv6
# ---------------------------------------------------------------------------

def _v6(start: str, via: str = "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        contact: str = '"Caller" <sip:caller@[2001:db8::1]>') -> Request:
    method = start.split()[0]
    return req(f"""{start}
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=81x2
Via: {via}
Call-ID: SSG9559905523997077@hlau_4100
Max-Forwards: 70
Contact: {contact}
CSeq: 98176 {method}
Content-Length: 0
""")


def test_ipv6_basic_reference_in_uri_and_via() -> None:
    m = _v6("REGISTER sip:[2001:db8::10] SIP/2.0")
    check_request(m)
    assert (m.uri.host, m.uri.port) == ("[2001:db8::10]", None)
    assert (m.top_via.host, m.top_via.port) == ("[2001:db8::9:1]", None)
    assert m.contacts[0].uri.host == "[2001:db8::1]"
    assert m.contacts[0].display == "Caller"


def test_ipv6_with_port_in_uri_and_via() -> None:
    m = _v6("REGISTER sip:[2001:db8::10]:5070 SIP/2.0",
            via="SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111")
    check_request(m)
    assert (m.uri.host, m.uri.port) == ("[2001:db8::10]", 5070)
    assert (m.top_via.host, m.top_via.port) == ("[2001:db8::9:1]", 6050)


def test_ipv6_port_ambiguous_looking_uri_has_no_port() -> None:
    m = _v6("REGISTER sip:[2001:db8::10:5070] SIP/2.0")
    check_request(m)
    assert (m.uri.host, m.uri.port) == ("[2001:db8::10:5070]", None)


def test_ipv6_mapped_ipv4_and_received_param_with_and_without_brackets() -> None:
    m = _v6("OPTIONS sip:user@[::ffff:192.0.2.10] SIP/2.0",
            via="SIP/2.0/UDP [2001:db8::9:1]:5060;received=[2001:db8::9:255];branch=z9hG4bKas3,"
                "SIP/2.0/UDP [2001:db8::9:1]:5061;received=2001:db8::9:255;branch=z9hG4bKas4")
    check_request(m)
    assert m.uri.host == "[::ffff:192.0.2.10]"
    assert [(v.port, v.params["received"]) for v in m.vias] == [
        (5060, "[2001:db8::9:255]"), (5061, "2001:db8::9:255")]


@pytest.mark.parametrize("ruri", [
    "sip:[2001:db8::10:5070",  # missing ']'
    "sip:user@[2001:db8::10",
    "sip:2001:db8::10",  # missing brackets
    "sip:user@2001:db8::10:5070",
    "sip:[2001:db8::10]5070",
    "sip:[]",
    "sip:[example.com]",
])
def test_ipv6_bad_references_in_request_uri(ruri: str) -> None:
    m = _v6(f"OPTIONS {ruri} SIP/2.0")
    check_rejects(m)


def test_ipv6_bad_reference_in_via_and_contact() -> None:
    m = _v6("OPTIONS sip:user@example.com SIP/2.0", via="SIP/2.0/UDP [2001:db8::9:1;branch=z9hG4bK1")
    check_rejects(m)
    m = _v6("OPTIONS sip:user@example.com SIP/2.0", contact="<sip:caller@[2001:db8::1>")
    check_request(m)
    with pytest.raises(SipParseError):
        m.contacts[0].uri


# ---------------------------------------------------------------------------
# Header forms and typed headers
# ---------------------------------------------------------------------------

COMPACT = """SUBSCRIBE sip:bob@example.com SIP/2.0
v: SIP/2.0/TCP client.example.com:5061;branch=z9hG4bK74bf9
f: "Alice" <sip:alice@example.com>;tag=9fxced76sl
t: <sip:bob@example.com>
i: 3848276298220188511@client.example.com
m: <sip:alice@client.example.com;transport=tcp>
k: eventlist, 100rel
o: presence
u: presence, presence.winfo,dialog
e: gzip
s: lunch?
c: application/simple-filter+xml
CSeq: 1 SUBSCRIBE
Max-Forwards: 70
l: @CL@
"""


def test_all_compact_forms() -> None:
    body = b"<filter-set/>"
    m = req(COMPACT, body)
    check_request(m)
    assert (m.top_via.transport, m.top_via.port, m.top_via.branch) == ("TCP", 5061, "z9hG4bK74bf9")
    assert m.from_.display == "Alice" and m.from_.tag == "9fxced76sl"
    assert m.to.uri.user == "bob" and m.to.tag is None
    assert m.call_id == "3848276298220188511@client.example.com"
    assert m.contacts[0].uri.transport == "tcp"
    assert m.option_tags("Supported") == ["eventlist", "100rel"]
    assert m.event is not None and m.event.name == "presence"
    assert m.get_all("Allow-Events") == ["presence", "presence.winfo", "dialog"]
    assert m.get_all("Content-Encoding") == ["gzip"]
    assert m.get("Subject") == "lunch?"
    assert m.content_type is not None and m.content_type.mime == "application/simple-filter+xml"
    assert m.body == body
    # long and compact names are one header
    for long, short in [("Via", "v"), ("From", "f"), ("To", "t"), ("Call-ID", "i"), ("Contact", "m"),
                        ("Supported", "k"), ("Event", "o"), ("Allow-Events", "u"),
                        ("Content-Encoding", "e"), ("Subject", "s"), ("Content-Type", "c"),
                        ("Content-Length", "l")]:
        assert m.get(long) == m.get(short) == m.get(short.upper()) is not None, long


def test_header_names_are_case_insensitive() -> None:
    m = req("""OPTIONS sip:a@example.com SIP/2.0
vIA: SIP/2.0/UDP h.example.com;BRANCH=z9hG4bKx
FROM: <sip:b@example.com>;TAG=AbC
to: <sip:a@example.com>
CALL-id: X1
cseq: 1 OPTIONS
MAX-FORWARDS: 1
x-CUSTOM: one
X-Custom: two
CONTENT-length: 0
""")
    check_request(m)
    assert m.top_via.branch == "z9hG4bKx"  # param names fold, values do not
    assert m.from_.tag == "AbC"
    assert m.get_all("X-CUSTOM") == ["one", "two"] and m.count("x-custom") == 2
    assert m.call_id == "X1"


def test_folded_lines_with_spaces_and_tabs() -> None:
    m = req("OPTIONS sip:a@example.com SIP/2.0\n"
            "Subject: first\n"
            "\t  second\n"
            "   third\n"
            "Via:\n"
            "\tSIP/2.0/UDP h.example.com\n"
            " ;branch=z9hG4bK1\n"
            "X-Empty-Then-Folded:\n"
            " \n"
            "  value\n"
            "l: 0\n")
    assert m.get("Subject") == "first second third"
    assert m.top_via.host == "h.example.com" and m.top_via.branch == "z9hG4bK1"
    assert m.get("X-Empty-Then-Folded") == "value"


def test_continuation_before_first_header_rejected() -> None:
    rejects(b"OPTIONS sip:a@example.com SIP/2.0\r\n folded: x\r\nl: 0\r\n\r\n")


@pytest.mark.parametrize("line", [": no name", "No Colon Here", "Bad Name: x", "Bad\x00Name: x"])
def test_malformed_header_lines_rejected(line: str) -> None:
    rejects(wire(f"OPTIONS sip:a@example.com SIP/2.0\n{line}\nl: 0\n"))


def test_comma_lists_with_quoted_commas_and_escapes() -> None:
    m = req(r"""REGISTER sip:example.com SIP/2.0
Contact: "Smith, John" <sip:john@a.example.com>;q=0.7, "Doe \"Jane, Esq.\", Ph.D" <sip:jane@b.example.com>
Contact: <sip:x,y@c.example.com>;expires=60 ,sip:plain@d.example.com;q=0.1,
 <sip:last@e.example.com>
l: 0
""")
    cs = m.contacts
    assert [c.display for c in cs] == ["Smith, John", 'Doe "Jane, Esq.", Ph.D', None, None, None]
    assert [c.uri.user for c in cs] == ["john", "jane", "x,y", "plain", "last"]
    assert cs[0].params == {"q": "0.7"} and cs[2].params == {"expires": "60"}
    assert cs[3].params == {"q": "0.1"}  # addr-spec: params belong to the header


def test_unterminated_quote_in_list_header() -> None:
    m = req('REGISTER sip:example.com SIP/2.0\nContact: "Smith, John <sip:j@a.example.com>\nl: 0\n')
    with pytest.raises(SipParseError):
        m.contacts


def test_contact_star() -> None:
    m = req("REGISTER sip:example.com SIP/2.0\nContact:   *  \nExpires: 0\nl: 0\n")
    (c,) = m.contacts
    assert c.raw == "*" and c.uri_text == "*"
    assert m.expires == 0


def test_event_with_template_and_params() -> None:
    m = req("SUBSCRIBE sip:a@example.com SIP/2.0\nEvent:  Presence.WINFO ; id = 7 ;Foo\nl: 0\n")
    ev = m.event
    assert ev is not None
    assert (ev.name, ev.package, ev.template, ev.id) == ("presence.winfo", "presence", "winfo", "7")
    assert ev.params == {"id": "7", "foo": None}
    d = req("SUBSCRIBE sip:a@example.com SIP/2.0\no: dialog;sla;call-id=abc@h;from-tag=X\nl: 0\n").event
    assert d is not None and d.template is None and d.id is None
    assert d.params == {"sla": None, "call-id": "abc@h", "from-tag": "X"}
    assert req("SUBSCRIBE sip:a@example.com SIP/2.0\nl: 0\n").event is None


@pytest.mark.parametrize("events", [
    ["presence, dialog"], ["presence", "dialog"], ["pre sence"], [";id=1"], ['"presence"'], ["presence;;id=1"],
])
def test_bad_event_headers(events: list[str]) -> None:
    head = "SUBSCRIBE sip:a@example.com SIP/2.0\n" + "".join(f"Event: {e}\n" for e in events) + "l: 0\n"
    with pytest.raises(SipParseError):
        req(head).event


def test_subscription_state_params() -> None:
    def ss(v: str):
        return req(f"NOTIFY sip:a@example.com SIP/2.0\nSubscription-State: {v}\nl: 0\n").subscription_state

    a = ss("Active;expires=3600")
    assert (a.state, a.expires, a.reason) == ("active", 3600, None)
    t = ss("terminated ; reason = timeout ; retry-after = 30")
    assert (t.state, t.expires, t.reason, t.params["retry-after"]) == ("terminated", None, "timeout", "30")
    p = ss("pending;expires=soon")
    assert (p.state, p.expires) == ("pending", None)
    assert ss("pending;expires=²").expires is None
    assert req("NOTIFY sip:a@example.com SIP/2.0\nl: 0\n").subscription_state is None


def test_sip_if_match() -> None:
    def m(*vals: str) -> Request:
        return req("PUBLISH sip:a@example.com SIP/2.0\n" + "".join(f"SIP-If-Match: {v}\n" for v in vals) + "l: 0\n")

    assert m().sip_if_match is None
    assert m("  dx200xyz ").sip_if_match == "dx200xyz"
    for bad in (m("a, b"), m("a", "b"), m("a b"), m("")):
        with pytest.raises(SipParseError):
            bad.sip_if_match


@pytest.mark.parametrize("value,expected", [
    ("3600", 3600), (" 0 ", 0), ("0003600", 3600), ("99999999999999999999", 2**32 - 1),
])
def test_expires_values(value: str, expected: int) -> None:
    assert req(f"SUBSCRIBE sip:a@example.com SIP/2.0\nExpires: {value}\nl: 0\n").expires == expected


@pytest.mark.parametrize("value", ["soon", "-1", "3600s", "Thu, 01 Dec 1994 16:00:00 GMT", "", "٣"])
def test_expires_non_numeric_is_an_error_on_access(value: str) -> None:
    m = req(f"SUBSCRIBE sip:a@example.com SIP/2.0\nExpires: {value}\nMin-Expires: {value}\nl: 0\n")
    assert m.get("Expires") == value  # parsing the message itself succeeded
    with pytest.raises(SipParseError):
        m.expires
    with pytest.raises(SipParseError):
        m.min_expires


def test_absent_optional_headers() -> None:
    m = req("OPTIONS sip:a@example.com SIP/2.0\nl: 0\n")
    assert m.expires is None and m.max_forwards is None and m.content_type is None
    assert m.accept is None and m.sip_if_match is None and m.contacts == []
    assert m.get("X-Nothing") is None and m.get_all("Route") == []


def test_content_type_and_accept() -> None:
    m = req("PUBLISH sip:a@example.com SIP/2.0\n"
            "Content-Type: Application/PIDF+XML ; charset=UTF-8\nAccept:\nl: 0\n")
    ct = m.content_type
    assert ct is not None and ct.mime == "application/pidf+xml" and ct.params == {"charset": "UTF-8"}
    assert m.accept == []  # present but empty: nothing acceptable
    m2 = req("SUBSCRIBE sip:a@example.com SIP/2.0\nAccept: application/pidf+xml;q=1, "
             "Application/RLMI+XML\nAccept: multipart/related\nl: 0\n")
    assert m2.accept == ["application/pidf+xml", "application/rlmi+xml", "multipart/related"]
    for bad in ("text", "/xml", "text/"):
        with pytest.raises(SipParseError):
            req(f"PUBLISH sip:a@example.com SIP/2.0\nContent-Type: {bad}\nl: 0\n").content_type


def test_max_forwards_range() -> None:
    assert req("OPTIONS sip:a@example.com SIP/2.0\nMax-Forwards: 255\nl: 0\n").max_forwards == 255
    for bad in ("256", "-1", "x", "1 2"):
        with pytest.raises(SipParseError):
            req(f"OPTIONS sip:a@example.com SIP/2.0\nMax-Forwards: {bad}\nl: 0\n").max_forwards


def test_call_id_must_be_a_single_word() -> None:
    for bad in ("", "a b"):
        with pytest.raises(SipParseError):
            req(f"OPTIONS sip:a@example.com SIP/2.0\nCall-ID: {bad}\nl: 0\n").call_id


@pytest.mark.parametrize("via,expected", [
    ("SIP/2.0/UDP h.example.com:5060;branch=z9hG4bK1;rport", ("UDP", "h.example.com", 5060, "z9hG4bK1")),
    ("sip/2.0/tls H.Example.COM ; branch=z9hG4bK2", ("TLS", "H.Example.COM", None, "z9hG4bK2")),
    ("SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK3", ("WSS", "df7jal23ls0d.invalid", None, "z9hG4bK3")),
    ("SIP/2.0/TCP h.example.com : 5070", ("TCP", "h.example.com", 5070, None)),
])
def test_via_forms(via: str, expected: tuple) -> None:
    v = req(f"OPTIONS sip:a@example.com SIP/2.0\nVia: {via}\nl: 0\n").top_via
    assert (v.transport, v.host, v.port, v.branch) == expected


@pytest.mark.parametrize("via", [
    "SIP/2.0/UDP", "SIP/2.0 h.example.com", "SIP/2.0/UDP h.example.com:0", "SIP/2.0/UDP h.example.com:65536",
    "SIP/2.0/UDP h.example.com:50x", "SIP/2.0/UDP h.example.com:²", "SIP/2.0/UDP h.example.com extra",
    "SIP/2.0/UDP h.exa<mple.com", 'SIP/2.0/UDP h.example.com;branch="unterminated',
])
def test_bad_vias(via: str) -> None:
    with pytest.raises(SipParseError):
        req(f"OPTIONS sip:a@example.com SIP/2.0\nVia: {via}\nl: 0\n").vias


def test_a_repeated_sent_by_parses_the_same_and_a_bad_one_stays_bad() -> None:
    """Via's sent-by is remembered per UA; the next Via from it, with other
    parameters, must give the same fields, and a rejected one is rejected again."""
    for _ in range(3):
        for branch in ("z9hG4bKa", "z9hG4bKb"):
            v = req(f"OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/udp 10.1.2.3:5062;branch={branch};rport\nl: 0\n").top_via
            assert (v.protocol, v.transport, v.host, v.port, v.branch, v.params) == (
                "SIP/2.0", "UDP", "10.1.2.3", 5062, branch, {"branch": branch, "rport": None})
        v = req("OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/udp 10.1.2.3:5062\nl: 0\n").top_via
        assert (v.host, v.port, v.params) == ("10.1.2.3", 5062, {})
        with pytest.raises(SipParseError):
            req("OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/UDP 10.1.2.3:65536;branch=z9hG4bKc\nl: 0\n").vias


def test_uri_hosts_and_control_characters_are_checked_on_every_sight() -> None:
    from presenced.sip.uri import parse_uri

    for _ in range(3):
        assert parse_uri("sip:u@host-1.example.com:5060").host == "host-1.example.com"
        for bad in ("sip:u@host-1.example.com\x7f", "sip:u@ho st", "sip:u@h\x00", "sip:u@h\u00a0x", "sip:u@h_ost!"):
            with pytest.raises(SipParseError):
                parse_uri(bad)


def test_missing_via() -> None:
    with pytest.raises(SipParseError):
        req("OPTIONS sip:a@example.com SIP/2.0\nl: 0\n").top_via


def test_bare_lf_line_ends_and_leading_crlf() -> None:
    data = b"\r\n\r\nOPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\nl: 4\n\nbody"
    m = parse_message(data)
    assert isinstance(m, Request) and m.body == b"body" and m.top_via.branch == "z9hG4bK1"


def test_lf_only_headers_with_crlf_crlf_inside_body() -> None:
    body = b"line1\r\n\r\nline2"
    data = b"MESSAGE sip:a@example.com SIP/2.0\nX-A: 1\nContent-Length: %d\n\n" % len(body) + body
    m = parse_message(data)
    assert m.headers == [("X-A", "1"), ("Content-Length", str(len(body)))]
    assert m.body == body


def test_empty_or_blank_datagrams_rejected() -> None:
    for data in (b"", b"\r\n", b"\r\n\r\n\r\n", b"\n"):
        rejects(data)


def test_non_utf8_header_bytes_survive() -> None:
    m = req(b"MESSAGE sip:a@example.com SIP/2.0\nSubject: caf\xe9\nl: 0\n")
    assert m.get("Subject") == "caf\udce9"
    assert b"Subject: caf\xe9\r\n" in m.to_bytes()
