"""RFC 4480 sphere in pres-rules: a PUBLISH that moves the sphere re-authorizes watchers."""

from __future__ import annotations

from core_support import ALL_SERVICES, Harness, pidf, rule, rules, state

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
CAROL = "sip:carol@example.com"
BOB_AT_WORK = rule("work", f'<identity><one id="{BOB}"/></identity><sphere value="work"/>', "allow", ALL_SERVICES)
BOB_ASKS = rule("ask", f'<identity><one id="{BOB}"/></identity>', "confirm")
CAROL_ALWAYS = rule("carol", f'<identity><one id="{CAROL}"/></identity>', "allow", ALL_SERVICES)


def harness(doc: bytes, sphere_check: int = 1) -> Harness:
    h = Harness.make(**{"presence.enable_sphere_check": sphere_check})
    h.core.authorizer.set_document(ALICE, doc)
    return h


def test_sphere_change_moves_watcher_between_pending_and_active():
    h = harness(rules(BOB_AT_WORK, BOB_ASKS, CAROL_ALWAYS))
    r = h.publish(ALICE, pidf(ALICE, sphere="home", note="at home"))
    etag = r.get("sip-etag")
    _, bob = h.subscribe(ALICE, BOB)
    _, carol = h.subscribe(ALICE, CAROL, port=40002)
    [n] = h.take(bob)
    assert state(n) == "pending" and n.body == b""
    assert b"at home" in h.take(carol)[0].body

    etag = h.publish(ALICE, pidf(ALICE, sphere="work", note="in the office"), etag=etag).get("sip-etag")
    [n] = h.take(bob)
    assert state(n) == "active" and b"in the office" in n.body
    [c] = h.take(carol)  # carol is told once, as for any other change
    assert state(c) == "active" and b"in the office" in c.body
    assert h.core.engine.pres_auth_status(BOB, ALICE) == 1

    h.publish(ALICE, pidf(ALICE, sphere="home", note="gone home"), etag=etag)
    [n] = h.take(bob)
    assert state(n) == "pending" and n.body == b""
    assert b"gone home" in h.take(carol)[0].body
    assert h.core.engine.pres_auth_status(BOB, ALICE) == 2


def test_leaving_the_sphere_terminates_and_never_leaks_the_new_state():
    h = harness(rules(BOB_AT_WORK))
    etag = h.publish(ALICE, pidf(ALICE, sphere="work", note="desk")).get("sip-etag")
    _, bob = h.subscribe(ALICE, BOB)
    [n] = h.take(bob)
    assert state(n) == "active" and b"desk" in n.body
    h.publish(ALICE, pidf(ALICE, sphere="home", note="sofa"), etag=etag)
    notes = h.take(bob)
    assert [state(n) for n in notes] == ["terminated"]
    assert "reason=rejected" in notes[0].get("subscription-state") and notes[0].body == b""
    assert not h.engine.subs_by_presentity.get((ALICE, "presence"))


def test_same_sphere_republished_sends_only_the_state_update():
    h = harness(rules(BOB_AT_WORK, BOB_ASKS))
    etag = h.publish(ALICE, pidf(ALICE, sphere="work", note="one")).get("sip-etag")
    _, bob = h.subscribe(ALICE, BOB)
    h.take(bob)
    h.publish(ALICE, pidf(ALICE, sphere="WORK", note="two"), etag=etag)  # case-insensitive: unchanged
    [n] = h.take(bob)
    assert state(n) == "active" and b"two" in n.body


def test_publication_expiry_that_removes_the_sphere_reauthorizes():
    h = harness(rules(BOB_AT_WORK, BOB_ASKS))
    h.publish(ALICE, pidf(ALICE, sphere="work"), expires=60)
    _, bob = h.subscribe(ALICE, BOB)
    assert state(h.take(bob)[0]) == "active"
    h.advance(61)
    # no sphere published any more: the sphere condition is false (RFC 5025)
    assert [state(n) for n in h.take(bob)] == ["pending"]


def test_polite_block_outside_the_sphere_is_active_without_state():
    h = harness(rules(BOB_AT_WORK, rule("polite", f'<identity><one id="{BOB}"/></identity>', "polite-block")))
    etag = h.publish(ALICE, pidf(ALICE, sphere="work", note="desk")).get("sip-etag")
    _, bob = h.subscribe(ALICE, BOB)
    assert b"desk" in h.take(bob)[0].body
    # allow beats polite-block while in "work" (RFC 4745 combining); at home only polite-block matches
    h.publish(ALICE, pidf(ALICE, sphere="home", note="sofa"), etag=etag)
    notes = h.take(bob)
    assert len(notes) == 1 and state(notes[0]) == "active"
    # RFC 5025 §3.2.1: she looks unavailable (one closed service), nothing of "sofa"
    assert b"<basic>closed</basic>" in notes[0].body and b"sofa" not in notes[0].body
    assert b"sphere" not in notes[0].body
    assert h.engine.pres_auth_status(BOB, ALICE) == 5


def test_sphere_check_disabled_never_reauthorizes():
    h = harness(rules(BOB_AT_WORK, BOB_ASKS), sphere_check=0)
    etag = h.publish(ALICE, pidf(ALICE, sphere="home")).get("sip-etag")
    _, bob = h.subscribe(ALICE, BOB)
    assert state(h.take(bob)[0]) == "pending"
    h.publish(ALICE, pidf(ALICE, sphere="work"), etag=etag)
    assert h.take(bob) == []


def test_reinstalling_the_same_document_changes_nothing():
    """A re-read of an unchanged xcap row (after a SUBSCRIBE, a DB-only load)
    keeps the sphere the watchers were authorized with; a new row applies."""
    doc = rules(BOB_AT_WORK, BOB_ASKS)
    h = harness(doc)
    auth = h.core.authorizer
    h.publish(ALICE, pidf(ALICE, sphere="work", note="one"))
    _, bob = h.subscribe(ALICE, BOB)
    assert state(h.take(bob)[0]) == "active"
    assert auth.spheres[ALICE] == "work"
    assert auth.set_document(ALICE, bytes(doc)) is False
    assert auth.spheres[ALICE] == "work"
    blocked = rule("no", f'<identity><one id="{BOB}"/></identity>', "block")
    assert auth.set_document(ALICE, rules(blocked)) is True
    assert ALICE not in auth.spheres
    assert h.core.engine.pres_update_watchers(ALICE, "presence", h.now) == 1
    h.advance(0)
    assert state(h.take(bob)[0]) == "terminated"
    assert auth.set_document(ALICE, None) is True and not auth.has_rules(ALICE)
    assert auth.set_document(ALICE, None) is False
