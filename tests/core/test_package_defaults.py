"""What a SUBSCRIBE without Expires gets, per event package."""

from __future__ import annotations

import pytest
from core_support import Harness, state


def _subscribe_without_expires(h: Harness, event: str):
    data = h.build("SUBSCRIBE", "sip:alice@example.com",
                   [("Event", event), ("Contact", "<sip:w@127.0.0.1:40001>")], from_uri="sip:bob@example.com", port=40001)
    r = h.send(data, 40001)
    assert r is not None
    return r


@pytest.mark.parametrize("event, expires", [("reg", 3761), ("dialog", 3600), ("message-summary", 3600),
                                            ("presence", 3600)])
def test_default_duration_is_the_packages_own(event, expires):
    h = Harness.make(**{"presence_xml.force_active": 1})
    r = _subscribe_without_expires(h, event)
    assert r.status in (200, 202)
    assert r.get("expires") == str(expires)
    (n,) = h.notifies
    assert state(n) == "active" and f"expires={expires}" in n.get("subscription-state")


def test_reg_default_duration_follows_the_kamailio_parameter():
    h = Harness.make(**{"presence_reginfo.default_expires": 600})
    r = _subscribe_without_expires(h, "reg")
    assert r.get("expires") == "600"


def test_max_expires_still_caps_what_a_watcher_asks_for():
    h = Harness.make()
    r, _ = h.subscribe("sip:alice@example.com", "sip:bob@example.com", event="reg", expires=7200)
    assert r.get("expires") == "3600"


@pytest.mark.parametrize("registrar", [0, 1])
def test_first_reg_notify_is_full_state_even_with_nothing_registered(registrar):
    """RFC 3680 §4.7: full state; an AoR nobody registered is in state "init"
    (the NOTIFY used to come with no body at all)."""
    h = Harness.make(**{"presence_xml.force_active": 1, "registrar.enabled": registrar})
    r, d = h.subscribe("sip:carol@example.com", "sip:bob@example.com", event="reg")
    assert r.status == 200
    (n,) = h.take(d)
    assert n.get("content-type") == "application/reginfo+xml"
    body = n.body.decode()
    assert 'state="full"' in body and 'version="0"' in body
    assert '<registration aor="sip:carol@example.com"' in body and 'state="init"' in body


def _mwi_publish(h: Harness, body: bytes):
    hdrs = [("Event", "message-summary"), ("Expires", "600"), ("Content-Type", "application/simple-message-summary")]
    r = h.send(h.build("PUBLISH", "sip:vm@example.com", hdrs, body, from_uri="sip:vm@example.com"), 40000)
    assert r is not None and r.status == 200, r


def test_first_mwi_notify_with_nothing_published_turns_the_lamp_off():
    h = Harness.make()
    _, d = h.subscribe("sip:vm@example.com", "sip:bob@example.com", event="message-summary")
    (n,) = h.take(d)
    assert n.get("content-type") == "application/simple-message-summary"
    assert n.body == b"Messages-Waiting: no\r\n"


def test_mwi_body_published_with_bare_lf_is_notified_with_crlf():
    h = Harness.make()
    _, d = h.subscribe("sip:vm@example.com", "sip:bob@example.com", event="message-summary")
    h.take(d)
    _mwi_publish(h, b"Messages-Waiting: yes\nVoice-Message: 1/0\n")
    assert h.take(d)[-1].body == b"Messages-Waiting: yes\r\nVoice-Message: 1/0\r\n"
