"""Accept on SUBSCRIBE (RFC 3261 §20.1, RFC 6665 §4.2.1.1) and pres_auth_status's error code."""

from __future__ import annotations

import pytest
from core_support import Harness


def _subscribe(h: Harness, accept: str | None):
    hdrs = [("Event", "presence"), ("Contact", "<sip:w@127.0.0.1:40001>"), ("Expires", "600")]
    if accept is not None:
        hdrs.append(("Accept", accept))
    r = h.send(h.build("SUBSCRIBE", "sip:alice@example.com", hdrs, from_uri="sip:bob@example.com", port=40001), 40001)
    assert r is not None
    return r


@pytest.mark.parametrize("accept, status", [
    (None, 200),
    ("application/pidf+xml", 200),
    ("application/pidf+xml;q=0.5, text/plain", 200),
    ("application/pidf+xml;q=0", 406),
    ("application/pidf+xml; q=0.000", 406),
    ("application/pidf+xml;q=0.01", 200),
    ("", 406),
])
def test_accept(accept, status):
    h = Harness.make(**{"presence_xml.force_active": 1})
    r = _subscribe(h, accept)
    assert r.status == status
    if status == 406:
        assert r.get("accept") == "application/pidf+xml"


def test_pres_auth_status_of_a_uri_that_does_not_parse_is_minus_one():
    h = Harness.make()
    assert h.engine.pres_auth_status("garbage", "sip:gina@example.com") == -1
    assert h.engine.pres_auth_status("sip:bob@example.com", "not a uri") == -1
    assert h.engine.pres_auth_status("sip:bob@example.com", "sip:gina@example.com") == 2
