"""Shared sans-I/O harness for the transaction-layer tests.

No sockets, no sleeping: a float clock that the test advances. `advance_to`
steps through every timer deadline in order, exactly like the runtime does
(arm one OS timer for `next_deadline()`, then `run_due(now)`), and records
every datagram the layer queued together with the fake time it was queued.
"""

from __future__ import annotations

from presenced.sip.message import parse_message
from presenced.transaction import T1, T2, T4, Address, TimerHeap, TransactionLayer

UDP_PEER = Address("udp", "192.0.2.10", 5060)
TCP_PEER = Address("tcp", "192.0.2.10", 5060, conn="conn-1")


class Harness:
    def __init__(self, t1: float = T1, t2: float = T2, t4: float = T4) -> None:
        self.timers = TimerHeap()
        self.layer = TransactionLayer(self.timers, t1, t2, t4)
        self.now = 0.0
        # (time queued, bytes, destination, client transaction or None)
        self.sent: list[tuple[float, bytes, Address, object]] = []

    def flush(self) -> list[tuple[float, bytes, Address, object]]:
        """Move the layer's outbox into `sent`; return what was new."""
        new = [(self.now, data, dest, ct) for data, dest, ct in self.layer.outbox]
        self.layer.outbox.clear()
        self.sent.extend(new)
        return new

    def advance_to(self, t: float) -> None:
        assert t >= self.now
        self.flush()
        while True:
            deadline = self.timers.next_deadline()
            if deadline is None or deadline > t:
                break
            self.now = max(self.now, deadline)
            self.timers.run_due(self.now)
            self.flush()
        self.now = t

    def advance(self, dt: float) -> None:
        self.advance_to(self.now + dt)

    def take(self) -> list[tuple[bytes, Address, object]]:
        """Everything queued since the last take(), without times."""
        self.flush()
        out = [(d, a, c) for _, d, a, c in self.sent]
        self.sent.clear()
        return out

    def send_times(self, ct: object) -> list[float]:
        self.flush()
        return [t for t, _, _, c in self.sent if c is ct]


def request_bytes(
    method: str = "SUBSCRIBE",
    branch: str | None = "z9hG4bKsrv1",
    *,
    via_host: str = "192.0.2.10",
    via_port: int | None = 5060,
    transport: str = "UDP",
    uri: str = "sip:alice@example.com",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str = "ft1",
    to_tag: str | None = None,
) -> bytes:
    sent_by = via_host if via_port is None else f"{via_host}:{via_port}"
    via = f"SIP/2.0/{transport} {sent_by}"
    if branch is not None:
        via += f";branch={branch}"
    to = "<sip:alice@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        f"From: <sip:bob@example.com>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:bob@192.0.2.10:5060>",
        "Event: presence",
        "Expires: 600",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def request(*args, **kwargs):
    """A freshly parsed request (each call is a new object, as off the wire)."""
    return parse_message(request_bytes(*args, **kwargs))


def response_bytes(
    status: int = 200,
    branch: str | None = "z9hG4bKcli1",
    method: str = "NOTIFY",
    *,
    reason: str | None = None,
    via: str | None = "default",
    cseq: int = 1,
) -> bytes:
    reason = reason or {100: "Trying", 180: "Ringing", 200: "OK", 202: "Accepted"}.get(status, "Whatever")
    lines = [f"SIP/2.0 {status} {reason}"]
    if via == "default":
        v = "SIP/2.0/UDP 198.51.100.1:5060"
        if branch is not None:
            v += f";branch={branch}"
        lines.append(f"Via: {v}")
    elif via is not None:
        lines.append(f"Via: {via}")
    lines += [
        "From: <sip:alice@example.com>;tag=srv",
        "To: <sip:bob@example.com>;tag=ft1",
        "Call-ID: dlg-1@198.51.100.1",
        f"CSeq: {cseq} {method}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response(*args, **kwargs):
    return parse_message(response_bytes(*args, **kwargs))


class Recorder:
    """An on_result callback that remembers every call and when it happened."""

    def __init__(self, harness: Harness | None = None) -> None:
        self.harness = harness
        self.calls: list[tuple[float | None, object]] = []

    def __call__(self, resp, now: float) -> None:
        if self.harness is not None:
            assert now == self.harness.now, "on_result must carry the time of the event that ended the transaction"
        self.calls.append((now, resp))

    @property
    def results(self) -> list[object]:
        return [r for _, r in self.calls]
