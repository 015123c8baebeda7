"""PUBLISH (RFC 3903) end to end: what the publishing phone and its watchers notice."""

from __future__ import annotations

import re
import time

import pytest

from e2e_support import HOST, Phone, dialog_info, pidf, tuple_ids, uid, xml_attr

PIDF = "application/pidf+xml"
MWI = "application/simple-message-summary"


def watch(phones, srv, transport, uri, event="presence", expires=60):
    w = phones(srv, transport)
    r, d = w.subscribe(uri, event=event, expires=expires)
    assert r.status == 200, r
    return w, d, w.expect_notify(d)


def _tokens(value):
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


# ------------------------------------------------------------ the four operations
def test_initial_publish_200_etag_expires(server, phones, transport, presentity):
    ph = phones(server, transport)
    r = ph.publish(presentity, pidf(presentity), expires=60)
    assert r.status == 200
    assert r.get("SIP-ETag")
    assert r.get("Expires") == "60"
    assert r.to.tag


def test_refresh_gives_new_etag_and_old_one_is_dead(server, phones, transport, presentity):
    ph = phones(server, transport)
    etag1 = ph.publish(presentity, pidf(presentity), expires=60).get("SIP-ETag")
    r = ph.publish(presentity, expires=60, etag=etag1)  # no body: refresh
    assert r.status == 200
    etag2 = r.get("SIP-ETag")
    assert etag2 and etag2 != etag1
    assert r.get("Expires") == "60"
    assert ph.publish(presentity, expires=60, etag=etag1).status == 412
    assert ph.publish(presentity, expires=60, etag=etag2).status == 200


def test_modify_replaces_state(server, phones, transport, presentity):
    ph = phones(server, transport)
    etag = ph.publish(presentity, pidf(presentity, "tA", "open")).get("SIP-ETag")
    w, d, first = watch(phones, server, transport, presentity)
    assert tuple_ids(first.body) == ["tA"] and b"open" in first.body
    # Linphone changes the tuple id on every PUBLISH: the new body replaces the old one entirely
    r = ph.publish(presentity, pidf(presentity, "tB", "closed"), etag=etag)
    assert r.status == 200 and r.get("SIP-ETag") not in (None, etag)
    n = w.expect_notify(d)
    assert tuple_ids(n.body) == ["tB"]
    assert b"<basic>closed</basic>" in n.body


def test_remove_with_expires_0(server, phones, transport, presentity):
    ph = phones(server, transport)
    etag = ph.publish(presentity, pidf(presentity, "gone")).get("SIP-ETag")
    w, d, first = watch(phones, server, transport, presentity)
    assert tuple_ids(first.body) == ["gone"]
    r = ph.publish(presentity, expires=0, etag=etag)
    assert r.status == 200
    assert r.get("Expires") == "0"
    n = w.expect_notify(d)
    assert "gone" not in tuple_ids(n.body)
    assert (n.get("Subscription-State") or "").startswith("active")
    assert ph.publish(presentity, expires=60, etag=etag).status == 412


def test_unknown_etag_412(server, phones, transport, presentity):
    ph = phones(server, transport)
    assert ph.publish(presentity, expires=60, etag="no-such-etag").status == 412
    assert ph.publish(presentity, pidf(presentity), expires=60, etag="no-such-etag").status == 412


def test_etag_of_another_presentity_412(server, phones, presentity):
    ph = phones(server)
    etag = ph.publish(presentity, pidf(presentity)).get("SIP-ETag")
    other = f"sip:{uid('o')}@{HOST}"
    assert ph.publish(other, expires=60, etag=etag).status == 412


# ------------------------------------------------------------------- refusals
@pytest.mark.parametrize("event", [None, "foo", "presence.winfo"])
def test_bad_event_489_with_allow_events(server, phones, transport, presentity, event):
    ph = phones(server, transport)
    h = [("Expires", "60"), ("Content-Type", PIDF)]
    if event:
        h.append(("Event", event))
    r = ph.request("PUBLISH", presentity, h, pidf(presentity))
    assert r.status == 489
    assert "presence" in _tokens(r.get("Allow-Events"))


def test_interval_too_brief_423(server, phones, transport, presentity):
    ph = phones(server, transport)
    r = ph.publish(presentity, pidf(presentity), expires=5)
    assert r.status == 423
    assert r.get("Min-Expires") == "10"


def test_expires_above_max_is_clamped(server, phones, transport, presentity):
    ph = phones(server, transport)
    r = ph.publish(presentity, pidf(presentity), expires=7200)
    assert r.status == 200
    assert r.get("Expires") == "3600"


def test_wrong_content_type_415_with_accept(server, phones, transport, presentity):
    ph = phones(server, transport)
    r = ph.publish(presentity, b"I am here", ctype="text/plain")
    assert r.status == 415
    assert PIDF in _tokens(r.get("Accept"))
    # XPIDF is another format, not stored and then lost: refused, and not offered
    xpidf = b'<?xml version="1.0"?><presence><presentity uri="sip:x@h"/></presence>'
    assert ph.publish(presentity, xpidf, ctype="application/xpidf+xml").status == 415
    assert "application/xpidf+xml" not in _tokens(r.get("Accept"))


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:x@h"><tuple id="a">',
    b"not xml at all",
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:x@h"><tuple id="t"><status><basic>busy</basic></status></tuple></presence>',
    None,  # PIDF in the wrong namespace
])
def test_bad_pidf_400_and_no_state_change(server, phones, transport, presentity, body):
    if body is None:
        body = pidf(presentity, ns="urn:example:not-pidf")
    w, d, _ = watch(phones, server, transport, presentity)
    ph = phones(server, transport)
    r = ph.publish(presentity, body)
    assert r.status == 400
    assert r.reason
    assert w.no_notify(d, 0.4)


def test_initial_publish_without_body_400(server, phones, presentity):
    ph = phones(server)
    assert ph.publish(presentity, expires=60).status == 400


# ------------------------------------------------------------------ expiry
def test_expired_publication_removed_from_watchers(short_server, phones, presentity):
    ph = phones(short_server)
    w, d, _ = watch(phones, short_server, "udp", presentity)
    t0 = time.monotonic()
    r = ph.publish(presentity, pidf(presentity, "short"), expires=2)
    assert r.status == 200 and r.get("Expires") == "2"
    assert tuple_ids(w.expect_notify(d).body) == ["short"]
    n = w.expect_notify(d, timeout=4.0)
    elapsed = time.monotonic() - t0
    assert "short" not in tuple_ids(n.body)
    assert 1.8 <= elapsed <= 3.2, elapsed
    assert n.get("Subscription-State").startswith("active")
    assert ph.publish(presentity, expires=60, etag=r.get("SIP-ETag")).status == 412


# ------------------------------------------------------------ client shapes
def _linphone_publish(ph: Phone, uri: str, lines: list[str], body: bytes = b"", content_length: bool = True) -> bytes:
    branch = "z9hG4bK." + uid("lp")
    head = [
        f"PUBLISH {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {HOST}:{ph.port};branch={branch};rport",
        f'From: "Alice" <{uri}>;tag={uid("f")}',
        f'To: "Alice" <{uri}>',
        "CSeq: 20 PUBLISH",
        f"Call-ID: {uid('c')}",
        "Max-Forwards: 70",
        "Supported: replaces, outbound, gruu",
        "Event: presence",
        *lines,
        "User-Agent: liblinphone-ctypes/5.1.65",
    ]
    if content_length:
        head.insert(10, f"Content-Length: {len(body)}")
    ph.send_raw(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return branch


def test_linphone_unpublish_over_udp_without_content_length(server, phones, presentity):
    ph = phones(server, "udp")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" '
        'xmlns:pidfonline="http://www.linphone.org/xsds/pidfonline.xsd" '
        f'entity="{presentity}" xmlns="urn:ietf:params:xml:ns:pidf">\n'
        ' <tuple id="ra54nc">\n  <status>\n   <basic>open</basic>\n   <pidfonline:online/>\n  </status>\n'
        f'  <contact priority="0.8">{presentity}</contact>\n  <timestamp>2026-11-26T04:43:49Z</timestamp>\n'
        " </tuple>\n</presence>\n"
    ).encode()
    branch = _linphone_publish(ph, presentity, ["Content-Type: application/pidf+xml", "Expires: 600"], body)
    r = ph.wait_response(branch)
    assert r.status == 200
    etag = r.get("SIP-ETag")
    w, d, first = watch(phones, server, "udp", presentity)
    assert tuple_ids(first.body) == ["ra54nc"]
    branch = _linphone_publish(ph, presentity, ["Expires: 0", f"SIP-If-Match: {etag}"], content_length=False)
    r = ph.wait_response(branch)
    assert r.status == 200
    assert r.get("Expires") == "0"
    n = w.expect_notify(d)
    assert tuple_ids(n.body) == []


def test_baresip_refresh_with_content_type_and_empty_body(server, phones, transport, presentity):
    ph = phones(server, transport)
    extra = [("User-Agent", "baresip v1.0.0 (x86_64/linux)"),
             ("Route", f"<sip:{HOST}:{server.port};transport={transport};lr>")]
    r = ph.publish(presentity, pidf(presentity, "t4109"), expires=600, extra=extra)
    assert r.status == 200
    etag = r.get("SIP-ETag")
    w, d, first = watch(phones, server, transport, presentity)
    assert tuple_ids(first.body) == ["t4109"]
    r = ph.publish(presentity, expires=16, etag=etag, extra=extra + [("Content-Type", PIDF)])
    assert r.status == 200
    assert r.get("SIP-ETag") and r.get("SIP-ETag") != etag
    assert r.get("Expires") == "16"
    # nothing changed: at most one identical-state NOTIFY, and the state survives
    for n in w.notifies(d, 0.4):
        assert tuple_ids(n.body) == ["t4109"]
    f = phones(server, transport)
    resp, fd = f.subscribe(presentity, expires=0)
    assert resp.status == 200
    assert tuple_ids(f.expect_notify(fd).body) == ["t4109"]


def test_two_publishers_compose_both_tuples(server, phones, transport, presentity):
    a, b = phones(server, transport), phones(server, transport)
    w, d, _ = watch(phones, server, transport, presentity)
    assert a.publish(presentity, pidf(presentity, "desk", "open")).status == 200
    assert tuple_ids(w.expect_notify(d).body) == ["desk"]
    assert b.publish(presentity, pidf(presentity, "mobile", "closed")).status == 200
    n = w.expect_notify(d)
    assert sorted(tuple_ids(n.body)) == ["desk", "mobile"]
    assert xml_attr(n.body, "presence", "entity") == presentity
    # a new watcher gets the composed state too
    _, _, n2 = watch(phones, server, transport, presentity)
    assert sorted(tuple_ids(n2.body)) == ["desk", "mobile"]


# ---------------------------------------------------------- message-summary
MWI_BODY = b"Messages-Waiting: yes\r\nVoice-Message: 2/8 (0/2)\r\n"


def test_message_summary_published_and_notified(server, phones, transport, presentity):
    ph = phones(server, transport)
    r = ph.publish(presentity, MWI_BODY, event="message-summary", ctype=MWI)
    assert r.status == 200 and r.get("SIP-ETag")
    w, d, n = watch(phones, server, transport, presentity, event="message-summary")
    assert n.get("Content-Type").split(";")[0].strip() == MWI
    assert n.get("Event").startswith("message-summary")
    assert b"Messages-Waiting: yes" in n.body
    assert b"Voice-Message: 2/8 (0/2)" in n.body


def test_message_summary_newest_publication_shown_older_kept(server, phones, transport, presentity):
    """The newest publication is notified; the older one keeps its ETag
    (RFC 3903 §4.1) and shows again once the newer one is removed."""
    a, b = phones(server, transport), phones(server, transport)
    first = a.publish(presentity, MWI_BODY, event="message-summary", ctype=MWI)
    assert first.status == 200
    w, d, n = watch(phones, server, transport, presentity, event="message-summary")
    assert b"2/8" in n.body
    newer = b"Messages-Waiting: no\r\nVoice-Message: 0/10 (0/0)\r\n"
    second = b.publish(presentity, newer, event="message-summary", ctype=MWI)
    assert second.status == 200
    n = w.expect_notify(d)
    assert b"Messages-Waiting: no" in n.body
    assert b"2/8" not in n.body
    # the older publication is still there: a refresh by its ETag is accepted
    refreshed = a.publish(presentity, event="message-summary", etag=first.get("SIP-ETag"))
    assert refreshed.status == 200
    # removing the newer one brings the older state back to the lamp
    gone = b.publish(presentity, event="message-summary", etag=second.get("SIP-ETag"), expires=0)
    assert gone.status == 200
    n = w.expect_notify(d)
    assert b"Messages-Waiting: yes" in n.body and b"2/8" in n.body


def test_message_summary_without_space_after_colon(server, phones, presentity):
    """RFC 3842 §5.1: HCOLON allows `Messages-Waiting:yes`."""
    ph = phones(server)
    assert ph.publish(presentity, b"Messages-Waiting:yes\r\n", event="message-summary", ctype=MWI).status == 200


# ------------------------------------------------------------- dialog-info
def test_dialog_info_versions_increase_per_subscription(server, phones, transport, presentity):
    ph = phones(server, transport)
    r = ph.publish(presentity, dialog_info(presentity, "d1", "early"), event="dialog",
                   ctype="application/dialog-info+xml")
    assert r.status == 200
    w, d, n0 = watch(phones, server, transport, presentity, event="dialog")
    assert n0.get("Content-Type").startswith("application/dialog-info+xml")
    assert xml_attr(n0.body, "dialog-info", "version") == "0"
    assert xml_attr(n0.body, "dialog-info", "entity") == presentity
    assert re.search(rb"<(?:\w+:)?state[^>]*>early<", n0.body)
    r = ph.publish(presentity, dialog_info(presentity, "d1", "confirmed", version=1), event="dialog",
                   ctype="application/dialog-info+xml", etag=r.get("SIP-ETag"))
    assert r.status == 200
    n1 = w.expect_notify(d)
    assert xml_attr(n1.body, "dialog-info", "version") == "1"
    assert re.search(rb"<(?:\w+:)?state[^>]*>confirmed<", n1.body)
    # a refresh NOTIFY carries the next version; a second watcher starts at 0
    w.subscribe(presentity, event="dialog", expires=60, dialog=d)
    n2 = w.expect_notify(d)
    assert int(xml_attr(n2.body, "dialog-info", "version")) == 2
    _, _, other = watch(phones, server, transport, presentity, event="dialog")
    assert xml_attr(other.body, "dialog-info", "version") == "0"


def test_encoded_body_415_with_accept_encoding(server, phones, transport, presentity):
    """RFC 3261 §8.2.3: a body in an encoding we do not decode is refused,
    naming the ones we take; nothing is stored or notified."""
    w, d, _ = watch(phones, server, transport, presentity)
    ph = phones(server, transport)
    r = ph.publish(presentity, pidf(presentity), extra=[("Content-Encoding", "gzip")])
    assert r.status == 415
    assert r.get("Accept-Encoding") == "identity"
    assert w.no_notify(d, 0.4)
    assert ph.publish(presentity, pidf(presentity), extra=[("Content-Encoding", "identity")]).status == 200
