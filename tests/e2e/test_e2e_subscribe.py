"""SUBSCRIBE/NOTIFY (RFC 6665, RFC 3856/3857) end to end, as a watching phone sees it."""

from __future__ import annotations

import socket
import time

import pytest

from e2e_support import HOST, Phone, expires_param, pidf, sub_state, tuple_ids, uid, xml_attr

from presenced.sip import Request, StreamFramer, build_response, parse_message


def _tokens(value):
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def _publisher(server) -> Phone:
    return Phone(server.port, "udp")


def _publish(server, uri, body) -> str:
    with _publisher(server) as p:
        r = p.publish(uri, body)
        assert r.status == 200
        return r.get("SIP-ETag")


# -------------------------------------------------------------- basic dialog
def test_initial_subscribe_and_first_notify(server, phones, transport, presentity):
    w = phones(server, transport)
    r, d = w.subscribe(presentity, expires=60)
    assert r.status == 200
    assert r.to.tag
    assert r.get("Expires") == "60"
    assert r.contacts and r.contacts[0].uri.host == HOST
    assert "presence" in _tokens(r.get("Allow-Events"))
    n = w.expect_notify(d)
    state = sub_state(n)
    assert state.startswith("active")
    assert 55 <= expires_param(state) <= 60
    assert n.get("Event") == "presence"
    assert n.contacts, "NOTIFY must carry Contact (RFC 6665 §4.4.1)"
    assert n.from_.tag == r.to.tag
    assert n.to.tag == d.local_tag
    assert n.call_id == d.call_id
    assert n.cseq.method == "NOTIFY"
    assert n.max_forwards == 70
    assert (n.top_via.branch or "").startswith("z9hG4bK")
    assert n.uri_text == w.contact.strip("<>")


def test_event_id_is_echoed(server, phones, transport, presentity):
    w = phones(server, transport)
    r, d = w.subscribe(presentity, event="presence;id=42", expires=60)
    assert r.status == 200
    n = w.expect_notify(d)
    assert n.event.name == "presence" and n.event.params.get("id") == "42"
    r, _ = w.subscribe(presentity, event="presence;id=42", expires=60, dialog=d)
    assert r.status == 200
    assert w.expect_notify(d).event.params.get("id") == "42"


def test_no_expires_gets_package_default(server, phones, presentity):
    w = phones(server)
    r, d = w.subscribe(presentity, expires=None)
    assert r.status == 200 and r.get("Expires") == "3600"
    w.expect_notify(d)


def test_expires_above_max_is_lowered(server, phones, presentity):
    w = phones(server)
    r, d = w.subscribe(presentity, expires=7200)
    assert r.status == 200 and r.get("Expires") == "3600"
    assert expires_param(sub_state(w.expect_notify(d))) <= 3600


def test_notify_cseq_strictly_increasing(server, phones, transport, presentity):
    w = phones(server, transport)
    _, d = w.subscribe(presentity, expires=60)
    seen = [w.expect_notify(d)]
    etag = _publish(server, presentity, pidf(presentity, "a"))
    seen.append(w.expect_notify(d))
    w.subscribe(presentity, expires=60, dialog=d)
    seen.append(w.expect_notify(d))
    with _publisher(server) as p:
        assert p.publish(presentity, pidf(presentity, "b"), etag=etag).status == 200
    seen.append(w.expect_notify(d))
    r, _ = w.subscribe(presentity, expires=0, dialog=d)
    assert r.status == 200
    seen.append(w.expect_notify(d))
    cseqs = [n.cseq.seq for n in seen]
    assert all(b > a for a, b in zip(cseqs, cseqs[1:])), cseqs
    assert sub_state(seen[-1]).startswith("terminated")
    assert {n.from_.tag for n in seen} == {d.remote_tag}


def test_refresh_200_and_notify(server, phones, transport, presentity):
    _publish(server, presentity, pidf(presentity, "r1"))
    w = phones(server, transport)
    _, d = w.subscribe(presentity, expires=30)
    assert expires_param(sub_state(w.expect_notify(d))) <= 30
    r, _ = w.subscribe(presentity, expires=120, dialog=d)
    assert r.status == 200
    assert r.get("Expires") == "120"
    assert r.to.tag == d.remote_tag
    n = w.expect_notify(d)
    assert sub_state(n).startswith("active")
    assert 110 <= expires_param(sub_state(n)) <= 120
    assert tuple_ids(n.body) == ["r1"]


def test_unsubscribe_final_notify_terminated(server, phones, transport, presentity):
    w = phones(server, transport)
    _, d = w.subscribe(presentity, expires=60)
    w.expect_notify(d)
    r, _ = w.subscribe(presentity, expires=0, dialog=d)
    assert r.status == 200
    n = w.expect_notify(d)
    assert sub_state(n).startswith("terminated")
    _publish(server, presentity, pidf(presentity))
    assert w.no_notify(d, 0.4)
    # the dialog is gone
    r, _ = w.subscribe(presentity, expires=60, dialog=d)
    assert r.status == 481


def test_fetch_one_terminated_notify(server, phones, transport, presentity):
    _publish(server, presentity, pidf(presentity, "fetched"))
    w = phones(server, transport)
    r, d = w.subscribe(presentity, expires=0)
    assert r.status == 200
    n = w.expect_notify(d)
    assert sub_state(n).startswith("terminated")
    assert tuple_ids(n.body) == ["fetched"]
    _publish(server, presentity, pidf(presentity, "later"))
    assert w.no_notify(d, 0.5)


# ------------------------------------------------------------------ refusals
def test_in_dialog_subscribe_unknown_to_tag_481(server, phones, transport, presentity):
    w = phones(server, transport)
    r = w.request("SUBSCRIBE", presentity, [("Event", "presence"), ("Contact", w.contact), ("Expires", "60")],
                  to_tag="no-such-dialog")
    assert r.status == 481


@pytest.mark.parametrize("event", [None, "foo", "presencex", "presence.winfo.winfo"])
def test_bad_event_489_with_allow_events(server, phones, transport, presentity, event):
    w = phones(server, transport)
    h = [("Contact", w.contact), ("Expires", "60")]
    if event:
        h.append(("Event", event))
    r = w.request("SUBSCRIBE", presentity, h)
    assert r.status == 489
    assert {"presence", "dialog"} <= _tokens(r.get("Allow-Events"))


def test_interval_too_brief_423(server, phones, transport, presentity):
    w = phones(server, transport)
    r, _ = w.subscribe(presentity, expires=5)
    assert r.status == 423
    assert r.get("Min-Expires") == "10"
    assert w.no_notify(window=0.3)


def test_missing_contact_400(server, phones, transport, presentity):
    w = phones(server, transport)
    r = w.request("SUBSCRIBE", presentity, [("Event", "presence"), ("Expires", "60")])
    assert r.status == 400
    assert w.no_notify(window=0.3)


def test_accept_without_pidf_406(server, phones, transport, presentity):
    w = phones(server, transport)
    r, _ = w.subscribe(presentity, expires=60, extra=[("Accept", "text/plain")])
    assert r.status == 406
    r, d = w.subscribe(presentity, expires=60, extra=[("Accept", "application/pidf+xml, text/plain")])
    assert r.status == 200
    w.expect_notify(d)


def test_stale_cseq_in_dialog_500(server, phones, transport, presentity):
    w = phones(server, transport)
    _, d = w.subscribe(presentity, expires=60)
    w.expect_notify(d)
    d.cseq = 9
    r, _ = w.subscribe(presentity, expires=60, dialog=d)  # CSeq 10
    assert r.status == 200
    w.expect_notify(d)
    d.cseq = 3
    r, _ = w.subscribe(presentity, expires=60, dialog=d)  # CSeq 4 < 10
    assert r.status == 500
    assert w.no_notify(d, 0.3)


def test_two_event_headers_400(server, phones, presentity):
    """RFC 6665 §3.1.2: exactly one Event header."""
    w = phones(server)
    r = w.request("SUBSCRIBE", presentity,
                  [("Event", "presence"), ("Event", "dialog"), ("Contact", w.contact), ("Expires", "60")])
    assert r.status == 400


# -------------------------------------------------------------- termination
def test_subscription_timeout_notify(short_server, phones, transport, presentity):
    w = phones(short_server, transport)
    t0 = time.monotonic()
    r, d = w.subscribe(presentity, expires=2)
    assert r.status == 200 and r.get("Expires") == "2"
    assert sub_state(w.expect_notify(d)).startswith("active")
    n = w.expect_notify(d, timeout=4)
    elapsed = time.monotonic() - t0
    state = sub_state(n).replace(" ", "")
    assert state.startswith("terminated") and "reason=timeout" in state
    assert 1.8 <= elapsed <= 3.2, elapsed
    r, _ = w.subscribe(presentity, expires=60, dialog=d)
    assert r.status == 481


def test_subs_respond_200_off_gives_202(spawn, phones, presentity):
    srv = spawn("--set", "presence_xml.force_active=1", "--set", "presence.subs_respond_200=0")
    w = phones(srv, "udp")
    r, d = w.subscribe(presentity, expires=60)
    assert r.status == 202
    assert r.to.tag
    assert sub_state(w.expect_notify(d)).startswith("active")


def test_notify_481_removes_subscription(server, phones, transport, presentity):
    w = phones(server, transport)
    w.notify_code = 481
    r, d = w.subscribe(presentity, expires=60)
    assert r.status == 200
    w.expect_notify(d)
    time.sleep(0.1)
    _publish(server, presentity, pidf(presentity))
    assert w.no_notify(d, 0.6)
    r, _ = w.subscribe(presentity, expires=60, dialog=d)
    assert r.status == 481


def test_record_route_becomes_notify_route_set(server, phones, transport, presentity):
    w = phones(server, transport)
    t = ";transport=tcp" if transport == "tcp" else ""
    rr = [f"<sip:{HOST}:{w.port}{t};lr;hop=one>", "<sip:proxy2.invalid;lr;hop=two>", "<sip:192.0.2.3:5070;lr;hop=three>"]
    r, d = w.subscribe(presentity, expires=60, extra=[("Record-Route", ", ".join(rr[:2])), ("Record-Route", rr[2])])
    assert r.status == 200
    assert [x.strip() for x in r.get_all("Record-Route")] == rr
    for n in (w.expect_notify(d), None):
        if n is None:
            _publish(server, presentity, pidf(presentity))
            n = w.expect_notify(d)
        assert [x.strip() for x in n.get_all("Route")] == rr
        assert n.uri_text == w.contact.strip("<>")  # loose routing: R-URI stays the remote target


# ------------------------------------------------------------------- winfo
WINFO_KEY_BUG = (
    "EventPackage.key ignores the template, so WinfoPackage.key == 'presence': winfo subscriptions are "
    "filed with the presence watchers (the owner is listed as its own watcher, gets PIDF NOTIFYs with "
    "Event: presence.winfo, and no winfo NOTIFY when a watcher comes or goes). Fix in events/base.py."
)


def test_winfo_owner_gets_full_then_partial(server, phones, transport):
    name = uid("owner")
    owner_uri = f"sip:{name}@{HOST}"
    owner = phones(server, transport, user=name)
    r, od = owner.subscribe(owner_uri, event="presence.winfo", expires=60)
    assert r.status == 200
    n0 = owner.expect_notify(od)
    assert n0.get("Content-Type").startswith("application/watcherinfo+xml")
    assert n0.get("Event") == "presence.winfo"
    assert xml_attr(n0.body, "watcherinfo", "version") == "0"
    assert xml_attr(n0.body, "watcherinfo", "state") == "full"
    assert xml_attr(n0.body, "watcher-list", "resource") == owner_uri
    assert xml_attr(n0.body, "watcher-list", "package") == "presence"

    w = phones(server, transport)
    r, wd = w.subscribe(owner_uri, expires=60)
    assert r.status == 200
    w.expect_notify(wd)
    n1 = owner.expect_notify(od)
    assert xml_attr(n1.body, "watcherinfo", "version") == "1"
    assert xml_attr(n1.body, "watcherinfo", "state") == "partial"
    assert xml_attr(n1.body, "watcher", "status") == "active"
    assert f"sip:{w.user}@{HOST}".encode() in n1.body

    w.subscribe(owner_uri, expires=0, dialog=wd)
    n2 = owner.expect_notify(od)
    assert xml_attr(n2.body, "watcherinfo", "version") == "2"
    assert xml_attr(n2.body, "watcher", "status") == "terminated"
    assert n1.cseq.seq < n2.cseq.seq


def test_winfo_subscriber_never_gets_presence_documents(server, phones, transport):
    name = uid("owner")
    owner_uri = f"sip:{name}@{HOST}"
    owner = phones(server, transport, user=name)
    r, od = owner.subscribe(owner_uri, event="presence.winfo", expires=60)
    assert r.status == 200
    n0 = owner.expect_notify(od)
    assert owner_uri.encode() + b"</watcher>" not in n0.body  # not its own watcher
    _publish(server, owner_uri, pidf(owner_uri))
    for n in owner.notifies(od, 0.5):
        assert n.get("Content-Type").startswith("application/watcherinfo+xml"), n.body[:200]


def test_winfo_non_owner_refused_403(server, phones, transport):
    alice = f"sip:{uid('alice')}@{HOST}"
    bob = phones(server, transport, user=uid("bob"))
    r, _ = bob.subscribe(alice, event="presence.winfo", expires=60)
    assert r.status == 403
    assert bob.no_notify(window=0.3)


# --------------------------------------------------- transport of NOTIFYs
def test_large_notify_to_udp_watcher_goes_over_tcp(server, phones, presentity):
    # The watcher's UDP port number must also be free for TCP (an ephemeral
    # port can be taken by some TCP connection): try watchers until one is.
    for _ in range(50):
        w = phones(server, "udp")
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            lsock.bind((HOST, w.port))  # same port number as the watcher's UDP socket
            break
        except OSError:
            lsock.close()
    else:
        pytest.fail("no UDP port whose number was also free for TCP")
    lsock.listen(4)
    lsock.settimeout(4)
    try:
        _, d = w.subscribe(presentity, expires=60)
        w.expect_notify(d)  # small: over UDP
        note = "Out of office until Monday; ask my colleague for urgent matters. " * 25
        body = pidf(presentity, "big", note=note)
        assert len(body) > 1400
        _publish(server, presentity, body)
        conn, _ = lsock.accept()
        with conn:
            framer = StreamFramer()
            conn.settimeout(3)
            msgs: list[bytes] = []
            while not msgs:
                chunk = conn.recv(65535)
                assert chunk, "connection closed before a NOTIFY arrived"
                msgs = [m for m in framer.feed(chunk) if m != b"\r\n\r\n"]
            n = parse_message(msgs[0], stream=True)
            assert isinstance(n, Request) and n.method == "NOTIFY"
            assert n.call_id == d.call_id
            assert n.top_via.transport.upper() == "TCP"
            assert len(msgs[0]) > 1300
            assert tuple_ids(n.body) == ["big"] and note.encode()[:60] in n.body
            conn.sendall(build_response(n, 200, "OK"))
            time.sleep(0.1)
        assert w.no_notify(d, 0.3)  # not also sent over UDP
    finally:
        lsock.close()


def test_large_notify_to_a_udp_only_watcher_falls_back_to_udp(server, phones, presentity):
    """Desk phones often listen on UDP only: when the TCP connection for a
    NOTIFY over 1300 bytes is refused, the NOTIFY goes over UDP after all and
    the subscription lives on (it used to end as a NOTIFY timeout)."""
    for _ in range(50):
        w = phones(server, "udp")
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.settimeout(1)
            if probe.connect_ex((HOST, w.port)) != 0:  # nothing takes TCP on the phone's port
                break
        finally:
            probe.close()
    else:
        pytest.fail("no UDP port without a TCP listener on the same number")
    _, d = w.subscribe(presentity, expires=60)
    w.expect_notify(d)
    note = "Out of office until Monday; ask my colleague for urgent matters. " * 25
    for status in ("big", "bigger"):
        _publish(server, presentity, pidf(presentity, status, note=note))
        n = w.expect_notify(d, timeout=3)
        assert len(n.body) > 1300
        assert n.top_via.transport.upper() == "UDP"
        assert sub_state(n).startswith("active")
        assert tuple_ids(n.body)[0] == status  # composed with the earlier publication


def test_closed_tcp_watcher_does_not_stop_others(server, phones, presentity):
    gone = Phone(server.port, "tcp")
    _, gd = gone.subscribe(presentity, expires=60)
    gone.expect_notify(gd)
    others = []
    for tr in ("tcp", "udp", "tcp"):
        w = phones(server, tr)
        _, d = w.subscribe(presentity, expires=60)
        w.expect_notify(d)
        others.append((w, d))
    gone.close()
    time.sleep(0.1)
    _publish(server, presentity, pidf(presentity, "after-close"))
    for w, d in others:
        assert tuple_ids(w.expect_notify(d).body) == ["after-close"]
    # and again (the dead watcher is cleaned up or skipped, never fatal)
    _publish(server, presentity, pidf(presentity, "again"))
    for w, d in others:
        assert "again" in tuple_ids(w.expect_notify(d).body)


def test_tcp_notify_reuses_subscriber_connection(server, phones, presentity):
    """Linphone over TCP: Contact has the connection's own port; NOTIFYs come back on that connection."""
    w = phones(server, "tcp")
    r, d = w.subscribe(presentity, expires=60, extra=[("Supported", "replaces, outbound, gruu")])
    assert r.status == 200
    n = w.expect_notify(d)
    assert n.top_via.transport.upper() == "TCP"
    _publish(server, presentity, pidf(presentity, "tcp"))
    assert tuple_ids(w.expect_notify(d).body) == ["tcp"]


def test_a_subscribe_sent_again_is_answered_again_not_run_twice(server, phones, presentity, transport):
    """The same SUBSCRIBE bytes twice (same branch): one dialog, the same
    answer, one NOTIFY per change afterwards; over TCP as over UDP."""
    w = phones(server, transport)
    data, branch = w.build("SUBSCRIBE", presentity, [("Event", "presence"), ("Contact", w.contact), ("Expires", "600")])
    w.send_raw(data)
    first = w.wait_response(branch)
    w.expect_notify()
    time.sleep(0.2)
    w.send_raw(data)
    second = w.wait_response(branch)
    assert second.status == first.status == 200
    assert second.to.tag == first.to.tag
    assert w.no_message(0.5, want=lambda m: isinstance(m, Request) and m.method == "NOTIFY")
    _publish(server, presentity, pidf(presentity))
    w.expect_notify()
    assert w.no_message(0.5, want=lambda m: isinstance(m, Request) and m.method == "NOTIFY")


def test_a_merged_initial_subscribe_gets_482(server, phones, presentity, transport):
    """RFC 3261 §8.2.2.2: same Call-ID, From tag and CSeq, another branch."""
    w = phones(server, transport)
    call_id = uid("merged")
    h = [("Event", "presence"), ("Contact", w.contact), ("Expires", "600")]
    first = w.request("SUBSCRIBE", presentity, h, call_id=call_id, from_tag="mt1")
    assert first.status == 200
    w.expect_notify()
    second = w.request("SUBSCRIBE", presentity, h, call_id=call_id, from_tag="mt1")
    assert second.status == 482
    assert w.no_message(0.5, want=lambda m: isinstance(m, Request) and m.method == "NOTIFY")
