"""GET /metrics: format and exact values after known traffic."""

from __future__ import annotations

import socket
import time

import pytest
from api_support import HOST, LiveServer, LiveWorkers, pidf, sample, uid
from sipclient import SipClient

from presenced import _build
from presenced.metrics import Histogram


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "2-workers"])
def live(request):
    """The traffic tests against one process and against `serve --workers 2`
    (whose /metrics adds up every worker's)."""
    srv = (LiveServer() if request.param == 1 else LiveWorkers(request.param)).start()
    yield srv
    srv.stop()


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


def wait_until(fn, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.02)
    return False


def test_format_and_families(live):
    m = live.metrics()
    for name in ("presenced_build_info", "presenced_up", "presenced_transactions",
                 "presenced_tcp_connections", "presenced_storage_healthy",
                 "presenced_publish_notify_latency_seconds_count"):
        assert any(k[0] == name for k in m), name
    assert sample(m, "presenced_up") == 1
    # which build runs the hot path (the server is started like this test process)
    assert sample(m, "presenced_compiled") == (1 if _build.MODE == "mypyc" else 0)
    assert sample(m, "presenced_storage_healthy") == 1
    # every registered package has zero-valued series, so dashboards see 0, not "no data"
    assert ("presenced_subscriptions", frozenset({("event", "presence"), ("state", "active")})) in m
    assert ("presenced_publications", frozenset({("event", "presence")})) in m


def test_counters_after_known_traffic(live):
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    pub = SipClient(live.port, user=alice)
    bob = SipClient(live.port, user=uid("bob"))
    m0 = live.metrics()

    # 1 PUBLISH (no watchers yet) + 1 SUBSCRIBE (its NOTIFY answered 200)
    r = pub.publish(aor, pidf(aor, note="one"))
    assert r.status == 200
    etag = r.get("sip-etag")
    resp, d = bob.subscribe(aor)
    assert resp.status == 200
    bob.expect_notify(d)
    # a second PUBLISH: its NOTIFY is first left unanswered, retransmitted (Timer E), then answered
    assert pub.publish(aor, pidf(aor, note="two"), etag=etag).status == 200
    first = bob.recv(2.0, lambda m: getattr(m, "method", None) == "NOTIFY")
    again = bob.recv(2.0, lambda m: getattr(m, "method", None) == "NOTIFY")
    assert again.get("cseq") == first.get("cseq")
    bob.answer(again, 200)
    # the next NOTIFY is rejected: 481 fails it and ends the subscription
    assert live.rpc("presence.refreshWatchers", aor, "presence", 1) == {"notified": 1}
    bob.expect_notify(d, code=481)
    assert wait_until(lambda: live.rpc("presence.watcher_list", "basic", aor) == [])

    m1 = live.metrics()
    assert delta(m1, m0, "presenced_sip_requests_total", method="PUBLISH") == 2
    assert delta(m1, m0, "presenced_sip_requests_total", method="SUBSCRIBE") == 1
    assert delta(m1, m0, "presenced_sip_responses_total", code="200") == 3
    assert delta(m1, m0, "presenced_notify_sent_total") == 3
    assert delta(m1, m0, "presenced_notify_failed_total") == 1
    assert delta(m1, m0, "presenced_notify_retransmissions_total") >= 1
    assert delta(m1, m0, "presenced_notify_timeouts_total") == 0
    # PUBLISH→NOTIFY latency: exactly the one NOTIFY the second PUBLISH caused
    assert delta(m1, m0, "presenced_publish_notify_latency_seconds_count") == 1
    assert 0 <= delta(m1, m0, "presenced_publish_notify_latency_seconds_sum") < 1
    assert sample(m1, "presenced_publish_notify_latency_seconds_bucket", le="+Inf") == \
        sample(m1, "presenced_publish_notify_latency_seconds_count")
    buckets = sorted(
        (float(dict(k[1])["le"]), v) for k, v in m1.items() if k[0] == "presenced_publish_notify_latency_seconds_bucket"
    )
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    # state gauges
    assert sample(m1, "presenced_publications", event="presence") >= 1
    assert delta(m1, m0, "presenced_publications", event="presence") == 1
    assert delta(m1, m0, "presenced_subscriptions", event="presence", state="active") == 0
    pub.close()
    bob.close()


def test_tcp_connections_and_notify_timeout(live):
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    m0 = live.metrics()
    carol = SipClient(live.port, transport="tcp", user=uid("carol"))
    resp, d = carol.subscribe(aor)
    assert resp.status == 200
    carol.expect_notify(d)
    assert wait_until(lambda: sample(live.metrics(), "presenced_tcp_connections") == sample(m0, "presenced_tcp_connections") + 1)
    m1 = live.metrics()
    assert delta(m1, m0, "presenced_subscriptions", event="presence", state="active") == 1
    # The watcher goes away: the next NOTIFY cannot be delivered (connection
    # closed, its Contact port refuses) and counts as timed out.
    carol.sock.shutdown(socket.SHUT_RDWR)
    carol.close()
    assert wait_until(lambda: sample(live.metrics(), "presenced_tcp_connections") == sample(m0, "presenced_tcp_connections"))
    live.rpc("presence.refreshWatchers", aor, "presence", 1)
    assert wait_until(lambda: delta(live.metrics(), m0, "presenced_notify_timeouts_total") == 1)
    m2 = live.metrics()
    assert delta(m2, m0, "presenced_subscriptions", event="presence", state="active") == 0
    assert sample(m2, "presenced_transactions", kind="server") >= 0


def test_unknown_methods_are_folded(live):
    c = SipClient(live.port)
    for method in ("FOO", "BAR"):
        assert c.request(method, f"sip:x@{HOST}").status == 405
    m = live.metrics()
    assert sample(m, "presenced_sip_requests_total", method="other") >= 2
    assert not any(dict(k[1]).get("method") in ("FOO", "BAR") for k in m)
    c.close()


def test_histogram_unit():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert h.count == 4 and abs(h.sum - 3.65) < 1e-9


def test_state_and_transaction_gauges_exact_on_a_fresh_server():
    """Own server (exact values): pending vs active subscriptions, publications
    by event, open server/client transactions."""
    from api_support import LiveServer

    srv = LiveServer(**{"presence_xml.force_active": 0}).start()  # no rules: watchers wait (pending)
    bob = SipClient(srv.port, user=uid("bob"))
    alice = uid("alice")
    aor = f"sip:{alice}@{HOST}"
    try:
        m0 = srv.metrics()
        assert sample(m0, "presenced_transactions", kind="server") == 0
        assert sample(m0, "presenced_transactions", kind="client") == 0
        resp, d = bob.subscribe(aor)  # UDP: its server transaction lingers (Timer J)
        assert resp.status == 200
        notify = bob.recv(2.0, lambda m: getattr(m, "method", None) == "NOTIFY")  # left unanswered
        assert notify.get("subscription-state").startswith("pending")
        body = (
            f'<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" '
            f'state="full" entity="{aor}"><dialog id="d1"><state>confirmed</state></dialog></dialog-info>'
        ).encode()
        with SipClient(srv.port, transport="tcp", user=alice) as ua:  # TCP: its transaction lingers too
            assert ua.publish(aor, body, event="dialog", ctype="application/dialog-info+xml").status == 200
        m1 = srv.metrics()
        assert sample(m1, "presenced_subscriptions", event="presence", state="pending") == 1
        assert sample(m1, "presenced_subscriptions", event="presence", state="active") == 0
        assert sample(m1, "presenced_publications", event="dialog") == 1
        assert sample(m1, "presenced_publications", event="presence") == 0
        assert sample(m1, "presenced_transactions", kind="server") == 2
        assert sample(m1, "presenced_transactions", kind="client") == 1  # the NOTIFY in flight
        assert sample(m1, "presenced_sip_requests_total", method="PUBLISH") == 1
        assert sample(m1, "presenced_sip_responses_total", code="200") == 2
        # the owner approves bob: the subscription turns active
        srv.in_loop(lambda: srv.server.core.engine.set_watcher_status(
            aor, "presence", f"sip:{bob.user}@{HOST}", "active", None, srv.loop.time()))
        srv.in_loop(srv.server._flush)
        assert wait_until(lambda: sample(srv.metrics(), "presenced_subscriptions", event="presence", state="active") == 1)
        assert sample(srv.metrics(), "presenced_subscriptions", event="presence", state="pending") == 0
    finally:
        bob.close()
        srv.stop()
