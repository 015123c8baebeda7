"""A NOTIFY over 1300 bytes to a UDP watcher (RFC 3261 §18.1.1): TCP first,
UDP when the watcher takes no TCP connection, and then UDP straight away for
a while (desk phones listen on UDP only)."""

from __future__ import annotations

from core_support import LOCAL, Harness, pidf

from presenced.core.engine import NO_TCP_MEMORY
from presenced.sip import Request, build_response, parse_message
from presenced.transaction import Address

PRES = "sip:alice@example.com"
NOTE = "Out of office until Monday; ask my colleague for urgent matters. " * 25


def _publish_quietly(h: Harness, body: bytes) -> list:
    """PUBLISH; returns the NOTIFYs it queued (data, dest, ct), unanswered."""
    data = h.build("PUBLISH", PRES, [("Event", "presence"), ("Expires", "3600"),
                                     ("Content-Type", "application/pidf+xml")], body, from_uri=PRES)
    h.core.receive(data, Address("udp", "127.0.0.1", 40000), LOCAL, h.now)
    while h.engine._fanout:
        h.engine.drain_fanout(h.now)
    items = list(h.core.outbox)
    h.core.outbox.clear()
    return [i for i in items if isinstance(parse_message(i[0]), Request)]


def _answer(h: Harness, data: bytes, dest: Address) -> None:
    h.core.receive(build_response(parse_message(data), 200, "OK", to_tag=None),
                   Address("udp", dest.host, dest.port), LOCAL, h.now)


def test_refused_tcp_sends_the_notify_over_udp_and_remembers():
    h = Harness.make(**{"presence_xml.force_active": 1})
    _, d = h.subscribe(PRES, "sip:w@example.com", port=40001)
    assert h.take(d)  # the initial, small NOTIFY went over UDP and was answered

    [(data, dest, ct)] = _publish_quietly(h, pidf(PRES, note=NOTE))
    assert len(data) > 1300 and dest.transport == "tcp" and b"Via: SIP/2.0/TCP " in data
    h.core.transport_failed(ct, h.now)  # what the runtime reports when connect() is refused
    [(udp_data, udp_dest, same)] = h.core.outbox
    h.core.outbox.clear()
    assert same is ct and udp_dest.transport == "udp" and (udp_dest.host, udp_dest.port) == ("127.0.0.1", 40001)
    assert b"Via: SIP/2.0/UDP " in udp_data and parse_message(udp_data).call_id == d.call_id
    _answer(h, udp_data, udp_dest)
    assert h.engine.subs_by_dialog  # the subscription lives on
    assert h.engine.stats["notify_timeout"] == 0 and h.engine.stats["notify_udp_fallbacks"] == 1

    [(data2, dest2, _)] = _publish_quietly(h, pidf(PRES, note=NOTE + "again"))
    assert dest2.transport == "udp" and b"Via: SIP/2.0/UDP " in data2  # no TCP attempt this time
    _answer(h, data2, dest2)

    h.advance(NO_TCP_MEMORY + 1)
    [(data3, dest3, _)] = _publish_quietly(h, pidf(PRES, note=NOTE + "later"))
    assert dest3.transport == "tcp"  # remembered for a while only


def test_small_notify_never_tries_tcp():
    h = Harness.make(**{"presence_xml.force_active": 1})
    _, d = h.subscribe(PRES, "sip:w@example.com", port=40001)
    h.take(d)
    [(data, dest, ct)] = _publish_quietly(h, pidf(PRES, note="short"))
    assert dest.transport == "udp" and ct.udp_fallback is None
