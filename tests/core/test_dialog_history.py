"""A dialog reported terminated never comes back (RFC 4235 §3.7.1)."""

from __future__ import annotations

from core_support import Harness

NS = "urn:ietf:params:xml:ns:dialog-info"


def _dinfo(state: str, did: str = "d1") -> bytes:
    return (f'<?xml version="1.0"?><dialog-info xmlns="{NS}" version="1" state="full" entity="sip:rg@example.com">'
            f'<dialog id="{did}" call-id="cd1" local-tag="lt" remote-tag="rt" direction="initiator">'
            f"<state>{state}</state></dialog></dialog-info>").encode()


def _publish(h: Harness, body: bytes, etag: str | None = None):
    hdrs = [("Event", "dialog"), ("Expires", "600"), ("Content-Type", "application/dialog-info+xml")]
    if etag:
        hdrs.append(("SIP-If-Match", etag))
    r = h.send(h.build("PUBLISH", "sip:rg@example.com", hdrs, body, from_uri="sip:rg@example.com"), 40000)
    assert r is not None and r.status == 200, r
    return r.get("sip-etag")


def test_a_modify_cannot_take_a_terminated_dialog_back_to_early():
    h = Harness.make(**{"presence_xml.force_active": 1})
    etag = _publish(h, _dinfo("terminated"))
    _, d = h.subscribe("sip:rg@example.com", "sip:w@example.com", event="dialog")
    assert b"<state>terminated</state>" in h.take(d)[-1].body
    _publish(h, _dinfo("early"), etag)
    notes = h.take(d)
    assert notes, "the modify is still notified"
    assert b"early" not in notes[-1].body and b"<state>terminated</state>" in notes[-1].body


def test_a_new_dialog_id_in_the_same_publication_is_shown():
    h = Harness.make(**{"presence_xml.force_active": 1})
    etag = _publish(h, _dinfo("terminated"))
    _, d = h.subscribe("sip:rg@example.com", "sip:w@example.com", event="dialog")
    h.take(d)
    _publish(h, _dinfo("early", did="d2"), etag)
    assert b"<state>early</state>" in h.take(d)[-1].body
