"""A `SipCore` driven in memory: requests are built as bytes, the outbox is
parsed back, and NOTIFYs are answered 200 so their transactions complete."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from presenced.config import load_config
from presenced.core.server import SipCore
from presenced.sip import build_response
from presenced.sip.message import Request, Response, parse_message
from presenced.transaction.layer import Address

LOCAL = ("127.0.0.1", 5060)


def pidf(entity: str, sphere: str | None = None, note: str = "") -> bytes:
    person = (
        f'<dm:person id="p1"><rpid:sphere>{sphere}</rpid:sphere></dm:person>' if sphere is not None else ""
    )
    n = f"<note>{note}</note>" if note else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        f' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="{entity}">'
        f'<tuple id="t1"><status><basic>open</basic></status>{n}</tuple>{person}</presence>'
    ).encode()


def rules(*rule_xml: str) -> bytes:
    return (
        '<ruleset xmlns="urn:ietf:params:xml:ns:common-policy" xmlns:pr="urn:ietf:params:xml:ns:pres-rules">'
        + "".join(rule_xml)
        + "</ruleset>"
    ).encode()


def rule(rid: str, conditions: str, sub: str, transformations: str = "") -> str:
    t = f"<transformations>{transformations}</transformations>" if transformations else ""
    return (
        f'<rule id="{rid}"><conditions>{conditions}</conditions>'
        f"<actions><pr:sub-handling>{sub}</pr:sub-handling></actions>{t}</rule>"
    )


ALL_SERVICES = "<pr:provide-services><pr:all-services/></pr:provide-services><pr:provide-all-attributes/>"


@dataclass
class Dialog:
    call_id: str
    from_tag: str
    to_tag: str | None
    watcher: str
    uri: str
    event: str
    port: int
    cseq: int = 1


@dataclass
class Harness:
    core: SipCore
    now: float = 1000.0
    notifies: list[Request] = field(default_factory=list)

    @classmethod
    def make(cls, **sets: Any) -> "Harness":
        overrides = {"db.url": "memory", **sets}
        return cls(SipCore(load_config(None, overrides=overrides)))

    @property
    def engine(self):
        return self.core.engine

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.handle_timers(self.now)
        self._drain()

    def send(self, data: bytes, port: int = 40000) -> Response | None:
        self.core.receive(data, Address("udp", "127.0.0.1", port), LOCAL, self.now)
        return self._drain()

    def _drain(self) -> Response | None:
        """Collect the outbox: the last response, and NOTIFYs (answered 200)."""
        resp = None
        while self.core.outbox or self.engine._fanout:
            if not self.core.outbox:
                self.engine.drain_fanout(self.now)
                continue
            items = list(self.core.outbox)
            self.core.outbox.clear()
            for data, dest, _ct in items:
                msg = parse_message(data)
                if isinstance(msg, Response):
                    resp = msg
                else:
                    self.notifies.append(msg)
                    self.core.receive(build_response(msg, 200, "OK", to_tag=None), Address("udp", dest.host, dest.port), LOCAL, self.now)
        return resp

    @staticmethod
    def build(method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b"", *, from_uri: str,
              call_id: str | None = None, from_tag: str | None = None, to_tag: str | None = None,
              cseq: int = 1, port: int = 40000) -> bytes:
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <{from_uri}>;tag={from_tag or secrets.token_hex(4)}",
            f"To: <{uri}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id or secrets.token_hex(8)}",
            f"CSeq: {cseq} {method}",
            *(f"{n}: {v}" for n, v in headers),
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def publish(self, uri: str, body: bytes, etag: str | None = None, expires: int = 3600, port: int = 40000) -> Response:
        h = [("Event", "presence"), ("Expires", str(expires))]
        if etag:
            h.append(("SIP-If-Match", etag))
        if body:
            h.append(("Content-Type", "application/pidf+xml"))
        r = self.send(self.build("PUBLISH", uri, h, body, from_uri=uri, port=port), port)
        assert r is not None
        return r

    def subscribe(self, uri: str, watcher: str, event: str = "presence", expires: int = 600,
                  port: int = 40001, dialog: Dialog | None = None) -> tuple[Response, Dialog]:
        if dialog is None:
            dialog = Dialog(secrets.token_hex(8), secrets.token_hex(4), None, watcher, uri, event, port)
        else:
            dialog.cseq += 1
        h = [("Event", event), ("Contact", f"<sip:w@127.0.0.1:{dialog.port}>"), ("Expires", str(expires))]
        data = self.build("SUBSCRIBE", uri, h, from_uri=watcher, call_id=dialog.call_id, from_tag=dialog.from_tag,
                          to_tag=dialog.to_tag, cseq=dialog.cseq, port=dialog.port)
        r = self.send(data, dialog.port)
        assert r is not None
        if dialog.to_tag is None and r.status < 300:
            dialog.to_tag = r.to.tag
        return r, dialog

    def take(self, dialog: Dialog) -> list[Request]:
        """NOTIFYs sent on `dialog` since the last take()."""
        mine = [n for n in self.notifies if n.call_id == dialog.call_id]
        self.notifies = [n for n in self.notifies if n.call_id != dialog.call_id]
        return mine


def state(n: Request) -> str:
    return (n.get("subscription-state") or "").split(";")[0]
