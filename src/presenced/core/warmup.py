"""A scripted exchange through a throwaway core before a server listens.

The first requests after a start meet code that has never run, an lxml
parser not yet built for the thread and allocator pools not yet carved: in
the first seconds after a start presenced's CPU per PUBLISH was ~1.1x
Kamailio's, against ~0.7x once running (bench/equal_rate.py with
`--seconds 2`). Running the common requests once through a core of its own
(memory store, default configuration, so no operator hook or store sees
them) moves that cost to before the first real request. Sans-I/O: bytes in,
bytes out, `now` given.
"""

from __future__ import annotations

from presenced.config import load_config
from presenced.core.server import SipCore
from presenced.sip.message import Request, Response, build_response, parse_message
from presenced.transaction.layer import Address

_LOCAL = ("127.0.0.1", 5060)
_HOST = "warmup.invalid"

_PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:w@{_HOST}">'
    '<tuple id="t1"><status><basic>open</basic></status><note>warm-up</note></tuple></presence>\n'
).encode()
_CONTACT = "Contact: <sip:v@127.0.0.1:5999>\r\n"
_SUMMARY = f"Messages-Waiting: yes\r\nMessage-Account: sip:w@{_HOST}\r\nVoice-Message: 1/2 (0/0)\r\n".encode()


def _request(method: str, n: int, event: str, headers: str = "", body: bytes = b"",
             to_tag: str = "", cseq: int = 1, call: str = "") -> bytes:
    to = f"<sip:w@{_HOST}>" + (f";tag={to_tag}" if to_tag else "")
    call = call or method.lower()
    return (
        f"{method} sip:w@{_HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-warm-{call}-{n}-{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:v@{_HOST}>;tag=warm{n}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: warm-{call}-{n}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Event: {event}\r\n"
        f"{headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def warm_up(now: float, rounds: int = 3) -> int:
    """Run `rounds` of PUBLISH, SUBSCRIBE (+NOTIFY and its 200), un-SUBSCRIBE,
    PUBLISH remove for `presence` and `message-summary`, and an OPTIONS, through a
    new core; returns how many final responses were 2xx (the caller may log it).
    The core, and everything it created, is garbage afterwards."""
    core = SipCore(load_config(None, overrides={"db.url": "memory", "presence_xml.force_active": "1"}))
    source = Address("udp", "127.0.0.1", 5999)
    ok = 0

    def send(data: bytes) -> Response | None:
        nonlocal ok
        core.receive(data, source, _LOCAL, now)
        last = None
        while core.outbox or core.engine._fanout:
            if not core.outbox:
                core.engine.drain_fanout(now)
                continue
            items = list(core.outbox)
            core.outbox.clear()
            for out, _dest, _ct in items:
                msg = parse_message(out)
                if isinstance(msg, Request):  # a NOTIFY: answer it as a watcher would
                    core.receive(build_response(msg, 200, "OK"), source, _LOCAL, now)
                else:
                    last = msg
        if last is not None and 200 <= last.status < 300:
            ok += 1
        return last

    for n in range(rounds):
        send(_request("OPTIONS", n, "presence"))
        for event, ctype, body in (("presence", "application/pidf+xml", _PIDF),
                                   ("message-summary", "application/simple-message-summary", _SUMMARY)):
            r = send(_request("PUBLISH", n, event, f"Expires: 600\r\nContent-Type: {ctype}\r\n", body,
                              call=f"pub-{event}"))
            etag = r.get("sip-etag") if r is not None else None
            r = send(_request("SUBSCRIBE", n, event, f"{_CONTACT}Expires: 600\r\n", call=f"sub-{event}"))
            tag = r.to.tag if r is not None and r.status < 300 else None
            if tag:
                send(_request("SUBSCRIBE", n, event, f"{_CONTACT}Expires: 0\r\n", to_tag=tag, cseq=2,
                              call=f"sub-{event}"))
            if etag:
                send(_request("PUBLISH", n, event, f"Expires: 0\r\nSIP-If-Match: {etag}\r\n", cseq=2,
                              call=f"pub-{event}"))
    return ok
