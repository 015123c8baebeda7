"""dialog (RFC 4235) beyond the state machine: idle documents, partial
publications, subscriptions to particular dialogs."""

from __future__ import annotations

import re

from core_support import Harness

NS = "urn:ietf:params:xml:ns:dialog-info"
RG = "sip:rg@example.com"


def _doc(*dialogs: tuple[str, str, str, str], state: str = "full") -> bytes:
    """dialog-info with (id, call-id, local-tag, state) dialogs."""
    inner = "".join(
        f'<dialog id="{d}" call-id="{c}" local-tag="{t}" remote-tag="r{t}" direction="initiator">'
        f"<state>{s}</state></dialog>"
        for d, c, t, s in dialogs
    )
    return (f'<?xml version="1.0"?><dialog-info xmlns="{NS}" version="1" state="{state}" entity="{RG}">'
            f"{inner}</dialog-info>").encode()


def _publish(h: Harness, body: bytes, etag: str | None = None, expires: int = 600):
    hdrs = [("Event", "dialog"), ("Expires", str(expires))]
    if body:
        hdrs.append(("Content-Type", "application/dialog-info+xml"))
    if etag:
        hdrs.append(("SIP-If-Match", etag))
    r = h.send(h.build("PUBLISH", RG, hdrs, body, from_uri=RG), 40000)
    assert r is not None and r.status == 200, r
    return r.get("sip-etag")


def _dialogs(body: bytes) -> dict[str, str]:
    """dialog id -> state."""
    return {i.decode(): s.decode() for i, s in re.findall(rb'<dialog id="([^"]+)"[^>]*>\s*<state>([^<]+)</state>', body)}


def _root(body: bytes) -> dict[str, str]:
    m = re.search(rb"<dialog-info ([^>]*)>|<dialog-info ([^>]*)/>", body)
    assert m, body
    return {k.decode(): v.decode() for k, v in re.findall(rb'([\w-]+)="([^"]*)"', m.group(1) or m.group(2))}


def make(**params) -> Harness:
    return Harness.make(**{"presence_xml.force_active": 1, **params})


def test_a_removed_publication_turns_the_lamp_off_with_an_idle_document():
    h = make()
    etag = _publish(h, _doc(("d1", "c1", "t1", "confirmed")))
    _, d = h.subscribe(RG, "sip:w@example.com", event="dialog")
    [n] = h.take(d)
    assert _dialogs(n.body) == {"d1": "confirmed"}
    _publish(h, b"", etag, expires=0)
    [n] = h.take(d)
    assert n.get("content-type").startswith("application/dialog-info+xml")
    root = _root(n.body)
    assert root["state"] == "full" and root["entity"] == RG and root["version"] == "1"
    assert _dialogs(n.body) == {}


def test_an_expired_publication_turns_the_lamp_off_too():
    h = make()
    _publish(h, _doc(("d1", "c1", "t1", "early")), expires=30)
    _, d = h.subscribe(RG, "sip:w@example.com", event="dialog")
    h.take(d)
    h.advance(31)
    [n] = h.take(d)
    assert _root(n.body)["state"] == "full" and _dialogs(n.body) == {}


def test_nothing_published_is_idle_and_force_dummy_dialog_sends_one_terminated_dialog():
    h = make()
    _, d = h.subscribe(RG, "sip:w@example.com", event="dialog")
    [n] = h.take(d)
    assert _root(n.body)["version"] == "0" and _dialogs(n.body) == {}
    h = make(**{"presence_dialoginfo.force_dummy_dialog": 1})
    _, d = h.subscribe(RG, "sip:w@example.com", event="dialog")
    [n] = h.take(d)
    assert list(_dialogs(n.body).values()) == ["terminated"]


def test_a_partial_modify_changes_only_the_dialogs_it_names():
    h = make()
    etag = _publish(h, _doc(("c", "c1", "t1", "trying"), ("e", "c2", "t2", "proceeding")))
    _, d = h.subscribe(RG, "sip:w@example.com", event="dialog")
    h.take(d)
    _publish(h, _doc(("c", "c1", "t1", "confirmed"), state="partial"), etag)
    [n] = h.take(d)
    assert _dialogs(n.body) == {"c": "confirmed", "e": "proceeding"}
    assert _root(n.body)["state"] == "full"


def test_a_subscription_to_one_dialog_sees_only_that_dialog():
    """RFC 4235 §3.2: Event parameters call-id / from-tag / to-tag."""
    h = make()
    etag = _publish(h, _doc(("d1", "c1", "l1", "confirmed"), ("d2", "c2", "l2", "early")))
    _, one = h.subscribe(RG, "sip:w@example.com", event="dialog;call-id=c1;from-tag=l1")
    _, tagged_other = h.subscribe(RG, "sip:x@example.com", event='dialog;call-id="c1";from-tag=l2', port=40002)
    _, all_ = h.subscribe(RG, "sip:y@example.com", event="dialog", port=40003)
    assert _dialogs(h.take(one)[0].body) == {"d1": "confirmed"}
    assert _dialogs(h.take(tagged_other)[0].body) == {}
    assert _dialogs(h.take(all_)[0].body) == {"d1": "confirmed", "d2": "early"}
    _publish(h, _doc(("d1", "c1", "l1", "terminated"), ("d2", "c2", "l2", "confirmed")), etag)
    [n] = h.take(one)
    assert _dialogs(n.body) == {"d1": "terminated"}
    assert n.get("event") == "dialog"


def test_the_dialog_filter_survives_a_restart_from_storage():
    from presenced.runtime.persistence import restore_subscriptions, subscription_rows

    h = make()
    _publish(h, _doc(("d1", "c1", "l1", "confirmed"), ("d2", "c2", "l2", "early")))
    _, one = h.subscribe(RG, "sip:w@example.com", event="dialog;call-id=c1")
    h.take(one)
    [sub] = [s for s in h.engine.subs_by_dialog.values() if s.call_id == one.call_id]
    rows = [subscription_rows(sub, h.engine.wall_offset)]
    h.engine.forget_subscription(sub)
    assert restore_subscriptions(h.engine, rows, h.now) == 1
    h.subscribe(RG, "sip:w@example.com", event="dialog;call-id=c1", dialog=one)  # refresh: a NOTIFY
    [n] = h.take(one)
    assert _dialogs(n.body) == {"d1": "confirmed"}
