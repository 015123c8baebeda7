"""The engine's PUBLISH→NOTIFY latency hook, driven with a fake clock (no sockets).

Requests go into `SipCore.receive` as bytes with an explicit `now`; NOTIFYs
come out of `core.outbox`. The hook must report, per NOTIFY carrying a
published change, the time since that PUBLISH was accepted — also for
NOTIFYs sent later from the fan-out queue — and nothing when it is unset.
"""

from __future__ import annotations

import contextvars
import secrets

from presenced.core.server import SipCore
from presenced.metrics import Histogram, Metrics
from presenced.transaction.layer import Address

HOST = "127.0.0.1"
PRES = f"sip:alice@{HOST}"


def pidf(note: str) -> bytes:
    return (
        f'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{PRES}">'
        f'<tuple id="t"><status><basic>open</basic></status><note>{note}</note></tuple></presence>'
    ).encode()


def request(method: str, port: int, headers: list[tuple[str, str]], body: bytes = b"", user: str = "w") -> bytes:
    lines = [
        f"{method} {PRES} SIP/2.0",
        f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK{secrets.token_hex(6)}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{HOST}>;tag={secrets.token_hex(4)}",
        f"To: <{PRES}>",
        f"Call-ID: {secrets.token_hex(8)}@test",
        f"CSeq: 1 {method}",
        *(f"{k}: {v}" for k, v in headers),
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Harness:
    def __init__(self) -> None:
        self.core = SipCore(None)
        self.core.engine.force_active = 1
        self.seen: list[tuple[str, float]] = []

    def hook(self, event: str, seconds: float) -> None:
        self.seen.append((event, seconds))

    def send(self, data: bytes, port: int, now: float) -> list[bytes]:
        # in a copy of the context: receive() sets the log Call-ID context variable
        contextvars.copy_context().run(self.core.receive, data, Address("udp", HOST, port), (HOST, 5060), now)
        out = [d for d, _, _ in self.core.outbox]
        self.core.outbox.clear()
        return out

    def subscribe(self, port: int, now: float) -> None:
        out = self.send(request("SUBSCRIBE", port, [("Event", "presence"), ("Expires", "600"),
                                                    ("Contact", f"<sip:w{port}@{HOST}:{port}>")], user=f"w{port}"),
                        port, now)
        assert out[0].startswith(b"SIP/2.0 200") and out[1].startswith(b"NOTIFY"), out

    def publish(self, note: str, now: float, port: int = 7000) -> list[bytes]:
        out = self.send(request("PUBLISH", port, [("Event", "presence"), ("Expires", "600"),
                                                  ("Content-Type", "application/pidf+xml")], pidf(note), user="alice"),
                        port, now)
        assert out[0].startswith(b"SIP/2.0 200"), out[0][:60]
        return out[1:]

    def drain(self, now: float, limit: int | None = None) -> list[bytes]:
        self.core.engine.drain_fanout(now, limit)
        out = [d for d, _, _ in self.core.outbox]
        self.core.outbox.clear()
        return out


def test_latency_measured_from_publish_accept_including_fanout_batches():
    h = Harness()
    h.core.fanout_batch = 2  # SipCore sends 2 NOTIFYs per step, the rest waits for drain_fanout
    h.core.engine.on_notify_latency = h.hook
    for port in range(6001, 6006):
        h.subscribe(port, now=100.0)
    assert h.seen == []  # initial NOTIFYs carry no published change

    sent = h.publish("one", now=200.0)
    assert len(sent) == 2 and all(b"one" in n for n in sent)
    assert h.seen == [("presence", 0.0), ("presence", 0.0)]

    # the next batch leaves 0.25 s later
    assert len(h.drain(200.25, 2)) == 2
    assert h.seen[2:] == [("presence", 0.25), ("presence", 0.25)]
    # A second PUBLISH 1 s later: its step first sends the watcher still queued
    # from the first one (measured from the first PUBLISH), then one more; the
    # other three wait for the next batch, 0.5 s later.
    h.seen.clear()
    sent = h.publish("two", now=201.0)
    assert len(sent) == 2 and all(b"two" in n for n in sent)
    assert h.seen == [("presence", 1.0), ("presence", 0.0)]
    h.seen.clear()
    rest = h.drain(201.5)
    assert len(rest) == 3 and all(b"two" in n for n in rest)
    assert h.seen == [("presence", 0.5)] * 3
    assert h.drain(300.0) == [] and len(h.seen) == 3


def test_coalesced_notify_measures_from_the_oldest_change():
    h = Harness()
    h.core.fanout_batch = 0  # nothing leaves until drain_fanout
    h.core.engine.on_notify_latency = h.hook
    h.subscribe(6001, now=1.0)
    assert h.publish("one", now=10.0) == []
    assert h.publish("two", now=12.0) == []
    out = h.drain(13.0)
    assert len(out) == 1 and b"two" in out[0]
    assert h.seen == [("presence", 3.0)]


def test_no_measurement_without_a_published_change():
    h = Harness()
    h.core.engine.on_notify_latency = h.hook
    h.subscribe(6001, now=10.0)
    h.core.engine.pres_refresh_watchers(PRES, "presence", 1, 11.0)
    h.core.outbox.clear()
    h.core.engine.state_changed(PRES, "presence", 12.0)  # not a PUBLISH
    assert h.drain(12.0)
    assert h.seen == []


def test_hook_off_costs_no_state():
    """With no hook nothing is stamped, so turning it on later measures nothing stale."""
    h = Harness()
    h.core.fanout_batch = 1
    for port in (6001, 6002):
        h.subscribe(port, now=1.0)
    h.publish("x", now=2.0)
    assert all(s.notify_origin is None for s in h.core.engine.subs_by_dialog.values())
    h.core.engine.on_notify_latency = h.hook
    h.drain(50.0)
    assert h.seen == []


def test_watcher_dropped_from_queue_does_not_keep_its_stamp():
    h = Harness()
    h.core.fanout_batch = 0
    h.core.engine.on_notify_latency = h.hook
    h.subscribe(6001, now=1.0)
    h.publish("x", now=2.0)
    sub = next(iter(h.core.engine.subs_by_dialog.values()))
    sub.status = "pending"  # e.g. the rules changed before the batch left
    h.drain(3.0)
    sub.status = "active"
    h.core.engine.pres_refresh_watchers(PRES, "presence", 1, 500.0)
    assert h.seen == []


def test_metrics_attach_sets_and_removes_the_hook():
    h = Harness()

    class FakeServer:
        core = h.core
        persistence = None

    m = Metrics(FakeServer())
    m.attach()
    assert h.core.engine.on_notify_latency == m.observe_notify_latency
    h.core.fanout_batch = 0
    h.subscribe(6001, now=1.0)
    h.publish("x", now=2.0)
    h.drain(2.003)
    assert m.publish_notify_latency.count == 1
    assert m.publish_notify_latency.cumulative()[:2] == [(0.0005, 0), (0.001, 0)]
    assert m.publish_notify_latency.cumulative()[2] == (0.0025, 0)
    assert m.publish_notify_latency.cumulative()[3] == (0.005, 1)
    m.detach()
    assert h.core.engine.on_notify_latency is None
    assert isinstance(m.publish_notify_latency, Histogram)
