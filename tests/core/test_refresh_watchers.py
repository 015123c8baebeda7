"""pres_refresh_watchers through the Python API: the three types and their errors."""

from __future__ import annotations

import pytest
from core_support import ALL_SERVICES, Harness, pidf, rule, rules, state

from presenced.api.presence import Presence

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
ALLOW_BOB = rule("b", f'<identity><one id="{BOB}"/></identity>', "allow", ALL_SERVICES)
ASK_BOB = rule("b", f'<identity><one id="{BOB}"/></identity>', "confirm")


def setup(**sets) -> tuple[Harness, Presence]:
    h = Harness.make(**sets)
    return h, Presence(h.core, clock=lambda: h.now)


def test_type0_reauthorizes_against_the_rules_document():
    h, api = setup()
    h.core.authorizer.set_document(ALICE, rules(ASK_BOB))
    h.publish(ALICE, pidf(ALICE, note="here"))
    _, bob = h.subscribe(ALICE, BOB)
    assert state(h.take(bob)[0]) == "pending"
    assert api.pres_refresh_watchers(ALICE, "presence", 0) == 0  # unchanged rules: nothing to do
    assert h.take(bob) == []
    h.core.authorizer.set_document(ALICE, rules(ALLOW_BOB))
    assert api.pres_refresh_watchers(ALICE, "presence", 0) == 1
    h.advance(0)
    [n] = h.take(bob)
    assert state(n) == "active" and b"here" in n.body


def test_type0_fails_without_a_rules_document():
    h, api = setup()
    _, bob = h.subscribe(ALICE, BOB)
    with pytest.raises(ValueError, match="no pres-rules document"):
        api.pres_refresh_watchers(ALICE, "presence", 0)
    h2, api2 = setup(**{"presence_xml.force_active": 1})
    with pytest.raises(ValueError, match="no pres-rules document"):
        api2.pres_refresh_watchers(ALICE, "presence", 0)


def test_type1_notifies_every_active_watcher():
    h, api = setup(**{"presence_xml.force_active": 1})
    h.publish(ALICE, pidf(ALICE, note="same"))
    _, bob = h.subscribe(ALICE, BOB)
    _, carol = h.subscribe(ALICE, "sip:carol@example.com", port=40002)
    h.take(bob), h.take(carol)
    assert api.pres_refresh_watchers(ALICE, "presence", 1) == 2
    h.advance(0)
    for d in (bob, carol):
        [n] = h.take(d)
        assert state(n) == "active" and b"same" in n.body


def test_type2_loads_a_file_as_hard_state(tmp_path):
    h, api = setup(**{"presence_xml.force_active": 1})
    _, bob = h.subscribe(ALICE, BOB)
    h.take(bob)
    f = tmp_path / "alice.xml"
    f.write_bytes(pidf(ALICE, note="out of office"))
    assert api.pres_refresh_watchers(ALICE, "presence", 2, f.as_uri(), "ooo.xml") == 1
    h.advance(0)
    [n] = h.take(bob)
    assert b"out of office" in n.body
    pub = h.engine.etags["ooo.xml"]
    assert pub.pres_uri == ALICE and pub.expires_at - h.now > 5 * 365 * 86400
    h.advance(30 * 86400)  # a month later it is still there
    assert "ooo.xml" in h.engine.etags
    f.write_bytes(b"\n")  # empty: removed, watchers told
    api.pres_refresh_watchers(ALICE, "presence", 2, str(f), "ooo.xml")
    h.advance(0)
    assert "ooo.xml" not in h.engine.etags
    assert all(b"out of office" not in n.body for n in h.take(bob))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((2,), "needs file_uri and filename"),               # 3-argument form with type 2
        ((2, "/tmp/x.xml"), "needs file_uri and filename"),
        ((1, "/tmp/x.xml", "x"), "only valid with type 2"),  # 5-argument form with type 1
        ((0, "/tmp/x.xml", "x"), "only valid with type 2"),
        ((3,), "type must be"),
        ((2, "http://xcap.example.com/x.xml", "x"), "file:// URI or a path"),
        ((2, "file://elsewhere/x.xml", "x"), "only local files"),
        ((2, "/nonexistent/presenced/x.xml", "x"), "no such file"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message):
    _, api = setup(**{"presence_xml.force_active": 1})
    with pytest.raises(ValueError, match=message):
        api.pres_refresh_watchers(ALICE, "presence", *args)


def test_bad_document_event_or_uri(tmp_path):
    h, api = setup(**{"presence_xml.force_active": 1})
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<presence xmlns='urn:example:not-pidf'/>")
    with pytest.raises(ValueError, match="invalid document"):
        api.pres_refresh_watchers(ALICE, "presence", 2, str(bad), "x")
    with pytest.raises(ValueError, match="unknown event"):
        api.pres_refresh_watchers(ALICE, "nope", 1)
    with pytest.raises(ValueError, match="invalid presentity URI"):
        api.pres_refresh_watchers("mailto:alice@example.com", "presence", 1)
    assert not h.engine.etags


def test_updating_watchers_of_presence_winfo_leaves_the_owner_alone():
    """The owner's winfo subscription is authorized by ownership; re-running
    pres-rules on it made the owner pending (no rules) or rejected (rules
    that list others), cutting them off from their own watcher list."""
    h = Harness.make(**{"presence_xml.force_active": 0})
    owner = "sip:hank@example.com"
    r, d = h.subscribe(owner, owner, event="presence.winfo")
    assert r.status == 200
    h.take(d)
    (sub,) = [s for s in h.engine.subs_by_dialog.values() if s.event == "presence.winfo"]
    assert sub.status == "active"
    assert h.engine.pres_update_watchers(owner, "presence.winfo", h.now) == 0
    assert h.engine.pres_refresh_watchers(owner, "presence.winfo", 0, h.now) == 0
    assert sub.status == "active" and h.take(d) == []
